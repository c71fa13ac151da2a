"""Writes Footprint's Grafana dashboards as JSON: `python dashboards/generate.py [--out DIR]`.

`--check` writes nothing and exits 1 if the committed files are not what it would write.

Built with grafana-foundation-sdk's typed builders (pinned in pyproject.toml), serialized with
its JSONEncoder, then a few documented post-processing steps (`postprocess`). The output is
deterministic (sorted keys), so the committed JSON files must equal what this script writes
(tests/test_dashboards.py regenerates them and compares). Edit this file, run it, and commit
both. docs/dashboards.md says what each dashboard shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge as bargauge_b
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import statetimeline as statetimeline_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

TAGS = ["footprint"]
DATASOURCE_UID = "${datasource}"

CAR_GRAMS_PER_KM = 248.5
"""A typical passenger car's tailpipe CO2 per km: EPA, "Greenhouse Gas Emissions from a Typical
Passenger Vehicle" (EPA-420-F-23-014, June 2023): about 400 g CO2 per mile = 248.5 g per km."""
CAR_SOURCE = (
    "The factor is 248.5 g CO2 per km: a typical passenger car's tailpipe emissions, about "
    "400 g per mile, from the US EPA's \"Greenhouse Gas Emissions from a Typical Passenger "
    "Vehicle\" (EPA-420-F-23-014, June 2023). An illustration, not an offset: tailpipe CO2 only, "
    "no fuel production, no car manufacture.")

Panel = Any
"""A panel builder of the SDK (timeseries, stat, bargauge, table, state-timeline): they share
the generic panel methods (id, grid_pos, unit, thresholds, ...) but no common base class."""
Target = prometheus_b.Dataquery
Override = tuple[str, bool, list[dm.DynamicConfigValue]]
"""(field name or regex, is a regex, properties)."""
Steps = tuple[tuple[float, str], ...]


# Selectors shared by many panels. Recorded series (rules/footprint.rules.yaml) have no `node`.
CLUSTER_SEL = 'cluster=~"$cluster"'
"""Series carry `cluster` only where Prometheus adds it (a scrape relabel; external labels are
not seen by queries): with "All" (`.*`) the matcher also matches series without the label."""
MODEL_SEL = f'{CLUSTER_SEL}, model=~"$model", phase=~"$phase"'
BUDGET_CLUSTER_SEL = 'cluster=~"$cluster|"'
"""Budgets are configuration: the chart records them without a cluster label (also in the
cluster-label variant), so they match the selected clusters or no cluster at all; with one
cluster picked, `cluster=~"$cluster"` alone would hide every budget."""
"""The recorded per-model series (model, phase, scope) have no namespace, pod or container."""
CONTAINER_SEL = (f'{MODEL_SEL}, namespace=~"$namespace", pod=~"$pod", '
                 'container=~"$container"')
"""The exporter's container series carry every label the variables select."""
NODE_SEL = f'{CLUSTER_SEL}, node=~"$node"'
JOB_NODE_SEL = f'{CLUSTER_SEL}, job=~"$job", node=~"$node"'
JOULES_PER_KWH = "3.6e6"
TOP = 10


# ---------------------------------------------------------------------------------------------
# Building blocks


def datasource() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
           table: bool = False) -> Target:
    """One Prometheus query."""
    out = (prometheus_b.Dataquery().datasource(datasource())
           .editor_mode(pm.QueryEditorMode.CODE).expr(expr)
           .legend_format(legend or "__auto").ref_id(ref))
    out = out.instant() if instant else out.range()
    if table:
        out = out.format(pm.PromQueryFormat.TABLE)
    return out


def thresholds(*steps: tuple[float, str], base: str = "green") -> dashboard_b.ThresholdsConfig:
    return (dashboard_b.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=None, color=base)]
                   + [dm.Threshold(value=value, color=color) for value, color in steps]))


def color(mode: dm.FieldColorModeId) -> dashboard_b.FieldColor:
    return dashboard_b.FieldColor().mode(mode)


def common_panel(panel: Panel, title: str, description: str, targets: list[Target], unit: str,
                 *, decimals: int | None = None, minimum: float | None = None,
                 maximum: float | None = None, steps: Steps = (),
                 mappings: list[dm.ValueMapping] | None = None,
                 overrides: list[Override] | None = None) -> Panel:
    """What every panel sets: title, description, queries and the field defaults. The color
    follows the thresholds where there are steps or mappings, else the classic palette."""
    panel = (panel.title(title).description(description).datasource(datasource())
             .targets(targets).unit(unit).thresholds(thresholds(*steps))
             .mappings(mappings or [])
             .color_scheme(color(dm.FieldColorModeId.THRESHOLDS if steps or mappings
                                 else dm.FieldColorModeId.PALETTE_CLASSIC)))
    if decimals is not None:
        panel = panel.decimals(decimals)
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    for name, regex, properties in overrides or []:
        panel = (panel.override_by_regexp(name, properties) if regex
                 else panel.override_by_name(name, properties))
    return panel


def override(name: str, *properties: tuple[str, Any], regex: bool = False) -> Override:
    return name, regex, [dm.DynamicConfigValue(id_val=key, value=value)
                         for key, value in properties]


def timeseries(title: str, description: str, targets: list[Target], unit: str, *,
               stack: bool = False, bars: bool = False, interval: str | None = None,
               decimals: int | None = None, overrides: list[Override] | None = None,
               minimum: float | None = None, maximum: float | None = None,
               steps: Steps = ()) -> Panel:
    panel = common_panel(timeseries_b.Panel(), title, description, targets, unit,
                         decimals=decimals, minimum=minimum, maximum=maximum, steps=steps,
                         overrides=overrides)
    panel = (panel.draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
             .fill_opacity(80 if bars else (25 if stack else 10))
             .line_width(1).show_points(cm.VisibilityMode.NEVER).span_nulls(False)
             .stacking(common_b.StackingConfig().group("A")
                       .mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE))
             .axis_soft_min(0)
             .legend(common_b.VizLegendOptions().calcs(["mean", "lastNotNull"])
                     .display_mode(cm.LegendDisplayMode.TABLE)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common_b.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                      .sort(cm.SortOrder.DESCENDING)))
    if steps:
        # thresholds drawn as dashed lines; the series keep the palette
        panel = (panel.thresholds_style(common_b.GraphThresholdsStyleConfig()
                                        .mode(cm.GraphThresholdsStyleMode.DASHED))
                 .color_scheme(color(dm.FieldColorModeId.PALETTE_CLASSIC)))
    if interval is not None:
        panel = panel.interval(interval)
    return panel


def last_value() -> common_b.ReduceDataOptions:
    return common_b.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def stat(title: str, description: str, targets: list[Target], unit: str, *,
         decimals: int | None = None, steps: Steps = (),
         mappings: list[dm.ValueMapping] | None = None, graph: bool = True) -> Panel:
    panel = common_panel(stat_b.Panel(), title, description, targets, unit, decimals=decimals,
                         steps=steps, mappings=mappings)
    return (panel.color_mode(cm.BigValueColorMode.VALUE)
            .graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE)
            .justify_mode(cm.BigValueJustifyMode.AUTO).orientation(cm.VizOrientation.AUTO)
            .reduce_options(last_value()).text_mode(cm.BigValueTextMode.AUTO)
            .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
            .show_percent_change(False).wide_layout(True))


def bargauge(title: str, description: str, targets: list[Target], unit: str, *,
             minimum: float | None = 0, maximum: float | None = None,
             decimals: int | None = None, steps: Steps = ()) -> Panel:
    panel = common_panel(bargauge_b.Panel(), title, description, targets, unit,
                         decimals=decimals, minimum=minimum, maximum=maximum, steps=steps)
    return (panel.display_mode(cm.BarGaugeDisplayMode.GRADIENT)
            .legend(common_b.VizLegendOptions().calcs([])
                    .display_mode(cm.LegendDisplayMode.LIST)
                    .placement(cm.LegendPlacement.BOTTOM).show_legend(False))
            .max_viz_height(300).min_viz_height(16).min_viz_width(8)
            .name_placement(cm.BarGaugeNamePlacement.AUTO).sizing(cm.BarGaugeSizing.AUTO)
            .orientation(cm.VizOrientation.HORIZONTAL).reduce_options(last_value())
            .show_unfilled(True).value_mode(cm.BarGaugeValueMode.COLOR))


def table(title: str, description: str, targets: list[Target], unit: str, *,
          transformations: list[dm.DataTransformerConfig] | None = None,
          overrides: list[Override] | None = None,
          decimals: int | None = None, footer: tuple[str, ...] = ()) -> Panel:
    """A table; `footer`: reducers shown under every column. The SDK (Grafana 11.6) writes the
    footer in `options.footer`; Grafana 12 keeps it in `fieldConfig.defaults.custom.footer`,
    where `postprocess` moves it."""
    panel = common_panel(table_b.Panel(), title, description, targets, unit,
                         decimals=decimals, overrides=overrides)
    panel = (panel.cell_height(cm.TableCellHeight.SM).frame_index(0).show_header(True)
             .transformations(transformations or []))
    if footer:
        panel = panel.footer(common_b.TableFooterOptions().show(True).reducer(list(footer)))
    return panel


UP_DOWN: list[dm.ValueMapping] = [dm.ValueMap(options={
    "0": dm.ValueMappingResult(color="red", index=0, text="down"),
    "1": dm.ValueMappingResult(color="green", index=1, text="up"),
})]


def state_timeline(title: str, description: str, targets: list[Target]) -> Panel:
    panel = common_panel(statetimeline_b.Panel(), title, description, targets, "none",
                         mappings=UP_DOWN, steps=((1, "green"),))
    return (panel.thresholds(thresholds((1, "green"), base="red"))
            .fill_opacity(80).line_width(0)
            .align_value(cm.TimelineValueAlignment.LEFT).merge_values(True).row_height(0.9)
            .show_value(cm.VisibilityMode.NEVER)
            .legend(common_b.VizLegendOptions().calcs([])
                    .display_mode(cm.LegendDisplayMode.LIST)
                    .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
            .tooltip(common_b.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE)
                     .sort(cm.SortOrder.NONE)))


def transformation(id_val: str, options: dict[str, Any]) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=id_val, options=options)


def merge_table(names: dict[str, str], order: list[str]) -> list[dm.DataTransformerConfig]:
    """Instant table queries merged into one row per label set, value columns renamed, only
    the columns in `order` kept (not the scrape's job, instance, ...), in that order."""
    return [
        transformation("merge", {}),
        transformation("organize", {
            "excludeByName": {"Time": True},
            "renameByName": names,
            "indexByName": {name: i for i, name in enumerate(order)},
        }),
        transformation("filterFieldsByName", {"include": {"names": order}}),
    ]


Rows = list[tuple[str, list[tuple[Panel, int, int]]]]


def layout(board: dashboard_b.Dashboard, rows: Rows) -> dashboard_b.Dashboard:
    """Rows of (panel, width, height), placed left to right on Grafana's 24-column grid. Every
    panel gets an explicit position (the SDK's own placement only fills in unset ones)."""
    y = 0
    next_id = 1
    for title, items in rows:
        board = board.with_row(dashboard_b.Row(title).collapsed(False).id(next_id)
                               .grid_pos(dm.GridPos(h=1, w=24, x=0, y=y)))
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel, width, height in items:
            if x + width > 24:
                y += line_height
                x, line_height = 0, 0
            board = board.with_panel(panel.id(next_id)
                                     .grid_pos(dm.GridPos(h=height, w=width, x=x, y=y)))
            next_id += 1
            x += width
            line_height = max(line_height, height)
        y += line_height
    return board


def datasource_variable() -> dashboard_b.DatasourceVariable:
    return (dashboard_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .hide(dm.VariableHide.DONT_HIDE).include_all(False).multi(False).regex(""))


def query_variable(name: str, label: str, query: str) -> dashboard_b.QueryVariable:
    """A variable from `label_values(selector, label)`, multi-value; "All" is the regex `.*`."""
    return (dashboard_b.QueryVariable(name).label(label).datasource(datasource()).query(query)
            .hide(dm.VariableHide.DONT_HIDE).include_all(True).all_value(".*").multi(True)
            .options([]).refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).regex("")
            .sort(dm.VariableSort.ALPHABETICAL_ASC))


def cluster_variable(series: str) -> dashboard_b.QueryVariable:
    """`cluster`, where Prometheus adds that label; with none, "All" (`.*`) matches every series
    (Grafana has no "hide when single value": the variable stays visible)."""
    return query_variable("cluster", "Cluster", f"label_values({series}, cluster)")


def container_variables() -> list[dashboard_b.QueryVariable]:
    """cluster, namespace, model, phase, pod, container: each chained on the ones before."""
    info = "footprint_container_info"
    chain: list[str] = [CLUSTER_SEL]
    out = [cluster_variable(info)]
    for name, label in (("namespace", "Namespace"), ("model", "Model"), ("phase", "Phase"),
                        ("pod", "Pod"), ("container", "Container")):
        out.append(query_variable(name, label,
                                  f"label_values({info}{{{', '.join(chain)}}}, {name})"))
        chain.append(f'{name}=~"${name}"')
    return out


def dashboard(uid: str, title: str, description: str,
              variables: list[Any], rows: Rows, *,
              time_from: str = "now-24h", timezone: str = "browser") -> dashboard_b.Dashboard:
    board = (dashboard_b.Dashboard(title).uid(uid).description(description).editable()
             .fiscal_year_start_month(0).tooltip(dm.DashboardCursorSync.CROSSHAIR)
             .annotation(dashboard_b.AnnotationQuery().built_in(1)
                         .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                         .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
                         .name("Annotations & Alerts").type("dashboard"))
             .link(dashboard_b.DashboardLink("Footprint").type(dm.DashboardLinkType.DASHBOARDS)
                   .as_dropdown(True).icon("external link").include_vars(False).keep_time(True)
                   .tags(TAGS).target_blank(False).tooltip(""))
             .refresh("1m").tags(TAGS)
             .variables([datasource_variable(), *variables])
             .time(time_from, "now").timezone(timezone).version(1).week_start(""))
    return layout(board, rows)


# ---------------------------------------------------------------------------------------------
# Footprint / Models


def models() -> dashboard_b.Dashboard:
    def inc1d(scope: str, by: str = "model") -> str:
        return (f'sum by ({by}) (model:footprint_co2e_grams:increase1d'
                f'{{{MODEL_SEL}, scope="{scope}"}})')

    total_1d = inc1d("total")
    energy_1d = (f"sum by (model) (model:footprint_energy_joules:increase1d{{{MODEL_SEL}}})"
                 f" / {JOULES_PER_KWH}")
    budget = (f'{inc1d("total")} / on (model) '
              f'sum by (model) (model:footprint_co2e_daily_budget_grams'
              f'{{{BUDGET_CLUSTER_SEL}, model=~"$model"}})')
    rows: Rows = [
        ("Last 24 hours", [
            (stat("CO2e, last 24 h",
                  "Emissions of the selected models over the 24 hours ending now, every scope "
                  "(operational + infrastructure + embodied): "
                  "model:footprint_co2e_grams:increase1d{scope=\"total\"} from the rule pack.",
                  [target(f'sum(model:footprint_co2e_grams:increase1d'
                          f'{{{MODEL_SEL}, scope="total"}})', "CO2e")], "massg", decimals=1), 6, 5),
            (stat("Energy, last 24 h",
                  "Energy attributed to the selected models' containers over the last 24 hours "
                  "(cpu, dram and gpu; idle and dynamic), before PUE.",
                  [target(f"sum(model:footprint_energy_joules:increase1d{{{MODEL_SEL}}})"
                          f" / {JOULES_PER_KWH}", "energy")], "kwatth", decimals=2), 6, 5),
            (stat("Emission rate now, per hour",
                  "Current emission rate of the selected models, every scope, in grams per "
                  "hour (the 5-minute rate of the rule pack, x 3600): grams per hour, shown in g, "
                  "kg or t.",
                  [target(f'sum(model:footprint_co2e_grams:rate5m'
                          f'{{{MODEL_SEL}, scope="total"}}) * 3600', "CO2e per hour")], "massg",
                  decimals=2), 6, 5),
            (stat("Equivalent: km driven by car, last 24 h",
                  "The last 24 hours' CO2e of the selected models as the distance a typical "
                  "petrol passenger car would drive for the same CO2. " + CAR_SOURCE,
                  [target(f'sum(model:footprint_co2e_grams:increase1d'
                          f'{{{MODEL_SEL}, scope="total"}}) / {CAR_GRAMS_PER_KM}', "km")],
                  "lengthkm", decimals=2), 6, 5),
        ]),
        ("Emissions by model", [
            (timeseries("Daily CO2e by model and scope",
                        "Rolling 24-hour emissions per model, stacked by scope: operational "
                        "(grid intensity x attributed energy), infrastructure (the PUE overhead) "
                        "and embodied (the hardware's manufacture, amortised over its "
                        "lifetime). Each bar is the 24 hours ending at that time.",
                        [target(f'sum by (model, scope) (model:footprint_co2e_grams:increase1d'
                                f'{{{MODEL_SEL}, scope!="total"}})', "{{model}} {{scope}}")],
                        "massg", stack=True, bars=True, interval="1h"), 24, 9),
            (timeseries("Emission rate by model, per hour",
                        "Each model's current emissions, every scope, in grams per hour "
                        "(shown in g, kg or t).",
                        [target(f'sum by (model) (model:footprint_co2e_grams:rate5m'
                                f'{{{MODEL_SEL}, scope="total"}}) * 3600', "{{model}}")],
                        "massg", stack=True), 12, 8),
            (timeseries("Power by model",
                        "Power drawn by each model's containers: the rate of attributed energy "
                        "(joules per second = watts), cpu + dram + gpu, before PUE.",
                        [target(f"sum by (model) (model:footprint_energy_joules:rate5m"
                                f"{{{MODEL_SEL}}})", "{{model}}")], "watt", stack=True), 12, 8),
            (bargauge("Energy by model, last 24 h",
                      "Energy attributed to each model over the 24 hours ending now.",
                      [target(energy_1d, "{{model}}", instant=True)], "kwatth"), 12, 8),
            (bargauge("Operational CO2e by model over the selected range",
                      "Operational emissions only (no PUE overhead, no embodied share) over the "
                      "dashboard's time range, straight from the exporter's counters "
                      "(footprint_container_co2e_grams_total), so it works without the rule "
                      "pack.",
                      [target(f"sum by (model) (increase(footprint_container_co2e_grams_total"
                              f"{{{CONTAINER_SEL}}}[$__range]))", "{{model}}", instant=True)],
                      "massg"), 12, 8),
        ]),
        ("Water", [
            (stat("Water, last 24 h",
                  "Water consumed for the selected models over the 24 hours ending now, on site "
                  "(the data centre's cooling: energy x WUE) plus off site (generating the "
                  "electricity: energy x PUE x the grid's litres per kWh): "
                  "model:footprint_water_liters:increase1d from the rule pack "
                  "(docs/lifecycle.md, Water).",
                  [target(f"sum(model:footprint_water_liters:increase1d{{{MODEL_SEL}}})",
                          "water")], "litre", decimals=1), 6, 8),
            (timeseries("Daily water by model, on site and off site",
                        "Rolling 24-hour litres per model, stacked by scope: water_onsite "
                        "(cooling water evaporated at the data centre) and water_offsite (water "
                        "consumed by the power plants for the data centre's electricity). Each "
                        "bar is the 24 hours ending at that time.",
                        [target(f"sum by (model, scope) (model:footprint_water_liters:increase1d"
                                f"{{{MODEL_SEL}}})", "{{model}} {{scope}}")],
                        "litre", stack=True, bars=True, interval="1h"), 18, 8),
        ]),
        ("Efficiency", [
            (timeseries("CO2e per 1,000 tokens",
                        "Grams CO2e (every scope) per 1,000 tokens served, over 5 minutes: the "
                        "model's emission rate divided by its token rate from the serving "
                        "framework's metrics (vLLM, TGI). Empty for models whose server "
                        "publishes no token counts.",
                        [target(f"model:footprint_co2e_grams_per_1k_tokens:rate5m{{{MODEL_SEL}}}",
                                "{{model}} {{phase}}")], "massg", decimals=3), 12, 8),
            (timeseries("CO2e per request",
                        "Grams CO2e (every scope) per request completed, over 5 minutes: the "
                        "model's emission rate divided by its request rate from the serving "
                        "framework's metrics.",
                        [target(f"model:footprint_co2e_grams_per_request:rate5m{{{MODEL_SEL}}}",
                                "{{model}} {{phase}}")], "massg", decimals=3), 12, 8),
            (timeseries("Tokens generated per second",
                        "Tokens each model's inference servers generate per second, from their "
                        "own counters (vLLM's vllm:generation_tokens_total, else TGI's "
                        "tgi_request_generated_tokens), joined to the model by pod: the "
                        "denominator of the per-1,000-tokens figure.",
                        [target(f"model:footprint_generated_tokens:rate5m{{{MODEL_SEL}}}",
                                "{{model}} {{phase}}")], "short"), 12, 7),
            (timeseries("Requests completed per second",
                        "Requests each model's inference servers complete per second (vLLM's "
                        "vllm:request_success_total, else TGI's tgi_request_success): the "
                        "denominator of the per-request figure.",
                        [target(f"model:footprint_successful_requests:rate5m{{{MODEL_SEL}}}",
                                "{{model}} {{phase}}")], "reqps"), 12, 7),
        ]),
        (f"Top {TOP} by operational CO2e over the selected range", [
            (bargauge(f"Top {TOP} containers",
                      f"The {TOP} containers that emitted the most operational CO2e (grid "
                      "intensity x attributed energy) over the dashboard's time range, from the "
                      "exporter's counter footprint_container_co2e_grams_total.",
                      [target(f"topk({TOP}, sum by (namespace, pod, container) (increase("
                              f"footprint_container_co2e_grams_total{{{CONTAINER_SEL}}}"
                              "[$__range])))", "{{namespace}}/{{pod}}/{{container}}",
                              instant=True)], "massg"), 8, 10),
            (bargauge(f"Top {TOP} pods",
                      f"The {TOP} pods that emitted the most operational CO2e over the "
                      "dashboard's time range (all their containers).",
                      [target(f"topk({TOP}, sum by (namespace, pod) (increase("
                              f"footprint_container_co2e_grams_total{{{CONTAINER_SEL}}}"
                              "[$__range])))", "{{namespace}}/{{pod}}", instant=True)],
                      "massg"), 8, 10),
            (bargauge(f"Top {TOP} models",
                      f"The {TOP} models whose containers emitted the most operational CO2e "
                      "over the dashboard's time range.",
                      [target(f"topk({TOP}, sum by (model) (increase("
                              f"footprint_container_co2e_grams_total{{{CONTAINER_SEL}}}"
                              "[$__range])))", "{{model}}", instant=True)], "massg"), 8, 10),
        ]),
        ("Budget", [
            (bargauge("Daily budget used",
                      "Each model's last 24 hours of CO2e (every scope) as a share of its daily "
                      "budget (model:footprint_co2e_daily_budget_grams, from the rule pack). "
                      "Over 100% fires FootprintModelDailyEmissionsOverBudget. Models without "
                      "a budget are not shown.",
                      [target(budget, "{{model}}", instant=True)], "percentunit", maximum=1.5,
                      steps=((0.8, "orange"), (1, "red"))), 12, 9),
            (timeseries("Daily CO2e against budget",
                        "Rolling 24-hour CO2e (solid) and the daily budget (dashed) per model.",
                        [target(total_1d, "{{model}} actual"),
                         target('sum by (model) (model:footprint_co2e_daily_budget_grams'
                                f'{{{BUDGET_CLUSTER_SEL}, model=~"$model"}})',
                                "{{model}} budget", "B")],
                        "massg",
                        overrides=[override("/ budget$/", ("custom.lineStyle",
                                                           {"fill": "dash", "dash": [10, 10]}),
                                            regex=True)]), 12, 9),
        ]),
        ("By namespace", [
            (timeseries("Daily CO2e by namespace and scope",
                        "Rolling 24-hour emissions per Kubernetes namespace, stacked by scope "
                        "(namespace:footprint_co2e_grams:increase1d from the rule pack).",
                        [target('sum by (namespace, scope) (namespace:footprint_co2e_grams:'
                                'increase1d{cluster=~"$cluster", namespace=~"$namespace", '
                                'scope!="total"})',
                                "{{namespace}} {{scope}}")], "massg", stack=True), 24, 8),
        ]),
        ("Models", [
            (table("Models, last 24 h",
                   "One row per model: the last 24 hours' CO2e by scope, the total, the energy, "
                   "and the total as km driven by a typical petrol car. " + CAR_SOURCE,
                   [target(inc1d("operational"), ref="A", instant=True, table=True),
                    target(inc1d("infrastructure"), ref="B", instant=True, table=True),
                    target(inc1d("embodied"), ref="C", instant=True, table=True),
                    target(total_1d, ref="D", instant=True, table=True),
                    target(energy_1d, ref="E", instant=True, table=True),
                    target(f"{total_1d} / {CAR_GRAMS_PER_KM}", ref="F", instant=True,
                           table=True)],
                   "massg", decimals=1,
                   transformations=merge_table(
                       {"model": "Model", "Value #A": "Operational", "Value #B": "Infrastructure",
                        "Value #C": "Embodied", "Value #D": "Total", "Value #E": "Energy",
                        "Value #F": "Car km"},
                       ["Model", "Operational", "Infrastructure", "Embodied", "Total", "Energy",
                        "Car km"]),
                   footer=("sum",),
                   overrides=[override("Energy", ("unit", "kwatth")),
                              override("Car km", ("unit", "lengthkm"), ("decimals", 2))]),
             24, 10),
        ]),
    ]
    return dashboard(
        "footprint-models", "Footprint / Models",
        "Energy and CO2e per ML model: daily emissions by scope, efficiency per token and "
        "request, budgets, equivalents. Needs the rule pack (rules/footprint.rules.yaml).",
        container_variables(),
        rows, time_from="now-7d")


# ---------------------------------------------------------------------------------------------
# Footprint / Nodes and GPUs


def nodes() -> dashboard_b.Dashboard:
    gpu_sel = f'{NODE_SEL}, gpu=~"$gpu"'
    node_power = (f"sum by (node) (rate(footprint_node_energy_joules_total"
                  f"{{{NODE_SEL}}}[$__rate_interval]))")
    rows: Rows = [
        ("Power", [
            (stat("Power now",
                  "Power drawn by the selected nodes: cpu + dram + gpu.",
                  [target(f"sum(rate(footprint_node_energy_joules_total"
                          f"{{{NODE_SEL}}}[$__rate_interval]))", "power")],
                  "watt", decimals=0), 6, 5),
            (stat("Energy over the selected range",
                  "Energy the selected nodes used (cpu + dram + gpu) over the dashboard's time "
                  "range.",
                  [target(f"sum(increase(footprint_node_energy_joules_total"
                          f"{{{NODE_SEL}}}[$__range]))", "energy",
                          instant=True)], "joule", decimals=1, graph=False), 6, 5),
            (stat("Operational CO2e over the selected range",
                  "The selected nodes' operational emissions (energy x the grid intensity in "
                  "force) over the dashboard's time range; no PUE, no embodied share.",
                  [target(f"sum(increase(footprint_node_co2e_grams_total"
                          f"{{{NODE_SEL}}}[$__range]))", "CO2e",
                          instant=True)], "massg", decimals=1, graph=False), 6, 5),
            (stat("Unattributed share now",
                  "Share of the selected nodes' energy (cpu + dram + gpu) that no container was "
                  "charged for: system processes, idle capacity nobody requested, unheld GPUs.",
                  [target(f"sum(rate(footprint_unattributed_energy_joules_total"
                          f"{{{NODE_SEL}}}[$__rate_interval])) / "
                          f"sum(rate(footprint_node_energy_joules_total"
                          f"{{{NODE_SEL}}}[$__rate_interval]))", "share")],
                  "percentunit", decimals=1, steps=((0.5, "orange"), (0.8, "red"))), 6, 5),
            (timeseries("Power by component and source",
                        "Each node's power per component (cpu, dram, gpu) and the source that "
                        "measured it (rapl, hwmon, nvml, or the estimate), stacked: the "
                        "components do not overlap, so the top of the stack is the selected "
                        "nodes' power (select one node for its own). The platform meter is not "
                        "a component: see the panel beside.",
                        [target("sum by (node, component, source) (rate("
                                f"footprint_node_energy_joules_total{{{NODE_SEL}}}"
                                "[$__rate_interval]))",
                                "{{node}} {{component}} ({{source}})")], "watt", stack=True),
             12, 9),
            (timeseries("Platform (psys / power meter) vs cpu+dram+gpu",
                        "Per node, the platform meter (RAPL psys, or a hwmon power meter such "
                        "as an ACPI power meter), where the node has one, against the sum of "
                        "its components. The meter overlaps the components and is never added "
                        "to them; the difference is what the components do not cover: fans, "
                        "disks, NICs, power supply losses, as far as the meter reaches (psys "
                        "does not reach a discrete GPU).",
                        [target("sum by (node, source) (rate("
                                "footprint_node_platform_energy_joules_total"
                                f"{{{NODE_SEL}}}[$__rate_interval]))",
                                "{{node}} platform ({{source}})"),
                         target(node_power, "{{node}} cpu+dram+gpu", "B")], "watt"), 12, 9),
            (timeseries("Power by RAPL domain",
                        "Each RAPL zone as read (package, core, uncore, dram, psys). core and "
                        "uncore are inside package; psys, where present, is the node's "
                        "platform meter (panel above).",
                        [target("sum by (node, zone, domain) (rate("
                                f"footprint_rapl_energy_joules_total{{{NODE_SEL}}}"
                                "[$__rate_interval]))", "{{node}} {{zone}} {{domain}}")],
                        "watt"), 24, 8),
        ]),
        ("GPUs", [
            (timeseries("GPU power (NVML reading)",
                        "Each GPU's power at the exporter's last tick, as NVML reports it (a "
                        "1 s average on Hopper).",
                        [target(f"footprint_gpu_power_watts{{{gpu_sel}}}",
                                "{{node}} GPU {{gpu}} {{product}}")], "watt"), 12, 8),
            (timeseries("GPU power from its energy counter",
                        "Each GPU's average power over the rate window, from its energy counter "
                        "(NVML's total energy, or integrated power where the GPU has none).",
                        [target("rate(footprint_gpu_energy_joules_total"
                                f"{{{gpu_sel}}}[$__rate_interval])",
                                "{{node}} GPU {{gpu}} {{product}}")], "watt"), 12, 8),
            (bargauge("GPU energy over the selected range",
                      "Energy each GPU used over the dashboard's time range.",
                      [target("sum by (node, gpu, product) (increase("
                              f"footprint_gpu_energy_joules_total{{{gpu_sel}}}[$__range]))",
                              "{{node}} GPU {{gpu}} {{product}}", instant=True)], "joule"),
             24, 7),
        ]),
        ("Attribution", [
            (timeseries("Unattributed share of node energy",
                        "Per node, the share of energy (cpu + dram + gpu) charged to no "
                        "container. High under light load: idle power nobody requested stays "
                        "unattributed (docs/attribution.md).",
                        [target("sum by (node) (rate(footprint_unattributed_energy_joules_total"
                                f"{{{NODE_SEL}}}[$__rate_interval])) / "
                                f"{node_power}", "{{node}}")], "percentunit", minimum=0,
                        maximum=1), 12, 8),
            (timeseries("Unattributed power by component and mode",
                        "Power charged to no container, by component and mode (dynamic: "
                        "system processes; idle: capacity nobody requested), stacked: the top "
                        "is the selected nodes' unattributed power.",
                        [target("sum by (component, mode) (rate("
                                "footprint_unattributed_energy_joules_total"
                                f"{{{NODE_SEL}}}[$__rate_interval]))",
                                "{{component}} {{mode}}")], "watt", stack=True), 12, 8),
            (timeseries("Attributed power by namespace",
                        "Power charged to containers on the selected nodes, per namespace.",
                        [target("sum by (namespace) (rate("
                                "footprint_container_energy_joules_total"
                                f'{{{NODE_SEL}, namespace=~"$namespace"}}[$__rate_interval]))',
                                "{{namespace}}")], "watt", stack=True), 24, 8),
        ]),
        ("Carbon intensity and PUE", [
            (timeseries("Grid carbon intensity",
                        "The grid intensity in force on each node, gCO2e per kWh, with its grid "
                        "zone and provider. provider=\"default\" means no intensity is configured "
                        "and the world average (475) is in force.",
                        [target(f"footprint_grid_intensity_grams_per_kwh{{{NODE_SEL}}}",
                                "{{node}} {{grid_zone}} ({{provider}})")], "suffix:gCO2e/kWh"),
             12, 8),
            (table("Intensity provider",
                   "Per node, the grid zone and provider of the intensity in force now, and its "
                   "value.",
                   [target("max by (node, grid_zone, provider) ("
                           f"footprint_grid_intensity_grams_per_kwh{{{NODE_SEL}}})",
                           instant=True, table=True)], "suffix:gCO2e/kWh",
                   transformations=merge_table({"Value": "gCO2e/kWh"},
                                               ["node", "grid_zone", "provider", "gCO2e/kWh"])),
             6, 8),
            (stat("Intensity data age",
                  "Time since a live intensity provider (electricitymaps, watttime) last gave a "
                  "value, the oldest node per provider; empty with a static intensity. Over "
                  "2 h fires FootprintGridIntensityStale: an old intensity is still in force.",
                  [target("time() - min by (provider) ("
                          "footprint_grid_intensity_last_update_timestamp_seconds"
                          f'{{{NODE_SEL}, provider=~"electricitymaps|watttime"}})',
                          "{{provider}}")], "s",
                  steps=((3600, "orange"), (7200, "red"))), 6, 4),
            (stat("PUE",
                  "Power usage effectiveness the rule pack applies for the infrastructure "
                  "scope: facility energy / IT energy (1.0 = no overhead).",
                  [target(f"max by (node) (footprint_pue{{{NODE_SEL}}})", "{{node}}")],
                  "none", decimals=2, graph=False), 6, 4),
        ]),
        ("Embodied emissions", [
            (table("Embodied emissions per component",
                   "The manufacture emissions the exporter is configured with, per node, "
                   "component and GPU (footprint_embodied_grams); the rule pack amortises them "
                   "over the lifetime.",
                   [target(f"footprint_embodied_grams{{{NODE_SEL}}}", instant=True, table=True)],
                   "massg", decimals=0,
                   transformations=merge_table({"Value": "Embodied"},
                                               ["node", "component", "gpu", "Embodied"])),
             10, 8),
            (stat("Hardware lifetime",
                  "The lifetime over which embodied emissions are amortised "
                  "(footprint_embodied_lifetime_seconds).",
                  [target(f"max by (node) (footprint_embodied_lifetime_seconds{{{NODE_SEL}}})",
                          "{{node}}")], "s", graph=False), 4, 8),
            (timeseries("Embodied emissions accrued per hour",
                        "Per node, the embodied emissions divided by the lifetime: the grams "
                        "per hour of the hardware's existence, whatever its load.",
                        [target(f"sum by (node) (footprint_embodied_grams{{{NODE_SEL}}}) / on "
                                "(node) max by (node) (footprint_embodied_lifetime_seconds"
                                f"{{{NODE_SEL}}}) * 3600", "{{node}}")], "massg"), 10, 8),
        ]),
        ("Node facts", [
            (table("Nodes",
                   "footprint_node_info: each node's topology zone and region (the node's "
                   "topology.kubernetes.io labels), instance type, CPU model and GPUs.",
                   [target(f"footprint_node_info{{{NODE_SEL}}}", instant=True, table=True)],
                   "none",
                   transformations=merge_table({}, ["node", "topology_zone", "topology_region",
                                                    "instance_type", "cpu_model", "gpu_product",
                                                    "gpu_count"])),
             24, 7),
        ]),
    ]
    return dashboard(
        "footprint-nodes", "Footprint / Nodes and GPUs",
        "Power and energy per node, component, source and GPU; what is left unattributed; grid "
        "intensity, PUE and embodied emissions.",
        [cluster_variable("footprint_node_info"),
         query_variable("node", "Node",
                        f"label_values(footprint_node_info{{{CLUSTER_SEL}}}, node)"),
         query_variable("gpu", "GPU",
                        f"label_values(footprint_gpu_power_watts{{{NODE_SEL}}}, gpu)"),
         query_variable("namespace", "Namespace",
                        f"label_values(footprint_container_info{{{NODE_SEL}}}, namespace)")],
        rows, time_from="now-6h")


# ---------------------------------------------------------------------------------------------
# Footprint / Exporter health


def exporter() -> dashboard_b.Dashboard:
    tick = "footprint_exporter_tick_duration_seconds"
    rows: Rows = [
        ("Status", [
            (stat("Targets up",
                  "Exporter targets Prometheus scraped successfully at its last scrape, of "
                  "all targets in the selected jobs.",
                  [target(f'sum(up{{{CLUSTER_SEL}, job=~"$job"}})', "up"),
                   target(f'count(up{{{CLUSTER_SEL}, job=~"$job"}})', "targets", "B")],
                  "none", decimals=0,
                  graph=False), 6, 5),
            (stat("Sources down",
                  "Inputs whose last read failed (footprint_source_up == 0) on the selected "
                  "nodes. A missing source (no RAPL on the host) is not counted.",
                  [target(f"count(footprint_source_up{{{JOB_NODE_SEL}}} == 0) or vector(0)",
                          "down")], "none", decimals=0, steps=((1, "red"),), graph=False), 6, 5),
            (stat("Footprint alerts firing",
                  "Alerts of the Footprint rule pack firing now (ALERTS{alertname=~\"Footprint.*"
                  "\"}).",
                  [target(f'count(ALERTS{{{CLUSTER_SEL}, alertname=~"Footprint.*", '
                          'alertstate="firing"}) '
                          "or vector(0)", "firing")], "none", decimals=0,
                  steps=((1, "red"),), graph=False), 6, 5),
            (table("Versions",
                   "Exporter versions running, with the number of exporters on each.",
                   [target("count by (version, python_version) (footprint_exporter_build_info"
                           f"{{{JOB_NODE_SEL}}})", instant=True, table=True)], "none",
                   transformations=merge_table({"Value": "exporters"},
                                               ["version", "python_version", "exporters"])),
             6, 5),
            (state_timeline("Sources up",
                            "Per node and source (rapl, estimated, nvml, kubernetes, "
                            "podresources, intensity), whether the last read worked in full.",
                            [target(f"min by (node, source) (footprint_source_up"
                                    f"{{{JOB_NODE_SEL}}})", "{{node}} {{source}}")]), 24, 9),
        ]),
        ("Errors", [
            (timeseries("Errors by source and reason",
                        "Faults per second: failed reads, failed Kubernetes requests, malformed "
                        "pods, containers without an id or cgroup (docs/metrics.md).",
                        [target("sum by (source, reason) (rate(footprint_exporter_errors_total"
                                f"{{{JOB_NODE_SEL}}}[$__rate_interval]))",
                                "{{source}} {{reason}}")], "cps", stack=True), 16, 8),
            (table("Errors over the selected range",
                   "Faults counted over the dashboard's time range, per node, source and "
                   "reason.",
                   [target("sum by (node, source, reason) (increase("
                           f"footprint_exporter_errors_total{{{JOB_NODE_SEL}}}[$__range])) > 0",
                           instant=True, table=True)], "none", decimals=0,
                   transformations=merge_table({"Value": "errors"},
                                               ["node", "source", "reason", "errors"])), 8, 8),
        ]),
        ("Performance", [
            (timeseries("Mean tick duration",
                        "Time one tick takes (read sources, attribute, render): rate of "
                        f"{tick}_sum / rate of {tick}_count.",
                        [target(f"rate({tick}_sum{{{JOB_NODE_SEL}}}[$__rate_interval]) / "
                                f"rate({tick}_count{{{JOB_NODE_SEL}}}[$__rate_interval])",
                                "{{node}}")], "s"), 12, 8),
            (timeseries("Ticks per second",
                        "How often each exporter ticks; a drop means ticks are late.",
                        [target(f"rate({tick}_count{{{JOB_NODE_SEL}}}[$__rate_interval])",
                                "{{node}}")], "hertz"), 12, 8),
            (timeseries("Scrape duration",
                        "How long Prometheus takes to scrape each exporter target "
                        "(scrape_duration_seconds; the scrape serves the last tick's bytes).",
                        [target(f'scrape_duration_seconds{{{CLUSTER_SEL}, job=~"$job"}}',
                                "{{instance}}")], "s"),
             12, 8),
            (timeseries("Resident memory",
                        "The exporter process's resident memory "
                        "(process_resident_memory_bytes).",
                        [target(f"process_resident_memory_bytes{{{JOB_NODE_SEL}}}",
                                "{{node}}")], "bytes"), 6, 8),
            (timeseries("CPU",
                        "The exporter process's CPU use, as a share of one core "
                        "(rate of process_cpu_seconds_total).",
                        [target(f"rate(process_cpu_seconds_total{{{JOB_NODE_SEL}}}"
                                "[$__rate_interval])", "{{node}}")], "percentunit"), 6, 8),
        ]),
        ("Alerts", [
            (table("Footprint alerts",
                   "Alerts of the Footprint rule pack, pending or firing now, with their "
                   "labels.",
                   [target(f'ALERTS{{{CLUSTER_SEL}, alertname=~"Footprint.*"}}', instant=True,
                          table=True)],
                   "none",
                   transformations=[transformation("organize", {
                       "excludeByName": {"Time": True, "Value": True, "__name__": True}})]),
             12, 8),
            (timeseries("Footprint alerts over time",
                        "How many Footprint alerts were pending or firing, by alert name.",
                        [target('count by (alertname, alertstate) '
                                f'(ALERTS{{{CLUSTER_SEL}, alertname=~"Footprint.*"}})',
                                "{{alertname}} {{alertstate}}")], "none", decimals=0), 12, 8),
        ]),
    ]
    return dashboard(
        "footprint-exporter", "Footprint / Exporter health",
        "Whether the Footprint exporters run well: targets and sources up, errors, tick and "
        "scrape times, memory and CPU, Footprint alerts.",
        [cluster_variable("footprint_exporter_build_info"),
         query_variable("job", "Job",
                        f"label_values(footprint_exporter_build_info{{{CLUSTER_SEL}}}, job)"),
         query_variable("node", "Node",
                        f'label_values(footprint_exporter_build_info{{{CLUSTER_SEL}, '
                        'job=~"$job"}, node)')],
        rows, time_from="now-6h")


# ---------------------------------------------------------------------------------------------
# Footprint / Chargeback


CHARGEBACK_KEYS = (("Team", "label_team"), ("Namespace", "namespace"))
"""(text, label) of the keys the `key` variable offers, the default first. The rule pack records
both: `label_team:footprint_...` for the pod label `team` and `namespace:footprint_...`. A chart
key such as cost-center (`label_cost_center:footprint_...`, docs/rules.md "Chargeback keys")
can be typed into the variable (it accepts custom values)."""
KEY_SEL = f'{CLUSTER_SEL}, $key=~"$value"'
"""The recorded per-key series of the selected clusters and values; "All" (`.*`) also matches
the series without the label (pods without a team: label_team="")."""
BUDGET_SEL = f'{BUDGET_CLUSTER_SEL}, $key=~"$value"'
RIEMANN_STEP = 300
"""The step of the month-to-date subqueries, the records' 5 minutes: sum_over_time of the
g/s (W, L/s) record every 5 minutes, x 300 s, as `footprint-exporter report` integrates."""


def key_variable() -> dashboard_b.CustomVariable:
    """`key`: the label charged to, whose records the panels read (`$key:footprint_...`)."""
    options = [dm.VariableOption(text=text, value=value, selected=i == 0)
               for i, (text, value) in enumerate(CHARGEBACK_KEYS)]
    return (dashboard_b.CustomVariable("key").label("Charge to")
            .description("The label emissions are charged to: label_team (the pod label team, "
                         "as the exporter publishes it) or namespace. Another key the chart "
                         "records (label_cost_center, ...) can be typed in.")
            .values(",".join(f"{text} : {value}" for text, value in CHARGEBACK_KEYS))
            .options(options).current(options[0]).multi(False).include_all(False)
            .allow_custom_value(True).hide(dm.VariableHide.DONT_HIDE))


def per_key(expr: str, *, by: str = "$key", scale: str = "") -> str:
    """`expr` summed per key (and `by`'s other labels), the empty value (pods without the
    label) named "unassigned"."""
    return (f"label_replace(sum by ({by}) ({expr}){scale}, "
            '"$key", "unassigned", "$key", "")')


def month_to_date(record: str, selector: str) -> str:
    """The Riemann sum over the dashboard's time range of a per-second record, one series per
    input series (x RIEMANN_STEP outside: grams, joules or litres)."""
    return f"sum_over_time($key:{record}:rate5m{{{selector}}}[$__range:5m])"


def chargeback() -> dashboard_b.Dashboard:
    def co2e_mtd(scope: str) -> str:
        return month_to_date("footprint_co2e_grams", f'{KEY_SEL}, scope="{scope}"')

    energy_mtd = month_to_date("footprint_energy_joules", KEY_SEL)
    water_mtd = month_to_date("footprint_water_liters", KEY_SEL)
    step = f" * {RIEMANN_STEP}"
    kwh = f" * {RIEMANN_STEP} / {JOULES_PER_KWH}"
    total_mtd = per_key(co2e_mtd("total"), scale=step)
    energy_per_key = per_key(energy_mtd, scale=kwh)
    water_per_key = per_key(water_mtd, scale=step)
    everyone = month_to_date("footprint_co2e_grams", f'{CLUSTER_SEL}, scope="total"')
    share = per_key(co2e_mtd("total"), scale=f" / scalar(sum({everyone}))")

    def total(window: str) -> str:
        return (f"sum by ($key) ($key:footprint_co2e_grams:{window}"
                f'{{{KEY_SEL}, scope="total"}})')

    def budget(period: str) -> str:
        return f"sum by ($key) ($key:footprint_co2e_{period}_budget_grams{{{BUDGET_SEL}}})"

    def used(actual: str, period: str) -> str:
        return f"{actual} / on ($key) {budget(period)}"

    dashed = [override("/ budget$/", ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
                       regex=True)]
    unassigned = ("Pods without the label are charged to the empty value, shown as "
                  "\"unassigned\".")
    rows: Rows = [
        ("Month to date (the time range: this month so far)", [
            (stat("CO2e, month to date",
                  "Emissions of the selected teams or namespaces over the dashboard's time "
                  "range (default: this month so far, UTC), every scope: the 5-minute record "
                  "$key:footprint_co2e_grams:rate5m{scope=\"total\"} summed every 5 minutes x "
                  "300 s, as footprint-exporter report integrates it.",
                  [target(f"sum({co2e_mtd('total')}){step}", "CO2e", instant=True)], "massg",
                  decimals=1, graph=False), 6, 4),
            (stat("Energy, month to date",
                  "Energy attributed to the selected teams or namespaces over the time range "
                  "(cpu, dram and gpu, idle and dynamic, before PUE): the Riemann sum of "
                  "$key:footprint_energy_joules:rate5m, in kWh.",
                  [target(f"sum({energy_mtd}){kwh}", "energy", instant=True)], "kwatth",
                  decimals=2, graph=False), 6, 4),
            (stat("Water, month to date",
                  "Water consumed for the selected teams or namespaces over the time range, on "
                  "site (cooling: energy x WUE) plus off site (generating the electricity: "
                  "energy x PUE x the grid's litres per kWh): the Riemann sum of "
                  "$key:footprint_water_liters:rate5m (docs/lifecycle.md, Water).",
                  [target(f"sum({water_mtd}){step}", "water", instant=True)], "litre",
                  decimals=1, graph=False), 6, 4),
            (stat("Emission rate now, per hour",
                  "Current emissions of the selected teams or namespaces, every scope: the "
                  "5-minute record $key:footprint_co2e_grams:rate5m (grams per second) x 3600, "
                  "shown in g, kg or t per hour.",
                  [target(f'sum($key:footprint_co2e_grams:rate5m{{{KEY_SEL}, scope="total"}})'
                          " * 3600", "CO2e per hour")], "massg", decimals=2), 6, 4),
            (bargauge("CO2e per team or namespace, month to date",
                      "Each team's or namespace's emissions over the time range, every scope "
                      "(the Riemann sum of the 5-minute record). " + unassigned,
                      [target(total_mtd, "{{$key}}", instant=True)], "massg", decimals=1), 8, 9),
            (bargauge("Energy per team or namespace, month to date",
                      "Each team's or namespace's energy over the time range, before PUE. "
                      + unassigned,
                      [target(energy_per_key, "{{$key}}", instant=True)], "kwatth",
                      decimals=2), 8, 9),
            (bargauge("Water per team or namespace, month to date",
                      "Each team's or namespace's water over the time range, on site plus off "
                      "site. " + unassigned,
                      [target(water_per_key, "{{$key}}", instant=True)], "litre",
                      decimals=1), 8, 9),
            (table("Chargeback, month to date",
                   "One row per team or namespace, the columns of footprint-exporter report: "
                   "grams CO2e over the time range by scope (operational, infrastructure = the "
                   "PUE overhead, embodied = the hardware's manufacture amortised), their total, "
                   "the energy, the water (on site + off site), and the row's share of the "
                   "selected clusters' total (every team or namespace, selected or not). Each "
                   "is the Riemann sum of the 5-minute record over the time range. "
                   + unassigned,
                   [target(per_key(co2e_mtd("operational"), scale=step), ref="A", instant=True,
                           table=True),
                    target(per_key(co2e_mtd("infrastructure"), scale=step), ref="B",
                           instant=True, table=True),
                    target(per_key(co2e_mtd("embodied"), scale=step), ref="C", instant=True,
                           table=True),
                    target(total_mtd, ref="D", instant=True, table=True),
                    target(energy_per_key, ref="E", instant=True, table=True),
                    target(water_per_key, ref="F", instant=True, table=True),
                    target(share, ref="G", instant=True, table=True)],
                   "massg", decimals=1,
                   transformations=[
                       transformation("merge", {}),
                       transformation("organize", {
                           "excludeByName": {"Time": True},
                           "renameByName": {
                               "label_team": "Team", "namespace": "Namespace",
                               "Value #A": "Operational", "Value #B": "Infrastructure",
                               "Value #C": "Embodied", "Value #D": "Total",
                               "Value #E": "Energy", "Value #F": "Water",
                               "Value #G": "Share of total"},
                           "indexByName": {"label_team": 0, "namespace": 0, "Value #A": 1,
                                           "Value #B": 2, "Value #C": 3, "Value #D": 4,
                                           "Value #E": 5, "Value #F": 6, "Value #G": 7},
                       }),
                   ],
                   footer=("sum",),
                   overrides=[override("Energy", ("unit", "kwatth"), ("decimals", 2)),
                              override("Water", ("unit", "litre")),
                              override("Share of total", ("unit", "percentunit"))]), 24, 10),
        ]),
        ("Last 24 hours against the daily budget", [
            (bargauge("Daily budget used",
                      "Each team's or namespace's CO2e over the last 24 hours, every scope "
                      "($key:footprint_co2e_grams:increase1d), as a share of its daily budget "
                      "($key:footprint_co2e_daily_budget_grams, from the chart's "
                      "prometheusRule.chargeback values). Over 100% fires "
                      "FootprintTeamDailyEmissionsOverBudget or "
                      "FootprintNamespaceDailyEmissionsOverBudget. Those without a budget are "
                      "not shown.",
                      [target(used(total("increase1d"), "daily"), "{{$key}}", instant=True)],
                      "percentunit", maximum=1.5, steps=((0.8, "orange"), (1, "red"))), 12, 9),
            (timeseries("Daily CO2e against budget",
                        "Rolling 24-hour CO2e, every scope (solid), and the daily budget "
                        "(dashed), for each team or namespace that has a budget.",
                        [target(f"{total('increase1d')} and on ($key) {budget('daily')}",
                                "{{$key}} actual"),
                         target(budget("daily"), "{{$key}} budget", "B")],
                        "massg", overrides=dashed), 12, 9),
        ]),
        ("30 days and the month against the monthly budget", [
            (bargauge("Monthly budget used, 30 days",
                      "Each team's or namespace's CO2e over the 30 whole UTC days ending at the "
                      "last midnight ($key:footprint_co2e_grams:increase30d; it changes once a "
                      "day) as a share of its monthly budget "
                      "($key:footprint_co2e_monthly_budget_grams). Over 100% fires "
                      "FootprintTeamMonthlyEmissionsOverBudget or "
                      "FootprintNamespaceMonthlyEmissionsOverBudget.",
                      [target(used(total("increase30d"), "monthly"), "{{$key}}", instant=True)],
                      "percentunit", maximum=1.5, steps=((0.8, "orange"), (1, "red"))), 6, 9),
            (bargauge("Monthly budget used, month to date",
                      "Each team's or namespace's CO2e over the time range (default: this month "
                      "so far), every scope, as a share of its monthly budget: how much of the "
                      "month's budget is spent. The budget is for 30 days; no alert reads this.",
                      [target(used(f"sum by ($key) ({co2e_mtd('total')}){step}", "monthly"),
                              "{{$key}}", instant=True)],
                      "percentunit", maximum=1.5, steps=((0.8, "orange"), (1, "red"))), 6, 9),
            (timeseries("30-day CO2e against budget",
                        "CO2e over the 30 whole UTC days ending at the last midnight, every "
                        "scope (solid; a step each midnight), and the monthly budget (dashed), "
                        "for each team or namespace that has a budget.",
                        [target(f"{total('increase30d')} and on ($key) {budget('monthly')}",
                                "{{$key}} actual"),
                         target(budget("monthly"), "{{$key}} budget", "B")],
                        "massg", overrides=dashed), 12, 9),
        ]),
        ("Over time", [
            (timeseries("Emission rate per team or namespace, per hour",
                        "Each team's or namespace's emissions, every scope: the 5-minute record "
                        "$key:footprint_co2e_grams:rate5m (grams per second) x 3600, stacked "
                        "(shown in g, kg or t per hour). " + unassigned,
                        [target(per_key(f'$key:footprint_co2e_grams:rate5m{{{KEY_SEL}, '
                                        'scope="total"}', scale=" * 3600"), "{{$key}}")],
                        "massg", stack=True), 12, 8),
            (timeseries("Power per team or namespace",
                        "Power drawn by each team's or namespace's containers "
                        "($key:footprint_energy_joules:rate5m: joules per second = watts), cpu "
                        "+ dram + gpu, before PUE, stacked. " + unassigned,
                        [target(per_key(f"$key:footprint_energy_joules:rate5m{{{KEY_SEL}}}"),
                                "{{$key}}")], "watt", stack=True), 12, 8),
            (timeseries("Daily CO2e by scope",
                        "Rolling 24-hour emissions per team or namespace, stacked by scope: "
                        "operational, infrastructure (the PUE overhead) and embodied "
                        "($key:footprint_co2e_grams:increase1d). Each bar is the 24 hours ending "
                        "at that time.",
                        [target(per_key(f"$key:footprint_co2e_grams:increase1d{{{KEY_SEL}, "
                                        'scope!="total"}', by="$key, scope"),
                                "{{$key}} {{scope}}")],
                        "massg", stack=True, bars=True, interval="1h"), 24, 9),
        ]),
    ]
    return dashboard(
        "footprint-chargeback", "Footprint / Chargeback",
        "Who pays for what: CO2e (every scope), energy and water per team or namespace, month "
        "to date, against daily and monthly budgets. Needs the rule pack's chargeback groups "
        "(rules/footprint.rules.yaml) and, for the budgets, the chargeback budgets group.",
        [cluster_variable("namespace:footprint_co2e_grams:rate5m"), key_variable(),
         query_variable("value", "Team or namespace",
                        f"label_values($key:footprint_co2e_grams:rate5m{{{CLUSTER_SEL}}}, $key)")],
        rows, time_from="now/M", timezone="utc")


DASHBOARDS = {
    "footprint-models.json": models,
    "footprint-nodes.json": nodes,
    "footprint-exporter.json": exporter,
    "footprint-chargeback.json": chargeback,
}


INTERVAL_ONLY = ("auto", "auto_count", "auto_min")


def postprocess(board: dict[str, Any]) -> dict[str, Any]:
    """The steps between the SDK's JSON and the committed files:

    1. `id` is null: a provisioned dashboard gets its id from Grafana (the SDK writes none).
    2. Tables: the SDK (Grafana 11.6) always writes `options.footer`; Grafana 12 reads the
       footer from `fieldConfig.defaults.custom.footer` ({"reducers": [...]}) and its schema has
       no `options.footer`: the reducers move there and `options.footer` goes.
    3. Variables: the SDK writes the interval variable's `auto`, `auto_count` and `auto_min`
       on every variable; Grafana's schema has them on no query or datasource variable.
    """
    board["id"] = None
    for variable in board.get("templating", {}).get("list", []):
        for key in INTERVAL_ONLY:
            variable.pop(key, None)
    for panel in board.get("panels", []):
        if panel.get("type") != "table":
            continue
        footer = panel.get("options", {}).pop("footer", None) or {}
        if footer.get("show") and footer.get("reducer"):
            defaults = panel.setdefault("fieldConfig", {}).setdefault("defaults", {})
            defaults.setdefault("custom", {})["footer"] = {"reducers": footer["reducer"]}
    return board


def render(board: dashboard_b.Dashboard) -> str:
    """The SDK's JSON (its JSONEncoder), post-processed, with sorted keys."""
    raw: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return json.dumps(postprocess(raw), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in DASHBOARDS.items():
        path = out / name
        path.write_text(render(build()), encoding="utf-8")
        written.append(path)
    return written


def stale(out: Path) -> list[str]:
    """The files in `out` that differ from what this script writes, are missing, or are
    `footprint-*.json` files it does not write."""
    wrong = [name for name, build in DASHBOARDS.items()
             if not (out / name).is_file()
             or (out / name).read_text(encoding="utf-8") != render(build())]
    extra = [p.name for p in sorted(out.glob("footprint-*.json")) if p.name not in DASHBOARDS]
    return wrong + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write the JSON files to (default: this script's)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file in the folder is not what this "
                             "script writes (stale, missing, or one it does not write)")
    args = parser.parse_args(argv)
    if args.check:
        wrong = stale(args.out)
        for name in wrong:
            print(f"{args.out / name}: stale, missing or unknown: run python "
                  "dashboards/generate.py", file=sys.stderr)
        return 1 if wrong else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
