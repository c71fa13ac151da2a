"""WattTime v3: the marginal operating emissions rate (MOER) of a grid region, every 5 minutes.

`GET {base}/login` with HTTP basic auth returns `{"token": ...}`, a bearer token valid for 30
minutes; `GET {base}/v3/forecast?region=R&signal_type=co2_moer&horizon_hours=0` returns `data`
(points of `point_time` and `value`) and `meta` (`units`: `lbs_co2_per_mwh`). The first point is
the rate now. With `forecast=True`, the same request with `horizon_hours=24` (every 30 minutes)
gives the forecast: one point per 5 minutes for the next 24 hours (docs/carbon-aware.md). MOER
is the emission rate of the generators that answer a change in load: a marginal figure, not
the average of the grid mix that Electricity Maps and the static defaults give; the two must
not be mixed in one series (docs/carbon.md).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from exporter.carbon import Intensity
from exporter.config import WattTimeSettings
from exporter.intensity.credentials import Secret
from exporter.intensity.forecast import Forecast, build_forecast
from exporter.intensity.live import (
    Fault,
    IntensityReading,
    LiveProvider,
    Response,
    forecast_points,
    parse_json_object,
    parse_number,
    parse_time,
)

_DEFAULTS = WattTimeSettings()
"""Base URL, timeout and refresh period when not given: `carbon.watttime`'s defaults."""
TOKEN_LIFETIME_SECONDS = 1800.0
TOKEN_MARGIN_SECONDS = 60.0
"""Log in again this long before the token would expire, so no request meets an expired one."""
GRAMS_PER_KWH_PER_LBS_PER_MWH = 0.453592
"""1 lb = 453.592 g and 1 MWh = 1000 kWh."""
SIGNAL = "co2_moer"
UNITS = "lbs_co2_per_mwh"
FORECAST_HOURS = "24"
"""`horizon_hours` of the forecast: the API's default, and the longest horizon published."""


class WattTime(LiveProvider):
    """The current MOER of one WattTime region, in gCO2/kWh (provider label `watttime`)."""

    name: ClassVar[str] = "watttime"

    def __init__(self, *, region: str, username: str, password: Secret | str,
                 base_url: str = _DEFAULTS.base_url,
                 timeout_seconds: float = _DEFAULTS.timeout_seconds,
                 refresh_seconds: float = _DEFAULTS.refresh_seconds,
                 clock: Callable[[], float] = time.time, trust_env: bool = True,
                 log: logging.Logger | None = None, forecast: bool = False) -> None:
        super().__init__(base_url=base_url, zone=region, timeout_seconds=timeout_seconds,
                         refresh_seconds=refresh_seconds, clock=clock, trust_env=trust_env,
                         log=log, forecast=forecast)
        if not username:
            raise ValueError("watttime: a username is required")
        self.username = username
        self._password = password if isinstance(password, Secret) else Secret(password)
        self._token: Secret | None = None
        self._token_renew_at = 0.0

    def __repr__(self) -> str:
        return (f"WattTime(region={self.zone!r}, base_url={self.base_url!r}, "
                f"username={self.username!r}, password={self._password!r})")

    def _secrets(self) -> Iterable[Secret]:
        return (self._password,) if self._token is None else (self._password, self._token)

    async def _fetch(self) -> IntensityReading:
        response = await self._forecast(await self._bearer())
        if response.status == 401:
            # Revoked or expired early: log in again, once.
            self._token = None
            response = await self._forecast(await self._bearer())
            if response.status == 401:
                raise Fault("auth", "the forecast refused a fresh login token (HTTP 401): "
                                    "check the account with WattTime")
        if response.status == 403:
            raise Fault("auth", f"the account has no access to {SIGNAL} for region "
                                f"{self.zone} (HTTP 403): WattTime's free plan covers "
                                "CAISO_NORTH only")
        self._check(response)
        return self._parse(parse_json_object(response))

    async def _bearer(self) -> str:
        if self._token is not None and self._clock() < self._token_renew_at:
            return self._token.reveal()
        self._token = None
        self._password.reload()  # a rotated Secret is updated in place in the mounted file
        basic = base64.b64encode(f"{self.username}:{self._password.reveal()}".encode()).decode()
        response = await self._get(f"{self.base_url}/login",
                                   headers={"Authorization": f"Basic {basic}"})
        if response.status in (401, 403):
            raise Fault("auth", f"login refused (HTTP {response.status}): check the username "
                                f"{self.username!r} and the password{self._password.origin}")
        self._check(response)
        token = parse_json_object(response).get("token")
        if not isinstance(token, str) or not token:
            raise Fault("malformed", "login answered without a token")
        self._token = Secret(token, source="watttime login")
        self._token_renew_at = self._clock() + TOKEN_LIFETIME_SECONDS - TOKEN_MARGIN_SECONDS
        return token

    async def _forecast(self, token: str, horizon_hours: str = "0") -> Response:
        return await self._get(
            f"{self.base_url}/v3/forecast",
            params={"region": self.zone, "signal_type": SIGNAL, "horizon_hours": horizon_hours},
            headers={"Authorization": f"Bearer {token}"})

    async def _fetch_forecast(self) -> Forecast:
        response = await self._forecast(await self._bearer(), FORECAST_HOURS)
        if response.status == 401:
            self._token = None
            response = await self._forecast(await self._bearer(), FORECAST_HOURS)
            if response.status == 401:
                raise Fault("auth", "the forecast refused a fresh login token (HTTP 401): "
                                    "check the account with WattTime")
        if response.status == 403:
            raise Fault("refused", f"the account has no access to the {SIGNAL} forecast for "
                                   f"region {self.zone} (HTTP 403)")
        self._check(response)
        body = parse_json_object(response)
        _check_units(body)
        points = forecast_points(body, "data", "point_time", "value",
                                 GRAMS_PER_KWH_PER_LBS_PER_MWH)
        return build_forecast(points, zone=self.zone, provider=self.name,
                              now_unix=self._clock())

    def _parse(self, body: Mapping[str, Any]) -> IntensityReading:
        _check_units(body)
        data = body.get("data")
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise Fault("malformed", "answered without a data point")
        point = data[0]
        lbs_per_mwh = parse_number(point.get("value"), "value")
        return IntensityReading(
            intensity=Intensity(lbs_per_mwh * GRAMS_PER_KWH_PER_LBS_PER_MWH, self.zone,
                                self.name),
            observed_unix=parse_time(point.get("point_time"), "point_time"),
            fetched_unix=self._clock(),
            basis="marginal",
        )


def _check_units(body: Mapping[str, Any]) -> None:
    meta = body.get("meta")
    units = meta.get("units") if isinstance(meta, dict) else None
    if units is not None and units != UNITS:
        raise Fault("malformed", f"answered in {units!r}, not {UNITS}")
