"""exporter.secrets, the one rule for a secret read from a file or a variable (issue 21): the
whitespace around it removed, UTF-8, one line, not empty, at most 64 KiB, and an error that
names the file only through `shown_path` and never shows a byte of the content. The report's
secret files and the intensity credentials use it, and say the same."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from exporter import report, secrets
from exporter.config import ConfigError
from exporter.intensity import Secret
from exporter.schema import shown_path

TOKEN = "Zq7Rk2Wm9Xv4Tn8Lp3Hs6Jd"


def write(tmp_path: Path, data: bytes, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data", [
    TOKEN.encode(), f"{TOKEN}\n".encode(), f"{TOKEN}\r\n".encode(), f"  {TOKEN}\t\n\n".encode(),
    f"\n{TOKEN}\n".encode(), "pa55 wörd\twith inner blanks\n".encode()])
def test_the_secret_is_the_file_without_the_whitespace_around_it(tmp_path: Path,
                                                                 data: bytes) -> None:
    assert secrets.read_secret_file(write(tmp_path, data)) == data.decode().strip()


REFUSED: list[tuple[bytes, str, str]] = [
    (b"", "empty", "{shown} is empty"),
    (b" \r\n\n", "empty", "{shown} is empty"),
    (f"{TOKEN}\nsecond-{TOKEN}\n".encode(), "lines", "{shown} holds more than one line"),
    (f"{TOKEN}\rsecond-{TOKEN}".encode(), "lines", "{shown} holds more than one line"),
    (f"{TOKEN}\0{TOKEN}".encode(), "control",
     "{shown} holds a control character, as no token or password does"),
    (b"\xff" + TOKEN.encode(), "encoding", "{shown} is not UTF-8 text"),
    (TOKEN.encode() + b"t" * (65 << 10), "unreadable",
     "cannot read {shown} (65.0 KiB, over the 64 KiB limit for this file; not read)"),
]
"""(content, reason, message) for each file that is not one secret."""


def test_what_is_not_one_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    for data, reason, message in REFUSED:
        path = write(tmp_path, data)
        with pytest.raises(secrets.SecretError) as exc:
            secrets.read_secret_file(path)
        assert (exc.value.reason, str(exc.value)) == (reason,
                                                      message.format(shown=shown_path(path)))
        assert "Zq7Rk" not in str(exc.value)
    for path, text in ((tmp_path / "missing", "No such file or directory"),
                       (tmp_path, "a directory, not a regular file")):
        with pytest.raises(secrets.SecretError) as exc:
            secrets.read_secret_file(path)
        assert (exc.value.reason, str(exc.value)) == (
            "unreadable", f"cannot read {shown_path(path)} ({text})")
        assert str(path) in str(exc.value)  # an absolute path in an existing directory


def test_a_name_that_may_be_a_pasted_secret_is_not_shown(tmp_path: Path) -> None:
    for name in (TOKEN, f"/no/such/dir/{TOKEN}"):
        with pytest.raises(secrets.SecretError) as exc:
            secrets.read_secret_file(Path(name))
        assert TOKEN not in str(exc.value)
        assert str(exc.value).startswith(f"cannot read a name of {len(name)} characters (not "
                                         "shown")


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            secrets.read_secret_file(fifo)
        except secrets.SecretError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "read_secret_file blocked on a FIFO"
    assert [str(e) for e in outcome] == [f"cannot read {shown_path(fifo)} (a FIFO, not a "
                                         "regular file)"]


def test_an_unreadable_file(tmp_path: Path) -> None:
    """Unreadable for every user, root included (chmod 0 would not stop root): a path through
    a regular file."""
    path = write(tmp_path, TOKEN.encode()) / "token"
    with pytest.raises(secrets.SecretError, match=r"\(Not a directory\)$"):
        secrets.read_secret_file(path)


def test_the_report_and_the_intensity_credentials_say_the_same(tmp_path: Path) -> None:
    """One rule, two callers: each puts its setting in front and its fix after."""
    for data, _, text in REFUSED[:3]:
        path = write(tmp_path, data)
        message = text.format(shown=shown_path(path))
        with pytest.raises(report.ReportError) as from_report:
            report.read_secret_file(str(path), "--bearer-token-file", "token")
        with pytest.raises(ConfigError) as from_config:
            Secret.load(file=str(path), key="carbon.electricitymaps.token_file")
        assert str(from_report.value).startswith(f"--bearer-token-file: {message}; give ")
        assert str(from_config.value) == f"carbon.electricitymaps.token_file: {message}"
    token = write(tmp_path, f"  {TOKEN}\r\n".encode())
    assert report.read_secret_file(str(token), "--bearer-token-file", "token") == TOKEN
    secret = Secret.load(file=str(token), key="carbon.electricitymaps.token_file")
    assert secret.reveal() == TOKEN
    assert repr(secret) == f"Secret(file {shown_path(token)})"  # the path as errors show it


def test_a_variable_follows_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "carbon.electricitymaps.token_file"
    monkeypatch.setenv("FOOTPRINT_TEST_TOKEN", f" {TOKEN}\r\n")
    assert Secret.load(env="FOOTPRINT_TEST_TOKEN", key=key).reveal() == TOKEN
    monkeypatch.setenv("FOOTPRINT_TEST_TOKEN", f"{TOKEN}\n{TOKEN}")
    with pytest.raises(ConfigError) as exc:
        Secret.load(env="FOOTPRINT_TEST_TOKEN", key=key)
    assert str(exc.value) == ("carbon.electricitymaps.token_env: environment variable "
                              "FOOTPRINT_TEST_TOKEN holds more than one line")


def test_a_reload_keeps_the_value_when_the_file_holds_no_secret(tmp_path: Path) -> None:
    path = write(tmp_path, b"first\n")
    secret = Secret.load(file=str(path), key="carbon.watttime.password_file")
    for data in (b"\n", b"two\nlines\n", b"\xff"):
        path.write_bytes(data)
        secret.reload()
        assert secret.reveal() == "first"
    path.write_bytes(b"second\r\n")
    secret.reload()
    assert secret.reveal() == "second"
