"""Logging in logfmt or JSON (as node_exporter writes them), with facts as fields, and a
throttle for repeated faults.

A fact about a fault travels as a field beside the message, so that a log pipeline can select
on it without parsing prose: `source=` (the reading source or subsystem, as in the `source`
label of footprint_exporter_errors_total), `path=` (the file, socket or URL), `err=` (the error
as the system gave it), and others where they help (`container=`, `device=`). Pass them with
`extra=logs.fields(...)`; the message still says the whole thing for a human."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

LEVELS = ("debug", "info", "warn", "error")

FIELDS = "footprint_fields"
"""The log record attribute that carries the fields (`fields()`)."""

_RESERVED = frozenset({"time", "level", "logger", "msg"})


def fields(**facts: object) -> dict[str, dict[str, str]]:
    """`extra=` for a logging call: each fact not None, as text, in the order given."""
    return {FIELDS: {key: str(value) for key, value in facts.items() if value is not None}}


def _facts(record: logging.LogRecord) -> dict[str, str]:
    found = getattr(record, FIELDS, None)
    if not isinstance(found, dict):
        return {}
    # a field named like a fixed key is renamed, never allowed to replace it
    return {(f"field_{key}" if key in _RESERVED else key): value
            for key, value in found.items()}


_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                  "-_./:@,+%[]()<>")


def _logfmt_value(value: str) -> str:
    """Bare when it needs no quoting (as Go's logfmt writes it), else quoted with JSON's
    escapes: a quote, a backslash or a control character (a line break, a terminal escape in
    a file name) cannot end the field or the line."""
    if value and all(char in _BARE for char in value):
        return value
    return json.dumps(value, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """`time=... level=... logger=... msg="..."`, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = {"WARNING": "warn"}.get(record.levelname, record.levelname.lower())
        msg = record.getMessage().replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        line = f'time={ts}.{int(record.msecs):03d}Z level={level} logger={record.name} msg="{msg}"'
        for key, value in _facts(record).items():
            line += f" {key}={_logfmt_value(value)}"
        if record.exc_info:
            line += f' err="{self.formatException(record.exc_info)!s}"'.replace("\n", " | ")
        return line


class JsonFormatter(logging.Formatter):
    """`{"time": ..., "level": ..., "logger": ..., "msg": ...}`, one object per line, as
    node_exporter's `--log.format=json` writes it."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = {"WARNING": "warn"}.get(record.levelname, record.levelname.lower())
        line = {"time": f"{ts}.{int(record.msecs):03d}Z", "level": level,
                "logger": record.name, "msg": record.getMessage()}
        line.update(_facts(record))
        if record.exc_info:
            line["err"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


FORMATS = ("logfmt", "json")


def setup(level: str, fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger("footprint")
    root.handlers[:] = [handler]
    root.setLevel({"warn": logging.WARNING}.get(level, level.upper()))
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"footprint.{name}")


class Throttle:
    """Logs a fault once per key and period, and its recovery once, so a bad file cannot flood."""

    def __init__(self, log: logging.Logger, *, period_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, source: str | None = None) -> None:
        self._log = log
        self._source = source
        self._period = period_seconds
        self._clock = clock
        self._last: dict[str, float] = {}

    def fault(self, key: str, message: str, **facts: object) -> None:
        """`message` at warn level, once per `key` and period; `facts` as fields (`fields()`),
        after the throttle's `source`."""
        now = self._clock()
        last = self._last.get(key)
        if last is None or now - last >= self._period:
            self._last[key] = now
            self._log.warning(message, extra=fields(source=self._source, **facts))

    def recovered(self, key: str, message: str, **facts: object) -> None:
        if self._last.pop(key, None) is not None:
            self._log.info(message, extra=fields(source=self._source, **facts))
