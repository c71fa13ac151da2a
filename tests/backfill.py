"""A Prometheus on backfilled blocks, for tests/test_rules_daily.py and bench/rules_fleet.py.

Synthetic scrapes are written as OpenMetrics (OpenMetricsWriter), turned into blocks by
`promtool tsdb create-blocks-from openmetrics`, and served by Debian's prometheus started on
those blocks (BlockPrometheus). Recording rules are then backfilled (backfill_rules) the way
`promtool tsdb create-blocks-from rules` does it, each rule's expression evaluated on its own
through the server's query_range API, but written as OpenMetrics and turned into blocks by
promtool's openmetrics backfill (Prometheus 2.42's rules backfill drops samples at random). A
rule evaluated that way cannot see what other rules of the same run record, so the rules go in
dependency levels, each level's blocks moved into the data directory and the server restarted
before the next.

Backfilled records carry no staleness markers: a live rule group writes one for a series it
stops producing at the next evaluation, so a series that ended is not read afterwards. A server
started with `lookback` just under the evaluation interval reads a backfilled record exactly as
a live one is read at every evaluation step (the latest sample of the last interval, nothing
older), which is what the rules that read records (and the daily subqueries) need.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from tests.e2e_node import free_port
from tests.support import require_binary, stop_process, wait_http_ok

Samples = Sequence[tuple[float, float]]
"""(unix seconds, value) in time order."""


class OpenMetricsWriter:
    """OpenMetrics text with timestamps, one family at a time, each series' samples together
    in time order (what `promtool tsdb create-blocks-from openmetrics` reads)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.samples = 0
        self._families: set[str] = set()

    def family(self, name: str, kind: str) -> None:
        assert name not in self._families, f"family {name} written twice"
        self._families.add(name)
        family = name.removesuffix("_total") if kind == "counter" else name
        self.out.write(f"# TYPE {family} {kind}\n")

    def series(self, name: str, labels: dict[str, str], samples: Iterable[tuple[float, float]]
               ) -> None:
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        head = f"{name}{{{text}}} "
        lines = [f"{head}{v!r} {t:.3f}\n" for t, v in samples]
        self.samples += len(lines)
        self.out.write("".join(lines))

    def close(self) -> None:
        self.out.write("# EOF\n")


def promtool(*args: str, timeout: float = 600) -> str:
    result = subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"promtool {args[:3]}: {result.stdout}\n{result.stderr}"
    return result.stdout


def backfill_openmetrics(path: Path, data_dir: Path, *, max_block_duration: str | None = None
                         ) -> None:
    """promtool's openmetrics backfill of `path` into `data_dir`. It reads the whole file once
    per block, so a long span in its default 2 h blocks costs a pass per 2 h: a
    `max_block_duration` (promtool's hidden `--max-block-duration`, rounded down to one of the
    TSDB's ranges 2 h, 6 h, 18 h, ...) makes fewer, larger blocks, as compaction would."""
    data_dir.mkdir(parents=True, exist_ok=True)
    flags = [f"--max-block-duration={max_block_duration}"] if max_block_duration else []
    promtool("tsdb", "create-blocks-from", "openmetrics", "--quiet", *flags, str(path),
             str(data_dir))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class BlockPrometheus:
    """Debian's prometheus serving data_dir (no scrapes, no rules) on a free loopback port."""

    def __init__(self, data_dir: Path, *, lookback: str | None = None) -> None:
        self.data_dir = data_dir
        self.lookback = lookback
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.prometheus.log"
        self.config = data_dir.parent / f"{data_dir.name}.prometheus.yml"
        self.config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1m"}}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None
        self.port = free_port()
        args = [require_binary("prometheus"), f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data_dir}", "--storage.tsdb.retention.time=10y",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                "--query.max-samples=200000000"]
        if self.lookback:
            args.append(f"--query.lookback-delta={self.lookback}")
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_http_ok(self.url + "/-/ready", self.proc, "prometheus", self.logs, timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def api(self, path: str, params: dict[str, str], timeout: float = 300) -> dict[str, Any]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: dict[str, Any] = json.load(response)
        assert body["status"] == "success", (params, body)
        return body

    def query(self, expr: str, at: float, *, stats: bool = False) -> dict[str, Any]:
        """The query API's whole `data` (result, and stats with stats=True)."""
        params = {"query": expr, "time": f"{at:.3f}"}
        if stats:
            params["stats"] = "all"
        data: dict[str, Any] = self.api("/api/v1/query", params)["data"]
        return data

    def vector(self, expr: str, at: float) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant vector as {sorted label pairs: value}."""
        return {tuple(sorted(s["metric"].items())): float(s["value"][1])
                for s in self.query(expr, at)["result"]}

    def __enter__(self) -> BlockPrometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def recorded_names(rules: Iterable[dict[str, Any]]) -> set[str]:
    return {rule["record"] for rule in rules if "record" in rule}


def dependency_levels(rules: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The recording rules in levels: a rule comes after every rule whose record it reads."""
    names = recorded_names(rules)
    level: dict[int, int] = {}

    def depth(i: int) -> int:
        if i not in level:
            reads = {n for n in names if re.search(rf"(?<![\w:]){re.escape(n)}(?![\w:])",
                                                   rules[i]["expr"])}
            deps = [j for j, r in enumerate(rules) if r["record"] in reads and j != i]
            level[i] = 1 + max((depth(j) for j in deps if j < i), default=-1)
        return level[i]

    for i in range(len(rules)):
        depth(i)
    out: list[list[dict[str, Any]]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for i, rule in enumerate(rules):
        out[level[i]].append(rule)
    return out


def evaluate_rule(prometheus: BlockPrometheus, rule: dict[str, Any], start: float, end: float,
                  step: float) -> dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]:
    """What a rule records at start, start + step, ..., end: its expression's query_range, the
    record's name and the rule's labels set on every series."""
    out: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for chunk in _rule_chunks(prometheus, rule, start, end, step):
        for series in chunk:
            labels = {**series["metric"], **rule.get("labels", {}), "__name__": rule["record"]}
            key = tuple(sorted(labels.items()))
            out.setdefault(key, []).extend((float(ts), float(v)) for ts, v in series["values"])
    return out


def _rule_chunks(prometheus: BlockPrometheus, rule: dict[str, Any], start: float, end: float,
                 step: float) -> Iterator[list[dict[str, Any]]]:
    """The rule's query_range result in chunks of at most 10,000 steps (the API's limit is
    11,000 points per series), oldest first."""
    chunk = step * 10_000
    t = start
    while t <= end:
        stop = min(end, t + chunk - step)
        body = prometheus.api("/api/v1/query_range", {
            "query": rule["expr"], "start": f"{t:.3f}", "end": f"{stop:.3f}", "step": f"{step}"})
        result: list[dict[str, Any]] = body["data"]["result"]
        yield result
        t = stop + step


Span = tuple[float, float, float] | tuple[float, float, float, float]
"""(start, end, step[, every]) of a rule's evaluations: start, start + step, ..., end; with
`every` (a divisor of step), each evaluation is also written at t - every, t - 2 every, ...,
after the previous one: the density of a live group at an interval of `every`, the values of
the evaluations at `step` (all a reader on that grid sees)."""


def _held(samples: list[tuple[float, float]], step: float, every: float
          ) -> list[tuple[float, float]]:
    """Each (t, v) also at t - every, t - 2 every, ... after t - step."""
    n = round(step / every)
    return [(t - k * every, v) for t, v in samples for k in range(n - 1, -1, -1)]


def _write_rule(writer: OpenMetricsWriter, prometheus: BlockPrometheus, rule: dict[str, Any],
                spans: Sequence[Span], written: set[tuple[tuple[str, str], ...]]) -> None:
    """Streams what the rule records into the writer (its family already open): one
    query_range in memory at a time, not the level's (several spans: one rule's, merged in
    time order; the spans must be in time order and not overlap). A series already in
    `written` (another rule of the file recorded it) is left out."""
    extra = {k: str(v) for k, v in rule.get("labels", {}).items()}

    def first(labels: dict[str, str]) -> bool:
        key = tuple(sorted({**labels, "__name__": rule["record"]}.items()))
        if key in written:
            return False
        written.add(key)
        return True

    if (len(spans) == 1 and len(spans[0]) == 3
            and (spans[0][1] - spans[0][0]) / spans[0][2] < 10_000):
        # one query: each series' samples as they come
        for chunk in _rule_chunks(prometheus, rule, *spans[0][:3]):
            for series in chunk:
                labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
                if first({**labels, **extra}):
                    writer.series(rule["record"], {**labels, **extra},
                                  ((float(ts), float(v)) for ts, v in series["values"]))
        return
    merged: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for span in spans:
        start, end, step = span[:3]
        every = span[3] if len(span) == 4 else step
        for key, samples in evaluate_rule(prometheus, rule, start, end, step).items():
            merged.setdefault(key, []).extend(_held(samples, step, every))
    for key, samples in merged.items():
        labels = {k: v for k, v in key if k != "__name__"}
        if first(labels):
            writer.series(rule["record"], labels, samples)


def backfill_rules(prometheus: BlockPrometheus, rules: Sequence[dict[str, Any]], start: float,
                   end: float, work: Path, step: float = 60.0, *,
                   max_block_duration: str | None = None) -> list[int]:
    """Backfills the recording rules over [start, end] every `step` seconds, level by level,
    into the server's data directory, restarting it after each level; the number of rules per
    level. Each rule is evaluated as `promtool tsdb create-blocks-from rules` does it (its
    expression's query_range at that step), written as OpenMetrics and turned into blocks by
    `promtool tsdb create-blocks-from openmetrics`: Prometheus 2.42's rule backfill itself
    drops samples at random (two runs over the same blocks record different series counts at
    the same times), which this does not. Each rule's series are streamed to the file as its
    query returns, so memory holds one rule's result, not a level's."""
    return backfill_rule_spans(prometheus, rules, [(start, end, step)], work,
                               max_block_duration=max_block_duration)


def backfill_rule_spans(prometheus: BlockPrometheus, rules: Sequence[dict[str, Any]],
                        spans: Sequence[Span] | Callable[[dict[str, Any]], Sequence[Span]],
                        work: Path, *, max_block_duration: str | None = None) -> list[int]:
    """backfill_rules over several spans, each at its own step (in time order, disjoint), the
    same for every rule or per rule (`spans(rule)`): a record evaluated at the cadence its
    readers need, such as every 5 minutes on the grid that a `[1d:5m]` subquery reads and
    every minute over the last hour that the instant and `[1h]` readers see. With several
    spans a rule's result is held in memory before it is written (its series' samples must be
    together)."""
    spans_of = spans if callable(spans) else (lambda _: spans)
    sizes = []
    for n, group in enumerate(dependency_levels(rules)):
        path = work / f"level{n}.om"
        by_record: dict[str, list[dict[str, Any]]] = {}
        for rule in group:  # a family's series together: the rules of one record in a row
            by_record.setdefault(rule["record"], []).append(rule)
        written: set[tuple[tuple[str, str], ...]] = set()
        with path.open("w", buffering=1 << 20) as out:
            writer = OpenMetricsWriter(out)
            for name, rules_of_name in by_record.items():
                writer.family(name, "gauge")
                for rule in rules_of_name:
                    _write_rule(writer, prometheus, rule, spans_of(rule), written)
            writer.close()
        blocks = work / f"level{n}.blocks"
        backfill_openmetrics(path, blocks, max_block_duration=max_block_duration)
        path.unlink()
        for block in blocks.iterdir():
            shutil.move(str(block), prometheus.data_dir / block.name)
        prometheus.restart()
        sizes.append(len(group))
    return sizes
