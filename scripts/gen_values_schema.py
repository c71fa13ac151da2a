"""Writes the `config` section of the chart's values.schema.json from exporter/config.py.

    .venv/bin/python scripts/gen_values_schema.py [--check]

The exporter's settings are frozen dataclasses whose fields carry their default, doc line and
rules (exporter.schema.setting); this script turns them into the JSON schema Helm checks
`config:` values against: one object per section (additionalProperties false, so a misspelt key
fails `helm install`), each field's type, `enum` for a choice, `minimum`/`maximum` for a
number, and the fragment a field with a parser of its own states (`json_schema`). The rest of
values.schema.json is left as it is. Keys the chart sets itself (CHART_SETS) are left out.
`--check` writes nothing and exits 1 when the file is not what this script would write;
tests/test_chart.py runs it, and scripts/gen_manifests.py writes it with the manifests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exporter import config  # noqa: E402  (after the path is set)
from exporter.schema import optional_inner  # noqa: E402
from exporter.sources.registry import SECTIONS  # noqa: E402

SCHEMA = Path("charts/footprint-exporter/values.schema.json")
CHART_SETS = {"kubernetes.pod_resources_socket": "podResources",
              "kubernetes.dra_drivers": "gpu.dra.drivers"}
"""Config keys the chart's templates write from other values, so `config:` may not set them."""
DESCRIPTION = (
    "The exporter's config file (docs/configuration.md), written to a ConfigMap. "
    + " ".join(f"{key} is set by the chart ({value}) and cannot be set here."
               for key, value in CHART_SETS.items()))

Obj = dict[str, Any]


def _number(value: float) -> int | float:
    """1.0 as 1, as the schema has always written whole numbers."""
    return int(value) if float(value).is_integer() else value


def _bounds(meta: Mapping[str, Any]) -> Obj:
    return {name: _number(meta[key]) for key, name in (("min", "minimum"), ("max", "maximum"))
            if key in meta}


def field_schema(hint: Any, meta: Mapping[str, Any], path: str) -> Obj:
    """The JSON schema of one setting."""
    out: Obj = {"description": meta["doc"]}
    if "json_schema" in meta:
        return out | dict(meta["json_schema"])
    if "parse" in meta:
        raise SystemExit(f"gen_values_schema: {path} has a parser of its own but states no "
                         "json_schema (exporter.schema.setting)")
    inner = optional_inner(hint)
    nullable = inner is not None
    hint = inner if inner is not None else hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        out |= {"type": "number", **_bounds(meta)}
    elif hint is str:
        out["type"] = "string"
        if "choices" in meta:
            out["enum"] = list(meta["choices"])
    elif hint is bool:
        out["type"] = "boolean"
    elif origin is tuple and args == (str, Ellipsis):
        out |= {"type": "array", "items": {"type": "string", "minLength": 1}}
    elif origin is Mapping and args == (str, float):
        value = {"type": "number", **_bounds(meta)}
        if "keys" in meta:
            out |= {"type": "object", "additionalProperties": False,
                    "properties": {key: value for key in meta["keys"]}}
        else:
            out |= {"type": "object", "additionalProperties": value}
    else:
        raise SystemExit(f"gen_values_schema: {path}: no JSON schema for {hint!r}")
    if nullable:
        out["type"] = [out["type"], "null"]
    return out


def section_schema(cls: Any, prefix: str = "") -> Obj:
    """The `properties` of a settings dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    properties: Obj = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if path in CHART_SETS:
            continue
        if f.metadata.get("sections"):  # the sources' own sections, at this place
            for name, section in SECTIONS.items():
                properties[name] = _section(section, f"{prefix}{name}")
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            properties[f.name] = _section(hint, path)
        else:
            properties[f.name] = field_schema(hint, f.metadata, path)
    return properties


def _section(cls: Any, path: str) -> Obj:
    return {"type": ["object", "null"], "description": cls.__doc__,
            "additionalProperties": False, "properties": section_schema(cls, f"{path}.")}


def config_schema() -> Obj:
    """values.schema.json's `config`: everything `--config.file` may set, less CHART_SETS."""
    return {"type": "object", "additionalProperties": False,
            "properties": section_schema(config.FileConfig), "description": DESCRIPTION}


def generate(root: Path) -> dict[Path, bytes]:
    """values.schema.json under root with its `config` section generated, by path."""
    schema = json.loads((root / SCHEMA).read_text(encoding="utf-8"))
    schema["properties"]["config"] = config_schema()
    text = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return {SCHEMA: text.encode()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the file is out of date")
    args = parser.parse_args(argv)
    for path, data in generate(ROOT).items():
        target = ROOT / path
        if target.read_bytes() == data:
            continue
        if args.check:
            print(f"{path} is out of date: run scripts/gen_values_schema.py", file=sys.stderr)
            return 1
        target.write_bytes(data)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
