"""A hostile host and hostile config files: a FIFO or a 1 GiB file where a counter should be,
a zone with no range, a lone surrogate in a container name, repeated YAML keys, secrets pasted
in the wrong place. Each gets one clear error, loses nothing, and never crashes the process."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from exporter import cli
from exporter.config import ConfigError, read_yaml
from exporter.sources.rapl import MAX_ZONE_WATTS, RaplSource
from exporter.sources.sysfs import MAX_VALUE_BYTES
from exporter.watchdog import Guard, read_timeout_for
from tests.fakes.kube_api import FakeKubeAPI
from tests.support import (
    Exporter,
    feed_fifo,
    log_lines,
    node_tree,
    parse,
    read_uj,
    require_binary,
    value,
    write_atomic,
    zone_dir,
)
from tests.support.kube import (
    NODE,
    api,
    cid,
    cpu_stat,
    drive,
    in_process,
    node_with_cgroups,
    pod,
    pods_seen,
    wait_for,
)

__all__ = ["api"]  # the fixture, from tests/support/kube.py

# -- the watchdog -------------------------------------------------------------------------------


def test_guard_times_out_stays_blocked_then_hands_over_the_late_result() -> None:
    release = threading.Event()
    calls: list[float] = []

    def read(now: float) -> float:
        calls.append(now)
        if now == 1.0:
            release.wait(30)
        if now == 9.0:
            raise RuntimeError("boom")
        return now * 10

    guard = Guard("test", read, timeout_seconds=0.05)
    assert guard.run(0.0).value == 0.0
    first = guard.run(1.0)
    assert first.hung and first.started_hang and first.value is None and guard.blocked
    second = guard.run(2.0)  # not asked again while blocked: the source's state is the thread's
    assert second.hung and not second.started_hang and calls == [0.0, 1.0]
    release.set()
    wait_for(lambda: not guard.blocked, "the blocked read to return")
    late = guard.run(3.0)
    assert late.late and late.value == 10.0  # the blocked read's own energy, counted once
    assert guard.run(4.0).value == 40.0 and calls == [0.0, 1.0, 4.0]
    failed = guard.run(9.0)
    assert isinstance(failed.error, RuntimeError) and failed.value is None
    assert [t.daemon for t in threading.enumerate() if t.name == "read-test"] == [True]
    guard.close()


@pytest.mark.parametrize(("interval", "timeout"), [(0.05, 0.5), (1.0, 0.5), (5.0, 2.5),
                                                   (60.0, 10.0)])
def test_read_timeout_is_half_the_interval_within_bounds(interval: float, timeout: float) -> None:
    assert read_timeout_for(interval) == timeout


def _rapl_total(series: dict[tuple[str, frozenset[tuple[str, str]]], float], zone: str) -> float:
    return value(series, "footprint_rapl_energy_joules_total", zone=zone, domain="package")


@pytest.mark.slow(seconds=10)  # the real process around a blocked read
def test_a_fifo_at_energy_uj_marks_rapl_down_and_the_ticks_go_on(tmp_path: Path) -> None:
    """The blocked read costs one read timeout; the source is down from the next scrape on; the
    other zone and the estimate go on; the read's energy is counted when it returns."""
    root = node_tree(tmp_path, "intel-2s")
    path = zone_dir(root, "intel-rapl:0") / "energy_uj"
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", "1"]) as exp:
        before = exp.wait_ticks(2)
        assert value(before, "footprint_source_up", source="rapl") == 1.0
        last = read_uj(root, "intel-rapl:0")
        path.unlink()
        os.mkfifo(path)
        series = exp.wait_ticks(2)  # ticks go on: two more within the wait
        assert value(series, "footprint_source_up", source="rapl") == 0.0
        assert value(series, "footprint_exporter_errors_total", source="rapl",
                     reason="timeout") == 1.0
        assert exp.get("/healthz")[0] == 200  # the ticks go on, so the pod is alive
        other = _rapl_total(series, "intel-rapl:1")
        series = exp.wait_ticks(2)
        assert value(series, "footprint_exporter_errors_total", source="rapl",
                     reason="timeout") == 1.0  # one blocked read, counted once
        assert _rapl_total(series, "intel-rapl:1") >= other
        # the blocked read returns with a value 3 J on; then the file is a counter again
        assert feed_fifo(path, f"{last + 3_000_000}\n", time.monotonic() + 10)
        path.unlink()
        write_atomic(path, f"{last + 5_000_000}\n")
        series = exp.wait_ticks(3)
        assert value(series, "footprint_source_up", source="rapl") == 1.0
        assert _rapl_total(series, "intel-rapl:0") == pytest.approx(
            _rapl_total(before, "intel-rapl:0") + 5.0, abs=1e-6)  # nothing lost or doubled
        code = exp.stop()
    assert code == 0
    assert len(list(log_lines(exp.lines, "did not return within 0.5 s"))) == 1
    assert not any("Traceback" in line for line in exp.lines)


def test_a_fifo_at_energy_uj_at_start_up_leaves_rapl_off_and_the_exporter_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The probe is bounded like the reads: start-up goes on without RAPL, the estimate covers
    cpu and dram, and RAPL says why it is off (it was hanging start-up for ever)."""
    root = node_tree(tmp_path, "intel-2s")
    path = zone_dir(root, "intel-rapl:0") / "energy_uj"
    path.unlink()
    os.mkfifo(path)
    settings = cli.parse_settings(["--path.sysfs", str(root / "sys"), "--path.procfs",
                                   str(root / "proc"), "--no-collector.kubernetes",
                                   "--no-collector.nvml"])
    try:
        started = time.monotonic()
        sampler = cli.build_sampler(settings, process_metrics=False, probe_timeout_seconds=0.5)
        assert time.monotonic() - started < 10  # not the test's timeout: it returned at all
        statuses = {s.name: s.status for s in sampler.states}
        assert not statuses["rapl"].enabled and statuses["rapl"].present
        assert "did not return within 0.5 s" in statuses["rapl"].detail
        assert statuses["estimated"].components == {"cpu", "dram"}
        series = parse(sampler.tick().text.decode())
        assert value(series, "footprint_source_up", source="rapl") == 0.0
        owners = {dict(ls)["component"]: dict(ls)["source"] for (n, ls) in series
                  if n == "footprint_node_energy_joules_total"}
        assert owners == {"cpu": "estimated", "dram": "estimated"}
        assert len(list(log_lines([r.getMessage() for r in caplog.records],
                                  "did not return within 0.5 s"))) == 1
        sampler.close()
    finally:  # let the blocked probe return, so its thread ends
        feed_fifo(path, "1\n", time.monotonic() + 5)


@pytest.mark.slow(seconds=3)
def test_sigterm_while_a_read_is_blocked_exits_zero(tmp_path: Path) -> None:
    root = node_tree(tmp_path, "intel-2s")
    path = zone_dir(root, "intel-rapl:0") / "energy_uj"
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--collector.interval", "0.2"]) as exp:
        exp.wait_ticks(2)
        path.unlink()
        os.mkfifo(path)
        exp.wait_ticks(3)
        code = exp.stop(timeout=5)  # the blocked thread is a daemon: it never holds the exit
    assert code == 0
    assert any("a read is still blocked; not closed" in line for line in exp.lines)
    assert any("stopping: the last tick finished" in line for line in exp.lines)


# -- sysfs values ------------------------------------------------------------------------------


def test_a_1_gib_energy_uj_is_never_read_whole(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    root = node_tree(tmp_path, "intel-2s")
    rapl = RaplSource(root / "sys")
    assert rapl.probe().enabled
    path = zone_dir(root, "intel-rapl:0") / "energy_uj"
    with path.open("r+b") as f:  # sparse: 1 GiB of size, no blocks written
        f.seek(0)
        f.write(b"12345")
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        reading = rapl.read(1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # a whole read would allocate the GiB
    assert not reading.up
    assert {z.device for z in reading.measurements} >= {"intel-rapl:0", "intel-rapl:1"}
    assert any(f"holds more than {MAX_VALUE_BYTES} bytes" in r.getMessage()
               for r in caplog.records)


def test_a_zone_without_a_range_refuses_an_impossible_step(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    root = node_tree(tmp_path, "intel-2s")
    zone = zone_dir(root, "intel-rapl:0")
    write_atomic(zone / "max_energy_range_uj", "0\n")
    write_atomic(zone / "energy_uj", "1000000\n")
    rapl = RaplSource(root / "sys")
    assert rapl.probe().enabled
    assert any("max_energy_range_uj 0" in r.getMessage() for r in caplog.records)
    write_atomic(zone / "energy_uj", f"{10**24}\n")  # 1e18 J in a second: garbage
    reading = rapl.read(1.0)
    assert not reading.up and reading.joules.get("cpu", 0.0) < MAX_ZONE_WATTS
    (total,) = [z.joules_total for z in reading.measurements if z.device == "intel-rapl:0"]
    assert total == 0.0
    write_atomic(zone / "energy_uj", f"{10**24 + 40_000_000}\n")  # 40 J: real energy again
    reading = rapl.read(2.0)
    (total,) = [z.joules_total for z in reading.measurements if z.device == "intel-rapl:0"]
    assert reading.up and total == pytest.approx(40.0)


# -- names from the API ------------------------------------------------------------------------


def test_a_lone_surrogate_in_a_container_name_never_breaks_a_tick(
        tmp_path: Path, api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = pod("bad\ud800pod", cid("1"), namespace="ns\udfff")
    hostile["status"]["containerStatuses"][0]["name"] = "c\ud83d"
    hostile["spec"]["containers"][0]["name"] = "c\ud83d"
    api.add_pod(hostile)
    root, sampler, clock = in_process(tmp_path, api, monkeypatch)
    sampler.start()
    try:
        wait_for(lambda: len(pods_seen(sampler)) == 1, "the hostile pod")
        for _ in range(3):
            drive(root, clock, cpu_j=50.0, busy=4.0, usage={cid("1"): 1.0})
            snapshot = sampler.tick()
    finally:
        sampler.close()
    text = snapshot.text.decode("utf-8")  # valid UTF-8 throughout
    series = parse(text)
    (info,) = [dict(ls) for (n, ls) in series if n == "footprint_container_info"]
    assert (info["namespace"], info["pod"], info["container"]) == ("ns?", "bad?pod", "c?")
    assert value(series, "footprint_container_energy_joules_total", pod="bad?pod",
                 component="cpu", mode="dynamic") > 0
    import subprocess

    check = subprocess.run([require_binary("promtool"), "check", "metrics"],
                           input=snapshot.text, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


# -- config files ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    ("basic_auth_users:\n  alice: $2y$10$" + "a" * 53 + "\nbasic_auth_users:\n",
     "basic_auth_users (line 3, first at line 1)"),
    ("tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\ntls_server_config:\n",
     "tls_server_config (line 4, first at line 1)"),
    ("basic_auth_users:\n  alice: $2y$10$" + "a" * 53 + "\n  alice: $2y$04$" + "b" * 53 + "\n",
     "basic_auth_users.alice (line 3, first at line 2)"),
])
def test_a_repeated_web_config_key_exits_2_naming_it(tmp_path: Path, text: str, key: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(text)
    assert cli.main(["--web.config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"duplicate key {key}" in err and len(err.splitlines()) == 1


def test_repeated_keys_are_found_anywhere_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("carbon:\n  electricitymaps:\n    zone: FR\n    refresh_seconds: 60\n"
                    "    refresh_seconds: 90\n")
    with pytest.raises(ConfigError, match=r"duplicate key carbon\.electricitymaps\."
                                          r"refresh_seconds \(line 5, first at line 4\)"):
        read_yaml(path, "--config.file")
    path.write_text("base: &b {a: 1, c: 3}\nover:\n  <<: *b\n  a: 2\n")
    assert read_yaml(path, "--config.file") == {"base": {"a": 1, "c": 3},
                                                "over": {"a": 2, "c": 3}}
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n"
        for i in range(8))
    path.write_text(laughs)  # 10^9 leaves if expanded; nodes shared, so checked once each
    assert isinstance(read_yaml(path, "--config.file"), dict)


def test_an_integer_of_5000_digits_exits_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "footprint.yaml"
    path.write_text("carbon:\n  intensity_grams_per_kwh: " + "9" * 5000 + "\n")
    assert cli.main(["--config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "a number is too long" in err and len(err.splitlines()) == 1


SECRET = "s3cr3t-T0ken-value-that-must-never-be-printed"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC" + SECRET + "\n"


@pytest.mark.parametrize(("flag", "text"), [
    ("--web.config.file", f'basic_auth_users: "alice:{SECRET}"\n'),
    ("--web.config.file", f"basic_auth_users:\n  alice: {SECRET}\n"),
    ("--web.config.file", f'basic_auth_users:\n  "alice:{SECRET}": x\n'),
    ("--web.config.file", f"basic_auth_users: $2y$10${SECRET}\n"),
    ("--web.config.file", f"tls_server_config: {SECRET}\n"),
    ("--web.config.file", f"tls_server_config:\n  cert_file: {SECRET}\n  key_file: k\n"),
    ("--web.config.file", "tls_server_config:\n  cert_file: CERT\n  key_file: |\n    "
                          + PEM.replace("\n", "\n    ")),
    ("--config.file", f"carbon:\n  provider: electricitymaps\n  zone: FR\n"
                      f"  electricitymaps:\n    token_file: {SECRET}\n"),
    ("--config.file", f"carbon:\n  provider: electricitymaps\n  zone: FR\n"
                      f"  electricitymaps:\n    token_env: {SECRET}\n"),
    ("--config.file", "carbon:\n  provider: electricitymaps\n  zone: FR\n"
                      "  electricitymaps:\n    token_env: 8675309123456789\n"),
    ("--config.file", f"carbon:\n  provider: watttime\n  watttime:\n    region: CAISO_NORTH\n"
                      f"    username: u\n    password_file: {SECRET}\n"),
    ("--config.file", f"carbon:\n  provider: watttime\n  watttime:\n    region: CAISO_NORTH\n"
                      f"    username: u\n    password_env: {SECRET}\n"),
])
def test_no_secret_appears_in_a_start_up_error(tmp_path: Path, flag: str, text: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = node_tree(tmp_path, "intel-2s")
    cert = Path(__file__).parent / "fixtures"
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("CERT", str(next(cert.rglob("*.pem"), cert / "none.pem"))))
    code = cli.main(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                     "--no-collector.kubernetes", "--no-collector.nvml", flag, str(path)])
    out = capsys.readouterr()
    assert code == 2, out.err
    errors = [line for line in out.err.splitlines() if "error" in line]
    assert errors, out.err
    for leaked in (SECRET, "MIIEvQ", "8675309123456789"):
        assert leaked not in out.out + out.err, out.err


@pytest.mark.slow(seconds=6)
def test_a_hung_cgroup_read_leaves_containers_unknown_and_sigterm_still_ends_it(
        tmp_path: Path, api: FakeKubeAPI) -> None:
    """A container's cpu.stat becomes a FIFO (a hung cgroup file): the tick's host reads are
    guarded like a source's, so the ticks go on, the timeout is counted once, and SIGTERM ends
    the process at once though the read is still blocked."""
    root = node_with_cgroups(tmp_path)
    api.add_pod(pod("worker", cid("1")))
    config = tmp_path / "footprint.yaml"
    config.write_text(f"kubernetes:\n  kubeconfig: {api.write_kubeconfig(tmp_path / 'kc')}\n")
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--config.file", str(config), "--collector.interval", "1"],
                  env={"NODE_NAME": NODE}) as exp:
        deadline = time.monotonic() + 30
        while not [n for (n, labels) in exp.wait_ticks(1)
                   if n == "footprint_container_info" and ("pod", "worker") in labels]:
            assert time.monotonic() < deadline, "the pod never showed"
        stat = cpu_stat(root, cid("1"))
        stat.unlink()
        os.mkfifo(stat)
        series = exp.wait_ticks(3)  # the ticks go on
        assert value(series, "footprint_exporter_errors_total", source="cgroups",
                     reason="timeout") == 1.0
        assert exp.get("/healthz")[0] == 200
        started = time.monotonic()
        code = exp.stop(timeout=10)
        stopped_in = time.monotonic() - started
    assert code == 0, f"exit {code} after {stopped_in:.1f} s"
    assert len(list(log_lines(exp.lines, "or /proc did not return within"))) == 1
