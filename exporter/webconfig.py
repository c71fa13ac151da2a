"""`--web.config.file`: TLS, basic auth and response headers in exporter-toolkit's format."""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import enum
import hashlib
import hmac
import re
import secrets
import ssl
import statistics
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter import logs
from exporter.intensity.credentials import shown_path
from exporter.schema import (
    ConfigError,
    FileRefused,
    boolean,
    choice,
    describe,
    describe_secret,
    join,
    read_file,
    read_yaml,
    section,
)

log = logs.get("webconfig")

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,  # asked, never required nor verified: grants nothing
    "RequireAnyClientCert": ssl.CERT_REQUIRED,  # stricter here: also verified against the CA
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
"""exporter-toolkit's client_auth_type -> the server context's verify_mode (docs/web-config.md)."""

CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}  # the toolkit keeps it too

NEEDS_CLIENT_CA = ("RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

CIPHER_SUITES: Mapping[str, str | None] = {
    # Go's tls.CipherSuites() names -> OpenSSL's; None: TLS 1.3, not configurable (as in Go)
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}

HEADERS: Mapping[str, tuple[str, ...]] = {
    # the toolkit's allowed response headers; a non-empty tuple lists the only values allowed
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version", "cipher_suites", "prefer_server_cipher_suites")
HTTP_KEYS = ("headers", "http2")
UNSUPPORTED = ("rate_limit", "auth_excluded_paths", "tls_server_config.cert",
               "tls_server_config.key", "tls_server_config.client_ca",
               "tls_server_config.client_allowed_sans", "tls_server_config.curve_preferences")
"""Toolkit keys this exporter refuses by name rather than ignores (docs/web-config.md)."""
_REFUSED = dict.fromkeys(UNSUPPORTED,
                         "not supported by footprint-exporter (see docs/web-config.md)")

BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
BCRYPT_LIKE = re.compile(r"\$2[aby]?\$")
"""The start of a bcrypt hash anywhere: a user name holding one is a hash pasted as a name."""

MIN_BCRYPT_COST = 4
MAX_BCRYPT_COST = 14
"""The dearest bcrypt cost accepted. Each step doubles the time: cost 10 takes about 65 ms on a
current x86 core, 14 about 1 s; htpasswd's default is 5 and guides use 10 to 12. A check holds a
bcrypt worker until it ends and cannot be interrupted (SIGTERM waits for it), so a cost-31 hash
would hold one for about 38 hours per wrong password (docs/web-config.md, "Basic auth")."""

BCRYPT_SECONDS_AT_COST_10 = 0.065
"""What a cost-10 check took on a 2-core x86 VM (measured; for the error above only)."""

MAX_PEM_BYTES = 1 << 20
"""The largest certificate, key or CA file: 1 MiB (Mozilla's whole CA bundle is ~220 KB)."""

UNAUTHENTICATED_ROUTES = frozenset({"healthz", "readyz"})
"""Routes, by name, served without basic auth: Kubernetes probes cannot easily send credentials.
The server names its probe routes so; this module imports nothing from it."""


def _mapping(value: object, key: str, allowed: tuple[str, ...]) -> Mapping[str, object]:
    """A section (`key` "" is the top level) whose keys are all in `allowed`; never echoed."""
    return section(value, key, allowed, secret=True, unsupported=_REFUSED)


def _readable(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a file name, got {describe_secret(value)}")
    path = base / value
    try:  # bounded, a regular file; ssl then loads it by name
        read_file(path, MAX_PEM_BYTES)
    except FileRefused as exc:
        # key_file given a pasted PEM key must not print the key
        where = "" if Path(value).is_absolute() else f" in {base}"
        raise ConfigError(f"{key}: expected a readable file, got {shown_path(Path(value))}"
                          f"{where} ({exc})") from None
    return path


def _ssl_reason(exc: ssl.SSLError) -> str:
    text = str(exc.reason or exc.strerror or exc).splitlines()[0]
    return re.sub(r"^\[\w+\] | \(_ssl\.c:\d+\)$", "", text)


def _no_passphrase() -> bytes:
    raise ConfigError("tls_server_config.key_file: expected an unencrypted PEM key, "
                      "got one that needs a passphrase")


@dataclass(frozen=True)
class TlsSettings:
    """`tls_server_config` as applied: the server context and what it was built from."""

    context: ssl.SSLContext
    client_auth_type: str
    min_version: str
    max_version: str
    files: tuple[Path, ...] = ()
    """The certificate, key and client CA files, as named (symbolic links not resolved)."""
    section: Mapping[str, object] = field(default_factory=lambda: types.MappingProxyType({}))
    base: Path = Path()
    """The section and the directory its relative names are taken from, to build it again."""


def parse_tls(data: object, base: Path) -> TlsSettings | None:
    """`tls_server_config` -> a server-side SSLContext; None when the section is absent/empty."""
    key = "tls_server_config"
    tls = _mapping(data, key, TLS_KEYS)
    if not tls:
        return None
    if "cert_file" not in tls:
        raise ConfigError(f"{key}.cert_file: expected the server certificate's PEM file, "
                          "got nothing")
    if "key_file" not in tls:
        raise ConfigError(f"{key}.key_file: expected the server key's PEM file, got nothing")
    cert = _readable(tls["cert_file"], f"{key}.cert_file", base)
    private = _readable(tls["key_file"], f"{key}.key_file", base)
    auth = tls.get("client_auth_type", "NoClientCert")
    auth = CLIENT_AUTH_ALIASES.get(auth, auth) if isinstance(auth, str) else auth
    auth = choice(auth, f"{key}.client_auth_type", CLIENT_AUTH_TYPES)
    lo = choice(tls.get("min_version", "TLS12"), f"{key}.min_version", TLS_VERSIONS)
    hi = choice(tls.get("max_version", "TLS13"), f"{key}.max_version", TLS_VERSIONS)
    if TLS_VERSIONS[hi] < TLS_VERSIONS[lo]:
        raise ConfigError(f"{key}.max_version: expected a version >= min_version ({lo}), "
                          f"got {hi!r}")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[lo]
    ctx.maximum_version = TLS_VERSIONS[hi]
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        raise ConfigError(f"{key}.cert_file: expected a PEM certificate, got {str(cert)!r} "
                          f"({_ssl_reason(exc)})") from None
    try:
        ctx.load_cert_chain(cert, private, password=_no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(f"{key}.key_file: expected the PEM private key of cert_file, got "
                          f"{str(private)!r} ({_ssl_reason(exc)})") from None

    if "client_ca_file" in tls:
        ca_key = f"{key}.client_ca_file"
        ca = _readable(tls["client_ca_file"], ca_key, base)
        if auth == "NoClientCert":
            raise ConfigError(f"{key}.client_auth_type: expected a client_auth_type that uses "
                              f"client_ca_file, got 'NoClientCert'")
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"{ca_key}: expected PEM CA certificates, got {str(ca)!r} "
                              f"({_ssl_reason(exc)})") from None
    elif auth in NEEDS_CLIENT_CA:
        raise ConfigError(f"{key}.client_ca_file: expected the CA file that verifies client "
                          f"certificates with client_auth_type {auth}, got nothing")
    ctx.verify_mode = CLIENT_AUTH_TYPES[auth]
    files = (cert, private) + ((ca,) if "client_ca_file" in tls else ())

    suites = tls.get("cipher_suites")
    if suites is not None:
        if not isinstance(suites, list) or not suites:
            raise ConfigError(f"{key}.cipher_suites: expected a list of Go cipher suite names, "
                              f"got {describe(suites)}")
        names = [CIPHER_SUITES[choice(s, f"{key}.cipher_suites", CIPHER_SUITES)]
                 for s in suites]
        tls12 = [n for n in names if n is not None]
        if tls12:
            try:
                ctx.set_ciphers(":".join(tls12))
            except ssl.SSLError as exc:
                raise ConfigError(f"{key}.cipher_suites: expected suites this OpenSSL "
                                  f"({ssl.OPENSSL_VERSION}) offers, got {suites!r} "
                                  f"({_ssl_reason(exc)})") from None
    if boolean(tls.get("prefer_server_cipher_suites", True),
               f"{key}.prefer_server_cipher_suites"):
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return TlsSettings(ctx, auth, lo, hi, files, types.MappingProxyType(dict(tls)), base)


Signature = tuple[tuple[int, ...] | str, ...]


def _signature(files: tuple[Path, ...]) -> Signature:
    """What identifies the files' contents without reading them: device, inode, size and
    change times of each (through symbolic links, as a projected volume's `..data` swap
    replaces them), or why one cannot be looked at."""
    parts: list[tuple[int, ...] | str] = []
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            parts.append(exc.strerror or type(exc).__name__)
        else:
            parts.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(parts)


class RotatingTls:
    """The listener's TLS context, built again when the certificate, key or client CA file
    changes, as cert-manager rotates them (docs/web-config.md#certificate-rotation).

    Called for every TLS handshake: it looks at the files (`stat`, 2-3 µs each, no read) and
    rebuilds the context only when one changed, with the same checks as at start-up. A new
    pair that fails them (a key that does not match, a half-written file) leaves the previous
    context serving and is logged once, with the reason; the next change is tried again.
    Connections already open keep the certificate they were established with."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._seen = _signature(settings.files)
        self.reloads = 0
        self.failures = 0

    def __call__(self) -> ssl.SSLContext:
        seen = _signature(self.settings.files)
        if seen != self._seen:
            self._seen = seen
            self._reload()
        return self.settings.context

    def _reload(self) -> None:
        old = self.settings
        names = ", ".join(shown_path(path) for path in old.files)
        try:
            new = parse_tls(old.section, old.base)
        except ConfigError as exc:
            self.failures += 1
            log.warning(f"tls_server_config: a certificate file changed but cannot be used; "
                        f"the previous certificate goes on serving until the files are "
                        f"fixed: {exc}",
                        extra=logs.fields(source="web_config", path=names, err=str(exc)))
            return
        assert new is not None  # the section is the one that built `old`
        self.settings = new
        self.reloads += 1
        log.info(f"tls_server_config: certificate files changed, new TLS handshakes use them "
                 f"({names})", extra=logs.fields(source="web_config", path=names))


def parse_headers(data: object) -> Mapping[str, str]:
    """`http_server_config`: the response headers, restricted to the toolkit's list."""
    key = "http_server_config"
    http = _mapping(data, key, HTTP_KEYS)
    if "http2" in http:
        boolean(http["http2"], f"{key}.http2")
    headers = _mapping(http.get("headers"), f"{key}.headers", tuple(HEADERS))
    out = {}
    for name, value in headers.items():
        where = f"{key}.headers.{name}"
        if value is None or value == "":
            continue  # the toolkit: unset if blank
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `X-XSS-Protection: 0`, read as a string as Go's YAML does
        if HEADERS[name]:
            choice(value, where, HEADERS[name])
        if not isinstance(value, str) or any(c in value for c in "\r\n"):
            raise ConfigError(f"{where}: expected a one-line string, got {describe(value)}")
        out[name] = value
    return types.MappingProxyType(out)


def parse_users(data: object) -> Mapping[str, bytes]:
    """`basic_auth_users`: user name -> bcrypt hash; a hash never appears in an error."""
    key = "basic_auth_users"
    if data is None:
        return types.MappingProxyType({})
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: expected a mapping of user name to bcrypt hash, "
                          f"got {describe_secret(data)}")
    users = {}
    for user, hashed in data.items():
        if not isinstance(user, str) or not user or ":" in user:
            # `alice:password` as a key would be a password: never shown
            raise ConfigError(f"{key}: expected user names as strings without ':', "
                              f"got {describe_secret(user)}")
        if BCRYPT_LIKE.search(user):
            raise ConfigError(f"{key}: expected user names, got {describe_secret(user)} that "
                              "looks like a bcrypt hash (not shown); write `name: hash`")
        where = join(key, user)  # a token-like name is not shown either
        match = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None or int(match.group(1)) < MIN_BCRYPT_COST:
            got = (f"a string of {len(hashed)} characters" if isinstance(hashed, str)
                   else f"a {type(hashed).__name__}")
            raise ConfigError(f"{where}: expected a bcrypt hash ($2y$, $2b$ or $2a$, "
                              f"cost {MIN_BCRYPT_COST:02}-{MAX_BCRYPT_COST}, 60 characters), "
                              f"got {got}")
        cost = int(match.group(1))
        if cost > MAX_BCRYPT_COST:
            raise ConfigError(
                f"{where}: expected a bcrypt hash of cost {MAX_BCRYPT_COST} or less, got cost "
                f"{cost}: each wrong password would hold a bcrypt worker for about "
                f"{_duration(BCRYPT_SECONDS_AT_COST_10 * 2 ** (cost - 10))} (cost 10: "
                f"{BCRYPT_SECONDS_AT_COST_10 * 1000:.0f} ms, doubling with each step), and "
                "shutdown waits for it; make the hash again with cost 10 to 12")
        users[user] = hashed.encode("ascii")
    return types.MappingProxyType(users)


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * scale:
            return f"{seconds / scale:.0f} {unit}"
    return f"{seconds:.1f} s"


def bcrypt_cost(hashed: bytes) -> int:
    """The cost of a hash `parse_users` accepted (`$2y$10$...` -> 10)."""
    return int(hashed[4:6])


def _credentials(header: str) -> tuple[str, bytes] | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
        user, sep, password = raw.partition(b":")
        return (user.decode("utf-8"), password) if sep else None
    except ValueError:  # binascii.Error, non-ASCII text, UnicodeDecodeError
        return None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    if len(password) > 72:  # bcrypt hashes 72 bytes at most; bcrypt<5 would drop the rest
        return False
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a NUL byte: bcrypt cannot have hashed it
        return False


class Verdict(enum.Enum):
    """What basic auth decided for one request."""

    OK = "ok"
    DENIED = "denied"  # 401
    BUSY = "busy"  # 429: no bcrypt worker within the wait, or the queue is full


BCRYPT_WORKERS = 2
"""bcrypt checks at once, each in a thread of its own (docs/web-config.md, "Basic auth")."""
BCRYPT_WAITING_PER_CLIENT = 4
"""Checks one client address may have waiting for a worker; more are answered 429 at once."""
BCRYPT_WAITING_TOTAL = 64
"""Checks waiting from all clients together; more are answered 429 at once, unless a check from
an address not yet tried can take the place of a tried address's (`BcryptPool`)."""
BCRYPT_MAX_WAIT_SECONDS = 5.0
"""The longest a check waits for a worker (half Prometheus' default scrape timeout); then 429."""
BCRYPT_TRIED_ADDRESSES = 4096
"""Tried client addresses remembered (`BcryptPool`), the least recently tried forgotten first:
about 0.5 MB at most."""

_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

T = TypeVar("T")


class BcryptPool:
    """A few worker threads for bcrypt, shared fairly between client addresses.

    At most `workers` checks run at once, and one client holds at most `workers - 1` of them
    (at least 1), so with 2 workers a flood from one address leaves a worker to everyone else.
    Checks that cannot start wait in one FIFO queue per client, served round-robin across
    clients; a queue holds at most `waiting_per_client` (all queues `waiting_total`), and a
    check waits at most `max_wait_seconds`: beyond either bound it is shed (None), never
    queued without end. Everything but the bcrypt itself runs in the event loop's thread.

    Many addresses: a check run with `spend=True` (every basic-auth check) makes its address
    *tried* until `record(client, ok=True)` (a success); at most `tried_addresses` are
    remembered. Tried addresses come second: together they hold at most `workers - 1` workers
    (at least 1), and their queues are served only when no untried address waits. When every
    queue is full, a check takes the place of the newest check in the longest queue of a tried
    address (for an untried client), or in a queue of the same standing two or more longer
    than its own (`_make_room`). A flood of wrong passwords, from however many addresses, thus
    gets one check per address at full priority; a first login from a new address waits at
    most for the first checks of addresses that are new too (docs/web-config.md, "Basic
    auth").
    """

    def __init__(self, workers: int = BCRYPT_WORKERS, *,
                 waiting_per_client: int = BCRYPT_WAITING_PER_CLIENT,
                 waiting_total: int = BCRYPT_WAITING_TOTAL,
                 max_wait_seconds: float = BCRYPT_MAX_WAIT_SECONDS,
                 tried_addresses: int = BCRYPT_TRIED_ADDRESSES) -> None:
        self.workers = workers
        self.per_client = max(1, workers - 1)
        self.waiting_per_client = waiting_per_client
        self.waiting_total = waiting_total
        self.max_wait_seconds = max_wait_seconds
        self.tried_addresses = tried_addresses
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy = 0
        self._busy_tried = 0
        self._running: collections.Counter[str] = collections.Counter()
        self._lanes: dict[str, collections.deque[asyncio.Future[bool | None]]] = {}
        """Waiting checks per client; a turn's result: None when shed, else `_take`'s."""
        self._waiting = 0
        self._tried: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def busy(self) -> int:
        """Checks running now."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Checks waiting for a worker now."""
        return self._waiting

    def tried(self, client: str) -> bool:
        """Whether `client` has had a check run, and no success since."""
        return client in self._tried

    def record(self, client: str, *, ok: bool) -> None:
        """A check from `client` ran: a failure keeps it tried, a success (or a credential
        the cache knows) makes it untried again."""
        if ok:
            self._tried.pop(client, None)
            return
        self._tried[client] = None
        self._tried.move_to_end(client)
        while len(self._tried) > self.tried_addresses:
            self._tried.popitem(last=False)

    async def run(self, client: str, call: Callable[[], T], *, spend: bool = False) -> T | None:
        """`call()` in a worker thread; None when shed. The worker counts as busy until the
        call returns, even if the request is cancelled (the client went away) meanwhile.
        `spend`: the client is tried from the moment the call starts (`record`)."""
        tried = await self._acquire(client)
        if tried is None:
            return None
        if spend:
            self.record(client, ok=False)
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix="bcrypt")
        try:
            future = self._executor.submit(call)
        except BaseException:
            self._release(client, tried)
            raise

        def done(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to free
                loop.call_soon_threadsafe(self._release, client, tried)

        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    def _startable(self, client: str) -> bool:
        return (self._busy < self.workers and self._running[client] < self.per_client
                and (client not in self._tried or self._busy_tried < self.per_client))

    def _take(self, client: str) -> bool:
        """Count a check as running; True when it runs as a tried address's."""
        tried = client in self._tried
        self._busy += 1
        self._busy_tried += tried
        self._running[client] += 1
        return tried

    def _make_room(self, client: str) -> bool:
        """Room in full queues for a check from `client`, by shedding the newest check of
        another queue (longest-queue drop): a tried address's queue for an untried client,
        else a queue of the same standing at least two longer than the client's own; False
        when there is none."""
        own = len(self._lanes.get(client, ()))
        tried = client in self._tried

        def fits(other: str) -> bool:
            length = len(self._lanes[other])
            if other == client:
                return False
            if other in self._tried and not tried:
                return True
            return (other in self._tried) == tried and length >= own + 2

        victims = [c for c in self._lanes if fits(c)]
        if not victims:
            return False
        victim = max(victims, key=lambda c: (c in self._tried, len(self._lanes[c])))
        lane = self._lanes[victim]
        turn = lane.pop()
        self._waiting -= 1
        if not lane:
            del self._lanes[victim]
        turn.set_result(None)  # shed: its request answers 429
        return True

    async def _acquire(self, client: str) -> bool | None:
        """None when shed, else whether the check runs as a tried address's."""
        lane = self._lanes.get(client)
        if lane is None and self._startable(client):
            return self._take(client)
        if len(lane or ()) >= self.waiting_per_client or (
                self._waiting >= self.waiting_total and not self._make_room(client)):
            return None
        if lane is None:
            lane = self._lanes[client] = collections.deque()
        turn: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        lane.append(turn)
        self._waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_seconds):
                return await turn
        except TimeoutError:
            if turn.done() and not turn.cancelled():
                return turn.result()  # decided as the wait ran out: the worker is ours
            self._leave(client, turn)
            return None
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                tried = turn.result()
                if tried is not None:
                    self._release(client, tried)
            else:
                self._leave(client, turn)
            raise

    def _leave(self, client: str, turn: asyncio.Future[bool | None]) -> None:
        lane = self._lanes.get(client)
        if lane is not None and turn in lane:
            lane.remove(turn)
            self._waiting -= 1
            if not lane:
                del self._lanes[client]

    def _next(self) -> str | None:
        """The client whose queue is served next: the first in round-robin order that may run
        one more check, a tried address only when no untried one can."""
        second = None
        for client in self._lanes:
            if self._running[client] >= self.per_client:
                continue
            if client not in self._tried:
                return client
            if second is None and self._busy_tried < self.per_client:
                second = client
        return second

    def _release(self, client: str, tried: bool) -> None:
        self._busy -= 1
        self._busy_tried -= tried
        self._running[client] -= 1
        if self._running[client] <= 0:
            del self._running[client]
        while self._busy < self.workers:
            chosen = self._next()
            if chosen is None:
                return
            lane = self._lanes.pop(chosen)
            turn = lane.popleft()
            self._waiting -= 1
            if lane:
                self._lanes[chosen] = lane  # to the back: round-robin between clients
            if not turn.done():
                turn.set_result(self._take(chosen))


def typical_cost(users: Mapping[str, bytes]) -> int:
    """The cost most users' hashes have: the median (the lower of the middle two), 10 with no
    users. Bounded by MAX_BCRYPT_COST, as every accepted hash is."""
    costs = sorted(bcrypt_cost(h) for h in users.values())
    return costs[(len(costs) - 1) // 2] if costs else 10


def decoy_hash(users: Mapping[str, bytes]) -> bytes:
    """A bcrypt hash no password matches, at the typical cost among `users` (`typical_cost`),
    not the highest: an unknown user costs the CPU of a typical known one, and `BasicAuth`
    pads every failed check's answer to the time of the dearest (a random salt and checksum:
    no hashing needed to make it)."""
    checksum = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return bcrypt.gensalt(typical_cost(users)) + checksum.encode("ascii")


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes in a small pool of worker threads
    (`BcryptPool`); a user's last good password is remembered as a SHA-256 of `user:password`
    and answered without bcrypt or waiting.

    A failed check is answered no sooner than a check at the highest configured cost takes
    (the median of the last 15 bcrypt runs on this machine, scaled as 2^cost): a known user
    with a cheap hash, an unknown user (a decoy at the typical cost) and a known user with the
    dearest hash answer a wrong password in the same time. The wait is an asyncio sleep, not a
    worker."""

    def __init__(self, users: Mapping[str, bytes], pool: BcryptPool | None = None) -> None:
        self._users = users
        self._verified: dict[str, bytes] = {}
        self.pool = pool or BcryptPool()
        self.decoy = decoy_hash(users)
        self.highest_cost = max((bcrypt_cost(h) for h in users.values()), default=10)
        self._per_round: collections.deque[float] = collections.deque(maxlen=15)
        """Seconds per 2^cost step of the last bcrypt runs."""

    @property
    def failure_seconds(self) -> float:
        """The least time a failed check takes to answer: one at the highest cost (0 until a
        bcrypt has run)."""
        samples = list(self._per_round)
        return statistics.median(samples) * (1 << self.highest_cost) if samples else 0.0

    def _cached(self, user: str, digest: bytes) -> bool:
        return hmac.compare_digest(self._verified.get(user, b""), digest)

    async def check(self, header: str | None, client: str = "") -> bool:
        """True when the header names a user and the password matches that user's hash."""
        return await self.verdict(header, client) is Verdict.OK

    async def verdict(self, header: str | None, client: str = "") -> Verdict:
        """OK, DENIED, or BUSY when the check was shed; `client` is the peer's address, the
        key the pool shares its workers by."""
        found = _credentials(header) if header else None
        if found is None:
            return Verdict.DENIED
        user, password = found
        digest = hashlib.sha256(user.encode("utf-8") + b":" + password).digest()
        if self._cached(user, digest):
            self.pool.record(client, ok=True)
            return Verdict.OK
        # shed or not before the user is looked up: a 429 says nothing about who exists
        outcome = await self.pool.run(client, lambda: self._verify(user, password, digest),
                                      spend=True)
        if outcome is None:
            return Verdict.BUSY
        matched, seconds, cost = outcome
        if cost is not None:
            self._per_round.append(seconds / (1 << cost))
        self.pool.record(client, ok=matched)
        if matched:
            return Verdict.OK
        await asyncio.sleep(max(0.0, self.failure_seconds - seconds))
        return Verdict.DENIED

    def _verify(self, user: str, password: bytes,
                digest: bytes) -> tuple[bool, float, int | None]:
        """In a worker thread: the bcrypt, unless the same password was verified meanwhile;
        whether it matched, the seconds it took, and its cost (None: no bcrypt ran)."""
        if self._cached(user, digest):
            return True, 0.0, None
        hashed = self._users.get(user)
        against = self.decoy if hashed is None else hashed  # unknown users cost a bcrypt too
        start = time.perf_counter()
        matched = _checkpw(password, against)
        seconds = time.perf_counter() - start
        cost = bcrypt_cost(against) if len(password) <= 72 else None  # over 72: no bcrypt ran
        if hashed is None or not matched:
            return False, seconds, cost
        self._verified[user] = digest
        return True, seconds, cost


@dataclass(frozen=True)
class WebConfig:
    """A validated `--web.config.file`: the listener's TLS, response headers and users."""

    tls: TlsSettings | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    users: Mapping[str, bytes] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context if self.tls else None

    def rotating_tls(self) -> RotatingTls | None:
        """The TLS context for the listener, following the certificate files (`RotatingTls`);
        None without TLS."""
        return RotatingTls(self.tls) if self.tls else None

    def describe(self) -> str:
        """One line for the log: what is on, never a password or hash."""
        tls = "TLS off"
        if self.tls:
            stricter = (", verified against client_ca_file"
                        if self.tls.client_auth_type == "RequireAnyClientCert" else "")
            tls = (f"TLS on ({self.tls.min_version}-{self.tls.max_version}, client "
                   f"certificates: {self.tls.client_auth_type}{stricter})")
        auth = f"basic auth for {len(self.users)} user(s)" if self.users else "no basic auth"
        headers = ", ".join(self.headers) or "none"
        return f"{tls}, {auth} (/healthz and /readyz exempt), extra headers: {headers}"

    def middlewares(self, pool: BcryptPool | None = None) -> tuple[Middleware, ...]:
        """The aiohttp middleware for basic auth and headers; none when neither is set. `pool`:
        the bcrypt workers (default `BcryptPool()`)."""
        if not self.users and not self.headers:
            return ()
        auth = BasicAuth(self.users, pool) if self.users else None
        extra = self.headers

        @web.middleware
        async def web_config(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                verdict = Verdict.OK
                route = request.match_info.route.name
                if auth is not None and route not in UNAUTHENTICATED_ROUTES:
                    verdict = await auth.verdict(request.headers.get(hdrs.AUTHORIZATION),
                                                 request.remote or "")
                if verdict is Verdict.DENIED:
                    log.debug(f"401 for {request.method} {request.path} from {request.remote}")
                    response: web.StreamResponse = web.Response(
                        status=401, text="Unauthorized\n",
                        headers={hdrs.WWW_AUTHENTICATE: "Basic"})
                elif verdict is Verdict.BUSY:
                    log.debug(f"429 for {request.method} {request.path} from {request.remote}: "
                              "every bcrypt worker busy")
                    response = web.Response(
                        status=429, text="Too Many Requests: authentication is busy, retry\n",
                        headers={hdrs.RETRY_AFTER: "1"})
                else:
                    response = await handler(request)
            except web.HTTPException as exc:
                for name, value in extra.items():
                    exc.headers.setdefault(name, value)
                raise
            if not response.prepared:
                for name, value in extra.items():
                    response.headers.setdefault(name, value)
            return response

        return (web_config,)


def parse_web_config(data: object, base: Path) -> WebConfig:
    """Validate a parsed YAML document; relative file names are taken from `base`."""
    top = _mapping(data, "", TOP_KEYS)
    return WebConfig(tls=parse_tls(top.get("tls_server_config"), base),
                     headers=parse_headers(top.get("http_server_config")),
                     users=parse_users(top.get("basic_auth_users")))


def load_web_config(path: Path | None) -> WebConfig:
    """Read `--web.config.file`; no file: plain HTTP, no auth, no extra headers."""
    if path is None:
        return WebConfig()
    data = read_yaml(path, "--web.config.file")
    try:
        return parse_web_config(data, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"--web.config.file {path}: {exc}") from None
