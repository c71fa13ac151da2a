"""A line of progress on stderr while `footprint-exporter report`'s queries run (a month of a
large cluster takes a while): one line, rewritten with a carriage return before each query and
cleared at the end, and only where stderr is a terminal. In a pipe, a file or a test nothing is
written, so that a script reads only the table and the messages."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO

from exporter.report.common import printable


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """`show` rewrites the line; `clear` blanks it and puts the cursor back at its start, so
    that what comes next (a warning, an error) starts on a clean line. Nothing at all where
    `stream` is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = is_terminal(self.stream)
        self.started = time.monotonic()
        self._shown = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        # One column short of the terminal: a line that wraps cannot be rewritten with \r.
        width = max(1, self._columns() - 1)
        line = printable(text)[:width]
        pad = " " * max(0, self._shown - len(line))
        self._write(f"\r{line}{pad}")
        self._shown = len(line)

    def query(self, number: int, count: int, what: str) -> None:
        """`querying Prometheus, 2 of 3: energy per team (4 s)`."""
        elapsed = time.monotonic() - self.started
        self.show(f"querying Prometheus, {number} of {count}: {what} ({elapsed:.0f} s)")

    def _columns(self) -> int:
        """The width of the terminal on `stream` (stdout may be a file: `report > out.csv`)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both
            columns = 0
        return columns or shutil.get_terminal_size().columns  # 0: a terminal of no size

    def clear(self) -> None:
        if self.enabled and self._shown:
            self._write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal: the report goes on without it
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
