"""What a policy sees of a delegated artifact: the claims its authority signed (subject,
uses, governance, attribution), never what a delegator chose or added, which a runtime
could by delegating to itself; every link's own values under ``artifact.chain``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import GATEWAY_ID, RUNTIME_ID, Kit, make_kit

from execgate.artifacts import verify_artifact
from execgate.delegation import delegate_artifact
from execgate.home import SAMPLE_POLICY
from execgate.jose import PrivateKey, parse_unverified
from execgate.model import Outcome
from execgate.pipeline import Gateway, policy_view
from execgate.proofs import Runtime

REFUNDS = [{"action": "payments.refund", "resource": "acct:**"}]

POLICY = """\
version: 1
rules:
  - name: cfo-requests
    match: {action: payments.refund}
    when: "has(artifact.att.requested_by) && artifact.att.requested_by == 'cfo'"
    effect: proceed
  - name: flagged-by-a-delegator
    match: {action: payments.refund}
    when: "artifact.chain.exists(link, has(link.gov.classification))"
    effect: deny
  - name: delegated-to-the-named-bot
    match: {action: payments.refund}
    when: >-
      size(artifact.chain) == 2 && artifact.chain[0].sub == 'agent-1'
      && artifact.chain[1].sub == 'refund-bot' && artifact.sub == 'agent-1'
    effect: proceed
  - name: the-treasury-bot-itself
    match: {action: payments.refund}
    when: "request.runtime == 'treasury-bot' && artifact.sub == 'treasury-bot'"
    effect: proceed
  - name: single-use-artifacts
    match: {action: payments.refund}
    when: "has(artifact.uses) && artifact.uses == 1"
    effect: proceed
"""


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path, policy=POLICY)
    yield k
    k.close()


def _self_delegated(kit: Kit, **added: Any) -> str:
    """The kit's runtime re-signing its own artifact for itself, adding ``added``."""
    return delegate_artifact(
        parent=kit.artifact(REFUNDS),
        holder_key=kit.runtime.key,
        subject=RUNTIME_ID,
        runtime_key=kit.runtime.key.public,
        scope=REFUNDS,
        now=kit.clock.now,
        **added,
    )


def _decide(kit: Kit, gateway: Gateway, artifact: str, runtime: Runtime | None = None) -> Any:
    runtime = runtime or kit.runtime
    request = kit.request("payments.refund", "acct:1", runtime=runtime.runtime_id, amount=5)
    return gateway.decide(
        runtime.submission(request, artifact, audience=gateway.gateway_id, now=kit.clock.now)
    )


def test_the_sample_policy_cannot_be_given_a_ticket_by_self_delegation(tmp_path: Path) -> None:
    """``execgate init``'s policy denies refunds without a ticket: a runtime whose
    artifact has none cannot add one by delegating to itself."""
    kit = make_kit(tmp_path, policy=SAMPLE_POLICY)
    try:
        gateway = kit.gateway()
        direct = _decide(kit, gateway, kit.artifact(REFUNDS))
        laundered = _decide(kit, gateway, _self_delegated(kit, gov={"ticket": "MADE-UP-1"}))
        assert (direct.outcome, direct.rule) == (Outcome.DENY, "refunds-need-a-ticket")
        assert (laundered.outcome, laundered.rule) == (Outcome.DENY, "refunds-need-a-ticket")
    finally:
        kit.close()


def test_attribution_a_delegator_adds_is_not_the_artifacts(kit: Kit) -> None:
    gateway = kit.gateway()
    laundered = _decide(kit, gateway, _self_delegated(kit, att={"requested_by": "cfo"}))
    assert laundered.outcome is Outcome.DENY
    assert laundered.rule is None  # no rule matched: cfo-requests did not see the claim
    signed = kit.artifact(REFUNDS, att={"requested_by": "cfo"})
    assert _decide(kit, gateway, signed).rule == "cfo-requests"


def test_what_a_delegator_adds_is_readable_per_link(kit: Kit) -> None:
    flagged = _decide(kit, kit.gateway(), _self_delegated(kit, gov={"classification": "secret"}))
    assert (flagged.outcome, flagged.rule) == (Outcome.DENY, "flagged-by-a-delegator")


def test_the_chain_names_who_named_whom(kit: Kit) -> None:
    """The root's ``sub`` is the authority's; a delegated ``sub`` is the delegator's."""
    bot = Runtime("refund-bot", PrivateKey.generate())
    child = delegate_artifact(
        parent=kit.artifact(REFUNDS),
        holder_key=kit.runtime.key,
        subject="refund-bot",
        runtime_key=bot.key.public,
        scope=REFUNDS,
        now=kit.clock.now,
    )
    decision = _decide(kit, kit.gateway(), child, bot)
    assert (decision.outcome, decision.rule) == (Outcome.PROCEED, "delegated-to-the-named-bot")


def test_a_runtime_cannot_name_itself_into_another_runtimes_rule(kit: Kit) -> None:
    """agent-1 delegates to itself under the name treasury-bot: the request's runtime is
    treasury-bot (its delegator named it), but the artifact's subject is the one its
    authority named."""
    posing = Runtime("treasury-bot", kit.runtime.key)
    child = delegate_artifact(
        parent=kit.artifact(REFUNDS),
        holder_key=kit.runtime.key,
        subject="treasury-bot",
        runtime_key=kit.runtime.key.public,
        scope=REFUNDS,
        now=kit.clock.now,
    )
    decision = _decide(kit, kit.gateway(), child, posing)
    assert (decision.outcome, decision.rule) == (Outcome.DENY, None)
    named = kit.artifact(REFUNDS, subject="treasury-bot", runtime_key=kit.runtime.key)
    decision = _decide(kit, kit.gateway(), named, posing)
    assert (decision.outcome, decision.rule) == (Outcome.PROCEED, "the-treasury-bot-itself")


def test_a_use_limit_a_delegator_sets_is_not_the_artifacts(kit: Kit) -> None:
    """A self-minted child of one use, as many times as it likes, is not an artifact its
    authority limited to one use."""
    laundered = _decide(kit, kit.gateway(), _self_delegated(kit, uses=1))
    assert (laundered.outcome, laundered.rule) == (Outcome.DENY, None)
    single = kit.artifact(REFUNDS, uses=1)
    assert _decide(kit, kit.gateway(), single).rule == "single-use-artifacts"


def test_the_policy_view_is_the_roots_claims_and_every_links_own(kit: Kit) -> None:
    root = kit.artifact(REFUNDS, att={"requested_by": "cfo"})
    kit.clock.t += 5
    child = delegate_artifact(
        parent=root,
        holder_key=kit.runtime.key,
        subject="refund-bot",
        runtime_key=PrivateKey.generate().public,
        scope=REFUNDS,
        now=kit.clock.now,
        ttl=60,
        att={"reason": "batch"},
    )
    artifact = verify_artifact(
        child,
        trust=kit.gateway().trust,
        audiences=frozenset({GATEWAY_ID}),
        now=kit.clock.now,
        leeway=0,
    )
    view = policy_view(artifact)
    signed = parse_unverified(root, max_size=1 << 20).claims
    assert {k: v for k, v in view.items() if k not in ("chain", "env", "gov")} == signed
    assert "prf" not in view  # never the parent's token
    assert [link["sub"] for link in view["chain"]] == [RUNTIME_ID, "refund-bot"]
    assert view["chain"][1]["att"] == {"requested_by": "cfo", "reason": "batch"}
