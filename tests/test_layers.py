"""The house rules that keep the code extendable in one place (issue 21), read from the source:
metric names only in the metrics module, no import upward from the web config to the server
or from the server to the tick, a tick that only sequences its stages; and no test module
imported by another (their shared helpers live in tests/support/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from exporter.metrics import FAMILIES
from tests.support import REPO

PACKAGE = REPO / "exporter"
FAMILY_NAME = re.compile(r"\bfootprint_[a-z_]+")
TEST_MODULE = re.compile(r"tests(\.\w+)*\.test_\w+(\..*)?")
"""A dotted module name inside tests/ whose module (or a package above it) is a test module."""


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_pb2" not in p.name)


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of modules, classes, functions, or
    the attribute docstrings that follow an assignment)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
                        and isinstance(stmt.value.value, str)):
                    found.add(id(stmt.value))
    return found


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_only_the_metrics_module_names_a_family_in_code() -> None:
    names = set(FAMILIES) | {n.removesuffix("_total") for n in FAMILIES}
    offenders = []
    for path in modules():
        if path == PACKAGE / "metrics.py":
            continue
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in skip):
                for match in FAMILY_NAME.finditer(node.value):
                    if match[0] in names:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {match[0]}")
    assert offenders == [], "name families through exporter.metrics (FAMILIES, Family.name)"


def code_strings(path: Path) -> str:
    """The string constants of a module that are not docstrings, one per line."""
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)  # of this tree: ids are compared, so parse once
    return "\n".join(node.value for node in ast.walk(tree)
                     if isinstance(node, ast.Constant) and isinstance(node.value, str)
                     and id(node) not in skip)


def test_the_report_names_recording_rules_in_one_block() -> None:
    rule = re.compile(r"\b[a-z]+:footprint_[a-z0-9_]+:[a-z0-9]+")
    where = {path.relative_to(REPO).as_posix() for path in modules()
             if rule.search(code_strings(path))}
    assert where <= {"exporter/report/queries.py"}, where


def test_no_upward_import_from_the_web_config_or_the_server() -> None:
    assert not {m for m in imports(PACKAGE / "webconfig.py")
                if m in ("exporter.server", "exporter.sampler", "exporter.reading")}
    assert not {m for m in imports(PACKAGE / "server.py")
                if m in ("exporter.sampler", "exporter.reading", "exporter.accounting",
                         "exporter.metrics")}


def test_the_network_and_secrets_modules_import_no_caller() -> None:
    """exporter/net.py and exporter/secrets.py serve the intensity providers, the report and
    anything later (issue 21): they import none of them, nor the server."""
    callers = ("exporter.intensity", "exporter.report", "exporter.server")
    for name in ("net.py", "secrets.py"):
        found = imports(PACKAGE / name)
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "exporter":
                found.update(f"exporter.{alias.name}" for alias in node.names)
        upward = {m for m in found if m.startswith(callers)}
        assert not upward, (name, upward)


def test_the_sampler_only_sequences_its_stages() -> None:
    tree = ast.parse((PACKAGE / "sampler.py").read_text())
    sampler = next(node for node in tree.body
                   if isinstance(node, ast.ClassDef) and node.name == "Sampler")
    assert sampler.end_lineno is not None
    assert sampler.end_lineno - sampler.lineno + 1 < 100
    tick = next(node for node in sampler.body
                if isinstance(node, ast.FunctionDef) and node.name == "tick")
    called = {node.func.attr for node in ast.walk(tick)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert {"read", "publish", "render"} <= called  # the stages, each one call
    assert not called & {"intensity", "source", "containers", "gpus", "attribution"}


def imported_names(path: Path) -> list[tuple[int, list[str]]]:
    """Each import statement of `path`: its line and the dotted names it may import, relative
    imports resolved against the file's package and `from X import Y` read as X and as X.Y
    (Y may be a module)."""
    package = list(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, [module, *(f"{module}.{a.name}" for a in node.names)]))
    return found


def test_no_test_module_imports_another() -> None:
    """A helper two test modules share lives in tests/support/ (or tests/conftest.py, the
    fakes, tests/e2e_node.py, tests/backfill.py), never in one of them: a test module is
    imported by pytest alone, so that running, moving or deleting one touches no other, and
    the benchmarks in bench/ import the helpers from the same place."""
    paths = sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*.py")])
    offenders = []
    for path in paths:
        for line, names in imported_names(path):
            hits = [name for name in names if TEST_MODULE.fullmatch(name)]
            if hits:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {hits[0]}")
    assert offenders == [], "\n".join(["move the helper to tests/support/:", *offenders])
