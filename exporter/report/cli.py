"""`footprint-exporter report`'s command line: the argument parser, the period (--since,
--until, --month), and `main`, which runs the queries at one instant and writes the rows in
the format asked for (docs/report.md)."""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, TypeVar

from exporter.metrics import CONTAINER_INFO
from exporter.report import render
from exporter.report.auth import Connection, connection
from exporter.report.client import Sample, instant_query
from exporter.report.common import PROG, ReportError, eprint
from exporter.report.progress import Progress
from exporter.report.queries import (
    BY_MODEL,
    BY_NAMESPACE,
    DEFAULT_STEP,
    Duration,
    Grouping,
    Period,
    by_label,
    co2e_query,
    grouped_queries,
    month_period,
    parse_duration,
    parse_month,
    run_queries,
)
from exporter.report.rows import build_rows, build_run_rows

FORMATS = ("table", "markdown", "json", "csv")
DEFAULT_SINCE = Duration("7d", 7 * 86_400.0)
NO_DATA_HINT = "is the rule pack loaded and the exporter scraped?"

R = TypeVar("R")


def _duration_arg(text: str) -> Duration:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _month_arg(text: str) -> tuple[int, int]:
    try:
        return parse_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


BY_CHOICES = "model, run, namespace or label:KEY"


def _by_arg(text: str) -> str:
    """model, run, namespace, or label:KEY with a pod label key (checked here)."""
    if text in ("model", "run", "namespace"):
        return text
    kind, colon, key = text.partition(":")
    if kind == "label" and colon:
        try:
            by_label(key)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    raise argparse.ArgumentTypeError(f"expected {BY_CHOICES} (label:team, label:cost-center); "
                                     f"got {text!r}")


def grouping_of(by: str) -> Grouping:
    """The Grouping of a --by other than run."""
    if by == "model":
        return BY_MODEL
    if by == "namespace":
        return BY_NAMESPACE
    return by_label(by.partition(":")[2])


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
        "Life-cycle CO2e per ML model and phase, per namespace or per team (operational, "
        "infrastructure, embodied, total; energy, water), in the spirit of the BLOOM paper's "
        "table, from Prometheus and the Footprint rule pack."))
    p.add_argument("--prometheus", required=True, type=_url_arg, metavar="URL",
                   help="Prometheus base URL, e.g. http://localhost:9090")
    p.add_argument("--by", type=_by_arg, default="model", metavar="{model,run,namespace,label:KEY}",
                   help="model (default): one row per model and phase; run: one row per "
                   "training run (the job that owns the pods: PyTorchJob, TFJob, MPIJob, Job, "
                   "...), with start, end, GPU-hours and water; namespace: one row per "
                   "namespace; label:KEY: one row per value of the pod label KEY (label:team), "
                   "from the chargeback records of that key (docs/chargeback.md), pods without "
                   "it as (none)")
    p.add_argument("--model", default=None, metavar="M",
                   help="only this model (exact match of the label model; --by model and run)")
    p.add_argument("--since", type=_duration_arg, default=None, metavar="DURATION",
                   help="how far back to sum, a Prometheus duration (90s, 15m, 7d, 1w; "
                   "default 7d)")
    p.add_argument("--until", type=_time_arg, default=None, metavar="TIME",
                   help="the end of the period, RFC 3339 (2024-05-01T00:00:00Z) or Unix "
                   "seconds (default now)")
    p.add_argument("--month", type=_month_arg, default=None, metavar="YYYY-MM",
                   help="the calendar month in UTC instead of --since and --until, e.g. "
                   "2026-11; the current month is summed to date")
    p.add_argument("--step", type=_duration_arg, default=None, metavar="DURATION",
                   help="resolution of the sum (default 5m, or --since where that is shorter)")
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


def now() -> float:
    """The time the report is evaluated at without --until or --month (tests replace it)."""
    return time.time()


def period_of(args: argparse.Namespace, at: float) -> Period:
    """The period that --since, --until, --step and --month give, `at` being now; ValueError
    for options that contradict each other."""
    if args.month is not None:
        given = [name for name, value in (("--since", args.since), ("--until", args.until))
                 if value is not None]
        if given:
            raise ValueError(f"--month and {' and '.join(given)}: choose one; --month sets "
                             "the whole period (the calendar month in UTC)")
        year, month = args.month
        period = month_period(year, month, args.step, at)
        longer = f"--month {period.month} so far"
    else:
        since: Duration = args.since or DEFAULT_SINCE
        step = args.step or min(DEFAULT_STEP, since, key=lambda d: d.seconds)
        until = at if args.until is None else args.until
        period = Period(since, step, until, until_given=args.until is not None)
        longer = f"--since {since.text}"
    if period.step.seconds > period.since.seconds:
        raise ValueError(f"--step {period.step.text} is longer than {longer}")
    return period


def within(period: Period) -> str:
    """`in the last 7d`, `in 2026-11`: the period in a message."""
    return f"in {period.month}" if period.month is not None else f"in the last {period.since.text}"


def ask(args: argparse.Namespace, conn: Connection, queries: Mapping[str, str], period: Period,
        progress: Progress, noun: str) -> dict[str, list[Sample]]:
    """Each query's answer, one after the other at `period.until`, the progress line naming
    each."""
    results = {}
    for number, (name, query) in enumerate(queries.items(), 1):
        progress.query(number, len(queries), f"{name.replace('_', ' ')} per {noun}")
        results[name] = instant_query(args.prometheus, query, period.until, args.timeout, conn)
    return results


def _write(fmt: str, rows: Sequence[R], as_json: Callable[[Sequence[R]], str],
           as_csv: Callable[[Sequence[R]], str], as_markdown: Callable[[Sequence[R]], str],
           as_table: Callable[[Sequence[R]], str]) -> int:
    """`rows` on stdout in `fmt` (one of FORMATS); exit 0."""
    sys.stdout.write(as_json(rows) if fmt == "json" else as_csv(rows) if fmt == "csv" else
                     as_markdown(rows) if fmt == "markdown" else as_table(rows))
    return 0


def main_runs(args: argparse.Namespace, conn: Connection, period: Period,
              progress: Progress | None = None) -> int:
    with progress or Progress() as shown:
        results = ask(args, conn, run_queries(period.since, period.step), period, shown,
                      "training run")
    rows = build_run_rows(results, model=args.model)
    if not rows:
        which = "" if args.model is None else f" of model {args.model!r}"
        eprint(f"{PROG}: no training runs{which} {within(period)} (containers with "
               f'{CONTAINER_INFO.name}{{phase="training"}} and an owner; {NO_DATA_HINT})')
        return 1
    return _write(args.format, rows, render.render_runs_json, render.render_runs_csv,
                  lambda r: render.render_runs_markdown(r, period),
                  lambda r: render.render_runs_table(r, period))


def no_label_records(grouping: Grouping, period: Period) -> str:
    """The error for --by label:KEY where the rule pack records nothing for KEY."""
    key = grouping.key or ""
    hint = (f" (KEY is the pod label key as the allow-list names it: label:"
            f"{key.removeprefix('label_')}, not label:{key})" if key.startswith("label_")
            else "")
    return (f"Prometheus has no {grouping.co2e} {within(period)}, though it has per-model "
            f"records: the rule pack records no chargeback for the pod label {key!r}{hint}; "
            f"add {key!r} to the chart's prometheusRule.chargeback.labels and to the exporter's "
            "kubernetes.pod_label_allowlist (docs/chargeback.md)")


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        period = period_of(args, now())
    except ValueError as exc:
        eprint(f"{PROG}: error: {exc}")
        return 2
    if args.model is not None and args.by not in ("model", "run"):
        eprint(f"{PROG}: error: --model applies to --by model and --by run; the {args.by} "
               "records are not split by model")
        return 2
    if period.to_date:
        eprint(f"{PROG}: note: {period.month} is not over; the figures are to date, until "
               f"{render.iso(period.until)}")
    try:
        conn = connection(args)
        progress = Progress()
        if args.by == "run":
            return main_runs(args, conn, period, progress)
        grouping = grouping_of(args.by)
        with progress:
            results = ask(args, conn, grouped_queries(grouping, period.since, period.step),
                          period, progress, grouping.noun)
            if grouping.key is not None and not any(results.values()):
                progress.show("querying Prometheus: are there per-model records?")
                if instant_query(args.prometheus, co2e_query(period.since, period.step),
                                 period.until, args.timeout, conn):
                    progress.clear()
                    eprint(f"{PROG}: error: {no_label_records(grouping, period)}")
                    return 2
    except ReportError as exc:
        eprint(f"{PROG}: error: {exc}")  # what came from the server is redacted already
        return 2
    co2e = results["co2e"]
    rows = build_rows(co2e, results["energy"], model=args.model, water=results["water"],
                      labels=grouping.labels)
    if not rows:
        which = "" if args.model is None else f" for model {args.model!r}"
        others = sorted({labels.get("model", "") or render.NO_MODEL for labels, _ in co2e})
        seen = f"; models with data: {', '.join(others)}" if args.model is not None and others \
            else ""
        eprint(f"{PROG}: no footprint data{which} {within(period)} ({NO_DATA_HINT}){seen}")
        return 1
    if grouping.key is not None and all(row.key == ("",) for row in rows):
        eprint(f"{PROG}: warning: no pod had the label {grouping.key!r} {within(period)}: "
               f"everything is under {render.NO_MODEL}; publish it with the exporter's "
               "kubernetes.pod_label_allowlist (docs/chargeback.md)")
    return _write(args.format, rows, lambda r: render.render_json(r, grouping),
                  lambda r: render.render_csv(r, grouping),
                  lambda r: render.render_markdown(r, period, grouping),
                  lambda r: render.render_table(r, period, grouping))
