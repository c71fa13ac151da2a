"""How `footprint-exporter report` reaches the query API (docs/report.md, "Authentication and
TLS"): the credentials and extra headers it sends, read from files and options, the TLS
context, and the redaction of every secret from what it prints."""

from __future__ import annotations

import argparse
import base64
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter import secrets
from exporter.report.common import CONTROL, ReportError, printable
from exporter.schema import describe_secret, shown_path

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP header name (RFC 9110 token)."""
CREDENTIAL_OPTIONS = "--bearer-token-file, or --basic-auth-user and --basic-auth-password-file"
NOT_SECRET_HEADERS = frozenset({"x-scope-orgid"})
"""--header names whose values are not redacted from what the report prints: a Mimir or Cortex
tenant is no secret, and is often also the name of a namespace that the report shows."""
REDACTED = "[redacted]"
"""What the report prints in place of a secret that the server sent back."""


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
        if self.secrets and CONTROL.search(text):
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
    """The secret in the file named by `option` (`exporter.secrets`' rule: whitespace around it
    removed, one line, not empty); ReportError (never the content, nor a name that may be a
    pasted secret) when it cannot be read or is not one secret."""
    fix = f"give {option} the path of a file that holds the {what}"
    try:
        return secrets.read_secret_file(Path(text))
    except secrets.SecretError as exc:
        alone = ", alone on one line" if exc.reason == "lines" else ""
        raise ReportError(f"{option}: {exc}; {fix}{alone}") from None


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
