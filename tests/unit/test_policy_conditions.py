"""CEL conditions: what the binding does with Python values, and how errors become denies."""

from __future__ import annotations

import re
import textwrap
from typing import Any, Final

import cel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execgate.errors import PolicyError
from execgate.model import Outcome
from execgate.policy import Policy, PolicyResult, parse_policy
from execgate.policy.conditions import (
    FUNCTIONS,
    INPUTS,
    MAX_ITERATED,
    MAX_ITERATED_SIZE,
    TYPE_NAMES,
    Condition,
    ConditionError,
    Inputs,
    merge_reads,
    to_cel,
)


def _policy(when: str, effect: str = "proceed") -> Policy:
    text = f"""
    version: 1
    rules:
      - name: cond
        match: {{action: "**"}}
        when: {when!r}
        effect: {effect}
    """
    return parse_policy(textwrap.dedent(text), source="t", targets=())


def _eval(when: str, args: Any = None, **kw: Any) -> PolicyResult:
    request = {
        "action": "a.b",
        "resource": "r:1",
        "args": {} if args is None else args,
        "runtime": "agent-1",
        "parent": None,
    }
    inputs: dict[str, Any] = {"artifact": {}, "environment": {}, "now": 1_700_000_000}
    inputs.update(kw)
    return _policy(when).evaluate(request=request, **inputs)


def _verdict(result: PolicyResult) -> str:
    """proceed (condition true), miss (false, no rule left) or deny (condition error)."""
    if result.outcome is Outcome.PROCEED:
        return "proceed"
    return "miss" if result.code == "policy.no_match" else "deny"


@pytest.mark.parametrize(
    ("when", "args", "verdict"),
    [
        # Python ints, floats, bools, None, lists and nested maps arrive faithfully.
        ("request.args.n == 5", {"n": 5}, "proceed"),
        ("request.args.n <= 100", {"n": 5.5}, "proceed"),  # int/double compare across types
        ("request.args.n == 5.0", {"n": 5}, "proceed"),
        ("request.args.b", {"b": True}, "proceed"),
        ("request.args.b == 1", {"b": True}, "miss"),  # a bool is not an int
        ("request.args.z == null", {"z": None}, "proceed"),
        ("'x' in request.args.l && size(request.args.l) == 2", {"l": ["x", "y"]}, "proceed"),
        ("request.args.m.inner.deep == 'v'", {"m": {"inner": {"deep": "v"}}}, "proceed"),
        ("request.args.l.all(i, i > 0)", {"l": [1, 2]}, "proceed"),
        ("request.args.l.all(i, i > 0)", {"l": [1, -2]}, "miss"),
        ("request.args.l.exists(i, i.v > 1)", {"l": [{"v": 2}, {}]}, "proceed"),  # short-circuit
        # A missing key is an error, not false; has() is the way to test presence.
        ("request.args.missing == 1", {}, "deny"),
        ("request.args.missing == null", {}, "deny"),
        ("!(request.args.missing == 1)", {}, "deny"),
        ("has(request.args.missing)", {}, "miss"),
        ("!has(request.args.missing)", {}, "proceed"),
        ("has(request.args.m.x)", {"m": {}}, "miss"),
        ("has(request.args.q.x)", {}, "deny"),  # has() on a missing parent errors
        ("request.args['missing'] > 0", {}, "deny"),
        ("request.args.l[3] == 1", {"l": [1]}, "deny"),
        ("request.args.l.exists(i, i.v > 1)", {"l": [{}, {"v": 2}]}, "deny"),
        # Wrong types error rather than coerce.
        ("request.args.n > 1", {"n": "2"}, "deny"),
        ("request.args.n + 1 > 1", {"n": 1.5}, "deny"),
        ("request.args.n.x == 1", {"n": 5}, "deny"),
        ("1 / request.args.n == 1", {"n": 0}, "deny"),
        ("timestamp(request.args.t) < now", {"t": "not a time"}, "deny"),
        # CEL's logical operators absorb an error when the other side decides the result.
        ("request.args.missing == 1 || true", {}, "proceed"),
        ("request.args.missing == 1 && false", {}, "miss"),
        ("false && request.args.missing == 1", {}, "miss"),
        ("request.args.missing == 1 || false", {}, "deny"),
    ],
)
def test_binding_semantics(when: str, args: dict[str, Any], verdict: str) -> None:
    assert _verdict(_eval(when, args)) == verdict


def test_condition_error_detail_names_rule_and_key() -> None:
    result = _eval("request.args.amount <= 100", {})
    assert result.rule == "cond"
    assert result.code == "policy.denied"
    assert result.detail == "rule 'cond': condition failed: no such key 'amount'"


def test_condition_error_detail_is_one_short_line() -> None:
    result = _eval("request.args.n > 1", {"n": "2"})
    assert "\n" not in result.detail
    assert result.detail.startswith("rule 'cond': condition failed: TypeError: No such overload")
    assert len(result.detail) < 200


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (2**63, "64-bit"),  # the binding would make this a uint
        (-(2**63) - 1, "64-bit"),  # ... and this a lossy double
        (-(2**63), "64-bit"),  # its negation wraps to itself: `-n <= 100` would hold
        (10**30, "64-bit"),
        (float("nan"), "not finite"),
        (float("inf"), "not finite"),
        ({1, 2}, "set is not a JSON value"),
        (b"bytes", "bytes is not a JSON value"),
        (len, "is not a JSON value"),  # the binding would make a callable a CEL function
        ({1: "a"}, "key is not a string"),
    ],
)
def test_non_json_input_denies(value: object, problem: str) -> None:
    result = _eval("has(request.args.v)", {"v": value})
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")
    assert problem in result.detail
    assert "input request" in result.detail


def test_int64_bounds_are_accepted() -> None:
    assert _verdict(_eval("request.args.v > 0", {"v": 2**63 - 1})) == "proceed"
    assert _verdict(_eval("request.args.v < 0", {"v": -(2**63) + 1})) == "proceed"
    assert _verdict(_eval("0 - request.args.v > 0", {"v": -(2**63) + 1})) == "proceed"


def test_deep_input_denies_instead_of_crashing() -> None:
    # The binding overflows its stack (SIGSEGV) on deeply nested input; we never hand it one.
    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    result = _eval("has(request.args.v)", {"v": deep})
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")
    assert "nested deeper" in result.detail


def test_bad_input_only_fails_conditions_that_read_it() -> None:
    text = """
    version: 1
    rules:
      - name: by-request
        match: {action: "**"}
        when: "request.args.n == 1"
        effect: proceed
      - name: by-artifact
        match: {action: "**"}
        when: "artifact.sub == 'x'"
        effect: proceed
    """
    policy = parse_policy(textwrap.dedent(text), source="t", targets=())
    request = {"action": "a", "resource": "r", "args": {"n": 1}, "runtime": "x", "parent": None}
    result = policy.evaluate(request=request, artifact={"sub": float("nan")}, environment={}, now=0)
    assert result.rule == "by-request"
    assert result.outcome is Outcome.PROCEED
    request["args"] = {"n": 2}
    result = policy.evaluate(request=request, artifact={"sub": float("nan")}, environment={}, now=0)
    assert (result.outcome, result.rule) == (Outcome.DENY, "by-artifact")
    assert "input artifact" in result.detail


def test_non_mapping_artifact_denies() -> None:
    result = _eval("artifact.sub == 'x'", {}, artifact=["not", "a", "map"])
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")
    assert "must be an object" in result.detail


def test_now_is_a_utc_timestamp() -> None:
    when = "now == timestamp('2023-11-14T22:13:20Z') && now.getHours() == 22"
    assert _verdict(_eval(when)) == "proceed"
    assert _verdict(_eval("now - duration('1h') < now")) == "proceed"


def test_now_out_of_range_denies() -> None:
    result = _eval("now > timestamp('2020-01-01T00:00:00Z')", now=10**20)
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")
    assert "input now" in result.detail


def test_conditions_are_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy("request.args.n == 1")
    import cel

    def fail(_: str) -> None:
        raise AssertionError("compiled during evaluation")

    monkeypatch.setattr(cel, "compile", fail)
    request = {"action": "a", "resource": "r", "args": {"n": 1}, "runtime": "x", "parent": None}
    for _ in range(3):
        result = policy.evaluate(request=request, artifact={}, environment={}, now=0)
        assert result.outcome is Outcome.PROCEED


def test_evaluation_does_not_mutate_inputs() -> None:
    request = {
        "action": "a",
        "resource": "r",
        "args": {"l": (1, 2)},
        "runtime": "x",
        "parent": None,
    }
    artifact = {"sub": "x"}
    _policy("size(request.args.l) == 2 && artifact.sub == 'x'").evaluate(
        request=request, artifact=artifact, environment={}, now=0
    )
    assert request["args"] == {"l": (1, 2)}
    assert artifact == {"sub": "x"}


# --- the Condition class itself --------------------------------------------------------


def test_condition_reports_the_inputs_it_reads() -> None:
    assert Condition("request.args.n > 1 && now > now").inputs == {"request", "now"}
    assert Condition("true").inputs == frozenset()
    assert {"request", "artifact", "environment", "now"} == INPUTS


@pytest.mark.parametrize(
    "source",
    [
        "request.args.l.all(x, x > 0)",
        "request.args.l.exists_one(item, item == 1)",
        "request.args.l.map(x, x * 2).size() > 0",
        "request.args.l.map(x, x > 0, x * 2).size() > 0",
        "request.args.l.filter(x, x > 0).size() > 0",
    ],
)
def test_comprehension_variables_are_not_unknown(source: str) -> None:
    assert "request" in Condition(source).inputs


_OF_TYPE: Final = {
    "int": "1",
    "uint": "1u",
    "double": "1.5",
    "bool": "true",
    "string": '"a"',
    "bytes": 'b"a"',
    "list": "[1]",
    "map": '{"a": 1}',
    "null_type": "null",
    "type": "int",
}
# An argument of each JSON type, and the CEL type a condition sees it as.
_JSON_ARGS: Final[tuple[tuple[Any, str], ...]] = (
    (1, "int"),
    (1.5, "double"),
    (True, "bool"),
    ("a", "string"),
    ([1], "list"),
    ({"a": 1}, "map"),
    (None, "null_type"),
)


@pytest.mark.parametrize("name", sorted(TYPE_NAMES))
def test_type_names_are_values_not_unknown_variables(name: str) -> None:
    """`type(x) == int` checks a type: each name is what type() gives for a value of
    that type, and no other's, in the binding and in a condition."""
    assert set(_OF_TYPE) == TYPE_NAMES
    for other, value in _OF_TYPE.items():
        assert cel.evaluate(f"type({value}) == {name}", {}) is (other == name)
    condition = Condition(f"type(request.args.v) == {name}")
    assert condition.inputs == {"request"}
    for arg, cel_type in _JSON_ARGS:
        inputs = Inputs(
            condition.reads,
            request={"args": {"v": arg}},
            artifact={},
            environment={},
            now=2_000_000_000,
        )
        assert condition.evaluate(inputs) is (cel_type == name), arg


def _stdlib_example(name: str) -> str:
    """A call of ``name`` that the binding evaluates without error."""
    if name.startswith("get"):
        return f'timestamp("2024-03-05T06:07:08.009Z").{name}() >= 0'
    return {
        "size": "size([1]) == 1",
        "contains": '"abc".contains("b")',
        "startsWith": '"abc".startsWith("a")',
        "endsWith": '"abc".endsWith("c")',
        "int": 'int("7") == 7',
        "uint": "uint(7) == 7u",
        "double": "double(7) == 7.0",
        "string": 'string(7) == "7"',
        "bytes": 'bytes("a") == b"a"',
        "dyn": "dyn(1) == 1",
        "type": "type(1) == type(2)",
        "duration": 'duration("1s") < duration("2s")',
        "timestamp": 'timestamp("2024-01-01T00:00:00Z") < now',
    }[name]


@pytest.mark.parametrize("name", sorted(FUNCTIONS - {"matches"}))
def test_every_allowed_function_is_one_the_binding_has(name: str) -> None:
    # The list is checked against the binding, not trusted: a name it lacks would let a
    # policy load that then denies every request.
    source = _stdlib_example(name)
    condition = Condition(source)
    assert name in cel.compile(source).functions()
    inputs = Inputs(condition.reads, request={}, artifact={}, environment={}, now=2_000_000_000)
    assert condition.evaluate(inputs) is True


# For each function with a form on a receiver or one alone: a value of the type it takes
# first (or as its receiver), and one for its other arguments.
_TYPED: Final = {
    "size": ('"abc"', '"abc"'),
    "contains": ('"abc"', '"b"'),
    "startsWith": ('"abc"', '"a"'),
    "endsWith": ('"abc"', '"c"'),
    "matches": ('"abc"', '"a"'),
    "int": ('"7"', '"7"'),
    "uint": ("7", "7"),
    "double": ("7", "7"),
    "string": ("7", "7"),
    "bytes": ('"a"', '"a"'),
    "dyn": ("1", "1"),
    "type": ("1", "1"),
    "duration": ('"1s"', '"1s"'),
    "timestamp": ('"2024-01-01T00:00:00Z"', '"2024-01-01T00:00:00Z"'),
    **{
        name: ('timestamp("2024-03-05T06:07:08.009Z")', '"UTC"')
        for name in FUNCTIONS
        if name.startswith("get")
    },
}


def _call(name: str, on_receiver: bool, count: int) -> str:
    first, other = _TYPED[name]
    if on_receiver:
        return f"{first}.{name}({', '.join([other] * count)})"
    return f"{name}({', '.join([first, *[other] * (count - 1)][:count])})"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_functions_forms_are_the_ones_the_binding_takes(name: str) -> None:
    """Every way of calling each function, with and without a receiver and with 0-3
    arguments of the types it takes, is refused at load exactly when the binding
    cannot run it (it would fail every evaluation: a rule that can only deny)."""
    assert set(_TYPED) == FUNCTIONS
    for on_receiver in (False, True):
        for count in range(4):
            source = _call(name, on_receiver, count)
            error = ""
            try:
                cel.evaluate(source, {})
            except RuntimeError as exc:
                error = str(exc)
            # A form it lacks fails as an unknown function does, whatever the arguments.
            assert not error or error.startswith(f"Undefined variable or function: '{name}'")
            runs = not error
            if name == "matches":  # refused in every form, for its cost (below)
                with pytest.raises(ValueError, match=r"matches\(\) is not allowed"):
                    Condition(source)
            elif runs:
                Condition(source)
            else:
                with pytest.raises(ValueError, match=r"argument\(s\); the binding takes"):
                    Condition(source)


@pytest.mark.parametrize(
    "source",
    [
        'size([1, (2), {"a": [3, 4]}]) == 3',  # brackets inside the arguments
        'request.action.startsWith("a, b(") && size("x)") == 2',  # quoted , and ( )
        "request.action.startsWith('a') // size(1, 2) in a comment",
        'r"size(1, 2)".size() > 0 && b"a".size() == 1',
        "\"a\\\"(b, c\".size() > 0 && '''size(1,\n2)'''.size() > 0",  # escapes, triple
        "request.args.l.all(size, size > 0)",  # a bound name that is a function's name
        "has(request.args.size) && request.args.size.size() > 0",
    ],
)
def test_calls_are_counted_outside_strings_and_comments(source: str) -> None:
    Condition(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("size(request.args.l, 1) > 0", "size(...) with 2 argument(s)"),
        ("request.action.startsWith() ", "x.startsWith(...) with 0 argument(s)"),
        ("now.getHours('UTC') == 9", "x.getHours() (no time zone argument)"),
        ('request.action.contains("a", "b")', "the binding takes x.contains(y)"),
        ("dyn() == 1", "the binding takes dyn(x)"),
        ("request.args.s.int() == 1", "the binding takes int(x)"),
        # CEL's root namespace, which the binding parses and never runs
        ('request.action == "x" || .startsWith("a")', ".startsWith with a leading dot"),
        ('.size("abc") == 3', "write size(...) without the dot"),
        ("request.args.l.size() > 5 || .max(1, 2) == 1", ".max with a leading dot"),  # unknown too
    ],
)
def test_a_known_function_called_wrongly_is_refused_at_load(source: str, message: str) -> None:
    # Without the check each compiles and then fails every evaluation.
    with pytest.raises(RuntimeError, match="Undefined variable or function"):
        cel.compile(source).execute(
            {"request": {"action": "pay", "args": {"l": [1], "s": "1"}}, "now": 0}
        )
    with pytest.raises(ValueError, match=re.escape(message)):
        Condition(source)


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ('request.action.startswith("pay")', "startswith"),  # a misspelling
        ("nofn(request.args.n)", "nofn"),
        ("max(request.args.n, 2) < 5", "max"),  # other CEL implementations have these
        ('request.action.lowerAscii() == "pay"', "lowerAscii"),
        ("cel.bind(limit, 100, request.args.n < limit)", "bind"),
        ('bool("true")', "bool"),
    ],
)
def test_a_function_the_binding_lacks_is_refused_at_load(source: str, missing: str) -> None:
    # Without the check each compiles and then fails every evaluation the same way.
    with pytest.raises(RuntimeError, match="Undefined variable or function"):
        cel.compile(source).execute({"request": {"action": "pay", "args": {"n": 1}}})
    with pytest.raises(ValueError, match=f"unknown function\\(s\\) {missing};"):
        Condition(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("request.args.n >", "CEL does not compile"),
        ("reqest.args.n > 1", "unknown variable(s) reqest"),
        ("request.args.n > limit", "unknown variable(s) limit"),
        # the binding's three-argument map is (x, filter, transform): v is no name it binds
        ("request.args.m.map(k, v, v > 0).size() > 0", "unknown variable(s) v"),
        ("request.args.m.all(k, v, v > 0)", "all with arguments no form of the macro takes"),
        ("request.args.l.exists(x)", "exists with arguments no form of the macro takes"),
        ("x" * 4097, "at most 4096"),
        # iteration three deep: the cube of the request's size, uninterruptible
        ("r.all(g, g.all(x, g.exists_one(y, y == x)))", "'exists_one' nests iteration 3"),
        ("r.all(x, r.all(y, y in request.args.to))", "'in' on a list"),
        ("[r].all(l, l.all(x, l.exists_one(y, y == x)))", "nests iteration 3"),
        ("r.all(x, r.all(y, request.args.c.contains(y)))", "'request' (looked up"),
        # 90 s at 1,024 x 1,024: each lookup of the request in a loop copies it
        ("r.all(f, request.args.d.exists(d, f.startsWith(request.args.root + d)))", "3 deep"),
        ("r.all(x, r.all(y, (request.args.s).contains(y)))", "'request' (looked up"),
        ("r.all(x, x.existsOne(y, y.all(z, z)))", "'all' nests iteration 3"),
        ("r.all(x, r.all(y, y in [] + request.args.to))", "'in' on a list"),
        ("r.all(x, // )\n r.all(y, r.exists(z, z == y)))", "nests iteration 3"),
        ("r'\\' != '' && r.all(x, x.all(y, y.exists(z, z == 1)))", "nests iteration 3"),
        ("r.all(x, r.all(y, y in [']'] + request.args.to))", "'in' on a list"),
    ],
)
def test_condition_refused_at_compile(source: str, message: str) -> None:
    source = source.replace("r.", "request.args.l.").replace("[r]", "[request.args.l]")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Condition(source)


@pytest.mark.parametrize(
    "source",
    [
        "request.args.orders.all(o, o.items.all(i, i.price < 100))",  # parts of the element
        "request.args.orders.all(o, 'x' in o.tags)",
        "request.args.tags.all(t, t in ['a', 'b'])",  # a literal
        "request.args.tags.all(t, t in {'a': 1})",
        "request.args.l.map(x, x * 2).filter(y, y > 3).size() > 0",  # one after the other
        "request.args.to.all(x, x.startsWith('a') && x != request.runtime)",
        "request.args.to.all(x, has(request.args.y) && artifact.sub.startsWith(x))",
        "request.args.s == '.all(x, y.all(z))' && 'a' in request.args.to",  # in a string
        # two levels: bounded by what a condition that iterates may see (MAX_ITERATED)
        "request.args.to.all(x, request.args.to.exists_one(y, y == x))",
        "request.args.to.all(x, x in artifact.gov.recipients)",
        "request.args.items.all(i, i.price <= int(request.args.cap))",
    ],
)
def test_iteration_two_levels_deep_is_accepted(source: str) -> None:
    assert "request" in Condition(source).inputs


def _distinct(to: list[Any]) -> bool:
    condition = Condition("request.args.to.all(x, request.args.to.exists_one(y, y == x))")
    request = {"action": "a", "resource": "r", "runtime": "rt", "args": {"to": to}}
    inputs = Inputs(condition.reads, request=request, artifact={}, environment={}, now=0)
    return condition.evaluate(inputs)


def _each_positive(values: list[Any]) -> bool:
    condition = Condition("request.args.to.all(x, x > 0)")
    request = {"args": {"to": values}}
    inputs = Inputs(condition.reads, request=request, artifact={}, environment={}, now=0)
    return condition.evaluate(inputs)


def test_a_condition_that_iterates_sees_no_more_than_max_iterated_entries() -> None:
    assert _each_positive(list(range(1, MAX_ITERATED + 1))) is True
    with pytest.raises(ConditionError, match=f"{MAX_ITERATED + 1} entries"):
        _each_positive(list(range(1, MAX_ITERATED + 2)))
    with pytest.raises(ConditionError, match="characters and values"):
        _each_positive(["x" * MAX_ITERATED_SIZE])
    # nested loops cost the square: the evaluation's cost bound stops them sooner
    assert _distinct(list(range(500))) is True
    with pytest.raises(ConditionError, match="too large for the conditions that read them"):
        _distinct(list(range(MAX_ITERATED)))
    # a condition that does not iterate (one `in` is one pass) reads any size
    plain = Condition("size(request.args.to) > 5 && 49999 in request.args.to")
    request = {"args": {"to": list(range(50_000))}}
    inputs = Inputs(plain.reads, request=request, artifact={}, environment={}, now=0)
    assert plain.evaluate(inputs) is True


def test_a_quadratic_condition_is_refused_with_its_rule_and_line() -> None:
    policy = textwrap.dedent(
        """
        version: 1
        rules:
          - name: distinct-recipients
            match: {action: "payments.*"}
            when: "request.args.g.all(g, g.all(x, g.exists_one(y, y == x)))"
            effect: proceed
        """
    )
    with pytest.raises(PolicyError, match=r"rule 'distinct-recipients', line 6: .*3 deep"):
        parse_policy(policy, source="p.yaml", targets=())


@pytest.mark.parametrize(
    ("when", "args"),
    [
        # each mention copies the input: 200 copies of a megabyte string
        ("size(" + " + ".join(["request.args.s"] * 200) + ") > 0", {"s": "x" * 1_000_000}),
        # a whole input read by many mentions
        ("size([" + ", ".join(["request"] * 400) + "]) > 0", {"pad": [0] * 100_000}),
        # a mention inside a loop copies the input once per element
        ("request.args.l.all(x, x != request.args.m)", {"l": [1] * 500, "m": [[0] * 500] * 60}),
        # a chain of '+' copies its operands over and over (no macro needed)
        ("size(" + " + ".join(["request.args.s"] * 200) + ") > 0", {"s": "x" * 50_000}),
        # ... also on a name a macro binds
        ("[request.args.s].all(s, size(" + " + ".join(["s"] * 20) + ") > 0)", {"s": "x" * 50_000}),
        # nested loops with a long body run it a million times
        (
            "request.args.l.all(x, request.args.l.all(y, " + " && ".join(["x == y"] * 300) + "))",
            {"l": [0] * 1024},
        ),
    ],
)
def test_an_evaluation_that_would_cost_too_much_denies(when: str, args: dict[str, Any]) -> None:
    result = _eval(when, args)
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")
    assert "too large for the conditions that read them" in result.detail
    small = {k: v[:2] if isinstance(v, list | str) else v for k, v in args.items()}
    assert _eval(when, small).code != "policy.denied"  # the same condition, small input


@pytest.mark.parametrize(
    "source",
    [
        "request.args.a.map(x, x * 2).all(y, y > 0)",
        "request.args.a.filter(x, x > 0).exists(y, y == 2)",
        "[1, 2, 3].all(x, x > 0)",
        "{'a': 1}.all(k, k == 'a')",
        "size(request.args.a.filter(x, x > 0)) > 0",
        "request.args['a'].all(x, x > 0)",
        "request.args.a.all(x, x.items.exists(y, y == 1))",
        "request.args.a.map(x, x + 1).filter(y, y > 1).all(z, z > 0)",
        "[request.args.a, request.args.b].all(x, x > 0)",
    ],
)
def test_a_macro_on_an_input_a_literal_or_a_macro_result_is_accepted(source: str) -> None:
    assert Condition(source).iterates


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("(request.args.a + request.args.b).all(x, x > 0)", "runs on a computed value"),
        (
            "request.args.l.all(x, (request.args.a + request.args.a).exists(y, y == x))",
            "runs on a computed value",
        ),
        ("dyn(request.args.a).all(x, x > 0)", "runs on a computed value"),
        ("[request.args.a + request.args.b][0].all(x, x > 0)", "runs on a computed value"),
        ("{'k': request.args.a + request.args.b}.k.all(x, x > 0)", "runs on a computed value"),
        ("[request.args.a]['k'].all(x, x > 0)", "runs on a computed value"),
        ("request.args.a[0].all(x, x > 0)", "runs on a computed value"),
        # each map may make every element many times larger: chained, exponentially
        ("size([request.args.s].map(s, s + s).map(s, s + s)[0]) > 0", "maps the result of a map"),
        (
            "request.args.l.map(x, [x, x]).filter(y, true).map(z, z + z).size() > 0",
            "maps the result of a map",
        ),
        ("request.args.to.matches('^[a-z]+@corp\\\\.com$')", "matches() is not allowed"),
        ("matches(request.args.to, 'a')", "matches() is not allowed"),
        ("-request.args.n <= 100", "write '0 - x'"),
        ("-(request.args.n * 1024) <= 100", "write '0 - x'"),
        ("request.args.n > 0 && [-request.args.m][0] < 0", "write '0 - x'"),
    ],
)
def test_constructs_the_binding_runs_badly_are_refused(source: str, refusal: str) -> None:
    with pytest.raises(ValueError, match=re.escape(refusal)):
        Condition(source)


@pytest.mark.parametrize(
    "source", ["request.args.n > -5", "request.args.n - -1 > 0", "[-1, - 2].all(x, x < 0)"]
)
def test_a_negative_number_is_fine(source: str) -> None:
    assert Condition(source).source == source


def test_a_negated_computed_value_cannot_wrap() -> None:
    """Written as '0 - x', the negation of the smallest int64 fails instead of wrapping."""
    result = _eval("0 - request.args.n * 1024 <= 100", {"n": -(2**53)})
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")


@pytest.mark.parametrize(
    ("when", "entries"),
    [
        ("request.args.items.filter(i, i.a >= 0).size() > 0", [{k: 0 for k in "abcdefghij"}]),
        ("request.args.items.map(i, request.args.items).size() > 0", [0]),
    ],
)
def test_a_map_or_filter_copies_what_it_built_at_each_step(when: str, entries: list[Any]) -> None:
    """The binding copies the list a map or filter has built so far at every step."""
    assert _verdict(_eval(when, {"items": entries * 100})) == "proceed"
    result = _eval(when, {"items": entries * 1024})
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")
    assert "too large for the conditions that read them" in result.detail


@pytest.mark.parametrize(("orders", "items"), [(MAX_ITERATED, 1), (10, 100), (60, 20)])
def test_a_loop_over_what_another_binds_counts_entries_not_their_square(
    orders: int, items: int
) -> None:
    """``o.items`` runs over each order's own items: all the inner steps together, and
    all the copies of ``i``, are at most the entries of the request, not the widest list
    squared."""
    when = "request.args.orders.all(o, o.items.all(i, i.qty > 0 && i.qty <= 100 && i.price >= 0))"
    args = {"orders": [{"id": k, "items": [{"qty": 1, "price": 5}] * items} for k in range(orders)]}
    assert _verdict(_eval(when, args)) == "proceed"
    args["orders"][-1]["items"] = [{"qty": 0, "price": 5}]
    assert _verdict(_eval(when, args)) == "miss"


@pytest.mark.parametrize(
    "when",
    [
        # the outer macro runs over a literal of whole inputs: its elements are not parts
        "[" + ", ".join(["request.args"] * 50) + "].all(a, a.l.all(x, a.l == a.l))",
        # ... or over a map's result whose body names a whole input
        "request.args.l.map(x, request.args).all(a, a.l.all(y, a.l == a.l && a.l == a.l))",
    ],
)
def test_a_loop_over_what_another_binds_to_whole_inputs_is_a_full_level(when: str) -> None:
    result = _eval(when, {"l": list(range(MAX_ITERATED))})
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")
    assert "too large for the conditions that read them" in result.detail
    assert _verdict(_eval(when, {"l": list(range(3))})) == "proceed"


def test_a_condition_that_iterates_is_bounded_by_what_it_reads_itself() -> None:
    """Another rule reading a large body does not make a loop over a short list deny."""
    policy = parse_policy(
        textwrap.dedent(
            """
            version: 1
            rules:
              - name: small-body
                match: {action: "**"}
                when: "size(request.args.body) > 1000000"
                effect: deny
              - name: recipients
                match: {action: "**"}
                when: "request.args.to.all(r, r.endsWith('@corp.com'))"
                effect: proceed
            """
        ),
        source="t",
        targets=(),
    )
    request = {"action": "a", "resource": "r", "args": {"to": ["a@corp.com"], "body": "x" * 70_000}}
    result = policy.evaluate(request=request, artifact={}, environment={}, now=0)
    assert (result.outcome, result.rule) == (Outcome.PROCEED, "recipients")


def test_condition_equality_is_by_source() -> None:
    assert Condition("true") == Condition("true")
    assert hash(Condition("true")) == hash(Condition("true"))
    assert Condition("true") != Condition("false")
    assert repr(Condition("true")) == "Condition('true')"


def test_condition_evaluate_raises_condition_error() -> None:
    inputs = Inputs({}, request={}, artifact={}, environment={}, now=0)
    with pytest.raises(ConditionError, match="no such key"):
        Condition("request.x == 1").evaluate(inputs)
    with pytest.raises(ConditionError, match="not a boolean"):
        Condition("1").evaluate(inputs)
    assert Condition("has(request.x)").evaluate(inputs) is False


def test_to_cel_copies_json_shapes() -> None:
    source = {"a": (1, [2.5, None]), "b": {"c": True}}
    assert to_cel(source) == {"a": [1, [2.5, None]], "b": {"c": True}}
    assert type(to_cel(source)["a"]) is list


# --- converting only what conditions read ---------------------------------------------


@pytest.mark.parametrize(
    ("source", "name", "keys"),
    [
        ("artifact.sub == 'a'", "artifact", {"sub": None}),
        (
            "artifact . sub == 'a' && has(artifact.gov.ticket)",
            "artifact",
            {"sub": None, "gov": {"ticket": None}},
        ),
        ("artifact['x-y'] == 1 || artifact[\"z\"] == 2", "artifact", {"x-y": None, "z": None}),
        (
            "request.args.n > 0 && request.runtime == 'a'",
            "request",
            {"args": {"n": None}, "runtime": None},
        ),
        ("request.args.n > 0 && size(request.args) < 3", "request", {"args": None}),
        ("size(request.args) < 3 && request.args.n > 0", "request", {"args": None}),
        ("request.args.to.exists(x, x == 1)", "request", {"args": {"to": None}}),
        ("request.args.size() > 0", "request", {"args": None}),
        ("request.args.to[0] == 1", "request", {"args": {"to": None}}),
        ("request.args['a'].b.c == 1", "request", {"args": {"a": {"b": {"c": None}}}}),
        ("size(artifact) > 1", "artifact", None),
        ("'sub' in artifact", "artifact", None),
        ("artifact == {}", "artifact", None),
        ("artifact[request.args.k] == 1", "artifact", None),
        ("artifact['a\\'b'] == 1", "artifact", None),
        ("request.action == 'artifact' && artifact.sub == 'a'", "artifact", None),
        ("now > now", "now", None),
    ],
)
def test_reads_are_conservative(source: str, name: str, keys: dict[str, Any] | None) -> None:
    assert Condition(source).reads[name] == keys


def test_merge_reads() -> None:
    merged = merge_reads(
        [Condition("artifact.sub == 'a'"), Condition("artifact.gov.x == 1 && size(request) > 0")]
    )
    assert merged == {"artifact": {"sub": None, "gov": {"x": None}}, "request": None}
    assert merge_reads([Condition("artifact.a == 1"), Condition("size(artifact) == 0")]) == {
        "artifact": None
    }
    assert merge_reads(
        [Condition("artifact.gov.a == 1"), Condition("artifact.gov.b.c == 2 && artifact.x")]
    ) == {"artifact": {"gov": {"a": None, "b": {"c": None}}, "x": None}}
    assert merge_reads([Condition("artifact.gov.a == 1"), Condition("artifact.gov == {}")]) == {
        "artifact": {"gov": None}
    }


def test_unread_artifact_fields_are_not_converted() -> None:
    # A value the binding cannot take, in a field no condition reads, is never looked at.
    result = _eval("artifact.sub == 'agent-1'", artifact={"sub": "agent-1", "odd": {1, 2}})
    assert result.outcome is Outcome.PROCEED
    # ... down the path a condition reads: only request.args.amount is converted
    result = _eval("request.args.amount == 1", {"amount": 1, "odd": {1, 2}})
    assert result.outcome is Outcome.PROCEED


def test_many_rules_on_a_large_request_convert_and_copy_only_what_they_read() -> None:
    """A hundred rules each reading one argument of a request holding 500,000 more values
    cost what that one argument costs: each mention of ``request`` copies only what the
    policy reads of it (before, each copied the whole of ``args``: seconds per decision)."""
    rules = "".join(
        f"  - name: r{i}\n    match: {{action: '**'}}\n    when: 'request.args.amount == {i}'\n"
        "    effect: proceed\n"
        for i in range(100)
    )
    policy = parse_policy("version: 1\nrules:\n" + rules, source="t", targets=())
    request = {"action": "a", "resource": "r", "args": {"amount": 99, "pad": [0] * 500_000}}
    result = policy.evaluate(request=request, artifact={}, environment={}, now=0)
    assert (result.outcome, result.rule) == (Outcome.PROCEED, "r99")


PROJECTED = [
    "artifact.sub == 'a'",
    "has(artifact.sub)",
    "artifact['x-y'] == 1",
    "artifact.gov.ticket != ''",
    "artifact.scope.exists(s, s == 'a')",
    "artifact.sub == request.runtime || has(artifact.gov)",
    "size(artifact) > 1",
    "'sub' in artifact",
    "artifact == {}",
    "has(artifact.gov.ticket)",
    "artifact.gov.ticket.sub == 'a' || artifact.gov['x-y'] == 1",
    "artifact.gov.scope.exists(s, s == 'a')",
    "size(artifact.gov) > 1 && artifact.gov.sub == 'a'",
    "'sub' in artifact.gov || artifact.other.gov.ticket == 'b'",
    "artifact.gov.sub == artifact.sub.gov",
]
key_strategy = st.sampled_from(["sub", "gov", "x-y", "scope", "ticket", "other"])
leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "", "b"]))
json_strategy = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(key_strategy, children, max_size=3)
    ),
    max_leaves=12,
)


def _outcome(condition: Condition, inputs: Inputs) -> object:
    try:
        return condition.evaluate(inputs)
    except ConditionError as exc:
        return f"error: {exc}"


@settings(max_examples=200, deadline=None)
@given(artifact=st.dictionaries(key_strategy, json_strategy, max_size=5))
def test_projection_never_changes_a_result(artifact: dict[str, Any]) -> None:
    request: dict[str, Any] = {
        "action": "a",
        "resource": "r",
        "args": {},
        "runtime": "a",
        "parent": None,
    }
    for source in PROJECTED:
        condition = Condition(source)
        projected = Inputs(
            condition.reads, request=request, artifact=artifact, environment={}, now=0
        )
        whole = Inputs({}, request=request, artifact=artifact, environment={}, now=0)
        assert _outcome(condition, projected) == _outcome(condition, whole), source


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("request.exists(k, k == 'parent')", True),
        ("request.all(k, k != 'parent')", False),
        ("request.exists_one(k, k == 'action')", True),
        ("request.filter(k, k == 'args').size() == 1", True),
        ("request.size() == 3", True),
    ],
)
def test_macros_on_a_whole_input_see_the_whole_input(source: str, expected: bool) -> None:
    """A macro called on an input reads all of it, not a key named after the macro."""
    condition = Condition(source)
    assert condition.reads["request"] is None
    request = {"action": "a", "args": {}, "parent": "r"}
    inputs = Inputs(condition.reads, request=request, artifact={}, environment={}, now=0)
    assert condition.evaluate(inputs) is expected
