"""The Grafana dashboards (dashboards/*.json) stay true: they are what dashboards/generate.py
writes, every query parses as PromQL (promtool), and every metric they query is one the
exporter publishes, the rule pack records, or a known external name. The chargeback
dashboard's queries also run on a real Prometheus over synthetic records (slow), with the
values they must give."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.metrics import FAMILIES as SPECS
from exporter.metrics import TICK_DURATION as SUMMARY
from tests.support import REPO, require_binary

DASHBOARDS = REPO / "dashboards"
NAMES = ("footprint-models.json", "footprint-nodes.json", "footprint-exporter.json",
         "footprint-chargeback.json")
RULES = REPO / "rules" / "footprint.rules.yaml"
CHARGEBACK_BUDGETS = REPO / "rules" / "chargeback-budgets.example.yaml"

EXTERNAL = frozenset({
    # Prometheus itself
    "up", "ALERTS", "scrape_duration_seconds",
    # prometheus_client's process collector (the exporter adds `node`)
    "process_resident_memory_bytes", "process_cpu_seconds_total",
    # vLLM (docs.vllm.ai, "Production Metrics")
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:num_requests_running", "vllm:num_requests_waiting",
    "vllm:e2e_request_latency_seconds_count", "vllm:e2e_request_latency_seconds_sum",
    "vllm:e2e_request_latency_seconds_bucket",
    # Hugging Face TGI (text-generation-inference, "Metrics")
    "tgi_request_count", "tgi_request_success", "tgi_request_input_length_sum",
    "tgi_request_input_length_count", "tgi_request_generated_tokens_sum",
    "tgi_request_generated_tokens_count", "tgi_request_duration_sum",
    "tgi_request_duration_count", "tgi_request_duration_bucket",
})

KEYWORDS = frozenset({
    "and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
})
FUNCTIONS = frozenset({
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_sum", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "holt_winters",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_replace",
    "label_join", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time", "acos", "acosh",
    "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad",
    "pi", "start", "end",
})

GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1d",
}
"""Concrete values for Grafana's interval variables (all used where PromQL wants a duration)."""

VARIABLE_REF = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\$?\w+|\$\{\w+\})\)$", re.S)


# ---------------------------------------------------------------------------------------------
# What the dashboards hold


def load(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return board


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def custom_values(var: dict[str, Any]) -> list[str]:
    """A custom variable's values (its options; test_chargeback_variables checks that they
    are what Grafana makes of its query)."""
    return [option["value"] for option in var.get("options", [])]


def referenced(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in VARIABLE_REF.finditer(text)}


def queries(board: dict[str, Any], values: Mapping[str, str] | None = None
            ) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's selector, with
    Grafana's variables replaced by concrete values: `values` where given, each value of a
    custom variable in turn (a query that names the chargeback dashboard's `$key` comes once
    with label_team and once with namespace), else a placeholder."""
    for where, text, fixed in expansions(board):
        if text.startswith("label_values("):
            selector, _ = label_values(board, text, where, {**(values or {}), **fixed})
            if selector:
                yield where, selector
        else:
            yield where, concrete(text, board, where, {**(values or {}), **fixed})


def expansions(board: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(where, query text, custom variable values) for every panel target and query
    variable, once per combination of the values of the custom variables it names."""
    templating = board.get("templating", {}).get("list", [])
    custom = {v["name"]: custom_values(v) for v in templating if v.get("type") == "custom"}
    texts: list[tuple[str, str]] = []
    for panel in all_panels(board):
        for t in panel.get("targets", []):
            texts.append((f"{board.get('uid')}: panel {panel.get('title')!r} target "
                          f"{t.get('refId')}", t["expr"]))
    for var in templating:
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            texts.append((f"{board.get('uid')}: variable {var['name']!r}", query.strip()))
    for where, text in texts:
        named = sorted(referenced(text) & set(custom))
        for combination in itertools.product(*(custom[name] for name in named)):
            fixed = dict(zip(named, combination, strict=True))
            yield where + "".join(f" [{k}={v}]" for k, v in fixed.items()), text, fixed


def label_values(board: dict[str, Any], query: str, where: str, values: Mapping[str, str]
                 ) -> tuple[str | None, str]:
    """The selector (None for label_values(label)) and the label of a query variable."""
    match = LABEL_VALUES.match(query)
    assert match, f"{where}: only label_values(selector, label) is supported: {query!r}"
    label = concrete(match.group(2), board, where, values)
    assert re.fullmatch(r"[A-Za-z_]\w*", label), f"{where}: not a label name: {label!r}"
    selector = concrete(match.group(1), board, where, values) if match.group(1) else None
    return selector, label


def concrete(expr: str, board: dict[str, Any], where: str,
             values: Mapping[str, str] | None = None) -> str:
    variables = {v["name"] for v in board.get("templating", {}).get("list", [])}

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if values and name in values:
            return values[name]
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in variables, f"{where}: ${name} is not a variable of the dashboard"
        return "value-of-" + name

    return VARIABLE_REF.sub(value, expr)


# ---------------------------------------------------------------------------------------------
# Metric names in PromQL

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
MODIFIER_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
RANGE = re.compile(r"\[[^\[\]]*\]")
NUMBER = re.compile(r"(?<![\w:.])(?:0[xX][0-9a-fA-F]+|\d[\w.]*(?:[eE][+-]\d+)?|\.\d[\w.]*)")
OFFSET = re.compile(r"\b(offset)\s+-?[\w.]+|@\s*-?[\w.]+")
IDENTIFIER = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not function calls,
    keywords, label names (inside {...} or a by/without/on/ignoring/group_x list), numbers,
    durations or strings."""
    text = "\n".join(line.split("#", 1)[0] for line in STRING.sub('""', expr).splitlines())
    names: set[str] = set()
    for selector in MATCHERS.findall(text):
        name_matchers = re.findall(r"__name__\s*(=~|!=|!~|=)", selector)
        assert not name_matchers, f"select by a literal name, not {{__name__...}}: {expr}"
    text = MATCHERS.sub(" ", text)
    text = MODIFIER_LIST.sub(" ", text)
    text = RANGE.sub(" ", text)
    text = OFFSET.sub(" ", text)
    text = NUMBER.sub(" ", text)
    for name, call in IDENTIFIER.findall(text):
        if call or name.lower() in KEYWORDS or name in FUNCTIONS:
            continue
        names.add(name)
    return names


def records(path: Path) -> set[str]:
    pack = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {rule["record"] for group in pack.get("groups") or []
            for rule in group.get("rules") or [] if "record" in rule}


def recorded_names(pack: Path = RULES) -> frozenset[str]:
    """The rule pack's recorded names: its `record:`s and those of the other rule files beside
    it (the budgets group the chart generates, whose example is rules/budgets.example.yaml)."""
    names = records(pack)
    assert names, f"{pack} records nothing"
    for other in sorted(pack.parent.glob("*.yaml")):
        if other != pack:
            names |= records(other)
    return frozenset(names)


def known_names() -> frozenset[str]:
    published = set(SPECS) | {f"{SUMMARY.name}_sum", f"{SUMMARY.name}_count"}
    return frozenset(published | recorded_names() | EXTERNAL)


def unknown_names(board: dict[str, Any]) -> list[str]:
    known = known_names()
    return [f"{where}: {name}" for where, expr in queries(board)
            for name in sorted(metric_names(expr) - known)]


def promtool_errors(exprs: list[tuple[str, str]], tmp_path: Path) -> str:
    """promtool's complaint about the expressions written as recording rules; '' if none."""
    promtool = require_binary("promtool")
    rules = [{"record": f"footprint_dashboard:check_{i}", "expr": expr}
             for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]},
                                   sort_keys=False), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, check=False)
    if result.returncode == 0:
        return ""
    listing = "\n".join(f"check_{i}: {where}: {expr}" for i, (where, expr) in enumerate(exprs))
    return f"{result.stdout}{result.stderr}\n{listing}"


# ---------------------------------------------------------------------------------------------
# The tests


def test_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--out",
                             str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)
    for name in NAMES:
        fresh = (tmp_path / name).read_text(encoding="utf-8")
        committed = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert committed == fresh, f"dashboards/{name} is stale: run python dashboards/generate.py"


def test_generator_is_deterministic(tmp_path: Path) -> None:
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--out",
                        str(tmp_path / out)], capture_output=True, check=True)
    for name in NAMES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_shape(name: str) -> None:
    board = load(name)
    assert board["uid"] == name.removesuffix(".json")
    assert board["title"].startswith("Footprint / ")
    assert board["tags"] == ["footprint"]
    assert 36 <= board["schemaVersion"] <= 41
    assert board["id"] is None
    variables = board["templating"]["list"]
    assert variables[0]["name"] == "datasource"
    assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
    ids = [p["id"] for p in all_panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in all_panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']!r} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel.get("description", "").strip(), f"{panel['title']!r} has no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']!r} has no unit"
        assert panel["targets"], f"{panel['title']!r} has no query"
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']!r} repeats a refId"


def test_uids_are_distinct() -> None:
    uids = [load(name)["uid"] for name in NAMES]
    assert len(set(uids)) == len(uids)


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    exprs = [q for name in NAMES for q in queries(load(name))]
    assert len(exprs) > 30
    errors = promtool_errors(exprs, tmp_path)
    assert not errors, errors


def test_promtool_check_catches_a_broken_query(tmp_path: Path) -> None:
    assert promtool_errors([("synthetic", "sum by (node) (rate(up[5m])")], tmp_path)
    assert promtool_errors([("synthetic", "rate(up)")], tmp_path)
    assert not promtool_errors([("synthetic", "sum by (node) (rate(up[5m]))")], tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_queried_exists(name: str) -> None:
    board = load(name)
    assert any(metric_names(expr) for _, expr in queries(board))
    missing = unknown_names(board)
    assert not missing, "metrics nobody publishes:\n" + "\n".join(missing)


BUDGET_SELECTOR = re.compile(r"_budget_grams\{([^}]*)\}")


@pytest.mark.parametrize("name", NAMES)
def test_budgets_match_with_one_cluster_picked(name: str) -> None:
    """Budgets are recorded without a cluster label (rules/budgets.example.yaml, the chart):
    a budget selector must also match no cluster, or picking one cluster hides every budget."""
    for where, text, _ in expansions(load(name)):
        for selector in BUDGET_SELECTOR.findall(text):
            assert 'cluster=~"$cluster|"' in selector, (where, selector)


def test_recorded_names_come_from_the_rule_pack(tmp_path: Path) -> None:
    pack = tmp_path / "footprint.rules.yaml"
    pack.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "model:footprint_co2e_grams:increase1d", "expr": "vector(1)"},
        {"alert": "FootprintSomething", "expr": "vector(1)"}]}]}), encoding="utf-8")
    assert recorded_names(pack) == {"model:footprint_co2e_grams:increase1d"}
    (tmp_path / "budgets.example.yaml").write_text(yaml.safe_dump({"groups": [{
        "name": "b", "rules": [{"record": "model:footprint_co2e_daily_budget_grams",
                                "expr": "vector(1)"}]}]}), encoding="utf-8")
    assert recorded_names(pack) == {"model:footprint_co2e_grams:increase1d",
                                    "model:footprint_co2e_daily_budget_grams"}


def test_equivalents_cite_their_factor() -> None:
    cited = 0
    for name in NAMES:
        for panel in all_panels(load(name)):
            if any("/ 248.5" in t["expr"] for t in panel.get("targets", [])):
                assert "EPA-420-F-23-014" in panel["description"], panel["title"]
                cited += 1
    assert cited >= 2


@pytest.mark.parametrize(("expr", "names"), [
    ("up", {"up"}),
    ('sum by (model, scope) (model:footprint_co2e_grams:increase1d{model=~"a|b", scope!="x"})',
     {"model:footprint_co2e_grams:increase1d"}),
    ('sum(rate(footprint_node_energy_joules_total{node=~".*"}[5m])) without (component)',
     {"footprint_node_energy_joules_total"}),
    ("a / on (node) group_left (zone, region) b * ignoring (mode) c",
     {"a", "b", "c"}),
    ("x * on (node) group_right y", {"x", "y"}),
    ("rate(x[5m] offset 1h) > bool 0 and y @ 1609746000 unless z", {"x", "y", "z"}),
    ("topk(5, x) * 1e3 + 0x1F - 2.5e-3 + Inf + NaN", {"x"}),
    ('label_replace(x, "dst", "$1 rate(fake)", "src", "(.*)")', {"x"}),
    ("max_over_time(rate(vllm:generation_tokens_total[5m])[1d:5m])",
     {"vllm:generation_tokens_total"}),
    ("count_values without (a) (\"v\", x)", {"x"}),
    ("time() - min by (provider) (ts)", {"ts"}),
    ("scalar(x)  # a comment naming not_a_metric\n+ y", {"x", "y"}),
])
def test_metric_names_extracts_only_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_metric_names_refuses_name_matchers() -> None:
    with pytest.raises(AssertionError):
        metric_names('{__name__=~"footprint_.*"}')


def synthetic(expr: str) -> dict[str, Any]:
    return {"uid": "synthetic", "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "node", "type": "query", "query": "label_values(footprint_node_info, node)"}]},
        "panels": [{"type": "timeseries", "title": "synthetic", "targets": [
            {"refId": "A", "expr": expr}]}]}


def test_a_wrong_metric_name_is_caught() -> None:
    good = synthetic('sum by (node) (rate(footprint_node_energy_joules_total{node=~"$node"}'
                     "[$__rate_interval]))")
    assert unknown_names(good) == []
    typo = synthetic('sum by (node) (rate(footprint_node_energy_joule_total{node=~"$node"}'
                     "[$__rate_interval]))")
    assert unknown_names(typo) == [
        "synthetic: panel 'synthetic' target A: footprint_node_energy_joule_total"]
    recorded = synthetic('model:footprint_co2e_grams:increase7d{scope="total"}')
    assert unknown_names(recorded) == [
        "synthetic: panel 'synthetic' target A: model:footprint_co2e_grams:increase7d"]
    # a counter is published with its `_total`: the bare family name is not a series
    bare = synthetic("rate(footprint_exporter_errors[5m])")
    assert unknown_names(bare) != []
    # a label name is not a metric name, wherever it stands
    labels = synthetic("sum by (footprint_bogus) (up{footprint_bogus=\"1\"})")
    assert unknown_names(labels) == []


def test_a_wrong_variable_query_is_caught() -> None:
    board = synthetic("up")
    board["templating"]["list"][1]["query"] = "label_values(footprint_nodes_info, node)"
    assert unknown_names(board) == ["synthetic: variable 'node': footprint_nodes_info"]


def test_an_undefined_variable_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"\$model is not a variable"):
        list(queries(synthetic('up{model=~"$model"}')))


def test_docs_describe_every_dashboard() -> None:
    docs = (REPO / "docs" / "dashboards.md").read_text(encoding="utf-8")
    for name in NAMES:
        board = load(name)
        assert board["title"] in docs, board["title"]
        assert f"dashboards/{name}" in docs, name
    assert 'grafana_dashboard: "1"' in docs
    assert "python dashboards/generate.py" in docs
    assert "EPA-420-F-23-014" in docs


# ---------------------------------------------------------------------------------------------
# Units and Grafana's published schema

def grafana_units() -> frozenset[str]:
    """Grafana's unit ids, from grafana-foundation-sdk's `models.units` (generated by Grafana's
    cog from Grafana's value formats, packages/grafana-data/src/valueFormats/categories.ts)."""
    from grafana_foundation_sdk.models import units

    ids = frozenset(v for k, v in vars(units).items() if not k.startswith("_")
                    and isinstance(v, str))
    assert {"massg", "kwatth", "watt", "joule", "percentunit", "s"} <= ids
    return ids


CUSTOM_UNIT = re.compile(r"^(suffix|prefix):\S.*$")


def units_of(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in all_panels(board):
        if panel["type"] == "row":
            continue
        config = panel["fieldConfig"]
        yield panel["title"], config["defaults"]["unit"]
        for override in config.get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    yield f"{panel['title']} ({override['matcher']['options']})", prop["value"]


@pytest.mark.parametrize("name", NAMES)
def test_every_unit_is_a_grafana_unit(name: str) -> None:
    known = grafana_units()
    wrong = [f"{where}: {unit!r}" for where, unit in units_of(load(name))
             if unit not in known and not CUSTOM_UNIT.match(unit)]
    assert not wrong, "not a Grafana unit id nor suffix:/prefix: " + ", ".join(wrong)


def test_mass_and_energy_scale() -> None:
    units = {unit for name in NAMES for _, unit in units_of(load(name))}
    assert not units & {"g", "g/h", "g/kWh"}
    assert {"massg", "kwatth", "watt", "suffix:gCO2e/kWh"} <= units


def test_tables_keep_the_footer_in_field_config() -> None:
    for name in NAMES:
        for panel in all_panels(load(name)):
            if panel["type"] == "table":
                assert "footer" not in panel["options"], panel["title"]


SCHEMA_CHECK = DASHBOARDS / "schema-check"
PANEL_TYPES = {
    "timeseries": "timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen",
    "stat": "stat/panelcfg/x/StatPanelCfg_types.gen",
    "bargauge": "bargauge/panelcfg/x/BarGaugePanelCfg_types.gen",
    "table": "table/panelcfg/x/TablePanelCfg_types.gen",
    "state-timeline": "statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen",
}
"""Each panel type's own `Options` and `FieldConfig` (custom) types in @grafana/schema."""
NO_FIELD_CONFIG = frozenset({"stat", "bargauge"})
"""Panel types without custom field options: their `custom` must be empty."""
LOOSE = """type Json<T> = T extends string ? `${T}`
  : T extends number | boolean | null | undefined ? T
  : T extends Array<infer U> ? Array<Json<U>>
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;"""
"""@grafana/schema's enums as the strings JSON holds: a string enum becomes the union of its
values (`${T}`), so "area" passes where BigValueGraphMode.Area is meant and "aera" fails."""


def typescript(board: dict[str, Any]) -> str:
    """The dashboard as a TypeScript constant of @grafana/schema's `Dashboard` type, and each
    panel's options and custom field config as its panel type's `Options` and `FieldConfig`
    (the `Dashboard` type leaves those `Record<string, unknown>`)."""
    lines = ['import type { Dashboard } from "@grafana/schema";', LOOSE]
    for i, (kind, path) in enumerate(PANEL_TYPES.items()):
        field = "FieldConfig as F" if kind not in NO_FIELD_CONFIG else "Options as _F"
        lines.append(f"import type {{ Options as O{i}, {field}{i} }} from "
                     f'"@grafana/schema/dist/esm/raw/composable/{path}";')
        if kind in NO_FIELD_CONFIG:
            lines.append(f"type F{i} = Record<string, never>;")
    lines.append(f"export const dashboard: Json<Dashboard> = {json.dumps(board, indent=1)};")
    index = {kind: i for i, kind in enumerate(PANEL_TYPES)}
    for n, panel in enumerate(all_panels(board)):
        if panel["type"] == "row":
            continue
        assert panel["type"] in index, f"{panel['title']}: no schema for {panel['type']}"
        i = index[panel["type"]]
        lines.append(f"export const options{n}: Json<O{i}> = {json.dumps(panel['options'])};")
        custom = panel["fieldConfig"]["defaults"].get("custom", {})
        lines.append(f"export const custom{n}: Json<Partial<F{i}>> = {json.dumps(custom)};")
    return "\n".join(lines) + "\n"


def tsc_errors(boards: dict[str, dict[str, Any]], tmp_path: Path) -> str:
    """tsc --noEmit --strict over the dashboards as TypeScript; '' if it finds no error."""
    tsc = SCHEMA_CHECK / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), ("tsc missing: run `npm ci` in dashboards/schema-check "
                          "(bash scripts/setup.sh --test does)")
    (tmp_path / "node_modules").symlink_to(SCHEMA_CHECK / "node_modules")
    files = []
    for name, board in boards.items():
        path = tmp_path / (name.removesuffix(".json") + ".ts")
        path.write_text(typescript(board), encoding="utf-8")
        files.append(path.name)
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "target": "es2022",
                            "module": "esnext", "moduleResolution": "bundler",
                            "skipLibCheck": True, "types": []},
        "files": files}), encoding="utf-8")
    result = subprocess.run([str(tsc), "-p", str(tmp_path / "tsconfig.json")],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_dashboards_match_grafanas_schema(tmp_path: Path) -> None:
    errors = tsc_errors({name: load(name) for name in NAMES}, tmp_path)
    assert not errors, errors


def test_schema_check_catches_a_wrong_field(tmp_path: Path) -> None:
    board = load(NAMES[0])
    board["graphTooltip"] = "shared"
    table = next(p for p in all_panels(board) if p["type"] == "table")
    table["options"]["footer"] = {"show": False}
    errors = tsc_errors({"broken.json": board}, tmp_path)
    assert "DashboardCursorSync" in errors and '"footer"' in errors, errors


def test_every_panel_filters_on_cluster() -> None:
    for name in NAMES:
        board = load(name)
        variables = [v["name"] for v in board["templating"]["list"]]
        assert variables[1] == "cluster", name
        cluster = board["templating"]["list"][1]
        assert cluster["includeAll"] and cluster["allValue"] == ".*"
        for where, expr in queries(board):
            if "variable 'cluster'" not in where:
                assert "cluster=~" in expr or "value-of-cluster" in expr, where


def test_models_dashboard_has_the_container_variables_and_top_k() -> None:
    board = load("footprint-models.json")
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables == ["datasource", "cluster", "namespace", "model", "phase", "pod",
                         "container"]
    titles = {p["title"] for p in all_panels(board)}
    assert {"Top 10 containers", "Top 10 pods", "Top 10 models"} <= titles
    for panel in all_panels(board):
        if panel["type"] != "row" and panel["title"].startswith("Top 10 "):
            expr = panel["targets"][0]["expr"]
            assert expr.startswith("topk(10, ") and 'pod=~"$pod"' in expr


# ---------------------------------------------------------------------------------------------
# Footprint / Chargeback

CHARGEBACK = "footprint-chargeback.json"
KEYS = ("label_team", "namespace")
"""The `key` variable's values: the pod label team as the exporter publishes it, and namespace."""


def grafana_custom_options(query: str) -> list[tuple[str, str]]:
    """(text, value) of a custom variable's query as Grafana splits it: values separated by
    commas (`\\,` escapes one), `text : value` pairs."""
    out = []
    for item in re.findall(r"(?:\\,|[^,])+", query):
        item = item.replace("\\,", ",")
        pair = re.match(r"^\s*(.+)\s:\s(.+)$", item)
        out.append((pair.group(1).strip(), pair.group(2).strip()) if pair
                   else (item.strip(), item.strip()))
    return out


def test_chargeback_variables() -> None:
    board = load(CHARGEBACK)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "cluster", "key", "value"]
    key = variables["key"]
    assert key["type"] == "custom" and not key["multi"] and not key["includeAll"]
    assert grafana_custom_options(key["query"]) == [(o["text"], o["value"])
                                                    for o in key["options"]]
    assert sorted(custom_values(key)) == sorted(KEYS)
    assert key["current"]["value"] == "label_team"
    value = variables["value"]
    assert value["multi"] and value["includeAll"] and value["allValue"] == ".*"
    assert value["query"] == ('label_values($key:footprint_co2e_grams:rate5m'
                              '{cluster=~"$cluster"}, $key)')


def test_chargeback_defaults_to_this_month() -> None:
    board = load(CHARGEBACK)
    assert board["time"] == {"from": "now/M", "to": "now"}
    assert board["timezone"] == "utc"


def chargeback_targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in all_panels(board):
        for t in panel.get("targets", []):
            yield panel, t


def test_chargeback_reads_only_chargeback_records() -> None:
    """Every name it queries, $key as label_team and as namespace, is recorded by the rule
    pack's chargeback groups or is a chargeback budget (rules/chargeback-budgets.example.yaml),
    and every query is per key."""
    board = load(CHARGEBACK)
    pack, budgets = records(RULES), records(CHARGEBACK_BUDGETS)
    used: set[str] = set()
    for where, expr in queries(board):
        names = metric_names(expr)
        assert names, where
        for name in names:
            assert name in (budgets if "_budget_grams" in name else pack), f"{where}: {name}"
        used |= names
    for key in KEYS:
        assert {f"{key}:footprint_co2e_grams:rate5m", f"{key}:footprint_co2e_grams:increase1d",
                f"{key}:footprint_co2e_grams:increase30d", f"{key}:footprint_energy_joules:rate5m",
                f"{key}:footprint_water_liters:rate5m", f"{key}:footprint_co2e_daily_budget_grams",
                f"{key}:footprint_co2e_monthly_budget_grams"} <= used, key
    for panel, t in chargeback_targets(board):
        assert "$key:footprint_" in t["expr"] and '$key=~"$value"' in t["expr"], panel["title"]


def test_chargeback_month_to_date_is_the_riemann_sum_of_the_5m_records() -> None:
    """Over the time range, as footprint-exporter report: sum_over_time of a rate5m record
    every 5 minutes, x 300; never increase() or a daily record over $__range."""
    board = load(CHARGEBACK)
    riemann = re.compile(r"sum_over_time\(\$key:footprint_\w+:rate5m\{[^{}]*\}\[\$__range:5m\]\)")
    ranged = 0
    for panel, t in chargeback_targets(board):
        expr = t["expr"]
        if "$__range" not in expr:
            continue
        ranged += 1
        assert expr.count("$__range") == len(riemann.findall(expr)), panel["title"]
        if "scalar(" not in expr:  # the share of total: the 300 s cancel out
            assert " * 300" in expr, panel["title"]
        assert t["instant"], panel["title"]
    assert ranged >= 10


def test_chargeback_table_has_the_reports_columns() -> None:
    (table,) = [p for p in all_panels(load(CHARGEBACK)) if p["type"] == "table"]
    organize = next(t for t in table["transformations"] if t["id"] == "organize")["options"]
    renamed = organize["renameByName"]
    index = organize["indexByName"]
    columns = [renamed[name] for name in sorted(index, key=lambda n: (index[n], n))
               if name not in KEYS]
    assert columns == ["Operational", "Infrastructure", "Embodied", "Total", "Energy", "Water",
                       "Share of total"]
    assert {renamed["label_team"], renamed["namespace"]} == {"Team", "Namespace"}
    refs = {t["refId"]: t["expr"] for t in table["targets"]}
    for ref, scope in zip("ABCD", ("operational", "infrastructure", "embodied", "total"),
                          strict=True):
        assert f'scope="{scope}"' in refs[ref]
    assert "footprint_energy_joules" in refs["E"] and "/ 3.6e6" in refs["E"]
    assert "footprint_water_liters" in refs["F"] and "scalar(sum(" in refs["G"]


# --- on a real Prometheus (slow) ---------------------------------------------------------------

T0 = 1_699_999_200  # 2023-11-14T22:00:00Z, on the 5-minute grid
SPAN = 3 * 3600
END = T0 + 2 * 3600 + 32 * 60 + 30
"""Off the 5-minute grid: the subquery [2h:5m] takes 24 points, on every Prometheus."""
MTD_RANGE = "2h"
RANGE_SECONDS = 7200
SHARES = {"operational": 1.0, "infrastructure": 0.25, "embodied": 0.5}
"""Each scope's grams per second as a multiple of a value's base rate."""
BASE = {
    ("c1", "label_team"): {"vision": 0.02, "speech": 0.01, "": 0.004},
    ("c1", "namespace"): {"vision-prod": 0.022, "speech-prod": 0.012},
    ("c2", "label_team"): {"vision": 0.005},
    ("c2", "namespace"): {"vision-prod": 0.005},
}
"""Base g/s per cluster, key and value ("" = pods without the team label)."""
WATTS_PER_GRAM_PER_S = 5000.0
WUE, GRID_WATER = 1.8, 3.0
BUDGETS = {
    ("label_team", "daily"): {"vision": 2000.0, "speech": 500.0},
    ("label_team", "monthly"): {"vision": 40000.0},
    ("namespace", "daily"): {"vision-prod": 3000.0, "speech-prod": 1000.0},
    ("namespace", "monthly"): {"vision-prod": 60000.0, "speech-prod": 20000.0},
}
"""Grams, recorded without a cluster label, as the chart records budgets."""


def synthetic_records() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each record name's series (labels, constant value) for the synthetic hours."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}

    def add(name: str, labels: dict[str, str], value: float) -> None:
        out.setdefault(name, []).append(({k: v for k, v in labels.items() if v}, value))

    for (cluster, key), rates in BASE.items():
        for who, rate in rates.items():
            labels = {"cluster": cluster, key: who}
            for scope, share in [*SHARES.items(), ("total", sum(SHARES.values()))]:
                add(f"{key}:footprint_co2e_grams:rate5m", {**labels, "scope": scope},
                    rate * share)
                add(f"{key}:footprint_co2e_grams:increase1d", {**labels, "scope": scope},
                    rate * share * 86400)
                add(f"{key}:footprint_co2e_grams:increase30d", {**labels, "scope": scope},
                    rate * share * 86400 * 30)
            watts = rate * WATTS_PER_GRAM_PER_S
            add(f"{key}:footprint_energy_joules:rate5m", labels, watts)
            add(f"{key}:footprint_water_liters:rate5m", {**labels, "scope": "water_onsite"},
                watts / 3.6e6 * WUE)
            add(f"{key}:footprint_water_liters:rate5m", {**labels, "scope": "water_offsite"},
                watts / 3.6e6 * GRID_WATER)
    for (key, period), budgets in BUDGETS.items():
        for who, grams in budgets.items():
            add(f"{key}:footprint_co2e_{period}_budget_grams", {key: who}, grams)
    return out


@pytest.fixture(scope="module")
def chargeback_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.backfill import BlockPrometheus, OpenMetricsWriter, backfill_openmetrics

    work = tmp_path_factory.mktemp("chargeback")
    source = work / "records.om"
    known = records(RULES) | records(CHARGEBACK_BUDGETS)
    with source.open("w") as out:
        writer = OpenMetricsWriter(out)
        for name, series in sorted(synthetic_records().items()):
            assert name in known, name
            writer.family(name, "gauge")
            for labels, value in series:
                writer.series(name, labels, ((t, value) for t in range(T0, T0 + SPAN + 1, 60)))
        writer.close()
    backfill_openmetrics(source, work / "data")
    with BlockPrometheus(work / "data") as prometheus:
        prometheus.start()
        yield prometheus


def chargeback_exprs(key: str, cluster: str = ".*", value: str = ".*"
                     ) -> dict[tuple[str, str], str]:
    """(panel title, refId): PromQL, as Grafana sends it with these selections and a 2 h
    range."""
    board = load(CHARGEBACK)
    values = {"key": key, "cluster": cluster, "value": value, "__range": MTD_RANGE}
    return {(p["title"], t["refId"]): concrete(t["expr"], board, p["title"], values)
            for p, t in chargeback_targets(board)}


def expected_rates(key: str, clusters: tuple[str, ...] = ("c1", "c2")) -> dict[str, float]:
    """Base g/s per value (as the dashboard names it) over the clusters."""
    out: dict[str, float] = {}
    for cluster in clusters:
        for who, rate in BASE.get((cluster, key), {}).items():
            name = who or "unassigned"
            out[name] = out.get(name, 0.0) + rate
    return out


def by_key(prometheus: Any, expr: str, key: str) -> dict[str, float]:
    result = prometheus.query(expr, END)["result"]
    out = {s["metric"].get(key, ""): float(s["value"][1]) for s in result}
    assert len(out) == len(result), result
    return out


def close(got: dict[str, float], want: dict[str, float]) -> bool:
    return set(got) == set(want) and all(
        abs(got[k] - want[k]) <= 1e-9 * max(1.0, abs(want[k])) for k in want)


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("cluster", [".*", "c1"])
def test_chargeback_queries_run_on_prometheus(chargeback_prometheus: Any, key: str,
                                              cluster: str) -> None:
    """Each query runs and returns series, for both keys, all clusters and one."""
    for (title, ref), expr in chargeback_exprs(key, cluster).items():
        result = chargeback_prometheus.query(expr, END)["result"]
        assert result, f"{title} {ref} [key={key}, cluster={cluster}]: no data\n{expr}"


@pytest.mark.slow(seconds=5)
@pytest.mark.parametrize("key", KEYS)
def test_chargeback_table_values(chargeback_prometheus: Any, key: str) -> None:
    exprs = chargeback_exprs(key)
    rates = expected_rates(key)
    table = {ref: by_key(chargeback_prometheus, expr, key)
             for (title, ref), expr in exprs.items() if title == "Chargeback, month to date"}
    for ref, share in zip("ABCD", [*SHARES.values(), sum(SHARES.values())], strict=True):
        assert close(table[ref], {k: r * share * RANGE_SECONDS for k, r in rates.items()}), ref
    watts = {k: r * WATTS_PER_GRAM_PER_S for k, r in rates.items()}
    assert close(table["E"], {k: w * RANGE_SECONDS / 3.6e6 for k, w in watts.items()})
    assert close(table["F"], {k: w / 3.6e6 * (WUE + GRID_WATER) * RANGE_SECONDS
                              for k, w in watts.items()})
    assert close(table["G"], {k: r / sum(rates.values()) for k, r in rates.items()})
    if key == "label_team":
        assert "unassigned" in table["D"]
    (stat,) = [e for (title, _), e in exprs.items() if title == "CO2e, month to date"]
    assert close(by_key(chargeback_prometheus, stat, key),
                 {"": sum(rates.values()) * sum(SHARES.values()) * RANGE_SECONDS})


@pytest.mark.slow(seconds=5)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("cluster", [".*", "c1"])
def test_chargeback_budgets(chargeback_prometheus: Any, key: str, cluster: str) -> None:
    """Budget shares against the budgets, which have no cluster label, also with a cluster
    selected; only those with a budget."""
    exprs = chargeback_exprs(key, cluster)
    clusters = ("c1", "c2") if cluster == ".*" else (cluster,)
    total = {k: r * sum(SHARES.values()) for k, r in expected_rates(key, clusters).items()}
    daily, monthly = BUDGETS[(key, "daily")], BUDGETS[(key, "monthly")]
    cases = {
        "Daily budget used": {k: total[k] * 86400 / b for k, b in daily.items()},
        "Monthly budget used, 30 days": {k: total[k] * 86400 * 30 / b
                                         for k, b in monthly.items()},
        "Monthly budget used, month to date": {k: total[k] * RANGE_SECONDS / b
                                               for k, b in monthly.items()},
    }
    for title, want in cases.items():
        assert close(by_key(chargeback_prometheus, exprs[(title, "A")], key), want), title
    assert close(by_key(chargeback_prometheus, exprs[("Daily CO2e against budget", "A")], key),
                 {k: total[k] * 86400 for k in daily})
    assert close(by_key(chargeback_prometheus, exprs[("Daily CO2e against budget", "B")], key),
                 daily)


@pytest.mark.slow(seconds=5)
def test_chargeback_value_and_cluster_filters(chargeback_prometheus: Any) -> None:
    one = chargeback_exprs("label_team", cluster="c2", value="vision")
    got = by_key(chargeback_prometheus, one[("Chargeback, month to date", "D")], "label_team")
    assert close(got, {"vision": 0.005 * sum(SHARES.values()) * RANGE_SECONDS})
    # the share stays of every team of the selected clusters, selected or not
    share = by_key(chargeback_prometheus, one[("Chargeback, month to date", "G")], "label_team")
    assert close(share, {"vision": 1.0})
    some = chargeback_exprs("label_team", value="(vision|speech)")
    share = by_key(chargeback_prometheus, some[("Chargeback, month to date", "G")], "label_team")
    rates = expected_rates("label_team")
    assert close(share, {k: rates[k] / sum(rates.values()) for k in ("vision", "speech")})


@pytest.mark.slow(seconds=5)
def test_chargeback_variables_list_the_values(chargeback_prometheus: Any) -> None:
    """The variables' label_values, as Grafana asks for them (/api/v1/series)."""
    board = load(CHARGEBACK)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    want = {("cluster", "label_team"): {"c1", "c2"}, ("cluster", "namespace"): {"c1", "c2"},
            ("value", "label_team"): {"vision", "speech"},
            ("value", "namespace"): {"vision-prod", "speech-prod"}}
    for (name, key), values in want.items():
        selector, label = label_values(board, variables[name]["query"], name,
                                       {"key": key, "cluster": ".*"})
        assert selector
        series = chargeback_prometheus.api("/api/v1/series", {
            "match[]": selector, "start": str(END - RANGE_SECONDS), "end": str(END)})["data"]
        assert {s[label] for s in series if label in s} == values, (name, key)
