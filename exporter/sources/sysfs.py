"""Reading sysfs attributes: bounded, and never trusting what a file holds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

MAX_VALUE_BYTES = 64
"""Bytes read of a value file: an unsigned 64-bit value is 20 digits. A larger file (garbage, or
not a sysfs attribute at all) is never read whole: a 1 GiB `energy_uj` once was, every tick."""
MAX_SENSOR_WATTS = 10_000.0
"""Above this, a power value or an energy step of one zone or sensor is garbage, not energy: a
2-socket server's processors draw under 1 kW, a whole node a few kW."""


def read_attribute(path: Path, limit: int = MAX_VALUE_BYTES, *,
                   nonblocking: bool = False) -> str:
    """At most `limit` + 1 bytes of a sysfs attribute, as ASCII text (anything else replaced).
    `nonblocking`: a FIFO where an attribute should be reads as empty instead of blocking
    (sysfs files ignore the flag); a read that blocks otherwise is exporter.watchdog's."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
    fd = os.open(path, flags)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    return data.decode("ascii", errors="replace")


def read_uint(path: Path, *, error: type[Exception], what: str, permission_hint: str,
              hint: str = "", nonblocking: bool = False) -> int:
    """A file holding one unsigned integer; `error` (naming the file, and `what` it should
    hold, e.g. "a counter in microjoules") when it cannot be read or holds anything else.
    `hint` is appended to every fault but permission's, which gets `permission_hint`."""
    tail = f"; {hint}" if hint else ""
    try:
        text = read_attribute(path, nonblocking=nonblocking)
    except PermissionError:
        raise error(f"permission denied reading {path}: {permission_hint}") from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
        raise error(f"cannot read {path}: {reason}{tail}") from None
    if len(text) > MAX_VALUE_BYTES:
        raise error(f"{path} holds more than {MAX_VALUE_BYTES} bytes, not {what}{tail}")
    value = text.strip()
    if not value.isdigit() or not value.isascii():
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise error(f"{path} holds {shown!r}, not {what}{tail}")
    return int(value)
