"""`footprint-exporter report`: a life-cycle CO2e table per model from Prometheus (docs/report.md).

In the spirit of Table 2/3 of Luccioni et al., "Estimating the Carbon Footprint of BLOOM"
(JMLR 2023): for each model and phase, the operational (dynamic + idle power), infrastructure
(PUE overhead) and embodied (manufacturing, amortised over the hardware's lifetime) emissions,
their total, each scope's share, and the energy. Every number is one PromQL query over the rule
pack's recording rules, evaluated once, at the same instant, through `/api/v1/query`.

The package, each module importing only those above it:

- `common`: the command's name, `ReportError`, `printable` (control characters stripped);
- `queries`: the recording rules it reads, `Duration`, and the PromQL it runs;
- `auth`: credentials, extra headers, TLS, and the redaction of secrets (`Connection`);
- `client`: HTTP to `/api/v1/query`, bounded in time and size (`instant_query`);
- `rows`: the answers as life-cycle rows, per model and phase or per run, and their totals;
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
    DEFAULT_STEP,
    FORMATS,
    NO_DATA_HINT,
    build_parser,
    main,
    main_runs,
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
from exporter.report.queries import (
    CLEANEST_HOUR_RULE,
    CO2E_RULE,
    CONTAINER_CO2E_RULE,
    CONTAINER_ENERGY_RULE,
    ENERGY_RULE,
    OWNERS,
    RULES,
    RUN_LABELS,
    TRAINING_INFO,
    WATER_RULE,
    Duration,
    co2e_query,
    energy_query,
    parse_duration,
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
    RUN_FIELDS,
    RUN_HEADER,
    RUN_LEFT,
    TOTAL_LABEL,
    csv_text,
    grams,
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
    "CLEANEST_HOUR_RULE", "CO2E_RULE", "CONTAINER_CO2E_RULE", "CONTAINER_ENERGY_RULE",
    "CREDENTIAL_OPTIONS", "DEFAULT_STEP", "ENERGY_RULE", "FIELDS", "FIX", "FORMATS",
    "FORMULA_START", "HEADER", "JOULES_PER_KWH", "LEFT", "MAX_BODY_BYTES", "MAX_ERROR_BODY_BYTES",
    "MAX_SERIES", "NARROW", "NOT_SECRET_HEADERS", "NO_DATA_HINT", "NO_MODEL", "OWNERS", "PROG",
    "READ_CHUNK_BYTES", "REDACTED", "RULES", "RUN_FIELDS", "RUN_HEADER", "RUN_LABELS",
    "RUN_LEFT", "SCOPES", "TOTAL_LABEL", "TOTAL_SCOPE", "TRAINING_INFO", "WATER_RULE",
    "WATER_SCOPES", "Connection", "Duration", "ReportError", "Row", "RunKey", "RunRow",
    "Sample", "build_parser", "build_rows", "build_run_rows", "co2e_query", "connection",
    "csv_text", "energy_query", "estimated_series", "grams", "instant_query", "iso", "main",
    "main_runs", "markdown", "parse_duration", "parse_header", "percent", "printable",
    "read_secret_file", "render_csv", "render_json", "render_markdown", "render_runs_csv",
    "render_runs_json", "render_runs_markdown", "render_runs_table", "render_table",
    "run_queries", "run_sum_query", "run_totals", "significant", "totals", "water_query",
]
