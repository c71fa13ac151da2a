"""YAML files and their validation: what `--config.file` and `--web.config.file` share.

`read_yaml` reads a document (refusing repeated keys and absurd numbers); the checks below turn
its parts into typed values or raise a ConfigError of one line, `<dotted key>: expected <what>,
got <what was there>`. A value that may be a secret is described by its type (and a string's
length), never echoed (`describe_secret`).

Settings are frozen dataclasses whose fields carry their rules in metadata (`setting()`);
`parse_section` walks them. exporter.config declares the config file that way, exporter.models
and exporter.webconfig use the checks directly, and scripts/gen_values_schema.py writes the
chart's JSON schema from the same metadata. This module imports nothing from the project, so
each of those modules can import it and no import cycle forms.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")

Parser = Callable[[object, str], Any]
"""A field's own check: (value, dotted key) -> the parsed value, or ConfigError."""


class ConfigError(Exception):
    """A setting is wrong; the message names the key and what was expected."""


# ---------------------------------------------------------------------------------------------
# What a value is, in an error


def describe(value: object) -> str:
    """A value as an error shows it: its repr, or just the type of a mapping or list."""
    return repr(value) if not isinstance(value, Mapping | list) else type(value).__name__


def describe_secret(value: object) -> str:
    """What a value that may be a secret (or a secret pasted in the wrong place) is, without it:
    its type, and a string's length."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return type(value).__name__


def shown_path(path: Path) -> str:
    """A file name for an error message, unless it may be a secret pasted in its place: it is
    shown only when its directory exists (a mounted Secret's always does)."""
    try:
        plausible = path.is_absolute() and path.parent.is_dir() and len(str(path)) <= 4096
    except (OSError, ValueError):
        plausible = False
    return (repr(str(path)) if plausible else
            f"a name of {len(str(path))} characters (not shown: only an absolute path in an "
            "existing directory is, anything else may be a pasted secret)")


def join(prefix: str, key: object) -> str:
    """The dotted key of `key` inside `prefix` ("" is the top level)."""
    return f"{prefix}.{key}" if prefix else str(key)


# ---------------------------------------------------------------------------------------------
# Checks


def expect_mapping(value: object, key: str, *, expected: str = "a mapping",
                   secret: bool = False) -> Mapping[Any, Any]:
    """`value` itself when it is a mapping; `key` "" names the top level."""
    if not isinstance(value, Mapping):
        shown = describe_secret(value) if secret else describe(value)
        raise ConfigError(f"{key or 'the top level'}: expected {expected}, got {shown}")
    return value


def expect_list(value: object, key: str, *, expected: str = "a list") -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected {expected}, got {describe(value)}")
    return value


def check_key(name: object, key: str, allowed: Collection[str], *,
              unsupported: Mapping[str, str] | None = None) -> None:
    """`name`, a key of the mapping at `key`, is one of `allowed`. `unsupported`: dotted keys
    refused by name, with the reason, before they could be called unknown."""
    full = join(key, name)
    if unsupported and full in unsupported:
        raise ConfigError(f"{full}: {unsupported[full]}")
    if name not in allowed:
        raise ConfigError(f"{full}: unknown key (expected one of: {', '.join(allowed)})")


def check_keys(data: Mapping[Any, Any], key: str, allowed: Collection[str], *,
               unsupported: Mapping[str, str] | None = None) -> None:
    """Every key of `data` (the mapping at `key`) is one of `allowed`, in the mapping's order."""
    for name in data:
        check_key(name, key, allowed, unsupported=unsupported)


def section(value: object, key: str, allowed: Collection[str], *, secret: bool = False,
            unsupported: Mapping[str, str] | None = None) -> Mapping[Any, Any]:
    """A mapping whose keys are all in `allowed`; None (an empty section) is {}."""
    if value is None:
        return {}
    data = expect_mapping(value, key, secret=secret)
    check_keys(data, key, allowed, unsupported=unsupported)
    return data


def _bounds(minimum: float | None, maximum: float | None) -> str:
    parts = [f">= {minimum:g}"] if minimum is not None else []
    parts += [f"<= {maximum:g}"] if maximum is not None else []
    return "a number" + (" " + " and ".join(parts) if parts else "")


def number(value: object, key: str, *, minimum: float | None = None,
           maximum: float | None = None) -> float:
    """A finite int or float (not a bool) within the bounds, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected {_bounds(minimum, maximum)}, got {describe(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{key}: expected {_bounds(minimum, maximum)}, got {value!r}")
    return float(value)


def string(value: object, key: str, *, secret: bool = False) -> str:
    if not isinstance(value, str):
        shown = describe_secret(value) if secret else describe(value)
        raise ConfigError(f"{key}: expected a string, got {shown}")
    return value


def choice(value: object, key: str, choices: Collection[str]) -> str:
    """One of `choices` (a mapping: one of its keys)."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {describe(value)}")
    return value


def boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {describe(value)}")
    return value


def strings(value: object, key: str) -> tuple[str, ...]:
    """A list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a list of non-empty strings, got {describe(value)}")
    return tuple(value)


def number_map(value: object, key: str, *, keys: Collection[str] | None = None,
               minimum: float | None = None, maximum: float | None = None,
               expected: str = "a mapping") -> Mapping[str, float]:
    """A read-only mapping of name to number; `keys`: the only names allowed (else any)."""
    data = expect_mapping(value, key, expected=expected)
    out = {}
    for name, item in data.items():
        if keys is not None:
            check_key(name, key, keys)
        out[str(name)] = number(item, join(key, name), minimum=minimum, maximum=maximum)
    return types.MappingProxyType(out)


# ---------------------------------------------------------------------------------------------
# Settings as dataclasses


def setting(default: Any = dataclasses.MISSING, *, doc: str,
            default_factory: Callable[[], Any] | None = None,
            minimum: float | None = None, maximum: float | None = None,
            choices: tuple[str, ...] | None = None, keys: tuple[str, ...] | None = None,
            expected: str | None = None, secret: bool = False, parse: Parser | None = None,
            json_schema: Mapping[str, Any] | None = None) -> Any:
    """A settings field and its rules, read by `parse_section` and scripts/gen_values_schema.py.

    doc: one line for the chart's schema. minimum/maximum: a number's bounds (for a mapping of
    numbers, each value's). choices: the strings allowed. keys: a mapping's only keys.
    expected: what a mapping of numbers is, in an error ("a mapping of zone to PUE"). secret:
    never echo the value. parse: a check of its own, `(value, key) -> value`; such a field
    states its `json_schema` (the JSON schema fragment of what `parse` accepts)."""
    metadata: dict[str, Any] = {"doc": doc}
    for name, given in (("min", minimum), ("max", maximum), ("choices", choices),
                        ("keys", keys), ("expected", expected), ("parse", parse),
                        ("json_schema", json_schema)):
        if given is not None:
            metadata[name] = given
    if secret:
        metadata["secret"] = True
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def optional_inner(hint: Any) -> Any | None:
    """X for `X | None`, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        return inner
    return None


def _convert(value: object, hint: Any, key: str, meta: Mapping[str, Any]) -> Any:
    parse = meta.get("parse")
    if parse is not None:
        return parse(value, key)
    inner = optional_inner(hint)
    if inner is not None:
        return None if value is None else _convert(value, inner, key, meta)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return number(value, key, minimum=meta.get("min"), maximum=meta.get("max"))
    if hint is str:
        if meta.get("choices"):
            return choice(value, key, meta["choices"])
        return string(value, key, secret=meta.get("secret", False))
    if hint is bool:
        return boolean(value, key)
    if origin is tuple and args == (str, Ellipsis):
        return strings(value, key)
    if origin is Mapping and args == (str, float):
        return number_map(value, key, keys=meta.get("keys"), minimum=meta.get("min"),
                          maximum=meta.get("max"), expected=meta.get("expected", "a mapping"))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key)
    raise TypeError(f"unsupported setting type {hint!r} for {key}")  # a bug in the settings


def parse_section(cls: type[D], data: object, prefix: str = "") -> D:
    """The dataclass `cls` from a YAML mapping (None: every default); ConfigError names the
    first unknown key, then the first bad value, in field order."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = section(data, prefix, fields)
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(values[name], hints[name], join(prefix, name), f.metadata)
              for name, f in fields.items() if name in values}
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# YAML


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
