"""``canonical_json`` is RFC 8785 (JCS): byte for byte what ``rfc8785.dumps`` writes.

``canonical_json`` takes a fast path through orjson (and, where orjson refuses, the
stdlib encoder) for plain values; these tests hold it to the reference implementation on
random JSON, including the places the paths could drift apart: key order (UTF-16 code
units, not code points), astral and private-use characters, escapes, floats, integers
outside the safe range, and nesting deeper than orjson writes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from execgate import jose
from execgate.jose import canonical_json, compact_json
from execgate.server._http import JsonResponse

# Characters where the orders or the escaping could differ: controls, the quote and
# backslash, DEL, the top of the BMP below the surrogates, private use (U+E000+), the
# last BMP characters, and astral characters (surrogate pairs in UTF-16).
_TRICKY = st.sampled_from(
    [
        "\x00",
        "\x1f",
        '"',
        "\\",
        "\x7f",
        "\u2028",
        "\ud7ff",
        "\ue000",
        "\uf8ff",
        "\ufeff",
        "\uffff",
        "\U00010000",
        "\U0001f600",
        "\U0010ffff",
        "a",
        "B",
    ]
)
_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)

text = st.text(st.characters() | _TRICKY, max_size=6)
keys = st.text(st.characters() | _TRICKY, max_size=4)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**53) - 2, 2**53 + 2)
    | st.floats()
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.sampled_from([0.0, -0.0, 1e21, 1e-7, 5e-324, 1.7976931348623157e308, 0.1 + 0.2])
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=20,
)


def _reference(value: Any) -> bytes | None:
    try:
        out = rfc8785.dumps(value)
    except ValueError:  # CanonicalizationError; UnicodeEncodeError for a lone surrogate key
        return None
    assert isinstance(out, bytes)
    return out


def _ours(value: Any) -> bytes | None:
    try:
        return canonical_json(value)
    except ValueError:
        return None


@settings(max_examples=600, deadline=None)
@given(value=json_values)
def test_canonical_json_equals_rfc8785(value: Any) -> None:
    assert _ours(value) == _reference(value)


@settings(max_examples=200, deadline=None)
@given(value=json_values, bad=_SURROGATE, where=st.sampled_from(["key", "value"]))
def test_lone_surrogates_have_no_canonical_form(value: Any, bad: str, where: str) -> None:
    doc = {bad: value} if where == "key" else {"k": [value, "x" + bad]}
    assert _reference(doc) is None
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is ValueError, any message
        canonical_json(doc)


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+E000 there, after it by code point.
    doc = {"\ue000": 1, "\U0001f600": 2, "z": 3, "": 4}
    out = canonical_json(doc)
    assert out == '{"":4,"z":3,"\U0001f600":2,"\ue000":1}'.encode()
    assert out == rfc8785.dumps(doc)


def test_nested_keys_sort_the_same_way() -> None:
    doc: dict[str, Any] = {
        "a": [{"\ue000": 1, "\U00010000": 2}],
        "b": {"\uffff": 0, "\U0010ffff": 1},
    }
    assert canonical_json(doc) == rfc8785.dumps(doc)
    assert canonical_json(doc).index("\U00010000".encode()) < canonical_json(doc).index(
        "\ue000".encode()
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [True, None, "x"]}, b'{"a":[true,null,"x"],"b":1}'),
        ('\u000f\n"\\/', b'"\\u000f\\n\\"\\\\/"'),
        ("\u2028é", '"\u2028é"'.encode()),
        (1.0, b"1"),
        (-0.0, b"0"),
        (1e21, b"1e+21"),
        (1e-7, b"1e-7"),
        (0.1 + 0.2, b"0.30000000000000004"),
        (2**53 - 1, b"9007199254740991"),
        (-(2**53 - 1), b"-9007199254740991"),
        ({"n": [1.5, 100]}, b'{"n":[1.5,100]}'),
    ],
)
def test_known_encodings(value: Any, expected: bytes) -> None:
    assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        2**53,
        -(2**53),
        10**400,
        {1: "x"},
        {"a": b"bytes"},
        {"a": {1, 2}},
        {"a": object()},
    ],
)
def test_values_without_a_canonical_form_raise_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="canonical"):
        canonical_json(value)
    assert _reference(value) is None


def test_nesting_deeper_than_orjson_writes_is_still_canonical() -> None:
    """orjson stops at 255 levels; such a value takes the stdlib path, same bytes."""
    deep: Any = "x"
    for n in range(300):
        deep = [deep] if n % 2 else {"k": deep}
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(deep, option=orjson.OPT_SORT_KEYS)
    assert canonical_json(deep) == rfc8785.dumps(deep)


def test_a_cycle_is_refused_and_a_huge_value_is_still_canonical() -> None:
    """The fast path gives up after 300,000 values: a cycle then fails as too deep,
    and a value that large takes the slower path to the same bytes."""
    cycle: dict[str, Any] = {"a": [1]}
    cycle["a"].append(cycle)
    with pytest.raises(ValueError, match="canonical"):
        canonical_json(cycle)
    huge: Any = {"n": list(range(300_001)), "s": ["x"] * 3}
    assert jose._plain(huge) is False
    assert canonical_json(huge) == rfc8785.dumps(huge)
    assert jose._plain({"n": list(range(299_990))}) is True


@pytest.mark.parametrize(
    "value", [[1, [2, 2**53]], {"a": [{"b": 1.0}]}, {"a": [[1e21]]}, [True, None, 1.0]]
)
def test_what_orjson_would_write_otherwise_is_found_at_any_depth(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        expected = None
    try:
        ours: bytes | None = canonical_json(value)
    except ValueError:
        ours = None
    assert ours == expected


def _stdlib_compact(value: Any) -> bytes | None:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (ValueError, TypeError):  # NaN/infinity; a lone surrogate; a non-JSON type
        return None


@settings(max_examples=400, deadline=None)
@given(value=json_values)
def test_compact_json_equals_the_stdlib_encoder(value: Any) -> None:
    """compact_json (orjson for plain values) writes what json.dumps writes, and what
    Starlette's JSONResponse would send; NaN and infinity are refused, never null."""
    expected = _stdlib_compact(value)
    try:
        ours: bytes | None = compact_json(value)
    except (ValueError, TypeError):
        ours = None
    assert ours == expected
    if expected is not None:
        assert JsonResponse(value).body == JSONResponse(value).body


@pytest.mark.parametrize("value", [float("nan"), {"a": [float("inf")]}, -float("inf")])
def test_compact_json_refuses_what_json_cannot_carry(value: Any) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        compact_json(value)
