"""Real HTTP servers on 127.0.0.1 (`http.server` in a thread) that answer by path and record
what they were asked (from tests/test_net.py); shared by the network, hostile-intensity and
hostile-report tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "s3cr3t-t0ken-VALUE"

Route = tuple[int, dict[str, str], bytes] | Callable[[BaseHTTPRequestHandler], None]
"""What a path answers: status, headers and body, or a function that writes the answer."""


@dataclass
class Server:
    """A real HTTP/1.0 server on 127.0.0.1 (each body ends when the connection closes, unless
    a Content-Length says otherwise): `routes` by path, what it was asked in `seen` (path and
    headers, lower-cased), the bytes each streamed answer got out in `streamed`."""

    url: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


@contextmanager
def serve() -> Iterator[Server]:
    server = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            route = server.routes.get(self.path.partition("?")[0], (404, {}, b"not here"))
            if callable(route):
                route(self)
                return
            status, headers, body = route
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def redirect(location: str, status: int = 302) -> Route:
    return (status, {"Location": location, "Content-Length": "0"}, b"")
