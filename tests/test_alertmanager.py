"""Alerts that reach a person: the rule pack's per-day budget alerts, a model's and a team's
(chargeback, docs/chargeback.md), evaluated by Debian's real Prometheus, routed by Debian's real
Alertmanager to a webhook receiver that this test runs; the team's alert is routed on its
`label_team` as docs/chargeback.md shows, and resolves when its budget is raised.

The alert needs a day's total over the budget, and then `for: 5m`. Neither may take minutes
here, and the rule file is used exactly as shipped (its `for` included). Instead, Prometheus
starts on an hour of history, as if it had been running the pack for that hour and restarted:

1. the synthetic exporter's counters (tests/test_report.py), plus the container's
   footprint_container_info with `label_team="vision"` (as the exporter publishes it with
   `kubernetes.pod_label_allowlist: [team]`), are backfilled for HISTORY_S with
   `promtool tsdb create-blocks-from openmetrics`;
2. every recording rule of the pack and of the budget group is backfilled over the same hour
   with `promtool tsdb create-blocks-from rules`. promtool evaluates each rule against a
   running Prometheus, so a rule that reads another rule's output needs that output loaded
   first: the test repeats the backfill, each pass against the raw history plus the previous
   pass's blocks, until a pass writes exactly what the one before wrote (a fixed point: every
   rule then reads correct inputs, however the groups are structured);
3. each alert's own history: from the first evaluation in that hour at which its expression
   held (a range query of the expression) Prometheus would have recorded ALERTS_FOR_STATE,
   whose value is the time the alert became active. Those series are backfilled too.

On start, Prometheus restores the alerts' `for` state from ALERTS_FOR_STATE (rules/manager.go,
RestoreForState): each has been pending for longer than 5 minutes, so it fires at the next
evaluation. Prometheus restores only alerts whose `for` is at least
`--rules.alert.for-grace-period` (10m by default, more than the pack's 5m), so the test sets
that flag to 1m: a server flag, not a change to the rules. The alert fires seconds after the
start, sometimes before Prometheus' notifier has discovered the Alertmanager, which drops that
first notification; `--rules.alert.resend-delay=2s` (1m by default) sends it again soon.

Then the team's budget is raised, as an operator would: the budgets rule file is rewritten and
Prometheus reloaded (POST /-/reload, `--web.enable-lifecycle`); the team's alert resolves at
the next evaluation and Alertmanager sends a `resolved` notification (its receiver has
`send_resolved`), while the model's alert keeps firing."""

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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e_node import free_port
from tests.support import REPO, require_binary, stop_process, wait_http_ok
from tests.support.report import (
    CO2E_RATE,
    CONTAINER,
    ENERGY_RATE,
    GPU_GRAMS,
    LIFETIME_SECONDS,
    PUE,
    SERVER_GRAMS,
    Prometheus,
    SyntheticExporter,
    backfill,
    exposition,
    get_json,
)

pytestmark = pytest.mark.slow(seconds=30)

RULES = REPO / "rules" / "footprint.rules.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
BUDGET_ALERT = "FootprintModelDailyEmissionsOverBudget"
RUNBOOK_URL = ("https://github.com/footprint-exporter/footprint/blob/main/docs/runbooks.md"
               "#footprintmodeldailyemissionsoverbudget")
TEAM_ALERT = "FootprintTeamDailyEmissionsOverBudget"
TEAM_RUNBOOK_URL = ("https://github.com/footprint-exporter/footprint/blob/main/docs/runbooks.md"
                    "#footprintteamdailyemissionsoverbudget")
KEY_LABEL = {BUDGET_ALERT: "model", TEAM_ALERT: "label_team"}
"""Each budget alert's one label from its expression."""
MODEL = "llama"
"""The synthetic exporter's one model (tests/test_report.py: 0.5 g/s operational)."""
TEAM = "vision"
"""The `label_team` of the synthetic exporter's one container: the team's grams are the
model's."""
HISTORY_S = 3600
"""An hour of history: within Prometheus' --rules.alert.for-outage-tolerance (1h)."""
EVAL_S = 60
"""The evaluation interval of the backfilled hour (promtool's default)."""
BUDGET_GRAMS = 1000.0
"""The day's budget, the model's and the team's: the hour's ~2.18 kg is over it; reached about
27 minutes in."""
RAISED_GRAMS = 1e9
"""The team's budget after the raise: the alert resolves."""
DAY_GRAMS = HISTORY_S * (CO2E_RATE * PUE + 0.5 * (SERVER_GRAMS + GPU_GRAMS) / LIFETIME_SECONDS)
"""What the hour emitted: operational x PUE (operational + infrastructure) + embodied (half
the node's GPUs)."""
MAX_PASSES = 10
GRACE = "1m"
RESEND = "2s"
"""Prometheus sends a firing alert again after this (1m by default). The first send can come
before Prometheus has discovered the Alertmanager, and is then dropped."""
RECEIVER = "footprint-budget"
TEAM_RECEIVER = "vision-team"
"""The team's receiver, routed on `label_team` (docs/chargeback.md), resolved alerts sent."""
SI = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@pytest.fixture
def binaries() -> dict[str, str]:
    return {name: require_binary(name)
            for name in ("prometheus", "promtool", "prometheus-alertmanager")}


def with_team(now: float, t0: float, *, timestamp: bool = False) -> str:
    """tests/support/report.py's synthetic exposition, plus the container's info series with the
    `label_team` the exporter adds for a pod labelled `team: vision`."""
    ts = f" {now:.3f}" if timestamp else ""
    team = f'node="n1",label="label_team",value="{TEAM}"'
    counter = f'{team},component="gpu",mode="dynamic"'
    return (exposition(now, t0, timestamp=timestamp)
            + "# TYPE footprint_container_info gauge\n"
            + f'footprint_container_info{{node="n1",{CONTAINER},label_team="{TEAM}"}} 1{ts}\n'
            # the exporter's sums for the team (exporter.chargeback): its one container's
            + "# TYPE footprint_chargeback_co2e_grams counter\n"
            + f"footprint_chargeback_co2e_grams_total{{{counter}}} {CO2E_RATE * (now - t0)}{ts}\n"
            + "# TYPE footprint_chargeback_energy_joules counter\n"
            + f"footprint_chargeback_energy_joules_total{{{counter}}} "
              f"{ENERGY_RATE * (now - t0)}{ts}\n"
            + "# TYPE footprint_chargeback_allocation_ratio gauge\n"
            + f'footprint_chargeback_allocation_ratio{{{team},resource="gpu"}} 0.5{ts}\n')


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
                "receiver": "nobody", "group_by": ["alertname", "model", "label_team"],
                "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h",
                "routes": [
                    {"receiver": RECEIVER, "matchers": [f'alertname="{BUDGET_ALERT}"']},
                    {"receiver": TEAM_RECEIVER,
                     "matchers": ['alertname=~"FootprintTeam.*OverBudget"',
                                  f'label_team="{TEAM}"']}],
            },
            "receivers": [{"name": "nobody"}, {
                "name": RECEIVER,
                "webhook_configs": [{"url": webhook_url, "send_resolved": False}]}, {
                "name": TEAM_RECEIVER,
                "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
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


def budget_rules(path: Path, team_grams: float = BUDGET_GRAMS) -> Path:
    """The budget groups as the chart generates them (rules/budgets.example.yaml, one model;
    rules/chargeback-budgets.example.yaml, one team's daily budget)."""
    path.write_text(yaml.safe_dump({"groups": [{"name": "footprint.budgets", "rules": [{
        "record": "model:footprint_co2e_daily_budget_grams",
        "expr": f'label_replace(vector({BUDGET_GRAMS!r}), "model", "{MODEL}", "", "")'}]}, {
        "name": "footprint.chargeback.budgets", "rules": [{
            "record": "label_team:footprint_co2e_daily_budget_grams",
            "expr": f'label_replace(vector({team_grams!r}), "label_team", "{TEAM}", "", "")'}]}]}))
    return path


def budget_alert_rule(name: str = BUDGET_ALERT) -> dict[str, Any]:
    pack = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in pack["groups"] for r in g["rules"] if r.get("alert") == name]
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
                   ) -> tuple[Path, dict[str, dict[str, float]]]:
    """Blocks of every recording rule over [start, end] (module docstring, step 2), and the
    first time each budget alert's expression held in that range, per alert and model or team
    (step 3)."""
    previous: Path | None = None
    previous_dump = ""
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
                first = {}
                for name, key in KEY_LABEL.items():
                    series = query_range(prom.url, budget_alert_rule(name)["expr"], start, end)
                    first[name] = {s["metric"][key]: float(s["values"][0][0]) for s in series}
                return previous, first
        finally:
            prom.stop()
        previous, previous_dump = out, dump
    raise AssertionError(f"the recording rules' backfill did not settle in {MAX_PASSES} passes")


def backfill_for_state(tmp_path: Path, out: Path,
                       active: list[tuple[dict[str, Any], dict[str, str], float]],
                       end: float) -> None:
    """ALERTS_FOR_STATE as Prometheus records it at each evaluation of an active alert, for
    each (alert rule, its expression's labels, the time it became active) in `active`: the
    alert's labels (the rule's and the expression's), value = the time it became active."""
    lines = ["# TYPE ALERTS_FOR_STATE gauge"]
    for alert, own, active_at in active:
        labels = {"alertname": alert["alert"], **alert.get("labels", {}), **own}
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
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


def diagnosis(prom: Prometheus, alertmanager: Alertmanager) -> str:
    return (f"Prometheus' alerts: {get_json(prom.url, '/api/v1/alerts')['data']}; "
            f"Alertmanager's: {get_json(alertmanager.url, '/api/v2/alerts')}; Prometheus' "
            f"Alertmanagers: {get_json(prom.url, '/api/v1/alertmanagers')['data']}\n"
            f"{alertmanager.log.read_text()[-3000:]}")


def notification(webhook: Webhook, seen: list[dict[str, Any]], receiver: str, status: str,
                 timeout: float, why: Callable[[], str]) -> dict[str, Any]:
    """The first notification to `receiver` with `status`: among `seen`, else the next from the
    webhook within `timeout` seconds (each received is appended to `seen`)."""
    deadline = time.monotonic() + timeout
    while True:
        for payload in seen:
            if (payload["receiver"], payload["status"]) == (receiver, status):
                return payload
        try:
            seen.append(webhook.received.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"no {status} notification to {receiver} within {timeout} s; "
                                 f"received {seen}; {why()}") from None


def day_grams(description: str) -> float:
    """The day's grams that a budget alert's description prints."""
    match = re.search(r"emitted (\S+)g CO2e", description)
    assert match, description
    # The daily rule may be a Riemann sum of 5-minute rates at 5-minute boundaries
    # (docs/rules.md): over an hour that began off a boundary it holds 11 or 12 of the 12
    # steps. Hence one step's grams, plus 2 % for the rates' edges.
    grams = humanized(match.group(1))
    step_grams = DAY_GRAMS * 300 / HISTORY_S
    assert grams == pytest.approx(DAY_GRAMS, abs=step_grams + 0.02 * DAY_GRAMS), description
    return grams


def test_budget_alert_reaches_the_webhook(binaries: dict[str, str], webhook: Webhook,
                                          tmp_path: Path) -> None:
    began = time.monotonic()
    alert = budget_alert_rule()
    team_alert = budget_alert_rule(TEAM_ALERT)
    for rule in (alert, team_alert):
        assert rule["for"] == "5m", "the pack's `for` changed: check the grace period below"
    budgets = budget_rules(tmp_path / "budgets.yaml")
    # the synthetic exporter, scraped and backfilled, publishes the team's info series too
    t0 = time.time() - HISTORY_S
    exporter = SyntheticExporter(t0, with_team)
    alertmanager = Alertmanager(binaries["prometheus-alertmanager"], tmp_path, webhook.url)
    prom: Prometheus | None = None
    seen: list[dict[str, Any]] = []
    try:
        raw = tmp_path / "raw"
        end = time.time()
        backfill(tmp_path, raw, t0, end, exporter.address, with_team)
        recorded, first_true = backfill_rules(tmp_path, raw, [RULES, budgets], t0, end)
        assert first_true.keys() == {BUDGET_ALERT, TEAM_ALERT}, first_true
        assert set(first_true[BUDGET_ALERT]) == {MODEL}, first_true
        assert set(first_true[TEAM_ALERT]) == {TEAM}, first_true
        active_at = first_true[BUDGET_ALERT][MODEL]
        team_active_at = first_true[TEAM_ALERT][TEAM]
        # each budget is reached within the hour, more than `for` before its end
        for at in (active_at, team_active_at):
            assert t0 < at < end - 300, (t0, at, end)
        for_state = tmp_path / "for-state"
        backfill_for_state(tmp_path, for_state, [
            (alert, {"model": MODEL}, active_at),
            (team_alert, {"label_team": TEAM}, team_active_at)], end)

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
                                f"--rules.alert.resend-delay={RESEND}", "--web.enable-lifecycle"])
        prom.wait_ready()
        running = prom

        def why() -> str:
            return diagnosis(running, alertmanager)

        payload = notification(webhook, seen, RECEIVER, "firing", 60, why)
        team_payload = notification(webhook, seen, TEAM_RECEIVER, "firing", 30, why)
        elapsed = time.monotonic() - began
        print(f"\nwebhook payloads after {elapsed:.1f} s:\n{json.dumps(seen, indent=2)}")

        # the real rules, with their real `for`
        rules = get_json(prom.url, "/api/v1/rules", type="alert")["data"]["groups"]
        for name in (BUDGET_ALERT, TEAM_ALERT):
            (loaded,) = [r for g in rules for r in g["rules"] if r["name"] == name]
            assert loaded["duration"] == 300
        # each fires because it has been active since the restored time, over 5 minutes ago
        alerts = get_json(prom.url, "/api/v1/alerts")["data"]["alerts"]
        for name, at in ((BUDGET_ALERT, active_at), (TEAM_ALERT, team_active_at)):
            (firing,) = [a for a in alerts if a["labels"]["alertname"] == name]
            assert firing["state"] == "firing"
            assert datetime.fromisoformat(firing["activeAt"]).timestamp() == int(at)

        assert payload["receiver"] == RECEIVER
        assert payload["status"] == "firing"
        (got,) = payload["alerts"]
        assert got["status"] == "firing"
        assert got["labels"] == {"alertname": BUDGET_ALERT, "model": MODEL,
                                 **alert.get("labels", {})}
        annotations = got["annotations"]
        # an absolute runbook link, to a section that exists
        assert annotations["runbook_url"] == RUNBOOK_URL
        for url in (RUNBOOK_URL, TEAM_RUNBOOK_URL):
            fragment = urllib.parse.urlsplit(url).fragment
            assert fragment in github_anchors(RUNBOOKS.read_text()), fragment
        # the day's grams, and the budget printed by the `query` template
        description = annotations["description"]
        day_grams(description)
        assert f"its daily budget is {BUDGET_GRAMS / 1000:g}kg." in description, description
        assert MODEL in annotations["summary"]
        assert datetime.fromisoformat(got["startsAt"].replace("Z", "+00:00")) <= datetime.now(UTC)
        assert got["generatorURL"].startswith("http")

        # the team's alert, routed to the team's receiver on its label_team
        (team_got,) = team_payload["alerts"]
        assert team_got["status"] == "firing"
        assert team_got["labels"] == {"alertname": TEAM_ALERT, "label_team": TEAM,
                                      **team_alert.get("labels", {})}
        team_annotations = team_got["annotations"]
        assert team_annotations["runbook_url"] == TEAM_RUNBOOK_URL
        assert team_annotations["summary"] == (
            f"Team {TEAM} emitted more CO2e in the last 24 hours than its daily budget.")
        team_description = team_annotations["description"]
        assert team_description.startswith(f"Team {TEAM} emitted "), team_description
        day_grams(team_description)  # the team's one container is the model's
        assert f"its daily budget is {BUDGET_GRAMS / 1000:g}kg." in team_description

        # -- the team's budget raised: the budgets file rewritten, Prometheus reloaded --------
        budget_rules(budgets, team_grams=RAISED_GRAMS)
        request = urllib.request.Request(f"{prom.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        resolved = notification(webhook, seen, TEAM_RECEIVER, "resolved", 30, why)
        (gone,) = resolved["alerts"]
        assert gone["status"] == "resolved"
        assert gone["labels"] == team_got["labels"]
        assert gone["annotations"]["runbook_url"] == TEAM_RUNBOOK_URL
        ends = datetime.fromisoformat(gone["endsAt"].replace("Z", "+00:00"))
        assert ends <= datetime.now(UTC), gone
        # the model's alert fires on: only the team's budget changed
        alerts = get_json(prom.url, "/api/v1/alerts")["data"]["alerts"]
        assert {(a["labels"]["alertname"], a["state"]) for a in alerts
                if a["labels"]["alertname"] in KEY_LABEL} == {(BUDGET_ALERT, "firing")}, alerts
        print(f"resolved after {time.monotonic() - began:.1f} s")
    finally:
        if prom is not None:
            prom.stop()
        alertmanager.stop()
        exporter.close()
    # nothing but the budget alerts reached their receivers, the team's once resolved
    while not webhook.received.empty():
        seen.append(webhook.received.get_nowait())
    for extra in seen:
        name = {RECEIVER: BUDGET_ALERT, TEAM_RECEIVER: TEAM_ALERT}[extra["receiver"]]
        assert {a["labels"]["alertname"] for a in extra["alerts"]} == {name}, extra
    assert [p["status"] for p in seen if p["receiver"] == TEAM_RECEIVER] == \
        ["firing", "resolved"], seen
