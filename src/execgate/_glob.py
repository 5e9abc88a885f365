"""Segment globs for actions and resources.

A pattern is matched against a whole value. Segments are separated by ``.``, ``:`` or
``/``. ``*`` matches any run of characters inside one segment; ``**`` matches any run of
characters across segments (including none). Every other character is literal. So
``payments.*`` matches ``payments.refund`` but not ``payments.refund.partial``, and
``files:/tmp/**`` matches every path below ``/tmp/``.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["glob_covers", "glob_match", "validate_glob"]

_SEPARATORS = ".:/"
_MAX_PATTERN = 512
# Globs already checked (every decision checks the same few grants and rules again).
_VALID: set[str] = set()
_MAX_VALID = 4096


def validate_glob(pattern: object) -> str:
    """Return ``pattern`` if it is a usable glob, else raise ``ValueError``."""
    if type(pattern) is str and pattern in _VALID:
        return pattern
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a glob must be a non-empty string")
    if len(pattern) > _MAX_PATTERN:
        raise ValueError(f"a glob may be at most {_MAX_PATTERN} characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in pattern):
        raise ValueError("a glob may not hold control characters")
    if "***" in pattern:
        raise ValueError(f"glob {pattern!r} has '***'; use '*' or '**'")
    if type(pattern) is str:  # not a subclass: its equality and hash are str's own
        if len(_VALID) >= _MAX_VALID:
            _VALID.clear()
        _VALID.add(pattern)
    return pattern


def _parts(pattern: str) -> list[str]:
    """``pattern`` in parts: ``**``, ``*``, or one literal character each."""
    parts, i = [], 0
    while i < len(pattern):
        size = 2 if pattern.startswith("**", i) else 1
        parts.append(pattern[i : i + size])
        i += size
    return parts


class _Automaton:
    """A glob run as a bit-parallel NFA, in time linear in the value's length whatever
    the pattern. Bit ``i`` of the state means "the first ``i`` tokens match what has
    been read"; a wildcard may also match nothing, and as ``***`` is refused no two
    wildcards are adjacent, so one shift closes a state over that."""

    __slots__ = ("_any", "_final", "_literal", "_segment", "_star", "_stops")

    def __init__(self, pattern: str, *, probe: bool) -> None:
        literal: dict[str, int] = {}
        any_mask = segment = 0
        parts = _parts(pattern)
        for position, part in enumerate(parts):
            if part == "**":
                any_mask |= 1 << position
            elif part == "*":
                segment |= 1 << position
            else:
                literal[part] = literal.get(part, 0) | 1 << position
        position = len(parts)
        self._literal = literal
        self._any = any_mask
        self._segment = segment
        self._star = any_mask | segment
        self._final = 1 << position
        # What a one-segment '*' cannot match (in probe mode also the '**' sentinel).
        self._stops = frozenset(_SEPARATORS + (_ANY if probe else ""))

    def fullmatch(self, value: str) -> bool:
        literal, any_mask, segment, star = self._literal, self._any, self._segment, self._star
        stops = self._stops
        state = 1 | (1 & star) << 1
        for char in value:
            moved = ((state & literal.get(char, 0)) << 1) | (state & any_mask)
            if char not in stops:
                moved |= state & segment
            state = moved | (moved & star) << 1
            if not state:
                return False
        return bool(state & self._final)


class _Regex:
    """A glob as a regular expression: the fast way for the patterns where backtracking
    stays polynomial of low degree (see ``_matcher``)."""

    __slots__ = ("_regex",)

    def __init__(self, pattern: str, *, probe: bool) -> None:
        # In probe mode a single '*' must not swallow the '**' sentinel (see glob_covers).
        one_segment = f"[^{re.escape(_SEPARATORS)}{_ANY if probe else ''}]*"
        wildcards = {"**": ".*", "*": one_segment}
        out = [wildcards.get(part) or re.escape(part) for part in _parts(pattern)]
        self._regex = re.compile("".join(out), re.DOTALL)

    def fullmatch(self, value: str) -> bool:
        return self._regex.fullmatch(value) is not None


def _open_ended(pattern: str) -> int:
    """How many wildcards of ``pattern`` may end at more than one place in a value: every
    ``**``, and each ``*`` not followed by a separator or the end (one that is must end
    exactly at the next separator, or the end)."""
    parts = _parts(pattern)
    count = 0
    for i, part in enumerate(parts):
        following = parts[i + 1] if i + 1 < len(parts) else None
        if part == "**" or (part == "*" and following is not None and following not in _SEPARATORS):
            count += 1
    return count


@lru_cache(maxsize=4096)
def _matcher(pattern: str, *, probe: bool = False) -> _Regex | _Automaton:
    """The regex when at most one wildcard is open-ended: the engine then backtracks over
    that one wildcard's ends only, each tried in linear time, so a value of the longest
    allowed length costs about a million steps at worst. Otherwise the automaton: with
    two or more, backtracking multiplies (``*a*a*a*b`` against 1,000 ``a`` ran for
    minutes), and one request could stall a worker."""
    if _open_ended(pattern) <= 1:
        return _Regex(pattern, probe=probe)
    return _Automaton(pattern, probe=probe)


def glob_match(pattern: str, value: str) -> bool:
    """True when ``value`` matches ``pattern`` as a whole."""
    return _matcher(validate_glob(pattern)).fullmatch(value)


# Sentinels standing for the wildcards of the inner pattern in glob_covers.
_ANY = "\x00"  # '**': any text, separators included
_SEGMENT = "\x01"  # '*': any text inside one segment


def glob_covers(outer: str, inner: str) -> bool:
    """True only when every value matched by ``inner`` is matched by ``outer``.

    ``inner`` is turned into a probe string whose wildcards are sentinels; ``outer``
    covers it when it matches the probe with each sentinel absorbed by a wildcard at least
    as wide (``**`` absorbs both, ``*`` only the one-segment sentinel). Any value of
    ``inner`` is then matched by the same alignment, so the answer is sound; it may be
    ``False`` for a few exotic subsets it cannot prove, never ``True`` wrongly.
    """
    validate_glob(outer)
    validate_glob(inner)
    if "\x00" in inner or "\x01" in inner:
        return False
    probe = inner.replace("**", _ANY).replace("*", _SEGMENT)
    return _matcher(outer, probe=True).fullmatch(probe)
