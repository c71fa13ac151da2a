"""A live provider's failed fetch, and how its messages show a time: shared by the current
value's client (exporter.intensity.live) and the forecast's parsing
(exporter.intensity.forecast), which must not import each other."""

from __future__ import annotations

from datetime import UTC, datetime


class Fault(Exception):
    """A fetch that failed; `message` never holds a credential. Kind `refused` is only for a
    forecast the plan or zone does not include (docs/carbon-aware.md)."""

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


def iso(unix: float) -> str:
    try:
        return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"{unix:g} (Unix time)"
