"""Settings: the YAML config file (`--config.file`) and the command-line flags, validated once.

Each setting, its default and its rules are written here once, as a field of a frozen
dataclass (`exporter.schema.setting`); `exporter.schema.parse_section` validates a document
against them. Code that needs a default takes it from here: the live providers and
FallbackChain (exporter/intensity/) from `CarbonSettings`, the kubelet socket from
`KubernetesSettings`. scripts/gen_values_schema.py writes the chart's `config` schema from the
same fields (docs/configuration.md, "Defaults and their sources").
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.carbon import MAX_GRAMS_PER_KWH
from exporter.models import (
    DEFAULT_RULES,
    PHASES,
    REQUIRED_FIELDS,
    RULE_FIELDS,
    SOURCES,
    ModelRule,
    parse_rules,
)
from exporter.podlabels import (
    ALLOWLIST_JSON_SCHEMA,
    CHARGEBACK_JSON_SCHEMA,
    parse_allowlist,
    parse_chargeback_labels,
)
from exporter.schema import ConfigError as ConfigError
from exporter.schema import (
    check_keys,
    expect_list,
    expect_mapping,
    number,
    parse_section,
    section,
    setting,
)
from exporter.schema import describe_secret as describe_secret
from exporter.schema import read_yaml as read_yaml

WORLD_AVERAGE_GRAMS_PER_KWH = 475.0
"""World-average grid intensity in gCO2e/kWh: CodeCarbon's default (docs/configuration.md)."""

COMPONENTS = ("cpu", "dram", "gpu", "platform")
"""What a source can cover; platform overlaps cpu and dram and is published apart."""
ATTRIBUTED = ("cpu", "dram", "gpu")
"""The components split between containers (and summed as the node's energy)."""

MAX_EMBODIED_GRAMS = 1e9
"""The most grams of embodied emissions one server or GPU may be given (1,000 t)."""

OVERRIDE_KEYS = ("node_labels", "server_grams", "gpu_grams")
"""The keys of one `embodied.overrides` entry."""


@dataclass(frozen=True)
class ElectricityMapsSettings:
    """Electricity Maps' latest carbon intensity (lifecycle, average) for `carbon.zone`."""

    base_url: str = setting("https://api.electricitymap.org", doc="API base URL")
    token_file: str = setting("", secret=True,
                              doc="file holding the auth-token (a mounted Secret)")
    token_env: str = setting("", secret=True, doc="or: environment variable holding it")
    # 15 minutes: the data is hourly, and the free tier's request quota is small.
    refresh_seconds: float = setting(900.0, minimum=10.0, maximum=86400.0,
                                     doc="how often to fetch")
    timeout_seconds: float = setting(10.0, minimum=0.5, maximum=120.0, doc="per request")


@dataclass(frozen=True)
class WattTimeSettings:
    """WattTime v3's marginal (MOER) intensity for a region."""

    base_url: str = setting("https://api.watttime.org", doc="API base URL")
    region: str = setting("", doc="WattTime region, e.g. CAISO_NORTH")
    username: str = setting("", doc="WattTime user name")
    password_file: str = setting("", secret=True, doc="file holding the password")
    password_env: str = setting("", secret=True, doc="or: environment variable")
    # 5 minutes: WattTime publishes a new MOER every 5 minutes.
    refresh_seconds: float = setting(300.0, minimum=10.0, maximum=86400.0,
                                     doc="how often to fetch")
    timeout_seconds: float = setting(10.0, minimum=0.5, maximum=120.0, doc="per request")


@dataclass(frozen=True)
class CarbonSettings:
    """Grid carbon intensity in force for this node (docs/carbon.md)."""

    provider: str = setting("static", choices=("static", "electricitymaps", "watttime"),
                            doc="live provider, or static only")
    zone: str = setting("", doc="grid zone; default: from the node's region")
    intensity_grams_per_kwh: float | None = setting(
        None, minimum=0.0, maximum=MAX_GRAMS_PER_KWH,
        doc="static intensity in gCO2e/kWh; unset: the node's region's default, else the "
            "world average 475")
    # 2 hours: Electricity Maps' data is hourly.
    max_age_seconds: float = setting(
        7200.0, minimum=5400.0, maximum=7 * 86400.0,
        doc="a live value older than this falls back to static; hourly values are up to an "
            "hour old plus the refresh period when fetched, hence at least 1.5 h")
    electricitymaps: ElectricityMapsSettings = field(default_factory=ElectricityMapsSettings)
    watttime: WattTimeSettings = field(default_factory=WattTimeSettings)


@dataclass(frozen=True)
class AttributionSettings:
    """How node energy is split into idle and dynamic parts."""

    idle_watts: Mapping[str, float] = setting(
        default_factory=dict, keys=ATTRIBUTED, minimum=0.0,
        doc="fixed idle baseline per component; components left out learn theirs")
    idle_percentile: float = setting(
        5.0, minimum=0.0, maximum=100.0,
        doc="percentile of observed power taken as the learned idle baseline")
    idle_window_seconds: float = setting(
        3600.0, minimum=1.0, maximum=7 * 86400.0,
        doc="how much power history the learned baseline looks at")
    idle_policy: str = setting(
        "requests", choices=("requests", "none"),
        doc="requests: idle energy shared by CPU requests; none: kept unattributed")


@dataclass(frozen=True)
class KubernetesSettings:
    """The pod watch and the life of a container's series."""

    kubeconfig: str = setting(
        "", doc="kubeconfig path outside a cluster; default KUBECONFIG, then ~/.kube/config")
    grace_period_seconds: float = setting(
        120.0, minimum=0.0, maximum=86400.0,
        doc="how long a deleted container's series stay (two scrapes at 60 s)")
    watch_timeout_seconds: float = setting(
        300.0, minimum=5.0, maximum=3600.0,
        doc="server-side watch timeout; each watch asks for 1-2x this, as client-go does")
    pod_resources_socket: str = setting(
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        doc="the kubelet's pod-resources socket (mount its directory)")
    gpu_resources: tuple[str, ...] = setting(
        ("nvidia.com/gpu", "nvidia.com/mig-"),
        doc="resource names (or prefixes) whose devices are GPUs or MIG slices")
    dra_drivers: tuple[str, ...] = setting(
        ("gpu.nvidia.com",),
        doc="DRA drivers whose claimed devices are GPUs or MIG slices, resolved to NVML UUIDs "
            "through this node's ResourceSlices (resource.k8s.io/v1); [] turns DRA off")
    backoff_max_seconds: float = setting(
        30.0, minimum=0.1, maximum=600.0,
        doc="longest wait between retries while the API fails (from 0.5 s, doubling, jittered)")
    pod_label_allowlist: tuple[str, ...] = setting(
        (), parse=parse_allowlist, json_schema=ALLOWLIST_JSON_SCHEMA,
        doc="pod label keys (team) or globs of them (cost-*) published as label_<key> on "
            "each container's info series, named as kube-state-metrics names them; values "
            "cut to 128 bytes (docs/chargeback.md)")
    chargeback_labels: tuple[str, ...] = setting(
        (), parse=parse_chargeback_labels, json_schema=CHARGEBACK_JSON_SCHEMA,
        doc="pod label keys (team), exactly, whose values each get the node's energy, CO2e and "
            "allocation summed (footprint_chargeback_*, what the rule pack's team records "
            "read); published on the info series too (docs/chargeback.md)")


RULES_JSON_SCHEMA: Mapping[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": list(REQUIRED_FIELDS),
        "properties": {name: ({"type": "string", "enum": list(SOURCES)} if name == "source"
                              else {"type": "string", "enum": list(PHASES)} if name == "phase"
                              else {"type": "string"})
                       for name in RULE_FIELDS},
    },
}
"""What `exporter.models.parse_rules` accepts, for the chart's schema."""


@dataclass(frozen=True)
class ModelSettings:
    """How pods are matched to models (docs/models.md)."""

    rules: tuple[ModelRule, ...] = setting(
        (), parse=lambda v, k: parse_rules(v, key=k), json_schema=RULES_JSON_SCHEMA,
        doc="your own rules, tried before the defaults")
    default_rules: bool = setting(True, doc="also try the built-in rules")

    @property
    def effective_rules(self) -> tuple[ModelRule, ...]:
        return self.rules + (DEFAULT_RULES if self.default_rules else ())


def _grams(value: object, key: str) -> float:
    return number(value, key, minimum=0.0, maximum=MAX_EMBODIED_GRAMS)


def _overrides(value: object, key: str) -> tuple[Mapping[str, Any], ...]:
    out = []
    for i, item in enumerate(expect_list(value, key, expected="a list of overrides")):
        where = f"{key}[{i}]"
        check_keys(expect_mapping(item, where), where, OVERRIDE_KEYS)
        labels = item.get("node_labels")
        if not isinstance(labels, Mapping) or not labels or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ConfigError(f"{where}.node_labels: expected a mapping of label to value")
        out.append({"node_labels": dict(labels), **{
            k: _grams(item[k], f"{where}.{k}") for k in OVERRIDE_KEYS[1:] if k in item}})
    return tuple(out)


_GRAMS_JSON_SCHEMA = {"type": "number", "minimum": 0, "maximum": int(MAX_EMBODIED_GRAMS)}

OVERRIDES_JSON_SCHEMA: Mapping[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["node_labels"],
        "properties": {
            "node_labels": {"type": "object", "minProperties": 1,
                            "additionalProperties": {"type": "string"}},
            **{k: _GRAMS_JSON_SCHEMA for k in OVERRIDE_KEYS[1:]},
        },
    },
}
"""What `embodied.overrides` accepts, for the chart's schema."""


@dataclass(frozen=True)
class EmbodiedSettings:
    """Manufacturing emissions of the node's hardware (docs/lifecycle.md)."""

    server_grams: float = setting(
        2_500_000.0, minimum=0.0, maximum=MAX_EMBODIED_GRAMS,
        doc="one server without GPUs: BLOOM's ~2,500 kgCO2eq")
    gpu_grams: float = setting(
        150_000.0, minimum=0.0, maximum=MAX_EMBODIED_GRAMS,
        doc="one GPU whose product has no entry below: BLOOM and CCF's 150 kgCO2eq")
    gpu_grams_by_product: Mapping[str, float] = setting(
        default_factory=lambda: types.MappingProxyType({"A100": 318_000.0}),
        minimum=0.0, maximum=MAX_EMBODIED_GRAMS, expected="a mapping of GPU product to grams",
        doc="grams per GPU by a substring of its product name")
    lifetime_years: float = setting(6.0, minimum=0.1, maximum=50.0,
                                    doc="service life (BLOOM: 6 years)")
    usage_ratio: float = setting(0.85, minimum=0.01, maximum=1.0,
                                 doc="share of that life in use (BLOOM: 85%)")
    overrides: tuple[Mapping[str, Any], ...] = setting(
        (), parse=_overrides, json_schema=OVERRIDES_JSON_SCHEMA,
        doc="server_grams / gpu_grams for nodes with these labels")


@dataclass(frozen=True)
class PueSettings:
    """Power usage effectiveness of the data centre around the node."""

    value: float | None = setting(None, minimum=1.0, maximum=5.0,
                                  doc="this data centre's PUE; unset: by cloud, else default")
    by_zone: Mapping[str, float] = setting(
        default_factory=dict, minimum=1.0, maximum=5.0, expected="a mapping of zone to PUE",
        doc="PUE per grid zone")
    default: float = setting(1.58, minimum=1.0, maximum=5.0,
                             doc="unknown data centre: Uptime Institute's 2023 global average")


MAX_LITERS_PER_KWH = 100.0
"""The most litres per kWh a WUE or a grid's water intensity may be given."""


@dataclass(frozen=True)
class WaterSettings:
    """Water consumed on site (cooling: WUE) and off site (generating the electricity), in
    litres per kWh (docs/lifecycle.md, "Water")."""

    wue_liters_per_kwh: float | None = setting(
        None, minimum=0.0, maximum=MAX_LITERS_PER_KWH,
        doc="this data centre's on-site WUE, litres per kWh of IT energy; unset: by zone, "
            "by cloud, else wue_default")
    wue_by_zone: Mapping[str, float] = setting(
        default_factory=dict, minimum=0.0, maximum=MAX_LITERS_PER_KWH,
        expected="a mapping of zone to litres per kWh", doc="on-site WUE per grid zone")
    wue_default: float = setting(
        1.8, minimum=0.0, maximum=MAX_LITERS_PER_KWH,
        doc="unknown data centre: LBNL's U.S. average (Shehabi et al. 2016), 1.8 L/kWh")
    grid_liters_per_kwh: float | None = setting(
        None, minimum=0.0, maximum=MAX_LITERS_PER_KWH,
        doc="water consumed generating a kWh of this grid's electricity; unset: by zone, "
            "else grid_default")
    grid_by_zone: Mapping[str, float] = setting(
        default_factory=dict, minimum=0.0, maximum=MAX_LITERS_PER_KWH,
        expected="a mapping of zone to litres per kWh",
        doc="the grid's water intensity per grid zone")
    grid_default: float = setting(
        7.6, minimum=0.0, maximum=MAX_LITERS_PER_KWH,
        doc="unknown grid: LBNL's U.S. average for generation (Shehabi et al. 2016), "
            "7.6 L/kWh")


@dataclass(frozen=True)
class FileConfig:
    """Everything `--config.file` may set."""

    carbon: CarbonSettings = field(default_factory=CarbonSettings)
    sources: Mapping[str, Any] = field(default_factory=lambda: source_sections({}),
                                       metadata={"sections": True})
    """Each energy source's own section (`estimate:`), by its flag: the sections its spec
    declares (exporter.sources.registry.SECTIONS), at this place among the keys."""
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    embodied: EmbodiedSettings = field(default_factory=EmbodiedSettings)
    pue: PueSettings = field(default_factory=PueSettings)
    water: WaterSettings = field(default_factory=WaterSettings)


@dataclass(frozen=True)
class Settings:
    """The exporter's whole configuration after flags and file are merged."""

    listen_address: str
    telemetry_path: str
    sysfs: Path
    procfs: Path
    interval_seconds: float
    collectors: Mapping[str, bool]
    node_name: str
    log_level: str
    config_file: Path | None
    file: FileConfig
    web_config_file: Path | None = None
    log_format: str = "logfmt"
    max_connections: int = 256
    """`--web.max-connections` (exporter.server.ServerLimits)."""
    read_header_timeout_seconds: float = 10.0
    """`--web.read-header-timeout`."""


def file_keys() -> tuple[str, ...]:
    """The top-level keys of `--config.file`, in order, the sources' sections in place."""
    from exporter.sources.registry import SECTIONS

    keys: list[str] = []
    for f in dataclasses.fields(FileConfig):
        keys.extend(SECTIONS if f.metadata.get("sections") else (f.name,))
    return tuple(keys)


def source_sections(data: Mapping[Any, Any]) -> Mapping[str, Any]:
    """Each source's settings from its section of `data` (every default where absent)."""
    from exporter.sources.registry import SECTIONS

    return types.MappingProxyType({name: parse_section(cls, data.get(name), name)
                                   for name, cls in SECTIONS.items()})


def parse_file_config(data: object) -> FileConfig:
    """Validate a parsed YAML document; raise ConfigError naming the first bad key."""
    document = section(data, "", file_keys())
    sources = source_sections(document)
    config = dataclasses.replace(
        parse_section(FileConfig, {k: v for k, v in document.items() if k not in sources}),
        sources=sources)
    carbon = config.carbon
    if carbon.provider == "electricitymaps" and not (
            carbon.electricitymaps.token_file or carbon.electricitymaps.token_env):
        raise ConfigError("carbon.electricitymaps.token_file: expected the path of the "
                          "auth-token (or carbon.electricitymaps.token_env) with provider "
                          "electricitymaps")
    if carbon.provider == "electricitymaps" and not carbon.zone:
        raise ConfigError("carbon.zone: expected an Electricity Maps zone (e.g. FR, "
                          "US-CAL-CISO) with provider electricitymaps")
    wt = carbon.watttime
    if carbon.provider == "watttime" and not (wt.region and wt.username and (
            wt.password_file or wt.password_env)):
        raise ConfigError("carbon.watttime: expected region, username and password_file (or "
                          "password_env) with provider watttime")
    return config


def load_file_config(path: Path | None) -> FileConfig:
    """Read `--config.file`; no file means every default."""
    if path is None:
        return FileConfig()
    data = read_yaml(path, "--config.file")
    try:
        return parse_file_config(data)
    except ConfigError as exc:
        raise ConfigError(f"--config.file {path}: {exc}") from None
