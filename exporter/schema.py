"""YAML files and their validation: what `--config.file` and `--web.config.file` share.

`read_file` reads any file named at start-up (bounded, regular files only); `read_yaml` reads a
document with YAML 1.2's core schema (refusing repeated keys and absurd numbers); the checks
below turn its parts into typed values or raise a ConfigError of one line, `<dotted key>:
expected <what>, got <what was there>`. A value that may be a secret is described by its type
(and a string's length), never echoed (`describe_secret`), and so is a key that looks like one
(`shown_key`).

Settings are frozen dataclasses whose fields carry their rules in metadata (`setting()`);
`parse_section` walks them. exporter.config declares the config file that way, exporter.models
and exporter.webconfig use the checks directly, and scripts/gen_values_schema.py writes the
chart's JSON schema from the same metadata. This module imports nothing from the project, so
each of those modules can import it and no import cycle forms.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import re
import stat
import sys
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


SECRET_LOOKING = re.compile(
    r"\$2[aby]?\$"  # a bcrypt hash
    r"|-----BEGIN"  # a PEM block
    r"|(?=[A-Za-z0-9+/=_.~-]*[0-9])(?=[A-Za-z0-9+/=_.~-]*[a-z])(?=[A-Za-z0-9+/=_.~-]*[A-Z])"
    r"[A-Za-z0-9+/=_.~-]{20,}")  # a token: 20 characters or more, mixed case and digits
"""What looks like a secret pasted where a name belongs; such a name is never shown."""

MAX_SHOWN_KEY = 100
"""The longest key an error shows; a longer one is described by its length."""


def looks_secret(text: str) -> bool:
    """True when `text` has a bcrypt hash, a PEM block or a token-like run in it, or is too
    long to be a name."""
    return len(text) > MAX_SHOWN_KEY or SECRET_LOOKING.search(text) is not None


def shown_key(name: object) -> str:
    """A mapping key as an error shows it: itself, unless it looks like a pasted secret
    (`looks_secret`); then its length only."""
    text = str(name)
    if not looks_secret(text):
        return text
    return (f"<a key of {len(text)} characters, not shown: it looks like a secret (a hash, "
            "a key or a token)>")


def join(prefix: str, key: object) -> str:
    """The dotted key of `key` inside `prefix` ("" is the top level); a secret-looking key
    appears by its length only (`shown_key`)."""
    return f"{prefix}.{shown_key(key)}" if prefix else shown_key(key)


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
    if isinstance(value, int) and not isinstance(value, bool) and (
            abs(value) > sys.float_info.max):  # 4,000 digits: float() would overflow
        raise ConfigError(f"{key}: expected {_bounds(minimum, maximum)}, got an integer of "
                          f"{len(str(abs(value)))} digits")
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
    """True or false; YAML 1.2's `yes`, `no`, `on`, `off` are strings, refused here."""
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
# Files read at start-up


MAX_YAML_BYTES = 256 << 10
"""The largest `--config.file` or `--web.config.file`: 256 KiB, a hundred times a large real
one. PyYAML holds about 100 times a document's size while parsing it, at about 100 KiB/s on
a busy core (a 50 MB file took 3.6 GiB; 256 KiB takes ~30 MiB and ~2 s)."""


class FileRefused(Exception):
    """A file named at start-up was not read; str(): why, in a few words that name neither the
    file nor anything in it (the caller names the setting and the file)."""


_FILE_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def size_text(size: int) -> str:
    """Bytes as an error shows them: `1 MiB`, `64 KiB`, `50.0 MiB`, `512 bytes`."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}" if size % scale == 0 else f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def read_file(path: Path, limit: int) -> bytes:
    """The content of the regular file `path`, of at most `limit` bytes; FileRefused for
    anything else, decided without waiting and without reading more than `limit` + 1 bytes.

    The one way files named in the configuration are read (the config files, certificates
    and keys, token and password files), at start-up or again later (a rotated Secret): the
    file is opened with O_NONBLOCK, so a FIFO or a device is refused rather than waited on
    (an open for reading blocks until a FIFO has a writer), and a file bigger than `limit`
    is refused from its size before any of it is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(exc.strerror or type(exc).__name__) from None
    except ValueError:  # a NUL in the name
        raise FileRefused("not a valid file name") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)),
                        "a special file")
            raise FileRefused(f"{kind}, not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"{size_text(info.st_size)}, over the {size_text(limit)} limit "
                              "for this file; not read")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grown since, or a size the kernel does not report (procfs)
            raise FileRefused(f"over the {size_text(limit)} limit for this file")
        return b"".join(chunks)
    except OSError as exc:
        raise FileRefused(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# YAML 1.2


_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"

_INT_12 = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_12 = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_BOOL_12 = {"true": True, "True": True, "TRUE": True,
            "false": False, "False": False, "FALSE": False}

MAX_NUMBER_DIGITS = 4300
"""Python's own limit for a decimal integer (sys.get_int_max_str_digits), for every base."""


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2's core schema, as Go's yaml.v3 and kubectl read it.

    PyYAML implements YAML 1.1, where `NO` (Norway), `yes`, `on` and `off` are booleans,
    `0400` is octal (256), `1:30` sexagesimal (90) and `2024-01-01` a date. Here only
    `true`/`false` (and their `True`, `TRUE` spellings) are booleans, integers are decimal
    (`0400` is 400), `0o17` octal or `0x1F` hexadecimal, floats are `1.5`, `1e3`, `.inf`,
    `.nan`, and everything else (`NO`, `yes`, `1:30`, `1_000`, dates) is a string. A mapping's
    plain keys are always strings (`{NO: 1.2, 400: x}` has the keys "NO" and "400"), so a zone
    or user name never turns into a boolean or a number."""

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[typing.Hashable, typing.Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark)
        self.flatten_mapping(node)  # `<<:` merges
        mapping: dict[typing.Hashable, typing.Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag in (
                    _BOOL, _INT, _FLOAT, _NULL, _STR):
                key: object = key_node.value  # the key as written
            else:
                key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key",
                    key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def construct_yaml12_bool(self, node: yaml.ScalarNode) -> bool:
        text = str(self.construct_scalar(node))
        if text not in _BOOL_12:
            raise yaml.constructor.ConstructorError(
                None, None, "expected a YAML 1.2 boolean (true or false)", node.start_mark)
        return _BOOL_12[text]

    def construct_yaml12_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if not _INT_12.fullmatch(text):
            raise yaml.constructor.ConstructorError(
                None, None, "expected a YAML 1.2 integer", node.start_mark)
        if len(text) > MAX_NUMBER_DIGITS:
            raise ValueError("a number is too long")
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)

    def construct_yaml12_float(self, node: yaml.ScalarNode) -> float:
        text = str(self.construct_scalar(node))
        if not _FLOAT_12.fullmatch(text):
            raise yaml.constructor.ConstructorError(
                None, None, "expected a YAML 1.2 float", node.start_mark)
        if len(text) > MAX_NUMBER_DIGITS:
            raise ValueError("a number is too long")
        lowered = text.lower()
        if lowered.endswith((".inf", ".nan")):
            return float(lowered.replace(".", ""))
        return float(text)


Yaml12Loader.yaml_implicit_resolvers = {}  # PyYAML's YAML 1.1 ones dropped; 1.2 core's below
for _tag, _pattern, _first in (
        ("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), "<"),
        (_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
        (_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
        (_INT, re.compile(rf"^(?:{_INT_12.pattern})$"), "-+0123456789"),
        (_FLOAT, re.compile(rf"^(?:{_FLOAT_12.pattern})$"), "-+0123456789.")):
    Yaml12Loader.add_implicit_resolver(_tag, _pattern, list(_first))
Yaml12Loader.add_constructor(_BOOL, Yaml12Loader.construct_yaml12_bool)
Yaml12Loader.add_constructor(_INT, Yaml12Loader.construct_yaml12_int)
Yaml12Loader.add_constructor(_FLOAT, Yaml12Loader.construct_yaml12_float)


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
                full = join(where, name)
                line = key.start_mark.line + 1
                if name in first:
                    return f"{full} (line {line}, first at line {first[name]})"
                first[name] = line
                stack.append((value, full))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(current.value))
    return None


def read_yaml(path: Path, flag: str, *, limit: int = MAX_YAML_BYTES) -> object:
    """The YAML 1.2 document a `--*.file` flag names (`Yaml12Loader`); ConfigError naming the
    flag and the path, and the key where a key is repeated. A file that is not a regular file
    or is over `limit` bytes is refused unread (`read_file`). The text is never quoted: it may
    hold a secret."""
    try:
        text = read_file(path, limit).decode("utf-8")
    except FileRefused as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path}: expected UTF-8 YAML, got binary") from None
    loader = Yaml12Loader(text)
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
    except ValueError:  # an integer of more than 4,300 digits
        raise ConfigError(f"{flag} {path}: not valid YAML: a number is too long "
                          "(over 4,300 digits)") from None
    except RecursionError:
        raise ConfigError(f"{flag} {path}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
