"""Table-driven policy tests, in the manner of ``opa test``.

A cases file is ``{cases: [...]}``; each case gives a ``name``, a ``request`` (the wire
shape ``{action, resource, args, runtime, parent}``), optional ``artifact`` and
``environment`` objects (default ``{}``), an optional ``now`` (default
``DEFAULT_NOW`` = 1700000000, 2023-11-14T22:13:20Z) and what to expect: ``expect``
(an outcome) and optionally the matching ``rule`` and the reason ``code``. A ``rule`` or
``code`` left out is not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from execgate.errors import REASON_CODES, PolicyError, RequestError
from execgate.model import Outcome, Request
from execgate.policy import _yaml
from execgate.policy._yaml import Entry, Invalid, line_of
from execgate.policy.engine import Policy
from execgate.policy.model import EFFECTS
from execgate.submission import Submission

__all__ = [
    "DEFAULT_NOW",
    "Case",
    "CaseResult",
    "Verdict",
    "load_cases",
    "parse_cases",
    "run_cases",
]

DEFAULT_NOW: Final = 1_700_000_000
_CASE_KEYS: Final = frozenset(
    {"name", "request", "artifact", "environment", "now", "expect", "rule", "code"}
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """An outcome with the rule and code behind it; in an expectation None means "any"."""

    outcome: Outcome
    rule: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        parts = [str(self.outcome)]
        if self.rule is not None:
            parts.append(f"rule {self.rule!r}")
        if self.code is not None:
            parts.append(self.code)
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Case:
    """One table row: the inputs of an evaluation and the verdict it should produce."""

    name: str
    request: Mapping[str, Any]
    expected: Verdict
    artifact: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    now: int = DEFAULT_NOW
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CaseResult:
    """How one case went; ``message`` says what differed and is empty when it passed."""

    name: str
    passed: bool
    expected: Verdict
    got: Verdict | None
    message: str = ""


def load_cases(path: str | Path) -> list[Case]:
    """Read and validate the cases file at ``path``."""
    return parse_cases(_yaml.read_text(path))


def parse_cases(text: str) -> list[Case]:
    """Validate a cases document; errors are ``PolicyError`` naming the case and line."""
    try:
        nodes = _document(text)
    except Invalid as exc:
        raise PolicyError(exc.message, line=exc.line) from exc
    cases: list[Case] = []
    first_line: dict[str, int] = {}
    for index, node in enumerate(nodes, start=1):
        case = _case(node, index)
        if case.name in first_line:
            raise PolicyError(
                f"case {case.name!r}: duplicate case name (first on line {first_line[case.name]})",
                line=case.line,
            )
        first_line[case.name] = case.line or 0
        cases.append(case)
    return cases


def run_cases(policy: Policy, cases: Iterable[Case]) -> list[CaseResult]:
    """Evaluate every case against ``policy`` and compare with its expectation."""
    return [_run(policy, case) for case in cases]


def _run(policy: Policy, case: Case) -> CaseResult:
    try:
        result = policy.evaluate(
            request=case.request,
            artifact=case.artifact,
            environment=case.environment,
            now=case.now,
        )
    except Exception as exc:  # noqa: BLE001 - a crashing case is reported, not fatal
        message = f"evaluation raised {type(exc).__name__}: {exc}"
        return CaseResult(
            case.name, passed=False, expected=case.expected, got=None, message=message
        )
    got = Verdict(result.outcome, result.rule, result.code)
    want = case.expected
    passed = (
        got.outcome is want.outcome
        and (want.rule is None or want.rule == got.rule)
        and (want.code is None or want.code == got.code)
    )
    message = "" if passed else f"expected {want}, got {got}: {result.detail}"
    return CaseResult(case.name, passed=passed, expected=want, got=got, message=message)


def _document(text: str) -> list[yaml.Node]:
    root = _yaml.compose(text)
    top = _yaml.mapping(root, "the cases file")
    _yaml.check_keys(top, frozenset({"cases"}), "the cases file")
    if "cases" not in top:
        raise Invalid("the cases file has no 'cases'", line_of(root))
    nodes = _yaml.sequence(top["cases"].node, "'cases'")
    if not nodes:
        raise Invalid("'cases' is empty; it would test nothing", top["cases"].line)
    return nodes


def _case(node: yaml.Node, index: int) -> Case:
    try:
        fields = _yaml.mapping(node, "a case")
        name = _yaml.string(fields["name"].node, "'name'", max_len=256) if "name" in fields else ""
    except Invalid as exc:
        raw = _yaml.peek_name(node)
        label = repr(raw) if raw else f"#{index}"
        raise PolicyError(f"case {label}: {exc.message}", line=exc.line) from exc
    if not name:
        raise PolicyError(f"case #{index}: the case has no 'name'", line=line_of(node))
    try:
        _yaml.check_keys(fields, _CASE_KEYS, "the case")
        return _fields(name, fields, line_of(node))
    except Invalid as exc:
        raise PolicyError(f"case {name!r}: {exc.message}", line=exc.line) from exc


def _fields(name: str, fields: dict[str, Entry], line: int) -> Case:
    for required in ("request", "expect"):
        if required not in fields:
            raise Invalid(f"the case has no {required!r}", line)
    request_entry = fields["request"]
    try:
        # As the gateway reads it: through the canonical form (so 150.0 is the integer
        # 150, and what has no canonical form is refused), and without a null parent.
        parsed = Request.from_json(_object(request_entry, "'request'"))
        request = Submission(parsed, None, None).request.for_conditions()
    except (ValueError, RequestError) as exc:
        raise Invalid(f"'request': {exc}", request_entry.line) from exc
    expect_node = fields["expect"].node
    expect = _yaml.string(expect_node, "'expect'")
    if expect not in EFFECTS:
        raise Invalid(f"'expect' must be one of {', '.join(sorted(EFFECTS))}", line_of(expect_node))
    rule = _yaml.string(fields["rule"].node, "'rule'") if "rule" in fields else None
    code = None
    if "code" in fields:
        code = _yaml.string(fields["code"].node, "'code'")
        if code not in REASON_CODES:
            raise Invalid(f"unknown reason code {code!r}", fields["code"].line)
    now = DEFAULT_NOW
    if "now" in fields:
        now = _yaml.integer(fields["now"].node, "'now'", low=0, high=253_402_300_799)
    return Case(
        name=name,
        request=request,
        expected=Verdict(Outcome(expect), rule, code),
        artifact=_object(fields["artifact"], "'artifact'") if "artifact" in fields else {},
        environment=(
            _object(fields["environment"], "'environment'") if "environment" in fields else {}
        ),
        now=now,
        line=line,
    )


def _object(entry: Entry, what: str) -> dict[str, Any]:
    value = _yaml.to_json(entry.node)
    if not isinstance(value, dict):
        raise Invalid(f"{what} must be a mapping", line_of(entry.node))
    return value
