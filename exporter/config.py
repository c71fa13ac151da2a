"""Settings: the YAML config file (`--config.file`) and the command-line flags, validated once."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter.carbon import MAX_GRAMS_PER_KWH

WORLD_AVERAGE_GRAMS_PER_KWH = 475.0
"""World-average grid intensity in gCO2e/kWh: CodeCarbon's default (docs/configuration.md)."""

COMPONENTS = ("cpu", "dram", "gpu", "platform")


class ConfigError(Exception):
    """A setting is wrong; the message names the key and what was expected."""


def _num(*, default: float, minimum: float | None = None, maximum: float | None = None,
         doc: str) -> Any:
    return field(default=default, metadata={"min": minimum, "max": maximum, "doc": doc})


@dataclass(frozen=True)
class ElectricityMapsSettings:
    """Electricity Maps' latest carbon intensity (lifecycle, average) for `carbon.zone`."""

    base_url: str = field(default="https://api.electricitymap.org",
                          metadata={"doc": "API base URL"})
    token_file: str = field(default="", metadata={"doc": "file holding the auth-token "
                                                          "(a mounted Secret)", "secret": True})
    token_env: str = field(default="", metadata={"doc": "or: environment variable holding it",
                                                 "secret": True})
    refresh_seconds: float = _num(default=900.0, minimum=10.0, maximum=86400.0,
                                  doc="how often to fetch")
    timeout_seconds: float = _num(default=10.0, minimum=0.5, maximum=120.0,
                                  doc="per request")


@dataclass(frozen=True)
class WattTimeSettings:
    """WattTime v3's marginal (MOER) intensity for a region."""

    base_url: str = field(default="https://api.watttime.org", metadata={"doc": "API base URL"})
    region: str = field(default="", metadata={"doc": "WattTime region, e.g. CAISO_NORTH"})
    username: str = field(default="", metadata={"doc": "WattTime user name"})
    password_file: str = field(default="", metadata={"doc": "file holding the password",
                                                     "secret": True})
    password_env: str = field(default="", metadata={"doc": "or: environment variable",
                                                    "secret": True})
    refresh_seconds: float = _num(default=300.0, minimum=10.0, maximum=86400.0,
                                  doc="how often to fetch")
    timeout_seconds: float = _num(default=10.0, minimum=0.5, maximum=120.0,
                                  doc="per request")


@dataclass(frozen=True)
class CarbonSettings:
    """Grid carbon intensity in force for this node (docs/carbon.md)."""

    provider: str = field(default="static", metadata={
        "choices": ("static", "electricitymaps", "watttime"),
        "doc": "live provider, or static only"})
    zone: str = field(default="", metadata={"doc": "grid zone; default: from the node's region"})
    intensity_grams_per_kwh: float | None = field(
        default=None,
        metadata={"min": 0.0, "max": MAX_GRAMS_PER_KWH,
                  "doc": "static intensity in gCO2e/kWh; unset: the node's region's default, "
                         "else the world average 475"})
    max_age_seconds: float = _num(default=7200.0, minimum=5400.0, maximum=7 * 86400.0,
                                  doc="a live value older than this falls back to static; "
                                      "hourly values are up to an hour old plus the refresh "
                                      "period when fetched, hence at least 1.5 h")
    electricitymaps: ElectricityMapsSettings = field(default_factory=ElectricityMapsSettings)
    watttime: WattTimeSettings = field(default_factory=WattTimeSettings)


@dataclass(frozen=True)
class EstimateSettings:
    """Usage-based power model where no sensor exists (Cloud Carbon Footprint's coefficients)."""

    cpu_idle_watts_per_vcpu: float = _num(
        default=0.74, minimum=0.0, maximum=100.0,
        doc="watts per vCPU at 0% utilisation (CCF, AWS average)")
    cpu_max_watts_per_vcpu: float = _num(
        default=3.5, minimum=0.0, maximum=100.0,
        doc="watts per vCPU at 100% utilisation (CCF, AWS average)")
    dram_watts_per_gb: float = _num(
        default=0.392, minimum=0.0, maximum=10.0,
        doc="watts per GB of MemTotal (CCF: 0.000392 kWh per GB-hour)")


@dataclass(frozen=True)
class AttributionSettings:
    """How node energy is split into idle and dynamic parts."""

    idle_watts: Mapping[str, float] = field(
        default_factory=dict,
        metadata={"keys": COMPONENTS, "min": 0.0,
                  "doc": "fixed idle baseline per component; components left out learn theirs"})
    idle_percentile: float = _num(
        default=5.0, minimum=0.0, maximum=100.0,
        doc="percentile of observed power taken as the learned idle baseline")
    idle_window_seconds: float = _num(
        default=3600.0, minimum=1.0, maximum=7 * 86400.0,
        doc="how much power history the learned baseline looks at")
    idle_policy: str = field(
        default="requests",
        metadata={"choices": ("requests", "none"),
                  "doc": "requests: idle energy shared by CPU requests; none: kept unattributed"})


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a list of non-empty strings, got {_describe(value)}")
    return tuple(value)


def _parse_rules(value: object, key: str) -> Any:
    from exporter.models import parse_rules  # models imports ConfigError from here

    return parse_rules(value, key=key)


@dataclass(frozen=True)
class KubernetesSettings:
    """The pod watch and the life of a container's series."""

    kubeconfig: str = field(
        default="", metadata={"doc": "kubeconfig path outside a cluster; default KUBECONFIG, "
                                     "then ~/.kube/config"})
    grace_period_seconds: float = _num(
        default=120.0, minimum=0.0, maximum=86400.0,
        doc="how long a deleted container's series stay (two scrapes at 60 s)")
    watch_timeout_seconds: float = _num(
        default=300.0, minimum=5.0, maximum=3600.0,
        doc="server-side watch timeout; each watch asks for 1-2x this, as client-go does")
    pod_resources_socket: str = field(
        default="/var/lib/kubelet/pod-resources/kubelet.sock",
        metadata={"doc": "the kubelet's pod-resources socket (mount its directory)"})
    gpu_resources: tuple[str, ...] = field(
        default=("nvidia.com/gpu", "nvidia.com/mig-"),
        metadata={"parse": lambda v, k: _strings(v, k),
                  "doc": "resource names (or prefixes) whose devices are GPUs or MIG slices"})
    backoff_max_seconds: float = _num(
        default=30.0, minimum=0.1, maximum=600.0,
        doc="longest wait between retries while the API fails (from 0.5 s, doubling, jittered)")


@dataclass(frozen=True)
class ModelSettings:
    """How pods are matched to models (docs/models.md)."""

    rules: tuple[Any, ...] = field(
        default=(), metadata={"parse": _parse_rules,
                              "doc": "your own rules, tried before the defaults"})
    default_rules: bool = field(default=True, metadata={"doc": "also try the built-in rules"})

    @property
    def effective_rules(self) -> tuple[Any, ...]:
        from exporter.models import DEFAULT_RULES

        return self.rules + (DEFAULT_RULES if self.default_rules else ())


def _overrides(value: object, key: str) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of overrides, got {_describe(value)}")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(item)}")
        for k in item:
            if k not in ("node_labels", "server_grams", "gpu_grams"):
                raise ConfigError(f"{where}.{k}: unknown key (expected one of: node_labels, "
                                  "server_grams, gpu_grams)")
        labels = item.get("node_labels")
        if not isinstance(labels, Mapping) or not labels or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ConfigError(f"{where}.node_labels: expected a mapping of label to value")
        out.append({"node_labels": dict(labels), **{
            k: _number(item[k], f"{where}.{k}", {"min": 0.0, "max": 1e9})
            for k in ("server_grams", "gpu_grams") if k in item}})
    return tuple(out)


def _grams_by_product(value: object, key: str) -> Mapping[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of GPU product to grams, "
                          f"got {_describe(value)}")
    return types.MappingProxyType({str(k): _number(v, f"{key}.{k}", {"min": 0.0, "max": 1e9})
                                   for k, v in value.items()})


@dataclass(frozen=True)
class EmbodiedSettings:
    """Manufacturing emissions of the node's hardware (docs/lifecycle.md)."""

    server_grams: float = _num(
        default=2_500_000.0, minimum=0.0, maximum=1e9,
        doc="one server without GPUs: BLOOM's ~2,500 kgCO2eq")
    gpu_grams: float = _num(
        default=150_000.0, minimum=0.0, maximum=1e9,
        doc="one GPU whose product has no entry below: BLOOM and CCF's 150 kgCO2eq")
    gpu_grams_by_product: Mapping[str, float] = field(
        default_factory=lambda: types.MappingProxyType({"A100": 318_000.0}),
        metadata={"parse": _grams_by_product,
                  "doc": "grams per GPU by a substring of its product name"})
    lifetime_years: float = _num(default=6.0, minimum=0.1, maximum=50.0,
                                 doc="service life (BLOOM: 6 years)")
    usage_ratio: float = _num(default=0.85, minimum=0.01, maximum=1.0,
                              doc="share of that life in use (BLOOM: 85%)")
    overrides: tuple[Mapping[str, Any], ...] = field(
        default=(), metadata={"parse": _overrides,
                              "doc": "server_grams / gpu_grams for nodes with these labels"})


@dataclass(frozen=True)
class PueSettings:
    """Power usage effectiveness of the data centre around the node."""

    value: float | None = field(
        default=None, metadata={"min": 1.0, "max": 5.0,
                                "doc": "this data centre's PUE; unset: by cloud, else default"})
    by_zone: Mapping[str, float] = field(
        default_factory=dict, metadata={"parse": lambda v, k: _pue_map(v, k),
                                        "doc": "PUE per grid zone"})
    default: float = _num(default=1.58, minimum=1.0, maximum=5.0,
                          doc="unknown data centre: Uptime Institute's 2023 global average")


def _pue_map(value: object, key: str) -> Mapping[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of zone to PUE, got {_describe(value)}")
    return types.MappingProxyType({str(k): _number(v, f"{key}.{k}", {"min": 1.0, "max": 5.0})
                                   for k, v in value.items()})


@dataclass(frozen=True)
class FileConfig:
    """Everything `--config.file` may set."""

    carbon: CarbonSettings = field(default_factory=CarbonSettings)
    estimate: EstimateSettings = field(default_factory=EstimateSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    embodied: EmbodiedSettings = field(default_factory=EmbodiedSettings)
    pue: PueSettings = field(default_factory=PueSettings)


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
    max_connections: int = 256
    """`--web.max-connections` (exporter.server.ServerLimits)."""
    read_header_timeout_seconds: float = 10.0
    """`--web.read-header-timeout`."""


def _describe(value: object) -> str:
    return repr(value) if not isinstance(value, Mapping | list) else type(value).__name__


def describe_secret(value: object) -> str:
    """What a value that may be a secret (or a secret pasted in the wrong place) is, without it:
    its type, and a string's length."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return type(value).__name__


def _number(value: object, key: str, meta: Mapping[str, Any]) -> float:
    lo, hi = meta.get("min"), meta.get("max")
    expected = "a number" + (f" >= {lo:g}" if lo is not None else "") + (
        f" and <= {hi:g}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected {expected}, got {_describe(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    return float(value)


def _convert(value: object, hint: Any, key: str, meta: Mapping[str, Any]) -> Any:
    if "parse" in meta:
        return meta["parse"](value, key)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        if value is None:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _convert(value, inner, key, meta)
    if hint is float:
        return _number(value, key, meta)
    if hint is str:
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, "
                              f"got {_describe(value)}")
        if not isinstance(value, str):
            shown = describe_secret(value) if meta.get("secret") else _describe(value)
            raise ConfigError(f"{key}: expected a string, got {shown}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        allowed = meta.get("keys", ())
        out = {}
        for k, v in value.items():
            if k not in allowed:
                raise ConfigError(
                    f"{key}.{k}: unknown key (expected one of: {', '.join(allowed)})")
            out[k] = _number(v, f"{key}.{k}", meta)
        return types.MappingProxyType(out)
    if dataclasses.is_dataclass(hint):
        return _section(hint, value, key)
    raise TypeError(f"unsupported setting type {hint!r} for {key}")  # a bug in this module


def _section(cls: Any, data: object, prefix: str) -> Any:
    where = prefix or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{prefix + '.' if prefix else ''}{key}: unknown key "
                f"(expected one of: {', '.join(fields)})")
    kwargs = {
        name: _convert(data[name], hints[name], f"{prefix + '.' if prefix else ''}{name}",
                       f.metadata)
        for name, f in fields.items() if name in data
    }
    return cls(**kwargs)


def parse_file_config(data: object) -> FileConfig:
    """Validate a parsed YAML document; raise ConfigError naming the first bad key."""
    config: FileConfig = _section(FileConfig, data, "")
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
    est = config.estimate
    if est.cpu_max_watts_per_vcpu < est.cpu_idle_watts_per_vcpu:
        raise ConfigError(
            "estimate.cpu_max_watts_per_vcpu: expected a number >= "
            f"estimate.cpu_idle_watts_per_vcpu ({est.cpu_idle_watts_per_vcpu:g}), "
            f"got {est.cpu_max_watts_per_vcpu:g}")
    return config


def _duplicate_key(node: yaml.Node, path: str = "") -> str | None:
    """The first mapping key that appears twice, as `a.b.key (line N, first at line M)`.

    PyYAML keeps the last of two equal keys silently; exporter-toolkit's Go YAML refuses them,
    and a second, empty `basic_auth_users:` would otherwise switch authentication off. Nodes
    shared through anchors are visited once, so an alias bomb stays linear."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(node, path)]
    while stack:
        current, where = stack.pop()
        if id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[object, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:merge":
                    stack.append((value, where))  # `<<:` merges; explicit keys override it
                    continue
                name = key.value if isinstance(key, yaml.ScalarNode) else f"<{key.tag}>"
                full = f"{where}.{name}" if where else str(name)
                line = key.start_mark.line + 1
                if name in first:
                    return f"{full} (line {line}, first at line {first[name]})"
                first[name] = line
                stack.append((value, full))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(current.value))
    return None


def read_yaml(path: Path, flag: str) -> object:
    """The YAML document a `--*.file` flag names; ConfigError naming the flag and the path, and
    the key where a key is repeated. The text is never quoted: it may hold a secret."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path}: expected UTF-8 YAML, got binary") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicate = _duplicate_key(node)
        if duplicate is not None:
            raise ConfigError(f"{flag} {path}: duplicate key {duplicate}; each key may appear "
                              "once (the last one would silently win)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{flag} {path}: not valid YAML{where}") from None
    except ValueError:  # an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        raise ConfigError(f"{flag} {path}: not valid YAML: a number is too long "
                          "(over 4,300 digits)") from None
    except RecursionError:
        raise ConfigError(f"{flag} {path}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def load_file_config(path: Path | None) -> FileConfig:
    """Read `--config.file`; no file means every default."""
    if path is None:
        return FileConfig()
    data = read_yaml(path, "--config.file")
    try:
        return parse_file_config(data)
    except ConfigError as exc:
        raise ConfigError(f"--config.file {path}: {exc}") from None
