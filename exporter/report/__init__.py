"""`footprint-exporter report`: a life-cycle CO2e table per model, namespace or team from
Prometheus (docs/report.md).

In the spirit of Table 2/3 of Luccioni et al., "Estimating the Carbon Footprint of BLOOM"
(JMLR 2023): for each model and phase, the operational (dynamic + idle power), infrastructure
(PUE overhead) and embodied (manufacturing, amortised over the hardware's lifetime) emissions,
their total, each scope's share, and the energy; or the same per namespace or per value of a
pod label (chargeback, docs/chargeback.md). Every number is one PromQL query over the rule
pack's recording rules, evaluated once, at the same instant, through `/api/v1/query`.

The package, each module importing only those above it:

- `common`: the command's name, `ReportError`, `printable` (control characters stripped);
- `queries`: the recording rules it reads, `Duration`, the period (`Period`, --month), what a
  table is per (`Grouping`: model and phase, namespace, a pod label) and the PromQL it runs;
- `auth`: credentials, extra headers, TLS, and the redaction of secrets (`Connection`);
- `client`: HTTP to `/api/v1/query`, bounded in time and size (`instant_query`);
- `progress`: the line of progress on a terminal's stderr while the queries run;
- `rows`: the answers as life-cycle rows, per model and phase (namespace, label value) or per
  run, and their totals;
- `render`: the table, Markdown, JSON and CSV (`csv_text` neutralises formulas);
- `cli`: the argument parser and `main`.

Everything the module `exporter/report.py` had is importable from here as it was.
"""

from exporter.report.auth import (
    CREDENTIAL_OPTIONS,
    NOT_SECRET_HEADERS,
    REDACTED,
    Connection,
    connection,
    parse_header,
    read_secret_file,
)
from exporter.report.cli import (
    DEFAULT_SINCE,
    FORMATS,
    NO_DATA_HINT,
    build_parser,
    grouping_of,
    main,
    main_runs,
    period_of,
)
from exporter.report.client import (
    FIX,
    MAX_BODY_BYTES,
    MAX_ERROR_BODY_BYTES,
    MAX_SERIES,
    NARROW,
    READ_CHUNK_BYTES,
    Sample,
    estimated_series,
    instant_query,
)
from exporter.report.common import JOULES_PER_KWH, PROG, ReportError, printable
from exporter.report.progress import Progress
from exporter.report.queries import (
    BY_MODEL,
    BY_NAMESPACE,
    CLEANEST_HOUR_RULE,
    CO2E_RULE,
    CONTAINER_CO2E_RULE,
    CONTAINER_ENERGY_RULE,
    DEFAULT_STEP,
    ENERGY_RULE,
    NAMESPACE_CO2E_RULE,
    NAMESPACE_ENERGY_RULE,
    NAMESPACE_WATER_RULE,
    OWNERS,
    RULES,
    RUN_LABELS,
    TEAM_CO2E_RULE,
    TEAM_ENERGY_RULE,
    TEAM_LABEL,
    TEAM_WATER_RULE,
    TRAINING_INFO,
    WATER_RULE,
    Duration,
    Grouping,
    Period,
    by_label,
    co2e_query,
    duration_of_ms,
    energy_query,
    grouped_queries,
    label_rule,
    month_bounds,
    month_period,
    parse_duration,
    parse_month,
    run_queries,
    run_sum_query,
    water_query,
)
from exporter.report.render import (
    FIELDS,
    FORMULA_START,
    HEADER,
    LEFT,
    NO_MODEL,
    NUMBER_FIELDS,
    NUMBER_HEADER,
    RUN_FIELDS,
    RUN_HEADER,
    RUN_LEFT,
    TOTAL_LABEL,
    csv_text,
    describe_period,
    fields,
    grams,
    header,
    iso,
    markdown,
    percent,
    render_csv,
    render_json,
    render_markdown,
    render_runs_csv,
    render_runs_json,
    render_runs_markdown,
    render_runs_table,
    render_table,
    significant,
)
from exporter.report.rows import (
    MODEL_LABELS,
    SCOPES,
    TOTAL_SCOPE,
    WATER_SCOPES,
    Row,
    RunKey,
    RunRow,
    build_rows,
    build_run_rows,
    run_totals,
    totals,
)

__all__ = [
    "BY_MODEL", "BY_NAMESPACE", "CLEANEST_HOUR_RULE", "CO2E_RULE", "CONTAINER_CO2E_RULE",
    "CONTAINER_ENERGY_RULE", "CREDENTIAL_OPTIONS", "DEFAULT_SINCE", "DEFAULT_STEP",
    "ENERGY_RULE", "FIELDS", "FIX", "FORMATS", "FORMULA_START", "HEADER", "JOULES_PER_KWH",
    "LEFT", "MAX_BODY_BYTES", "MAX_ERROR_BODY_BYTES", "MAX_SERIES", "MODEL_LABELS",
    "NAMESPACE_CO2E_RULE", "NAMESPACE_ENERGY_RULE", "NAMESPACE_WATER_RULE", "NARROW",
    "NOT_SECRET_HEADERS", "NO_DATA_HINT", "NO_MODEL", "NUMBER_FIELDS", "NUMBER_HEADER",
    "OWNERS", "PROG", "READ_CHUNK_BYTES", "REDACTED", "RULES", "RUN_FIELDS", "RUN_HEADER",
    "RUN_LABELS", "RUN_LEFT", "SCOPES", "TEAM_CO2E_RULE", "TEAM_ENERGY_RULE", "TEAM_LABEL",
    "TEAM_WATER_RULE", "TOTAL_LABEL", "TOTAL_SCOPE", "TRAINING_INFO", "WATER_RULE",
    "WATER_SCOPES", "Connection", "Duration", "Grouping", "Period", "Progress", "ReportError",
    "Row", "RunKey", "RunRow", "Sample", "build_parser", "build_rows", "build_run_rows",
    "by_label", "co2e_query", "connection", "csv_text", "describe_period", "duration_of_ms",
    "energy_query", "estimated_series", "fields", "grams", "grouped_queries", "grouping_of",
    "header", "instant_query", "iso", "label_rule", "main", "main_runs", "markdown",
    "month_bounds", "month_period", "parse_duration", "parse_header", "parse_month",
    "percent", "period_of", "printable", "read_secret_file", "render_csv", "render_json",
    "render_markdown", "render_runs_csv", "render_runs_json", "render_runs_markdown",
    "render_runs_table", "render_table", "run_queries", "run_sum_query", "run_totals",
    "significant", "totals", "water_query",
]
