"""Alerts that reach a person: the rule pack's per-day budget alert, evaluated by Debian's real
Prometheus, routed by Debian's real Alertmanager to a webhook receiver that this test runs.

The alert needs a day's total over the budget, and then `for: 5m`. Neither may take minutes
here, and the rule file is used exactly as shipped (its `for` included). Instead, Prometheus
starts on an hour of history, as if it had been running the pack for that hour and restarted:

1. the synthetic exporter's counters (tests/test_report.py) are backfilled for HISTORY_S with
   `promtool tsdb create-blocks-from openmetrics`;
2. every recording rule of the pack and of the budget group is backfilled over the same hour
   with `promtool tsdb create-blocks-from rules`. promtool evaluates each rule against a
   running Prometheus, so a rule that reads another rule's output needs that output loaded
   first: the test repeats the backfill, each pass against the raw history plus the previous
   pass's blocks, until a pass writes exactly what the one before wrote (a fixed point: every
   rule then reads correct inputs, however the groups are structured);
3. the alert's own history: from the first evaluation in that hour at which its expression
   held (a range query of the expression) Prometheus would have recorded ALERTS_FOR_STATE,
   whose value is the time the alert became active. That series is backfilled too.

On start, Prometheus restores the alert's `for` state from ALERTS_FOR_STATE (rules/manager.go,
RestoreForState): the alert has been pending for longer than 5 minutes, so it fires at the
next evaluation. Prometheus restores only alerts whose `for` is at least
`--rules.alert.for-grace-period` (10m by default, more than the pack's 5m), so the test sets
that flag to 1m: a server flag, not a change to the rules. The alert fires seconds after the
start, sometimes before Prometheus' notifier has discovered the Alertmanager, which drops that
first notification; `--rules.alert.resend-delay=2s` (1m by default) sends it again soon."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e_node import free_port
from tests.support import REPO, require_binary, stop_process, wait_http_ok
from tests.test_report import (
    CO2E_RATE,
    GPU_GRAMS,
    LIFETIME_SECONDS,
    PUE,
    SERVER_GRAMS,
    Prometheus,
    SyntheticExporter,
    backfill,
    get_json,
)

pytestmark = pytest.mark.slow(seconds=30)

RULES = REPO / "rules" / "footprint.rules.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
BUDGET_ALERT = "FootprintModelDailyEmissionsOverBudget"
RUNBOOK_URL = ("https://github.com/footprint-exporter/footprint/blob/main/docs/runbooks.md"
               "#footprintmodeldailyemissionsoverbudget")
MODEL = "llama"
"""The synthetic exporter's one model (tests/test_report.py: 0.5 g/s operational)."""
HISTORY_S = 3600
"""An hour of history: within Prometheus' --rules.alert.for-outage-tolerance (1h)."""
EVAL_S = 60
"""The evaluation interval of the backfilled hour (promtool's default)."""
BUDGET_GRAMS = 1000.0
"""The day's budget: the hour's ~2.18 kg is over it; reached about 27 minutes in."""
DAY_GRAMS = HISTORY_S * (CO2E_RATE * PUE + 0.5 * (SERVER_GRAMS + GPU_GRAMS) / LIFETIME_SECONDS)
"""What the hour emitted: operational x PUE (operational + infrastructure) + embodied (half
the node's GPUs)."""
MAX_PASSES = 8
GRACE = "1m"
RESEND = "2s"
"""Prometheus sends a firing alert again after this (1m by default). The first send can come
before Prometheus has discovered the Alertmanager, and is then dropped."""
RECEIVER = "footprint-budget"
SI = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@pytest.fixture
def binaries() -> dict[str, str]:
    return {name: require_binary(name)
            for name in ("prometheus", "promtool", "prometheus-alertmanager")}


class Webhook:
    """Alertmanager's webhook receiver: records each notification's JSON body."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.put(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """Debian's prometheus-alertmanager on a free loopback port, clustering off."""

    def __init__(self, binary: str, tmp_path: Path, webhook_url: str) -> None:
        config = {
            "route": {
                "receiver": "nobody", "group_by": ["alertname", "model"],
                "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h",
                "routes": [{"receiver": RECEIVER, "matchers": [f'alertname="{BUDGET_ALERT}"']}],
            },
            "receivers": [{"name": "nobody"}, {
                "name": RECEIVER,
                "webhook_configs": [{"url": webhook_url, "send_resolved": False}]}],
        }
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "alertmanager.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={path}", f"--storage.path={tmp_path / 'am'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_http_ok(f"{self.url}/-/ready", self.proc, "alertmanager", self.log.read_text,
                     timeout)

    def stop(self) -> None:
        stop_process(self.proc, 15)


def budget_rules(path: Path) -> Path:
    """The budget group as the chart generates it (rules/budgets.example.yaml), one model."""
    path.write_text(yaml.safe_dump({"groups": [{"name": "footprint.budgets", "rules": [{
        "record": "model:footprint_co2e_daily_budget_grams",
        "expr": f'label_replace(vector({BUDGET_GRAMS!r}), "model", "{MODEL}", "", "")'}]}]}))
    return path


def budget_alert_rule() -> dict[str, Any]:
    pack = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in pack["groups"] for r in g["rules"] if r.get("alert") == BUDGET_ALERT]
    return dict(rule)


def storage(path: Path, *block_dirs: Path) -> Path:
    """A fresh TSDB directory holding copies of the blocks in `block_dirs`."""
    path.mkdir()
    for source in block_dirs:
        for block in source.iterdir():
            if (block / "meta.json").is_file():
                shutil.copytree(block, path / block.name)
    return path


def promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"promtool {' '.join(args[:3])}:\n{done.stdout}{done.stderr}"
    return done.stdout


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    body = get_json(url, "/api/v1/query_range", query=expr, start=f"{start:.3f}",
                    end=f"{end:.3f}", step=f"{EVAL_S}s")
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def backfill_rules(tmp_path: Path, raw: Path, rule_files: list[Path], start: float, end: float
                   ) -> tuple[Path, dict[str, float]]:
    """Blocks of every recording rule over [start, end] (module docstring, step 2), and the
    first time each model's budget alert expression held in that range (step 3)."""
    previous: Path | None = None
    previous_dump = ""
    alert = budget_alert_rule()
    for n in range(1, MAX_PASSES + 1):
        inputs = [raw] if previous is None else [raw, previous]
        tsdb = storage(tmp_path / f"pass{n}-tsdb", *inputs)
        config = tmp_path / f"pass{n}.yml"
        config.write_text(json.dumps({"global": {"evaluation_interval": f"{EVAL_S}s"}}))
        prom = Prometheus(tmp_path, config, tsdb, name=f"pass{n}-prometheus")
        try:
            prom.wait_ready()
            out = tmp_path / f"pass{n}-rules"
            promtool("tsdb", "create-blocks-from", "rules", "--quiet", f"--url={prom.url}",
                     f"--start={int(start)}", f"--end={int(end)}", f"--output-dir={out}",
                     f"--eval-interval={EVAL_S}s", *map(str, rule_files))
            (out / "wal").mkdir()  # `promtool tsdb dump` opens it as a database
            dump = promtool("tsdb", "dump", str(out))
            assert dump.strip(), f"pass {n} recorded nothing"
            if dump == previous_dump:  # a fixed point: the inputs were already complete
                assert previous is not None
                series = query_range(prom.url, alert["expr"], start, end)
                first = {s["metric"]["model"]: float(s["values"][0][0]) for s in series}
                return previous, first
        finally:
            prom.stop()
        previous, previous_dump = out, dump
    raise AssertionError(f"the recording rules' backfill did not settle in {MAX_PASSES} passes")


def backfill_for_state(tmp_path: Path, out: Path, alert: dict[str, Any], model: str,
                       active_at: float, end: float) -> None:
    """ALERTS_FOR_STATE as Prometheus records it at each evaluation of an active alert: the
    alert's labels (the rule's and the expression's), value = the time it became active."""
    labels = {"alertname": alert["alert"], **alert.get("labels", {}), "model": model}
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    lines = ["# TYPE ALERTS_FOR_STATE gauge"]
    t = active_at
    while t <= end:
        lines.append(f"ALERTS_FOR_STATE{{{text}}} {int(active_at)} {t:.3f}")
        t += EVAL_S
    source = tmp_path / "for_state.om"
    source.write_text("\n".join(lines) + "\n# EOF\n")
    promtool("tsdb", "create-blocks-from", "openmetrics", str(source), str(out))


def humanized(text: str) -> float:
    """The inverse of Prometheus' `humanize` (%.4g and an SI prefix): 2.183k -> 2183."""
    match = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)([kMGT]?)", text)
    assert match, f"not a humanized number: {text!r}"
    return float(match.group(1)) * SI[match.group(2)]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+\s+(.+)$", markdown, re.MULTILINE)}


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


def test_budget_alert_reaches_the_webhook(binaries: dict[str, str], webhook: Webhook,
                                          tmp_path: Path) -> None:
    began = time.monotonic()
    alert = budget_alert_rule()
    assert alert["for"] == "5m", "the pack's `for` changed: check the grace period below"
    budgets = budget_rules(tmp_path / "budgets.yaml")
    t0 = time.time() - HISTORY_S
    exporter = SyntheticExporter(t0)
    alertmanager = Alertmanager(binaries["prometheus-alertmanager"], tmp_path, webhook.url)
    prom: Prometheus | None = None
    try:
        raw = tmp_path / "raw"
        end = time.time()
        backfill(tmp_path, raw, t0, end, exporter.address)
        recorded, first_true = backfill_rules(tmp_path, raw, [RULES, budgets], t0, end)
        assert set(first_true) == {MODEL}, first_true
        active_at = first_true[MODEL]
        # the budget is reached within the hour, more than `for` before its end
        assert t0 < active_at < end - 300, (t0, active_at, end)
        for_state = tmp_path / "for-state"
        backfill_for_state(tmp_path, for_state, alert, MODEL, active_at, end)

        alertmanager.wait_ready()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES), str(budgets)],
            "alerting": {"alertmanagers": [{"static_configs": [{
                "targets": [f"127.0.0.1:{alertmanager.port}"]}]}]},
            "scrape_configs": [{"job_name": "footprint-exporter", "honor_labels": True,
                                "static_configs": [{"targets": [exporter.address]}]}],
        }))
        prom = Prometheus(tmp_path, config, storage(tmp_path / "tsdb", raw, recorded, for_state),
                          args=[f"--rules.alert.for-grace-period={GRACE}",
                                f"--rules.alert.resend-delay={RESEND}"])
        prom.wait_ready()

        try:
            payload = webhook.received.get(timeout=60)
        except queue.Empty:
            raise AssertionError(
                "no notification within 60 s; Prometheus' alerts: "
                f"{get_json(prom.url, '/api/v1/alerts')['data']}; Alertmanager's: "
                f"{get_json(alertmanager.url, '/api/v2/alerts')}; Prometheus' Alertmanagers: "
                f"{get_json(prom.url, '/api/v1/alertmanagers')['data']}\n"
                f"{alertmanager.log.read_text()[-3000:]}") from None
        elapsed = time.monotonic() - began
        print(f"\nwebhook payload after {elapsed:.1f} s:\n{json.dumps(payload, indent=2)}")

        # the real rule, with its real `for`
        rules = get_json(prom.url, "/api/v1/rules", type="alert")["data"]["groups"]
        (loaded,) = [r for g in rules for r in g["rules"] if r["name"] == BUDGET_ALERT]
        assert loaded["duration"] == 300
        # it fires because it has been active since the restored time, over 5 minutes ago
        (firing,) = [a for a in get_json(prom.url, "/api/v1/alerts")["data"]["alerts"]
                     if a["labels"]["alertname"] == BUDGET_ALERT]
        assert firing["state"] == "firing"
        assert datetime.fromisoformat(firing["activeAt"]).timestamp() == int(active_at)

        assert payload["receiver"] == RECEIVER
        assert payload["status"] == "firing"
        (got,) = payload["alerts"]
        assert got["status"] == "firing"
        assert got["labels"] == {"alertname": BUDGET_ALERT, "model": MODEL,
                                 **alert.get("labels", {})}
        annotations = got["annotations"]
        # an absolute runbook link, to a section that exists
        assert annotations["runbook_url"] == RUNBOOK_URL
        fragment = urllib.parse.urlsplit(RUNBOOK_URL).fragment
        assert fragment in github_anchors(RUNBOOKS.read_text()), fragment
        # the day's grams, and the budget printed by the `query` template
        description = annotations["description"]
        match = re.search(r"emitted (\S+)g CO2e", description)
        assert match, description
        grams = humanized(match.group(1))
        # The daily rule may be a Riemann sum of 5-minute rates at 5-minute boundaries
        # (docs/rules.md): over an hour that began off a boundary it holds 11 or 12 of the 12
        # steps. Hence one step's grams, plus 2 % for the rates' edges.
        step_grams = DAY_GRAMS * 300 / HISTORY_S
        assert grams == pytest.approx(DAY_GRAMS, abs=step_grams + 0.02 * DAY_GRAMS), description
        assert f"its daily budget is {BUDGET_GRAMS / 1000:g}kg." in description, description
        assert MODEL in annotations["summary"]
        assert datetime.fromisoformat(got["startsAt"].replace("Z", "+00:00")) <= datetime.now(UTC)
        assert got["generatorURL"].startswith("http")
    finally:
        if prom is not None:
            prom.stop()
        alertmanager.stop()
        exporter.close()
    # nothing but this alert reached this receiver
    while not webhook.received.empty():
        extra = webhook.received.get_nowait()
        assert {a["labels"]["alertname"] for a in extra["alerts"]} == {BUDGET_ALERT}
