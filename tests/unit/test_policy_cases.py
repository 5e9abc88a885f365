"""Table-driven policy tests (``execgate policy test``): loading, running, reporting."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from gatekit import make_kit

from execgate.errors import PolicyError
from execgate.model import Outcome
from execgate.policy import (
    DEFAULT_NOW,
    Case,
    Policy,
    Verdict,
    load_cases,
    parse_cases,
    parse_policy,
    run_cases,
)

POLICY = """
version: 1
rules:
  - name: small-payments
    match: {action: "payments.*", resource: "acct:**"}
    when: "request.args.amount <= 100 && now < timestamp('2030-01-01T00:00:00Z')"
    effect: proceed
  - name: big-payments
    match: {action: "payments.transfer"}
    effect: pause
    approvers: [finance]
    quorum: 1
    ttl: 600
  - name: shell
    match: {action: "shell.*"}
    when: "artifact.sub == request.runtime && environment.sandboxed"
    effect: reroute
    target: sandbox
"""

CASES = """
cases:
  - name: small payment proceeds
    request: {action: payments.transfer, resource: "acct:1", args: {amount: 5}, runtime: agent-1}
    artifact: {sub: agent-1}
    expect: proceed
    rule: small-payments
  - name: big payment pauses
    request: {action: payments.transfer, resource: "acct:1", args: {amount: 500}, runtime: a}
    expect: pause
    code: approval.required
  - name: after 2030 small payments pause too
    request: {action: payments.transfer, resource: "acct:1", args: {amount: 5}, runtime: a}
    now: 1900000000
    expect: pause
    rule: big-payments
  - name: shell reroutes
    request: {action: shell.run, resource: "host:1", args: {argv: [ls]}, runtime: agent-1}
    artifact: {sub: agent-1}
    environment: {sandboxed: true}
    expect: reroute
  - name: unknown action
    request: {action: email.send, resource: "x", runtime: a}
    expect: deny
    code: policy.no_match
  - name: missing amount denies
    request: {action: payments.refund, resource: "acct:1", runtime: a}
    expect: deny
    rule: small-payments
    code: policy.denied
"""


def _policy() -> Policy:
    return parse_policy(POLICY, source="p.yaml", targets={"sandbox"})


def test_load_and_run_passing_cases(tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(CASES)
    cases = load_cases(path)
    assert [c.name for c in cases][:2] == ["small payment proceeds", "big payment pauses"]
    results = run_cases(_policy(), cases)
    assert [r.message for r in results] == [""] * len(cases)
    assert all(r.passed for r in results)
    first = results[0]
    assert first.expected == Verdict(Outcome.PROCEED, "small-payments", None)
    assert first.got == Verdict(Outcome.PROCEED, "small-payments", None)


def test_case_defaults() -> None:
    case = parse_cases(CASES)[1]
    assert case.now == DEFAULT_NOW == 1_700_000_000
    assert case.artifact == {}
    assert case.environment == {}
    assert case.request == {
        "action": "payments.transfer",
        "resource": "acct:1",
        "args": {"amount": 500},
        "runtime": "a",
    }  # no parent: as the gateway shows a request that names none
    assert case.expected == Verdict(Outcome.PAUSE, None, "approval.required")
    assert case.line == 8  # CASES starts with a blank line


def test_cases_see_the_request_as_the_gateway_does(tmp_path: Path) -> None:
    """A case passes only if the gateway decides that request the same way: without a
    parent (``has(request.parent)`` is false), and with its numbers read back from the
    canonical form (150.0 is the integer 150; what has no canonical form is refused)."""
    policy = textwrap.dedent(
        """
        version: 1
        rules:
          - name: child-payments-pause
            match: {action: "payments.*"}
            when: "has(request.parent)"
            effect: pause
            approvers: [finance]
            quorum: 1
            ttl: 600
          - name: payments
            match: {action: "payments.*"}
            effect: proceed
        """
    )
    [case] = parse_cases(
        """
        cases:
          - name: a top-level payment
            request:
              {action: payments.transfer, resource: "acct:1", args: {amount: 150.0}, runtime: a}
            expect: proceed
            rule: payments
        """
    )
    [result] = run_cases(parse_policy(policy, source="p", targets=()), [case])
    assert result.passed, result
    assert type(case.request["args"]["amount"]) is int
    kit = make_kit(tmp_path, policy=policy)
    try:
        decision = kit.gateway().decide(kit.submit(kit.request(amount=150.0)))
        assert (decision.outcome, decision.rule) == (Outcome.PROCEED, "payments")
    finally:
        kit.close()
    with pytest.raises(PolicyError, match="integer beyond"):
        parse_cases(
            "cases:\n  - name: huge\n    request: {action: a, resource: r, runtime: a,"
            " args: {n: 1.0e+20}}\n    expect: deny\n"
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"expected": Verdict(Outcome.DENY)}, "expected deny, got proceed rule 'small-payments'"),
        (
            {"expected": Verdict(Outcome.PROCEED, rule="big-payments")},
            "expected proceed rule 'big-payments', got proceed rule 'small-payments'",
        ),
        (
            {"expected": Verdict(Outcome.PROCEED, code="policy.denied")},
            "expected proceed policy.denied, got proceed",
        ),
    ],
)
def test_failing_case_is_reported(change: dict[str, Verdict], message: str) -> None:
    base = parse_cases(CASES)[0]
    case = Case(
        name=base.name,
        request=base.request,
        expected=change["expected"],
        artifact=base.artifact,
    )
    (result,) = run_cases(_policy(), [case])
    assert not result.passed
    assert result.name == "small payment proceeds"
    assert result.got == Verdict(Outcome.PROCEED, "small-payments", None)
    assert result.message.startswith(message)
    assert "allows the request" in result.message


def test_wrong_expectation_in_file_fails() -> None:
    text = CASES.replace("expect: reroute", "expect: proceed")
    results = {r.name: r for r in run_cases(_policy(), parse_cases(text))}
    assert not results["shell reroutes"].passed
    assert results["shell reroutes"].message.startswith("expected proceed, got reroute")
    assert sum(not r.passed for r in results.values()) == 1


def test_case_that_raises_is_reported_not_fatal() -> None:
    case = Case(
        name="bad now",
        request={"action": "a", "resource": "b"},
        expected=Verdict(Outcome.DENY),
        now=1.5,  # type: ignore[arg-type]
    )
    (result,) = run_cases(_policy(), [case])
    assert not result.passed
    assert result.got is None
    assert result.message.startswith("evaluation raised TypeError")


# (id, cases document, line, fragment)
CASE_ERRORS = [
    ("no-cases-key", "tests: []\n", 1, "unknown key 'tests'"),
    ("empty-cases", "cases: []\n", 1, "'cases' is empty"),
    ("not-a-list", "cases: {a: 1}\n", 1, "'cases' must be a list"),
    ("not-yaml", "cases: [\n", 2, "not valid YAML"),
    (
        "missing-name",
        "cases:\n  - request: {action: a, resource: b, runtime: c}\n    expect: deny\n",
        2,
        "case #1: the case has no 'name'",
    ),
    (
        "unknown-key",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    expect: deny\n    expected: deny\n",
        5,
        "case 'one': unknown key 'expected'",
    ),
    (
        "missing-request",
        "cases:\n  - name: one\n    expect: deny\n",
        2,
        "case 'one': the case has no 'request'",
    ),
    (
        "missing-expect",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n",
        2,
        "case 'one': the case has no 'expect'",
    ),
    (
        "bad-outcome",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    expect: allow\n",
        4,
        "case 'one': 'expect' must be one of",
    ),
    (
        "fail-closed-is-not-a-policy-outcome",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    expect: fail_closed\n",
        4,
        "'expect' must be one of",
    ),
    (
        "request-missing-runtime",
        "cases:\n  - name: one\n    request: {action: a, resource: b}\n    expect: deny\n",
        3,
        "case 'one': 'request': request is missing: runtime",
    ),
    (
        "request-unknown-field",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c, x: 1}\n"
        "    expect: deny\n",
        3,
        "unknown fields: x",
    ),
    (
        "request-not-mapping",
        "cases:\n  - name: one\n    request: [a]\n    expect: deny\n",
        3,
        "'request' must be a mapping",
    ),
    (
        "artifact-not-mapping",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    artifact: token\n    expect: deny\n",
        4,
        "'artifact' must be a mapping",
    ),
    (
        "now-not-int",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    now: '2024-01-01'\n    expect: deny\n",
        4,
        "'now' must be an integer",
    ),
    (
        "unknown-code",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    expect: deny\n    code: policy.nope\n",
        5,
        "unknown reason code 'policy.nope'",
    ),
    (
        "duplicate-key-nested",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    artifact:\n      sub: x\n      sub: y\n    expect: deny\n",
        6,
        "case 'one': duplicate key 'sub'",
    ),
    (
        "duplicate-case-name",
        "cases:\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    expect: deny\n  - name: one\n    request: {action: a, resource: b, runtime: c}\n"
        "    expect: deny\n",
        5,
        "case 'one': duplicate case name (first on line 2)",
    ),
    (
        "date-in-args",
        "cases:\n  - name: one\n    request:\n      action: a\n      resource: b\n"
        "      runtime: c\n      args: {when: 2024-01-01}\n    expect: deny\n",
        7,
        "not a JSON value",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CASE_ERRORS],
)
def test_malformed_cases_name_case_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_cases(text)
    assert info.value.line == line, str(info.value)
    assert fragment in str(info.value)


def test_unreadable_cases_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_cases(tmp_path / "nope.yaml")


def test_cases_example_from_the_docs() -> None:
    text = textwrap.dedent(
        """
        cases:
          - name: small payment proceeds
            request: {action: payments.transfer, resource: "acct:1", args: {amount: 5},
                      runtime: agent-1}
            artifact: {sub: agent-1}          # optional, default {}
            environment: {}                    # optional
            now: 1700000000                    # optional int, default a fixed documented value
            expect: proceed                    # outcome
            rule: small-payments               # optional: expected matching rule
        """
    )
    (result,) = run_cases(_policy(), parse_cases(text))
    assert result.passed, result.message
