"""`footprint-exporter report`: a life-cycle CO2e table per model from Prometheus (docs/report.md).

In the spirit of Table 2/3 of Luccioni et al., "Estimating the Carbon Footprint of BLOOM"
(JMLR 2023): for each model and phase, the operational (dynamic + idle power), infrastructure
(PUE overhead) and embodied (manufacturing, amortised over the hardware's lifetime) emissions,
their total, each scope's share, and the energy. Every number is one PromQL query over the rule
pack's recording rules, evaluated once, at the same instant, through `/api/v1/query`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import datetime
import functools
import http.client
import io
import json
import math
import re
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from exporter import boundedjson
from exporter.schema import describe_secret, shown_path

PROG = "footprint-exporter report"

CO2E_RULE = "model:footprint_co2e_grams:rate5m"
"""Grams CO2e per second, labels model, phase, scope (rules/footprint.rules.yaml)."""
ENERGY_RULE = "model:footprint_energy_joules:rate5m"
WATER_RULE = "model:footprint_water_liters:rate5m"
"""Litres per second by model, phase and scope (water_onsite, water_offsite)."""
WATER_SCOPES = ("water_onsite", "water_offsite")
"""Joules per second (watts), labels model, phase (rules/footprint.rules.yaml)."""

SCOPES = ("operational", "infrastructure", "embodied")
"""The scopes summed into the total, in the order of the table's columns."""
TOTAL_SCOPE = "total"

JOULES_PER_KWH = 3.6e6
TOTAL_LABEL = "TOTAL"
"""The totals row's model in the table and CSV (JSON says null)."""
NO_MODEL = "(none)"
"""How the table shows containers matched to no model (label model="")."""

_UNITS_MS = {"y": 365 * 86_400_000, "w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000,
             "m": 60_000, "s": 1000, "ms": 1}
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?"
                       r"(?:(\d+)ms)?")
"""Prometheus' duration syntax (model.ParseDuration): units in this order, each at most once."""

FIX = "check --prometheus; is Prometheus running?"
NO_DATA_HINT = "is the rule pack loaded and the exporter scraped?"

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
REDACTED = "[redacted]"
"""What the report prints in place of a secret that the server sent back."""
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A CSV cell starting with one of these is a formula to a spreadsheet (OWASP, CSV Injection):
a text cell that does is written with a single quote before it."""
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                      "\u2066-\u206f\ufeff\ufff9-\ufffb]")
"""Control characters (C0, newline and tab included; DEL; C1, where ESC [ and CSI start the
terminal's escape sequences) and Unicode's invisible format characters and bidirectional
overrides, which can make one name look like another."""


def printable(text: str) -> str:
    """`text` without control characters (`_CONTROL`): what the report prints of any text that
    came from Prometheus, so that a label value (a tenant's pod name or model) can neither
    move the cursor, clear the screen, retitle the window nor hide part of a line."""
    return _CONTROL.sub("", text)


def csv_text(text: str) -> str:
    """A CSV text cell: `printable`, and neutralised with a leading `'` when it starts with a
    character that makes a spreadsheet read it as a formula (`FORMULA_START`)."""
    cell = printable(text)
    return f"'{cell}" if cell.startswith(FORMULA_START) else cell


def _eprint(text: str) -> None:
    """One line on stderr, without control characters whatever the text holds."""
    print(printable(text), file=sys.stderr)


class ReportError(Exception):
    """A failure worth one line on stderr and exit 2: no traceback."""


@dataclass(frozen=True)
class Duration:
    """A Prometheus duration as the user wrote it (it goes into PromQL verbatim)."""

    text: str
    seconds: float

    def promql_seconds(self) -> str:
        """`300`, or `0.5` for sub-second steps: a PromQL number literal."""
        return str(int(self.seconds)) if self.seconds.is_integer() else repr(self.seconds)


DEFAULT_STEP = Duration("5m", 300.0)


def parse_duration(text: str) -> Duration:
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"expected a Prometheus duration such as 90s, 15m, 7d; got {text!r}")
    ms = sum(int(n) * _UNITS_MS[u] for n, u in zip(match.groups(), _UNITS_MS, strict=True)
             if n is not None)
    if ms <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return Duration(text, ms / 1000)


def _duration_arg(text: str) -> Duration:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _url_arg(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if "@" in parts.netloc:
        # Never echoed: it holds a user name and perhaps a password.
        raise argparse.ArgumentTypeError(
            "expected http://HOST:PORT without a user or password in it (a secret on the "
            "command line is shown by ps and kept in the shell's history); give "
            "--basic-auth-user and --basic-auth-password-file instead")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {text!r}")
    return text.rstrip("/")


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _time_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected RFC 3339 (2024-05-01T00:00:00Z) or Unix seconds, got {text!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        value = moment.timestamp()
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a time after 1970, got {text!r}")
    return value


FORMATS = ("table", "markdown", "json", "csv")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit 2, as the exporter's own command line does."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=(
        "Life-cycle CO2e per ML model and phase (operational, infrastructure, embodied, total; "
        "energy), in the spirit of the BLOOM paper's table, from Prometheus and the Footprint "
        "rule pack."))
    p.add_argument("--prometheus", required=True, type=_url_arg, metavar="URL",
                   help="Prometheus base URL, e.g. http://localhost:9090")
    p.add_argument("--model", default=None, metavar="M",
                   help="only this model (exact match of the label model)")
    p.add_argument("--since", type=_duration_arg, default=parse_duration("7d"),
                   metavar="DURATION", help="how far back to sum, a Prometheus duration "
                   "(90s, 15m, 7d, 1w; default 7d)")
    p.add_argument("--step", type=_duration_arg, default=None, metavar="DURATION",
                   help="resolution of the sum (default 5m, or --since where that is shorter)")
    p.add_argument("--by", choices=("model", "run"), default="model",
                   help="model (default): one row per model and phase; run: one row per "
                   "training run (the job that owns the pods: PyTorchJob, TFJob, MPIJob, Job, "
                   "...), with start, end, GPU-hours and water")
    p.add_argument("--until", type=_time_arg, default=None, metavar="TIME",
                   help="the end of the period, RFC 3339 (2024-05-01T00:00:00Z) or Unix "
                   "seconds (default now)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default): aligned text in g/kg/t; markdown: the same as a "
                   "Markdown table; json, csv: base units")
    p.add_argument("--timeout", type=_timeout_arg, default=30.0, metavar="SECONDS",
                   help="give up on a query that Prometheus has not answered in full after "
                   "this many seconds, from connecting to the last byte (default 30)")
    auth = p.add_argument_group(
        "authentication and TLS", "for a Prometheus API behind auth: Thanos, Mimir, Cortex, "
        "VictoriaMetrics, Grafana Cloud, or Prometheus' own --web.config.file. Secrets are read "
        "from files (surrounding whitespace removed) and never printed")
    auth.add_argument("--bearer-token-file", metavar="FILE",
                      help="send 'Authorization: Bearer <the file's content>'")
    auth.add_argument("--basic-auth-user", metavar="USER",
                      help="HTTP basic auth user name (with --basic-auth-password-file)")
    auth.add_argument("--basic-auth-password-file", metavar="FILE",
                      help="HTTP basic auth password, read from FILE")
    auth.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                      help="an extra request header, repeatable, e.g. 'X-Scope-OrgID: tenant-1' "
                      "for a Mimir or Cortex tenant (not Authorization: use the file options)")
    auth.add_argument("--ca-file", metavar="FILE",
                      help="verify an https:// --prometheus against the CA certificates (PEM) in "
                      "FILE instead of the system's")
    auth.add_argument("--insecure-skip-verify", action="store_true",
                      help="do not verify the server's TLS certificate (testing only)")
    return p


# --- connection: auth headers and TLS --------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP header name (RFC 9110 token)."""
CREDENTIAL_OPTIONS = "--bearer-token-file, or --basic-auth-user and --basic-auth-password-file"
NOT_SECRET_HEADERS = frozenset({"x-scope-orgid"})
"""--header names whose values are not redacted from what the report prints: a Mimir or Cortex
tenant is no secret, and is often also the name of a namespace that the report shows."""


@dataclass(frozen=True)
class Connection:
    """How to reach the query API: headers for every request (auth, tenant), the TLS context."""

    headers: Mapping[str, str] = field(default_factory=dict)
    context: ssl.SSLContext | None = None
    authenticated: bool = False
    """Whether credentials are sent (so an HTTP 401 means they are wrong, not missing)."""
    secrets: tuple[str, ...] = ()
    """What the report never prints, whatever the server sends back: the token, the password,
    the Authorization header's value, and the --header values (but NOT_SECRET_HEADERS'),
    longest first."""

    def __repr__(self) -> str:  # the headers may hold a secret
        return f"Connection(headers={sorted(self.headers)}, tls={self.context is not None})"

    def redact(self, text: str) -> str:
        """`text` with each of `secrets` replaced by REDACTED, also where control characters
        (which `printable` removes) were slipped into one."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        if self.secrets and _CONTROL.search(text):
            bare = printable(text)
            if any(secret in bare for secret in self.secrets):
                return self.redact(bare)
        return text

    def shown(self, text: object, limit: int = 300) -> str:
        """Text from the server (an error message, a reason phrase) as the report may print it:
        secrets redacted, control characters removed, at most `limit` characters."""
        cleaned = printable(self.redact(str(text)))
        return cleaned if len(cleaned) <= limit else f"{cleaned[:limit]}..."


def read_secret_file(text: str, option: str, what: str) -> str:
    """The content of the file named by `option`, stripped; ReportError (never the content, nor
    a name that may be a pasted secret) when it cannot be read or is empty."""
    path = Path(text)
    fix = f"give {option} the path of a file that holds the {what}"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ReportError(f"{option}: cannot read {shown_path(path)} ({reason.lower()}); "
                          f"{fix}") from None
    except (UnicodeDecodeError, ValueError):
        raise ReportError(f"{option}: {shown_path(path)} is not UTF-8 text; {fix}") from None
    if not value:
        raise ReportError(f"{option}: {shown_path(path)} is empty; {fix}")
    if "\n" in value or "\r" in value or "\0" in value:
        raise ReportError(f"{option}: {shown_path(path)} holds more than one line; {fix}, "
                          "alone on one line")
    return value


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` -> (Name, value); ReportError that shows the name at most, never a value."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon:
        raise ReportError(f"--header: expected 'Name: value', such as 'X-Scope-OrgID: "
                          f"tenant-1', got {describe_secret(text)} without a colon")
    if not _TOKEN.fullmatch(name):
        raise ReportError(f"--header: expected 'Name: value' with a header name (letters, "
                          f"digits, '-') before the colon, got {describe_secret(name)} there")
    if not value or any(c in value for c in "\r\n\0"):
        raise ReportError(f"--header {name}: expected a value on one line after the colon, "
                          f"such as '{name}: tenant-1'")
    return name, value


def connection(args: argparse.Namespace) -> Connection:
    """The headers and TLS context from the options; ReportError naming the option and the
    fix for anything wrong."""
    headers: dict[str, str] = {}
    for text in args.header:
        name, value = parse_header(text)
        if name.lower() == "authorization":
            # Never the value: it is the secret.
            raise ReportError(f"--header {name}: a credential on the command line is shown by "
                              "ps to every user of this machine and kept in the shell's "
                              "history; put it in a file and give --bearer-token-file FILE "
                              "(for 'Bearer <token>', the file holding the token), or "
                              "--basic-auth-user USER and --basic-auth-password-file FILE")
        if name.lower() in (n.lower() for n in headers):
            raise ReportError(f"--header: {name} given twice; give each header once (Mimir and "
                              "Cortex take several tenants in one X-Scope-OrgID: 'a|b')")
        headers[name] = value
    secrets = [v for n, v in headers.items() if n.lower() not in NOT_SECRET_HEADERS]
    basic = args.basic_auth_user is not None or args.basic_auth_password_file is not None
    if args.bearer_token_file is not None and basic:
        raise ReportError("--bearer-token-file and --basic-auth-user: choose one, a bearer "
                          "token or basic auth, not both")
    authenticated = args.bearer_token_file is not None or basic
    if args.bearer_token_file is not None:
        token = read_secret_file(args.bearer_token_file, "--bearer-token-file", "token")
        headers["Authorization"] = f"Bearer {token}"
        secrets += [token, headers["Authorization"]]
    elif basic:
        user = args.basic_auth_user
        if user is None:
            raise ReportError("--basic-auth-password-file: give the user name too, with "
                              "--basic-auth-user")
        if args.basic_auth_password_file is None:
            raise ReportError("--basic-auth-user: give the password too, in a file, with "
                              "--basic-auth-password-file")
        if not user or ":" in user or any(c in user for c in "\r\n\0"):
            raise ReportError("--basic-auth-user: expected a user name without ':', got "
                              f"{describe_secret(user)}")
        password = read_secret_file(args.basic_auth_password_file,
                                    "--basic-auth-password-file", "password")
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {pair}"
        secrets += [password, pair]
    # Each as sent, and percent-encoded as a server may echo it in a URL; longest first, so
    # that a secret inside another is redacted with it.
    secrets += [urllib.parse.quote(s, safe="") for s in secrets]
    unique = sorted({s for s in secrets if s}, key=len, reverse=True)
    return Connection(headers, _tls_context(args), authenticated, tuple(unique))


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.ca_file is None and not args.insecure_skip_verify:
        return None
    option = "--ca-file" if args.ca_file is not None else "--insecure-skip-verify"
    if args.ca_file is not None and args.insecure_skip_verify:
        raise ReportError("--ca-file and --insecure-skip-verify: choose one; --ca-file verifies "
                          "the server against a CA, --insecure-skip-verify does not verify")
    if urllib.parse.urlsplit(args.prometheus).scheme != "https":
        raise ReportError(f"{option}: only applies to TLS; give an https:// --prometheus URL, "
                          f"or leave out {option}")
    if args.insecure_skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    path = Path(args.ca_file)
    fix = "give --ca-file a PEM file with the certificate of the CA that signed the server's"
    try:
        return ssl.create_default_context(cafile=str(path))
    except OSError as exc:  # FileNotFoundError, PermissionError; ssl.SSLError for non-PEM
        if isinstance(exc, ssl.SSLError):
            raise ReportError(f"--ca-file: {shown_path(path)} holds no PEM certificate; "
                              f"{fix}") from None
        reason = (exc.strerror or type(exc).__name__).lower()
        raise ReportError(f"--ca-file: cannot read {shown_path(path)} ({reason}); "
                          f"{fix}") from None


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


# --- queries ---------------------------------------------------------------------------------

def co2e_query(since: Duration, step: Duration) -> str:
    """Grams per (model, phase, scope): the Riemann sum of the grams-per-second rule."""
    return (f"sum by (model, phase, scope) (sum_over_time({CO2E_RULE}[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}")


def energy_query(since: Duration, step: Duration) -> str:
    """Joules per (model, phase): the Riemann sum of the watts rule."""
    return (f"sum by (model, phase) (sum_over_time({ENERGY_RULE}[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}")


def water_query(since: Duration, step: Duration) -> str:
    """Litres per (model, phase, scope): the Riemann sum of the litres-per-second rule."""
    return (f"sum by (model, phase, scope) (sum_over_time({WATER_RULE}[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}")


Sample = tuple[Mapping[str, str], float]


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
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


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


# --- the table -------------------------------------------------------------------------------

@dataclass
class Row:
    """One (model, phase), or the totals (model None)."""

    model: str | None
    phase: str | None
    grams: dict[str, float]
    """Per scope in SCOPES."""
    total_grams: float
    energy_joules: float
    water_liters: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(WATER_SCOPES))
    """Per scope in WATER_SCOPES; None where the rule pack recorded no water (no gauges)."""

    @property
    def energy_kwh(self) -> float:
        return self.energy_joules / JOULES_PER_KWH

    def share(self, scope: str) -> float | None:
        """The scope's fraction of the total; None where the total is zero."""
        return self.grams[scope] / self.total_grams if self.total_grams else None


def build_rows(co2e: Iterable[Sample], energy: Iterable[Sample], *,
               model: str | None = None, water: Iterable[Sample] = ()) -> list[Row]:
    """Rows sorted by model and phase. The total is the rule pack's scope="total" where it is
    there, else the sum of the three scopes. Non-finite values are left out, with a warning."""
    scoped: dict[tuple[str, str], dict[str, float]] = {}
    joules: dict[tuple[str, str], float] = {}

    def keep(labels: Mapping[str, str], value: float) -> tuple[str, str] | None:
        key = (labels.get("model", ""), labels.get("phase", ""))
        if model is not None and key[0] != model:
            return None
        if not math.isfinite(value):
            _eprint(f"{PROG}: warning: leaving out {value} for model={key[0]!r} "
                    f"phase={key[1]!r} {dict(labels)}")
            return None
        return key

    for labels, value in co2e:
        key = keep(labels, value)
        scope = labels.get("scope", "")
        if key is not None and scope in (*SCOPES, TOTAL_SCOPE):
            scoped.setdefault(key, {})[scope] = value
    for labels, value in energy:
        key = keep(labels, value)
        if key is not None:
            joules[key] = value
    liters: dict[tuple[str, str], dict[str, float]] = {}
    for labels, value in water:
        key = keep(labels, value)
        if key is not None and labels.get("scope") in WATER_SCOPES:
            liters.setdefault(key, {})[labels["scope"]] = value
    rows = []
    for key in sorted(scoped.keys() | joules.keys()):
        by_scope = scoped.get(key, {})
        grams = {scope: by_scope.get(scope, 0.0) for scope in SCOPES}
        total = by_scope.get(TOTAL_SCOPE, math.fsum(grams.values()))
        rows.append(Row(key[0], key[1], grams, total, joules.get(key, 0.0),
                        {s: liters.get(key, {}).get(s) for s in WATER_SCOPES}))
    return rows


def totals(rows: Sequence[Row]) -> Row:
    return Row(None, None, {s: math.fsum(r.grams[s] for r in rows) for s in SCOPES},
               math.fsum(r.total_grams for r in rows), math.fsum(r.energy_joules for r in rows),
               {s: _sum_or_none(r.water_liters[s] for r in rows) for s in WATER_SCOPES})


# --- output ----------------------------------------------------------------------------------

FIELDS = ("model", "phase", "operational_grams", "infrastructure_grams", "embodied_grams",
          "total_grams", "operational_share", "infrastructure_share", "embodied_share",
          "energy_joules", "energy_kwh", "water_onsite_liters", "water_offsite_liters")
"""JSON keys and CSV columns, in base units: grams, joules (and kWh), litres, shares as 0..1;
the water is null (empty) where the rule pack recorded none."""


def _record(row: Row) -> dict[str, str | float | None]:
    return {
        "model": row.model, "phase": row.phase,
        **{f"{s}_grams": row.grams[s] for s in SCOPES},
        "total_grams": row.total_grams,
        **{f"{s}_share": row.share(s) for s in SCOPES},
        "energy_joules": row.energy_joules, "energy_kwh": row.energy_kwh,
        **{f"{s}_liters": row.water_liters[s] for s in WATER_SCOPES},
    }


def render_json(rows: Sequence[Row]) -> str:
    return json.dumps([_record(r) for r in [*rows, totals(rows)]], indent=2) + "\n"


def _csv(fields: Sequence[str], records: Iterable[Mapping[str, object]]) -> str:
    """A header of `fields`, then each record's values in that order (None as empty). A text
    value goes through `csv_text`; numbers are written as they are (a negative number stays a
    number)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for record in records:
        writer.writerow(["" if (v := record[f]) is None else csv_text(v) if isinstance(v, str)
                         else v for f in fields])
    return out.getvalue()


def render_csv(rows: Sequence[Row]) -> str:
    def csv_record(row: Row) -> dict[str, str | float | None]:
        record = _record(row)
        if row.model is None:
            record["model"], record["phase"] = TOTAL_LABEL, ""
        return record

    return _csv(FIELDS, map(csv_record, [*rows, totals(rows)]))


def significant(value: float, digits: int = 3) -> str:
    """`value` with about `digits` significant digits, no exponent, thousands separated:
    15.0, 0.0375, 135,000."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = min(6, max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    return f"{value:,.{decimals}f}"


def grams(value: float) -> str:
    """g below 1 kg, kg below 1 t, t above; the unit padded so that right-aligned cells align."""
    for unit, size in (("t", 1e6), ("kg", 1e3)):
        if abs(value) >= size:
            return f"{significant(value / size)} {unit:<2}"
    return f"{significant(value)} g "


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


HEADER = ("MODEL", "PHASE", "OPERATIONAL", "INFRASTRUCTURE", "EMBODIED", "TOTAL",
          "OPER%", "INFRA%", "EMB%", "ENERGY kWh", "ENERGY J", "WATER ON-SITE L",
          "WATER OFF-SITE L")
LEFT = 2
"""The first LEFT columns are text (left-aligned); the others numbers (right-aligned)."""


def _cells(row: Row) -> list[str]:
    model = TOTAL_LABEL if row.model is None else printable(row.model) or NO_MODEL
    return [model, printable(row.phase or ""),
            *(grams(row.grams[s]) for s in SCOPES), grams(row.total_grams),
            *(percent(row.share(s)) for s in SCOPES),
            significant(row.energy_kwh), significant(row.energy_joules),
            *(_maybe(row.water_liters[s]) for s in WATER_SCOPES)]


def _aligned(title: str, body: Sequence[Sequence[str]], last: Sequence[str], left: int) -> str:
    """`title`, a blank line, `body` (the header first) in columns, a rule and `last`: the
    first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [*body, last]) for i in range(len(body[0]))]

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, "", *map(fmt, body), rule, fmt(last)]) + "\n"


def render_table(rows: Sequence[Row], *, since: Duration, step: Duration) -> str:
    title = f"CO2e per model and phase, last {since.text} (step {step.text})"
    return _aligned(title, [list(HEADER), *(_cells(r) for r in rows)], _cells(totals(rows)),
                    LEFT)


def markdown(header: Sequence[str], body: Sequence[Sequence[str]], last: Sequence[str],
             left: int) -> str:
    """A Markdown table: the first `left` columns left-aligned, the others right-aligned; the
    totals row `last` in bold."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.strip().replace("|", "\\|") for c in cells) + " |"

    align = ["---" if i < left else "---:" for i in range(len(header))]
    bold = [f"**{c.strip()}**" if c.strip() else "" for c in last]
    return "\n".join([line(header), line(align), *map(line, body), line(bold)]) + "\n"


def render_markdown(rows: Sequence[Row], *, since: Duration, step: Duration) -> str:
    title = f"CO2e per model and phase, last {since.text} (step {step.text})"
    return f"{title}\n\n" + markdown(HEADER, [_cells(r) for r in rows], _cells(totals(rows)),
                                     LEFT)


# --- per training run (--by run) -------------------------------------------------------------

CONTAINER_CO2E_RULE = "container:footprint_co2e_grams:rate5m"
CONTAINER_ENERGY_RULE = "container:footprint_energy_joules:rate5m"
CLEANEST_HOUR_RULE = "node:footprint_grid_intensity_cleanest_hour_grams_per_kwh:min1d"
TRAINING_INFO = 'footprint_container_info{phase="training",owner_name!=""}'
"""The containers of training runs: phase training (the kubeflow-training model rule, or the
footprint.dev/phase label) and a controlling owner (the run)."""
RUN_LABELS = ("namespace", "owner_kind", "owner_name", "model")
OWNERS = ("group by (namespace, pod, owner_kind, owner_name) "
          f"(last_over_time({TRAINING_INFO}[5m]))")
"""Each training pod's owner. last_over_time keeps it for 5 minutes after the pod's last
scrape, as long as the rate5m records of its counters last."""

RunKey = tuple[str, str, str, str]


def _owned(expr: str) -> str:
    """`expr` (labelled namespace, pod) restricted to training pods, with their owner."""
    return (f"({expr}) * on (namespace, pod) group_left (owner_kind, owner_name) {OWNERS}")


def run_sum_query(expr: str, since: Duration, step: Duration, *extra: str,
                  scale: str = "") -> str:
    """The Riemann sum, per run, of a per-container rate or gauge over the period."""
    by = ", ".join((*RUN_LABELS, *extra))
    return (f"sum by ({by}) (sum_over_time(({_owned(expr)})[{since.text}:{step.text}]))"
            f" * {step.promql_seconds()}{scale}")


def run_queries(since: Duration, step: Duration) -> dict[str, str]:
    """The instant queries of --by run, by name (docs/report.md, "Per training run")."""
    span = f"[{since.text}:{step.text}]"
    kwh = f" / {JOULES_PER_KWH:g}"
    return {
        "co2e": run_sum_query(CONTAINER_CO2E_RULE, since, step, "scope"),
        "energy": run_sum_query(CONTAINER_ENERGY_RULE, since, step),
        "gpu": run_sum_query(
            'sum by (node, namespace, pod, model) '
            '(footprint_container_allocation_ratio{resource="gpu"})', since, step, "node"),
        "gpu_count": f'max by (node, gpu_count) (max_over_time(footprint_node_info{span}))',
        "start": f"min by ({', '.join(RUN_LABELS)}) (min_over_time(timestamp({TRAINING_INFO})"
                 f"{span}))",
        "end": f"max by ({', '.join(RUN_LABELS)}) (max_over_time(timestamp({TRAINING_INFO})"
               f"{span}))",
        "water_onsite": run_sum_query(
            f"{CONTAINER_ENERGY_RULE} * on (node) group_left () "
            "max by (node) (footprint_wue_liters_per_kwh)", since, step, scale=kwh),
        "water_offsite": run_sum_query(
            f"{CONTAINER_ENERGY_RULE} * on (node) group_left () (max by (node) (footprint_pue)"
            " * on (node) max by (node) (footprint_grid_water_intensity_liters_per_kwh))",
            since, step, scale=kwh),
        "shiftable": run_sum_query(
            f'sum without (scope) ({CONTAINER_CO2E_RULE}{{scope="operational"}}) '
            f"- on (node, namespace, pod, container, model, phase) "
            f"{CONTAINER_ENERGY_RULE}{kwh} * on (node) group_left () {CLEANEST_HOUR_RULE}",
            since, step),
    }


@dataclass
class RunRow:
    """One training run, or the totals (kind and name None)."""

    namespace: str | None
    kind: str | None
    name: str | None
    model: str | None
    start: float | None
    end: float | None
    gpu_hours: float | None
    energy_joules: float
    grams: dict[str, float]
    total_grams: float
    water_onsite_liters: float | None = None
    water_offsite_liters: float | None = None
    shiftable_grams: float | None = None

    @property
    def energy_kwh(self) -> float:
        return self.energy_joules / JOULES_PER_KWH

    @property
    def grams_per_gpu_hour(self) -> float | None:
        return self.total_grams / self.gpu_hours if self.gpu_hours else None

    @property
    def duration_seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


def _run_key(labels: Mapping[str, str]) -> RunKey:
    return (labels.get("namespace", ""), labels.get("owner_kind", ""),
            labels.get("owner_name", ""), labels.get("model", ""))


def _finite(samples: Iterable[Sample], what: str) -> Iterator[Sample]:
    for labels, value in samples:
        if math.isfinite(value):
            yield labels, value
        else:
            _eprint(f"{PROG}: warning: leaving out {value} ({what}) for {dict(labels)}")


def build_run_rows(results: Mapping[str, Sequence[Sample]], *,
                   model: str | None = None) -> list[RunRow]:
    """Rows sorted by namespace, kind, name and model, from the answers to run_queries."""
    def by_run(name: str) -> dict[RunKey, float]:
        out: dict[RunKey, float] = {}
        for labels, value in _finite(results.get(name, ()), name):
            out[_run_key(labels)] = out.get(_run_key(labels), 0.0) + value
        return out

    scoped: dict[RunKey, dict[str, float]] = {}
    for labels, value in _finite(results.get("co2e", ()), "co2e"):
        scope = labels.get("scope", "")
        if scope in (*SCOPES, TOTAL_SCOPE):
            scoped.setdefault(_run_key(labels), {})[scope] = value
    gpu_counts: dict[str, float] = {}
    for labels, _ in results.get("gpu_count", ()):
        try:
            count = float(labels.get("gpu_count", ""))
        except ValueError:
            continue
        node = labels.get("node", "")
        gpu_counts[node] = max(count, gpu_counts.get(node, 0.0))
    gpu_hours: dict[RunKey, float] = {}
    for labels, ratio_seconds in _finite(results.get("gpu", ()), "gpu"):
        key, node = _run_key(labels), labels.get("node", "")
        if ratio_seconds and node not in gpu_counts:
            _eprint(f"{PROG}: warning: node {node!r} publishes no "
                    f"footprint_node_info{{gpu_count}}; its GPU-hours are left out of "
                    f"{key[1]}/{key[2]}")
            continue
        gpu_hours[key] = gpu_hours.get(key, 0.0) + ratio_seconds * gpu_counts.get(node, 0) / 3600
    energy, start, end = by_run("energy"), by_run("start"), by_run("end")
    water_on, water_off, shiftable = (by_run("water_onsite"), by_run("water_offsite"),
                                      by_run("shiftable"))
    for key, value in shiftable.items():  # the difference of two equal sums: float noise
        if abs(value) < 1e-9 * max(1.0, scoped.get(key, {}).get("operational", 0.0)):
            shiftable[key] = 0.0
    rows = []
    for key in sorted(scoped.keys() | energy.keys() | start.keys()):
        if model is not None and key[3] != model:
            continue
        by_scope = scoped.get(key, {})
        grams_ = {scope: by_scope.get(scope, 0.0) for scope in SCOPES}
        rows.append(RunRow(
            key[0], key[1], key[2], key[3], start.get(key), end.get(key), gpu_hours.get(key),
            energy.get(key, 0.0), grams_, by_scope.get(TOTAL_SCOPE, math.fsum(grams_.values())),
            water_on.get(key), water_off.get(key), shiftable.get(key)))
    return rows


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def run_totals(rows: Sequence[RunRow]) -> RunRow:
    starts = [r.start for r in rows if r.start is not None]
    ends = [r.end for r in rows if r.end is not None]
    return RunRow(
        None, None, None, None, min(starts, default=None), max(ends, default=None),
        _sum_or_none(r.gpu_hours for r in rows), math.fsum(r.energy_joules for r in rows),
        {s: math.fsum(r.grams[s] for r in rows) for s in SCOPES},
        math.fsum(r.total_grams for r in rows),
        _sum_or_none(r.water_onsite_liters for r in rows),
        _sum_or_none(r.water_offsite_liters for r in rows),
        _sum_or_none(r.shiftable_grams for r in rows))


RUN_FIELDS = ("namespace", "kind", "name", "model", "start", "end", "duration_seconds",
              "gpu_hours", "energy_joules", "energy_kwh", "operational_grams",
              "infrastructure_grams", "embodied_grams", "total_grams", "grams_per_gpu_hour",
              "water_onsite_liters", "water_offsite_liters", "shiftable_savings_grams")
"""JSON keys and CSV columns of --by run: times in RFC 3339 (UTC), grams, joules, litres."""


def iso(at: float | None, *, seconds: bool = True) -> str | None:
    if at is None:
        return None
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def _run_record(row: RunRow) -> dict[str, str | float | None]:
    return {
        "namespace": row.namespace, "kind": row.kind, "name": row.name, "model": row.model,
        "start": iso(row.start), "end": iso(row.end), "duration_seconds": row.duration_seconds,
        "gpu_hours": row.gpu_hours, "energy_joules": row.energy_joules,
        "energy_kwh": row.energy_kwh, **{f"{s}_grams": row.grams[s] for s in SCOPES},
        "total_grams": row.total_grams, "grams_per_gpu_hour": row.grams_per_gpu_hour,
        "water_onsite_liters": row.water_onsite_liters,
        "water_offsite_liters": row.water_offsite_liters,
        "shiftable_savings_grams": row.shiftable_grams,
    }


def render_runs_json(rows: Sequence[RunRow]) -> str:
    return json.dumps([_run_record(r) for r in [*rows, run_totals(rows)]], indent=2) + "\n"


def render_runs_csv(rows: Sequence[RunRow]) -> str:
    def csv_record(row: RunRow) -> dict[str, str | float | None]:
        record = _run_record(row)
        if row.kind is None:
            record["namespace"], record["kind"], record["name"], record["model"] = (
                "", "", TOTAL_LABEL, "")
        return record

    return _csv(RUN_FIELDS, map(csv_record, [*rows, run_totals(rows)]))


RUN_HEADER = ("NAMESPACE", "KIND", "NAME", "MODEL", "START", "END", "GPU-HOURS", "ENERGY kWh",
              "OPERATIONAL", "INFRASTRUCTURE", "EMBODIED", "TOTAL", "g/GPU-h",
              "WATER ON-SITE L", "WATER OFF-SITE L", "SHIFTABLE")
RUN_LEFT = 6


def _maybe(value: float | None, fmt: Any = significant) -> str:
    return "-" if value is None else str(fmt(value))


def _run_cells(row: RunRow) -> list[str]:
    return [printable(row.namespace or ""), printable(row.kind or ""),
            TOTAL_LABEL if row.kind is None else printable(row.name or ""),
            "" if row.kind is None else printable(row.model or "") or NO_MODEL,
            iso(row.start, seconds=False) or "-", iso(row.end, seconds=False) or "-",
            _maybe(row.gpu_hours), significant(row.energy_kwh),
            *(grams(row.grams[s]) for s in SCOPES), grams(row.total_grams),
            _maybe(row.grams_per_gpu_hour), _maybe(row.water_onsite_liters),
            _maybe(row.water_offsite_liters), _maybe(row.shiftable_grams, grams)]


def _run_title(since: Duration, step: Duration, until: float | None) -> str:
    end = "" if until is None else f" until {iso(until)}"
    return f"CO2e per training run, last {since.text}{end} (step {step.text})"


def render_runs_table(rows: Sequence[RunRow], *, since: Duration, step: Duration,
                      until: float | None = None) -> str:
    return _aligned(_run_title(since, step, until),
                    [list(RUN_HEADER), *(_run_cells(r) for r in rows)],
                    _run_cells(run_totals(rows)), RUN_LEFT)


def render_runs_markdown(rows: Sequence[RunRow], *, since: Duration, step: Duration,
                         until: float | None = None) -> str:
    return f"{_run_title(since, step, until)}\n\n" + markdown(
        RUN_HEADER, [_run_cells(r) for r in rows], _run_cells(run_totals(rows)), RUN_LEFT)


def main_runs(args: argparse.Namespace, conn: Connection, since: Duration, step: Duration,
              at: float) -> int:
    results = {name: instant_query(args.prometheus, query, at, args.timeout, conn)
               for name, query in run_queries(since, step).items()}
    rows = build_run_rows(results, model=args.model)
    if not rows:
        which = "" if args.model is None else f" of model {args.model!r}"
        _eprint(f"{PROG}: no training runs{which} in the last {since.text} (containers with "
                f'footprint_container_info{{phase="training"}} and an owner; {NO_DATA_HINT})')
        return 1
    if args.format == "json":
        sys.stdout.write(render_runs_json(rows))
    elif args.format == "csv":
        sys.stdout.write(render_runs_csv(rows))
    elif args.format == "markdown":
        sys.stdout.write(render_runs_markdown(rows, since=since, step=step, until=args.until))
    else:
        sys.stdout.write(render_runs_table(rows, since=since, step=step, until=args.until))
    return 0


# --- main ------------------------------------------------------------------------------------

def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    since: Duration = args.since
    step: Duration = args.step or min(DEFAULT_STEP, since, key=lambda d: d.seconds)
    if step.seconds > since.seconds:
        _eprint(f"{PROG}: error: --step {step.text} is longer than --since {since.text}")
        return 2
    now = time.time() if args.until is None else args.until
    try:
        conn = connection(args)
        if args.by == "run":
            return main_runs(args, conn, since, step, now)
        co2e = instant_query(args.prometheus, co2e_query(since, step), now, args.timeout, conn)
        energy = instant_query(args.prometheus, energy_query(since, step), now, args.timeout,
                               conn)
        water = instant_query(args.prometheus, water_query(since, step), now, args.timeout,
                              conn)
    except ReportError as exc:
        _eprint(f"{PROG}: error: {exc}")  # what came from the server is redacted already
        return 2
    rows = build_rows(co2e, energy, model=args.model, water=water)
    if not rows:
        which = "" if args.model is None else f" for model {args.model!r}"
        others = sorted({labels.get("model", "") or NO_MODEL for labels, _ in co2e})
        seen = f"; models with data: {', '.join(others)}" if args.model is not None and others \
            else ""
        _eprint(f"{PROG}: no footprint data{which} in the last {since.text} ({NO_DATA_HINT})"
                f"{seen}")
        return 1
    if args.format == "json":
        sys.stdout.write(render_json(rows))
    elif args.format == "csv":
        sys.stdout.write(render_csv(rows))
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(rows, since=since, step=step))
    else:
        sys.stdout.write(render_table(rows, since=since, step=step))
    return 0
