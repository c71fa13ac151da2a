"""The one way Footprint reads a secret (issue 21): a token or password from a file (a mounted
Kubernetes Secret, `--bearer-token-file`), or from an environment variable's value.

One rule for all of them (the live intensity APIs' `token_file` and `password_file` in
`exporter.intensity.credentials`, the report's `--bearer-token-file` and
`--basic-auth-password-file` in `exporter.report.auth`):

- the file is read by `exporter.schema.read_file`: a regular file of at most
  `MAX_SECRET_BYTES` (a FIFO or a device is refused, never waited on);
- it must be UTF-8;
- whitespace around the secret is removed, as Prometheus does for its own `*_file` settings
  (Go's `strings.TrimSpace`): the trailing newline an editor or `echo` adds (`\\n` or
  `\\r\\n`), and a stray space. A token has none; a password that starts or ends with a space
  cannot be given this way, as with Prometheus;
- what is left must not be empty, and must be one line without control characters (a tab
  aside): no token has a line break inside, and a file of several lines is almost always the
  wrong file (a kubeconfig, a PEM key), whose content must not become a header;
- an error (`SecretError`) names the file only through `exporter.schema.shown_path` (a name
  that may be a pasted secret is described by its length) and never shows any byte of the
  content. The caller puts the setting's name in front and the fix after.

This module imports nothing from `exporter.intensity`, `exporter.report` or `exporter.server`
(tests/test_layers.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter.schema import FileRefused, read_file, shown_path

MAX_SECRET_BYTES = 64 << 10
"""The largest token or password file: 64 KiB (a token is tens of bytes, a JWT a few KiB)."""
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
"""Control characters but tab, line feed and carriage return (which are told apart)."""


class SecretError(Exception):
    """A secret that could not be read or is not one; str(): why, naming the file (through
    `shown_path`) or the variable, never anything in it. `reason`: `unreadable`, `encoding`,
    `empty`, `lines` or `control`."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def check_secret(text: str, where: str) -> str:
    """`text` without the whitespace around it, when what is left is one secret: SecretError
    naming `where` (how the error names its origin: a shown path, or a variable) when it is
    empty, holds a line break or a control character."""
    value = text.strip()
    if not value:
        raise SecretError("empty", f"{where} is empty")
    if "\n" in value or "\r" in value:
        raise SecretError("lines", f"{where} holds more than one line")
    if _CONTROL.search(value):
        raise SecretError("control", f"{where} holds a control character, as no token or "
                                     "password does")
    return value


def read_secret_file(path: Path, *, limit: int = MAX_SECRET_BYTES) -> str:
    """The secret in the file `path` (the module's rule); SecretError when it cannot be read
    or is not one secret."""
    try:
        data = read_file(path, limit)
    except FileRefused as exc:
        raise SecretError("unreadable", f"cannot read {shown_path(path)} ({exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("encoding", f"{shown_path(path)} is not UTF-8 text") from None
    return check_secret(text, shown_path(path))
