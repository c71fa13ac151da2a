"""What every part of `footprint-exporter report` shares: its name in messages, its one kind of
failure, and the stripping of control characters from any text that came from Prometheus."""

from __future__ import annotations

import re
import sys

PROG = "footprint-exporter report"
JOULES_PER_KWH = 3.6e6

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                     "\u2066-\u206f\ufeff\ufff9-\ufffb]")
"""Control characters (C0, newline and tab included; DEL; C1, where ESC [ and CSI start the
terminal's escape sequences) and Unicode's invisible format characters and bidirectional
overrides, which can make one name look like another."""


def printable(text: str) -> str:
    """`text` without control characters (`CONTROL`): what the report prints of any text that
    came from Prometheus, so that a label value (a tenant's pod name or model) can neither
    move the cursor, clear the screen, retitle the window nor hide part of a line."""
    return CONTROL.sub("", text)


def eprint(text: str) -> None:
    """One line on stderr, without control characters whatever the text holds."""
    print(printable(text), file=sys.stderr)


class ReportError(Exception):
    """A failure worth one line on stderr and exit 2: no traceback."""
