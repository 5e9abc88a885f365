"""Segment globs for actions and resources.

A pattern is matched against a whole value. Segments are separated by ``.``, ``:`` or
``/``. ``*`` matches any run of characters inside one segment; ``**`` matches any run of
characters across segments (including none). Every other character is literal. So
``payments.*`` matches ``payments.refund`` but not ``payments.refund.partial``, and
``files:/tmp/**`` matches every path below ``/tmp/``.

A pattern that starts with ``/`` is a path glob (an HTTP path, a file path), read as
web frameworks read route patterns (Spring's, for one): only ``/`` separates segments, so
``/users/*`` matches ``/users/42.json`` and ``/users/bob@example.com``, and a trailing
``/**`` also matches the path without it, so ``/api/admin/**`` matches ``/api/admin``.
A rule meant to deny, pause or reroute everything under a path must catch those too;
read with the separators of actions, it would let them through to the next rule.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["glob_covers", "glob_match", "validate_glob"]

_SEPARATORS = ".:/"
_PATH_SEPARATORS = "/"
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


def _separators(pattern: str) -> str:
    """What a one-segment ``*`` of ``pattern`` stops at: ``/`` alone in a path glob."""
    return _PATH_SEPARATORS if pattern.startswith("/") else _SEPARATORS


def _probe_stops(pattern: str) -> str:
    """What a one-segment ``*`` of ``pattern`` may not absorb of a probe (glob_covers):
    the ``**`` sentinel always, and a path glob's ``*`` sentinel unless ``pattern`` is a
    path glob too (such a ``*`` may stand for text holding ``.`` or ``:``)."""
    return _ANY if pattern.startswith("/") else _ANY + _PATH_SEGMENT


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
        # What a one-segment '*' cannot match (in probe mode also sentinels: see
        # _probe_stops).
        self._stops = frozenset(_separators(pattern) + (_probe_stops(pattern) if probe else ""))

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
        # In probe mode a single '*' must not swallow the sentinels of wider wildcards
        # (see glob_covers).
        stops = _separators(pattern) + (_probe_stops(pattern) if probe else "")
        one_segment = f"[^{re.escape(stops)}]*"
        wildcards = {"**": ".*", "*": one_segment}
        out = [wildcards.get(part) or re.escape(part) for part in _parts(pattern)]
        self._regex = re.compile("".join(out), re.DOTALL)

    def fullmatch(self, value: str) -> bool:
        return self._regex.fullmatch(value) is not None


def _open_ended(pattern: str) -> list[int]:
    """Where ``pattern``'s wildcards that may end at more than one place in a value are
    (indexes into ``_parts``): every ``**``, and each ``*`` not followed by a separator or
    the end (one that is must end exactly at the next separator, or the end)."""
    parts = _parts(pattern)
    separators = _separators(pattern)
    found = []
    for i, part in enumerate(parts):
        following = parts[i + 1] if i + 1 < len(parts) else None
        if part == "**" or (part == "*" and following is not None and following not in separators):
            found.append(i)
    return found


class _Either:
    """A path glob ending in ``/**``: the whole pattern, or the path it names bare."""

    __slots__ = ("_bare", "_whole")

    def __init__(self, whole: _Regex | _Automaton, bare: _Regex | _Automaton) -> None:
        self._whole, self._bare = whole, bare

    def fullmatch(self, value: str) -> bool:
        return self._whole.fullmatch(value) or self._bare.fullmatch(value)


_Matcher = _Regex | _Automaton | _Either


def _bare(pattern: str) -> str | None:
    """The path a path glob ending in ``/**`` also matches (``/a/**``: ``/a``), if any.

    A run of them ends the same way (``/a/**/**`` matches what ``/a/**`` does, and
    ``/a``), so the whole run goes: one bare path, never one per ``/**`` (a matcher, or
    a probe of ``glob_covers``, each: 170 of them fit in a pattern)."""
    if not pattern.startswith("/"):
        return None
    bare = pattern
    while bare.endswith("/**") and len(bare) > 3:
        bare = bare[:-3]
    return None if bare == pattern else bare


def _single(pattern: str, *, probe: bool) -> _Regex | _Automaton:
    """The regex when it never backtracks further than a segment: no wildcard is
    open-ended (``payments.*``), or the only one is a ``**`` that ends the pattern
    (``acct:**``, ``/api/**``). Otherwise the automaton, linear whatever the pattern:
    after an open-ended wildcard the regex tries each of its ends against all that
    follows, as long as the value times the pattern (``**x*.`` took 2 ms on 1,024
    characters, ``**.*.*.*…`` 5 ms, and a child may hold 64 grants), and two of them
    multiply (``*a*a*a*b`` against 1,000 ``a`` ran for minutes)."""
    parts = _parts(pattern)
    open_ended = _open_ended(pattern)
    if not open_ended or (open_ended == [len(parts) - 1] and parts[-1] == "**"):
        return _Regex(pattern, probe=probe)
    return _Automaton(pattern, probe=probe)


@lru_cache(maxsize=4096)
def _matcher(pattern: str, *, probe: bool = False) -> _Matcher:
    """``pattern``'s matcher: a path glob ending in ``/**`` is its bare path or the bare
    path followed by one ``/**``."""
    bare = _bare(pattern)
    if bare is None:
        return _single(pattern, probe=probe)
    return _Either(_single(bare + "/**", probe=probe), _single(bare, probe=probe))


def glob_match(pattern: str, value: str) -> bool:
    """True when ``value`` matches ``pattern`` as a whole."""
    return _matcher(validate_glob(pattern)).fullmatch(value)


# Sentinels standing for the wildcards of the inner pattern in glob_covers.
_ANY = "\x00"  # '**': any text, separators included
_SEGMENT = "\x01"  # '*': any text inside one segment (no '.', ':' or '/')
_PATH_SEGMENT = "\x02"  # '*' of a path glob: any text without '/'


def glob_covers(outer: str, inner: str) -> bool:
    """True only when every value matched by ``inner`` is matched by ``outer``.

    ``inner`` is turned into a probe string whose wildcards are sentinels; ``outer``
    covers it when it matches the probe with each sentinel absorbed by a wildcard at least
    as wide (``**`` absorbs all three; a path glob's ``*`` both one-segment sentinels,
    whose text holds no ``/``; another ``*`` only the sentinel of a ``*`` that is not in a
    path glob, whose text holds none of ``.:/``). Any value of ``inner`` is then matched
    by the same alignment, so the answer is sound; it may be ``False`` for a few exotic
    subsets it cannot prove, never ``True`` wrongly. A path glob ending in ``/**`` is two
    probes (its bare path, and that followed by one ``/**``), and ``outer`` must take
    each.
    """
    validate_glob(outer)
    validate_glob(inner)
    if any(sentinel in inner for sentinel in (_ANY, _SEGMENT, _PATH_SEGMENT)):
        return False
    segment = _PATH_SEGMENT if inner.startswith("/") else _SEGMENT
    bare = _bare(inner)
    outer_matcher = _matcher(outer, probe=True)
    return all(
        outer_matcher.fullmatch(form.replace("**", _ANY).replace("*", segment))
        for form in ((inner,) if bare is None else (bare + "/**", bare))
    )
