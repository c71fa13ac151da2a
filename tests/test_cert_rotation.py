"""Certificates that rotate (issue 20): the exporter's certificate, key and client CA are read
again when their files change, as cert-manager rotates a Secret mounted in a pod, with no
restart and no failed scrape; a new pair that cannot be used leaves the old one serving.

The mounted Secret is reproduced as the kubelet writes it (its AtomicWriter): the files live in
a timestamped directory, `..data` is a symbolic link to it, and each name the pod sees
(`tls.crt`) is a link through `..data`; an update writes a new directory and renames a new
`..data` link over the old one, so every file changes at once. The certificates are made with
the real `openssl`; the exporter is the real process; the client is Python's `ssl`."""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from exporter.webconfig import load_web_config
from tests.support import Exporter, node_tree, require_binary

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass
class Authority:
    """A certificate authority in `directory`, made and used with the `openssl` command."""

    directory: Path
    name: str
    serial: int = 100

    def __post_init__(self) -> None:
        self._openssl("req", "-x509", *EC_KEY, "-keyout", f"{self.name}.key",
                      "-out", f"{self.name}.pem", "-days", "2", "-subj", f"/CN={self.name}",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    @property
    def pem(self) -> str:
        return (self.directory / f"{self.name}.pem").read_text()

    def _openssl(self, *args: str) -> None:
        subprocess.run([require_binary("openssl"), *args], cwd=self.directory, check=True,
                       capture_output=True, timeout=30)

    def issue(self, name: str, usage: str) -> tuple[Path, Path]:
        """A certificate for 127.0.0.1 with `usage` (serverAuth, clientAuth), and its key."""
        self.serial += 1
        self._openssl("req", "-new", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                      "-subj", f"/CN={name}")
        (self.directory / f"{name}.ext").write_text(
            f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{self.name}.pem",
                      "-CAkey", f"{self.name}.key", "-set_serial", str(self.serial),
                      "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")
        return self.directory / f"{name}.pem", self.directory / f"{name}.key"


class MountedSecret:
    """A directory as the kubelet maintains a mounted Secret (or projected volume)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self.updates = 0

    def write(self, files: dict[str, str]) -> None:
        """Replace every file at once: a new timestamped directory, then `..data` renamed."""
        self.updates += 1
        stamp = f"..2026_12_07_00_00_{self.updates:02d}.{os.getpid()}"
        (self.directory / stamp).mkdir()
        for name, text in files.items():
            (self.directory / stamp / name).write_text(text)
        old = os.readlink(self.directory / "..data") if self.updates > 1 else None
        os.symlink(stamp, self.directory / "..data_tmp")
        os.rename(self.directory / "..data_tmp", self.directory / "..data")
        for name in files:
            if not (self.directory / name).is_symlink():
                os.symlink(f"..data/{name}", self.directory / name)
        if old is not None:
            for leftover in (self.directory / old).iterdir():
                leftover.unlink()
            (self.directory / old).rmdir()


def der(pem_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text())


@dataclass
class Scraper:
    """Scrapes /metrics on a new TLS connection every 0.1 s and records each outcome with the
    certificate the exporter presented."""

    port: int
    context: ssl.SSLContext
    served: list[bytes] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scrape(self, context: ssl.SSLContext | None = None,
               path: str = "/metrics") -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                           context=context or self.context)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert conn.sock is not None
            peer = conn.sock.getpeercert(binary_form=True)
            assert peer is not None
            return response.status, peer
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, peer = self.scrape()
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
            else:
                with self._lock:
                    if status == 200:
                        self.served.append(peer)
                    else:
                        self.failures.append(f"HTTP {status}")
            self._stop.wait(0.1)

    def wait_for(self, cert: bytes, seconds: float = 60.0) -> float:
        """Seconds until a scrape was served with `cert`; fails after `seconds`."""
        start = time.monotonic()
        with self._lock:
            seen = len(self.served)
        while time.monotonic() - start < seconds:
            with self._lock:
                if cert in self.served[seen:]:
                    return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"the new certificate was not served within {seconds:g} s")

    def __enter__(self) -> Scraper:
        deadline = time.monotonic() + 20  # /metrics answers 503 until the first tick
        while self.scrape(path="/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(20)


def client(trusted: str, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=trusted)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[tuple[Authority, Authority]]:
    (tmp_path / "pki").mkdir()
    yield Authority(tmp_path / "pki", "old-ca"), Authority(tmp_path / "pki", "new-ca")


@pytest.mark.slow(seconds=5)  # the exporter as a process
def test_rotation_under_a_live_exporter_with_mtls(
        tmp_path: Path, pki: tuple[Authority, Authority]) -> None:
    """Server certificate, key and client CA rotated three times under TLS with
    RequireAndVerifyClientCert; a scraper on a new connection every 0.1 s never fails."""
    old_ca, new_ca = pki
    first = old_ca.issue("server-1", "serverAuth")
    second = new_ca.issue("server-2", "serverAuth")
    third = new_ca.issue("server-3", "serverAuth")
    old_client = old_ca.issue("client-old", "clientAuth")
    new_client = new_ca.issue("client-new", "clientAuth")

    secret = MountedSecret(tmp_path / "tls")
    secret.write({"tls.crt": first[0].read_text(), "tls.key": first[1].read_text(),
                  "ca.crt": old_ca.pem})
    config = tmp_path / "web.yml"
    config.write_text(yaml.safe_dump({"tls_server_config": {
        "cert_file": "tls/tls.crt", "key_file": "tls/tls.key", "client_ca_file": "tls/ca.crt",
        "client_auth_type": "RequireAndVerifyClientCert"}}))
    root = node_tree(tmp_path, "intel-2s")
    both = old_ca.pem + new_ca.pem  # what the scraper trusts: either server CA
    with Exporter(["--path.sysfs", str(root / "sys"), "--path.procfs", str(root / "proc"),
                   "--no-collector.kubernetes", "--no-collector.nvml",
                   "--collector.interval", "0.5", "--web.config.file", str(config)]) as exp:
        port = int(exp.url.rsplit(":", 1)[1])
        with Scraper(port, client(both, *old_client)) as scraper:
            scraper.wait_for(der(first[0]), seconds=20)
            # a client certificate from the new CA is not trusted yet
            with pytest.raises((ssl.SSLError, OSError)):
                scraper.scrape(client(both, *new_client))

            # 1. cert-manager renews the certificate from a new CA, and trust-manager's bundle
            #    (the client CA) now holds both CAs: all three files change at once
            secret.write({"tls.crt": second[0].read_text(), "tls.key": second[1].read_text(),
                          "ca.crt": old_ca.pem + new_ca.pem})
            took = scraper.wait_for(der(second[0]))
            assert scraper.scrape(client(both, *new_client))[0] == 200  # new client CA
            assert scraper.scrape()[0] == 200  # and the old CA's client still

            # 2. a broken update: the next certificate with the previous key
            secret.write({"tls.crt": third[0].read_text(), "tls.key": second[1].read_text(),
                          "ca.crt": new_ca.pem})
            deadline = time.monotonic() + 20
            while not [line for line in exp.lines if "cannot be used" in line]:
                assert time.monotonic() < deadline, "the broken pair was not logged"
                time.sleep(0.05)
            status, peer = scraper.scrape()
            assert (status, peer) == (200, der(second[0]))  # the old pair goes on serving
            assert scraper.scrape()[0] == 200  # and the old client CA with it

            # 3. fixed: the pair that matches, and the client CA of the new CA only (the
            #    scraper moved to its new client certificate first, as clients must)
            scraper.context = client(both, *new_client)
            secret.write({"tls.crt": third[0].read_text(), "tls.key": third[1].read_text(),
                          "ca.crt": new_ca.pem})
            scraper.wait_for(der(third[0]))
            assert scraper.scrape(client(both, *new_client))[0] == 200
            with pytest.raises((ssl.SSLError, OSError)):  # the old CA's client: refused now
                scraper.scrape(client(both, *old_client))
            time.sleep(0.5)
        assert exp.stop() == 0

    assert scraper.failures == [], scraper.failures[:5]
    assert set(scraper.served) == {der(first[0]), der(second[0]), der(third[0])}
    assert took < 60
    broken = [line for line in exp.lines if "cannot be used" in line]
    assert len(broken) == 1, broken  # once, not once per handshake
    assert "source=web_config" in broken[0] and "tls.key" in broken[0], broken[0]
    assert "expected the PEM private key of cert_file" in broken[0], broken[0]
    reloaded = [line for line in exp.lines if "certificate files changed" in line]
    assert len(reloaded) == 2, reloaded


def test_a_file_rewritten_in_place_is_picked_up_when_the_pair_matches(
        tmp_path: Path, pki: tuple[Authority, Authority]) -> None:
    """Not every tool swaps a directory: a certificate written over in place, its key a moment
    later. In between the pair does not match: the old one stays; then the new one is used."""
    old_ca, _ = pki
    first = old_ca.issue("server-1", "serverAuth")
    second = old_ca.issue("server-2", "serverAuth")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text(first[0].read_text())
    key.write_text(first[1].read_text())
    config = tmp_path / "web.yml"
    config.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "tls.crt",
                                                            "key_file": "tls.key"}}))
    tls = load_web_config(config).rotating_tls()
    assert tls is not None
    original = tls()
    assert tls() is original  # nothing changed: the same context, nothing rebuilt

    cert.write_text(second[0].read_text())  # the certificate first ...
    assert tls() is original
    assert (tls.reloads, tls.failures) == (0, 1)
    assert tls() is original and tls.failures == 1  # not tried again until a file changes
    key.write_text(second[1].read_text())  # ... then its key
    renewed = tls()
    assert renewed is not original and (tls.reloads, tls.failures) == (1, 1)
    assert tls.settings.files == (cert, key)

    key.unlink()  # a file gone: the last good context goes on
    assert tls() is renewed and tls.failures == 2
    key.write_text(second[1].read_text())
    assert tls() is not renewed and tls.reloads == 2
