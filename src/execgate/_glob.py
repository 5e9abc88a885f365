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


@lru_cache(maxsize=4096)
def _compile(pattern: str, *, probe: bool = False) -> re.Pattern[str]:
    # In probe mode a single '*' must not swallow the '**' sentinel (see glob_covers).
    one_segment = f"[^{re.escape(_SEPARATORS)}{_ANY if probe else ''}]*"
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(one_segment)
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, value: str) -> bool:
    """True when ``value`` matches ``pattern`` as a whole."""
    return _compile(validate_glob(pattern)).fullmatch(value) is not None


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
    return _compile(outer, probe=True).fullmatch(probe) is not None
