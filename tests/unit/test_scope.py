"""The scope algebra: constraints, grants, matching, and attenuation (``within``)."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execgate import scope
from execgate.scope import Constraint, Grant, check_scope, parse_grants

# --- Constraint.parse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (None, "non-empty object"),
        ([], "non-empty object"),
        ({}, "non-empty object"),
        ({"maximum": 5}, "unknown keys"),
        ({"max": "5"}, "finite number"),
        ({"max": True}, "finite number"),
        ({"min": float("nan")}, "finite number"),
        ({"min": float("inf")}, "finite number"),
        ({"max": None}, "finite number"),
        ({"enum": []}, "non-empty list"),
        ({"enum": "EUR"}, "non-empty list"),
        ({"pattern": 5}, "must be a string"),
        ({"prefix": ["a"]}, "must be a string"),
        ({"pattern": "("}, "not a regex"),
        ({"pattern": "a" * 257}, "longer than"),
        ({"pattern": r"(a)\1"}, "RE2 syntax"),  # backreference: a backtracking engine's
        ({"pattern": r"a(?=b)"}, "RE2 syntax"),  # lookahead: likewise
        # read differently by RE2 and Python: refused rather than guessed
        ({"pattern": "[0-9]{,3}"}, r"\{,n\}"),  # RE2: the literal text '{,3}'
        ({"pattern": "[[:alpha:]]+"}, "RE2 syntax"),  # RE2: a POSIX class; Python: a set
        # not first in the brackets, Python does not even warn: '[0-9', ':upper:' and ']'
        ({"pattern": "[0-9[:upper:]]{6}"}, "POSIX class"),
        ({"pattern": "[0-9[:^alnum:]]"}, "POSIX class"),
        ({"pattern": "[^a[=b=]]"}, "POSIX class"),
        ({"pattern": "a$\n"}, "before the end"),  # Python's $ also before a final newline
        ({"pattern": r"\C"}, "RE2 syntax"),  # RE2: any byte; Python: an error
        ({"pattern": r"\pL"}, "RE2 syntax"),  # RE2 only
        # negated classes are wider in RE2 (ASCII \s\d\w) than in Python (Unicode)
        ({"pattern": r"\S+"}, r"negated '\\s'"),  # RE2 lets a no-break space through
        ({"pattern": r"[^\s;|&]+"}, r"negated '\\s'"),  # and a vertical tab
        ({"pattern": r"\D+"}, r"negated '\\d'"),  # and Arabic-Indic digits
        ({"pattern": r"[a-z\W]"}, r"negated '\\w'"),
        ({"pattern": r"\bid\b"}, "word boundary"),
        ({"pattern": "(?i)[^i]+"}, r"\(\?i\)"),  # RE2 folds dotless i, Python does not
        ({"pattern": "a(?i:b)"}, r"\(\?i\)"),
        # what Python's re raises beside re.error: refused, never an untyped error
        ({"pattern": "a{4294967296}"}, "OverflowError"),
        ({"pattern": "(a)(?(\u0661)b|c)"}, "DeprecationWarning"),  # an Arabic-Indic digit
    ],
)
def test_constraint_parse_refuses(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Constraint.parse("amount", obj)


def test_constraint_parse_round_trips_to_json() -> None:
    obj = {"max": 5, "min": -1.5, "enum": [1, "a", None], "pattern": "[a-z]+", "prefix": "ab"}
    c = Constraint.parse("x", obj)
    assert c.to_json() == obj
    assert Constraint.parse("x", c.to_json()) == c


def test_constraint_accepts_huge_integer_bounds() -> None:
    c = Constraint.parse("amount", {"max": 10**400, "min": -(10**400)})
    assert c.violation(10**399) is None
    assert c.violation(2.5) is None
    assert c.violation(10**401) == f"exceeds max {10**400}"
    assert c.violation(-(10**401)) is not None


# --- Constraint.violation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "value", "problem"),
    [
        ({"max": 10}, 10, None),
        ({"max": 10}, 10.0, None),
        ({"max": 10}, 10.000001, "exceeds max"),
        ({"max": 10}, -(10**30), None),
        ({"min": 0}, 0, None),
        ({"min": 0}, -0.0, None),
        ({"min": 0}, -1e-9, "below min"),
        ({"max": 10}, True, "not a number"),
        ({"max": 10}, False, "not a number"),
        ({"min": 0}, "5", "not a number"),
        ({"min": 0}, None, "not a number"),
        ({"min": 0}, [1], "not a number"),
        ({"max": 10}, float("nan"), "not a number"),
        ({"min": 0}, float("inf"), "not a number"),
        ({"enum": [1, 2]}, 1.0, None),
        ({"enum": [1, 2]}, True, "not one of"),
        ({"enum": [True]}, 1, "not one of"),
        ({"enum": [True]}, True, None),
        ({"enum": [None]}, None, None),
        ({"enum": ["a"]}, "A", "not one of"),
        ({"enum": [[1, 2]]}, [1, 2], None),
        ({"enum": [[1, 2]]}, [2, 1], "not one of"),
        ({"enum": [[1]]}, [True], "not one of"),
        ({"enum": [{"a": 1}]}, {"a": 1.0}, None),
        ({"enum": [{"a": 1}]}, {"a": 1, "b": 2}, "not one of"),
        ({"enum": ["1"]}, 1, "not one of"),
        ({"pattern": "[a-z]+"}, "abc", None),
        ({"pattern": "[a-z]+"}, "abc1", "does not match"),  # a full match, not a search
        ({"pattern": "[a-z]+"}, "1abc", "does not match"),
        ({"pattern": "a|b"}, "ab", "does not match"),
        ({"pattern": "[a-z]+"}, 5, "not a string"),
        ({"pattern": r"[0-9]+"}, "\u0661\u0662", "does not match"),  # Arabic-Indic digits
        ({"pattern": r"\d+"}, "\u0661\u0662", "does not match"),  # RE2's \d is ASCII
        ({"pattern": r"\d+"}, "12", None),
        ({"pattern": "é+"}, "éé", None),  # non-ASCII text matches as text, not as bytes
        ({"pattern": "[0-9]{0,3}"}, "12", None),
        ({"pattern": "[0-9]{0,3}"}, "5{,3}", "does not match"),
        ({"pattern": r"\$[0-9]+"}, "$12", None),  # an escaped '$' is a plain character
        ({"pattern": "[$]x"}, "$x", None),  # and so is one in a class
        ({"pattern": "[]$]x"}, "$x", None),  # a ']' first in a class is a literal
        ({"pattern": "[^]$]x"}, "ax", None),  # also after '^'
        ({"pattern": "[^]$]x"}, "$x", "does not match"),
        ({"pattern": "^ab$"}, "ab", None),  # anchors at the ends mean the same to both
        ({"prefix": "/tmp/"}, "/tmp/x", None),
        ({"prefix": "/tmp/"}, "/tmp", "does not start with"),
        ({"prefix": ""}, "", None),
        ({"prefix": "a"}, None, "not a string"),
        ({"max": 5, "enum": [1, 9]}, 9, "exceeds max"),
        ({"max": 5, "enum": [1, 9]}, 1, None),
    ],
)
def test_constraint_violation(bounds: dict[str, Any], value: object, problem: str | None) -> None:
    found = Constraint.parse("x", bounds).violation(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --- Constraint.within ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        ({"max": 5}, {"max": 10}, True),
        ({"max": 10}, {"max": 10}, True),
        ({"max": 11}, {"max": 10}, False),
        ({"min": 1}, {"max": 10}, False),  # no max at all is looser
        ({"min": 1}, {"min": 0}, True),
        ({"min": -1}, {"min": 0}, False),
        ({"enum": [1]}, {"max": 10}, False),
        ({"enum": [1, 2]}, {"enum": [2, 1, 3]}, True),
        ({"enum": [1.0]}, {"enum": [1]}, True),
        ({"enum": [True]}, {"enum": [1]}, False),
        ({"enum": [1, 4]}, {"enum": [1, 2]}, False),
        ({"max": 1}, {"enum": [1]}, False),
        ({"pattern": "a+"}, {"pattern": "a+"}, True),
        ({"pattern": "a"}, {"pattern": "a+"}, False),  # equal patterns only: sound, not complete
        ({"prefix": "/tmp/x"}, {"prefix": "/tmp/"}, True),
        ({"prefix": "/tm"}, {"prefix": "/tmp/"}, False),
        ({"enum": ["/tmp/a"]}, {"prefix": "/tmp/"}, False),
        ({"max": 5, "min": 1, "enum": [2]}, {"max": 5}, True),
    ],
)
def test_constraint_within(inner: dict[str, Any], outer: dict[str, Any], expected: bool) -> None:
    assert Constraint.parse("x", inner).within(Constraint.parse("x", outer)) is expected


# --- grants ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("payments.*", "must be an object"),
        ({"action": "a", "resource": "r", "extra": 1}, "unknown keys"),
        ({"resource": "r"}, "glob"),
        ({"action": "a"}, "glob"),
        ({"action": "a***", "resource": "r"}, "glob"),
        ({"action": "a", "resource": "r", "constraints": []}, "constraints must be an object"),
        ({"action": "a", "resource": "r", "constraints": {"n": {}}}, "non-empty object"),
    ],
)
def test_grant_parse_refuses(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Grant.parse(obj)


def test_grant_round_trips_to_json() -> None:
    obj = {"action": "a.*", "resource": "r:**", "constraints": {"n": {"max": 3}}}
    assert Grant.parse(obj).to_json() == obj
    assert Grant.parse({"action": "a", "resource": "r"}).to_json() == {
        "action": "a",
        "resource": "r",
    }


@pytest.mark.parametrize("obj", [None, [], {"action": "a", "resource": "r"}, "a"])
def test_parse_grants_needs_a_non_empty_list(obj: object) -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        parse_grants(obj)


def test_parse_grants_caps_the_count() -> None:
    grant = {"action": "a", "resource": "r"}
    assert len(parse_grants([grant] * 64)) == 64
    with pytest.raises(ValueError, match="at most 64"):
        parse_grants([grant] * 65)


def test_grant_violation_names_the_argument() -> None:
    g = Grant.parse({"action": "a", "resource": "r", "constraints": {"amount": {"max": 5}}})
    assert g.violation({"amount": 5}) is None
    assert g.violation({"amount": 6}) == "argument 'amount' exceeds max 5"
    assert g.violation({}) == "argument 'amount' is required by the grant but missing"
    assert g.violation({"Amount": 1}) is not None


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        (
            {"action": "p.refund", "resource": "acct:1"},
            {"action": "p.*", "resource": "acct:**"},
            True,
        ),
        ({"action": "p.**", "resource": "acct:1"}, {"action": "p.*", "resource": "acct:**"}, False),
        ({"action": "p.a", "resource": "bank:1"}, {"action": "p.*", "resource": "acct:**"}, False),
        (
            {"action": "p.a", "resource": "acct:1"},
            {"action": "p.*", "resource": "acct:**", "constraints": {"n": {"max": 5}}},
            False,
        ),
        (
            {
                "action": "p.a",
                "resource": "acct:1",
                "constraints": {"n": {"max": 3}, "m": {"min": 0}},
            },
            {"action": "p.*", "resource": "acct:**", "constraints": {"n": {"max": 5}}},
            True,
        ),
        (
            {"action": "p.a", "resource": "acct:1", "constraints": {"m": {"max": 3}}},
            {"action": "p.*", "resource": "acct:**", "constraints": {"n": {"max": 5}}},
            False,
        ),
    ],
)
def test_grant_within(inner: dict[str, Any], outer: dict[str, Any], expected: bool) -> None:
    assert Grant.parse(inner).within(Grant.parse(outer)) is expected


def test_check_scope_reports_the_closest_reason() -> None:
    grants = parse_grants(
        [
            {"action": "p.*", "resource": "acct:**", "constraints": {"n": {"max": 5}}},
            {"action": "p.big", "resource": "acct:vip", "constraints": {"n": {"max": 500}}},
        ]
    )
    assert check_scope(grants, "p.big", "acct:vip", {"n": 400}) is None
    miss = check_scope(grants, "p.big", "acct:1", {"n": 400})
    assert miss is not None
    assert miss.code == "scope.constraint_violated"
    assert "exceeds max 5" in miss.detail
    miss = check_scope(grants, "q.big", "acct:1", {"n": 1})
    assert miss is not None
    assert miss.code == "scope.not_granted"


# --- attenuation never widens: property -----------------------------------------------

Draw = Callable[[st.SearchStrategy[Any]], Any]

_GLOB_TOKENS = ["a", "b", ".", ":", "*", "**"]
_VALUES: list[Any] = [-3, -1, 0, 1, 1.0, 1.5, 2, 3, True, False, None, "", "a", "ab", "abb", "b"]
_PATTERNS = ["a+", "[ab]*", "a|b", "ab*", ".*"]
_PREFIXES = ["", "a", "ab", "b"]

globs = (
    st.lists(st.sampled_from(_GLOB_TOKENS), min_size=1, max_size=4)
    .map("".join)
    .filter(lambda p: "***" not in p)
)


@st.composite
def constraints(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["max"] = draw(st.integers(-2, 3) | st.sampled_from([0.5, 2.5]))
    if draw(st.booleans()):
        out["min"] = draw(st.integers(-2, 3))
    if draw(st.booleans()):
        out["enum"] = draw(st.lists(st.sampled_from(_VALUES), min_size=1, max_size=4))
    if draw(st.booleans()):
        out["pattern"] = draw(st.sampled_from(_PATTERNS))
    if draw(st.booleans()):
        out["prefix"] = draw(st.sampled_from(_PREFIXES))
    return out or {"max": draw(st.integers(-2, 3))}


@st.composite
def grants(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(["n", "s"]), unique=True, max_size=2))
    return {
        "action": draw(globs),
        "resource": draw(globs),
        "constraints": {name: draw(constraints()) for name in names},
    }


def _tighten(draw: Draw, grant: dict[str, Any]) -> dict[str, Any]:
    """A child of ``grant`` that is often, but not always, within it."""

    def narrower(pattern: str) -> str:
        choice = draw(st.sampled_from(["same", "star", "literal", "random"]))
        if choice == "star":
            return pattern.replace("**", "*")
        if choice == "literal":
            return pattern.replace("**", "a").replace("*", "b")
        if choice == "random":
            fresh: str = draw(globs)
            return fresh
        return pattern

    child_constraints: dict[str, Any] = {}
    for name, bounds in grant["constraints"].items():
        tighter = dict(bounds)
        if "max" in tighter and draw(st.booleans()):
            tighter["max"] = tighter["max"] - draw(st.integers(-1, 2))
        if "min" in tighter and draw(st.booleans()):
            tighter["min"] = tighter["min"] + draw(st.integers(-1, 2))
        if "enum" in tighter and draw(st.booleans()):
            tighter["enum"] = tighter["enum"][: draw(st.integers(1, len(tighter["enum"])))]
        if "prefix" in tighter and draw(st.booleans()):
            tighter["prefix"] = tighter["prefix"] + draw(st.sampled_from(["", "a", "b"]))
        child_constraints[name] = tighter
    if draw(st.booleans()):
        child_constraints.setdefault("s", draw(constraints()))
    return {
        "action": narrower(grant["action"]),
        "resource": narrower(grant["resource"]),
        "constraints": child_constraints,
    }


def _instance(draw: Draw, pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(draw(st.text("ab.:", max_size=3)))
            i += 2
        elif pattern[i] == "*":
            out.append(draw(st.text("ab", max_size=2)))
            i += 1
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_a_child_grant_never_admits_what_its_parent_refuses(data: st.DataObject) -> None:
    parent_obj = data.draw(grants())
    child_obj = _tighten(data.draw, parent_obj)
    parent, child = Grant.parse(parent_obj), Grant.parse(child_obj)
    if not child.within(parent):
        return
    for _ in range(6):
        action = _instance(data.draw, child.action)
        resource = _instance(data.draw, child.resource)
        args = {
            name: data.draw(st.sampled_from(_VALUES))
            for name in ("n", "s")
            if data.draw(st.integers(0, 9)) > 0
        }
        if child.matches(action, resource) and child.violation(args) is None:
            assert parent.matches(action, resource), (parent_obj, child_obj, action, resource)
            assert parent.violation(args) is None, (parent_obj, child_obj, args)


@settings(max_examples=300, deadline=None)
@given(outer=constraints(), inner=constraints(), value=st.sampled_from(_VALUES))
def test_a_constraint_within_another_admits_nothing_more(
    outer: dict[str, Any], inner: dict[str, Any], value: object
) -> None:
    o, i = Constraint.parse("x", outer), Constraint.parse("x", inner)
    if i.within(o) and i.violation(value) is None:
        assert o.violation(value) is None, (outer, inner, value)


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("(a+)+$", "a" * 16_000 + "!", False),  # exponential for a backtracking engine
        ("(a|aa)+", "a" * 16_000 + "!", False),
        ("(.*a){20}", "a" * 16_000, True),
        ("(.*a){20}", "a" * 16_000 + "b", False),
    ],
)
def test_a_pattern_cannot_stall_the_gateway(pattern: str, value: str, matches: bool) -> None:
    """A grant's signer picks the pattern and the requester the argument; RE2 answers
    in time linear in the argument (these would run for ages under ``re``)."""
    violation = Constraint.parse("path", {"pattern": pattern}).violation(value)
    assert (violation is None) is matches


# One scope check matches each pattern against each argument once, and bounds what it
# matches: RE2 is linear, but some patterns cost about half a microsecond a character.
SLOW = "(?:a|b)*a(?:a|b){24}c"  # defeats RE2's fast path: no timing asserted here


def test_a_pattern_is_matched_against_an_argument_of_at_most_16_kib() -> None:
    c = Constraint.parse("memo", {"pattern": "[ab]*"})
    assert c.violation("ab" * 8192) is None  # 16,384 characters: matched
    assert c.violation("ab" * 8192 + "a") == (
        "is longer than 16384 characters, the most a pattern is matched against"
    )
    assert Constraint.parse("memo", {"prefix": "ab"}).violation("ab" * 100_000) is None


def _grant(**patterns: str) -> Grant:
    return Grant.parse(
        {
            "action": "a",
            "resource": "r",
            "constraints": {k: {"pattern": v} for k, v in patterns.items()},
        }
    )


CUT = "is past what one scope check may match (32768 characters and 64 patterns in all)"


def test_the_patterns_of_one_check_match_at_most_32_kib_in_all() -> None:
    three = _grant(x="a*", y="a*", z="a*")
    x, y = "a" * 16384, "a" * 16383
    miss = check_scope([three], "a", "r", {"x": x, "y": y, "z": "aa"})
    assert miss is not None
    assert miss.code == "scope.constraint_violated"
    assert miss.detail == f"argument 'z' {CUT}"
    assert check_scope([three], "a", "r", {"x": x, "y": y, "z": "a"}) is None  # 32,768
    assert check_scope([three], "a", "r", {"x": x, "y": x, "z": x}) is None  # one value, once


def test_a_check_cut_short_by_its_limits_says_so() -> None:
    """Two grants that refuse the argument spend the budget the third would admit it
    with: the deny names the limit, not the first grant's mismatch."""
    refusing, admitting = _grant(x="b*"), _grant(x="a*")
    x = "a" * 12000
    assert check_scope([refusing, admitting], "a", "r", {"x": x}) is None
    miss = check_scope([refusing, _grant(x="c*"), admitting], "a", "r", {"x": x})
    assert miss is not None
    assert miss.detail == f"argument 'x' {CUT}"
    assert check_scope([admitting], "a", "r", {"x": x}) is None  # each check has its own
    miss = check_scope([refusing, _grant(x="c*")], "a", "r", {"x": x})
    assert miss is not None
    assert miss.detail == "argument 'x' does not match the pattern"  # no limit reached


def test_a_check_matches_at_most_64_distinct_patterns() -> None:
    """Each may be compiled anew (a child may carry more than the cache holds)."""
    many = [_grant(x=f"a*{n}?") for n in range(64)]
    miss = check_scope([*many, _grant(x="a*")], "a", "r", {"x": "b"})
    assert miss is not None
    assert miss.detail == f"argument 'x' {CUT}"
    assert check_scope([*many[:63], _grant(x="b")], "a", "r", {"x": "b"}) is None
    seen = check_scope([*many, _grant(x="a*0?")], "a", "r", {"x": "b"})  # many[0]'s pattern
    assert seen is not None
    assert seen.detail == "argument 'x' does not match the pattern"  # answered, not cut


def test_equal_values_are_one_value_however_a_mapping_makes_them() -> None:
    """A mapping that builds its values on access (the public check_scope takes any):
    each value is matched by what it is, never by where it lies in memory."""

    class Decoding(Mapping[str, Any]):
        def __init__(self, raw: dict[str, bytes]) -> None:
            self._raw = raw

        def __getitem__(self, key: str) -> str:
            return self._raw[key].decode()

        def __iter__(self) -> Iterator[str]:
            return iter(self._raw)

        def __len__(self) -> int:
            return len(self._raw)

    grant = _grant(to="acct-[0-9]+", **{"from": "acct-[0-9]+"})
    args = Decoding({"to": b"acct-12", "from": b"/etc/passwd"})
    miss = check_scope([grant], "a", "r", args)
    assert miss is not None
    assert miss.detail == "argument 'from' does not match the pattern"


def test_each_glob_meets_the_action_and_resource_once_per_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from execgate import _glob, scope

    calls: list[str] = []
    real = _glob.glob_match

    def counting(glob: str, value: str) -> bool:
        calls.append(glob)
        return real(glob, value)

    monkeypatch.setattr(scope, "glob_match", counting)
    grants = parse_grants([{"action": "**x*.", "resource": "**"}] * 64)
    assert check_scope(grants, "x" * 1024, "r", {}) is not None
    assert calls == ["**x*."]


def test_each_pattern_meets_each_argument_once_per_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime may give its own child 64 copies of one slow grant: one match, not 64."""
    from execgate import scope

    calls: list[str] = []
    compiled = scope._regex

    class Counting:
        def __init__(self, pattern: str) -> None:
            self.regex = compiled(pattern)

        def fullmatch(self, value: str) -> object:
            calls.append(value[:4])
            return self.regex.fullmatch(value)

    monkeypatch.setattr(scope, "_regex", Counting)
    memo = "ab" * 5000
    grants = parse_grants(
        [{"action": "a", "resource": "r", "constraints": {"memo": {"pattern": SLOW}}}] * 64
    )
    miss = check_scope(grants, "a", "r", {"memo": memo})
    assert miss is not None
    assert miss.detail == "argument 'memo' does not match the pattern"
    assert calls == ["abab"]
    assert check_scope(grants, "a", "r", {"memo": memo}) is not None
    assert len(calls) == 2  # a new check matches again: nothing outlives one check


def test_the_globs_of_one_check_match_at_most_16_kib_in_all() -> None:
    """Distinct globs cost up to half a microsecond a character each (a child may carry
    64 grants): past 16,384 characters the rest are not matched, and the deny says so,
    even where a grant not matched would have admitted the request."""
    action, resource = "a" * 1024, "r"
    many = [{"action": f"b{n}*", "resource": "**"} for n in range(16)]
    admitting = {"action": "a*", "resource": "**"}
    miss = check_scope(parse_grants([*many, admitting]), action, resource, {})
    assert miss is not None
    assert miss.code == "scope.not_granted"
    assert miss.detail.endswith(
        "past what one scope check may match (16384 characters of globs in all)"
    )
    fits = parse_grants([*many[:14], admitting])  # 15 actions and one resource: 15 KiB
    assert check_scope(fits, action, resource, {}) is None
    same = parse_grants([many[0]] * 63 + [admitting])  # one glob, one value: matched once
    assert check_scope(same, action, resource, {}) is None


@pytest.mark.parametrize("pattern", ["x[[:alpha:]]", "[a--b]x", "[a&&b]x"])
def test_a_pattern_python_warns_about_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="not a portable regex: FutureWarning"):
        scope._regex(pattern)


def test_patterns_checked_in_threads_at_once_leave_the_warning_filters_as_they_were() -> None:
    """catch_warnings saves and restores the process's filters: checks interleaved in
    threads left "turn every warning into an error" in place for good, and let a
    check's warning escape (to stderr, outside the JSON log) unrefused."""
    start = threading.Barrier(8)

    def check(n: int) -> None:
        start.wait()
        for k in range(4000):
            with contextlib.suppress(ValueError):
                scope._regex(f"t{n}-{k}[[:alpha:]]")

    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        threads = [threading.Thread(target=check, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = list(warnings.filters)
    assert after == before
    assert [str(w.message) for w in escaped] == []


# -- what reading patterns may cost -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "size"),
    [
        ("abc", 3),
        (".{0,1000}", 1000),
        ("[a-z0-9._%+-]{1,64}@[a-z0-9.-]{1,255}\\.[a-z]{2,63}", 64 * 7 + 1 + 255 * 4 + 1 + 63),
        ("(?:.{0,30}){0,30}", 900),  # nested repetitions multiply
        ("a{3,}b*c+", 5),  # unbounded: the least count, at least one
        ("(?:ab|cd){0,10}", 10 * (1 + 2 + 2)),  # a branch, and each way
        ("[abc]{0,10}", 30),  # a class: as many as it lists
        ("[^a-z]", 1),
    ],
)
def test_a_patterns_size_is_what_re2_compiles_it_into(pattern: str, size: int) -> None:
    assert scope._program_size(pattern) == size


def _counting_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    compiled: list[str] = []
    real = scope._regex

    def counting(pattern: str) -> Any:
        compiled.append(pattern)
        return real(pattern)

    monkeypatch.setattr(scope, "_regex", counting)
    return compiled


def test_a_pattern_that_repeats_too_much_is_refused_before_it_is_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RE2 compiles '.{0,1000}' six times over in tens of milliseconds, on the event
    loop; such a pattern is refused by its size, and RE2 never sees it."""
    compiled = _counting_compiles(monkeypatch)
    Constraint.parse("a", {"pattern": ".{0,1000}" * 4})
    with pytest.raises(ValueError, match="expands to 5000 characters, past 4000"):
        Constraint.parse("a", {"pattern": ".{0,1000}" * 5})
    with pytest.raises(ValueError, match="expands to 6400 characters, past 4000"):
        Constraint.parse("a", {"pattern": "(?:.{0,80}){0,80}"})
    many = "".join(chr(c) for c in range(0x430, 0x430 + 40))
    with pytest.raises(ValueError, match="expands to 8000 characters, past 4000"):
        Constraint.parse("a", {"pattern": f"[{many}]{{200}}"})  # 40 a copy
    assert compiled == [".{0,1000}" * 4]


def _scope_of(patterns: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "action": "a.b",
            "resource": "r",
            "constraints": {f"x{n}": {"pattern": p} for n, p in enumerate(patterns)},
        }
    ]


def test_a_scopes_patterns_have_one_budget_checked_before_any_is_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delegating runtime may put 64 grants of constraints in its child: its patterns
    expand to 8000 characters in all (160 patterns of six '.{0,1000}' each took 8-14 s
    to read). Past that, nothing is compiled; a pattern given twice counts once, and
    so does one the chain's other links have (``compiled``)."""
    compiled = _counting_compiles(monkeypatch)
    four = [f".{{0,1000}}.{{0,{1000 - n}}}" for n in range(4)]  # 7994
    assert len(parse_grants(_scope_of(four + four[:1]))[0].constraints) == 5
    assert parse_grants(_scope_of(four[:1]), compiled=four[1:])
    compiled.clear()
    five = [f"[a-z]{{0,1000}}[a-z]{{0,{800 - n}}}" for n in range(5)]
    with pytest.raises(ValueError, match="expand to 8990 characters in all, past 8000"):
        parse_grants(_scope_of(five))
    with pytest.raises(ValueError, match="expand to 9794 characters in all, past 8000"):
        parse_grants(_scope_of(four[:1]), compiled=four[1:] + five[:1])
    heavy = [f".{{0,9{n:02d}}}" + ".{0,1000}" * 3 for n in range(60)]
    with pytest.raises(ValueError, match="past 8000"):
        parse_grants(_scope_of(heavy))
    many = [f"a{{0,{n}}}" for n in range(65)]  # 2080 in all, but 65 of them
    with pytest.raises(ValueError, match="hold 65 distinct patterns, past 64"):
        parse_grants(_scope_of(many))
    assert compiled == []
