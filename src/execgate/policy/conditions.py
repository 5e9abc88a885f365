"""CEL conditions: compiled once at load, evaluated against one request's inputs.

A condition sees four variables: ``request`` (action, resource, args, runtime, parent),
``artifact`` (the verified artifact claims), ``environment`` (attested environment
claims, maybe empty) and ``now`` (a UTC ``datetime``, so ``now > timestamp("...")``
works), and CEL's type names (``TYPE_NAMES``: ``type(request.args.n) == int``). Only
an exact boolean ``True`` is a match and only ``False`` is a miss; an error or any other
value is reported to the caller, which denies.

Inputs are converted to plain JSON values before the binding sees them, because the
binding itself is lenient where a gateway must not be: integers outside int64 silently
become ``uint`` or lossy ``double``, a callable value becomes a function the expression
can call, non-string keys are accepted, and deeply nested input crashes the process.

That conversion is the main cost of an evaluation (about a microsecond per value), so
each input is converted at most once per evaluation, only when a condition reads it, and
only along the key paths some condition can read (``artifact.sub``,
``request.args.amount``, ``artifact['gov']``); a value used any other way
(``size(request.args)``, ``request.args.to.exists(...)``) is converted whole.

The binding has no cost limit, holds the interpreter lock while it runs and cannot be
interrupted; each mention of an input copies the whole input as converted. So:

- at load, a condition may nest iteration at most two levels deep (``_loop_depth``: a
  loop in a loop, not a third); a macro runs only on a key path of an input or of a
  bound name, a literal, or another macro's result (a list joined with ``+`` can be many
  times larger than any input), and never maps a map's result (each map may make every
  element larger: chained, exponentially); ``matches()`` is refused (the binding
  compiles its pattern on every call, up to tens of milliseconds), and so is ``-`` on
  anything but a number literal (its negation of -2**63 wraps; ``0 - x`` fails);
- a condition with a macro sees no list or object over ``MAX_ITERATED`` entries and no
  more than ``MAX_ITERATED_SIZE`` of input in all;
- what the conditions of one evaluation cost (copies of inputs and bound names, chains
  of ``+``, lists built by ``map`` and ``filter``, runs of loop bodies, scans by ``in``;
  see ``Inputs.charge``) is counted
  before each runs, from the sizes of what they read: past
  ``MAX_EVALUATION_COST``, about 0.3 s here, the condition denies instead of running.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

import cel

__all__ = [
    "FUNCTIONS",
    "INPUTS",
    "MAX_CONDITION_CHARS",
    "MAX_EVALUATION_COST",
    "MAX_ITERATED",
    "MAX_ITERATED_SIZE",
    "TYPE_NAMES",
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
# -2**63 is left out: the binding's negation of it wraps to itself instead of failing,
# so `-request.args.n <= 100` would hold for it.
_INT64 = range(-(2**63) + 1, 2**63)
# The comprehension macros: each runs its body once per element of its receiver.
_LOOP_MACROS: Final = r"all|exists|exists_one|existsOne|map|filter|transform\w*"
_LOOP_MACRO = re.compile(rf"(?:{_LOOP_MACROS})\Z")
# The name a comprehension macro binds (`list.all(x, ...)`; the binding's three-argument
# `map(x, filter, transform)` binds one name too, so `m.map(k, v, ...)` leaves `v`
# unknown). The binding reports it as a variable, so it is allowed.
_BOUND = re.compile(rf"\.\s*(?:{_LOOP_MACROS})\s*\(\s*([A-Za-z_]\w*)\s*,")
# A macro called with arguments none of its forms takes is reported as a call of an
# unknown function of its name.
_MACROS: Final = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter", "has"})
# What selects one key of a value: `.sub` or `['x-y']`.
_KEY = re.compile(r"""\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(?:'([^'\\\n]*)'|"([^"\\\n]*)")\s*\])""")
_MAX_PATH: Final = 8  # keys followed from an input; a value deeper down is kept whole

# What a condition reads of a value: the keys it selects, each with what it reads of that
# key's value; None for the whole value.
Paths = Mapping[str, "Paths | None"]
# For each input a condition reads: the paths it reads, or None for the whole input.
Reads = Mapping[str, Paths | None]
# What one evaluation may cost (see Inputs.charge), in units of about 25 ns here: half a
# number copied, 32 characters of a string copied, 2 characters of a loop body run once.
# About 0.3 s in all.
MAX_EVALUATION_COST: Final = 12_000_000


_WORD = re.compile(r"[A-Za-z_]\w*")
_WORD_END = re.compile(r"[A-Za-z_]\w*\Z")
# What ends a term: before a '[' it makes an index, before a name a path step or a call.
_TERM_END = re.compile(r"[\w.)\]}'\"]\Z")
_STRING_KEY = re.compile(r"'[^'\\\n]*'|\"[^\"\\\n]*\"")  # a quoted key, no escapes
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
_WITHIN: Final = -1  # the loop level inside a macro over what another binds (see _runs)
_OWN: Final = -2  # a mention of the name such a macro binds, in its own body (_loop_depth)
_BINDS = re.compile(r"\(\s*([A-Za-z_]\w*)")  # the name a macro call binds
# The functions the binding defines, as ``Program.functions()`` names them (the macros
# and ``has`` do not appear). The binding compiles a call of any other name and fails it
# at every evaluation, with the message it gives a known function called with the wrong
# arguments, so a misspelt name (``startswith``) or one other CEL implementations add
# (``max``, ``lowerAscii``, ``cel.bind``) is refused at load instead of denying every
# request. ``matches`` is listed so that its own refusal (see ``_loop_depth``) says why.
FUNCTIONS: Final = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches",
        "int", "uint", "double", "string", "bytes", "dyn", "type", "duration", "timestamp",
        "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getFullYear",
        "getMonth", "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
_ACCESSORS: Final = frozenset(name for name in FUNCTIONS if name.startswith("get"))
# CEL's type values (``type(request.args.n) == int``), which the binding reports as
# variables; each is what ``type()`` returns for values of that type.
TYPE_NAMES: Final = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
# How each function may be called, as the binding takes it: the number of arguments of
# its global form (``size(x)``) and of its form on a receiver (``x.size()``), None for a
# form it lacks. Any other call compiles and then fails every evaluation, with the same
# message as an unknown function, so it is refused at load too (``_calls``). Whether
# the arguments have the right types is known only when it runs. ``matches`` is refused
# in every form (see ``_loop_depth``). The table is checked against the binding by the
# tests.
_ARITY: Final[dict[str, tuple[int | None, int | None]]] = {
    "size": (1, 0),
    **dict.fromkeys(("contains", "startsWith", "endsWith"), (None, 1)),
    **dict.fromkeys(
        ("int", "uint", "double", "string", "bytes", "dyn", "type", "duration", "timestamp"),
        (1, None),
    ),
    **dict.fromkeys(_ACCESSORS, (None, 0)),  # no time zone argument in this binding
}


class _Shape(NamedTuple):
    """How a condition iterates and what it copies (see ``_loop_depth``)."""

    depth: int  # how deeply it nests iteration, a mention of request in a loop included
    innermost: str  # the construct that reaches that depth
    macros: int  # how deeply it nests macros over whole collections of inputs
    within: bool  # a macro runs over a key of what another binds (o.items in orders.all(o,..))
    maps: int  # how many macros make new elements (map, transform...)
    # Each a loop level (see _runs):
    scans: list[int]  # of each `in` on a list that is not a literal
    pluses: list[int]  # of each `+` (a concatenation copies its operands)
    mentions: dict[str, list[int]]  # for each input, of each mention
    bound: list[int]  # of each mention of a name a macro binds
    whole: bool  # a macro runs on a literal naming an input: a bound name may be all of it
    # Each map or filter (the binding copies the list built so far at every step): its
    # loop level, whether it is a filter, whether its body names an input, holds a literal.
    builds: list[tuple[int, bool, bool, bool]]


def _loop_depth(source: str, bound: frozenset[str] = frozenset()) -> _Shape:
    """How ``source`` iterates: a macro's body is one level; inside a body, a further
    macro, an ``in`` on anything but a list or map literal, or any mention of ``request``
    (the binding copies the whole value at each lookup, so it costs as much as the
    request is large) is one more. ``bound`` are the names macros bind. Refused with
    ``ValueError``: a macro on anything but a key path, a literal (``_check_receiver``)
    or another macro's result, a map of a map's result, ``matches()``, and ``-`` on
    anything but a number. Strings and raw strings are skipped; ``source`` comes without
    its comments (``_without_comments``)."""
    scopes: list[str | None] = []  # per open bracket: the macro whose body it holds
    grows: list[bool] = []  # per open macro: does its result come through a map?
    spans: list[bool] = []  # per open macro: does it run over an input's whole collection?
    # Per open macro: the name it binds, whether that name holds disjoint parts of an
    # input (an input path's elements), whether its result's elements are such parts.
    binders: list[tuple[str | None, bool, bool]] = []
    plain_results: dict[int, bool] = {}  # where a macro call's ')' is: see binders
    within = False  # any macro runs over a name another binds (see _Shape.macros)
    bodies: list[list[bool]] = []  # per open macro: [names an input, holds a literal]
    builds: list[tuple[int, bool, bool, bool]] = []  # each map or filter: see _Shape
    opened: list[int] = []  # per open bracket: where it opened
    pairs: dict[int, int] = {}  # each closing bracket's opening one
    results: dict[int, bool] = {}  # where a macro call's ')' is: has its chain a map?
    maps = 0
    mentions: dict[str, list[int]] = {}
    scans: list[int] = []
    pluses: list[int] = []
    names: list[int] = []
    whole = False  # a literal receiver names an input: a bound name may hold all of it
    deepest, what, macros = 0, "", 0
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char in "'\"":
            i = _past_string(source, i)
            continue
        word = _WORD.match(source, i)
        if word is None:
            prior = source[:i].rstrip() if char in "[{-" else ""  # only these look back
            if char in "([{":
                if char != "(" and not _TERM_END.search(prior):  # a list or map literal
                    for body in bodies:
                        body[1] = True
                scopes.append(None)
                opened.append(i)
            elif char in ")]}" and scopes:
                closed = scopes.pop()
                pairs[i] = opened.pop()
                if closed is not None:
                    results[i] = grows.pop()
                    plain_results[i] = binders.pop()[2]
                    spans.pop()
                    inputs, literal = bodies.pop()
                    if not closed.startswith(("all", "exists")):  # map, filter, transform
                        builds.append((_runs(spans), closed == "filter", inputs, literal))
            elif char == "+":
                pluses.append(_runs(spans))
            elif (
                char == "-"
                and (not prior or prior[-1] in "([{,?:!=<>&|+-*/%")
                and source[i + 1 :].lstrip()[:1] not in tuple("0123456789")
            ):
                raise ValueError(
                    "'-' negates a computed value: write '0 - x' (the binding's"
                    " negation of the smallest 64-bit integer wraps to itself instead"
                    " of failing, while '0 - x' fails)"
                )
            i += 1
            continue
        name, end = word.group(), word.end()
        rest = source[end:].lstrip()
        level = len(spans)  # open macros: one span each
        runs = _runs(spans)
        before = source[:i].rstrip()
        extra, label = 0, ""
        if name == "matches" and rest[:1] == "(":
            raise ValueError(
                "matches() is not allowed in a condition: the binding compiles the pattern"
                " on every call (tens of milliseconds for one with \\w or a counted"
                " repeat) and may scan long input slowly, and nothing can interrupt a"
                " running condition; put the pattern in the grant's constraints (RE2,"
                " compiled once, linear time), or use startsWith, endsWith or contains"
            )
        macro = bool(_LOOP_MACRO.match(name)) and before.endswith(".") and rest[:1] == "("
        if macro:
            extra, label = 1, f"the macro '{name}'"
            mapping = not name.startswith(("all", "exists", "filter"))  # map, transform...
            maps += mapping
            receiver = before[:-1].rstrip()
            end_of = len(receiver) - 1
            if receiver.endswith(")") and end_of in results:  # on another macro's result
                if mapping and results[end_of]:
                    raise ValueError(
                        f"the macro '{name}' maps the result of a map: each can make every"
                        " element many times larger, and nothing can interrupt a running"
                        " condition (one map per chain)"
                    )
                grows.append(mapping or results[end_of])
                spans.append(True)
                parts = plain_results[end_of]
            else:
                literal_inputs, root = _check_receiver(name, receiver, pairs, bound)
                whole |= literal_inputs
                grows.append(mapping)
                # Over a key of a name another macro binds to parts of an input: each run
                # sees other entries (``_runs``). Over anything else: a full loop level.
                binder = next((b for b in reversed(binders) if b[0] == root), None)
                spans.append(binder is None or not binder[1])
                parts = root in INPUTS or (binder is not None and binder[1])
            variable = _BINDS.match(rest)
            binders.append((variable.group(1) if variable else None, parts, parts and not mapping))
            if spans[-1]:
                macros = max(macros, sum(spans))
            else:
                within = True
        elif name == "in" and not _literal_follows(rest):
            scans.append(runs)
            if level:
                extra, label = 1, "'in' on a list that is not a literal"
        elif name in INPUTS and not before.endswith("."):
            mentions.setdefault(name, []).append(runs)
            for body in bodies:
                body[0] = True
            if name == "request" and level:
                extra, label = 1, "'request' (looked up once per element)"
        elif name in bound and not before.endswith("."):
            # The name the innermost macro over a bound name's key binds, in its own body:
            # its elements are disjoint, so all its copies together cost one input's.
            own = bool(binders) and binders[-1][0] == name and not spans[-1]
            names.append(_OWN if own else runs)
        if level + extra > deepest:
            deepest, what = level + extra, label
        if macro:
            scopes.append(name)
            bodies.append([False, False])
            opened.append(n - len(rest))
            i = n - len(rest) + 1  # past its '('
            continue
        i = end
    return _Shape(
        deepest, what, macros, within, maps, scans, pluses, mentions, names, whole, builds
    )


def _runs(spans: list[bool]) -> int:
    """How often what is read inside open macros runs, as ``Inputs.charge`` counts it: the
    number of enclosing macros over whole collections (each multiplies by the widest),
    or ``_WITHIN`` inside a macro over a name another binds (each element of each element:
    at most the entries of the inputs in all)."""
    return _WITHIN if not all(spans) else len(spans)


def _check_receiver(
    macro: str, receiver: str, pairs: Mapping[int, int], bound: frozenset[str]
) -> tuple[bool, str | None]:
    """Refuse (``ValueError``) a macro run on anything but a key path of an input or of a
    name a macro binds (``request.args.to``, ``x['items']``) or a list or map literal
    (another macro's result is checked by the caller): a computed list (joined with
    ``+``, indexed out of a literal) can be many times larger than any input, and
    nothing can interrupt a running condition. ``receiver`` is the text before
    ``.macro(``. Returns whether it is a literal that names an input (its elements may
    be whole inputs), and the name a path starts from (None for a literal)."""
    end = len(receiver)
    stepped = False  # past a key selector: the value is a key of what comes before
    while True:
        text = receiver[:end].rstrip()
        if text[-1:] in ("]", "}") and len(text) - 1 in pairs:
            start = pairs[len(text) - 1]
            head = receiver[:start].rstrip()
            inner = receiver[start + 1 : len(text) - 1].strip()
            if text[-1] == "]" and _WORD_END.search(head) and _STRING_KEY.fullmatch(inner):
                end, stepped = len(head), True  # a ['key'] selector: the path goes on
                continue
            if not stepped and not _TERM_END.search(head):  # a list or map literal
                return any(re.search(rf"\b{name}\b", inner) for name in INPUTS), None
            break
        word = _WORD_END.search(text)
        if word is None:
            break
        head = text[: word.start()].rstrip()
        if head.endswith("."):
            end, stepped = len(head) - 1, True  # a .key selector: the path goes on
            continue
        if word.group() in INPUTS | bound and not _TERM_END.search(head):
            return False, word.group()  # the root of the path
        break
    raise ValueError(
        f"the macro '{macro}' runs on a computed value: run it on a key of an input, a"
        " name a macro binds, a literal or another macro's result; a computed list"
        " (joined with '+', indexed out of a literal) can be many times larger than any"
        " input, and nothing can interrupt a running condition"
    )


def _calls(plain: str) -> Iterator[tuple[str, bool, int]]:
    """Each call in ``plain`` (a condition without comments): its name, whether it is
    made on a receiver (``x.name(...)``), and its number of arguments. Strings are
    skipped, so a quoted ``(`` or ``,`` counts for nothing."""
    i, n = 0, len(plain)
    while i < n:
        char = plain[i]
        if char in "'\"":
            i = _past_string(plain, i)
            continue
        word = _WORD.match(plain, i) if char.isalpha() or char == "_" else None
        if word is None or (i > 0 and (plain[i - 1].isalnum() or plain[i - 1] == "_")):
            i += 1
            continue
        i = word.end()
        opening = i
        while opening < n and plain[opening].isspace():
            opening += 1
        if opening >= n or plain[opening] != "(":
            continue
        before = word.start() - 1
        while before >= 0 and plain[before].isspace():
            before -= 1
        yield word.group(), before >= 0 and plain[before] == ".", _arguments(plain, opening)


def _arguments(plain: str, opening: int) -> int:
    """The number of arguments of the call whose ``(`` is at ``opening``."""
    depth, commas, empty, j = 0, 0, True, opening
    while j < len(plain):
        char = plain[j]
        if char in "'\"":
            j = _past_string(plain, j)
            empty = False
            continue
        if char in "([{":
            depth += 1
            if depth > 1:
                empty = False
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif char == "," and depth == 1:
            commas += 1
        elif not char.isspace():
            empty = False
        j += 1
    return 0 if empty else commas + 1


def _check_arity(plain: str) -> None:
    """Refuse a call of a known function in a form the binding lacks (see ``_ARITY``)."""
    for name, on_receiver, count in _calls(plain):
        forms = _ARITY.get(name)
        if forms is None or forms[on_receiver] == count:
            continue
        alone, member = forms
        usage = []
        if alone is not None:
            usage.append(f"{name}({', '.join(['x'] * alone)})")
        if member is not None:
            usage.append(f"x.{name}({', '.join(['y'] * member)})")
        called = f"x.{name}(...)" if on_receiver else f"{name}(...)"
        raise ValueError(
            f"CEL calls {called} with {count} argument(s); the binding takes"
            f" {' or '.join(usage)}"
            + (" (no time zone argument)" if name in _ACCESSORS and count else "")
        )


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


# How the CEL binding reports an error of the data (a wrong type, a division by zero,
# an overflow, an index out of range, a function's bad argument, an undefined name).
_DATA_ERRORS: Final = (
    TypeError,
    ValueError,
    ZeroDivisionError,
    OverflowError,
    IndexError,
    RuntimeError,
    RecursionError,
)


class ConditionError(Exception):
    """A condition could not produce a boolean for these inputs."""


class Condition:
    """One compiled CEL expression and the inputs it reads."""

    __slots__ = (
        "_program",
        "bound",
        "builds",
        "inputs",
        "iterates",
        "length",
        "literal_width",
        "macros",
        "maps",
        "mentions",
        "pluses",
        "reads",
        "scans",
        "source",
        "whole",
        "within",
    )

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
        functions = program.functions()
        rooted = sorted(name for name in functions if name.startswith("."))
        if rooted:  # `.size(x)`: CEL's root namespace, which the binding cannot call
            raise ValueError(
                f"CEL calls {', '.join(rooted)} with a leading dot, which the binding cannot"
                f" run: write {rooted[0][1:]}(...) without the dot"
            )
        missing = {  # operators have names no call can spell (`_+_`, `-_`, `@in`)
            name for name in functions if _WORD.fullmatch(name) and name not in FUNCTIONS
        }
        if missing & _MACROS:
            raise ValueError(
                f"CEL uses {', '.join(sorted(missing & _MACROS))} with arguments no form of"
                " the macro takes: write list.all(x, expression), and map also as"
                " list.map(x, filter, transform); a macro binds one name"
            )
        if missing:
            raise ValueError(
                f"CEL calls unknown function(s) {', '.join(sorted(missing))}; the functions"
                f" are {', '.join(sorted(FUNCTIONS - {'matches'}))}, and the macros has, all,"
                " exists, exists_one, map and filter"
            )
        plain = _without_comments(source)
        _check_arity(plain)
        names = set(program.variables())
        bound = {name for match in _BOUND.finditer(plain) for name in match.groups() if name}
        shape = _loop_depth(plain, frozenset(bound - INPUTS))
        if shape.depth > _MAX_LOOP_DEPTH:
            raise ValueError(
                f"{shape.innermost} nests iteration {shape.depth} deep: its cost would grow"
                f" with the request's size to the power {shape.depth}, and nothing can"
                f" interrupt a running condition (at most {_MAX_LOOP_DEPTH} levels)"
            )
        unknown = names - INPUTS - bound - TYPE_NAMES
        if unknown:
            raise ValueError(
                f"CEL refers to unknown variable(s) {', '.join(sorted(unknown))}; "
                f"the inputs are {', '.join(sorted(INPUTS))}"
            )
        self.source = source
        self.iterates = _ITERATES.search(plain) is not None
        self.length = len("".join(plain.split()))  # without spaces and comments
        self.inputs: frozenset[str] = frozenset(names & INPUTS)
        self.reads: Reads = {name: _paths_read(source, name) for name in self.inputs}
        # How deeply macros nest, the loop level of each `in` on a computed list, of each
        # `+`, and of each mention of an input or a bound name (each copies the value
        # once per run of the loop body it is in): what Inputs.charge counts.
        self.macros = shape.macros
        self.within = shape.within
        self.literal_width = plain.count(",") + 1  # entries of its longest list literal
        self.scans = tuple(shape.scans)
        self.pluses = tuple(shape.pluses)
        self.maps = shape.maps
        self.builds = tuple(shape.builds)
        self.bound = tuple(shape.bound)
        self.whole = shape.whole
        self.mentions = {
            name: tuple(shape.mentions.get(name, [0])) for name in self.inputs - {"now"}
        }
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
            inputs.check_iterable(self)
        inputs.charge(self)
        try:
            result = self._program.execute(inputs.context)
        except KeyError as exc:
            raise ConditionError(
                f"no such key {_short(repr(exc.args[0]) if exc.args else '')}"
            ) from exc
        except _DATA_ERRORS as exc:  # what the input made of the condition: a deny
            raise ConditionError(f"{type(exc).__name__}: {_short(str(exc))}") from exc
        # Anything else is the binding failing, not the input: it reaches the pipeline,
        # which fails closed (internal.error), never a skip and never a policy's deny.
        if result is True or result is False:
            return result
        raise ConditionError(f"returned {type(result).__name__}, not a boolean")


def merge_reads(conditions: Iterable[Condition]) -> Reads:
    """What a whole policy reads: the union of its conditions' reads."""
    merged: dict[str, Paths | None] = {}
    for condition in conditions:
        for name, paths in condition.reads.items():
            merged[name] = _merge(merged[name], paths) if name in merged else paths
    return merged


def _merge(a: Paths | None, b: Paths | None) -> Paths | None:
    if a is None or b is None:
        return None
    return {
        k: _merge(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k))
        for k in a.keys() | b.keys()
    }


def _paths_read(source: str, name: str) -> Paths | None:
    """The key paths of input ``name`` that ``source`` reads; None if it may read more.

    Conservative: every occurrence of the name, even inside a string literal, must be
    followed by at least one key selector (``request.args.amount``: the path args, amount),
    or the whole input is read. A path ends where no key selector follows, and its value is
    then read whole; a method or macro called on it (``request.args.to.exists(...)``,
    ``request.args.size()``) reads the whole value it is called on.
    """
    if name == "now":
        return None
    paths: dict[str, Any] = {}
    for occurrence in re.finditer(rf"\b{name}\b", source):
        if source[: occurrence.start()].rstrip().endswith("."):
            return None  # `x.request`: a key of something else, whatever it reads
        path: list[str] = []
        end = occurrence.end()
        while len(path) < _MAX_PATH and (selector := _KEY.match(source, end)) is not None:
            path.append(next(group for group in selector.groups() if group is not None))
            end = selector.end()
        if path and source[end:].lstrip().startswith("("):
            path.pop()  # the last "key" names a method or macro called on the value
        if not path:
            return None
        node = paths
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if child is None:  # already read whole
                break
            node = child
        else:
            node[path[-1]] = None
    return paths


class Inputs:
    """The inputs of one evaluation, shared by every condition it runs.

    Each input is converted once, and only when the first condition that reads it runs:
    the binding's own conversion costs about a microsecond per value, so an artifact
    nobody asks about is never converted. What the conditions run so far would cost is
    counted (``charge``): past ``MAX_EVALUATION_COST`` a condition denies instead.
    """

    __slots__ = (
        "_added",
        "_converted",
        "_cost",
        "_measured",
        "_problems",
        "_raw",
        "_reads",
        "context",
    )

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
        self._converted: dict[str, Any] = {}  # what the context holds of each input
        self._measured: dict[str, _Measure] = {}
        self._problems: dict[str, str] = {}
        self._cost = 0
        self.context = cel.Context()

    def _measure(self, name: str) -> _Measure:
        if name not in self._measured:
            self._measured[name] = _measure(self._converted[name])
        return self._measured[name]

    def charge(self, condition: Condition) -> None:
        """Count what ``condition`` costs to run on these inputs, and raise
        ``ConditionError`` once the conditions run so far cost more than
        ``MAX_EVALUATION_COST`` in all.

        Each mention of an input copies it as converted (see ``_Measure.copy``), and each
        mention of a name a macro binds copies an element (of an input; or all of one, or
        of a concatenation); a chain of ``+`` copies its operands over and over, about the
        square of its length times the largest; a map or filter copies what it has built
        at each step; a macro's body runs once per element, half a unit per character of
        the condition; an ``in`` on a computed list scans it. Each counts once per run of
        the loop body it is in: a macro over an input's collection runs once per element
        of the widest collection read (or of the longest possible list literal: one more
        than its commas), times the operands a ``+`` chain could join, and nested ones
        multiply; a macro over a key of what another binds (``o.items`` in
        ``orders.all(o, ...)``) runs at most once per entry of the inputs read, in all."""
        measured = {name: self._measure(name) for name in condition.mentions}
        measures = measured.values()
        largest = max((m.copy for m in measures), default=2)
        part = max((m.element for m in measures), default=2)  # a list entry or key read
        joined = len(condition.pluses) + 1
        width = 1
        if condition.iterates:
            width = joined * max([m.widest for m in measures] + [condition.literal_width])
        # What one value may hold: an element of an input, unless a literal puts whole
        # inputs in a loop or `+` joins values (each map body once more).
        growth = joined**condition.maps
        # The entries a macro over a bound name may see in all: those of the inputs, as
        # many again per operand `+` joins and per entry of a literal a map body makes.
        built = max([1] + [condition.literal_width for *_, literal in condition.builds if literal])
        entries = max([width] + [m.entries for m in measures]) * joined * growth * built

        def runs(level: int) -> int:
            return entries if level == _WITHIN else int(width**level)

        # A bound name may hold a whole input: a literal receiver or a map body names one.
        whole = condition.whole or any(
            names and not keeps for _, keeps, names, _ in condition.builds
        )
        cost = 0
        if condition.iterates:
            steps = width**condition.macros + (entries if condition.within else 0)
            cost += steps * condition.length // 2
            cost += sum(runs(level) * width for level in condition.scans)
        for name, levels in condition.mentions.items():
            cost += measured[name].copy * sum(runs(level) for level in levels)
        if condition.pluses:
            most = max(runs(level) for level in condition.pluses)
            cost += joined**2 // 2 * largest * growth * most
        element = largest * joined * growth if condition.pluses or whole else part
        cost += sum(
            largest if level == _OWN else element * runs(level) for level in condition.bound
        )
        # A map or filter copies the list it has built so far at each step: about half
        # the square of its length, times an entry (a map's: what its body makes).
        for level, keeps, names_input, literal in condition.builds:
            entry = (largest if whole else part) * growth
            if not keeps:
                entry = max(entry, largest if names_input else 0) * joined
                entry *= condition.literal_width if literal else 1
            cost += runs(level) * width**2 // 2 * entry
        self._cost += cost
        if self._cost > MAX_EVALUATION_COST:
            raise ConditionError(
                "the inputs are too large for the conditions that read them: running them"
                f" would cost more than {MAX_EVALUATION_COST:,} units (each mention of an"
                " input copies it, once per element in a loop)"
            )

    def check_iterable(self, condition: Condition) -> None:
        """Raise ``ConditionError`` if what ``condition`` (which iterates) reads of an input
        is too large (see ``MAX_ITERATED`` and ``MAX_ITERATED_SIZE``)."""
        for name in sorted(condition.inputs - {"now"}):
            read = condition.reads.get(name)
            whole = self._reads.get(name)
            measure = (
                self._measure(name)
                if read == whole
                else _measure(_project(self._converted[name], read, 0))
            )
            if measure.widest > MAX_ITERATED:
                found = f"a collection of {measure.widest} entries (at most {MAX_ITERATED})"
            elif measure.size > MAX_ITERATED_SIZE:
                found = f"more than {MAX_ITERATED_SIZE} characters and values"
            else:
                continue
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
                    self._converted[name] = value
                    self.context.add_variable(name, value)
                except (ConditionError, *_DATA_ERRORS) as exc:  # a bad input fails its conditions
                    self._problems[name] = f"input {name}: {_short(str(exc))}"
            problem = self._problems.get(name)
            if problem is not None:
                raise ConditionError(problem)


class _Measure(NamedTuple):
    # What one copy costs: 2 units a value, 8 a list or object, 6 more an object's key, and
    # 1 per 32 characters of a string (copied in bulk).
    copy: int
    size: int  # characters of strings and keys, plus one per value
    widest: int  # entries of its largest list or object
    entries: int  # entries of all its lists and objects
    element: int  # what a copy of what a macro binds costs at most: a list's entry, a key


def _measure(value: Any) -> _Measure:
    """``value``, as converted (dicts, lists, strings, numbers, booleans, None), measured."""
    size = widest = element = entries = 0

    def walk(item: Any) -> int:
        nonlocal size, widest, element, entries
        kind = type(item)
        size += 1
        if kind is str:
            size += len(item)
            return 2 + len(item) // 32
        if kind is dict:
            widest = max(widest, len(item))
            entries += len(item)
            copy = 8
            for key, child in item.items():
                size += len(key)
                element = max(element, 2 + len(key) // 32)  # a macro binds a map's keys
                copy += 6 + len(key) // 32 + walk(child)  # a map entry: key, slot, value
            return copy
        if kind is list:
            widest = max(widest, len(item))
            entries += len(item)
            copy = 8
            for child in item:
                inner = walk(child)
                element = max(element, inner)
                copy += inner
            return copy
        return 2

    copy = walk(value)
    return _Measure(copy=copy, size=size, widest=widest, entries=entries, element=element)


def _convert(name: str, value: Any, paths: Paths | None) -> Any:
    if name == "now":
        return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    if not isinstance(value, Mapping):
        raise ConditionError("must be an object")
    return _project(value, paths, 0)


def _project(value: Any, paths: Paths | None, depth: int) -> Any:
    """``to_cel`` of what ``paths`` read of ``value``: the keys they select that are there,
    each projected further. A value that is not an object is kept whole, so reading a key
    of it fails as it would on the whole input."""
    if paths is None or not isinstance(value, Mapping):
        return to_cel(value, depth)
    if depth >= _MAX_DEPTH:
        raise ConditionError(f"nested deeper than {_MAX_DEPTH} levels")
    return {key: _project(value[key], sub, depth + 1) for key, sub in paths.items() if key in value}


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
