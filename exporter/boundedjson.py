"""JSON from outside, parsed within bounds: its size and its depth, checked before parsing.

Every answer the exporter and `footprint-exporter report` read from another program (the carbon
APIs, Prometheus, the Kubernetes API server) goes through `loads`. Python's `json.loads`
recurses once per level of nesting, so `[[[[...]]]]` a few thousand levels deep raises
`RecursionError` (not `ValueError`) and escapes the callers' error handling; and it holds the
whole document at once, so its size must be bounded by the caller. `loads` refuses, with one
`JsonError`:

- a document longer than `max_bytes` (a `str` counts its characters);
- nesting deeper than `max_depth` (objects and arrays; `{"a": [1]}` is 2 deep), found before
  parsing by a scan that never recurses and runs in C: escaped backslashes and quotes are
  dropped, then everything but quotes and brackets, then what lies between pairs of quotes
  (the strings); the innermost pairs of brackets are dropped a level at a time while that
  removes many, then each opening bracket left counts +1 and each closing one -1, and the
  running sum may not pass what is left of `max_depth`;
- anything `json.loads` refuses (syntax, text that is not UTF-8, an integer of more than 4,300
  digits).

The message is one line, names `what` and, for a bound, the bound; it never quotes the
document. Measured on a (shared, 2-core) development machine: a 57 MiB Prometheus answer of
300,000 series scans in about a third of the time json.loads then takes (1.2 s against 3.3 s);
the slowest inputs found, 64 MiB of `[[[...]]]` or of `"","",...`, in 1.5 to 3 s, so a 1 MiB
carbon API answer in at most 50 ms.

    from exporter import boundedjson
    try:
        payload = boundedjson.loads(body, max_bytes=1 << 20, what="the answer")
    except boundedjson.JsonError as exc:
        ...  # str(exc): "the answer is nested deeper than 64 levels"
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
from typing import Any, Literal

__all__ = ["DEFAULT_MAX_DEPTH", "JsonError", "loads"]

DEFAULT_MAX_DEPTH = 64
"""Levels of nesting allowed by default. Real answers are shallow: a Prometheus instant vector
is 5 deep, an Electricity Maps or WattTime answer 1 to 3, a Kubernetes pod 10 to 20 (its
`managedFields` nest one level per field of the path they own)."""

_KEEP = bytes(range(256)).translate(None, b'"[]{}')
"""Every byte but a quote and the four brackets: what the scan deletes."""
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_CHUNK_BYTES = 1 << 20
"""The quotes and brackets are split into strings and the rest this much at a time, so that the
list of pieces stays small whatever the document."""


class JsonError(ValueError):
    """A document refused by `loads`: too large, too deep, or not JSON. `str()` is one line
    that names what was parsed and the bound it broke, and never quotes the document; `reason`
    is `"size"`, `"depth"` or `"syntax"`, for a caller that words its own message."""

    def __init__(self, message: str, reason: Literal["size", "depth", "syntax"]) -> None:
        super().__init__(message)
        self.reason = reason


def loads(data: bytes | bytearray | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
          what: str) -> Any:
    """The JSON value of `data` (UTF-8 bytes, or a str), as `json.loads` gives it; JsonError
    when `data` is longer than `max_bytes`, nests objects and arrays deeper than `max_depth`,
    or is not JSON (UTF-16 and UTF-32 included: RFC 8259 8.1). `what` names the document as
    the subject of the message: `what="the answer"` gives "the answer is nested deeper than 64
    levels", "the answer is larger than 1 MiB (3.0 MiB)", "the answer is not JSON (Expecting
    value: line 1 column 1)"."""
    if max_bytes < 0 or max_depth < 1:
        raise ValueError("max_bytes must be 0 or more and max_depth 1 or more")
    size = len(data)
    if size > max_bytes:
        raise JsonError(f"{what} is larger than {_size(max_bytes)} ({_size(size)})", "size")
    raw: bytes | bytearray
    if isinstance(data, str):
        text, raw = data, data.encode("utf-8", "surrogatepass")
    else:
        try:
            text, raw = data.decode("utf-8-sig"), data
        except UnicodeDecodeError:
            raise JsonError(f"{what} is not JSON (not UTF-8 text)", "syntax") from None
    _check_depth(raw, max_depth, what)
    del raw
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonError(f"{what} is not JSON ({exc.msg}: line {exc.lineno} column "
                        f"{exc.colno})", "syntax") from None
    except (ValueError, RecursionError) as exc:  # an integer too long to convert, say
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise JsonError(f"{what} is not JSON ({reason})", "syntax") from None


def _check_depth(raw: bytes | bytearray, max_depth: int, what: str) -> None:
    """JsonError when the brackets of the UTF-8 document `raw` outside strings nest deeper
    than `max_depth`. Never recurses; every step is a pass in C (bytes.replace, translate,
    split, accumulate) over what is left. In UTF-8 every byte of a multi-byte character is
    0x80 or above, so a quote, a backslash or a bracket byte is always that character."""
    # Escapes first, so that neither an escaped quote nor an escaped backslash counts: pairs of
    # backslashes go left to right, as in a JSON string; then a quote after a backslash.
    raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = raw.translate(None, _KEEP)  # quotes and brackets only
    del raw
    outside: list[bytes] = []
    in_string = False
    for start in range(0, len(marks), _CHUNK_BYTES):
        pieces = marks[start:start + _CHUNK_BYTES].split(b'"')
        # Pieces alternate outside and inside strings; a chunk may start inside one.
        outside.append(b"".join(pieces[1 if in_string else 0::2]))
        in_string ^= len(pieces) % 2 == 0
    # Each opening bracket 2, each closing one 0: after n of them, the sum less n is the depth
    # (openers less closers), so the first place deeper than max_depth is found without a
    # Python loop. json.loads reads a document no deeper than that: up to its first error, its
    # nesting is exactly this count.
    steps = b"".join(outside).translate(_STEP)
    del outside, marks
    # First drop the innermost pairs, a level a round, while that pays: a pair adds nothing to
    # the depth after it, and in balanced brackets every deepest opener is one, so each round
    # that drops some lowers the depth by exactly one. (Unbalanced ones are not JSON: at worst
    # they are called too deep.)
    limit = max_depth
    while limit > 0 and steps.count(2) > limit:
        fewer = steps.replace(b"\x02\x00", b"")
        if len(fewer) > len(steps) * 3 // 4:
            break  # few leaves: the running sum is the faster way
        steps, limit = fewer, limit - 1
    if steps.count(2) <= limit:
        return
    depths = map(operator.sub, itertools.accumulate(steps), itertools.count(1))
    if next(filter(functools.partial(operator.lt, limit), depths), None) is not None:
        raise JsonError(f"{what} is nested deeper than {max_depth} levels", "depth")


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n:,} bytes"
