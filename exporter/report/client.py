"""`footprint-exporter report`'s HTTP to Prometheus' `/api/v1/query`: one instant query at a
time, bounded in time (from connecting to the last byte, issue 19) and in size (the body, its
series, its nesting), redirects followed only on their origin (`exporter.net`, shared with the
live intensity providers), and one line for whatever goes wrong, with every secret redacted
from what the server sent back."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from exporter import boundedjson, net
from exporter.net import READ_CHUNK_BYTES as READ_CHUNK_BYTES
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
NARROW = ("narrow the query: a shorter --since (or an earlier --until) covers fewer models "
          "and runs")

Sample = tuple[Mapping[str, str], float]
"""One series of an instant vector: its labels and its value."""


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


# --- one exchange ----------------------------------------------------------------------------

def _too_large(base_url: str, what: str) -> ReportError:
    return ReportError(f"Prometheus at {base_url} answered {what} to one query, more than the "
                       f"report reads; {NARROW}")


def _read_body(response: http.client.HTTPResponse, base_url: str,
               deadline: net.Deadline) -> bytes:
    """The whole body, at most MAX_BODY_BYTES; ReportError past it, or when cut off."""
    try:
        return net.read_capped_sync(response, MAX_BODY_BYTES, stopped=lambda: deadline.expired)
    except net.TooLarge as exc:
        raise _too_large(base_url, str(exc)) from None
    except net.CutOff as exc:
        raise ReportError(f"Prometheus at {base_url} cut its answer off after "
                          f"{exc.received:,} of {exc.declared:,} bytes; {FIX}") from None


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
           deadline: net.Deadline) -> bytes:
    """The body of a 200 answer to `request`; ReportError for anything else."""
    try:
        with net.opener(deadline, conn.context).open(request, timeout=timeout) as response:
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
    except net.RedirectRefused as exc:
        raise ReportError(f"Prometheus at {base_url} answered {conn.shown(exc)}; if Prometheus "
                          "is there, give that URL as --prometheus") from None
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
    deadline = net.Deadline(timeout)
    try:
        return net.run_within(deadline, lambda: _fetch(request, base_url, timeout, conn,
                                                       deadline), name="report-query")
    except net.DeadlineExpired as exc:
        if exc.answered:
            raise ReportError(f"Prometheus at {base_url} did not finish its answer within "
                              f"{timeout:g} s (--timeout bounds each query, from connecting to "
                              f"the last byte); give a longer --timeout, or {NARROW}") from None
        raise ReportError(f"cannot reach Prometheus at {base_url}: no answer within "
                          f"{timeout:g} s; {FIX}") from None


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
