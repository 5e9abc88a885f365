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
interrupted. So iteration is bounded twice: at load, a condition may nest it at most
two levels deep (``_loop_depth``: a loop in a loop, not a third); and a condition with
a macro sees no list or object over ``MAX_ITERATED`` entries and no more than
``MAX_ITERATED_SIZE`` of input in all (it denies instead), which keeps two levels near
a million steps.
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
    "MAX_ITERATED",
    "MAX_ITERATED_SIZE",
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
# The comprehension macros: each runs its body once per element of its receiver.
_LOOP_MACROS: Final = r"all|exists|exists_one|existsOne|map|filter|transform\w*"
_LOOP_MACRO = re.compile(rf"(?:{_LOOP_MACROS})\Z")
# Names a comprehension macro binds (`list.all(x, ...)`, `map.map(k, v, ...)`,
# `cel.bind(x, ...)`). The binding reports them as variables, so they are allowed.
_BOUND = re.compile(
    rf"\.\s*(?:{_LOOP_MACROS}|bind)\s*\(\s*([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?"
)
# What follows an input that reads one top-level key: `.sub` or `['x-y']`.
_KEY = re.compile(r"""\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(?:'([^'\\\n]*)'|"([^"\\\n]*)")\s*\])""")

# For each input a condition reads: the top-level keys it reads, or None for "any".
Reads = Mapping[str, frozenset[str] | None]


_WORD = re.compile(r"[A-Za-z_]\w*")
# Any sign of a macro, found anywhere (strings too: it only errs wide). An `in` outside
# a macro's body is one pass over its list: it does not count.
_ITERATES = re.compile(rf"\.\s*(?:{_LOOP_MACROS})\s*\(")
# A condition with a macro sees lists and objects of at most this many entries, and
# inputs of at most this size in all (characters, plus one per value): two nested loops
# then stay near a million steps, and each lookup of ``request`` in a loop (the binding
# copies the value) stays small. More is denied by such a condition (``policy.denied``).
MAX_ITERATED: Final = 1024
MAX_ITERATED_SIZE: Final = 65536
_MAX_LOOP_DEPTH: Final = 2


def _loop_depth(source: str) -> tuple[int, str]:
    """How deeply ``source`` nests iteration, and the innermost construct that does: a
    macro's body is one level; inside a body, a further macro, an ``in`` on anything but
    a list or map literal, or any mention of ``request`` (the binding copies the whole
    value at each lookup, so it costs as much as the request is large) is one more.
    Strings and raw strings are skipped; ``source`` comes without its comments
    (``_without_comments``)."""
    scopes: list[bool] = []  # per open bracket: does it hold a macro's body?
    deepest, what = 0, ""
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char in "'\"":
            i = _past_string(source, i)
            continue
        word = _WORD.match(source, i)
        if word is None:
            if char in "([{":
                scopes.append(False)
            elif char in ")]}" and scopes:
                scopes.pop()
            i += 1
            continue
        name, end = word.group(), word.end()
        rest = source[end:].lstrip()
        level = sum(scopes)
        before = source[:i].rstrip()
        extra, label = 0, ""
        macro = bool(_LOOP_MACRO.match(name)) and before.endswith(".") and rest[:1] == "("
        if macro:
            extra, label = 1, f"the macro '{name}'"
        elif name == "in" and level and not _literal_follows(rest):
            extra, label = 1, "'in' on a list that is not a literal"
        elif name == "request" and level and not before.endswith("."):
            extra, label = 1, "'request' (looked up once per element)"
        if level + extra > deepest:
            deepest, what = level + extra, label
        if macro:
            scopes.append(True)
            i = n - len(rest) + 1  # past its '('
            continue
        i = end
    return deepest, what


def _without_comments(source: str) -> str:
    """``source`` with each ``//`` comment (outside strings) blanked to spaces."""
    out, i, n = [], 0, len(source)
    while i < n:
        if source[i] in "'\"":
            end = _past_string(source, i)
            out.append(source[i:end])
            i = end
        elif source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        else:
            out.append(source[i])
            i += 1
    return "".join(out)


def _literal_follows(text: str) -> bool:
    """Whether ``text`` starts with a list or map literal that nothing extends
    (``['a', 'b']``, not ``[] + request.args.to`` or ``[request.args.to][0]``)."""
    if text[:1] not in ("[", "{"):
        return False
    depth, j = 0, 0
    while j < len(text):
        char = text[j]
        if char in "'\"":
            j = _past_string(text, j)
            continue
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
            if depth == 0:
                after = text[j + 1 :].lstrip()
                return after[:1] not in ("+", "[", ".", "-", "*", "/", "%")
        j += 1
    return False


def _past_string(text: str, i: int) -> int:
    """The index just past the string literal that opens at ``text[i]`` (a quote): single,
    double or triple quoted, raw (an ``r`` among the letters just before it: no escapes)
    or not."""
    start = i
    while start > 0 and i - start < 2 and text[start - 1] in "rRbB":
        start -= 1
    before = text[start - 1] if start > 0 else ""
    raw = "r" in text[start:i].lower() and not (before.isalnum() or before == "_")
    quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else text[i]
    i += len(quote)
    while i < len(text) and not text.startswith(quote, i):
        i += 2 if text[i] == "\\" and not raw else 1
    return i + len(quote)


class ConditionError(Exception):
    """A condition could not produce a boolean for these inputs."""


class Condition:
    """One compiled CEL expression and the inputs it reads."""

    __slots__ = ("_program", "inputs", "iterates", "reads", "source")

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
        plain = _without_comments(source)
        depth, innermost = _loop_depth(plain)
        if depth > _MAX_LOOP_DEPTH:
            raise ValueError(
                f"{innermost} nests iteration {depth} deep: its cost would grow with the"
                f" request's size to the power {depth}, and nothing can interrupt a running"
                f" condition (at most {_MAX_LOOP_DEPTH} levels)"
            )
        names = set(program.variables())
        bound = {name for match in _BOUND.finditer(plain) for name in match.groups() if name}
        if "cel.bind" in source.replace(" ", ""):
            bound.add("cel")
        unknown = names - INPUTS - bound
        if unknown:
            raise ValueError(
                f"CEL refers to unknown variable(s) {', '.join(sorted(unknown))}; "
                f"the inputs are {', '.join(sorted(INPUTS))}"
            )
        self.source = source
        self.iterates = _ITERATES.search(plain) is not None
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
        if self.iterates:
            inputs.check_iterable(self.inputs)
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

    __slots__ = ("_added", "_oversized", "_problems", "_raw", "_reads", "context")

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
        self._oversized: dict[str, str | None] = {}
        self.context = cel.Context()

    def check_iterable(self, names: frozenset[str]) -> None:
        """Raise ``ConditionError`` if an input of ``names`` is too large for a condition
        that iterates (see ``MAX_ITERATED``); each input is measured once."""
        for name in sorted(names - {"now"}):
            if name not in self._oversized:
                self._oversized[name] = _oversized(self._raw[name])
            found = self._oversized[name]
            if found is not None:
                raise ConditionError(
                    f"input {name} holds {found}: too large for a condition that iterates"
                )

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


def _oversized(value: Any) -> str | None:
    """What in ``value`` exceeds the bounds of a condition with a macro, if anything: a
    collection over ``MAX_ITERATED`` entries, or more than ``MAX_ITERATED_SIZE`` in all
    (characters of strings and keys, plus one per value)."""
    stack, size = [value], 0
    while stack:
        item = stack.pop()
        size += len(item) + 1 if isinstance(item, str) else 1
        if isinstance(item, Mapping | list | tuple):
            if len(item) > MAX_ITERATED:
                return f"a collection of {len(item)} entries (at most {MAX_ITERATED})"
            stack.extend(item.values() if isinstance(item, Mapping) else item)
            if isinstance(item, Mapping):
                stack.extend(key for key in item if isinstance(key, str))
        if size > MAX_ITERATED_SIZE:
            return f"more than {MAX_ITERATED_SIZE} characters and values"
    return None


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
