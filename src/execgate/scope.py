r"""The scope algebra: grants, argument constraints, matching and coverage.

A grant is ``{action, resource, constraints}``: segment globs (see ``_glob``) plus bounds on
named arguments. A request is inside a grant when both globs match and every constraint
holds; a constraint on a missing argument, or on an argument of the wrong type, fails.
``covers(outer, inner)`` answers whether every request inside ``inner`` is inside
``outer`` — the check used for an authority's grantable scope and, later, for delegation.

A ``pattern`` constraint is a regular expression in RE2 syntax, matched against the whole
argument with Google's RE2 (``google-re2``), whose time is linear in the argument's
length: a pattern is chosen by whoever signs a grant (a delegating runtime included) and
the argument by the requester, and a backtracking engine would let the two together
stall a worker for minutes (``(a+)+$`` against a long run of ``a``). RE2 has no
backreferences or lookaround, and a pattern is refused when the grant is read unless
Python's ``re`` compiles it too and nothing in it reads differently in the two
(``{,n}``, POSIX classes, ``$`` before the end, negated ``\S \D \W`` and ``\s`` in a
negated class, ``\b``, ``(?i)``: see ``_read_differently``): whoever wrote it for either
engine gets what they meant. ``\d``, ``\w`` and ``\s`` are ASCII only.

Linear is not cheap: a pattern such as ``(?:a|b)*a(?:a|b){24}c`` defeats RE2's fast
path and costs up to a microsecond a character, and a delegating runtime may add 64
grants with such patterns to its own child. So one scope check (``_Matches``) matches
each glob against the action or resource once (``_GLOB_BUDGET`` characters in all)
and each pattern against each argument value once, an argument of at most
``_MAX_MATCHED`` characters, at most ``_MATCH_BUDGET`` characters and
``_MAX_PATTERNS`` patterns in all: past a limit the
constraint fails (a deny, which names the limit), and a request costs a worker
milliseconds at worst, never seconds. Compiling is not cheap either: RE2 writes a
counted repetition out copy by copy, so the patterns an artifact's chain holds are
bounded in number and in what they expand to (``parse_grants``) before RE2 compiles any.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from re import _constants, _parser
from typing import Any, Final

import re2

from execgate._glob import glob_covers, glob_match, validate_glob

__all__ = ["Constraint", "Grant", "ScopeMiss", "check_scope", "parse_grants", "patterns_of"]

_CONSTRAINT_KEYS = frozenset({"max", "min", "enum", "pattern", "prefix"})
_MAX_GRANTS = 64
_MAX_PATTERN = 256
_MAX_MATCHED = 16 * 1024  # characters of one argument a pattern is matched against
_MATCH_BUDGET = 32 * 1024  # characters matched by patterns in one scope check
_MAX_PATTERNS = 64  # distinct patterns matched in one scope check
# RE2 compiles a counted repetition x{m,n} into n copies of x, on the event loop, at up
# to a few microseconds a copy of '.' or of each range a class lists: a pattern is
# refused past _MAX_PROGRAM such units (see _program_size), and an artifact whose
# chain's distinct patterns come to more than _PROGRAM_BUDGET in all. 160 patterns of
# six '.{0,1000}' each, which fit in one artifact, took 8-14 s to read.
_MAX_PROGRAM = 4000
_PROGRAM_BUDGET = 8000
_GLOB_BUDGET = 16 * 1024  # characters matched by distinct globs in one scope check


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to the caller, not stderr
# Memory for a pattern's automata (RE2's default is 8 MiB): past it RE2 goes on with a
# slower linear engine. With the cache below, at most about 256 MiB in all.
_RE2_OPTIONS.max_mem = 1 << 20


_FLAGS = re.compile(r"\(\?([A-Za-z-]*)[:)]")  # (?i) (?im) (?i:...) (?-i) and the like


_CHECKING = threading.Lock()
_THIS_MODULE = re.escape(__name__) + r"\Z"


@lru_cache(maxsize=256)
def _regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2; ``ValueError`` if it is not a pattern both RE2 and
    Python's ``re`` read, and read alike (see ``_portable``)."""
    _portable(pattern)
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        raise ValueError(str(exc)) from exc


@lru_cache(maxsize=1024)
def _portable(pattern: str) -> None:
    """``ValueError`` unless Python's ``re`` reads ``pattern`` without a warning and
    nothing in it reads differently in RE2 (see ``_read_differently``)."""
    # The filters are the process's, and catch_warnings restores what it found: two
    # checks at once in two threads (decisions on large bodies run in threads) could
    # leave "error" in place for good. One check at a time, and only the warnings
    # re.compile attributes to this module are errors, never another thread's.
    with _CHECKING, warnings.catch_warnings():
        warnings.filterwarnings("error", module=_THIS_MODULE)  # '[[:alpha:]]': nested set
        try:
            re.compile(pattern)
        except (re.error, Warning, OverflowError, RecursionError) as exc:
            # OverflowError: 'a{4294967296}'; a DeprecationWarning: a group named by a
            # non-ASCII digit; whatever Python refuses, the grant is refused for
            raise ValueError(f"not a portable regex: {type(exc).__name__}: {exc}") from exc
    different = _read_differently(pattern)
    if different is not None:
        raise ValueError(f"{different} means one thing to RE2 and another to Python")


_REPEATS: Final = (_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT)


@lru_cache(maxsize=1024)
def _program_size(pattern: str) -> int:
    """How many copies of its single-character parts RE2 compiles ``pattern`` into, at
    most: ``x{m,n}`` is ``n`` copies of ``x`` (``x{m,}`` is ``m``, ``*`` and ``+`` one),
    nested repetitions multiply, and a class counts as many as the ranges and
    characters it lists (RE2 compiles each into its own states). Read with Python's
    parser (cheap) once ``re`` has read it without a warning; one that is not portable
    counts 0 here, and ``_regex`` refuses it before RE2 sees it."""
    try:
        _portable(pattern)
        tree = _parser.parse(pattern)  # read without a warning just now
    except (re.error, OverflowError, RecursionError, ValueError):
        return 0

    def size(node: Any) -> int:
        total = 0
        for op, av in node:
            if op in _REPEATS:
                low, high, sub = av
                total += max(low if high == _constants.MAXREPEAT else high, 1) * size(sub)
            elif op == _constants.IN:  # a class: as many as the ranges it lists
                total += max(1, sum(1 for item, _ in av if item != _constants.NEGATE))
            else:
                total += 1 + sum(size(sub) for sub in _nested(av))
        return total

    return size(tree)


def _nested(av: object) -> Iterator[Any]:
    if isinstance(av, _parser.SubPattern):
        yield av
    elif isinstance(av, tuple | list):
        for item in av:
            yield from _nested(item)


def _raw_patterns(obj: object) -> set[str]:
    """The pattern strings of a ``scope`` claim not yet parsed (whatever is not shaped as
    one is refused by the parse that follows)."""
    found: set[str] = set()
    for grant in obj if isinstance(obj, list) else ():
        constraints = grant.get("constraints") if isinstance(grant, Mapping) else None
        for bound in constraints.values() if isinstance(constraints, Mapping) else ():
            pattern = bound.get("pattern") if isinstance(bound, Mapping) else None
            if isinstance(pattern, str) and len(pattern) <= _MAX_PATTERN:
                found.add(pattern)
    return found


def patterns_of(grants: Iterable[Grant]) -> set[str]:
    """The distinct patterns of ``grants``' constraints."""
    return {c.pattern for g in grants for c in g.constraints.values() if c.pattern is not None}


def _read_differently(pattern: str) -> str | None:
    """What in ``pattern`` both engines accept but read differently, if anything: a
    signer writes a pattern thinking of one engine, and the argument it was meant to
    exclude must not pass because the other reads it as something else."""
    i, in_class, negated = 0, False, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped in ("S", "D", "W") or (in_class and negated and escaped in ("s", "d", "w")):
                # RE2's \s \d \w are ASCII (its \s without \v), Python's are Unicode: RE2
                # lets less through them, which is safe, but more through a negated one
                # (a no-break space through '\S', a vertical tab through '[^\s]').
                return f"a negated '\\{escaped.lower()}' (RE2 reads it as ASCII only)"
            if escaped in ("b", "B"):
                return f"'\\{escaped}' (a word boundary is ASCII in RE2, Unicode in Python)"
            i += 2
            continue
        if in_class:
            if char == "[" and pattern[i + 1 : i + 2] in (":", "=", "."):
                # RE2 reads '[0-9[:upper:]]' as a POSIX class; Python, as '[', ':' and
                # letters, then a literal ']' (it warns only of a leading '[[')
                return f"'{pattern[i : i + 2]}' inside brackets (a POSIX class to RE2 only)"
            in_class = char != "]"
        elif char == "[":
            in_class = True
            negated = pattern.startswith("^", i + 1)
            if negated:
                i += 1
            if pattern.startswith("]", i + 1):  # a ']' first in a class is a literal
                i += 1
        elif (flags := _FLAGS.match(pattern, i)) and "i" in flags.group(1).split("-")[0]:
            return "'(?i)' (RE2 and Python fold some letters differently; write [Aa])"
        elif pattern.startswith("{,", i):
            return "'{,n}' (RE2 reads it literally; write '{0,n}')"
        elif char == "$" and i != len(pattern) - 1:
            return "'$' before the end (Python's also matches before a final newline)"
        i += 1
    return None


def _is_number(value: object) -> bool:
    # Any int (math.isfinite would overflow on a huge one; Python compares int and float
    # exactly) or a finite float. A bool is not a number.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True, slots=True)
class Constraint:
    """Bounds on one argument. Every bound present must hold."""

    max: float | None = None
    min: float | None = None
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    prefix: str | None = None

    @classmethod
    def parse(cls, arg: str, obj: object) -> Constraint:
        if not isinstance(obj, Mapping) or not obj:
            raise ValueError(f"constraint on {arg!r} must be a non-empty object")
        unknown = set(obj) - _CONSTRAINT_KEYS
        if unknown:
            raise ValueError(f"constraint on {arg!r} has unknown keys: {sorted(unknown)}")
        for bound in ("max", "min"):
            if bound in obj and not _is_number(obj[bound]):
                raise ValueError(f"constraint {bound} on {arg!r} must be a finite number")
        if "enum" in obj and (not isinstance(obj["enum"], list) or not obj["enum"]):
            raise ValueError(f"constraint enum on {arg!r} must be a non-empty list")
        for text in ("pattern", "prefix"):
            if text in obj and not isinstance(obj[text], str):
                raise ValueError(f"constraint {text} on {arg!r} must be a string")
        pattern = obj.get("pattern")
        if pattern is not None:
            if len(pattern) > _MAX_PATTERN:
                raise ValueError(f"constraint pattern on {arg!r} is longer than {_MAX_PATTERN}")
            if _program_size(pattern) > _MAX_PROGRAM:
                raise ValueError(
                    f"constraint pattern on {arg!r} repeats too much: it expands to"
                    f" {_program_size(pattern)} characters, past {_MAX_PROGRAM}"
                )
            try:
                _regex(pattern)
            except ValueError as exc:
                raise ValueError(
                    f"constraint pattern on {arg!r} is not a regex in RE2 syntax that"
                    f" Python reads alike (no backreferences or lookaround): {exc}"
                ) from exc
        return cls(
            max=obj.get("max"),
            min=obj.get("min"),
            enum=tuple(obj["enum"]) if "enum" in obj else None,
            pattern=pattern,
            prefix=obj.get("prefix"),
        )

    def violation(self, value: object, matches: _Matches | None = None) -> str | None:
        """None when ``value`` satisfies every bound, else what is wrong. ``matches``:
        the pattern matches of the scope check this is part of (by default, its own)."""
        if self.max is not None or self.min is not None:
            if not _is_number(value):
                return "is not a number"
            assert isinstance(value, int | float)
            if self.max is not None and value > self.max:
                return f"exceeds max {self.max}"
            if self.min is not None and value < self.min:
                return f"is below min {self.min}"
        if self.enum is not None and not any(_json_equal(value, e) for e in self.enum):
            return "is not one of the allowed values"
        if self.pattern is not None or self.prefix is not None:
            if not isinstance(value, str):
                return "is not a string"
            if self.pattern is not None:
                problem = (matches or _Matches()).problem(self.pattern, value)
                if problem is not None:
                    return problem
            if self.prefix is not None and not value.startswith(self.prefix):
                return f"does not start with {self.prefix!r}"
        return None

    def within(self, outer: Constraint) -> bool:
        """True when this constraint is no looser than ``outer`` on every bound."""
        if outer.max is not None and (self.max is None or self.max > outer.max):
            return False
        if outer.min is not None and (self.min is None or self.min < outer.min):
            return False
        if outer.enum is not None and (
            self.enum is None
            or not all(any(_json_equal(v, e) for e in outer.enum) for v in self.enum)
        ):
            return False
        if outer.pattern is not None and self.pattern != outer.pattern:
            return False
        return outer.prefix is None or (
            self.prefix is not None and self.prefix.startswith(outer.prefix)
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("max", "min", "pattern", "prefix"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.enum is not None:
            out["enum"] = list(self.enum)
        return out


class _Matches:
    """The matching of one scope check: each glob against the action or resource once,
    each pattern against each argument value once, an argument of at most
    ``_MAX_MATCHED`` characters, at most ``_MATCH_BUDGET`` characters and
    ``_MAX_PATTERNS`` distinct patterns in all (each may be compiled anew: the cache
    holds more). ``cut`` is set once a limit has refused something."""

    __slots__ = ("_done", "_glob_left", "_globs", "_left", "_patterns", "cut", "globs_cut")

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], str | None] = {}
        self._globs: dict[tuple[str, str], bool] = {}
        self._patterns: set[str] = set()
        self._left = _MATCH_BUDGET
        self._glob_left = _GLOB_BUDGET
        self.cut = False
        self.globs_cut = False  # a glob was not matched: past _GLOB_BUDGET

    def glob(self, glob: str, value: str) -> bool:
        """Whether ``glob`` matches ``value``; False, and ``globs_cut``, once the distinct
        globs of this check have matched ``_GLOB_BUDGET`` characters (a child may carry
        64 grants of globs that cost up to half a microsecond a character each)."""
        key = (glob, value)
        known = self._globs.get(key)
        if known is None:
            if len(value) > self._glob_left:
                self.globs_cut = True
                return False
            self._glob_left -= len(value)
            known = self._globs[key] = glob_match(glob, value)
        return known

    def problem(self, pattern: str, value: str) -> str | None:
        key = (pattern, value)  # the value itself: a str's hash is computed once
        if key in self._done:
            return self._done[key]
        problem: str | None
        if len(value) > _MAX_MATCHED:
            self.cut = True
            problem = (
                f"is longer than {_MAX_MATCHED} characters, the most a pattern is matched against"
            )
        elif len(value) > self._left or (
            pattern not in self._patterns and len(self._patterns) >= _MAX_PATTERNS
        ):
            self.cut = True
            problem = (
                f"is past what one scope check may match ({_MATCH_BUDGET} characters and"
                f" {_MAX_PATTERNS} patterns in all)"
            )
        else:
            self._left -= len(value)
            self._patterns.add(pattern)
            matched = _regex(pattern).fullmatch(value) is not None
            problem = None if matched else "does not match the pattern"
        self._done[key] = problem
        return problem


def _json_equal(a: object, b: object) -> bool:
    """Equality as JSON sees it: ``True`` is not ``1``, ``1`` equals ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return a == b


@dataclass(frozen=True, slots=True)
class Grant:
    action: str
    resource: str
    constraints: Mapping[str, Constraint]

    @classmethod
    def parse(cls, obj: object) -> Grant:
        if not isinstance(obj, Mapping):
            raise ValueError("a grant must be an object")
        unknown = set(obj) - {"action", "resource", "constraints"}
        if unknown:
            raise ValueError(f"a grant has unknown keys: {sorted(unknown)}")
        constraints = obj.get("constraints", {})
        if not isinstance(constraints, Mapping):
            raise ValueError("grant constraints must be an object")
        return cls(
            action=validate_glob(obj.get("action")),
            resource=validate_glob(obj.get("resource")),
            constraints={str(k): Constraint.parse(str(k), v) for k, v in constraints.items()},
        )

    def matches(self, action: str, resource: str) -> bool:
        return glob_match(self.action, action) and glob_match(self.resource, resource)

    def violation(self, args: Mapping[str, Any], matches: _Matches | None = None) -> str | None:
        matches = matches or _Matches()
        for name, constraint in self.constraints.items():
            if name not in args:
                return f"argument {name!r} is required by the grant but missing"
            problem = constraint.violation(args[name], matches)
            if problem is not None:
                return f"argument {name!r} {problem}"
        return None

    def within(self, outer: Grant) -> bool:
        """True when every request inside this grant is inside ``outer``."""
        if not (
            glob_covers(outer.action, self.action) and glob_covers(outer.resource, self.resource)
        ):
            return False
        return all(
            name in self.constraints and self.constraints[name].within(bound)
            for name, bound in outer.constraints.items()
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "resource": self.resource}
        if self.constraints:
            out["constraints"] = {k: c.to_json() for k, c in self.constraints.items()}
        return out


def parse_grants(obj: object, *, compiled: Collection[str] = ()) -> tuple[Grant, ...]:
    """Parse a ``scope`` claim: a non-empty list of grants. ``compiled``: the patterns
    already read for the same artifact (its chain's other links): with this claim's,
    they may be ``_MAX_PATTERNS`` and expand to ``_PROGRAM_BUDGET`` in all, checked
    before RE2 compiles any."""
    if not isinstance(obj, list) or not obj:
        raise ValueError("scope must be a non-empty list of grants")
    if len(obj) > _MAX_GRANTS:
        raise ValueError(f"scope may hold at most {_MAX_GRANTS} grants")
    patterns = _raw_patterns(obj).union(compiled)
    if len(patterns) > _MAX_PATTERNS:
        raise ValueError(
            f"its constraints hold {len(patterns)} distinct patterns, past {_MAX_PATTERNS}"
        )
    total = sum(_program_size(p) for p in patterns)
    if total > _PROGRAM_BUDGET:
        raise ValueError(
            f"the patterns of its constraints expand to {total} characters in all, past"
            f" {_PROGRAM_BUDGET}"
        )
    return tuple(Grant.parse(g) for g in obj)


@dataclass(frozen=True, slots=True)
class ScopeMiss:
    """Why a request is outside a scope: a reason code and a detail."""

    code: str
    detail: str


def check_scope(
    grants: Sequence[Grant], action: str, resource: str, args: Mapping[str, Any]
) -> ScopeMiss | None:
    """None when some grant admits the request; otherwise the closest reason why not."""
    problems = []
    cut = None  # the first refusal of a limit: it may have kept a later grant unmatched
    matches = _Matches()
    for grant in grants:
        if not (matches.glob(grant.action, action) and matches.glob(grant.resource, resource)):
            continue
        before = matches.cut
        problem = grant.violation(args, matches)
        if problem is None:
            return None
        if matches.cut and not before:
            cut = problem
        problems.append(problem)
    if matches.globs_cut:  # a grant left unmatched may have admitted it: say why
        return ScopeMiss(
            "scope.not_granted",
            f"the grants' globs were not all matched against {action} on {resource}: past"
            f" what one scope check may match ({_GLOB_BUDGET} characters of globs in all)",
        )
    if problems:
        return ScopeMiss("scope.constraint_violated", cut or problems[0])
    return ScopeMiss("scope.not_granted", f"no grant covers {action} on {resource}")
