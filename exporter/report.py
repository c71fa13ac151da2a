"""`footprint-exporter report`: a life-cycle CO2e table per model from Prometheus (docs/report.md).

In the spirit of Table 2/3 of Luccioni et al., "Estimating the Carbon Footprint of BLOOM"
(JMLR 2023): for each model and phase, the operational (dynamic + idle power), infrastructure
(PUE overhead) and embodied (manufacturing, amortised over the hardware's lifetime) emissions,
their total, each scope's share, and the energy. Every number is one PromQL query over the rule
pack's recording rules, evaluated once, at the same instant, through `/api/v1/query`.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import math
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

PROG = "footprint-exporter report"

CO2E_RULE = "model:footprint_co2e_grams:rate5m"
"""Grams CO2e per second, labels model, phase, scope (rules/footprint.rules.yaml)."""
ENERGY_RULE = "model:footprint_energy_joules:rate5m"
"""Joules per second (watts), labels model, phase (rules/footprint.rules.yaml)."""

SCOPES = ("operational", "infrastructure", "embodied")
"""The scopes summed into the total, in the order of the table's columns."""
TOTAL_SCOPE = "total"

JOULES_PER_KWH = 3.6e6
TOTAL_LABEL = "TOTAL"
"""The totals row's model in the table and CSV (JSON says null)."""
NO_MODEL = "(none)"
"""How the table shows containers matched to no model (label model="")."""

_UNITS_MS = {"y": 365 * 86_400_000, "w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000,
             "m": 60_000, "s": 1000, "ms": 1}
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?"
                       r"(?:(\d+)ms)?")
"""Prometheus' duration syntax (model.ParseDuration): units in this order, each at most once."""

FIX = "check --prometheus; is Prometheus running?"
NO_DATA_HINT = "is the rule pack loaded and the exporter scraped?"


class ReportError(Exception):
    """A failure worth one line on stderr and exit 2: no traceback."""


@dataclass(frozen=True)
class Duration:
    """A Prometheus duration as the user wrote it (it goes into PromQL verbatim)."""

    text: str
    seconds: float

    def promql_seconds(self) -> str:
        """`300`, or `0.5` for sub-second steps: a PromQL number literal."""
        return str(int(self.seconds)) if self.seconds.is_integer() else repr(self.seconds)


DEFAULT_STEP = Duration("5m", 300.0)


def parse_duration(text: str) -> Duration:
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"expected a Prometheus duration such as 90s, 15m, 7d; got {text!r}")
    ms = sum(int(n) * _UNITS_MS[u] for n, u in zip(match.groups(), _UNITS_MS, strict=True)
             if n is not None)
    if ms <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return Duration(text, ms / 1000)


def _duration_arg(text: str) -> Duration:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _url_arg(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {text!r}")
    return text.rstrip("/")


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit 2, as the exporter's own command line does."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=(
        "Life-cycle CO2e per ML model and phase (operational, infrastructure, embodied, total; "
        "energy), in the spirit of the BLOOM paper's table, from Prometheus and the Footprint "
        "rule pack."))
    p.add_argument("--prometheus", required=True, type=_url_arg, metavar="URL",
                   help="Prometheus base URL, e.g. http://localhost:9090")
    p.add_argument("--model", default=None, metavar="M",
                   help="only this model (exact match of the label model)")
    p.add_argument("--since", type=_duration_arg, default=parse_duration("7d"),
                   metavar="DURATION", help="how far back to sum, a Prometheus duration "
                   "(90s, 15m, 7d, 1w; default 7d)")
    p.add_argument("--step", type=_duration_arg, default=None, metavar="DURATION",
                   help="resolution of the sum (default 5m, or --since where that is shorter)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="table (default): aligned text in g/kg/t; json, csv: base units")
    p.add_argument("--timeout", type=_timeout_arg, default=30.0, metavar="SECONDS",
                   help="give up on Prometheus after this many seconds (default 30)")
    return p


# --- queries ---------------------------------------------------------------------------------

def co2e_query(since: Duration, step: Duration) -> str:
    """Grams per (model, phase, scope): the Riemann sum of the grams-per-second rule."""
    return (f"sum by (model, phase, scope) (sum_over_time({CO2E_RULE}[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}")


def energy_query(since: Duration, step: Duration) -> str:
    """Joules per (model, phase): the Riemann sum of the watts rule."""
    return (f"sum by (model, phase) (sum_over_time({ENERGY_RULE}[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}")


Sample = tuple[Mapping[str, str], float]


def _describe(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):  # socket.timeout too
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host ({reason.strerror or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _api_error(payload: object) -> str | None:
    if isinstance(payload, dict) and payload.get("status") == "error":
        kind = payload.get("errorType")
        error = payload.get("error", "no message")
        return f"{kind}: {error}" if kind else str(error)
    return None


def instant_query(base_url: str, query: str, at: float, timeout: float) -> list[Sample]:
    """The vector `query` evaluates to at time `at`; ReportError for anything else."""
    params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}",
                                     "timeout": f"{timeout:g}"})
    url = f"{base_url}/api/v1/query?{params}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = _api_error(json.loads(exc.read()))
        except (ValueError, OSError, http.client.HTTPException):
            message = None
        if message is None:
            raise ReportError(f"Prometheus at {base_url} answered HTTP {exc.code} {exc.reason} "
                              "to /api/v1/query; check --prometheus (a Prometheus base URL, "
                              "such as http://localhost:9090)") from None
        raise ReportError(f"Prometheus at {base_url} rejected the query: {message}") from None
    except urllib.error.URLError as exc:
        raise ReportError(f"cannot reach Prometheus at {base_url}: "
                          f"{_describe(exc.reason, timeout)}; {FIX}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ReportError(f"cannot reach Prometheus at {base_url}: "
                          f"{_describe(exc, timeout)}; {FIX}") from None
    try:
        payload = json.loads(body)
    except ValueError:
        raise ReportError(f"Prometheus at {base_url} answered something that is not JSON; "
                          "check --prometheus") from None
    message = _api_error(payload)
    if message is not None:
        raise ReportError(f"Prometheus at {base_url} rejected the query: {message}")
    return _vector(payload, base_url)


def _vector(payload: Any, base_url: str) -> list[Sample]:
    try:
        data = payload["data"]
        if payload["status"] != "success" or data["resultType"] != "vector":
            raise TypeError(data.get("resultType"))
        out: list[Sample] = []
        for item in data["result"]:
            labels = item["metric"]
            value = float(item["value"][1])
            if not isinstance(labels, dict):
                raise TypeError(labels)
            out.append(({str(k): str(v) for k, v in labels.items()}, value))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise ReportError(f"Prometheus at {base_url} answered an unexpected shape "
                          "(not an instant vector); check --prometheus") from None
    return out


# --- the table -------------------------------------------------------------------------------

@dataclass
class Row:
    """One (model, phase), or the totals (model None)."""

    model: str | None
    phase: str | None
    grams: dict[str, float]
    """Per scope in SCOPES."""
    total_grams: float
    energy_joules: float

    @property
    def energy_kwh(self) -> float:
        return self.energy_joules / JOULES_PER_KWH

    def share(self, scope: str) -> float | None:
        """The scope's fraction of the total; None where the total is zero."""
        return self.grams[scope] / self.total_grams if self.total_grams else None


def build_rows(co2e: Iterable[Sample], energy: Iterable[Sample], *,
               model: str | None = None) -> list[Row]:
    """Rows sorted by model and phase. The total is the rule pack's scope="total" where it is
    there, else the sum of the three scopes. Non-finite values are left out, with a warning."""
    scoped: dict[tuple[str, str], dict[str, float]] = {}
    joules: dict[tuple[str, str], float] = {}

    def keep(labels: Mapping[str, str], value: float) -> tuple[str, str] | None:
        key = (labels.get("model", ""), labels.get("phase", ""))
        if model is not None and key[0] != model:
            return None
        if not math.isfinite(value):
            print(f"{PROG}: warning: leaving out {value} for model={key[0]!r} phase={key[1]!r} "
                  f"{dict(labels)}", file=sys.stderr)
            return None
        return key

    for labels, value in co2e:
        key = keep(labels, value)
        scope = labels.get("scope", "")
        if key is not None and scope in (*SCOPES, TOTAL_SCOPE):
            scoped.setdefault(key, {})[scope] = value
    for labels, value in energy:
        key = keep(labels, value)
        if key is not None:
            joules[key] = value
    rows = []
    for key in sorted(scoped.keys() | joules.keys()):
        by_scope = scoped.get(key, {})
        grams = {scope: by_scope.get(scope, 0.0) for scope in SCOPES}
        total = by_scope.get(TOTAL_SCOPE, math.fsum(grams.values()))
        rows.append(Row(key[0], key[1], grams, total, joules.get(key, 0.0)))
    return rows


def totals(rows: Sequence[Row]) -> Row:
    return Row(None, None, {s: math.fsum(r.grams[s] for r in rows) for s in SCOPES},
               math.fsum(r.total_grams for r in rows), math.fsum(r.energy_joules for r in rows))


# --- output ----------------------------------------------------------------------------------

FIELDS = ("model", "phase", "operational_grams", "infrastructure_grams", "embodied_grams",
          "total_grams", "operational_share", "infrastructure_share", "embodied_share",
          "energy_joules", "energy_kwh")
"""JSON keys and CSV columns, in base units: grams, joules (and kWh), shares as 0..1."""


def _record(row: Row) -> dict[str, str | float | None]:
    return {
        "model": row.model, "phase": row.phase,
        **{f"{s}_grams": row.grams[s] for s in SCOPES},
        "total_grams": row.total_grams,
        **{f"{s}_share": row.share(s) for s in SCOPES},
        "energy_joules": row.energy_joules, "energy_kwh": row.energy_kwh,
    }


def render_json(rows: Sequence[Row]) -> str:
    return json.dumps([_record(r) for r in [*rows, totals(rows)]], indent=2) + "\n"


def render_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for row in [*rows, totals(rows)]:
        record = _record(row)
        if row.model is None:
            record["model"], record["phase"] = TOTAL_LABEL, ""
        writer.writerow(["" if record[f] is None else record[f] for f in FIELDS])
    return out.getvalue()


def significant(value: float, digits: int = 3) -> str:
    """`value` with about `digits` significant digits, no exponent, thousands separated:
    15.0, 0.0375, 135,000."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = min(6, max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    return f"{value:,.{decimals}f}"


def grams(value: float) -> str:
    """g below 1 kg, kg below 1 t, t above; the unit padded so that right-aligned cells align."""
    for unit, size in (("t", 1e6), ("kg", 1e3)):
        if abs(value) >= size:
            return f"{significant(value / size)} {unit:<2}"
    return f"{significant(value)} g "


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


HEADER = ("MODEL", "PHASE", "OPERATIONAL", "INFRASTRUCTURE", "EMBODIED", "TOTAL",
          "OPER%", "INFRA%", "EMB%", "ENERGY kWh", "ENERGY J")
LEFT = 2
"""The first LEFT columns are text (left-aligned); the others numbers (right-aligned)."""


def _cells(row: Row) -> list[str]:
    model = TOTAL_LABEL if row.model is None else row.model or NO_MODEL
    return [model, row.phase or "",
            *(grams(row.grams[s]) for s in SCOPES), grams(row.total_grams),
            *(percent(row.share(s)) for s in SCOPES),
            significant(row.energy_kwh), significant(row.energy_joules)]


def render_table(rows: Sequence[Row], *, since: Duration, step: Duration) -> str:
    body = [list(HEADER), *(_cells(r) for r in rows)]
    last = _cells(totals(rows))
    widths = [max(len(line[i]) for line in [*body, last]) for i in range(len(HEADER))]

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < LEFT else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"CO2e per model and phase, last {since.text} (step {step.text})"
    return "\n".join([title, "", *map(fmt, body), rule, fmt(last)]) + "\n"


# --- main ------------------------------------------------------------------------------------

def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    since: Duration = args.since
    step: Duration = args.step or min(DEFAULT_STEP, since, key=lambda d: d.seconds)
    if step.seconds > since.seconds:
        print(f"{PROG}: error: --step {step.text} is longer than --since {since.text}",
              file=sys.stderr)
        return 2
    now = time.time()
    try:
        co2e = instant_query(args.prometheus, co2e_query(since, step), now, args.timeout)
        energy = instant_query(args.prometheus, energy_query(since, step), now, args.timeout)
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    rows = build_rows(co2e, energy, model=args.model)
    if not rows:
        which = "" if args.model is None else f" for model {args.model!r}"
        others = sorted({labels.get("model", "") or NO_MODEL for labels, _ in co2e})
        seen = f"; models with data: {', '.join(others)}" if args.model is not None and others \
            else ""
        print(f"{PROG}: no footprint data{which} in the last {since.text} ({NO_DATA_HINT}){seen}",
              file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(render_json(rows))
    elif args.format == "csv":
        sys.stdout.write(render_csv(rows))
    else:
        sys.stdout.write(render_table(rows, since=since, step=step))
    return 0
