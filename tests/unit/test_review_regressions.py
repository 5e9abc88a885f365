"""Regressions from a security review: ids chosen by whoever mints a link (jti, sub) must
not let one artifact borrow another's uses, approval or parent execution."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import GATEWAY_ID, NOW, POLICY, Kit, make_kit

from execgate.approvals import sign_review
from execgate.artifacts import issue_artifact
from execgate.delegation import delegate_artifact
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.model import Decision, Outcome, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore

QUORUM_ONE = POLICY  # the kit's pause rule needs one finance approver


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path, policy=QUORUM_ONE)
    yield k
    k.close()


def run(
    gw: Gateway, runtime: Runtime, artifact: str, amount: int = 5, parent: str | None = None
) -> Decision:
    request = Request(
        action="payments.transfer",
        resource="acct:1",
        runtime=runtime.runtime_id,
        args={"amount": amount},
        parent=parent,
    )
    return gw.decide(runtime.submission(request, artifact, audience=GATEWAY_ID, now=NOW))


def child(parent: str, holder: PrivateKey, subject: str, key: PrivateKey, **kw: Any) -> str:
    return delegate_artifact(
        parent=parent,
        holder_key=holder,
        subject=subject,
        runtime_key=key.public,
        scope=[{"action": "payments.transfer", "resource": "acct:**"}],
        now=NOW,
        **kw,
    )


def test_a_link_minted_with_anothers_jti_does_not_spend_its_uses(kit: Kit) -> None:
    gw = kit.gateway()
    victim = kit.artifact(jti="victim-artifact-jti", uses=3, ttl=3600)
    mallory = Runtime("mallory", PrivateKey.generate())
    own = kit.artifact(subject="mallory", runtime_key=mallory.key, jti="mallory-root", ttl=3600)
    helper = Runtime("mallory-2", PrivateKey.generate())
    lookalike = child(
        own, mallory.key, "mallory-2", helper.key, jti="victim-artifact-jti", uses=1000
    )
    for _ in range(3):
        assert run(gw, helper, lookalike).outcome is Outcome.PROCEED
    assert run(gw, kit.runtime, victim).outcome is Outcome.PROCEED


def test_a_lookalike_link_does_not_resume_anothers_approval(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)  # held by the kit's runtime, which delegates
    victim = Runtime("agent-v", PrivateKey.generate())
    for_victim = child(root, kit.runtime.key, "agent-v", victim.key, jti="c-1")
    paused = run(gw, victim, for_victim, amount=5000)
    assert paused.outcome is Outcome.PAUSE
    assert paused.approval_id is not None
    pending, _ = gw.approval(paused.approval_id)
    alice = read_private_key(kit.home / "keys" / "approver-alice.jwk")
    gw.review(
        paused.approval_id,
        sign_review(key=alice, approver="alice", pending=pending, verdict="approve", now=NOW),
    )
    # The delegator mints a look-alike: same jti, same sub, its own key.
    thief = Runtime("agent-v", PrivateKey.generate())
    lookalike = child(root, kit.runtime.key, "agent-v", thief.key, jti="c-1")
    stolen = run(gw, thief, lookalike, amount=5000)
    assert stolen.outcome is Outcome.PAUSE  # a new approval, not the victim's
    assert stolen.approval_id != paused.approval_id
    assert run(gw, victim, for_victim, amount=5000).outcome is Outcome.PROCEED


def test_a_receipt_does_not_parent_another_authoritys_artifact_with_the_same_jti(
    tmp_path: Path,
) -> None:
    kit = make_kit(tmp_path)
    try:
        second = PrivateKey.generate()
        jwk = second.public.to_jwk()
        fields = ", ".join(f'{k} = "{v}"' for k, v in jwk.items())
        with (kit.home / "trust.toml").open("a") as fh:
            fh.write(
                f'\n[[authority]]\nid = "reports-authority"\nkeys = [{{{fields}}}]\n'
                'scope = [{action = "payments.*", resource = "acct:**"}]\n'
            )
        gw = kit.gateway()
        first = kit.artifact(jti="shared-jti", ttl=3600)
        parent = run(gw, kit.runtime, first)
        assert parent.receipt is not None
        other = issue_artifact(
            key=second,
            issuer="reports-authority",
            subject=kit.runtime.runtime_id,
            audience=GATEWAY_ID,
            runtime_key=kit.runtime.key.public,
            scope=[{"action": "payments.*", "resource": "acct:**"}],
            now=NOW,
            ttl=3600,
            jti="shared-jti",
        )
        d = run(gw, kit.runtime, other, parent=parent.receipt)
        assert [r.code for r in d.reasons] == ["lineage.broken"]
    finally:
        kit.close()


class RevokingStore(SQLiteStore):
    """Revokes the runtime's subject just before the decision's commit, as an operator
    running `execgate revoke` while the decision waits for the writer would."""

    def commit(self, job: WriteJob) -> int:
        if job.kind == "decision":
            self.revoke("sub", "agent-1", reason="revoked mid-decision", now=NOW)
        return super().commit(job)


def test_a_revocation_that_lands_before_the_commit_wins(kit: Kit) -> None:
    gw = kit.gateway(RevokingStore(kit.config.store))
    d = run(gw, kit.runtime, kit.artifact())
    assert d.outcome is Outcome.DENY
    assert [r.code for r in d.reasons] == ["artifact.revoked"]
    [entry] = gw.store.entries(0, 1)
    assert b'"outcome":"deny"' in entry.entry
