"""Logging in logfmt (as node_exporter writes it) and a throttle for repeated faults."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

LEVELS = ("debug", "info", "warn", "error")


class LogfmtFormatter(logging.Formatter):
    """`time=... level=... logger=... msg="..."`, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = {"WARNING": "warn"}.get(record.levelname, record.levelname.lower())
        msg = record.getMessage().replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        line = f'time={ts}.{int(record.msecs):03d}Z level={level} logger={record.name} msg="{msg}"'
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._period = period_seconds
        self._clock = clock
        self._last: dict[str, float] = {}

    def fault(self, key: str, message: str) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is None or now - last >= self._period:
            self._last[key] = now
            self._log.warning(message)

    def recovered(self, key: str, message: str) -> None:
        if self._last.pop(key, None) is not None:
            self._log.info(message)
