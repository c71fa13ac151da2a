"""What following rotated TLS certificates costs: the check the exporter makes before every
TLS handshake (a `stat` of the certificate, key and client CA files), against reading and
loading them again for every handshake (as exporter-toolkit does), and a whole loopback TLS
handshake for scale.

    .venv/bin/python bench/cert_reload.py [--handshakes 300]

Prints one JSON line, in microseconds. docs/web-config.md#certificate-rotation records it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exporter.webconfig import load_web_config, parse_tls  # noqa: E402


def make_files(directory: Path) -> Path:
    """A self-signed EC certificate used as its own client CA, and a web config naming them."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "tls.key", "-out",
                    "tls.crt", "-days", "2", "-subj", "/CN=footprint cert_reload"],
                   cwd=directory, check=True, capture_output=True, timeout=30)
    shutil.copy(directory / "tls.crt", directory / "ca.crt")
    config = directory / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                      "  client_ca_file: ca.crt\n  client_auth_type: VerifyClientCertIfGiven\n")
    return config


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    ours, theirs = socket.socketpair()

    def serve() -> None:
        try:
            server.wrap_socket(ours, server_side=True).close()
        except OSError:
            ours.close()

    thread = threading.Thread(target=serve)
    thread.start()
    client.wrap_socket(theirs).close()
    thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = make_files(Path(tmp))
        tls = load_web_config(config).rotating_tls()
        assert tls is not None
        settings = tls.settings
        checks = 20_000
        check_us = timeit.timeit(tls, number=checks) / checks * 1e6
        reloads = 500
        reload_us = timeit.timeit(lambda: parse_tls(settings.section, settings.base),
                                  number=reloads) / reloads * 1e6
        client = ssl.create_default_context(cafile=str(Path(tmp) / "tls.crt"))
        client.check_hostname = False
        handshake_us = timeit.timeit(lambda: handshake(tls(), client),
                                     number=args.handshakes) / args.handshakes * 1e6
        assert tls.reloads == 0 and tls.failures == 0
    print(json.dumps({"check_per_handshake_us": round(check_us, 1),
                      "reload_per_handshake_us": round(reload_us),
                      "loopback_handshake_us": round(handshake_us)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
