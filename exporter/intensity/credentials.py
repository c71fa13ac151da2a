"""API credentials read from a mounted Secret file or an environment variable, never shown.

Files are read, and values checked, by `exporter.secrets` (one rule with the report's secret
files); this module names the setting in errors and keeps the value behind `Secret`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from exporter.config import ConfigError, describe_secret
from exporter.schema import looks_secret
from exporter.schema import shown_path as shown_path
from exporter.secrets import MAX_SECRET_BYTES as MAX_SECRET_BYTES
from exporter.secrets import SecretError, check_secret, read_secret_file

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONVENTIONAL_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


def shown_env_name(name: str) -> str | None:
    """`name` when it looks like an environment variable's name as people write them (capitals,
    digits and `_`, words of at most 16 characters, at most 4 digits), else None: a
    mixed-case or long run of letters and digits is more likely a token pasted where its
    variable's name belongs, and is never shown."""
    conventional = (CONVENTIONAL_ENV_NAME.fullmatch(name) is not None
                    and all(len(word) <= 16 for word in name.split("_"))
                    and sum(c.isdigit() for c in name) <= 4)
    return name if conventional and not looks_secret(name) else None

REDACTED = "<redacted>"


class Secret:
    """A token or password; its repr and str name where it came from, never its value."""

    __slots__ = ("_file", "_source", "_value")

    def __init__(self, value: str, *, source: str = "literal", file: Path | None = None) -> None:
        self._value = value
        self._source = source
        self._file = file

    @classmethod
    def load(cls, *, file: str = "", env: str = "", key: str) -> Secret:
        """Read the secret named by `key`'s `<x>_file` or `<x>_env` setting (the file wins).

        Raises ConfigError naming the key and the file or variable, never the value, nor a
        setting that looks like a secret pasted where its file or variable name belongs.
        """
        if file:
            path = Path(file)
            try:
                value = read_secret_file(path)
            except SecretError as exc:
                raise ConfigError(f"{key}: {exc}") from None
            return cls(value, source=f"file {shown_path(path)}", file=path)
        if env:
            env_key = key.removesuffix("_file") + "_env"
            if not ENV_NAME.fullmatch(env) or len(env) > 255:
                raise ConfigError(f"{env_key}: expected the name of an environment variable, "
                                  f"got {describe_secret(env)} that is not one (a pasted "
                                  "secret? put the secret in the variable, or in a file)")
            shown = shown_env_name(env)
            value = os.environ.get(env, "")
            if not value.strip() and shown is None:
                raise ConfigError(
                    f"{env_key}: the environment variable it names is unset or empty; the name, "
                    f"{describe_secret(env)}, is not shown: it does not look like a variable "
                    "name (capitals, digits and '_', e.g. FOOTPRINT_TOKEN), so it may be a "
                    "pasted secret: put the secret in a variable or a file and name that here")
            if not value.strip():
                raise ConfigError(f"{env_key}: environment variable {env} is unset or empty")
            named = shown or "(name not shown)"
            try:
                value = check_secret(value, f"environment variable {named}")
            except SecretError as exc:
                raise ConfigError(f"{env_key}: {exc}") from None
            return cls(value, source=f"env {named}")
        raise ConfigError(f"{key}: set a file (a mounted Secret) or an environment variable")

    @property
    def origin(self) -> str:
        """` (from file '/path')`, ` (from env NAME)`, or "" for a literal: for log lines."""
        return "" if self._source == "literal" else f" (from {self._source})"

    def reveal(self) -> str:
        """The value, for the one HTTP header or auth field that needs it."""
        return self._value

    def reload(self) -> None:
        """Read the file again (a rotated Kubernetes Secret is updated in place); keep the old
        value when the file cannot be read or holds no secret (by `exporter.secrets`' rule)."""
        if self._file is None:
            return
        try:
            self._value = read_secret_file(self._file)
        except SecretError:
            return

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the value replaced."""
        return text.replace(self._value, REDACTED) if self._value else text

    def __repr__(self) -> str:
        return f"Secret({self._source})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")

