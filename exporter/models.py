"""Which ML model a pod serves or trains: ordered rules over its labels, annotations and containers.

Rules are data (`ModelRule`), tried in order; the first that yields a non-empty value wins. When
none does, the pod's controlling owner names the workload instead. docs/models.md lists the
default rules and where each framework documents the label, flag or variable it relies on.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.schema import (
    ConfigError,
    check_keys,
    expect_list,
    expect_mapping,
    string,
)

PHASES = ("inference", "training", "other")
SOURCES = ("label", "annotation", "arg", "subcommand", "env", "image")
POD_SOURCES = ("label", "annotation")
"""Sources read from the pod's metadata; the others are read from each container in turn."""

MAX_VALUE_CHARS = 256
"""A model (or owner) name is cut to this many characters: it becomes a Prometheus label value."""

EXPLICIT_MODEL_KEY = "footprint.dev/model"
EXPLICIT_PHASE_KEY = "footprint.dev/phase"

RESERVED_SOURCE_NAMES = ("owner", "none")
"""model_source values match_pod itself publishes; a rule may not take them as its name."""

RULE_FIELDS = ("name", "source", "key", "phase", "when", "phase_key", "selector", "pattern")
"""The keys of one rule in `models.rules`, in ModelRule's order."""
REQUIRED_FIELDS = {
    "name": "a non-empty string",
    "source": "one of " + ", ".join(SOURCES),
    "key": "a non-empty string",
    "phase": "one of " + ", ".join(PHASES),
}
"""The keys a rule must have, and what each is."""
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SELECTOR_EXPECTED = "a label selector of comma-separated key, !key, key=value or key!=value"
# Kubernetes expands $(VAR) in command and args from the container's env; $$(VAR) escapes it.
_ENV_REFERENCE = re.compile(r"\$(\$?)\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# pod-template-hash and generated suffixes use k8s.io/apimachinery rand's alphabet.
_GENERATED_SUFFIX = re.compile(r"[bcdfghjklmnpqrstvwxz2456789]{5,10}")
_TEMPLATE_HASH = re.compile(r"[a-z0-9]{1,10}")
_CRONJOB_JOB = re.compile(r"(.+)-([0-9]{8,})", re.DOTALL)


class _FieldError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.field = name
        self.message = message


def _one_of(choices: Sequence[str]) -> str:
    return "one of " + ", ".join(choices)


def _compile(name: str, text: str, *, model_group: bool) -> re.Pattern[str]:
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise _FieldError(name, f"expected a regular expression, got {text!r} ({exc})") from None
    if model_group and "model" not in pattern.groupindex:
        raise _FieldError(
            name, f"expected a regular expression with a named group 'model', got {text!r}")
    return pattern


Requirement = tuple[str, str, str]
"""(label key, operator, value): operator is exists, !exists, = or !=."""


def _parse_selector(text: str) -> tuple[Requirement, ...]:
    if not text.strip():
        return ()
    out: list[Requirement] = []
    for raw in text.split(","):
        term = raw.strip()
        if term.startswith("!"):
            key, op, value = term[1:].strip(), "!exists", ""
        elif "!=" in term:
            key, _, value = term.partition("!=")
            op = "!="
        elif "=" in term:
            key, _, value = term.partition("==") if "==" in term else term.partition("=")
            op = "="
        else:
            key, op, value = term, "exists", ""
        key, value = key.strip(), value.strip()
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise _FieldError("selector", f"expected {_SELECTOR_EXPECTED}, got {text!r}")
        out.append((key, op, value))
    return tuple(out)


def _selected(requirements: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    for key, op, value in requirements:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
    return True


@dataclass(frozen=True, slots=True)
class ModelRule:
    """One way a pod reveals its model.

    name: published as model_source (e.g. "vllm"). source: where to look (SOURCES). key: the
    label or annotation key; the flag for "arg" (`--model X` and `--model=X`); the subcommand
    word for "subcommand" (the next positional is the model); the variable for "env"; for
    "image", a regular expression with a named group `model`, searched in the container image.
    phase: inference, training or other. when: a regular expression that must match (search)
    the container's image, command and args joined with spaces; ignored for label/annotation.
    phase_key: a pod label (or, failing that, annotation) whose value, when it is one of PHASES,
    replaces phase. selector: pod labels that must hold for the rule to apply at all
    (`key`, `!key`, `key=value`, `key!=value`, comma-separated). pattern: a regular expression
    with a named group `model` applied to the value found; no match means no hit.
    """

    name: str
    source: str
    key: str
    phase: str
    when: str = ""
    phase_key: str = ""
    selector: str = ""
    pattern: str = ""
    _image: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _when: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _selector: tuple[Requirement, ...] = field(
        default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = _validate(self.name, self.source, self.key, self.phase, self.when,
                                 self.phase_key, self.selector, self.pattern)
        except _FieldError as exc:
            raise ValueError(str(exc)) from None
        image, when, pattern, selector = compiled
        object.__setattr__(self, "_image", image)
        object.__setattr__(self, "_when", when)
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "_selector", selector)

    @property
    def pod_level(self) -> bool:
        return self.source in POD_SOURCES


def _validate(name: str, source: str, key: str, phase: str, when: str, phase_key: str,
              selector: str, pattern: str) -> tuple[
                  re.Pattern[str] | None, re.Pattern[str] | None, re.Pattern[str] | None,
                  tuple[Requirement, ...]]:
    if not name.strip():
        raise _FieldError("name", f"expected a non-empty string, got {name!r}")
    if name in RESERVED_SOURCE_NAMES:
        raise _FieldError(
            "name", f"expected a name other than {' and '.join(map(repr, RESERVED_SOURCE_NAMES))}"
                    f", got {name!r}")
    if source not in SOURCES:
        raise _FieldError("source", f"expected {_one_of(SOURCES)}, got {source!r}")
    if not key.strip():
        raise _FieldError("key", f"expected a non-empty string, got {key!r}")
    image = _compile("key", key, model_group=True) if source == "image" else None
    if phase not in PHASES:
        raise _FieldError("phase", f"expected {_one_of(PHASES)}, got {phase!r}")
    compiled_when = _compile("when", when, model_group=False) if when else None
    if phase_key and not _LABEL_KEY.fullmatch(phase_key):
        raise _FieldError("phase_key", f"expected a label key, got {phase_key!r}")
    requirements = _parse_selector(selector)
    compiled_pattern = _compile("pattern", pattern, model_group=True) if pattern else None
    return image, compiled_when, compiled_pattern, requirements


@dataclass(frozen=True, slots=True)
class ModelMatch:
    """How a pod was matched: published on footprint_container_info."""

    model: str
    """The model served or trained; "" when nothing matched."""
    phase: str
    """inference, training or other."""
    model_source: str
    """The winning rule's name, "owner" (the owner fallback) or "none"."""
    owner_kind: str
    """The controlling owner, resolved: Deployment, StatefulSet, DaemonSet, Job, CronJob,
    ReplicaSet (when no template hash is recognised), any other kind as is; "" when none."""
    owner_name: str


DEFAULT_RULES: tuple[ModelRule, ...] = (
    ModelRule("explicit", "label", EXPLICIT_MODEL_KEY, "inference",
              phase_key=EXPLICIT_PHASE_KEY),
    ModelRule("explicit", "annotation", EXPLICIT_MODEL_KEY, "inference",
              phase_key=EXPLICIT_PHASE_KEY),
    ModelRule("kserve", "label", "serving.kserve.io/inferenceservice", "inference"),
    ModelRule("vllm", "subcommand", "serve", "inference", when=r"vllm"),
    ModelRule("vllm", "arg", "--model", "inference", when=r"vllm"),
    ModelRule("tgi", "arg", "--model-id", "inference", when=r"text-generation"),
    ModelRule("tgi", "env", "MODEL_ID", "inference", when=r"text-generation"),
    ModelRule("nim", "env", "NIM_MODEL_NAME", "inference", when=r"(?:^|/)nim/"),
    ModelRule("nim", "env", "NIM_MODEL_PATH", "inference", when=r"(?:^|/)nim/"),
    ModelRule("nim", "image", r"(?:^|/)nim/(?P<model>[^/:@\s]+/[^/:@\s]+)", "inference"),
    ModelRule("triton", "arg", "--load-model", "inference", when=r"tritonserver",
              pattern=r"^(?P<model>[^*]+)$"),
    ModelRule("ray-serve", "label", "ray.io/cluster", "inference", selector="ray.io/serve",
              pattern=r"^(?P<model>.+?)(?:-raycluster-[a-z0-9]{5})?$"),
    ModelRule("kubeflow-training", "label", "training.kubeflow.org/job-name", "training"),
)
"""The built-in rules, in the order docs/models.md documents."""


# ---------------------------------------------------------------------------------------------
# Configuration


def _rule_from(item: object, where: str) -> ModelRule:
    data = expect_mapping(item, where)
    check_keys(data, where, RULE_FIELDS)
    for name, expected in REQUIRED_FIELDS.items():
        if name not in data:
            raise ConfigError(f"{where}.{name}: missing (expected {expected})")
    values = {name: string(data[name], f"{where}.{name}") for name in RULE_FIELDS
              if name in data}
    try:
        return ModelRule(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def parse_rules(data: object, *, key: str = "models.rules") -> tuple[ModelRule, ...]:
    """Validate a YAML list of rule mappings (`models.rules`, read by exporter.config); raise
    ConfigError naming the first bad key."""
    if data is None:
        return ()
    items = expect_list(data, key, expected="a list of rule mappings")
    return tuple(_rule_from(item, f"{key}[{i}]") for i, item in enumerate(items))


# ---------------------------------------------------------------------------------------------
# Matching


def clean_label_value(value: str) -> str:
    """A plain str fit for a label value: no lone surrogates, stripped, at most 256 chars."""
    text = value.encode("utf-8", "replace").decode("utf-8")
    return text.strip()[:MAX_VALUE_CHARS].rstrip()


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _str_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def _expand(text: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return f"$({m.group(2)})"
        return env.get(m.group(2), m.group(0))

    return _ENV_REFERENCE.sub(sub, text) if "$(" in text else text


def _split(item: str) -> list[str]:
    if not any(c.isspace() for c in item):
        return [item]
    try:
        return shlex.split(item)
    except ValueError:  # unbalanced quotes: fall back to whitespace
        return item.split()


@dataclass(frozen=True, slots=True)
class _Container:
    image: str
    tokens: tuple[str, ...]
    env: Mapping[str, str]
    haystack: str


def _container(spec: object) -> _Container | None:
    if not isinstance(spec, Mapping):
        return None
    image = spec.get("image")
    image = image if isinstance(image, str) else ""
    env: dict[str, str] = {}
    entries = spec.get("env")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping):
            name, value = entry.get("name"), entry.get("value")
            if isinstance(name, str) and isinstance(value, str):
                env[name] = value  # a later duplicate wins, as in Kubernetes
    words = [_expand(w, env) for w in (*_str_list(spec.get("command")),
                                      *_str_list(spec.get("args")))]
    tokens = tuple(t for w in words for t in _split(w))
    return _Container(image, tokens, env, " ".join([image, *words]))


def _containers(pod: Mapping[str, Any]) -> list[_Container]:
    spec = pod.get("spec")
    listed = spec.get("containers") if isinstance(spec, Mapping) else None
    found = (_container(c) for c in (listed if isinstance(listed, list) else ()))
    return [c for c in found if c is not None]


def _flag_values(tokens: Sequence[str], flag: str) -> Iterator[str]:
    prefix = flag + "="
    for i, token in enumerate(tokens):
        if token == flag:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                yield tokens[i + 1]
        elif token.startswith(prefix):
            yield token[len(prefix):]


def _subcommand_values(tokens: Sequence[str], word: str) -> Iterator[str]:
    for i, token in enumerate(tokens[:-1]):
        if token == word and not tokens[i + 1].startswith("-"):
            yield tokens[i + 1]


def _container_values(rule: ModelRule, c: _Container) -> Iterator[str]:
    if rule._when is not None and rule._when.search(c.haystack) is None:
        return
    if rule.source == "arg":
        yield from _flag_values(c.tokens, rule.key)
    elif rule.source == "subcommand":
        yield from _subcommand_values(c.tokens, rule.key)
    elif rule.source == "env":
        if rule.key in c.env:
            yield c.env[rule.key]
    elif rule.source == "image" and rule._image is not None:
        m = rule._image.search(c.image)
        if m is not None and m.group("model") is not None:
            yield m.group("model")


def _candidates(rule: ModelRule, labels: Mapping[str, str], annotations: Mapping[str, str],
                containers: Sequence[_Container]) -> Iterator[str]:
    if rule.source == "label":
        if rule.key in labels:
            yield labels[rule.key]
    elif rule.source == "annotation":
        if rule.key in annotations:
            yield annotations[rule.key]
    else:
        for c in containers:
            yield from _container_values(rule, c)


def _hit(rule: ModelRule, labels: Mapping[str, str], annotations: Mapping[str, str],
         containers: Sequence[_Container]) -> str:
    for raw in _candidates(rule, labels, annotations, containers):
        value = raw
        if rule._pattern is not None:
            m = rule._pattern.search(raw)
            if m is None or m.group("model") is None:
                continue
            value = m.group("model")
        model = clean_label_value(value)
        if model:
            return model
    return ""


def _phase(rule: ModelRule, labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    if rule.phase_key:
        given = labels.get(rule.phase_key, annotations.get(rule.phase_key, ""))
        wanted = given.strip().lower()
        if wanted in PHASES:
            return wanted
    return rule.phase


def _resolve_owner(kind: str, name: str, labels: Mapping[str, str]) -> tuple[str, str]:
    if kind == "ReplicaSet":
        head, sep, tail = name.rpartition("-")
        if "pod-template-hash" in labels:
            wanted = labels["pod-template-hash"]
            if sep and head and tail == wanted and _TEMPLATE_HASH.fullmatch(tail):
                return "Deployment", head
        elif sep and head and _GENERATED_SUFFIX.fullmatch(tail):
            return "Deployment", head
    elif kind == "Job":
        m = _CRONJOB_JOB.fullmatch(name)
        if m is not None:
            return "CronJob", m.group(1)
    return kind, name


def _owner(meta: Mapping[str, Any], labels: Mapping[str, str]) -> tuple[str, str]:
    refs = meta.get("ownerReferences")
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            kind, name = ref.get("kind"), ref.get("name")
            if not isinstance(kind, str) or not isinstance(name, str):
                return "", ""
            kind, name = _resolve_owner(kind, name, labels)
            return clean_label_value(kind), clean_label_value(name)
    return "", ""


def match_pod(pod: Mapping[str, Any], rules: Sequence[ModelRule]) -> ModelMatch:
    """First rule that hits, in order, wins (container-level sources try `spec.containers` in
    order; init containers are not considered); if none, the controlling owner; else model ""
    with model_source "none" and phase "other". Never raises on a malformed pod."""
    if not isinstance(pod, Mapping):
        pod = {}
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    labels = _str_map(meta.get("labels"))
    annotations = _str_map(meta.get("annotations"))
    owner_kind, owner_name = _owner(meta, labels)
    containers: list[_Container] | None = None
    for rule in rules:
        if not _selected(rule._selector, labels):
            continue
        if containers is None and not rule.pod_level:
            containers = _containers(pod)
        model = _hit(rule, labels, annotations, containers or [])
        if model:
            return ModelMatch(model, _phase(rule, labels, annotations), rule.name,
                              owner_kind, owner_name)
    if owner_name and owner_kind != "Node":  # a static pod's mirror names its node, not a model
        return ModelMatch(owner_name, "other", "owner", owner_kind, owner_name)
    return ModelMatch("", "other", "none", owner_kind, owner_name)
