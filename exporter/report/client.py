"""`footprint-exporter report`'s HTTP to Prometheus' `/api/v1/query`: one instant query at a
time, bounded in time (from connecting to the last byte, issue 19) and in size (the body, its
series, its nesting), redirects that keep the credentials to their origin, and one line for
whatever goes wrong, with every secret redacted from what the server sent back."""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from exporter import boundedjson
from exporter.report.auth import CREDENTIAL_OPTIONS, Connection
from exporter.report.common import ReportError

FIX = "check --prometheus; is Prometheus running?"
MAX_BODY_BYTES = 64 << 20
"""64 MiB: the most of one answer the report reads. A Content-Length above it is refused before
reading, a longer body once it passes the bound. 100,000 series of six labels are about 17 MiB;
this leaves room for long label values."""
MAX_SERIES = 100_000
"""The most series one answer may hold, counted (its `"metric"` keys, or its JSON values / 12)
before it is parsed: parsed, each series costs about 1.2 KB, so 100,000 take about 115 MiB
(10^6 took 5.8 GiB before this bound). The largest real answer, `--by run` over a month of a
large cluster, is some ten thousand runs times four scopes."""
MAX_ERROR_BODY_BYTES = 64 << 10
"""The most of an error answer (HTTP 4xx, 5xx) read for Prometheus' message."""
READ_CHUNK_BYTES = 64 << 10
NARROW = ("narrow the query: a shorter --since (or an earlier --until) covers fewer models "
          "and runs")

Sample = tuple[Mapping[str, str], float]
"""One series of an instant vector: its labels and its value."""


class _NoCredentialsAcrossOrigins(urllib.request.HTTPRedirectHandler):
    """Follow a redirect, but send the credentials and extra headers only to the origin they
    were given for (a redirect elsewhere gets none)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        # The standard library reads the redirect's body whole to discard it, however large it
        # is: closed here, that read reads nothing.
        fp.close()
        old_origin = urllib.parse.urlsplit(req.full_url)[:2]
        if new is not None and urllib.parse.urlsplit(newurl)[:2] != old_origin:
            for name in list(new.headers):
                if name.lower() != "accept":
                    del new.headers[name]
        return new


def _describe(reason: object, timeout: float, conn: Connection) -> str:
    if isinstance(reason, TimeoutError):  # socket.timeout too
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host ({reason.strerror or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    # Some (http.client.BadStatusLine, LineTooLong) hold what the server sent.
    return conn.shown(reason, 200) or type(reason).__name__


def _api_error(payload: object) -> str | None:
    if isinstance(payload, dict) and payload.get("status") == "error":
        kind = payload.get("errorType")
        error = payload.get("error", "no message")
        return f"{kind}: {error}" if kind else str(error)
    return None


# --- the deadline of one query ---------------------------------------------------------------

class _Deadline:
    """The deadline of one query, from name lookup and connecting to the last byte, redirects
    included (issue 19: a per-read timeout alone lets a server that sends a byte now and then
    hold the report for ever). The query runs in a worker thread that the caller waits for
    until the deadline; then the sockets the query opened are shut down, which ends any read
    in progress, and the worker stops at its next chunk."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.answered = False
        """Prometheus' status line and headers have come: a timeout is a slow answer, not
        none."""
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down when the deadline passes (at once if it has)."""
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    """A connection whose socket the deadline watches once connected."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    """The same over TLS: `connect` is HTTPSConnection's (the TCP connection, then the TLS
    handshake), and the socket watched the TLS one it leaves."""


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req,
                            context=self._tls)


# --- one exchange ----------------------------------------------------------------------------

def _too_large(base_url: str, what: str) -> ReportError:
    return ReportError(f"Prometheus at {base_url} answered {what} to one query, more than the "
                       f"report reads; {NARROW}")


def _read_body(response: http.client.HTTPResponse, base_url: str, deadline: _Deadline) -> bytes:
    """The whole body, at most MAX_BODY_BYTES; ReportError past it, or when cut off."""
    declared: int | None
    try:
        declared = int(response.headers.get("Content-Length", ""))
    except ValueError:
        declared = None
    if declared is not None and declared > MAX_BODY_BYTES:
        raise _too_large(base_url, f"{declared / (1 << 20):,.0f} MiB (at most "
                                   f"{MAX_BODY_BYTES >> 20} MiB)")
    parts: list[bytes] = []
    size = 0
    while not deadline.expired and (chunk := response.read(READ_CHUNK_BYTES)):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(base_url, f"more than {MAX_BODY_BYTES >> 20} MiB")
        parts.append(chunk)
    if declared is not None and size < declared and not deadline.expired:
        raise ReportError(f"Prometheus at {base_url} cut its answer off after {size:,} of "
                          f"{declared:,} bytes; {FIX}")
    return b"".join(parts)


def _error_message(exc: urllib.error.HTTPError) -> str | None:
    """Prometheus' own message from an error answer (its first MAX_ERROR_BODY_BYTES)."""
    try:
        body = exc.read(MAX_ERROR_BODY_BYTES + 1)
        return _api_error(boundedjson.loads(body, max_bytes=MAX_ERROR_BODY_BYTES,
                                            what="the error"))
    except (ValueError, OSError, http.client.HTTPException):
        return None
    finally:
        exc.close()


def _fetch(request: urllib.request.Request, base_url: str, timeout: float, conn: Connection,
           deadline: _Deadline) -> bytes:
    """The body of a 200 answer to `request`; ReportError for anything else."""
    opener = urllib.request.build_opener(
        _HTTPHandler(deadline), _HTTPSHandler(deadline, conn.context),
        _NoCredentialsAcrossOrigins())
    try:
        with opener.open(request, timeout=timeout) as response:
            deadline.answered = True
            return _read_body(response, base_url, deadline)
    except urllib.error.HTTPError as exc:
        deadline.answered = True
        message = _error_message(exc)
        reason = conn.shown(exc.reason, 80)
        if exc.code in (401, 403):
            fix = (f"check {CREDENTIAL_OPTIONS}" if conn.authenticated else
                   f"it needs credentials: {CREDENTIAL_OPTIONS}")
            if exc.code == 403:
                fix += " (and --header X-Scope-OrgID for a Mimir or Cortex tenant)"
            raise ReportError(f"Prometheus at {base_url} answered HTTP {exc.code} {reason} "
                              f"to /api/v1/query; {fix}") from None
        if message is None:
            raise ReportError(f"Prometheus at {base_url} answered HTTP {exc.code} {reason} "
                              "to /api/v1/query; check --prometheus (a Prometheus base URL, "
                              "such as http://localhost:9090)") from None
        raise ReportError(f"Prometheus at {base_url} rejected the query: "
                          f"{conn.shown(message)}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise ReportError(f"Prometheus at {base_url} has a TLS certificate that does not "
                              f"verify ({exc.reason.verify_message}); give --ca-file the CA "
                              "that signed it, and a host name in --prometheus that the "
                              "certificate names") from None
        raise ReportError(f"cannot reach Prometheus at {base_url}: "
                          f"{_describe(exc.reason, timeout, conn)}; {FIX}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ReportError(f"cannot reach Prometheus at {base_url}: "
                          f"{_describe(exc, timeout, conn)}; {FIX}") from None


def _within_deadline(request: urllib.request.Request, base_url: str, timeout: float,
                     conn: Connection) -> bytes:
    """`_fetch` in a worker thread, waited for at most `timeout` seconds in all."""
    deadline = _Deadline(timeout)
    outcome: list[bytes | BaseException] = []

    def work() -> None:
        try:
            outcome.append(_fetch(request, base_url, timeout, conn, deadline))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=work, name="report-query", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        deadline.expire()
        if deadline.answered:
            raise ReportError(f"Prometheus at {base_url} did not finish its answer within "
                              f"{timeout:g} s (--timeout bounds each query, from connecting to "
                              f"the last byte); give a longer --timeout, or {NARROW}")
        raise ReportError(f"cannot reach Prometheus at {base_url}: no answer within "
                          f"{timeout:g} s; {FIX}")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


# --- the answer ------------------------------------------------------------------------------

def estimated_series(body: bytes) -> int:
    """At least the number of series in an instant-vector answer, counted without parsing it:
    its `"metric"` keys, or a twelfth of its JSON values (each series has about 12, so an answer
    of anything else cannot cost more memory than MAX_SERIES series)."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    return max(body.count(b'"metric"'), values // 12)


def instant_query(base_url: str, query: str, at: float, timeout: float,
                  conn: Connection | None = None) -> list[Sample]:
    """The vector `query` evaluates to at time `at`; ReportError for anything else, or when the
    whole exchange takes longer than `timeout` seconds, or the answer is larger than
    MAX_BODY_BYTES or MAX_SERIES."""
    conn = conn or Connection()
    params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}",
                                     "timeout": f"{timeout:g}"})
    url = f"{base_url}/api/v1/query?{params}"
    request = urllib.request.Request(url, headers={**conn.headers, "Accept": "application/json"})
    body = _within_deadline(request, base_url, timeout, conn)
    series = estimated_series(body)
    if series > MAX_SERIES:
        raise _too_large(base_url, f"about {series:,} series (at most {MAX_SERIES:,})")
    try:
        payload = boundedjson.loads(body, max_bytes=MAX_BODY_BYTES, what="the answer")
    except boundedjson.JsonError as exc:
        if exc.reason == "depth":
            raise ReportError(f"Prometheus at {base_url} answered JSON nested deeper than "
                              f"{boundedjson.DEFAULT_MAX_DEPTH} levels, as no Prometheus answer "
                              "is; check --prometheus") from None
        raise ReportError(f"Prometheus at {base_url} answered something that is not JSON; "
                          "check --prometheus") from None
    del body
    message = _api_error(payload)
    if message is not None:
        raise ReportError(f"Prometheus at {base_url} rejected the query: {conn.shown(message)}")
    return _vector(payload, base_url, conn)


def _vector(payload: Any, base_url: str, conn: Connection | None = None) -> list[Sample]:
    """The samples of an instant vector, each label redacted (`Connection.redact`)."""
    redact = (conn or Connection()).redact
    try:
        data = payload["data"]
        if payload["status"] != "success" or data["resultType"] != "vector":
            raise TypeError(data.get("resultType"))
        out: list[Sample] = []
        for item in data["result"]:
            labels = item["metric"]
            value = float(item["value"][1])
            if not isinstance(labels, dict):
                raise TypeError(labels)
            out.append(({redact(str(k)): redact(str(v)) for k, v in labels.items()}, value))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise ReportError(f"Prometheus at {base_url} answered an unexpected shape "
                          "(not an instant vector); check --prometheus") from None
    return out
