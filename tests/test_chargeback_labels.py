"""Pod labels on footprint_container_info (issue 22, chargeback by team): the allow-list in the
config file, kube-state-metrics' naming, cleaned and capped values, and a pod labelled
`team: vision` through the real pod watch (the fake API server, the real `kubernetes` client)
to the exposition, relabelled, and hostile."""

from __future__ import annotations

import gc
import re
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import ConfigError, parse_file_config
from exporter.exposition import Renderer, TickStats
from exporter.kube.pods import slim_pod
from exporter.ledger import Ledger
from exporter.metrics import CONTAINER_INFO, Publisher
from exporter.podlabels import (
    MAX_LABELS,
    MAX_VALUE_BYTES,
    PodLabelAllowlist,
    clean_value,
    label_name,
    published,
)
from exporter.sampler import Sampler
from exporter.workloads import Container
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import REPO, FakeClock, Series, parse, require_binary
from tests.support.kube import NODE, cid, drive, in_process, pod, wait_for

INFO = CONTAINER_INFO.name

# -- the config file ----------------------------------------------------------------------------


def allowlist(value: object) -> tuple[str, ...]:
    return parse_file_config({"kubernetes": {"pod_label_allowlist": value}}
                             ).kubernetes.pod_label_allowlist


def test_the_allowlist_is_empty_by_default() -> None:
    assert parse_file_config({}).kubernetes.pod_label_allowlist == ()
    assert not PodLabelAllowlist(())


@pytest.mark.parametrize("entries", [
    ["team"], ["team", "cost-*"], ["example.com/team", "app.kubernetes.io/name"],
    ["*/team", "example.com/*", "cost-*-id", "team*"], ["Team_2.x"], ["team", "team"]])
def test_label_keys_and_globs_are_accepted(entries: list[str]) -> None:
    assert allowlist(entries) == tuple(entries)


@pytest.mark.parametrize(("entries", "message"), [
    ("team", "kubernetes.pod_label_allowlist: expected a list of pod label keys or globs of "
             "them: [team, cost-*], got 'team'"),
    (["team", 3], "kubernetes.pod_label_allowlist[1]: expected a pod label key or a glob of "
                  "one, got 3"),
    ([""], "kubernetes.pod_label_allowlist[0]: expected a pod label key or a glob of one, "
           "got ''"),
    (["*"], "kubernetes.pod_label_allowlist[0]: '*' would publish every pod label"),
    (["**"], "kubernetes.pod_label_allowlist[0]: '**' would publish every pod label"),
    (["cost center"], "kubernetes.pod_label_allowlist[0]: 'cost center' matches no pod "
                      "label key"),
    (["-team"], "kubernetes.pod_label_allowlist[0]: '-team' matches no pod label key"),
    (["cost-*-"], "kubernetes.pod_label_allowlist[0]: 'cost-*-' matches no pod label key"),
    (["a/b/c"], "kubernetes.pod_label_allowlist[0]: 'a/b/c' matches no pod label key"),
    (["Example.com/team"], "kubernetes.pod_label_allowlist[0]: 'Example.com/team' matches "
                           "no pod label key"),
    (["team?"], "kubernetes.pod_label_allowlist[0]: 'team?' matches no pod label key"),
    (["x" * 64], "kubernetes.pod_label_allowlist[0]: '" + "x" * 64 + "' matches no pod"),
    (["x" * 400], "kubernetes.pod_label_allowlist[0]: a string of 400 characters matches "
                  "no pod label key"),
])
def test_an_entry_that_can_match_no_label_key_is_refused(entries: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        allowlist(entries)
    assert str(caught.value).startswith(message), caught.value
    if isinstance(entries, list):  # and says what to write instead
        assert "(team, example.com/cost-center) or globs of them with * (cost-*)" in str(
            caught.value)


def test_globs_match_any_run_of_characters_and_nothing_else() -> None:
    allow = PodLabelAllowlist(["team", "cost-*", "*/owner", "a.b"])
    for key in ("team", "cost-", "cost-center", "cost-x/y", "example.com/owner", "a.b"):
        assert allow.allows(key), key
    for key in ("teams", "Team", "xcost-center", "example.com/owners", "aXb", "owner"):
        assert not allow.allows(key), key


# -- names, as kube-state-metrics gives them -----------------------------------------------------


@pytest.mark.parametrize(("key", "name"), [
    ("team", "label_team"),
    ("cost-center", "label_cost_center"),
    ("app.kubernetes.io/name", "label_app_kubernetes_io_name"),
    ("example.com/cost-center", "label_example_com_cost_center"),
    ("costCenter", "label_cost_center"),
    ("team2Name", "label_team2_name"),
    ("HTTPServer", "label_httpserver"),
    ("aBcD", "label_a_bc_d"),
    ("Team", "label_team"),
    ("t\u00e9am", "label_t_am"),
    ("__reserved", "label___reserved"),
])
def test_label_names_are_kube_state_metrics_names(key: str, name: str) -> None:
    """`label_` + the key with [^a-zA-Z0-9_] as `_`, camelCase to snake_case, lowered
    (kube-state-metrics' labelName: SanitizeLabelName, then toSnakeCase)."""
    assert label_name(key) == name


def test_colliding_names_get_kube_state_metrics_conflict_suffixes_in_key_order() -> None:
    assert published({"team": "a", "te.am": "b"}) == (
        ("label_te_am", "b"), ("label_team", "a"))  # no collision: te.am is label_te_am
    # '-' < '.' < 'N': team-name is first, so it is conflict1, even when it comes last
    assert published({"teamName": "c", "team.name": "b", "team-name": "a"}) == (
        ("label_team_name_conflict1", "a"), ("label_team_name_conflict2", "b"),
        ("label_team_name_conflict3", "c"))
    assert published({"team.name": "b", "team-name": "a"}) == (
        ("label_team_name_conflict1", "a"), ("label_team_name_conflict2", "b"))
    # a generated name never takes one a key already has
    pairs = published({"team-name": "a", "team.name": "b", "team_name_conflict1": "c"})
    names = [n for n, _ in pairs]
    assert len(set(names)) == 3 and sorted(v for _, v in pairs) == ["a", "b", "c"]


@given(st.dictionaries(st.text(st.sampled_from("aAbB-._/1"), min_size=1, max_size=6),
                       st.text(max_size=4), max_size=12))
def test_published_names_are_unique_valid_and_keep_every_value(labels: dict[str, str]) -> None:
    pairs = published(labels)
    names = [n for n, _ in pairs]
    assert len(set(names)) == len(names) == len(labels)
    assert sorted(v for _, v in pairs) == sorted(labels.values())
    assert names == sorted(names)
    CONTAINER_INFO.check(("",) * len(CONTAINER_INFO.labels) + tuple(
        x for pair in pairs for x in pair))  # the family takes them


def test_the_family_refuses_bad_extra_labels() -> None:
    fixed = ("",) * len(CONTAINER_INFO.labels)
    for bad in (("label_team",), ("team", "x"), ("label_a", "1", "label_a", "2"),
                ("label_A", "x"), ("label_a-b", "x")):
        with pytest.raises(ValueError):
            CONTAINER_INFO.check(fixed + bad)


# -- values ---------------------------------------------------------------------------------------


def test_values_are_cleaned_and_capped_on_a_character_boundary() -> None:
    assert clean_value("vision") == "vision"
    assert clean_value("") == ""
    assert clean_value("x" * 10_240) == "x" * MAX_VALUE_BYTES
    two_bytes = clean_value("\u00e9" * 100)  # 200 bytes
    assert two_bytes == "\u00e9" * (MAX_VALUE_BYTES // 2)
    cut = clean_value("x" + "\u20ac" * 100)  # 1 + 3n bytes: the cut falls inside a euro
    assert cut == "x" + "\u20ac" * ((MAX_VALUE_BYTES - 1) // 3)
    assert len(cut.encode()) <= MAX_VALUE_BYTES
    assert clean_value("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert clean_value('a\n"b\\c\r\t') == 'a\n"b\\c\r\t'  # the exposition escapes those


def test_select_keeps_only_allowed_string_labels_and_at_most_max_labels() -> None:
    allow = PodLabelAllowlist(["team", "cost-*"])
    assert allow.select({"team": "vision", "app": "x", "cost-a": "1", "cost-b": 2,
                         3: "x"}) == {"team": "vision", "cost-a": "1"}
    assert allow.select(None) == {} and allow.select(["team"]) == {}
    many = {f"cost-{i:03d}": str(i) for i in range(100)}
    kept = allow.select(many)
    assert list(kept) == [f"cost-{i:03d}" for i in range(MAX_LABELS)]
    assert PodLabelAllowlist().publish({"team": "vision"}) == ()


def test_a_slim_pod_keeps_only_the_published_labels() -> None:
    raw = pod("p", cid("1"), labels={"team": "vision", "pod-template-hash": "abc",
                                     "cost-center": "cc-1"})
    slim = slim_pod(raw, labels=PodLabelAllowlist(["team", "cost-*"]))
    assert slim.pod_labels == (("label_cost_center", "cc-1"), ("label_team", "vision"))
    assert "labels" not in slim["metadata"]
    assert slim_pod(raw).pod_labels == ()


# -- the publisher and the renderer ---------------------------------------------------------------


def container(labels: tuple[tuple[str, str], ...], *, name: str = "main") -> Container:
    return Container(namespace="ml", pod="p", container=name, model="m", phase="inference",
                     model_source="label", owner_kind="", owner_name="",
                     cpu_request_cores=1.0, container_id=cid("1"), pod_uid="u",
                     pod_labels=labels)


def test_a_relabelled_container_moves_its_info_series_and_nothing_grows() -> None:
    ledger = Ledger()
    publisher = Publisher(ledger)
    renderer = Renderer(ledger, node="n", process_metrics=False)

    def relabel(times: int) -> str:
        for i in range(times):
            publisher.containers([container((("label_team", f"team-{i}"),))], 16.0)
            text = renderer.render(TickStats()).text.decode()
        return text

    relabel(100)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        text = relabel(1_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, grown  # 1,000 values came and went; none is kept
    info = [ls for (n, ls) in parse(text) if n == INFO]
    assert [dict(ls)["label_team"] for ls in info] == ["team-999"]
    assert len(ledger.gauges[INFO]) == 1
    publisher.containers([container(())], 16.0)  # the label removed from the pod
    (labels,) = [dict(ls) for (n, ls) in parse(renderer.render(TickStats()).text.decode())
                 if n == INFO]
    assert "label_team" not in labels


def test_the_renderer_writes_extra_labels_as_prometheus_client_would() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    labels = (("label_a_team", 'a"b\\c\nd'), ("label_team", "vision"), ("label_zz", ""))
    ledger = Ledger()
    Publisher(ledger).containers([container(labels)], 16.0)
    text = Renderer(ledger, node="n", process_metrics=False).render(TickStats()).text

    ((info_labels, _),) = ledger.gauges[INFO].items()
    names = ("node", *CONTAINER_INFO.labels, *(n for n, _ in labels))
    values = ("n", *info_labels[:len(CONTAINER_INFO.labels)], *(v for _, v in labels))
    family = GaugeMetricFamily(INFO, CONTAINER_INFO.help, labels=sorted(names))
    family.add_metric([dict(zip(names, values, strict=True))[k] for k in sorted(names)], 1.0)

    class One:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())  # type: ignore[arg-type]
    expected = generate_latest(registry)
    start = text.index(b"# HELP " + INFO.encode())
    assert text[start:start + len(expected)] == expected


# -- through the pod watch -------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(node_name=NODE, allocatable_cpu="16", bookmark_interval=0.5) as fake:
        yield fake


def labelled_sampler(tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch,
                     allow: str) -> tuple[Path, Sampler, FakeClock]:
    return in_process(tmp_path, api, monkeypatch,
                      kubernetes=f"  pod_label_allowlist: {allow}\n")


def info_of(series: Series, pod_name: str) -> dict[str, str]:
    (labels,) = [dict(ls) for (n, ls) in series if n == INFO and dict(ls)["pod"] == pod_name]
    return labels


def labels_seen(sampler: Sampler) -> dict[str, Any]:
    assert sampler._kubernetes is not None
    view = sampler._kubernetes.pods.view()
    return {p["metadata"]["name"]: p.pod_labels for p in view.pods}


def promtool_check(text: bytes) -> None:
    check = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_pod_labelled_team_vision_labels_its_info_series_and_moves_when_relabelled(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    api.add_pod(pod("vision-0", cid("1"), labels={"team": "vision", "app": "detector",
                                                  "cost-center": "cc-42"}))
    api.add_pod(pod("unlabelled-0", cid("2")))
    root, sampler, clock = labelled_sampler(tmp_path, api, monkeypatch, "[team]")
    sampler.start()
    try:
        wait_for(lambda: len(labels_seen(sampler)) == 2, "both pods")
        sampler.tick()
        drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid("1"): 1.0, cid("2"): 1.0})
        snapshot = sampler.tick()
        series = parse(snapshot.text.decode())
        assert info_of(series, "vision-0")["label_team"] == "vision"
        assert not {"label_app", "label_cost_center"} & set(info_of(series, "vision-0"))
        assert not any(k.startswith("label_") for k in info_of(series, "unlabelled-0"))
        # only the info family carries them: the energy series keep their labels
        assert not any(k.startswith("label_") for (n, ls) in series if n != INFO
                       for k, _ in ls)
        promtool_check(snapshot.text)

        relabelled = pod("vision-0", cid("1"), labels={"team": "speech"})
        api.modify_pod("ml", "vision-0", relabelled)
        wait_for(lambda: labels_seen(sampler)["vision-0"] == (("label_team", "speech"),),
                 "the relabelled pod")
        drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid("1"): 1.0, cid("2"): 1.0})
        series = parse(sampler.tick().text.decode())
    finally:
        sampler.close()
    teams = [dict(ls).get("label_team") for (n, ls) in series
             if n == INFO and dict(ls)["pod"] == "vision-0"]
    assert teams == ["speech"]  # the old series is gone, not left beside the new


def test_without_an_allowlist_no_pod_label_is_published(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    api.add_pod(pod("vision-0", cid("1"), labels={"team": "vision"}))
    root, sampler, clock = labelled_sampler(tmp_path, api, monkeypatch, "[]")
    sampler.start()
    try:
        wait_for(lambda: len(labels_seen(sampler)) == 1, "the pod")
        sampler.tick()
        drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid("1"): 1.0})
        series = parse(sampler.tick().text.decode())
    finally:
        sampler.close()
    assert not any(k.startswith("label_") for k in info_of(series, "vision-0"))


def test_hostile_label_values_are_capped_cleaned_and_never_break_the_exposition(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value no API server would accept (10 KB, a newline, a quote, a backslash, a lone
    surrogate that JSON's `\\ud800` escape carries) arrives through the real client."""
    huge = 'line one\n"quoted" back\\slash ' + "x" * 10_240
    api.add_pod(pod("hostile-0", cid("1"), labels={
        "team": huge, "cost-surrogate": "a\ud800b", "cost-center": "\u00e9" * 100,
        "costCenter": "camel"}))
    root, sampler, clock = labelled_sampler(tmp_path, api, monkeypatch, "[team, cost*]")
    sampler.start()
    try:
        wait_for(lambda: len(labels_seen(sampler)) == 1, "the pod")
        sampler.tick()
        drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid("1"): 1.0})
        snapshot = sampler.tick()
    finally:
        sampler.close()
    for body in (snapshot.text, snapshot.openmetrics):
        body.decode("utf-8")  # strict: the surrogate did not reach the bytes
    info = info_of(parse(snapshot.text.decode()), "hostile-0")
    assert info["label_team"] == huge.encode()[:MAX_VALUE_BYTES].decode()
    assert info["label_team"].startswith('line one\n"quoted" back\\slash ')
    assert info["label_cost_surrogate"] == "a\ufffdb"
    assert info["label_cost_center_conflict1"] == "\u00e9" * (MAX_VALUE_BYTES // 2)
    assert info["label_cost_center_conflict2"] == "camel"
    line = next(x for x in snapshot.text.decode().splitlines()
                if x.startswith(INFO) and "hostile-0" in x)
    assert 'label_team="line one\\n\\"quoted\\" back\\\\slash ' in line
    assert len(line.encode()) < 2_000
    promtool_check(snapshot.text)


# -- docs/chargeback.md's queries ----------------------------------------------------------------


DOC = REPO / "docs" / "chargeback.md"


def doc_queries() -> list[str]:
    return re.findall(r"^```promql\n(.*?)^```", DOC.read_text(), re.S | re.M)


def test_the_documented_queries_charge_each_team_its_grams(tmp_path: Path) -> None:
    """promtool, on hand-made series: one container at 1 g/s relabelled from vision to speech
    half-way through an hour, one unlabelled; two namespaces labelled by kube-state-metrics,
    published twice (two replicas). The exporter's per-team counters of the same: vision's
    stops growing at the relabel, speech's starts at 0 then."""
    sums, now, day, namespaces = doc_queries()
    where = 'node="n1",namespace="ml",container="main"'
    info = f'footprint_container_info{{{where},pod="a",model="m",phase="inference"'
    charged = ('footprint_chargeback_co2e_grams_total{node="n1",label="label_team",'
               'component="cpu",mode="dynamic"')
    series = [
        {"series": charged + ',value="vision"}', "values": "0+60x29 1740x31"},
        {"series": charged + ',value="speech"}', "values": "_x30 0+60x30"},
        {"series": charged + ',value=""}', "values": "0+120x60"},
        {"series": f'footprint_container_co2e_grams_total{{{where},pod="a",model="m",'
                   'phase="inference",component="cpu",mode="dynamic"}',
         "values": "0+60x60"},
        {"series": 'footprint_container_co2e_grams_total{node="n1",namespace="web",'
                   'container="main",pod="b",model="",phase="other",component="cpu",'
                   'mode="dynamic"}', "values": "0+120x60"},
        {"series": info + ',label_team="vision"}', "values": "1x29 stale"},
        {"series": info + ',label_team="speech"}', "values": "_x30 1x30"},
        {"series": 'footprint_container_info{node="n1",namespace="web",container="main",'
                   'pod="b",model="",phase="other"}', "values": "1x60"},
        # the pack's operational container records (PUE 1.25 adds a quarter of them) and the
        # gauges embodied is derived from: the server's 250,000 g over 1,000,000 s, 0.25 g/s
        # per unit of CPU ratio (a: 0.25 -> 0.0625 g/s; b: 0.5 -> 0.125 g/s)
        {"series": 'footprint_pue{node="n1"}', "values": "1.25x60"},
        {"series": 'footprint_embodied_grams{node="n1",component="server",gpu=""}',
         "values": "250000x60"},
        {"series": 'footprint_embodied_lifetime_seconds{node="n1"}', "values": "1000000x60"},
        {"series": f'container:footprint_co2e_grams:rate5m{{{where},pod="a",model="m",'
                   'phase="inference",scope="operational"}', "values": "0.75x60"},
        {"series": f'footprint_container_allocation_ratio{{{where},pod="a",model="m",'
                   'phase="inference",resource="cpu"}', "values": "0.25x60"},
        {"series": 'container:footprint_co2e_grams:rate5m{node="n1",namespace="web",'
                   'container="main",pod="b",model="",phase="other",scope="operational"}',
         "values": "1.5x60"},
        {"series": 'footprint_container_allocation_ratio{node="n1",namespace="web",'
                   'container="main",pod="b",model="",phase="other",resource="cpu"}',
         "values": "0.5x60"},
        {"series": 'namespace:footprint_co2e_grams:rate5m{namespace="ml",scope="total"}',
         "values": "1x60"},
        {"series": 'namespace:footprint_co2e_grams:rate5m{namespace="web",scope="total"}',
         "values": "2x60"},
        *({"series": f'kube_namespace_labels{{instance="ksm-{i}",namespace="{ns}",'
                     f'label_team="{team}"}}', "values": "1x60"}
          for i in (0, 1) for ns, team in (("ml", "vision"), ("web", "shop")))]
    exprs = [
        {"expr": sums, "eval_time": "20m",
         "exp_samples": [{"labels": '{value="vision"}', "value": 1},
                         {"labels": "{}", "value": 2}]},
        {"expr": sums, "eval_time": "50m",  # vision's counter still there, flat
         "exp_samples": [{"labels": '{value="vision"}', "value": 0},
                         {"labels": '{value="speech"}', "value": 1},
                         {"labels": "{}", "value": 2}]},
        {"expr": now, "eval_time": "20m",
         "exp_samples": [{"labels": '{label_team="vision"}', "value": 1},
                         {"labels": "{}", "value": 2}]},
        {"expr": now, "eval_time": "50m",
         "exp_samples": [{"labels": '{label_team="speech"}', "value": 1},
                         {"labels": "{}", "value": 2}]},
        # a minute's rate per step: vision ran 30 of them, speech the other 31
        {"expr": day, "eval_time": "60m",
         "exp_samples": [{"labels": '{label_team="vision"}', "value": 30 * 60},
                         {"labels": '{label_team="speech"}', "value": 31 * 60},
                         {"labels": "{}", "value": 61 * 120}]},
        {"expr": namespaces, "eval_time": "60m",
         "exp_samples": [{"labels": '{label_team="vision"}', "value": 1},
                         {"labels": '{label_team="shop"}', "value": 2}]}]
    path = tmp_path / "chargeback.test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"name": "chargeback", "interval": "1m", "input_series": series,
         "promql_expr_test": exprs}]}, sort_keys=False))
    done = subprocess.run([require_binary("promtool"), "test", "rules", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_doc_names_only_published_metrics_and_the_config_key() -> None:
    from exporter.metrics import FAMILIES

    text = DOC.read_text()
    named = set(re.findall(r"(?<![:\w])footprint_[a-z0-9_]+", text))  # not the rules' records
    # `footprint_chargeback_*`: a prefix of families
    unknown = {n for n in named if n not in FAMILIES and not (
        n.endswith("_") and any(f.startswith(n) for f in FAMILIES))}
    assert not unknown, unknown
    assert "pod_label_allowlist" in text and f"{MAX_VALUE_BYTES} bytes" in text
    assert "chargeback_labels" in text
