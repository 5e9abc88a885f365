"""Policy loading and evaluation: ordered rules, first match wins, deny by default."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

import execgate.policy
from execgate.model import Outcome, Reason
from execgate.policy import PauseSpec, Policy, PolicyResult, Rule, load_policy, parse_policy

POLICY = """
version: 1
rules:
  - name: small-payments            # a comment
    match: {action: "payments.*", resource: "acct:**"}
    when: "request.args.amount <= 100"
    effect: proceed
  - name: big-payments
    match: {action: "payments.transfer"}
    effect: pause
    approvers: [finance, security]
    quorum: 2
    ttl: 3600
  - name: untrusted-to-sandbox
    match: {action: "shell.*"}
    effect: reroute
    target: sandbox
    reason: "shell commands run in the sandbox"
  - name: no-deletes
    match: {action: "files.delete"}
    effect: deny
    reason: "deletes are never automated"
"""

TARGETS = frozenset({"sandbox", "staging"})


def _policy(text: str = POLICY) -> Policy:
    return parse_policy(textwrap.dedent(text), source="test.yaml", targets=TARGETS)


def _request(action: str, resource: str = "acct:1", **args: Any) -> dict[str, Any]:
    return {
        "action": action,
        "resource": resource,
        "args": args,
        "runtime": "agent-1",
        "parent": None,
    }


def _eval(policy: Policy, request: dict[str, Any], **kw: Any) -> PolicyResult:
    inputs: dict[str, Any] = {"artifact": {}, "environment": {}, "now": 1_700_000_000}
    inputs.update(kw)
    return policy.evaluate(request=request, **inputs)


def test_exported_names_are_pinned() -> None:
    # Sorted the way ruff's RUF022 sorts: constants, then classes, then functions.
    assert execgate.policy.__all__ == [
        "DEFAULT_NOW",
        "Case",
        "CaseResult",
        "PauseSpec",
        "Policy",
        "PolicyResult",
        "Rule",
        "Verdict",
        "load_cases",
        "load_policy",
        "parse_cases",
        "parse_policy",
        "run_cases",
    ]
    for name in execgate.policy.__all__:
        assert getattr(execgate.policy, name) is not None


def test_loaded_rules_keep_order_and_fields() -> None:
    policy = _policy()
    assert [r.name for r in policy.rules] == [
        "small-payments",
        "big-payments",
        "untrusted-to-sandbox",
        "no-deletes",
    ]
    small = policy.rules[0]
    assert (small.action, small.resource, small.effect) == ("payments.*", "acct:**", "proceed")
    assert small.when == "request.args.amount <= 100"
    assert small.line == 4
    assert policy.rules[1].resource == "**"
    assert policy.rules[1].when is None
    assert policy.rule("no-deletes").reason == "deletes are never automated"
    assert policy.source == "test.yaml"
    with pytest.raises(KeyError):
        policy.rule("nope")


def test_load_policy_from_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    policy = load_policy(path, targets=TARGETS)
    assert policy.source == str(path)
    assert policy.hash == _policy().hash


def test_policy_is_immutable() -> None:
    policy = _policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.hash = "sha256:" + "0" * 64  # type: ignore[misc]
    assert isinstance(policy.rules, tuple)


def test_proceed_when_condition_true() -> None:
    result = _eval(_policy(), _request("payments.transfer", amount=5))
    assert result == PolicyResult(
        outcome=Outcome.PROCEED,
        rule="small-payments",
        code=None,
        detail="rule 'small-payments' allows the request",
    )
    assert result.reason is None


def test_false_condition_skips_to_next_rule() -> None:
    result = _eval(_policy(), _request("payments.transfer", amount=500))
    assert result.outcome is Outcome.PAUSE
    assert result.rule == "big-payments"
    assert result.code == "approval.required"
    assert result.pause == PauseSpec(approvers=("finance", "security"), quorum=2, ttl=3600)
    assert result.target is None
    assert result.reason == Reason("approval.required", result.detail)


def test_first_match_wins() -> None:
    policy = _policy(
        """
        version: 1
        rules:
          - name: deny-first
            match: {action: "payments.*"}
            effect: deny
          - name: allow-later
            match: {action: "payments.transfer"}
            effect: proceed
        """
    )
    result = _eval(policy, _request("payments.transfer"))
    assert (result.outcome, result.rule) == (Outcome.DENY, "deny-first")
    swapped = _policy(
        """
        version: 1
        rules:
          - name: allow-first
            match: {action: "payments.transfer"}
            effect: proceed
          - name: deny-later
            match: {action: "payments.*"}
            effect: deny
        """
    )
    assert _eval(swapped, _request("payments.transfer")).rule == "allow-first"
    assert _eval(swapped, _request("payments.refund")).rule == "deny-later"


def test_resource_glob_must_match() -> None:
    result = _eval(_policy(), _request("payments.transfer", resource="card:1", amount=5))
    # small-payments only covers acct:**, so big-payments (any resource) pauses.
    assert result.rule == "big-payments"


def test_segment_glob_does_not_cross_separators() -> None:
    result = _eval(_policy(), _request("payments.transfer.partial", amount=5))
    assert result.outcome is Outcome.DENY
    assert result.code == "policy.no_match"


def test_no_match_denies() -> None:
    result = _eval(_policy(), _request("email.send"))
    assert result.outcome is Outcome.DENY
    assert result.rule is None
    assert result.code == "policy.no_match"
    assert "email.send" in result.detail


def test_deny_rule() -> None:
    result = _eval(_policy(), _request("files.delete", resource="files:/tmp/x"))
    assert result.outcome is Outcome.DENY
    assert result.rule == "no-deletes"
    assert result.code == "policy.denied"
    assert result.detail == "rule 'no-deletes' denies the request: deletes are never automated"


def test_reroute_names_target() -> None:
    result = _eval(_policy(), _request("shell.run", resource="host:db1"))
    assert result.outcome is Outcome.REROUTE
    assert result.target == "sandbox"
    assert result.code is None
    assert "shell commands run in the sandbox" in result.detail
    assert result.outcome.executes


def test_missing_field_denies_never_skips() -> None:
    # The condition cannot be evaluated: deny, even though a later rule would pause.
    result = _eval(_policy(), _request("payments.transfer"))
    assert result.outcome is Outcome.DENY
    assert result.code == "policy.denied"
    assert result.rule == "small-payments"
    assert "small-payments" in result.detail
    assert "amount" in result.detail


def test_wrong_type_denies() -> None:
    result = _eval(_policy(), _request("payments.transfer", amount="5"))
    assert (result.outcome, result.code, result.rule) == (
        Outcome.DENY,
        "policy.denied",
        "small-payments",
    )
    assert "No such overload" in result.detail


def test_null_field_denies() -> None:
    result = _eval(_policy(), _request("payments.transfer", amount=None))
    assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")


@pytest.mark.parametrize(
    "when",
    ["request.args.amount", "request.args", "'yes'", "null", "[true]", "1 == 1 ? 1 : 0"],
)
def test_non_boolean_result_denies(when: str) -> None:
    policy = _policy(
        f"""
        version: 1
        rules:
          - name: odd
            match: {{action: "**"}}
            when: {when!r}
            effect: proceed
        """
    )
    result = _eval(policy, _request("payments.transfer", amount=5))
    assert result.outcome is Outcome.DENY
    assert result.code == "policy.denied"
    assert "not a boolean" in result.detail


def test_condition_error_in_deny_rule_still_denies() -> None:
    policy = _policy(
        """
        version: 1
        rules:
          - name: block-big
            match: {action: "**"}
            when: "request.args.amount > 1000"
            effect: deny
          - name: allow-rest
            match: {action: "**"}
            effect: proceed
        """
    )
    # Cedar would skip an erroring forbid and let allow-rest through; we deny.
    result = _eval(policy, _request("payments.transfer", to="acct:2"))
    assert (result.outcome, result.rule, result.code) == (
        Outcome.DENY,
        "block-big",
        "policy.denied",
    )
    assert _eval(policy, _request("payments.transfer", amount=5)).rule == "allow-rest"


def test_rules_without_matching_globs_do_not_run_conditions() -> None:
    # The condition of small-payments would fail on this request, but its globs do not match.
    result = _eval(_policy(), _request("shell.run", resource="host:1"))
    assert result.outcome is Outcome.REROUTE


def test_condition_sees_artifact_environment_and_now() -> None:
    policy = _policy(
        """
        version: 1
        rules:
          - name: scoped
            match: {action: "**"}
            when: >-
              artifact.sub == request.runtime
              && environment.region == "eu-west-1"
              && now > timestamp("2023-01-01T00:00:00Z")
              && now < timestamp("2024-01-01T00:00:00Z")
            effect: proceed
        """
    )
    request = _request("x.y")
    good = {"artifact": {"sub": "agent-1"}, "environment": {"region": "eu-west-1"}}
    assert _eval(policy, request, **good).outcome is Outcome.PROCEED
    late = _eval(policy, request, now=1_800_000_000, **good)
    assert (late.outcome, late.code) == (Outcome.DENY, "policy.no_match")
    # An empty attested environment is a missing field: deny, not a miss.
    missing = _eval(policy, request, artifact={"sub": "agent-1"}, environment={})
    assert (missing.outcome, missing.code) == (Outcome.DENY, "policy.denied")


def test_request_without_string_action_denies() -> None:
    policy = _policy()
    for request in ({}, {"action": 1, "resource": "r"}, {"action": "a"}):
        result = policy.evaluate(request=request, artifact={}, environment={}, now=0)
        assert (result.outcome, result.code) == (Outcome.DENY, "policy.denied")


def test_now_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        _policy().evaluate(
            request=_request("x"),
            artifact={},
            environment={},
            now=1.5,  # type: ignore[arg-type]
        )


def test_detail_never_includes_the_artifact() -> None:
    policy = _policy(
        """
        version: 1
        rules:
          - name: needs-claim
            match: {action: "**"}
            when: "artifact.gov.ticket != ''"
            effect: proceed
        """
    )
    secret = "x" * 5000
    result = _eval(policy, _request("a.b"), artifact={"sub": secret, "gov": {}})
    assert result.outcome is Outcome.DENY
    assert secret[:50] not in result.detail
    assert len(result.detail) < 300
    long_action = "a" * 1000
    result = _eval(policy, _request(long_action, resource="b" * 1000))
    assert len(result.detail) < 300


# --- the hash -------------------------------------------------------------------------

REFORMATTED = """
# The same policy, written differently.
version: 1
rules:
- name: small-payments
  effect: proceed
  when: 'request.args.amount <= 100'
  match:
    resource: acct:**
    action: payments.*
- {name: big-payments, match: {action: payments.transfer}, effect: pause,
   approvers: [finance, security], quorum: 2, ttl: 3600}
- name: untrusted-to-sandbox
  match: {action: "shell.*"}
  effect: reroute
  target: sandbox
  reason: shell commands run in the sandbox
- name: no-deletes   # still a deny
  match: {action: "files.delete"}
  effect: deny
  reason: >-
    deletes are
    never automated
"""


def test_hash_format() -> None:
    digest = _policy().hash
    assert digest.startswith("sha256:")
    assert len(digest) == 71
    int(digest[7:], 16)


def test_hash_stable_under_reformatting_and_comments() -> None:
    assert _policy(REFORMATTED).hash == _policy().hash


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("amount <= 100", "amount <= 101"),
        ("quorum: 2", "quorum: 1"),
        ("ttl: 3600", "ttl: 3601"),
        ("target: sandbox", "target: staging"),
        ("approvers: [finance, security]", "approvers: [security, finance]"),
        ('never automated"', 'never automated."'),
        ('resource: "acct:**"', 'resource: "acct:*"'),
    ],
)
def test_hash_changes_under_semantic_change(old: str, new: str) -> None:
    assert old in POLICY
    assert _policy(POLICY.replace(old, new)).hash != _policy().hash


def test_hash_changes_when_rules_are_reordered() -> None:
    reordered = """
    version: 1
    rules:
      - {name: b, match: {action: x}, effect: deny}
      - {name: a, match: {action: x}, effect: proceed}
    """
    original = """
    version: 1
    rules:
      - {name: a, match: {action: x}, effect: proceed}
      - {name: b, match: {action: x}, effect: deny}
    """
    assert _policy(reordered).hash != _policy(original).hash


def test_hash_is_jcs_of_the_document() -> None:
    import hashlib
    import json

    import rfc8785

    text = "version: 1\nrules:\n  - {name: a, match: {action: x}, effect: deny}\n"
    doc = json.loads(
        '{"version": 1, "rules": [{"name": "a", "match": {"action": "x"}, "effect": "deny"}]}'
    )
    expected = "sha256:" + hashlib.sha256(rfc8785.dumps(doc)).hexdigest()
    assert _policy(text).hash == expected


# --- the values -----------------------------------------------------------------------


def test_policy_refuses_no_rules_when_built_directly() -> None:
    with pytest.raises(ValueError, match="allow-all"):
        Policy(rules=(), hash="sha256:" + "0" * 64, source="x")


def test_rule_invariants() -> None:
    with pytest.raises(ValueError, match="target"):
        Rule(name="a", action="x", effect=Outcome.REROUTE)
    with pytest.raises(ValueError, match="pause"):
        Rule(name="a", action="x", effect=Outcome.PAUSE)
    with pytest.raises(ValueError, match="effect"):
        Rule(name="a", action="x", effect=Outcome.FAIL_CLOSED)
    with pytest.raises(ValueError, match="effect"):
        Rule(name="a", action="x", effect="proceed")  # type: ignore[arg-type]


def test_policy_result_invariants() -> None:
    with pytest.raises(ValueError, match="reason code"):
        PolicyResult(outcome=Outcome.DENY, rule=None, code=None, detail="")
    with pytest.raises(ValueError, match="reason code"):
        PolicyResult(outcome=Outcome.PROCEED, rule="a", code="policy.denied", detail="")
    with pytest.raises(ValueError, match="unknown reason code"):
        PolicyResult(outcome=Outcome.DENY, rule=None, code="policy.nope", detail="")
    with pytest.raises(ValueError, match="target"):
        PolicyResult(outcome=Outcome.REROUTE, rule="a", code=None, detail="")
    with pytest.raises(ValueError, match="cannot decide"):
        PolicyResult(outcome=Outcome.FAIL_CLOSED, rule=None, code="internal.error", detail="")


def test_pause_spec_invariants() -> None:
    with pytest.raises(ValueError, match="approvers"):
        PauseSpec(approvers=(), quorum=1, ttl=1)
    with pytest.raises(ValueError, match="quorum"):
        PauseSpec(approvers=("a",), quorum=0, ttl=1)
    with pytest.raises(ValueError, match="ttl"):
        PauseSpec(approvers=("a",), quorum=1, ttl=True)
