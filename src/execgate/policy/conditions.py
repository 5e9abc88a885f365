"""CEL conditions: compiled once at load, evaluated against one request's inputs.

A condition sees four variables: ``request`` (action, resource, args, runtime, parent),
``artifact`` (the verified artifact claims), ``environment`` (attested environment
claims, maybe empty) and ``now`` (a UTC ``datetime``, so ``now > timestamp("...")``
works). Only an exact boolean ``True`` is a match and only ``False`` is a miss; an error
or any other value is reported to the caller, which denies.

Inputs are converted to plain JSON values before the binding sees them, because the
binding itself is lenient where a gateway must not be: integers outside int64 silently
become ``uint`` or lossy ``double``, a callable value becomes a function the expression
can call, non-string keys are accepted, and deeply nested input crashes the process.

That conversion is the main cost of an evaluation (about a microsecond per value), so
each input is converted at most once per evaluation, only when a condition reads it, and
only the top-level keys some condition can read (``artifact.sub``, ``artifact['gov']``);
an input used any other way (``size(artifact)``) is converted whole.

The binding has no cost limit, holds the interpreter lock while it runs and cannot be
interrupted, so a condition whose cost grows faster than the request is refused at
load (``_nested_iteration``).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import cel

__all__ = [
    "INPUTS",
    "MAX_CONDITION_CHARS",
    "Condition",
    "ConditionError",
    "Inputs",
    "Reads",
    "merge_reads",
]

INPUTS: Final = frozenset({"request", "artifact", "environment", "now"})
# Long operator chains crash the binding at run time (~16k operators); 4096 characters
# is far below that and far above any condition a person reviews.
MAX_CONDITION_CHARS: Final = 4096
_MAX_DEPTH: Final = 32
_INT64 = range(-(2**63), 2**63)
# Names a comprehension macro binds (`list.all(x, ...)`, `map.map(k, v, ...)`,
# `cel.bind(x, ...)`). The binding reports them as variables, so they are allowed.
_BOUND = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter|bind|transform\w*)\s*\(\s*"
    r"([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?"
)
# What follows an input that reads one top-level key: `.sub` or `['x-y']`.
_KEY = re.compile(r"""\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(?:'([^'\\\n]*)'|"([^"\\\n]*)")\s*\])""")

# For each input a condition reads: the top-level keys it reads, or None for "any".
Reads = Mapping[str, frozenset[str] | None]


_ITERATING: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_WORD = re.compile(r"[A-Za-z_]\w*")
_MACRO_VARS = re.compile(r"\(\s*([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?")


def _nested_iteration(source: str) -> str | None:
    """What in ``source`` iterates inside a comprehension macro's body over something
    other than the element at hand, if anything. One macro over the request costs time
    linear in its size; a macro or a list ``in`` inside it, over the request again, the
    square (8,000 items took 12 s in one test, holding the interpreter lock), and
    nothing can interrupt a running condition. Inside a body, iterating a part of the
    element (``orders.all(o, o.items.all(i, ...))``) or testing membership in a literal
    (``t in ['a', 'b']``) stays linear and is allowed; so does comparing with a value of
    the request, but not a function of one (``request.args.blob.contains(x)`` scans the
    blob once per element). String literals are skipped."""
    scopes: list[frozenset[str] | None] = []  # per open bracket: a macro's variables
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char in "'\"":
            quote = source[i : i + 3] if source[i : i + 3] in ("'''", '"""') else char
            i += len(quote)
            while i < n and not source.startswith(quote, i):
                i += 2 if source[i] == "\\" else 1
            i += len(quote)
            continue
        word = _WORD.match(source, i)
        if word is None:
            if char in "([{":
                scopes.append(None)
            elif char in ")]}" and scopes:
                scopes.pop()
            i += 1
            continue
        name, end = word.group(), word.end()
        rest = source[end:].lstrip()
        inside = [s for s in scopes if s is not None]
        local = frozenset().union(*inside)
        before = source[:i].rstrip()
        if name in _ITERATING and before.endswith(".") and rest[:1] == "(":
            if inside and _root(before[:-1]) not in local:
                return f"the macro '{name}' over something other than the element"
            opened = n - len(rest)
            bound = _MACRO_VARS.match(source, opened)
            scopes.append(frozenset(v for v in bound.groups() if v) if bound else frozenset())
            i = opened + 1
            continue
        if name == "in" and inside and rest[:1] not in ("[", "{"):
            target = _WORD.match(rest)
            if target is None or target.group() not in local:
                return "'in' on a list that is neither a literal nor part of the element"
        if inside and rest[:1] == "(" and name != "has":
            # a function of the request (a string's contains, size, matches...) takes
            # time with its length, once per element
            method = before.endswith(".")
            arg = _WORD.match(rest[1:].lstrip())
            on = _root(before[:-1]) if method else (arg.group() if arg else None)
            if on == "request":
                return f"the function '{name}' of the request"
        i = end
    return None


def _root(receiver: str) -> str | None:
    """The first name of the expression that ends ``receiver`` (``o.items`` -> ``o``;
    ``request.args.m[k]`` -> ``request``), or None for a literal or anything else."""
    j, depth = len(receiver) - 1, 0
    while j >= 0:
        char = receiver[j]
        if char in ")]":
            depth += 1
        elif char in "([" and depth:
            depth -= 1
        elif not depth and not (char.isalnum() or char in "_."):
            break
        j -= 1
    word = _WORD.match(receiver[j + 1 :].lstrip())
    return word.group() if word else None


class ConditionError(Exception):
    """A condition could not produce a boolean for these inputs."""


class Condition:
    """One compiled CEL expression and the inputs it reads."""

    __slots__ = ("_program", "inputs", "reads", "source")

    def __init__(self, source: str) -> None:
        """Compile ``source``; raise ``ValueError`` with the reason when it is unusable."""
        if not isinstance(source, str) or not source.strip():
            raise ValueError("a condition must be a non-empty string")
        if len(source) > MAX_CONDITION_CHARS:
            raise ValueError(f"a condition may be at most {MAX_CONDITION_CHARS} characters")
        try:
            program = cel.compile(source)
        except Exception as exc:  # the binding's errors are not a stable family
            raise ValueError(f"CEL does not compile: {exc}") from exc
        nested = _nested_iteration(source)
        if nested is not None:
            raise ValueError(
                f"{nested} inside a macro's body: its cost would grow with the square of"
                " the request's size, and nothing can interrupt a running condition"
            )
        names = set(program.variables())
        bound = {name for match in _BOUND.finditer(source) for name in match.groups() if name}
        if "cel.bind" in source.replace(" ", ""):
            bound.add("cel")
        unknown = names - INPUTS - bound
        if unknown:
            raise ValueError(
                f"CEL refers to unknown variable(s) {', '.join(sorted(unknown))}; "
                f"the inputs are {', '.join(sorted(INPUTS))}"
            )
        self.source = source
        self.inputs: frozenset[str] = frozenset(names & INPUTS)
        self.reads: Reads = {name: _keys_read(source, name) for name in self.inputs}
        self._program = program

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def evaluate(self, inputs: Inputs) -> bool:
        """``True`` or ``False``; anything else raises ``ConditionError``."""
        inputs.provide(self.inputs)
        try:
            result = self._program.execute(inputs.context)
        except KeyError as exc:
            raise ConditionError(
                f"no such key {_short(repr(exc.args[0]) if exc.args else '')}"
            ) from exc
        except Exception as exc:  # any failure is a deny, never a skip
            raise ConditionError(f"{type(exc).__name__}: {_short(str(exc))}") from exc
        if result is True or result is False:
            return result
        raise ConditionError(f"returned {type(result).__name__}, not a boolean")


def merge_reads(conditions: Iterable[Condition]) -> Reads:
    """What a whole policy reads: the union of its conditions' reads."""
    merged: dict[str, frozenset[str] | None] = {}
    for condition in conditions:
        for name, keys in condition.reads.items():
            known = merged.get(name, frozenset())
            merged[name] = None if known is None or keys is None else known | keys
    return merged


def _keys_read(source: str, name: str) -> frozenset[str] | None:
    """The top-level keys of input ``name`` that ``source`` reads; None if it may read more.

    Conservative: every occurrence of the name, even inside a string literal, must be
    followed by one key selector, or the whole input is read.
    """
    if name == "now":
        return None
    keys: set[str] = set()
    for occurrence in re.finditer(rf"\b{name}\b", source):
        selector = _KEY.match(source, occurrence.end())
        if selector is None or source[: occurrence.start()].rstrip().endswith("."):
            return None
        # `input.exists(...)`, `input.size()`: a macro or method on the whole input, not a
        # key read; the whole input must be there for it to see.
        if source[selector.end() :].lstrip().startswith("("):
            return None
        keys.add(next(group for group in selector.groups() if group is not None))
    return frozenset(keys)


class Inputs:
    """The inputs of one evaluation, shared by every condition it runs.

    Each input is converted once, and only when the first condition that reads it runs:
    the binding's own conversion costs about a microsecond per value, so an artifact
    nobody asks about is never converted.
    """

    __slots__ = ("_added", "_problems", "_raw", "_reads", "context")

    def __init__(
        self,
        reads: Reads,
        *,
        request: Mapping[str, Any],
        artifact: Mapping[str, Any],
        environment: Mapping[str, Any],
        now: int,
    ) -> None:
        self._raw: dict[str, Any] = {
            "request": request,
            "artifact": artifact,
            "environment": environment,
            "now": now,
        }
        self._reads = reads
        self._added: set[str] = set()
        self._problems: dict[str, str] = {}
        self.context = cel.Context()

    def provide(self, names: frozenset[str]) -> None:
        """Make ``names`` available to the context; raise ``ConditionError`` if one is bad."""
        for name in names:
            if name not in self._added:
                self._added.add(name)
                try:
                    value = _convert(name, self._raw[name], self._reads.get(name))
                    self.context.add_variable(name, value)
                except Exception as exc:  # noqa: BLE001 - a bad input fails its conditions
                    self._problems[name] = f"input {name}: {_short(str(exc))}"
            problem = self._problems.get(name)
            if problem is not None:
                raise ConditionError(problem)


def _convert(name: str, value: Any, keys: frozenset[str] | None) -> Any:
    if name == "now":
        return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    if not isinstance(value, Mapping):
        raise ConditionError("must be an object")
    if keys is None:
        return to_cel(value)
    return {key: to_cel(value[key], 1) for key in keys if key in value}


def to_cel(value: Any, depth: int = 0) -> Any:
    """Copy a JSON-shaped value into plain dicts and lists the binding converts faithfully."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if kind is int:
        if value not in _INT64:
            raise ConditionError("integer outside the signed 64-bit range")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ConditionError("number is not finite")
        return value
    if depth >= _MAX_DEPTH:
        raise ConditionError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise ConditionError("object key is not a string")
            out[key] = to_cel(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [to_cel(item, depth + 1) for item in value]
    raise ConditionError(f"{kind.__name__} is not a JSON value")


def _short(text: str, limit: int = 160) -> str:
    """The first sentence of an error message on one line, clipped."""
    text = " ".join(text.split()).split(". ", 1)[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
