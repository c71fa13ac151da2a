"""Issue 19, config: YAML 1.2, bounded reads of every start-up file, bcrypt cost and fairness,
and no secret in any error. Each test here failed before the fix it names."""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from exporter import cli, webconfig
from exporter.config import ConfigError, load_file_config
from exporter.facts import lifecycle_facts
from exporter.intensity.credentials import MAX_SECRET_BYTES, Secret
from exporter.schema import MAX_YAML_BYTES, FileRefused, read_file, read_yaml
from exporter.webconfig import BasicAuth, BcryptPool, Verdict, load_web_config
from tests.support import REPO, node_tree, require_binary


def write(tmp_path: Path, text: str, name: str = "footprint.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bcrypt_hash(password: bytes, cost: int) -> bytes:
    return bcrypt.hashpw(password, bcrypt.gensalt(cost)).replace(b"$2b$", b"$2y$", 1)


def fake_hash(cost: int) -> str:
    """A well-formed hash of `cost` (parse_users checks the form only): no 2^cost wait."""
    return f"$2y${cost:02}$" + "a" * 53


# --- YAML 1.2 -------------------------------------------------------------------------------


def test_norway_is_a_zone_not_false(tmp_path: Path) -> None:
    path = write(tmp_path, "pue:\n  by_zone: {NO: 1.2, SE: 1.1}\n"
                           "water:\n  wue_by_zone: {NO: 0.3}\n  grid_by_zone:\n    NO: 2\n"
                           "embodied:\n  gpu_grams_by_product: {3090: 100, A100: 200}\n")
    config = load_file_config(path)
    assert dict(config.pue.by_zone) == {"NO": 1.2, "SE": 1.1}
    assert dict(config.water.wue_by_zone) == {"NO": 0.3}
    assert dict(config.water.grid_by_zone) == {"NO": 2.0}
    assert "3090" in config.embodied.gpu_grams_by_product
    facts = lifecycle_facts(embodied=config.embodied, pue=config.pue, labels={},
                            provider_id="", zone="NO", gpus=(), water=config.water)
    assert (facts.pue, facts.pue_source) == (1.2, "zone NO")
    assert (facts.wue, facts.grid_water) == (0.3, 2.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("0400", 400),  # YAML 1.1: octal, 256
    ("0x1F", 31),
    ("0o17", 15),
    ("+12", 12),
    ("1e3", 1000.0),
    ("-.inf", float("-inf")),
    ("1:30", "1:30"),  # YAML 1.1: sexagesimal, 90
    ("1_000", "1_000"),  # YAML 1.1: 1000
    ("NO", "NO"), ("yes", "yes"), ("off", "off"), ("On", "On"), ("y", "y"),
    ("true", True), ("False", False), ("TRUE", True),
    ("~", None), ("null", None), ("", None),
    ("2024-01-01", "2024-01-01"),  # YAML 1.1: a date
    ("=", "="),  # YAML 1.1: a "value" tag PyYAML cannot construct
])
def test_scalars_are_read_as_yaml_1_2_core_schema(tmp_path: Path, text: str,
                                                  expected: object) -> None:
    data = read_yaml(write(tmp_path, f"v: {text}\n{text or 'empty'}: key\n"), "--config.file")
    assert isinstance(data, dict)
    assert data["v"] == expected and type(data["v"]) is type(expected)
    assert data[text or "empty"] == "key"  # a plain key is always the string written


@pytest.mark.parametrize(("text", "message"), [
    ("carbon:\n  intensity_grams_per_kwh: 1:30\n",
     "carbon.intensity_grams_per_kwh: expected a number >= 0 and <= 5000, got '1:30'"),
    ("models:\n  default_rules: no\n",
     "models.default_rules: expected true or false, got 'no'\n"),
    ("carbon:\n  intensity_grams_per_kwh: !!bool yes\n", "not valid YAML at line 2"),
    ("carbon:\n  intensity_grams_per_kwh: !!int 1_0\n", "not valid YAML at line 2"),
    ("carbon:\n  intensity_grams_per_kwh: 0x" + "f" * 5000 + "\n",
     "not valid YAML: a number is too long"),
    ("carbon:\n  intensity_grams_per_kwh: " + "9" * 4000 + "\n",  # was a traceback
     "carbon.intensity_grams_per_kwh: expected a number >= 0 and <= 5000, got an integer of "
     "4000 digits"),
])
def test_yaml_1_1_readings_are_refused_in_one_line(tmp_path: Path, text: str, message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    assert cli.main(["--config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_web_config_reads_yaml_1_2_too(tmp_path: Path) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  NO: {fake_hash(10)}\n  0400: "
                           f"{fake_hash(10)}\n", "web.yml")
    assert sorted(load_web_config(path).users) == ["0400", "NO"]
    path.write_text("http_server_config:\n  http2: off\n")
    with pytest.raises(ConfigError, match=r"http_server_config\.http2: expected true or false, "
                                          r"got 'off'$"):
        load_web_config(path)


# --- every file read at start-up: bounded, regular files only --------------------------------


def test_read_file_bounds_and_kinds(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_file(path, 100) == b"x" * 100
    with pytest.raises(FileRefused, match=r"^100 bytes, over the 99 bytes limit"):
        read_file(path, 99)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for other, kind in ((fifo, "a FIFO"), (tmp_path, "a directory"),
                        (Path("/dev/zero"), "a character device")):
        with pytest.raises(FileRefused, match=rf"^{kind}, not a regular file$"):
            read_file(other, 1 << 20)
    with pytest.raises(FileRefused, match=r"^No such file or directory$"):
        read_file(tmp_path / "missing", 1)


def test_a_50_mb_config_is_refused_unread(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(50 << 20)
    start = time.monotonic()
    assert cli.main(["--config.file", str(path)]) == 2
    assert time.monotonic() - start < 5
    assert capsys.readouterr().err == (
        f"footprint-exporter: error: --config.file {path}: cannot read it (50 MiB, over the "
        "256 KiB limit for this file; not read)\n")
    # just over the limit, in valid YAML that was parsed before: refused, not parsed
    path.write_text("".join(f"k{i}: {i}\n" for i in range(MAX_YAML_BYTES // 8)))
    assert path.stat().st_size > MAX_YAML_BYTES
    assert cli.main(["--web.config.file", str(path)]) == 2
    assert "over the 256 KiB limit" in capsys.readouterr().err


def _secret_config(tmp_path: Path, token_file: Path) -> Path:
    return write(tmp_path, "carbon:\n  provider: electricitymaps\n  zone: FR\n"
                           f"  electricitymaps:\n    token_file: {token_file}\n")


@pytest.fixture(scope="module")
def cert_and_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([require_binary("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "k.pem", "-out",
                    "c.pem", "-days", "2", "-subj", "/CN=127.0.0.1"], cwd=d, check=True,
                   capture_output=True, timeout=30)
    return d / "c.pem", d / "k.pem"


@pytest.mark.parametrize("what", ["config", "web config", "cert_file", "key_file",
                                  "client_ca_file", "token_file"])
def test_a_fifo_stops_start_up_with_one_line(tmp_path: Path, what: str,
                                             cert_and_key: tuple[Path, Path]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    root = node_tree(tmp_path, "intel-2s")
    args = ["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
            "--no-collector.kubernetes", "--no-collector.nvml"]
    if what == "config":
        args += ["--config.file", str(fifo)]
    elif what == "web config":
        args += ["--web.config.file", str(fifo)]
    elif what == "token_file":
        args += ["--config.file", str(_secret_config(tmp_path, fifo))]
    else:
        cert, key = cert_and_key
        tls = {"cert_file": str(cert), "key_file": str(key), what: str(fifo)}
        if what == "client_ca_file":
            tls["client_auth_type"] = "RequireAndVerifyClientCert"
        lines = "".join(f"  {k}: {v}\n" for k, v in tls.items())
        args += ["--web.config.file", str(write(tmp_path, f"tls_server_config:\n{lines}",
                                                "web.yml"))]
    # before: start-up waited for a writer on the FIFO, silently, for ever
    result = subprocess.run([sys.executable, "-m", "exporter", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "(a FIFO, not a regular file)" in lines[0], lines[0]


def test_secret_files_are_bounded_and_a_fifo_never_blocks_a_reload(tmp_path: Path) -> None:
    key = "carbon.electricitymaps.token_file"
    big = tmp_path / "big"
    big.write_text("t" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(ConfigError, match=r"cannot read .*\(64.0 KiB|cannot read .*over the 64 "):
        Secret.load(file=str(big), key=key)
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    secret = Secret.load(file=str(token), key=key)
    token.unlink()
    os.mkfifo(token)  # a rotated Secret that is now a FIFO: keep the old value, do not wait
    reload = threading.Thread(target=secret.reload, daemon=True)
    reload.start()
    reload.join(5)
    assert not reload.is_alive(), "reload() blocked on a FIFO"
    assert secret.reveal() == "t0ken"


# --- bcrypt: cost, decoy, timing, fairness ----------------------------------------------------


@pytest.mark.parametrize("cost", [15, 31])
def test_a_bcrypt_cost_above_14_is_refused_saying_why(tmp_path: Path, cost: int) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  alice: {fake_hash(cost)}\n", "web.yml")
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    text = str(err.value)
    assert (f"web.yml: basic_auth_users.alice: expected a bcrypt hash of cost 14 or less, got "
            f"cost {cost}: each wrong password would hold a bcrypt worker for about ") in text
    assert "shutdown waits for it" in text and "cost 10 to 12" in text
    assert "aaaaaaaa" not in text and "\n" not in text
    path.write_text(f"basic_auth_users:\n  alice: {fake_hash(14)}\n")
    assert list(load_web_config(path).users) == ["alice"]


def test_the_decoy_runs_at_the_typical_cost_not_the_highest() -> None:
    def users(*costs: int) -> dict[str, bytes]:
        return {f"u{i}": fake_hash(c).encode() for i, c in enumerate(costs)}

    assert BasicAuth(users(4, 6, 5)).decoy[4:6] == b"05"
    assert BasicAuth(users(10, 10, 14)).decoy[4:6] == b"10"
    assert BasicAuth(users(4, 14)).decoy[4:6] == b"04"
    assert BasicAuth(users(12)).decoy[4:6] == b"12"
    assert webconfig.BCRYPT_HASH.fullmatch(BasicAuth(users(10)).decoy.decode())


async def _timings(auth: BasicAuth, *users: str, runs: int = 9) -> list[float]:
    """The median time of a wrong password for each user, measured in turns so that a busy
    machine slows them all alike."""
    seconds: dict[str, list[float]] = {user: [] for user in users}
    for i in range(runs):
        for user in users:
            start = time.perf_counter()
            assert await auth.verdict(basic(user, f"wrong-{i}"), "10.0.0.9") is Verdict.DENIED
            seconds[user].append(time.perf_counter() - start)
    return [statistics.median(seconds[user]) for user in users]


async def test_a_cheap_hash_or_an_unknown_user_answers_as_slowly_as_the_dearest() -> None:
    cheap = bcrypt_hash(b"pw", 4)
    auth = BasicAuth({"cheap": cheap, "a": bcrypt_hash(b"pw", 8), "b": bcrypt_hash(b"pw", 8)})
    await _timings(auth, "a", runs=2)  # the first runs measure this machine
    known, unknown, dear = await _timings(auth, "cheap", "nobody", "a")
    # before: cost 4 answered in ~1 ms, the cost-8 decoy in ~17 ms (16x)
    assert 1 / 3 < known / unknown < 3, (known, unknown)
    assert 1 / 3 < known / dear < 3, (known, dear)
    # the decoy's CPU is the typical cost; the dearest user's time is reached by waiting
    auth = BasicAuth({"a": cheap, "b": cheap, "dear": bcrypt_hash(b"pw", 8)})
    assert auth.decoy[4:6] == b"04"
    await _timings(auth, "dear", runs=2)
    unknown, dear = await _timings(auth, "nobody", "dear")
    assert 1 / 3 < unknown / dear < 3, (unknown, dear)
    assert await auth.verdict(basic("a", "pw"), "10.0.0.9") is Verdict.OK


class Gate:
    """`_checkpw` of passwords starting with "wrong" blocks until the gate opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        real: Callable[[bytes, bytes], bool] = webconfig._checkpw

        def gated(password: bytes, hashed: bytes) -> bool:
            if password.startswith(b"wrong"):
                assert self.open.wait(30), "the gate was never opened"
            return real(password, hashed)

        monkeypatch.setattr(webconfig, "_checkpw", gated)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_wrong_passwords_from_many_addresses_cannot_shut_out_a_first_login(
        monkeypatch: pytest.MonkeyPatch) -> None:
    alice = bcrypt_hash(b"pw", 4)
    auth = BasicAuth({"alice": alice})
    flooders = [f"10.0.{i}.1" for i in range(40)]
    # each address fails once (then it is known to have failed)
    assert await asyncio.gather(*(auth.verdict(basic("alice", "bad"), a)
                                  for a in flooders)) == [Verdict.DENIED] * 40
    gate = Gate(monkeypatch)
    flood = [asyncio.ensure_future(auth.verdict(basic("alice", f"wrong-{i}"), address))
             for address in flooders for i in range(5)]
    await until(lambda: auth.pool.waiting == 64)  # every queue full: before, all else got 429
    assert auth.pool.busy == 1  # addresses that failed hold one worker of two together
    # a first valid login from a new address: the reserved worker, at once
    assert await asyncio.wait_for(auth.verdict(basic("alice", "pw"), "10.9.9.9"), 10) is (
        Verdict.OK)
    # with that worker taken too (a new address's first, wrong, try), a new address's login
    # takes the place of a failed address's queued check and is served before all of them
    auth._verified.clear()
    fresh = asyncio.ensure_future(auth.verdict(basic("alice", "wrong-new"), "10.8.8.8"))
    await until(lambda: auth.pool.busy == 2)
    login = asyncio.ensure_future(auth.verdict(basic("alice", "pw"), "10.7.7.7"))
    await until(lambda: sum(f.done() for f in flood) == 136)  # 135 at once, 1 taken over
    assert auth.pool.waiting == 64 and not login.done()
    gate.open.set()
    assert await asyncio.wait_for(login, 10) is Verdict.OK
    assert await asyncio.wait_for(fresh, 10) is Verdict.DENIED
    results = await asyncio.wait_for(asyncio.gather(*flood), 60)
    assert results.count(Verdict.BUSY) >= 136 and Verdict.OK not in results
    assert (auth.pool.busy, auth.pool.waiting) == (0, 0)


async def test_a_success_clears_an_address_and_the_table_is_bounded() -> None:
    pool = BcryptPool(2, tried_addresses=3)
    auth = BasicAuth({"alice": bcrypt_hash(b"pw", 4)}, pool)
    for address in ("a", "b", "c", "d"):
        assert await auth.verdict(basic("alice", "bad"), address) is Verdict.DENIED
    assert [pool.tried(a) for a in "abcd"] == [False, True, True, True]  # a forgotten
    assert await auth.verdict(basic("alice", "pw"), "c") is Verdict.OK
    assert not pool.tried("c")


# --- no secret in any error -------------------------------------------------------------------

TOKEN = "Zq7Rk2Wm9Xv4Tn8Lp3Hs6Jd"  # a token-like value that is also a valid variable name


@pytest.mark.parametrize("setting", ["electricitymaps", "watttime"])
def test_a_token_pasted_into_token_env_is_not_printed(
        tmp_path: Path, setting: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(TOKEN, raising=False)
    section = ("  electricitymaps:\n    token_env: " + TOKEN if setting == "electricitymaps"
               else "  watttime:\n    region: CAISO_NORTH\n    username: u\n"
                    "    password_env: " + TOKEN)
    zone = "  zone: FR\n" if setting == "electricitymaps" else ""
    path = write(tmp_path, f"carbon:\n  provider: {setting}\n{zone}{section}\n")
    root = node_tree(tmp_path, "intel-2s")
    code = cli.main(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                     "--no-collector.kubernetes", "--no-collector.nvml",
                     "--config.file", str(path)])
    out = capsys.readouterr()
    assert code == 2
    assert TOKEN not in out.out + out.err
    assert "is not shown: it does not look like a variable name" in out.err
    assert len([line for line in out.err.splitlines() if "error" in line]) == 1


def test_a_conventional_variable_name_is_still_named() -> None:
    with pytest.raises(ConfigError, match="environment variable EM_TOKEN_2 is unset or empty"):
        Secret.load(env="EM_TOKEN_2", key="carbon.electricitymaps.token_file")
    with pytest.raises(ConfigError) as err:
        Secret.load(env="ABCDEFGHJKLMNPQRSTUVWXYZ23456789", key="carbon.electricitymaps.token_file")
    assert "ABCDEFGH" not in str(err.value)


@pytest.mark.parametrize("text", [
    f'basic_auth_users:\n  "{fake_hash(10)}": x\n',
    f'basic_auth_users:\n  "{fake_hash(10)}": {fake_hash(10)}\n',
    f'basic_auth_users:\n  "{fake_hash(10)}":\n',
    f"basic_auth_users:\n  {TOKEN}: x\n",
    f"basic_auth_users:\n  {TOKEN}: {fake_hash(10)}\n  {TOKEN}: {fake_hash(10)}\n",
    f"tls_server_config:\n  {TOKEN}: x\n",
])
def test_a_hash_or_token_pasted_as_a_name_is_not_printed(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, "web.yml")
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    shown = str(err.value)
    assert "aaaaaaaaaa" not in shown and TOKEN not in shown, shown
    assert "not shown" in shown and "\n" not in shown


def test_a_token_pasted_as_a_config_key_is_not_printed(tmp_path: Path) -> None:
    path = write(tmp_path, f"carbon:\n  electricitymaps:\n    {TOKEN}: 1\n")
    with pytest.raises(ConfigError) as err:
        load_file_config(path)
    assert TOKEN not in str(err.value)
    assert "carbon.electricitymaps.<a key of 23 characters, not shown" in str(err.value)
