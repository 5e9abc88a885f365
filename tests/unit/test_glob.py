"""Segment globs: matching, validation, and the soundness of ``glob_covers``."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execgate import _glob
from execgate._glob import glob_covers, glob_match, validate_glob


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("payments.*", "payments.refund", True),
        ("payments.*", "payments.", True),
        ("payments.*", "payments.refund.partial", False),
        ("payments.*", "payments", False),
        ("payments.**", "payments.refund.partial", True),
        ("files:/tmp/**", "files:/tmp/a/b.txt", True),
        ("files:/tmp/**", "files:/tmp/", True),
        ("files:/tmp/**", "files:/etc/passwd", False),
        ("files:/tmp/**", "files:/tmp", False),
        ("acct:*", "acct:123", True),
        ("acct:*", "acct:1/2", False),
        ("acct:*", "acct:1:2", False),
        ("*", "", True),
        ("**", "", True),
        ("**", "anything.at:all/", True),
        ("a*b", "ab", True),
        ("a*b", "axxb", True),
        ("a*b", "ax.b", False),
        ("a.b", "a.b", True),
        ("a.b", "axb", False),  # '.' is a literal separator, not a regex dot
        ("a+b", "a+b", True),
        ("a+b", "aab", False),
        ("[ab]", "[ab]", True),
        ("[ab]", "a", False),
        ("a?", "a?", True),
        ("a?", "ab", False),
        ("x", "X", False),
        ("payments.refund", "payments.refund\n", False),
        ("*", "a\nb", True),
        # A path glob (it starts with '/'): only '/' separates its segments...
        ("/users/*", "/users/42.json", True),
        ("/users/*", "/users/bob@example.com", True),
        ("/users/*", "/users/a:b", True),
        ("/users/*", "/users/42/x", False),
        ("/api/*/x", "/api/v1.2/x", True),
        ("/api/*.json", "/api/a.b.json", True),
        # ...and a trailing '/**' also matches the path without it.
        ("/api/admin/**", "/api/admin", True),
        ("/api/admin/**", "/api/admin/", True),
        ("/api/admin/**", "/api/admin/x/y", True),
        ("/api/admin/**", "/api/administrator", False),
        ("/api/admin/**", "/api", False),
        ("/a/**/**", "/a", True),
        ("/**", "", False),
        ("/**", "/", True),
        ("/a**", "/a", True),
        ("/api/**/x", "/api/x", False),  # only a trailing '/**' is optional
        # Any other pattern keeps all three separators, wherever a '/' is.
        ("files:/tmp/*", "files:/tmp/a.txt", False),
        ("*/x", "/x", True),
        ("*/users/*", "/users/42.json", False),
    ],
)
def test_glob_match(pattern: str, value: str, expected: bool) -> None:
    assert glob_match(pattern, value) is expected


@pytest.mark.parametrize(
    "pattern", ["", None, 7, ["a"], "a***", "***", "x" * 513, "a\x00", "pay\x01", "a\x7f", "a\nb"]
)
def test_validate_glob_refuses(pattern: object) -> None:
    with pytest.raises(ValueError, match="glob"):
        validate_glob(pattern)


def test_validate_glob_returns_the_pattern() -> None:
    assert validate_glob("x" * 512) == "x" * 512
    assert validate_glob("a.**") == "a.**"


def test_glob_match_refuses_an_invalid_pattern() -> None:
    with pytest.raises(ValueError, match="glob"):
        glob_match("***", "a")


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("payments.*", "payments.refund", True),
        ("payments.*", "payments.*", True),
        ("payments.*", "payments.**", False),
        ("payments.**", "payments.*", True),
        ("payments.**", "payments.a.*.b", True),
        ("**", "anything:*/**", True),
        ("acct:**", "acct:*", True),
        ("acct:*", "acct:**", False),
        ("acct:*", "acct:1/2", False),
        ("a*", "a*b", True),
        ("a*", "a.b", False),
        ("*", "a.b", False),
        ("*", "**", False),
        ("a.*", "a*", False),
        ("a*b", "a*", False),
        ("payments.refund", "payments.*", False),
        ("payments.refund", "payments.refund", True),
        ("/users/*", "/users/*.json", True),
        ("/users/**", "/users/*", True),
        ("/users/*", "/users/**", False),
        ("/api/**", "/api/admin/**", True),
        ("/api/admin/**", "/api/admin", True),
        ("/api/admin/**", "/api/admin/**", True),
        ("/api/admin/*", "/api/admin/**", False),  # the inner one holds /api/admin/x/y
        ("/api/*/**", "/api/admin/**", True),
        ("/api/*", "/api/admin/**", False),  # /api/admin/x
        ("/api/admin/**", "/api/*", False),
        # A '*' outside a path glob never holds '.' or ':', one inside may.
        ("**/*", "/users/*", False),
        ("*/users/*", "/users/*", False),
        ("/users/*", "*/users/*", False),  # the inner one holds x/users/a
        ("**", "/users/*", True),
        ("/**", "/users/*", True),
    ],
)
def test_glob_covers_examples(outer: str, inner: str, expected: bool) -> None:
    assert glob_covers(outer, inner) is expected


def test_glob_covers_validates_both_sides() -> None:
    with pytest.raises(ValueError, match="control"):
        glob_covers("pay\x01", "pay*")  # the sentinel of a wildcard may not be smuggled in
    with pytest.raises(ValueError, match="control"):
        glob_covers("**", "a\x00")
    with pytest.raises(ValueError, match="glob"):
        glob_covers("", "a")
    with pytest.raises(ValueError, match="glob"):
        glob_covers("a", "a***")


# --- soundness by property ------------------------------------------------------------

_TOKENS = ["a", "b", ".", ":", "/", "*", "**"]
_SEGMENT_CHARS = "abx"
_PATH_SEGMENT_CHARS = "abx.:"  # a path glob's '*' may hold '.' and ':'
_ANY_CHARS = "abx.:/"


def _valid(pattern: str) -> bool:
    return bool(pattern) and "***" not in pattern


# About half of them path globs: starting with '/', and often ending in '/**'.
patterns = (
    st.tuples(
        st.sampled_from(["", "/"]),
        st.lists(st.sampled_from(_TOKENS), min_size=0, max_size=6).map("".join),
        st.sampled_from(["", "", "/**"]),
    )
    .map("".join)
    .filter(_valid)
)


def _wildcards(pattern: str) -> list[str]:
    """The pattern split into literal characters, '*' and '**', as the matcher reads it."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append("**")
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return out


@st.composite
def instances(draw: st.DrawFn, pattern: str) -> str:
    """A value ``pattern`` matches: each wildcard replaced by text it may absorb (by the
    module's rules, written out again here: a path glob's '*' may hold '.' and ':', and
    its trailing '/**' may be left out)."""
    path = pattern.startswith("/")
    if path and pattern.endswith("/**") and len(pattern) > 3 and draw(st.booleans()):
        pattern = pattern[:-3]
    parts = []
    for token in _wildcards(pattern):
        if token == "**":
            parts.append(draw(st.text(_ANY_CHARS, max_size=4)))
        elif token == "*":
            parts.append(draw(st.text(_PATH_SEGMENT_CHARS if path else _SEGMENT_CHARS, max_size=3)))
        else:
            parts.append(token)
    return "".join(parts)


def _reference(pattern: str, value: str) -> bool:
    """The rules of the module docstring, read as plainly as possible (exponential: for
    short values only)."""
    path = pattern.startswith("/")
    if path and pattern.endswith("/**") and len(pattern) > 3 and _reference(pattern[:-3], value):
        return True
    separators = "/" if path else ".:/"
    tokens = _wildcards(pattern)

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(tokens):
            return j == len(value)
        token = tokens[i]
        if token == "**":
            return any(match(i + 1, k) for k in range(j, len(value) + 1))
        if token == "*":
            k = j
            while not match(i + 1, k):
                if k == len(value) or value[k] in separators:
                    return False
                k += 1
            return True
        return j < len(value) and value[j] == token and match(i + 1, j + 1)

    return match(0, 0)


@settings(max_examples=1500, deadline=None)
@given(pattern=patterns, data=st.data())
def test_glob_match_follows_the_rules(pattern: str, data: st.DataObject) -> None:
    near = st.builds(lambda v, tail: v + tail, instances(pattern), st.text(_ANY_CHARS, max_size=2))
    value = data.draw(st.one_of(st.text(_ANY_CHARS, max_size=8), instances(pattern), near))
    assert glob_match(pattern, value) is _reference(pattern, value)


@settings(max_examples=400, deadline=None)
@given(outer=patterns, inner=patterns, data=st.data())
def test_glob_covers_is_sound(outer: str, inner: str, data: st.DataObject) -> None:
    """Whenever it says True, every value the inner glob matches, the outer one matches."""
    covers = glob_covers(outer, inner)
    for _ in range(8):
        value = data.draw(instances(inner))
        assert glob_match(inner, value)
        if covers:
            assert glob_match(outer, value), (outer, inner, value)


@settings(max_examples=300, deadline=None)
@given(outer=patterns, inner=patterns, value=st.text(_ANY_CHARS, max_size=8))
def test_glob_covers_is_sound_on_random_values(outer: str, inner: str, value: str) -> None:
    if glob_covers(outer, inner) and glob_match(inner, value):
        assert glob_match(outer, value)


@settings(max_examples=200, deadline=None)
@given(pattern=patterns)
def test_glob_covers_itself_and_everything_is_covered_by_double_star(pattern: str) -> None:
    assert glob_covers(pattern, pattern)
    assert glob_covers("**", pattern)


@settings(max_examples=200, deadline=None)
@given(
    outer=st.text("ab.:/", min_size=1, max_size=5), inner=st.text("ab.:/", min_size=1, max_size=5)
)
def test_literal_globs_cover_exactly_themselves(outer: str, inner: str) -> None:
    assert glob_covers(outer, inner) is (outer == inner)


# --- the two matchers agree; the automaton takes what would backtrack -------------------

_PROBE_CHARS = _ANY_CHARS + "\x00\x01\x02"  # glob_covers' probe strings hold the sentinels


@settings(max_examples=600, deadline=None)
@given(
    pattern=patterns,
    value=st.text(_PROBE_CHARS, max_size=10),
    probe=st.booleans(),
)
def test_the_automaton_and_the_regex_agree(pattern: str, value: str, probe: bool) -> None:
    """Every pattern, either way: the automaton is held to the regex it stands in for."""
    if not probe:
        value = value.replace("\x00", "").replace("\x01", "").replace("\x02", "")
    regex = _glob._Regex(pattern, probe=probe).fullmatch(value)
    assert _glob._Automaton(pattern, probe=probe).fullmatch(value) is regex


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        ("payments.*", _glob._Regex),  # '*' ends at the next separator or the end
        ("acct:**", _glob._Regex),  # the one open-ended wildcard ends the pattern
        ("acct:*:**", _glob._Regex),
        ("/users/*", _glob._Regex),
        ("files:/tmp/**/*.log", _glob._Automaton),  # something after the '**'
        ("a*b", _glob._Automaton),
        ("*a*b", _glob._Automaton),
        ("**a**b", _glob._Automaton),
        ("**/secrets/**", _glob._Automaton),
        ("**.refund", _glob._Automaton),
        # every end of the '**' tried against all that follows: value times pattern
        # (2 ms and 5 ms on 1,024 characters for the regex)
        ("**x*.", _glob._Automaton),
        ("**" + ".*" * 200, _glob._Automaton),
    ],
)
def test_patterns_whose_wildcards_can_overlap_take_the_automaton(
    pattern: str, kind: type[object]
) -> None:
    assert type(_glob._matcher(pattern)) is kind


@pytest.mark.parametrize(
    ("pattern", "value", "matching"),
    [
        ("*a*a*a*b", "a" * 1000, "a" * 999 + "b"),  # backtracking: minutes on one worker
        ("**a**a**b", "a" * 1000, "a" * 999 + "b"),
        ("**:**:**:x", ":" * 1000, ":" * 999 + "x"),
        ("*-*-*.exec", "-" * 1000, "-" * 995 + ".exec"),
        ("**x*.", "x" * 1000, "x" * 999 + "."),
        ("**" + ".*" * 200 + ":", "." * 1000, "." * 999 + ":"),
    ],
)
def test_adversarial_values_are_matched_in_one_pass(
    pattern: str, value: str, matching: str
) -> None:
    assert glob_match(pattern, value) is False
    assert glob_match(pattern, matching) is True


def test_a_run_of_trailing_double_stars_is_one_bare_path_and_one_double_star() -> None:
    """Each '/**' of a run used to add a matcher and a probe: 170 of them fit in a
    pattern, and one delegated grant of that shape cost half a second to check."""
    run = "/y" + "/**" * 170
    matcher = _glob._matcher(run)
    assert isinstance(matcher, _glob._Either)
    assert not isinstance(matcher._whole, _glob._Either)
    assert not isinstance(matcher._bare, _glob._Either)
    assert glob_covers(run, run)
    assert glob_covers("/y/**", run)
    assert glob_covers(run, "/y/**")
    assert glob_match(run, "/y")
    assert glob_match(run, "/y/a/b")
    assert not glob_match(run, "/ya")


def test_the_automaton_stops_at_the_first_character_nothing_can_take() -> None:
    automaton = _glob._Automaton("*a*b", probe=False)
    assert automaton.fullmatch("xa.b") is False  # '*' cannot cross the '.'
    assert automaton.fullmatch("xab") is True
