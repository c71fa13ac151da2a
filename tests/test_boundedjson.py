"""exporter.boundedjson (issue 19): one parser for JSON from outside, bounded in size and depth,
with one exception type and a one-line message; its depth scan checked against a recursive
reference on random documents full of brackets, quotes and backslashes inside strings."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from exporter import boundedjson
from exporter.boundedjson import JsonError, loads


def nested(depth: int, inner: str = "1") -> str:
    """`depth` levels alternating arrays and objects around `inner`."""
    text = inner
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k": {text}}}'
    return text


def depth_of(value: Any) -> int:
    """The reference: levels of objects and arrays, recursively."""
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


@pytest.mark.parametrize("depth", [1, 2, 5, 63, 64])
def test_depth_up_to_the_bound_is_parsed(depth: int) -> None:
    text = nested(depth)
    assert loads(text, max_bytes=1 << 20, what="x") == json.loads(text)
    assert loads(text.encode(), max_bytes=1 << 20, what="x") == json.loads(text)


@pytest.mark.parametrize("depth", [65, 1000, 10_000])
def test_deeper_is_refused_without_recursion(depth: int) -> None:
    with pytest.raises(JsonError) as exc:
        loads(nested(depth).encode(), max_bytes=1 << 30, what="the answer")
    assert str(exc.value) == "the answer is nested deeper than 64 levels"
    assert exc.value.reason == "depth"


def test_a_million_levels_is_refused_quickly_not_a_recursion_error() -> None:
    """json.loads alone raises RecursionError (not ValueError) here."""
    data = b"[" * 1_000_000 + b"]" * 1_000_000
    with pytest.raises(RecursionError):
        json.loads(data)
    with pytest.raises(JsonError, match="nested deeper than 64 levels"):
        loads(data, max_bytes=1 << 30, what="x")
    with pytest.raises(JsonError, match="nested deeper than 64 levels"):
        loads(b"[" * 1_000_000, max_bytes=1 << 30, what="x")  # never closed


def comb(depth: int, leaves: int) -> Any:
    """`depth` levels, each with `leaves` empty arrays and objects beside the deeper one."""
    value: Any = []
    for _ in range(depth - 1):
        value = [*([[], {}] * leaves), {"k": value, "s": "]]}}"}]
    return value


@pytest.mark.parametrize("leaves", [0, 1, 5, 100])
def test_the_bound_is_exact_whatever_the_shape(leaves: int) -> None:
    """Shapes that take the pair-dropping rounds, the running sum, or both."""
    for depth in (63, 64, 65, 66):
        value = [comb(depth // 2, leaves)] * 3
        data = json.dumps(value).encode()
        assert depth_of(value) in (depth - 1, depth)
        if depth_of(value) <= 64:
            assert loads(data, max_bytes=1 << 24, what="x") == value
        else:
            with pytest.raises(JsonError, match="nested deeper than 64"):
                loads(data, max_bytes=1 << 24, what="x")


def test_max_depth_is_the_callers() -> None:
    assert loads("[[1]]", max_bytes=100, max_depth=2, what="x") == [[1]]
    with pytest.raises(JsonError, match=r"^x is nested deeper than 1 levels$"):
        loads("[[1]]", max_bytes=100, max_depth=1, what="x")
    assert loads("1", max_bytes=100, max_depth=1, what="x") == 1


def test_brackets_in_strings_do_not_count() -> None:
    deep_in_string = json.dumps({"a": "[" * 1000 + "{" * 1000, "b": ["]]]", "}}}"]})
    assert loads(deep_in_string, max_bytes=1 << 20, max_depth=2, what="x")["b"] == ["]]]", "}}}"]


def test_escaped_quotes_and_backslashes_do_not_end_a_string() -> None:
    # "\"[[[[" and "\\" then a real array: the escapes must not shift what is a string.
    text = json.dumps(["\"" + "[" * 100, "\\", "\\\"[[", [["x"]]])
    assert loads(text, max_bytes=1 << 20, max_depth=3, what="x")[3] == [["x"]]
    with pytest.raises(JsonError, match="deeper than 2"):
        loads(text, max_bytes=1 << 20, max_depth=2, what="x")


def test_a_string_that_never_ends_hides_nothing() -> None:
    with pytest.raises(JsonError) as exc:
        loads(b'["abc' + b"[" * 10_000, max_bytes=1 << 20, what="x")
    assert exc.value.reason == "syntax"
    with pytest.raises(JsonError) as exc:
        loads(b'["' + b'\\"' * 100_000 + b"[" * 10, max_bytes=1 << 20, what="x")
    assert exc.value.reason == "syntax"


ALPHABET = ['"', "\\", "[", "]", "{", "}", "a", "é", "\u2028", "\x00", "\n", ",", ":"]


def random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.random()
    if depth <= 0 or kind < 0.3:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(6)))
    if kind < 0.4:
        return rng.choice([1, -2.5, True, None, 10**30])
    if kind < 0.7:
        return [random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {random_value(rng, 0): random_value(rng, depth - 1) for _ in range(rng.randrange(4))}


def test_the_scan_agrees_with_a_recursive_reference_on_random_documents() -> None:
    rng = random.Random(19)
    for _ in range(3000):
        value = random_value(rng, rng.randrange(12))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        limit = rng.randrange(1, 10)
        depth = depth_of(value)
        if depth <= limit:
            assert loads(text, max_bytes=1 << 20, max_depth=limit, what="x") == value
            assert loads(text.encode(), max_bytes=1 << 20, max_depth=limit, what="x") == value
        else:
            for data in (text, text.encode()):
                with pytest.raises(JsonError, match="nested deeper"):
                    loads(data, max_bytes=1 << 20, max_depth=limit, what="x")


def test_size_bound() -> None:
    assert loads(b"[1, 2]", max_bytes=6, what="x") == [1, 2]
    with pytest.raises(JsonError) as exc:
        loads(b"[1, 2] ", max_bytes=6, what="the body")
    assert str(exc.value) == "the body is larger than 6 bytes (7 bytes)"
    assert exc.value.reason == "size"
    with pytest.raises(JsonError, match=r"^x is larger than 1 MiB \(2 MiB\)$"):
        loads(b" " * (2 << 20), max_bytes=1 << 20, what="x")


@pytest.mark.parametrize("data", [
    b"", b"<html>SECRET-VALUE</html>", b'{"a": 1', b"[1,]", b'{"a" 1}', b"\xff\xfe[]",
    "[1]".encode("utf-16"), b"1" * 5000, b"[1] [2]",
])
def test_not_json_is_one_line_that_never_quotes_the_document(data: bytes) -> None:
    with pytest.raises(JsonError) as exc:
        loads(data, max_bytes=1 << 20, what="the answer")
    message = str(exc.value)
    assert message.startswith("the answer is not JSON (") and "\n" not in message
    assert "SECRET" not in message
    assert exc.value.reason == "syntax"
    assert isinstance(exc.value, ValueError)


def test_a_utf8_bom_and_str_input() -> None:
    assert loads(b"\xef\xbb\xbf[1]", max_bytes=10, what="x") == [1]
    assert loads('["\u00e9\ud800"]', max_bytes=10, what="x") == ["\u00e9\ud800"]


def test_bad_bounds_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        loads(b"1", max_bytes=10, max_depth=0, what="x")
    assert boundedjson.DEFAULT_MAX_DEPTH == 64
