"""Pod labels published on `footprint_container_info`, as kube-state-metrics publishes them on
`kube_pod_labels`: `kubernetes.pod_label_allowlist` names the keys (exact, or globs with `*`),
each allowed key becomes `label_<sanitised key>`, each value is cleaned and capped
(docs/chargeback.md).

The allow-list is applied once per pod and resourceVersion, where the pod arrives
(exporter.kube.pods.slim_pod keeps only the allowed labels) and where its containers are made
(exporter.workloads), never per tick. Only the info family carries them: the energy and CO2e
series keep their labels, so a label value costs one info series per container and nothing
else.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.schema import ConfigError, describe, expect_list

PREFIX = "label_"
"""What every published pod label's name starts with (kube-state-metrics' `label_`)."""

MAX_VALUE_BYTES = 128
"""The longest label value published, in UTF-8 bytes: twice what Kubernetes allows (63
characters), so a value an API server validated is never cut; a longer one (a hostile or
broken server) is cut on a character boundary, with nothing appended."""

MAX_LABELS = 32
"""The most allowed labels one pod publishes (the first in key order): a glob can match many
keys, and a series with too many labels fails a scrape that sets `label_limit`."""

MAX_PATTERN_CHARS = 317
"""The longest entry: a label key's 253-character prefix, `/` and 63-character name."""

_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
"""A label key's name part (Kubernetes' IsQualifiedName)."""
_PREFIX = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
"""A label key's optional prefix: a DNS-1123 subdomain of at most 253 characters."""
_PATTERN_CHARS = re.compile(r"[A-Za-z0-9._/*-]+")

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_ALL_CAP = re.compile(r"([a-z0-9])([A-Z])")
_SURROGATE = re.compile("[\ud800-\udfff]")

PublishedLabels = tuple[tuple[str, str], ...]
"""(label name, value) pairs, sorted by name: what one pod's containers publish."""

HINT = ("list pod label keys (team, example.com/cost-center) or globs of them with * "
        "(cost-*)")


def is_label_key(key: str) -> bool:
    """Kubernetes' label key syntax: [DNS-subdomain prefix `/`] name."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and len(prefix) <= 253 and _PREFIX.fullmatch(prefix)):
        return False
    return _NAME.fullmatch(name) is not None


def check_pattern(entry: object, key: str) -> str:
    """One allow-list entry: a label key, or a glob of one where `*` stands for any run of
    characters; ConfigError naming `key` for one that can match no label key."""
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f"{key}: expected a pod label key or a glob of one, got "
                          f"{describe(entry)}; {HINT}")
    if not entry.strip("*"):
        raise ConfigError(
            f"{key}: {entry!r} would publish every pod label, pod-template-hash and "
            "controller-revision-hash included (a new info series per rollout); " + HINT)
    shown = repr(entry) if len(entry) <= 100 else f"a string of {len(entry)} characters"
    usable = (len(entry) <= MAX_PATTERN_CHARS and _PATTERN_CHARS.fullmatch(entry) is not None
              and entry.count("/") <= 1
              and any(is_label_key(entry.replace("*", fill)) for fill in ("x", "")))
    if not usable:
        raise ConfigError(
            f"{key}: {shown} matches no pod label key: a key is an optional DNS prefix and "
            "'/', then up to 63 letters, digits, '-', '_' or '.', starting and ending with a "
            f"letter or digit; {HINT}")
    return entry


def parse_allowlist(value: object, key: str) -> tuple[str, ...]:
    """`kubernetes.pod_label_allowlist`: a list of label keys and globs (exporter.config)."""
    entries = expect_list(value, key,
                          expected="a list of pod label keys or globs of them: [team, cost-*]")
    return tuple(check_pattern(entry, f"{key}[{i}]") for i, entry in enumerate(entries))


def parse_chargeback_labels(value: object, key: str) -> tuple[str, ...]:
    """`kubernetes.chargeback_labels`: pod label keys, exactly (no globs): each is charged per
    value on every node (exporter.chargeback), so its values add up to the node's energy."""
    entries = expect_list(value, key, expected="a list of pod label keys: [team]")
    for i, entry in enumerate(entries):
        if not (isinstance(entry, str) and is_label_key(entry)):
            raise ConfigError(
                f"{key}[{i}]: expected a pod label key (team, example.com/cost-center), got "
                f"{describe(entry)}; no globs: each key listed is charged on every node")
    return tuple(dict.fromkeys(entries))


CHARGEBACK_JSON_SCHEMA: Mapping[str, Any] = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN_CHARS,
              "pattern": r"^[A-Za-z0-9._/-]+$"},
}
"""What `parse_chargeback_labels` accepts, as far as a JSON schema can say it."""


ALLOWLIST_JSON_SCHEMA: Mapping[str, Any] = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN_CHARS,
              "pattern": r"^[A-Za-z0-9._/*-]*[A-Za-z0-9._/-][A-Za-z0-9._/*-]*$"},
}
"""What `parse_allowlist` accepts, as far as a JSON schema can say it, for the chart."""


@functools.lru_cache(maxsize=4096)
def label_name(key: str) -> str:
    """kube-state-metrics' name for a label key: `label_`, then the key with each character
    outside [a-zA-Z0-9_] replaced by `_`, then camelCase turned to snake_case and lowered
    (`app.kubernetes.io/name` -> `label_app_kubernetes_io_name`, `costCenter` ->
    `label_cost_center`). Cached: the same few keys come back with every pod."""
    return PREFIX + _ALL_CAP.sub(r"\1_\2", _INVALID.sub("_", key)).lower()


def clean_value(value: str, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """A label value fit to publish: each lone surrogate (JSON's `\\ud800` decodes to one; no
    UTF-8 can hold it) becomes U+FFFD, and the value is cut to `max_bytes` of UTF-8 on a
    character boundary. Everything else stays: the exposition escapes `\\`, `"` and newlines,
    and Prometheus takes any other character in a label value."""
    if len(value) <= max_bytes and value.isascii():
        return value  # every value an API server validated
    value = _SURROGATE.sub("\ufffd", value)
    data = value.encode("utf-8")
    if len(data) > max_bytes:
        value = data[:max_bytes].decode("utf-8", "ignore")
    return value


def _next_free(base: str, count: int, used: Mapping[str, int]) -> tuple[str, int]:
    while True:
        count += 1
        candidate = f"{base}_conflict{count}"
        if candidate not in used:
            return candidate, count


def published(labels: Mapping[str, str]) -> PublishedLabels:
    """The (name, value) pairs of already-allowed labels, sorted by name. Two keys whose names
    coincide (`team.name`, `team-name`, `teamName`) are told apart as kube-state-metrics does:
    in key order, `label_team_name_conflict1`, `_conflict2`, ...; none keeps the bare name."""
    names: list[str] = []
    values: list[str] = []
    used: dict[str, int] = {}
    conflicts: dict[str, int] = {}
    for key in sorted(labels):
        base = name = label_name(key)
        if base in conflicts:
            name, conflicts[base] = _next_free(base, conflicts[base], used)
        elif name in used:  # the first collision: the entry holding the bare name moves too
            index = used.pop(name)
            renamed, count = _next_free(base, 0, used)
            names[index] = renamed
            used[renamed] = index
            name, conflicts[base] = _next_free(base, count, used)
        used[name] = len(names)
        names.append(name)
        values.append(labels[key])
    return tuple(sorted(zip(names, values, strict=True)))


class PodLabelAllowlist:
    """The compiled `kubernetes.pod_label_allowlist`: which of a pod's labels are published,
    and as what."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(p for p in self.patterns if "*" not in p)
        globs = ["(?:" + ".*".join(map(re.escape, p.split("*"))) + ")"
                 for p in self.patterns if "*" in p]
        self._glob = re.compile("|".join(globs)) if globs else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def allows(self, key: str) -> bool:
        return key in self._exact or (self._glob is not None
                                      and self._glob.fullmatch(key) is not None)

    def select(self, labels: object) -> dict[str, str]:
        """The allowed string labels of a pod's `metadata.labels`, values cleaned, at most
        MAX_LABELS (the first in key order): what exporter.kube.pods keeps of them."""
        if not self.patterns or not isinstance(labels, Mapping):
            return {}
        keys = sorted(k for k, v in labels.items()
                      if isinstance(k, str) and isinstance(v, str) and self.allows(k))
        return {k: clean_value(labels[k]) for k in keys[:MAX_LABELS]}

    def publish(self, labels: object) -> PublishedLabels:
        """`select`, then `published`: the pairs a pod's containers carry."""
        return published(self.select(labels)) if self.patterns else ()
