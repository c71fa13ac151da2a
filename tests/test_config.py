"""Bad configuration stops start-up with exit code 2 and one line naming the key."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import cli
from exporter.config import WORLD_AVERAGE_GRAMS_PER_KWH, ConfigError, parse_file_config
from tests.support import REPO


def test_defaults() -> None:
    config = parse_file_config(None)
    assert config.carbon.intensity_grams_per_kwh is None  # the node's region, else 475
    assert config.carbon.provider == "static"
    assert WORLD_AVERAGE_GRAMS_PER_KWH == 475.0
    assert config.sources["estimate"].cpu_idle_watts_per_vcpu == 0.74


def test_a_full_valid_file() -> None:
    config = parse_file_config({
        "carbon": {"zone": "FR", "intensity_grams_per_kwh": 57},
        "estimate": {"cpu_idle_watts_per_vcpu": 0.71, "cpu_max_watts_per_vcpu": 4.26,
                     "dram_watts_per_gb": 0.4},
        "attribution": {"idle_watts": {"cpu": 40, "dram": 5.5}, "idle_percentile": 10,
                        "idle_window_seconds": 600},
    })
    assert config.carbon.intensity_grams_per_kwh == 57.0
    assert dict(config.attribution.idle_watts) == {"cpu": 40.0, "dram": 5.5}


def test_water_settings() -> None:
    config = parse_file_config({"water": {"wue_liters_per_kwh": 0.2,
                                          "grid_by_zone": {"FR": 2, "US-CAL-CISO": 3.1}}})
    assert config.water.wue_liters_per_kwh == 0.2
    assert dict(config.water.grid_by_zone) == {"FR": 2.0, "US-CAL-CISO": 3.1}
    assert (config.water.wue_default, config.water.grid_default) == (1.8, 7.6)
    assert parse_file_config(None).water.grid_liters_per_kwh is None
    with pytest.raises(ConfigError, match=r"^water\.grid_default: expected a number >= 0 and "
                                          r"<= 100, got 'dry'$"):
        parse_file_config({"water": {"grid_default": "dry"}})


@pytest.mark.parametrize(("data", "message"), [
    ({"carbn": {}}, "carbn: unknown key (expected one of: carbon, estimate, attribution, "
                    "kubernetes, models, embodied, pue, water)"),
    ({"carbon": {"intensity": 5}},
     "carbon.intensity: unknown key (expected one of: provider, zone, intensity_grams_per_kwh, "
     "max_age_seconds, electricitymaps, watttime)"),
    ({"carbon": {"intensity_grams_per_kwh": "high"}},
     "carbon.intensity_grams_per_kwh: expected a number >= 0 and <= 5000, got 'high'"),
    ({"carbon": {"intensity_grams_per_kwh": -1}},
     "carbon.intensity_grams_per_kwh: expected a number >= 0 and <= 5000, got -1"),
    ({"carbon": {"intensity_grams_per_kwh": True}},
     "carbon.intensity_grams_per_kwh: expected a number >= 0 and <= 5000, got True"),
    ({"carbon": {"zone": 7}}, "carbon.zone: expected a string, got 7"),
    ({"carbon": []}, "carbon: expected a mapping, got list"),
    (["carbon"], "the top level: expected a mapping, got list"),
    ({"attribution": {"idle_watts": {"gpu0": 3}}},
     "attribution.idle_watts.gpu0: unknown key (expected one of: cpu, dram, gpu)"),
    ({"carbon": {"provider": "electricitymaps", "zone": "FR"}},
     "carbon.electricitymaps.token_file: expected the path of the auth-token (or "
     "carbon.electricitymaps.token_env) with provider electricitymaps"),
    ({"carbon": {"provider": "watttime"}},
     "carbon.watttime: expected region, username and password_file (or password_env) with "
     "provider watttime"),
    ({"carbon": {"provider": "co2signal"}},
     "carbon.provider: expected one of static, electricitymaps, watttime, got 'co2signal'"),
    ({"estimate": {"cpu_idle_watts_per_vcpu": 5, "cpu_max_watts_per_vcpu": 4}},
     "estimate.cpu_max_watts_per_vcpu: expected a number >= "
     "estimate.cpu_idle_watts_per_vcpu (5), got 4"),
])
def test_errors_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_file_config(data)
    assert str(err.value) == message


def test_invalid_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "footprint.yaml"
    path.write_text("carbon:\n  zone: FR\n  intensity_grams_per_kwh: [57\n")
    assert cli.main(["--config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--config.file {path}: not valid YAML at line" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config.file", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read it (No such file or directory)" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--collector.interval", "0"], "argument --collector.interval: expected seconds between"),
    (["--collector.interval", "fast"], "argument --collector.interval: expected seconds > 0"),
    (["--web.listen-address", "9835"], "argument --web.listen-address: expected host:port"),
    (["--log.level", "loud"], "argument --log.level: invalid choice: 'loud'"),
    (["--collector.dcgm"], "unrecognized arguments: --collector.dcgm"),
    (["--web.telemetry-path", "metrics"], "--web.telemetry-path: expected a path starting"),
])
def test_bad_flags_exit_2_with_one_line(argv: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_config_file_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "footprint.yaml"
    path.write_text("carbon:\n  intensity_grams_per_kwh: lots\n")
    result = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == (
        f"footprint-exporter: error: --config.file {path}: carbon.intensity_grams_per_kwh: "
        "expected a number >= 0 and <= 5000, got 'lots'\n")


def test_collector_flags_switch_sources() -> None:
    settings = cli.parse_settings(["--no-collector.rapl", "--collector.interval", "0.5"])
    assert settings.collectors == {"rapl": False, "estimate": True, "nvml": True,
                                   "hwmon": True, "kubernetes": True}
    assert settings.interval_seconds == 0.5


# --- one schema, one place per default -------------------------------------------------------


def test_the_providers_and_the_chain_take_their_defaults_from_the_config() -> None:
    from exporter.config import CarbonSettings, ElectricityMapsSettings, WattTimeSettings
    from exporter.intensity import DEFAULT_MAX_AGE_SECONDS, ElectricityMaps, FallbackChain, WattTime
    from exporter.kube import podresources

    for provider, settings in ((ElectricityMaps, ElectricityMapsSettings()),
                               (WattTime, WattTimeSettings())):
        parameters = inspect.signature(provider).parameters
        for name in ("base_url", "timeout_seconds", "refresh_seconds"):
            assert parameters[name].default == getattr(settings, name), (provider, name)
    assert (ElectricityMapsSettings().refresh_seconds, WattTimeSettings().refresh_seconds) == (
        900.0, 300.0)
    max_age = inspect.signature(FallbackChain).parameters["max_age_seconds"].default
    assert max_age == DEFAULT_MAX_AGE_SECONDS == CarbonSettings().max_age_seconds == 7200.0
    assert not hasattr(podresources, "DEFAULT_SOCKET")  # the config's default is the only one
    assert parse_file_config(None).kubernetes.pod_resources_socket == (
        "/var/lib/kubelet/pod-resources/kubelet.sock")


def _imports(path: Path, package: str) -> set[str]:
    """The exporter modules a module imports, anywhere in it (inside functions too), with the
    packages whose __init__ that runs."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    out = set()
    for name in found:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            if not package.startswith(ancestor):  # a module's own packages are already there
                out.add(ancestor)
    return out


def test_the_exporter_package_has_no_import_cycle() -> None:
    modules = {}
    for path in (REPO / "exporter").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {name: {m for m in _imports(path, name.rpartition(".")[0]) if m in modules} - {name}
             for name, path in modules.items()}
    assert graph["exporter.schema"] == set()  # imports nothing from the project
    assert "exporter.config" not in graph["exporter.models"]
    assert "exporter.config" not in graph["exporter.webconfig"]

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            name, path = stack.pop()
            for dep in graph[name]:
                if dep == start:
                    return [*path, start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c is not None]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["exporter.schema", "exporter.config", "exporter.models",
                                    "exporter.webconfig"])
def test_each_config_module_imports_on_its_own(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_log_format_json_writes_one_object_per_line() -> None:
    import json
    import logging

    from exporter import logs

    record = logging.LogRecord("footprint.test", logging.WARNING, __file__, 1,
                               'a "quoted"\nmessage', None, None)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    assert {k: v for k, v in json.loads(line).items() if k != "time"} == {
        "level": "warn", "logger": "footprint.test", "msg": 'a "quoted"\nmessage'}
    assert cli.parse_settings(["--log.format", "json"]).log_format == "json"
    assert cli.parse_settings([]).log_format == "logfmt"
    with pytest.raises(SystemExit) as exc:
        cli.parse_settings(["--log.format", "xml"])
    assert exc.value.code == 2


def test_log_fields_follow_msg_in_logfmt_and_json() -> None:
    """Facts travel as fields (issue 20): bare where logfmt allows, quoted with escapes where
    a value could end the field or the line, never replacing a fixed key."""
    import json
    import logging

    from exporter import logs

    record = logging.LogRecord("footprint.rapl", logging.WARNING, __file__, 1,
                               "zone intel-rapl:0 skipped", None, None)
    for key, value in logs.fields(source="rapl", path="/sys/a b/\"x\"\n\x1b[2J",
                                  err="Permission denied", container=None,
                                  msg="forged").items():
        setattr(record, key, value)
    line = logs.LogfmtFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line
    assert line.split(' msg="zone intel-rapl:0 skipped" ', 1)[1] == (
        'source=rapl path="/sys/a b/\\"x\\"\\n\\u001b[2J" err="Permission denied" '
        'field_msg=forged')
    parsed = json.loads(logs.JsonFormatter().format(record))
    assert {k: v for k, v in parsed.items() if k != "time"} == {
        "level": "warn", "logger": "footprint.rapl", "msg": "zone intel-rapl:0 skipped",
        "source": "rapl", "path": "/sys/a b/\"x\"\n\x1b[2J", "err": "Permission denied",
        "field_msg": "forged"}


def test_report_is_in_the_top_level_help() -> None:
    text = cli.build_parser().format_help()
    assert "report" in text.split("commands:")[1]
