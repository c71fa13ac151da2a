"""Electricity Maps: the average carbon intensity of a zone's consumed electricity, hourly.

`GET {base}/v3/carbon-intensity/latest?zone=ZONE` with header `auth-token`, answered with
`zone`, `carbonIntensity` (gCO2eq/kWh), `datetime`, `updatedAt`, `emissionFactorType`
(`lifecycle` unless asked otherwise) and `isEstimated` (docs/carbon.md cites the API docs).

With `forecast=True`, also `GET {base}/v3/carbon-intensity/forecast?zone=ZONE`, answered with
`zone`, `forecast` (a list of `carbonIntensity` and `datetime`, hourly from the current hour)
and `updatedAt`, on plans that include forecasts; a 401, 403 or 404 there means none for this
token or zone (docs/carbon-aware.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import ClassVar

from exporter.carbon import Intensity
from exporter.config import ElectricityMapsSettings
from exporter.intensity.credentials import Secret
from exporter.intensity.forecast import Forecast, build_forecast
from exporter.intensity.live import (
    Fault,
    IntensityReading,
    LiveProvider,
    _api_message,
    forecast_points,
    parse_json_object,
    parse_number,
    parse_time,
)

_DEFAULTS = ElectricityMapsSettings()
"""Base URL, timeout and refresh period when not given: `carbon.electricitymaps`' defaults."""


class ElectricityMaps(LiveProvider):
    """The latest intensity of one Electricity Maps zone (provider label `electricitymaps`)."""

    name: ClassVar[str] = "electricitymaps"

    def __init__(self, *, zone: str, token: Secret | str, base_url: str = _DEFAULTS.base_url,
                 timeout_seconds: float = _DEFAULTS.timeout_seconds,
                 refresh_seconds: float = _DEFAULTS.refresh_seconds,
                 clock: Callable[[], float] = time.time, trust_env: bool = True,
                 log: logging.Logger | None = None, forecast: bool = False) -> None:
        super().__init__(base_url=base_url, zone=zone, timeout_seconds=timeout_seconds,
                         refresh_seconds=refresh_seconds, clock=clock, trust_env=trust_env,
                         log=log, forecast=forecast)
        self._token = token if isinstance(token, Secret) else Secret(token)

    def __repr__(self) -> str:
        return (f"ElectricityMaps(zone={self.zone!r}, base_url={self.base_url!r}, "
                f"token={self._token!r})")

    def _secrets(self) -> Iterable[Secret]:
        return (self._token,)

    async def _fetch(self) -> IntensityReading:
        self._token.reload()  # a rotated Secret is updated in place in the mounted file
        response = await self._get(f"{self.base_url}/v3/carbon-intensity/latest",
                                   params={"zone": self.zone},
                                   headers={"auth-token": self._token.reveal()})
        if response.status == 401:
            raise Fault("auth", "the API refused the auth-token (HTTP 401): check the "
                                f"token{self._token.origin}")
        if response.status == 403:
            raise Fault("auth", f"the token has no access to zone {self.zone} (HTTP 403): "
                                "check the zone code and your Electricity Maps plan")
        self._check(response)
        body = parse_json_object(response)
        grams = parse_number(body.get("carbonIntensity"), "carbonIntensity")
        observed = parse_time(body.get("datetime"), "datetime")
        zone = body.get("zone")
        if not isinstance(zone, str) or zone.upper() != self.zone.upper():
            # The API falls back to the caller's IP location when it does not know a zone.
            raise Fault("malformed", f"answered for zone {zone!r}, not {self.zone!r}")
        basis = body.get("emissionFactorType")
        return IntensityReading(
            intensity=Intensity(grams, self.zone, self.name),
            observed_unix=observed,
            fetched_unix=self._clock(),
            basis=basis if isinstance(basis, str) and basis else "lifecycle",
            estimated=body.get("isEstimated") is True,
        )

    async def _fetch_forecast(self) -> Forecast:
        response = await self._get(f"{self.base_url}/v3/carbon-intensity/forecast",
                                   params={"zone": self.zone},
                                   headers={"auth-token": self._token.reveal()})
        if response.status in (401, 403, 404):
            raise Fault("refused", f"the API answered HTTP {response.status}"
                                   f"{_api_message(response)} (forecasts need an Electricity "
                                   "Maps plan that includes them for this zone)")
        self._check(response)
        body = parse_json_object(response)
        zone = body.get("zone")
        if zone is not None and (not isinstance(zone, str) or zone.upper() != self.zone.upper()):
            raise Fault("malformed", f"answered a forecast for zone {zone!r}, not {self.zone!r}")
        parsed = forecast_points(body, "forecast", "datetime", "carbonIntensity")
        return build_forecast(parsed, zone=self.zone, provider=self.name,
                              now_unix=self._clock())
