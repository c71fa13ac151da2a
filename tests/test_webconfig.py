"""`--web.config.file`: TLS, client certificates, basic auth and headers on a real socket."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter import cli, webconfig
from exporter.config import ConfigError
from exporter.webconfig import BasicAuth, load_web_config
from tests.support import REPO, Exporter, node_tree
from tests.support.webconfig import Pki, pki

__all__ = ["pki"]  # the fixture, from tests/support/webconfig.py

PASSWORD = "correct horse"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
HEADERS = {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff",
           "Strict-Transport-Security": "max-age=31536000"}


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def fetch(url: str, *, ctx: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None
          ) -> tuple[int, Mapping[str, str], bytes]:
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=ctx) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, dict(exc.headers), exc.read()
        finally:
            exc.close()


def refused(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    """True when the connection fails (handshake, reset, garbage), not with an HTTP status."""
    try:
        fetch(url, ctx=ctx)
    except (OSError, http.client.HTTPException):
        return True
    return False


def write_config(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def exporter_args(tmp_path: Path) -> list[str]:
    root = node_tree(tmp_path, "intel-2s")
    return ["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
            "--no-collector.kubernetes", "--no-collector.nvml", "--collector.interval", "0.1"]


@pytest.fixture
def tls_auth_exporter(pki: Pki, exporter_args: list[str]) -> Iterator[tuple[Exporter, str]]:
    config = write_config(pki.dir / "tls-auth.yml", {  # relative names: from the file's directory
        "tls_server_config": {"cert_file": "server.pem", "key_file": "server.key"},
        "http_server_config": {"headers": HEADERS},
        "basic_auth_users": {"alice": HASH},
    })
    with Exporter([*exporter_args, "--web.config.file", str(config)]) as exp:
        yield exp, "https://127.0.0.1:" + exp.url.rsplit(":", 1)[1]
        exp.stop()


@pytest.mark.slow(seconds=3)  # the exporter as a process
def test_tls_basic_auth_and_headers(pki: Pki, tls_auth_exporter: tuple[Exporter, str]) -> None:
    exp, url = tls_auth_exporter
    ctx = client_context(pki)
    assert refused(exp.url + "/healthz"), "plain HTTP must not be served on the TLS port"
    assert refused(url + "/healthz", ssl.create_default_context()), "the CA is not a system one"

    status, headers, body = fetch(url + "/healthz", ctx=ctx)  # probes need no credentials
    assert (status, body) == (200, b"ok\n")
    assert {k: headers.get(k) for k in HEADERS} == HEADERS
    deadline = time.monotonic() + 10
    while fetch(url + "/readyz", ctx=ctx)[0] != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)

    for path in ("/metrics", "/", "/no-such-page"):
        status, headers, _ = fetch(url + path, ctx=ctx)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == "Basic"
        assert {k: headers.get(k) for k in HEADERS} == HEADERS
        assert fetch(url + path, ctx=ctx, auth=("alice", "wrong"))[0] == 401
        assert fetch(url + path, ctx=ctx, auth=("mallory", PASSWORD))[0] == 401

    for _ in range(3):  # the second and third are answered from the cache
        status, headers, body = fetch(url + "/metrics", ctx=ctx, auth=("alice", PASSWORD))
        assert status == 200
        assert b"footprint_node_energy_joules_total{" in body
        assert {k: headers.get(k) for k in HEADERS} == HEADERS
    assert fetch(url + "/", ctx=ctx, auth=("alice", PASSWORD))[0] == 200
    status, headers, _ = fetch(url + "/no-such-page", ctx=ctx, auth=("alice", PASSWORD))
    assert status == 404
    assert headers["X-Frame-Options"] == "deny"

    assert exp.stop() == 0
    log = "\n".join(exp.lines)
    assert "TLS on (TLS12-TLS13, client certificates: NoClientCert), basic auth for 1 user" in log
    for secret in (PASSWORD, HASH, HASH[7:29]):
        assert secret not in log


@pytest.mark.slow(seconds=3)  # the exporter as a process
def test_require_and_verify_client_cert(pki: Pki, exporter_args: list[str]) -> None:
    config = write_config(pki.dir / "mtls.yml", {"tls_server_config": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca),
        "min_version": "TLS12", "max_version": "TLS13",
        "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"]}})
    with Exporter([*exporter_args, "--web.config.file", str(config)]) as exp:
        url = "https://127.0.0.1:" + exp.url.rsplit(":", 1)[1] + "/healthz"
        assert refused(url, client_context(pki)), "no client certificate"
        assert refused(url, client_context(pki, pki.rogue_cert, pki.rogue_key)), "untrusted CA"
        assert fetch(url, ctx=client_context(pki, pki.client_cert, pki.client_key))[0] == 200
        tls12 = client_context(pki, pki.client_cert, pki.client_key)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        conn = http.client.HTTPSConnection("127.0.0.1", int(exp.url.rsplit(":", 1)[1]),
                                           context=tls12, timeout=5)
        try:
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b"ok\n"
            assert isinstance(conn.sock, ssl.SSLSocket)
            assert conn.sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"  # cipher_suites
        finally:
            conn.close()
        assert exp.stop() == 0


@pytest.mark.parametrize(("mode", "verify"), [
    ("NoClientCert", ssl.CERT_NONE),
    ("RequestClientCert", ssl.CERT_NONE),
    ("RequireAnyClientCert", ssl.CERT_REQUIRED),
    ("RequireClientCert", ssl.CERT_REQUIRED),
    ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
    ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
])
def test_client_auth_types_map_onto_verify_mode(pki: Pki, mode: str,
                                                verify: ssl.VerifyMode) -> None:
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
           "client_auth_type": mode}
    if mode != "NoClientCert":
        tls["client_ca_file"] = str(pki.ca)
    config = webconfig.parse_web_config({"tls_server_config": tls}, pki.dir)
    assert config.ssl_context is not None
    assert config.ssl_context.verify_mode == verify
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_no_file_and_an_empty_file_change_nothing(tmp_path: Path) -> None:
    assert load_web_config(None).ssl_context is None
    empty = tmp_path / "web.yml"
    empty.write_text("")
    config = load_web_config(empty)
    assert (config.ssl_context, dict(config.users), config.middlewares()) == (None, {}, ())


async def test_successful_checks_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counting)
    auth = BasicAuth({"alice": HASH.encode()})

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    for _ in range(3):
        assert await auth.check(basic("alice", PASSWORD))
    assert len(calls) == 1
    assert not await auth.check(basic("alice", "wrong"))
    assert not await auth.check(basic("bob", PASSWORD))  # a decoy bcrypt: same cost in time
    assert len(calls) == 3
    no_colon = "Basic " + base64.b64encode(b"x").decode()
    for header in (None, "", "Bearer x", "Basic !!!", "Basic \u00e9t\u00e9", no_colon,
                   basic("alice", "x" * 100)):
        assert not await auth.check(header)
    assert await auth.check(basic("alice", PASSWORD))


TLS = {"cert_file": "server.pem", "key_file": "server.key"}


@pytest.mark.parametrize(("data", "message"), [
    ({"tls_server_config": TLS, "basic_auth": {}},
     "basic_auth: unknown key (expected one of: tls_server_config, http_server_config, "
     "basic_auth_users)"),
    ({"tls_server_config": {**TLS, "cert": "x"}},
     "tls_server_config.cert: not supported by footprint-exporter"),
    ({"tls_server_config": {"key_file": "server.key"}},
     "tls_server_config.cert_file: expected the server certificate's PEM file, got nothing"),
    ({"tls_server_config": {**TLS, "key_file": "missing.key"}},
     "tls_server_config.key_file: expected a readable file, got "),
    ({"tls_server_config": {**TLS, "client_auth_type": "RequireCert"}},
     "tls_server_config.client_auth_type: expected one of NoClientCert, RequestClientCert, "
     "RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert, "
     "got 'RequireCert'"),
    ({"tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert"}},
     "tls_server_config.client_ca_file: expected the CA file that verifies client "
     "certificates with client_auth_type RequireAndVerifyClientCert, got nothing"),
    ({"tls_server_config": {**TLS, "client_ca_file": "ca.pem"}},
     "tls_server_config.client_auth_type: expected a client_auth_type that uses "
     "client_ca_file, got 'NoClientCert'"),
    ({"tls_server_config": {**TLS, "key_file": "ca.key"}},
     "tls_server_config.key_file: expected the PEM private key of cert_file, got"),
    ({"tls_server_config": {**TLS, "min_version": "TLS14"}},
     "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13, got 'TLS14'"),
    ({"tls_server_config": {**TLS, "cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"]}},
     "tls_server_config.cipher_suites: expected one of TLS_AES_128_GCM_SHA256,"),
    ({"http_server_config": {"headers": {"Server": "x"}}},
     "http_server_config.headers.Server: unknown key (expected one of: "
     "Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, "
     "Content-Security-Policy)"),
    ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
     "http_server_config.headers.X-Frame-Options: expected one of deny, sameorigin, "
     "got 'allow'"),
    ({"basic_auth_users": {"alice": "hunter2"}},
     "basic_auth_users.alice: expected a bcrypt hash ($2y$, $2b$ or $2a$, cost 04-14, "
     "60 characters), got a string of 7 characters"),
    ({"basic_auth_users": {"alice": HASH[:-1]}}, "basic_auth_users.alice: expected a bcrypt"),
    ({"basic_auth_users": ["alice"]},
     "basic_auth_users: expected a mapping of user name to bcrypt hash, got list"),
])
def test_errors_exit_2_with_one_line_naming_the_key(
        pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        data: object, message: str) -> None:
    path = pki.dir / f"{tmp_path.name}.yml"  # beside the certificates, named per test
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError):
        load_web_config(path)
    assert cli.main(["--web.config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"footprint-exporter: error: --web.config.file {path}: {message}"), err
    if "basic_auth_users.alice" in message:
        assert "hunter2" not in err and HASH[:20] not in err


@pytest.mark.slow(seconds=3)  # the exporter as a process
def test_a_bad_file_stops_a_real_process(pki: Pki) -> None:
    path = pki.dir / "bad-process.yml"
    path.write_text("basic_auth_users:\n  alice: not-a-hash\n")
    result = subprocess.run([sys.executable, "-m", "exporter", "--web.config.file", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == (
        f"footprint-exporter: error: --web.config.file {path}: basic_auth_users.alice: expected "
        "a bcrypt hash ($2y$, $2b$ or $2a$, cost 04-14, 60 characters), got a string of 10 "
        "characters\n")


def test_headers_follow_the_toolkit() -> None:
    headers = webconfig.parse_headers({"http2": False, "headers": {
        "X-XSS-Protection": 0, "Content-Security-Policy": "", "X-Frame-Options": "sameorigin"}})
    assert dict(headers) == {"X-XSS-Protection": "0", "X-Frame-Options": "sameorigin"}
