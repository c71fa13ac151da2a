"""`footprint-exporter report --by namespace` and `--by label:KEY` (chargeback, issue 22),
`--month`, and the line of progress: unit tests against the fake Prometheus of
tests/test_report.py, and a backfilled day on a real Prometheus where the teams', namespaces'
and models' totals agree and each team's figures match a hand computation."""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import report
from exporter.report import cli
from tests.support.report import (
    GPU_BLOOM,
    LIFETIME_BLOOM,
    RULES,
    SERVER_BLOOM,
    FakePrometheus,
    NodeFacts,
    RunPod,
    prom,
    run,
    vector,
    write_exporter_series,
)

__all__ = ["prom"]  # the fixture, from tests/support/report.py

NS_CO2E = "namespace:footprint_co2e_grams:rate5m"
NS_ENERGY = "namespace:footprint_energy_joules:rate5m"
NS_WATER = "namespace:footprint_water_liters:rate5m"
TEAM_CO2E = "label_team:footprint_co2e_grams:rate5m"
TEAM_ENERGY = "label_team:footprint_energy_joules:rate5m"
TEAM_WATER = "label_team:footprint_water_liters:rate5m"


def scoped(label: str, value: str, **scopes: float) -> list[tuple[dict[str, str], float]]:
    return [({label: value, "scope": scope} if value else {"scope": scope}, grams)
            for scope, grams in scopes.items()]


def team_answers(prom: FakePrometheus) -> None:
    """Two teams and the pods without the label (no label_team: the value "")."""
    prom.by_rule = {
        TEAM_CO2E: (200, vector(
            *scoped("label_team", "vision", operational=600.0, infrastructure=120.0,
                    embodied=280.0, total=1000.0),
            *scoped("label_team", "nlp", operational=1_500.0, infrastructure=300.0,
                    embodied=200.0, total=2_000.0),
            *scoped("label_team", "", operational=80.0, infrastructure=8.0, embodied=12.0,
                    total=100.0))),
        TEAM_ENERGY: (200, vector(({"label_team": "vision"}, 5.4e6), ({"label_team": "nlp"}, 1.8e7),
                                  ({}, 3.6e6))),
        TEAM_WATER: (200, vector(({"label_team": "vision", "scope": "water_onsite"}, 0.75),
                                 ({"label_team": "vision", "scope": "water_offsite"}, 3.0))),
    }


def requests(prom: FakePrometheus) -> list[str]:
    return [r["query"] for r in prom.requests]


# --- --by namespace and --by label:KEY ------------------------------------------------------

async def test_by_namespace_sends_the_namespace_records(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.by_rule = {NS_CO2E: (200, vector(*scoped("namespace", "ml", operational=3.0,
                                                  infrastructure=0.6, embodied=0.4, total=4.0))),
                    NS_ENERGY: (200, vector(({"namespace": "ml"}, 7.2e6))),
                    NS_WATER: (200, vector())}
    assert await run("--prometheus", prom.url, "--by", "namespace", "--format", "json") == 0
    assert requests(prom) == [
        f"sum by (namespace, scope) (sum_over_time({NS_CO2E}[7d:5m])) * 300",
        f"sum by (namespace) (sum_over_time({NS_ENERGY}[7d:5m])) * 300",
        f"sum by (namespace, scope) (sum_over_time({NS_WATER}[7d:5m])) * 300",
    ]
    assert len({r["time"] for r in prom.requests}) == 1
    out, err = capsys.readouterr()
    ml, total = json.loads(out)
    assert list(ml) == list(report.fields(report.BY_NAMESPACE))
    assert (ml["namespace"], ml["total_grams"], ml["energy_kwh"], ml["embodied_share"]) == (
        "ml", 4.0, 2.0, 0.1)
    assert ml["water_onsite_liters"] is None
    assert (total["namespace"], total["total_grams"]) == (None, 4.0)
    assert err == ""


TEAM_TABLE = """\
CO2e per team, last 7d (step 5m)

TEAM    OPERATIONAL  INFRASTRUCTURE  EMBODIED    TOTAL  OPER%  INFRA%   EMB%  ENERGY kWh    ENERGY J  WATER ON-SITE L  WATER OFF-SITE L
(none)      80.0 g          8.00 g    12.0 g    100 g   80.0%    8.0%  12.0%        1.00   3,600,000                -                 -
nlp         1.50 kg          300 g     200 g   2.00 kg  75.0%   15.0%  10.0%        5.00  18,000,000                -                 -
vision       600 g           120 g     280 g   1.00 kg  60.0%   12.0%  28.0%        1.50   5,400,000            0.750              3.00
------  -----------  --------------  --------  -------  -----  ------  -----  ----------  ----------  ---------------  ----------------
TOTAL       2.18 kg          428 g     492 g   3.10 kg  70.3%   13.8%  15.9%        7.50  27,000,000            0.750              3.00
"""  # noqa: E501


async def test_by_label_team(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    """One row per team, pods without the label as (none) ("" in JSON), the header the key."""
    team_answers(prom)
    assert await run("--prometheus", prom.url, "--by", "label:team") == 0
    assert requests(prom) == [
        f"sum by (label_team, scope) (sum_over_time({TEAM_CO2E}[7d:5m])) * 300",
        f"sum by (label_team) (sum_over_time({TEAM_ENERGY}[7d:5m])) * 300",
        f"sum by (label_team, scope) (sum_over_time({TEAM_WATER}[7d:5m])) * 300",
    ]
    assert capsys.readouterr() == (TEAM_TABLE, "")

    assert await run("--prometheus", prom.url, "--by", "label:team", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["label_team"] for r in rows] == ["", "nlp", "vision", None]
    assert list(rows[0]) == ["label_team", *report.NUMBER_FIELDS]
    assert rows[-1]["total_grams"] == 3_100.0

    assert await run("--prometheus", prom.url, "--by", "label:team", "--format", "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("label_team,operational_grams,")
    assert [line.split(",")[0] for line in lines[1:]] == ["", "nlp", "vision", "TOTAL"]

    assert await run("--prometheus", prom.url, "--by", "label:team", "--format",
                     "markdown") == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[2].startswith("| TEAM | OPERATIONAL |")
    assert markdown[4].startswith("| (none) | 80.0 g |")
    assert markdown[-1].startswith("| **TOTAL** | **2.18 kg** |")


@pytest.mark.parametrize(("key", "label"), [
    ("team", "label_team"), ("cost-center", "label_cost_center"),
    ("costCenter", "label_cost_center"), ("example.com/team", "label_example_com_team"),
])
async def test_a_label_key_is_sanitised_as_the_exporter_publishes_it(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str], key: str, label: str) -> None:
    rule = f"{label}:footprint_co2e_grams:rate5m"
    prom.by_rule = {rule: (200, vector(*scoped(label, "a", operational=1.0))),
                    f"{label}:": (200, vector())}
    assert await run("--prometheus", prom.url, "--by", f"label:{key}", "--format", "json") == 0
    assert requests(prom)[:2] == [
        f"sum by ({label}, scope) (sum_over_time({rule}[7d:5m])) * 300",
        f"sum by ({label}) (sum_over_time({label}:footprint_energy_joules:rate5m[7d:5m])) * 300"]
    assert json.loads(capsys.readouterr().out)[0][label] == "a"


async def test_absent_label_records_name_the_chart_value(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    """No records for the key while the model records have data: one line that says what to
    set, exit 2, after one more query (the model records); no empty table."""
    rule = "label_project:footprint_co2e_grams:rate5m"
    prom.by_rule = {"label_project:": (200, vector())}
    assert await run("--prometheus", prom.url, "--by", "label:project") == 2
    assert requests(prom)[3] == (
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m[7d:5m]))"
        " * 300")
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus has no {rule} in the last 7d, though it "
        "has per-model records: the rule pack records no chargeback for the pod label "
        "'project'; add 'project' to the chart's prometheusRule.chargeback.labels and to the "
        "exporter's kubernetes.pod_label_allowlist (docs/chargeback.md)\n"))

    prom.requests.clear()  # the label name instead of the key: the line says which to give
    prom.by_rule = {"label_label_team:": (200, vector())}
    assert await run("--prometheus", prom.url, "--by", "label:label_team") == 2
    assert ("pod label 'label_team' (KEY is the pod label key as the allow-list names it: "
            "label:team, not label:label_team); add") in capsys.readouterr().err

    prom.by_rule = {"label_project:": (200, vector())}
    prom.co2e = (200, vector())  # no model records either: no data at all
    assert await run("--prometheus", prom.url, "--by", "label:project", "--since", "1d") == 1
    assert capsys.readouterr() == ("", (
        "footprint-exporter report: no footprint data in the last 1d (is the rule pack loaded "
        "and the exporter scraped?)\n"))


async def test_a_label_no_pod_has_warns(prom: FakePrometheus,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    prom.by_rule = {TEAM_CO2E: (200, vector(*scoped("label_team", "", operational=1.0))),
                    "label_team:": (200, vector())}
    assert await run("--prometheus", prom.url, "--by", "label:team", "--format", "csv") == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith(",1.0,")
    assert err == (
        "footprint-exporter report: warning: no pod had the label 'team' in the last 7d: "
        "everything is under (none); publish it with the exporter's "
        "kubernetes.pod_label_allowlist (docs/chargeback.md)\n")


async def test_a_hostile_team_value_is_neither_an_escape_nor_a_formula(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    """A label value is whoever labels the pod's choice: control characters stripped from the
    table, the CSV cell neutralised (docs/report.md, "A misbehaving Prometheus")."""
    prom.by_rule = {TEAM_CO2E: (200, vector(
        *scoped("label_team", "=HYPERLINK(\x1b[2J)", operational=1.0))),
        "label_team:": (200, vector())}
    assert await run("--prometheus", prom.url, "--by", "label:team", "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("'=HYPERLINK([2J),1.0,")
    assert await run("--prometheus", prom.url, "--by", "label:team") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.splitlines()[3].startswith("=HYPERLINK([2J) ")


@pytest.mark.parametrize(("args", "says"), [
    (["--by", "team"], "argument --by: expected model, run, namespace or label:KEY (label:team, "
     "label:cost-center); got 'team'"),
    (["--by", "label:"], "argument --by: expected label:KEY with a pod label key (label:team, "
     "label:cost-center, label:example.com/team); got ''"),
    (["--by", "label:-team"], "argument --by: expected label:KEY with a pod label key "
     "(label:team, label:cost-center, label:example.com/team); got '-team'"),
    (["--by", "label:te am"], "argument --by: expected label:KEY with a pod label key "
     "(label:team, label:cost-center, label:example.com/team); got 'te am'"),
    (["--month", "2026-13"], "argument --month: expected a calendar month as YYYY-MM, such as "
     "2026-11; got '2026-13'"),
    (["--month", "2026-1"], "argument --month: expected a calendar month as YYYY-MM, such as "
     "2026-11; got '2026-1'"),
    (["--month", "11/2026"], "argument --month: expected a calendar month as YYYY-MM, such as "
     "2026-11; got '11/2026'"),
    (["--month", "1969-12"], "argument --month: expected a calendar month as YYYY-MM, such as "
     "2026-11; got '1969-12'"),
])
def test_bad_by_and_month(capsys: pytest.CaptureFixture[str], args: list[str],
                          says: str) -> None:
    with pytest.raises(SystemExit) as exc:
        report.main(["--prometheus", "http://localhost:9090", *args])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"footprint-exporter report: error: {says} (see --help)\n"


# --- --month ---------------------------------------------------------------------------------

def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The report's now, settable: [2027-02-10T12:00:00Z] to begin with."""
    now = [at("2027-02-10T12:00:00")]
    monkeypatch.setattr(cli, "now", lambda: now[0])
    yield now


@pytest.mark.parametrize(("month", "until", "since"), [
    ("2026-11", "2026-12-01T00:00:00", "29d23h59m59s999ms"),
    ("2026-12", "2027-01-01T00:00:00", "30d23h59m59s999ms"),
    ("2024-02", "2024-03-01T00:00:00", "28d23h59m59s999ms"),  # a leap year
    ("2026-02", "2026-03-01T00:00:00", "27d23h59m59s999ms"),
])
async def test_month_is_the_calendar_month_in_utc(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str], clock: list[float],
        month: str, until: str, since: str) -> None:
    """Evaluated at the month's end, over its length less 1 ms: the points at the multiples of
    the step in (start, end], so that the point at the month's first instant (the 5 minutes
    before it) belongs to the month before, on Prometheus 2.x too."""
    team_answers(prom)
    assert await run("--prometheus", prom.url, "--by", "label:team", "--month", month) == 0
    assert requests(prom)[0] == (
        f"sum by (label_team, scope) (sum_over_time({TEAM_CO2E}[{since}:5m])) * 300")
    assert {float(r["time"]) for r in prom.requests} == {at(until)}
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"CO2e per team, {month} UTC (step 5m)"
    assert err == ""


async def test_the_current_month_is_summed_to_date(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str], clock: list[float]) -> None:
    clock[0] = at("2027-02-10T12:00:00.25")
    assert await run("--prometheus", prom.url, "--month", "2027-02", "--format", "csv") == 0
    assert requests(prom)[0] == (
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m"
        "[9d12h249ms:5m])) * 300")
    assert {r["time"] for r in prom.requests} == {f"{at('2027-02-10T12:00:00.25'):.3f}"}
    out, err = capsys.readouterr()
    assert out.startswith("model,phase,")
    assert err == ("footprint-exporter report: note: 2027-02 is not over; the figures are to "
                   "date, until 2027-02-10T12:00:00Z\n")
    assert await run("--prometheus", prom.url, "--month", "2027-02") == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "CO2e per model and phase, 2027-02 to date, until 2027-02-10T12:00:00Z (step 5m)")


@pytest.mark.parametrize(("args", "says"), [
    (["--month", "2027-03"], "--month 2027-03 has not begun yet; give a month up to the current "
     "one"),
    (["--month", "2026-11", "--since", "30d"], "--month and --since: choose one; --month sets "
     "the whole period (the calendar month in UTC)"),
    (["--month", "2026-11", "--until", "2026-12-01T00:00:00Z", "--since", "1d"],
     "--month and --since and --until: choose one; --month sets the whole period (the "
     "calendar month in UTC)"),
    (["--month", "2027-02", "--step", "1w3d"], "--step 1w3d is longer than --month 2027-02 so "
     "far"),
    (["--by", "namespace", "--model", "llama"], "--model applies to --by model and --by run; "
     "the namespace records are not split by model"),
])
def test_month_refusals(capsys: pytest.CaptureFixture[str], clock: list[float],
                        args: list[str], says: str) -> None:
    assert report.main(["--prometheus", "http://127.0.0.1:1", *args]) == 2
    assert capsys.readouterr() == ("", f"footprint-exporter report: error: {says}\n")


def test_months_tile() -> None:
    """Consecutive months cover each millisecond once: each ends where the next begins, and
    its sum leaves out its first instant."""
    now = at("2030-01-01T00:00:00")
    periods = [report.month_period(2026, m, None, now) for m in range(1, 13)]
    for before, after in itertools.pairwise(periods):
        assert after.until - after.since.seconds - 0.001 == pytest.approx(before.until)
    assert sum(p.since.seconds + 0.001 for p in periods) == pytest.approx(365 * 86_400)
    assert report.duration_of_ms(2_592_000_000 - 1).text == "29d23h59m59s999ms"
    assert report.duration_of_ms(90_000).text == "1m30s"


async def test_by_run_takes_month_too(prom: FakePrometheus, capsys: pytest.CaptureFixture[str],
                                      clock: list[float]) -> None:
    prom.co2e = prom.energy = prom.water = (200, vector())
    assert await run("--prometheus", prom.url, "--by", "run", "--month", "2026-11") == 1
    assert len(prom.requests) == 9
    assert all("[29d23h59m59s999ms:5m]" in q for q in requests(prom)
               if "gpu_count" not in q)
    assert capsys.readouterr().err == (
        'footprint-exporter report: no training runs in 2026-11 (containers with '
        'footprint_container_info{phase="training"} and an owner; is the rule pack loaded and '
        'the exporter scraped?)\n')


# --- the line of progress --------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_on_a_terminal(prom: FakePrometheus, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One line, rewritten with \\r before each query, blanked at the end; the table alone on
    stdout."""
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    team_answers(prom)
    assert await run("--prometheus", prom.url, "--by", "label:team") == 0
    assert capsys.readouterr().out == TEAM_TABLE
    shown = terminal.getvalue()
    assert "\n" not in shown
    lines = shown.split("\r")
    assert [line.rstrip().rsplit(" (", 1)[0] for line in lines[1:4]] == [
        "querying Prometheus, 1 of 3: co2e per team",
        "querying Prometheus, 2 of 3: energy per team",
        "querying Prometheus, 3 of 3: water per team"]
    assert lines[-2].strip() == "" and lines[-1] == ""  # blanked, cursor at the line's start
    assert len(lines[-2]) == len(lines[-3].rstrip())  # longer lines before: padded over


async def test_progress_is_cleared_before_an_error(
        prom: FakePrometheus, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    prom.energy = (200, {"status": "error", "errorType": "timeout", "error": "too slow"})
    assert await run("--prometheus", prom.url, "--by", "run") == 2
    shown = terminal.getvalue()
    assert "querying Prometheus, 1 of 9: co2e per training run" in shown
    assert shown.split("\r")[-1] == (
        f"footprint-exporter report: error: Prometheus at {prom.url} rejected the query: "
        "timeout: too slow\n")
    assert shown.split("\r")[-2].strip() == ""


@pytest.mark.parametrize("by", ["model", "run", "namespace", "label:team"])
async def test_no_progress_where_stderr_is_not_a_terminal(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str], by: str) -> None:
    team_answers(prom)
    code = await run("--prometheus", prom.url, "--by", by, "--format", "csv")
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "querying" not in err
    if by != "run":
        assert (code, err) == (0, "")


def test_every_record_the_report_reads_is_in_the_rule_pack() -> None:
    pack = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in pack["groups"] for r in g["rules"] if "record" in r}
    assert set(report.RULES) <= recorded, set(report.RULES) - recorded


# --- a backfilled day on a real Prometheus ---------------------------------------------------
#
# The exporters' series (tests/support/report.py's write_exporter_series: every minute, counters
# from 0 at each pod's start), then the rule pack's groups footprint.rate5m and
# footprint.chargeback backfilled at a 1-minute evaluation interval, and footprint.chargeback
# again for a second key, cost-center, as the chart renders it (label_team ->
# label_cost_center).

G = 1_701_302_400.0  # 2023-11-30T00:00:00Z, the last day of November
MIN, HOUR = 60.0, 3600.0
EMBODIED_PER_NODE = (SERVER_BLOOM + 8 * GPU_BLOOM) / LIFETIME_BLOOM
"""g/s: BLOOM's embodied defaults, a server and 8 GPUs over 6 years at 85% use."""


def chargeback_rules() -> list[dict[str, Any]]:
    pack = yaml.safe_load(RULES.read_text())
    groups = {g["name"]: g["rules"] for g in pack["groups"]}
    team = groups["footprint.chargeback"]
    cost_center = yaml.safe_load(yaml.safe_dump(team).replace("label_team", "label_cost_center"))
    return [*groups["footprint.rate5m"], *team, *cost_center]


@contextlib.contextmanager
def backfilled_day(tmp: Path, nodes: Mapping[str, NodeFacts], pods: Sequence[RunPod],
                   t0: float, t1: float) -> Iterator[str]:
    from tests.backfill import BlockPrometheus, backfill_openmetrics, backfill_rules
    from tests.support import require_binary

    require_binary("promtool")
    require_binary("prometheus")
    source = tmp / "exporters.om"
    write_exporter_series(source, nodes, pods, t0, t1)
    data = tmp / "data"
    backfill_openmetrics(source, data)
    with BlockPrometheus(data, lookback="59s") as prometheus:
        prometheus.start()
        backfill_rules(prometheus, chargeback_rules(), t0, t1 + 10 * MIN, tmp)
        yield prometheus.url


def report_json(url: str, *args: str) -> list[dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report.main(["--prometheus", url, "--format", "json", *args])
    assert (code, err.getvalue()) == (0, ""), err.getvalue()
    rows: list[dict[str, Any]] = json.loads(out.getvalue())
    return rows


FIGURES = ("operational_grams", "infrastructure_grams", "embodied_grams", "total_grams",
           "energy_joules", "water_onsite_liters", "water_offsite_liters")


@pytest.mark.slow(seconds=17)
def test_teams_and_namespaces_add_up_to_the_models_over_a_backfilled_day(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The Done-when of issue 22's report: over a backfilled day, `--by label:team`,
    `--by label:cost-center` and `--by namespace` give the `--by model` totals to 1e-6, every
    scope, energy and water; each team's figures match a hand computation to 1e-6; November
    and December add up to the whole span.

    Nodes (8 GPUs each, BLOOM's embodied defaults: 3,700 kg / 160,833,600 s = 0.0230051 g/s
    per node): n1 400 g/kWh, PUE 1.5, WUE 0.5 L/kWh, grid water 2.0 L/kWh; n2 200 g/kWh,
    PUE 1.1, no water gauges. Scrapes every minute from 2023-11-30 00:00 (G) to 01:00 on
    December 1st. Pods (GPU share of their node; team, cost-center):
      detector-0  ml        n1  2,000 W  0.5    vision, cc-1   from 00:02, on
      detector-1  ml        n2  1,000 W  0.25   vision, cc-1   from 00:02, on
      bert-train  research  n1  1,500 W  0.25   nlp, cc-2      from 00:02, on
      bert-batch  research  n2  3,600 W  0.25   nlp, cc-2      06:02 to 09:02 (it ends)
      vllm        serving   n2    500 W  0.125  (no labels)    from 00:02, on

    `--month 2023-11` sums the 5-minute points in (Nov 1, Dec 1 00:00]. Hand computation:
      seconds of energy: the pods that stay, 00:02 to 24:00 = 86,280 s (the first point,
        00:05, reads the rate of 3 minutes over 5: 0.6 x 300 s = the 180 s since 00:02);
        bert-batch 3 h + 30 s = 10,830 s (rate() extrapolates 30 s past its last scrape)
      seconds of embodied: the gauge read at the points where it exists: 288 points =
        86,400 s; bert-batch 36 points = 10,800 s
      vision  energy 3,000 W x 86,280 s = 258,840,000 J (71.9 kWh)
              operational 47.9333 kWh x 400 + 23.9667 kWh x 200 = 19,173.33 + 4,793.33
                = 23,966.67 g; infrastructure 19,173.33 x 0.5 + 4,793.33 x 0.1 = 10,066 g
              embodied 0.75 x 0.0230051 x 86,400 = 1,490.73 g
              water on site 47.9333 kWh x 0.5 = 23.967 L; off site x 1.5 x 2.0 = 143.8 L
      nlp     energy 1,500 x 86,280 + 3,600 x 10,830 = 168,408,000 J (46.78 kWh)
              operational 35.95 kWh x 400 + 10.83 kWh x 200 = 14,380 + 2,166 = 16,546 g;
              infrastructure 7,190 + 216.6 = 7,406.6 g
              embodied 0.25 x 0.0230051 x (86,400 + 10,800) = 559.02 g
              water on site 35.95 x 0.5 = 17.975 L; off site 35.95 x 3 = 107.85 L
      (none)  energy 500 x 86,280 = 43,140,000 J; operational 11.9833 kWh x 200 = 2,396.67 g;
              infrastructure 239.67 g; embodied 0.125 x 0.0230051 x 86,400 = 248.46 g;
              no water (n2 has no gauges)
    """
    nodes = {"n1": NodeFacts(400.0, 1.5, 0.5, 2.0), "n2": NodeFacts(200.0, 1.1)}
    t1 = G + 25 * HOUR
    vision = {"label_team": "vision", "label_cost_center": "cc-1"}
    nlp = {"label_team": "nlp", "label_cost_center": "cc-2"}
    start = G + 2 * MIN

    def pod(node: str, ns: str, name: str, model: str, phase: str, watts: float, ratio: float,
            labels: Mapping[str, str], begin: float = start, end: float = t1) -> RunPod:
        return RunPod(node, ns, name, model, "Deployment" if phase == "inference" else "Job",
                      name, watts, ratio, begin, end, phase=phase, labels=labels)

    pods = [
        pod("n1", "ml", "detector-0", "yolo", "inference", 2000.0, 0.5, vision),
        pod("n2", "ml", "detector-1", "yolo", "inference", 1000.0, 0.25, vision),
        pod("n1", "research", "bert-train", "bert", "training", 1500.0, 0.25, nlp),
        pod("n2", "research", "bert-batch", "bert", "training", 3600.0, 0.25, nlp,
            G + 6 * HOUR + 2 * MIN, G + 9 * HOUR + 2 * MIN),
        pod("n2", "serving", "vllm", "llama", "inference", 500.0, 0.125, {}),
    ]
    stays, batch = 86_280.0, 10_830.0
    kwh = {name: watts * seconds / 3.6e6 for name, watts, seconds in (
        ("detector-0", 2000, stays), ("detector-1", 1000, stays), ("bert-train", 1500, stays),
        ("bert-batch", 3600, batch), ("vllm", 500, stays))}
    want = {
        "vision": {
            "energy_joules": 258_840_000.0,
            "operational_grams": kwh["detector-0"] * 400 + kwh["detector-1"] * 200,
            "infrastructure_grams": kwh["detector-0"] * 400 * 0.5 + kwh["detector-1"] * 200 * 0.1,
            "embodied_grams": 0.75 * EMBODIED_PER_NODE * 86_400,
            "water_onsite_liters": kwh["detector-0"] * 0.5,
            "water_offsite_liters": kwh["detector-0"] * 1.5 * 2.0},
        "nlp": {
            "energy_joules": 168_408_000.0,
            "operational_grams": 16_546.0, "infrastructure_grams": 7_406.6,
            "embodied_grams": 0.25 * EMBODIED_PER_NODE * (86_400 + 10_800),
            "water_onsite_liters": 17.975, "water_offsite_liters": 107.85},
        "": {
            "energy_joules": 43_140_000.0, "operational_grams": kwh["vllm"] * 200,
            "infrastructure_grams": kwh["vllm"] * 200 * 0.1,
            "embodied_grams": 0.125 * EMBODIED_PER_NODE * 86_400,
            "water_onsite_liters": None, "water_offsite_liters": None},
    }
    # the hand computation's round figures
    assert want["vision"]["operational_grams"] == pytest.approx(23_966.6667)
    assert want["vision"]["infrastructure_grams"] == pytest.approx(10_066.0)
    assert want["vision"]["embodied_grams"] == pytest.approx(1_490.73, abs=0.01)
    assert want["nlp"]["embodied_grams"] == pytest.approx(559.02, abs=0.01)
    assert kwh["bert-train"] * 400 + kwh["bert-batch"] * 200 == pytest.approx(16_546.0)

    monkeypatch.setattr(cli, "now", lambda: G + 400 * 86_400)  # both months are over
    with backfilled_day(tmp_path, nodes, pods, G, t1) as url:
        nov = ["--month", "2023-11"]
        by_model = report_json(url, *nov)
        by_namespace = report_json(url, *nov, "--by", "namespace")
        by_team = report_json(url, *nov, "--by", "label:team")
        by_cost_center = report_json(url, *nov, "--by", "label:costCenter")
        dec = report_json(url, "--month", "2023-12", "--by", "label:team")
        span = report_json(url, "--by", "label:team", "--until", f"{G + 26 * HOUR:.0f}",
                           "--since", "1d2h")
        capsys.readouterr()
        assert report.main(["--prometheus", url, *nov, "--by", "label:team"]) == 0
        table = capsys.readouterr().out
        assert report.main(["--prometheus", url, *nov, "--by", "label:project"]) == 2
        missing = capsys.readouterr().err
    print(table)

    teams = {r["label_team"]: r for r in by_team}
    assert set(teams) == {"vision", "nlp", "", None}
    for team, figures in want.items():
        for key, value in figures.items():
            got = teams[team][key]
            assert got == (None if value is None else pytest.approx(value, rel=1e-6)), (
                team, key, got, value)
    total = by_model[-1]
    assert (total["model"], len(by_model)) == (None, 4)  # yolo, bert, llama
    for other in (by_namespace, by_team, by_cost_center):
        for key in FIGURES:
            assert other[-1][key] == pytest.approx(total[key], rel=1e-6), (key, other[-1])
    namespaces = {r["namespace"]: r for r in by_namespace}
    cost_centers = {r["label_cost_center"]: r for r in by_cost_center}
    for key in FIGURES:  # the same pods: the same figures
        assert namespaces["ml"][key] == pytest.approx(teams["vision"][key], rel=1e-6)
        assert cost_centers["cc-2"][key] == pytest.approx(teams["nlp"][key], rel=1e-6)
    # November and December tile: together, the whole span, to the float
    december = {r["label_team"]: r for r in dec}
    for team, row in {r["label_team"]: r for r in span}.items():
        for key in ("total_grams", "energy_joules"):
            assert teams[team][key] + december[team][key] == pytest.approx(row[key], rel=1e-9)
    # the pods' last scrape (01:00) is on the 5-minute grid: nothing to extrapolate after it
    assert december["vision"]["energy_joules"] == pytest.approx(3000 * 3600, rel=1e-6)
    assert table.splitlines()[0] == "CO2e per team, 2023-11 UTC (step 5m)"
    assert table.splitlines()[3].startswith("(none) ")
    assert "prometheusRule.chargeback.labels" in missing and missing.count("\n") == 1
