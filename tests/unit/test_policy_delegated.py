"""What a policy sees of a delegated artifact: governance and attribution as its authority
signed them, never what a delegator added, which a runtime could add by delegating to
itself; every link's own values under ``artifact.chain``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import RUNTIME_ID, Kit, make_kit

from execgate.delegation import delegate_artifact
from execgate.home import SAMPLE_POLICY
from execgate.jose import PrivateKey
from execgate.model import Outcome
from execgate.pipeline import Gateway
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
      && artifact.chain[1].sub == 'refund-bot' && artifact.chain[1].iss == artifact.iss
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
