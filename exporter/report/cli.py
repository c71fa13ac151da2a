"""`footprint-exporter report`'s command line: the argument parser, and `main`, which runs the
queries at one instant and writes the rows in the format asked for (docs/report.md)."""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from exporter.metrics import CONTAINER_INFO
from exporter.report import render
from exporter.report.auth import Connection, connection
from exporter.report.client import instant_query
from exporter.report.common import PROG, ReportError, eprint
from exporter.report.queries import (
    Duration,
    co2e_query,
    energy_query,
    parse_duration,
    run_queries,
    water_query,
)
from exporter.report.rows import build_rows, build_run_rows

FORMATS = ("table", "markdown", "json", "csv")
DEFAULT_STEP = Duration("5m", 300.0)
NO_DATA_HINT = "is the rule pack loaded and the exporter scraped?"

R = TypeVar("R")


def _duration_arg(text: str) -> Duration:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _url_arg(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if "@" in parts.netloc:
        # Never echoed: it holds a user name and perhaps a password.
        raise argparse.ArgumentTypeError(
            "expected http://HOST:PORT without a user or password in it (a secret on the "
            "command line is shown by ps and kept in the shell's history); give "
            "--basic-auth-user and --basic-auth-password-file instead")
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


def _time_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected RFC 3339 (2024-05-01T00:00:00Z) or Unix seconds, got {text!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        value = moment.timestamp()
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a time after 1970, got {text!r}")
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
    p.add_argument("--by", choices=("model", "run"), default="model",
                   help="model (default): one row per model and phase; run: one row per "
                   "training run (the job that owns the pods: PyTorchJob, TFJob, MPIJob, Job, "
                   "...), with start, end, GPU-hours and water")
    p.add_argument("--until", type=_time_arg, default=None, metavar="TIME",
                   help="the end of the period, RFC 3339 (2024-05-01T00:00:00Z) or Unix "
                   "seconds (default now)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default): aligned text in g/kg/t; markdown: the same as a "
                   "Markdown table; json, csv: base units")
    p.add_argument("--timeout", type=_timeout_arg, default=30.0, metavar="SECONDS",
                   help="give up on a query that Prometheus has not answered in full after "
                   "this many seconds, from connecting to the last byte (default 30)")
    auth = p.add_argument_group(
        "authentication and TLS", "for a Prometheus API behind auth: Thanos, Mimir, Cortex, "
        "VictoriaMetrics, Grafana Cloud, or Prometheus' own --web.config.file. Secrets are read "
        "from files (surrounding whitespace removed) and never printed")
    auth.add_argument("--bearer-token-file", metavar="FILE",
                      help="send 'Authorization: Bearer <the file's content>'")
    auth.add_argument("--basic-auth-user", metavar="USER",
                      help="HTTP basic auth user name (with --basic-auth-password-file)")
    auth.add_argument("--basic-auth-password-file", metavar="FILE",
                      help="HTTP basic auth password, read from FILE")
    auth.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                      help="an extra request header, repeatable, e.g. 'X-Scope-OrgID: tenant-1' "
                      "for a Mimir or Cortex tenant (not Authorization: use the file options)")
    auth.add_argument("--ca-file", metavar="FILE",
                      help="verify an https:// --prometheus against the CA certificates (PEM) in "
                      "FILE instead of the system's")
    auth.add_argument("--insecure-skip-verify", action="store_true",
                      help="do not verify the server's TLS certificate (testing only)")
    return p


def _write(fmt: str, rows: Sequence[R], as_json: Callable[[Sequence[R]], str],
           as_csv: Callable[[Sequence[R]], str], as_markdown: Callable[..., str],
           as_table: Callable[..., str], **title: object) -> int:
    """`rows` on stdout in `fmt` (one of FORMATS), the table and Markdown with `title`'s
    arguments (the period); exit 0."""
    sys.stdout.write(as_json(rows) if fmt == "json" else as_csv(rows) if fmt == "csv" else
                     as_markdown(rows, **title) if fmt == "markdown" else
                     as_table(rows, **title))
    return 0


def main_runs(args: argparse.Namespace, conn: Connection, since: Duration, step: Duration,
              at: float) -> int:
    results = {name: instant_query(args.prometheus, query, at, args.timeout, conn)
               for name, query in run_queries(since, step).items()}
    rows = build_run_rows(results, model=args.model)
    if not rows:
        which = "" if args.model is None else f" of model {args.model!r}"
        eprint(f"{PROG}: no training runs{which} in the last {since.text} (containers with "
               f'{CONTAINER_INFO.name}{{phase="training"}} and an owner; {NO_DATA_HINT})')
        return 1
    return _write(args.format, rows, render.render_runs_json, render.render_runs_csv,
                  render.render_runs_markdown, render.render_runs_table, since=since,
                  step=step, until=args.until)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    since: Duration = args.since
    step: Duration = args.step or min(DEFAULT_STEP, since, key=lambda d: d.seconds)
    if step.seconds > since.seconds:
        eprint(f"{PROG}: error: --step {step.text} is longer than --since {since.text}")
        return 2
    now = time.time() if args.until is None else args.until
    try:
        conn = connection(args)
        if args.by == "run":
            return main_runs(args, conn, since, step, now)
        co2e = instant_query(args.prometheus, co2e_query(since, step), now, args.timeout, conn)
        energy = instant_query(args.prometheus, energy_query(since, step), now, args.timeout,
                               conn)
        water = instant_query(args.prometheus, water_query(since, step), now, args.timeout,
                              conn)
    except ReportError as exc:
        eprint(f"{PROG}: error: {exc}")  # what came from the server is redacted already
        return 2
    rows = build_rows(co2e, energy, model=args.model, water=water)
    if not rows:
        which = "" if args.model is None else f" for model {args.model!r}"
        others = sorted({labels.get("model", "") or render.NO_MODEL for labels, _ in co2e})
        seen = f"; models with data: {', '.join(others)}" if args.model is not None and others \
            else ""
        eprint(f"{PROG}: no footprint data{which} in the last {since.text} ({NO_DATA_HINT})"
               f"{seen}")
        return 1
    return _write(args.format, rows, render.render_json, render.render_csv,
                  render.render_markdown, render.render_table, since=since, step=step)
