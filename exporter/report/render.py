"""`footprint-exporter report`'s output: the aligned table (g/kg/t), Markdown, and JSON and CSV
in base units, per model and phase, namespace or pod label value, or per training run. Every
text cell that came from Prometheus is `printable`; a CSV text cell is also neutralised where a
spreadsheet would read it as a formula."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from exporter.report.common import printable
from exporter.report.queries import BY_MODEL, Grouping, Period
from exporter.report.rows import SCOPES, WATER_SCOPES, Row, RunRow, run_totals, totals

TOTAL_LABEL = "TOTAL"
"""The totals row's model in the table and CSV (JSON says null)."""
NO_MODEL = "(none)"
"""How the table shows containers matched to no model (label model=""), and pods without the
label of --by label:KEY (its value "")."""
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A CSV cell starting with one of these is a formula to a spreadsheet (OWASP, CSV Injection):
a text cell that does is written with a single quote before it."""


def csv_text(text: str) -> str:
    """A CSV text cell: `printable`, and neutralised with a leading `'` when it starts with a
    character that makes a spreadsheet read it as a formula (`FORMULA_START`)."""
    cell = printable(text)
    return f"'{cell}" if cell.startswith(FORMULA_START) else cell


def _csv(fields: Sequence[str], records: Iterable[Mapping[str, object]]) -> str:
    """A header of `fields`, then each record's values in that order (None as empty). A text
    value goes through `csv_text`; numbers are written as they are (a negative number stays a
    number)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for record in records:
        writer.writerow(["" if (v := record[f]) is None else csv_text(v) if isinstance(v, str)
                         else v for f in fields])
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


def _maybe(value: float | None, fmt: Callable[[float], str] = significant) -> str:
    return "-" if value is None else str(fmt(value))


def _aligned(title: str, body: Sequence[Sequence[str]], last: Sequence[str], left: int) -> str:
    """`title`, a blank line, `body` (the header first) in columns, a rule and `last`: the
    first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [*body, last]) for i in range(len(body[0]))]

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, "", *map(fmt, body), rule, fmt(last)]) + "\n"


def markdown(header: Sequence[str], body: Sequence[Sequence[str]], last: Sequence[str],
             left: int) -> str:
    """A Markdown table: the first `left` columns left-aligned, the others right-aligned; the
    totals row `last` in bold."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.strip().replace("|", "\\|") for c in cells) + " |"

    align = ["---" if i < left else "---:" for i in range(len(header))]
    bold = [f"**{c.strip()}**" if c.strip() else "" for c in last]
    return "\n".join([line(header), line(align), *map(line, body), line(bold)]) + "\n"


def describe_period(period: Period) -> str:
    """The period in a title: `last 7d (step 5m)`, `last 7h until 2023-11-15T05:17:00Z (step
    5m)`, `2026-11 UTC (step 5m)`, or `2026-11 to date, until ... (step 5m)`."""
    step = f"step {period.step.text}"
    if period.month is not None:
        if period.to_date:
            return f"{period.month} to date, until {iso(period.until)} ({step})"
        return f"{period.month} UTC ({step})"
    end = f" until {iso(period.until)}" if period.until_given else ""
    return f"last {period.since.text}{end} ({step})"


# --- per model and phase, namespace or label value ------------------------------------------

NUMBER_FIELDS = ("operational_grams", "infrastructure_grams", "embodied_grams", "total_grams",
                 "operational_share", "infrastructure_share", "embodied_share",
                 "energy_joules", "energy_kwh", "water_onsite_liters", "water_offsite_liters")
"""After the row's labels, in base units: grams, joules (and kWh), litres, shares as 0..1; the
water is null (empty) where the rule pack recorded none."""
FIELDS = ("model", "phase", *NUMBER_FIELDS)
"""JSON keys and CSV columns of --by model."""
NUMBER_HEADER = ("OPERATIONAL", "INFRASTRUCTURE", "EMBODIED", "TOTAL", "OPER%", "INFRA%",
                 "EMB%", "ENERGY kWh", "ENERGY J", "WATER ON-SITE L", "WATER OFF-SITE L")
HEADER = ("MODEL", "PHASE", *NUMBER_HEADER)
LEFT = 2
"""The first LEFT columns of --by model are text (left-aligned); the others numbers."""


def fields(grouping: Grouping = BY_MODEL) -> tuple[str, ...]:
    """JSON keys and CSV columns: the row's labels (model and phase, namespace, label_team),
    then NUMBER_FIELDS."""
    return (*grouping.labels, *NUMBER_FIELDS)


def header(grouping: Grouping = BY_MODEL) -> tuple[str, ...]:
    """The table's header: the labels upper-cased (the pod label key for --by label:KEY:
    TEAM), then NUMBER_HEADER."""
    names = grouping.labels if grouping.key is None else (grouping.key,)
    return (*(printable(n).upper() for n in names), *NUMBER_HEADER)


def _record(row: Row, grouping: Grouping) -> dict[str, str | float | None]:
    key = row.key if row.key is not None else (None,) * len(grouping.labels)
    return {
        **dict(zip(grouping.labels, key, strict=True)),
        **{f"{s}_grams": row.grams[s] for s in SCOPES},
        "total_grams": row.total_grams,
        **{f"{s}_share": row.share(s) for s in SCOPES},
        "energy_joules": row.energy_joules, "energy_kwh": row.energy_kwh,
        **{f"{s}_liters": row.water_liters[s] for s in WATER_SCOPES},
    }


def render_json(rows: Sequence[Row], grouping: Grouping = BY_MODEL) -> str:
    return json.dumps([_record(r, grouping) for r in [*rows, totals(rows)]], indent=2) + "\n"


def render_csv(rows: Sequence[Row], grouping: Grouping = BY_MODEL) -> str:
    first, *rest = grouping.labels
    total: dict[str, str | float | None] = {first: TOTAL_LABEL, **dict.fromkeys(rest, "")}
    return _csv(fields(grouping), [_record(r, grouping) | (total if r.key is None else {})
                                   for r in [*rows, totals(rows)]])


def _cells(row: Row, width: int) -> list[str]:
    if row.key is None:
        names = [TOTAL_LABEL, *[""] * (width - 1)]
    else:
        first, *rest = row.key
        names = [printable(first) or NO_MODEL, *map(printable, rest)]
    return [*names,
            *(grams(row.grams[s]) for s in SCOPES), grams(row.total_grams),
            *(percent(row.share(s)) for s in SCOPES),
            significant(row.energy_kwh), significant(row.energy_joules),
            *(_maybe(row.water_liters[s]) for s in WATER_SCOPES)]


def _title(period: Period, grouping: Grouping) -> str:
    return f"CO2e per {printable(grouping.noun)}, {describe_period(period)}"


def render_table(rows: Sequence[Row], period: Period, grouping: Grouping = BY_MODEL) -> str:
    width = len(grouping.labels)
    return _aligned(_title(period, grouping),
                    [list(header(grouping)), *(_cells(r, width) for r in rows)],
                    _cells(totals(rows), width), width)


def render_markdown(rows: Sequence[Row], period: Period, grouping: Grouping = BY_MODEL) -> str:
    width = len(grouping.labels)
    return f"{_title(period, grouping)}\n\n" + markdown(
        header(grouping), [_cells(r, width) for r in rows], _cells(totals(rows), width), width)


# --- per training run (--by run) -------------------------------------------------------------

RUN_FIELDS = ("namespace", "kind", "name", "model", "start", "end", "duration_seconds",
              "gpu_hours", "energy_joules", "energy_kwh", "operational_grams",
              "infrastructure_grams", "embodied_grams", "total_grams", "grams_per_gpu_hour",
              "water_onsite_liters", "water_offsite_liters", "shiftable_savings_grams")
"""JSON keys and CSV columns of --by run: times in RFC 3339 (UTC), grams, joules, litres."""
RUN_HEADER = ("NAMESPACE", "KIND", "NAME", "MODEL", "START", "END", "GPU-HOURS", "ENERGY kWh",
              "OPERATIONAL", "INFRASTRUCTURE", "EMBODIED", "TOTAL", "g/GPU-h",
              "WATER ON-SITE L", "WATER OFF-SITE L", "SHIFTABLE")
RUN_LEFT = 6


def iso(at: float | None, *, seconds: bool = True) -> str | None:
    if at is None:
        return None
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def _run_record(row: RunRow) -> dict[str, str | float | None]:
    return {
        "namespace": row.namespace, "kind": row.kind, "name": row.name, "model": row.model,
        "start": iso(row.start), "end": iso(row.end), "duration_seconds": row.duration_seconds,
        "gpu_hours": row.gpu_hours, "energy_joules": row.energy_joules,
        "energy_kwh": row.energy_kwh, **{f"{s}_grams": row.grams[s] for s in SCOPES},
        "total_grams": row.total_grams, "grams_per_gpu_hour": row.grams_per_gpu_hour,
        "water_onsite_liters": row.water_onsite_liters,
        "water_offsite_liters": row.water_offsite_liters,
        "shiftable_savings_grams": row.shiftable_grams,
    }


def render_runs_json(rows: Sequence[RunRow]) -> str:
    return json.dumps([_run_record(r) for r in [*rows, run_totals(rows)]], indent=2) + "\n"


def render_runs_csv(rows: Sequence[RunRow]) -> str:
    total: dict[str, str | float | None] = {"namespace": "", "kind": "", "name": TOTAL_LABEL,
                                            "model": ""}
    return _csv(RUN_FIELDS, [_run_record(r) | (total if r.kind is None else {})
                             for r in [*rows, run_totals(rows)]])


def _run_cells(row: RunRow) -> list[str]:
    return [printable(row.namespace or ""), printable(row.kind or ""),
            TOTAL_LABEL if row.kind is None else printable(row.name or ""),
            "" if row.kind is None else printable(row.model or "") or NO_MODEL,
            iso(row.start, seconds=False) or "-", iso(row.end, seconds=False) or "-",
            _maybe(row.gpu_hours), significant(row.energy_kwh),
            *(grams(row.grams[s]) for s in SCOPES), grams(row.total_grams),
            _maybe(row.grams_per_gpu_hour), _maybe(row.water_onsite_liters),
            _maybe(row.water_offsite_liters), _maybe(row.shiftable_grams, grams)]


def _run_title(period: Period) -> str:
    return f"CO2e per training run, {describe_period(period)}"


def render_runs_table(rows: Sequence[RunRow], period: Period) -> str:
    return _aligned(_run_title(period),
                    [list(RUN_HEADER), *(_run_cells(r) for r in rows)],
                    _run_cells(run_totals(rows)), RUN_LEFT)


def render_runs_markdown(rows: Sequence[RunRow], period: Period) -> str:
    return f"{_run_title(period)}\n\n" + markdown(
        RUN_HEADER, [_run_cells(r) for r in rows], _run_cells(run_totals(rows)), RUN_LEFT)
