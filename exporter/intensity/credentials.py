"""API credentials read from a mounted Secret file or an environment variable, never shown."""

from __future__ import annotations

import os
import re
from pathlib import Path

from exporter.config import ConfigError, describe_secret
from exporter.schema import shown_path as shown_path

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

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
            return cls(_read_file(path, key), source=f"file {path}", file=path)
        if env:
            env_key = key.removesuffix("_file") + "_env"
            if not ENV_NAME.fullmatch(env) or len(env) > 255:
                raise ConfigError(f"{env_key}: expected the name of an environment variable, "
                                  f"got {describe_secret(env)} that is not one (a pasted "
                                  "secret? put the secret in the variable, or in a file)")
            value = os.environ.get(env, "").strip()
            if not value:
                raise ConfigError(f"{env_key}: environment variable {env} is unset or empty")
            return cls(value, source=f"env {env}")
        raise ConfigError(f"{key}: set a file (a mounted Secret) or an environment variable")

    @property
    def origin(self) -> str:
        """` (from file /path)`, ` (from env NAME)`, or "" for a literal: for log lines."""
        return "" if self._source == "literal" else f" (from {self._source})"

    def reveal(self) -> str:
        """The value, for the one HTTP header or auth field that needs it."""
        return self._value

    def reload(self) -> None:
        """Read the file again (a rotated Kubernetes Secret is updated in place); keep the old
        value when the file cannot be read."""
        if self._file is None:
            return
        try:
            value = self._file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return
        if value:
            self._value = value

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the value replaced."""
        return text.replace(self._value, REDACTED) if self._value else text

    def __repr__(self) -> str:
        return f"Secret({self._source})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


def _read_file(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {shown_path(path)} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value
