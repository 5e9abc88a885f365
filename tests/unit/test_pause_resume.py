"""Pause, review, resume through the gateway: quorum edges, who may approve, what an
approval is bound to, expiry, denial, re-checks on resume, the audit trail, racing
resumes, a restart in between, and notification hooks that fail.

Every test runs a real gateway home (``execgate init``) on its SQLite store, with the
kit's policy changed to need two finance approvers, and approvers appended to the
home's ``trust.toml``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from gatekit import AUTHORITY_ID, GATEWAY_ID, NOW, POLICY, Kit, make_kit

from execgate.approvals import APPROVAL_TYP, Pending, Review, sign_review
from execgate.delegation import delegate_artifact
from execgate.demo import run_demo
from execgate.errors import ApprovalError, AuditError, PolicyError
from execgate.jose import PrivateKey, PublicKey, verify
from execgate.model import Decision, Outcome
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.receipts import verify_receipt
from execgate.store.base import ASKER_FORM, WriteJob

QUORUM_TWO = POLICY.replace("    quorum: 1\n", "    quorum: 2\n")
assert QUORUM_TWO != POLICY

# The finance approvers every test trusts; names other than the alice/bob `init` may add.
KEYS = {name: PrivateKey.generate() for name in ("ana", "ben", "cy")}


def _approver_toml(name: str, key: PublicKey, groups: tuple[str, ...] = ("finance",)) -> str:
    jwk = ", ".join(f"{k} = {json.dumps(v)}" for k, v in key.to_jwk().items())
    return (
        f"\n[[approver]]\nid = {json.dumps(name)}\ngroups = {json.dumps(list(groups))}\n"
        f"keys = [{{{jwk}}}]\n"
    )


def trust_approvers(kit: Kit, approvers: Mapping[str, PrivateKey]) -> None:
    """Append finance approvers to the kit's trust store (before a gateway opens it)."""
    with (kit.home / "trust.toml").open("a", encoding="utf-8") as f:
        for name, key in approvers.items():
            f.write(_approver_toml(name, key.public))


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path, policy=QUORUM_TWO)
    trust_approvers(k, KEYS)
    yield k
    k.close()


@pytest.fixture
def gw(kit: Kit) -> Gateway:
    return kit.gateway()


def codes(d: Decision) -> list[str]:
    return [r.code for r in d.reasons]


def logged(gw: Gateway, index: int | None) -> dict[str, Any]:
    assert index is not None
    [entry] = gw.store.entries(index, index + 1)
    record: dict[str, Any] = json.loads(entry.entry)
    return record


def review(
    kit: Kit,
    gw: Gateway,
    approval_id: str,
    name: str,
    verdict: str = "approve",
    *,
    key: PrivateKey | None = None,
) -> tuple[int, Pending, list[Review]]:
    pending, _ = gw.approval(approval_id)
    token = sign_review(
        key=key or KEYS[name], approver=name, pending=pending, verdict=verdict, now=kit.clock.now
    )
    return gw.review(approval_id, token)


def big(kit: Kit, artifact: str, amount: int = 2500) -> dict[str, Any]:
    """A fresh submission (new proof) of a transfer the policy pauses."""
    return kit.submission(kit.request(amount=amount), artifact)


def notifying(kit: Kit, hook: Callable[[dict[str, Any]], None]) -> Gateway:
    """The kit's gateway, with ``hook`` told of approvals as they open and resolve."""
    base = kit.gateway()
    return Gateway(
        gateway_id=base.gateway_id,
        audiences=base.audiences,
        node_key=base.node_key,
        trust=base.trust,
        policy=base.policy,
        store=base.store,
        now=kit.clock,
        notify=hook,
    )


def paused(d: Decision) -> str:
    assert d.outcome is Outcome.PAUSE, d
    assert codes(d)[-1] == "approval.required"
    assert d.approval_id is not None
    return d.approval_id


# --- quorum -----------------------------------------------------------------------------


def test_k_minus_one_approvals_still_pause_on_the_same_approval(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact()
    first = gw.decide(big(kit, artifact))
    approval = paused(first)
    assert approval == first.decision_id  # the approval id is the pause decision's id

    review(kit, gw, approval, "ana")
    again = gw.decide(big(kit, artifact))
    assert paused(again) == approval
    assert codes(again) == ["approval.required"]
    assert "finance 1/2" in again.reasons[0].detail

    review(kit, gw, approval, "ben")
    resumed = gw.decide(big(kit, artifact))
    assert resumed.outcome is Outcome.PROCEED, resumed.reasons
    assert resumed.approval_id == approval

    # The approval was used by that execution: the same request pauses on a new one.
    after = gw.decide(big(kit, artifact))
    assert paused(after) not in {approval, None}
    assert gw.approval(approval)[0].status == "consumed"


def test_one_approver_counts_once(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    with pytest.raises(ApprovalError, match="already reviewed"):
        review(kit, gw, approval, "ana")
    with pytest.raises(ApprovalError, match="already reviewed"):
        review(kit, gw, approval, "ana", "deny")  # nor change their mind
    assert [r.approver for r in gw.approval(approval)[1]] == ["ana"]
    d = gw.decide(big(kit, artifact))
    assert paused(d) == approval
    assert gw.approval(approval)[0].status == "pending"


def test_principals_of_a_delegated_chain_cannot_approve(tmp_path: Path) -> None:
    kit = make_kit(tmp_path, policy=QUORUM_TWO)
    runner = Runtime("agent-2", PrivateKey.generate())
    insiders = {
        "agent-1": PrivateKey.generate(),  # the delegator: the root artifact's subject
        "agent-2": PrivateKey.generate(),  # the runtime itself
        "holder-bot": kit.runtime.key,  # holds the key that signed the child
        "rita": PrivateKey.generate(),  # requested the child (att.requested_by)
    }
    trust_approvers(kit, {**KEYS, **insiders})
    try:
        gw = kit.gateway()
        child = delegate_artifact(
            parent=kit.artifact(ttl=3600),
            holder_key=kit.runtime.key,
            subject=runner.runtime_id,
            runtime_key=runner.key.public,
            scope=[{"action": "payments.transfer", "resource": "acct:**"}],
            now=NOW,
            att={"requested_by": "rita"},
        )
        request = kit.request(runtime=runner.runtime_id, amount=2500)

        def submit() -> Decision:
            return gw.decide(runner.submission(request, child, audience=GATEWAY_ID, now=NOW))

        approval = paused(submit())
        for name, key in insiders.items():
            with pytest.raises(ApprovalError, match="principal of this request"):
                review(kit, gw, approval, name, key=key)
        assert gw.approval(approval)[1] == []
        review(kit, gw, approval, "ana")
        review(kit, gw, approval, "ben")
        assert submit().outcome is Outcome.PROCEED
    finally:
        kit.close()


def test_a_principal_named_in_another_case_cannot_approve(kit: Kit, gw: Gateway) -> None:
    """'ANA' asked for it; approver 'ana' is the same person to whoever reads the log."""
    artifact = kit.artifact(att={"requested_by": "ANA", "on_behalf_of": "Ben"})
    approval = paused(gw.decide(big(kit, artifact)))
    for name in ("ana", "ben"):
        with pytest.raises(ApprovalError, match="principal of this request"):
            review(kit, gw, approval, name)
    review(kit, gw, approval, "cy")
    assert gw.approval(approval)[1][0].approver == "cy"


# --- what an approval is bound to ---------------------------------------------------------


def test_an_approval_is_bound_to_the_exact_request(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact, 2500)))
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben")

    other = gw.decide(big(kit, artifact, 2600))  # one unit more is another request
    assert paused(other) != approval
    assert other.request_hash != gw.approval(approval)[0].request_hash

    # A review of one approval does not transfer to the other.
    pending, _ = gw.approval(approval)
    token = sign_review(key=KEYS["cy"], approver="cy", pending=pending, verdict="approve", now=NOW)
    assert other.approval_id is not None
    with pytest.raises(ApprovalError, match="another approval"):
        gw.review(other.approval_id, token)

    resumed = gw.decide(big(kit, artifact, 2500))
    assert (resumed.outcome, resumed.approval_id) == (Outcome.PROCEED, approval)


def test_an_expired_approval_says_so_and_a_fresh_one_opens(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact(ttl=3600)
    approval = paused(gw.decide(big(kit, artifact)))
    assert gw.approval(approval)[0].expires_at == NOW + 600  # the rule's ttl
    review(kit, gw, approval, "ana")
    kit.clock.t = NOW + 600
    with pytest.raises(ApprovalError, match="expired"):
        review(kit, gw, approval, "ben")

    d = gw.decide(big(kit, artifact))
    assert d.outcome is Outcome.PAUSE
    assert codes(d) == ["approval.expired", "approval.required"]
    assert approval in d.reasons[0].detail
    fresh = paused(d)
    assert fresh != approval
    assert gw.approval(fresh)[0].expires_at == NOW + 1200
    # The fresh approval starts from zero: ana's review of the expired one does not count.
    review(kit, gw, fresh, "ben")
    assert paused(gw.decide(big(kit, artifact))) == fresh
    review(kit, gw, fresh, "ana")
    assert gw.decide(big(kit, artifact)).outcome is Outcome.PROCEED


def test_a_review_is_refused_while_the_clock_fails(kit: Kit, gw: Gateway) -> None:
    approval = paused(gw.decide(big(kit, kit.artifact())))
    pending, _ = gw.approval(approval)
    token = sign_review(
        key=KEYS["ana"], approver="ana", pending=pending, verdict="approve", now=kit.clock.now
    )
    size = gw.store.size()
    kit.clock.error = OSError("clock gone")
    with pytest.raises(AuditError, match=r"clock cannot be read \(OSError\): nothing"):
        gw.review(approval, token)
    assert gw.store.size() == size
    kit.clock.error = None
    assert len(gw.review(approval, token)[2]) == 1  # the same review, once the clock is back


def test_a_deny_after_approvals_is_terminal(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben", "deny")
    with pytest.raises(ApprovalError, match="denied"):
        review(kit, gw, approval, "cy")
    for _ in range(2):
        d = gw.decide(big(kit, artifact))
        assert d.outcome is Outcome.DENY
        assert codes(d) == ["approval.denied"]
        assert d.approval_id == approval
    assert [p.approval_id for p in gw.approvals()] == [approval]  # nothing new opened


def test_a_deny_survives_a_policy_reload_that_keeps_the_rule(kit: Kit, gw: Gateway) -> None:
    """A reload that changes something else (here another rule's reason) gives the
    policy a new hash: the request the approvers denied stays denied under the rule."""
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana", "deny")
    changed = QUORUM_TWO.replace("reason: refunds are manual", "reason: refunds are by hand")
    assert changed != QUORUM_TWO
    old_hash = gw.policy.hash
    (kit.home / "policy.yaml").write_text(changed, encoding="utf-8")
    gw.reload_policy()
    assert gw.policy.hash != old_hash
    d = gw.decide(big(kit, artifact))
    assert (d.outcome, codes(d), d.approval_id) == (Outcome.DENY, ["approval.denied"], approval)
    assert [p.approval_id for p in gw.approvals()] == [approval]  # nothing new opened


@pytest.mark.parametrize(("artifact_ttl", "expires_in"), [(300, 300), (3600, 600)])
def test_the_approval_never_outlives_the_artifact(
    kit: Kit, gw: Gateway, artifact_ttl: int, expires_in: int
) -> None:
    approval = paused(gw.decide(big(kit, kit.artifact(ttl=artifact_ttl))))
    pending, _ = gw.approval(approval)
    assert pending.expires_at == NOW + expires_in


@pytest.mark.parametrize("past_exp", [0, 30])
def test_no_approval_opens_for_an_artifact_accepted_past_its_expiry(
    kit: Kit, past_exp: int
) -> None:
    """Within the leeway an expired artifact is still accepted, but an approval for it
    could take no review: none is opened, no approver is paged, however often it asks."""
    events: list[dict[str, Any]] = []
    gw = notifying(kit, events.append)
    artifact = kit.artifact(ttl=10)
    kit.clock.t = NOW + 10 + past_exp
    for _ in range(2):
        d = gw.decide(big(kit, artifact))
        assert (d.outcome, codes(d)) == (Outcome.DENY, ["approval.expired"])
        assert d.reasons[0].detail == (
            f"the artifact expired at {NOW + 10}: no approval can be given for it"
        )
        assert d.approval_id is None
        assert d.log_index is not None
    assert gw.approvals() == []
    assert events == []
    kit.clock.t = NOW + 9  # a second before: opened, until the artifact's exp
    approval = paused(gw.decide(big(kit, artifact)))
    assert gw.approval(approval)[0].expires_at == NOW + 10
    assert [e["event"] for e in events] == ["opened"]


# --- a pause someone can approve ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "listed"),
    [
        ("    quorum: 2\n", "    quorum: 6\n", "finance: 5"),  # alice, bob, ana, ben, cy
        ("    approvers: [finance]\n", "    approvers: [finance, security]\n", "security: 0"),
    ],
    ids=["quorum-above-the-group", "a-group-nobody-is-in"],
)
def test_a_pause_no_one_could_approve_is_refused(
    kit: Kit, gw: Gateway, old: str, new: str, listed: str
) -> None:
    """At open and at reload: such a rule would pause its requests forever."""
    assert old in QUORUM_TWO
    line = QUORUM_TWO.splitlines().index("  - name: big-transfers") + 1
    (kit.home / "policy.yaml").write_text(QUORUM_TWO.replace(old, new), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        kit.gateway()
    assert (info.value.rule, info.value.line) == ("big-transfers", line)
    assert listed in str(info.value)
    assert "trust.toml" in str(info.value)
    before = gw.policy.hash
    result = gw.reload_policy()
    assert not result.reloaded
    assert result.error is not None
    assert "no one could ever approve" in result.error
    assert gw.policy.hash == before  # the old policy stays in force


# --- resuming re-runs every check ----------------------------------------------------------


def test_a_revoked_artifact_is_not_resumed(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben")
    jti = gw._artifacts.verify(artifact, now=NOW).jti
    gw.store.revoke("jti", jti, reason="leaked", now=NOW)
    d = gw.decide(big(kit, artifact))
    assert d.outcome is Outcome.DENY
    assert codes(d) == ["artifact.revoked"]
    assert gw.approval(approval)[0].status == "pending"  # not used by a denied decision


@pytest.mark.parametrize("kind", ["kid", "sub"])
def test_an_approval_whose_key_or_approver_is_revoked_no_longer_counts(
    kit: Kit, gw: Gateway, kind: str
) -> None:
    """Revoking an approver's key (``kid``, its thumbprint) or the approver (``sub``)
    takes back the approvals it gave, as revoking a key takes back what it signed
    elsewhere: the request is not resumed on them, and the key reviews nothing more."""
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben")
    value = KEYS["ana"].public.thumbprint() if kind == "kid" else "ana"
    gw.store.revoke(kind, value, reason="approver key lost", now=NOW)

    again = gw.decide(big(kit, artifact))
    assert paused(again) == approval  # waiting on the same approval, not resumed
    assert "finance 1/2" in again.reasons[0].detail
    pending, reviews = gw.approval(approval)
    assert len(reviews) == 2  # the record keeps both reviews; one no longer counts
    status = gw.approval_status(pending, reviews, kit.clock.now)
    assert (status["state"], status["quorum_met"], status["tally"]) == (
        "pending",
        False,
        {"finance": 1},
    )
    other = paused(gw.decide(big(kit, artifact, 2600)))
    size = gw.store.size()
    with pytest.raises(ApprovalError, match="revoked"):
        review(kit, gw, other, "ana")  # nor does it review anything more
    assert gw.store.size() == size  # nothing was logged for it
    assert gw.approval(other)[1] == []

    review(kit, gw, approval, "cy")  # another approver fills the seat
    d = gw.decide(big(kit, artifact))
    assert d.outcome is Outcome.PROCEED
    assert logged(gw, d.log_index)["approvers"] == ["ben", "cy"]


def test_an_approver_revoked_before_the_resuming_commit_resumes_nothing(
    kit: Kit, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision counts the approvals, then waits for its commit while an operator
    revokes an approver's key: the commit checks the reviews' keys with the artifact's,
    so the revocation that returned first wins and the approval stays open."""
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben")
    commit = gw.store.commit

    def revoked_first(job: WriteJob) -> int:
        gw.store.revoke("kid", KEYS["ben"].public.thumbprint(), reason="lost", now=NOW)
        return commit(job)

    monkeypatch.setattr(gw.store, "commit", revoked_first)
    d = gw.decide(big(kit, artifact))
    assert (d.outcome, codes(d)) == (Outcome.DENY, ["approval.required"])
    assert f"an approver of approval {approval}: kid " in d.reasons[0].detail
    assert (d.approval_id, logged(gw, d.log_index)["approvers"]) == (approval, [])
    assert logged(gw, d.log_index)["outcome"] == "deny"
    assert gw.approval(approval)[0].status == "pending"  # not consumed


def test_a_deny_committed_before_the_resuming_commit_wins(
    kit: Kit, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request waits under two artifacts: one approval gets its quorum, and while
    the resume waits for its commit the other is denied. One deny is final for the
    request under its rule, so the commit uses nothing and the answer is the deny."""
    first, second = kit.artifact(), kit.artifact()
    denied = paused(gw.decide(big(kit, first)))
    granted = paused(gw.decide(big(kit, second)))
    review(kit, gw, granted, "ana")
    review(kit, gw, granted, "ben")
    commit = gw.store.commit

    def denied_first(job: WriteJob) -> int:
        if job.consume_approval is not None:
            review(kit, gw, denied, "cy", "deny")
        return commit(job)

    monkeypatch.setattr(gw.store, "commit", denied_first)
    d = gw.decide(big(kit, second))
    assert (d.outcome, codes(d)) == (Outcome.DENY, ["approval.denied"])
    assert d.reasons[0].detail == (
        f"approval {denied} of this request under rule 'big-transfers' was denied meanwhile"
    )
    assert (d.approval_id, logged(gw, d.log_index)["approvers"]) == (denied, [])
    assert logged(gw, d.log_index)["grounds"] == []  # no approver it went through on
    assert gw.approval(granted)[0].status == "pending"  # not consumed


def test_no_approval_opens_for_a_request_denied_before_the_pausing_commit(
    kit: Kit, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = kit.artifact(), kit.artifact()
    denied = paused(gw.decide(big(kit, first)))
    commit = gw.store.commit

    def denied_first(job: WriteJob) -> int:
        if job.open_approval is not None:
            review(kit, gw, denied, "cy", "deny")
        return commit(job)

    monkeypatch.setattr(gw.store, "commit", denied_first)
    d = gw.decide(big(kit, second))  # would open a second approval, for the new artifact
    assert (d.outcome, codes(d)) == (Outcome.DENY, ["approval.denied"])
    assert d.approval_id == denied
    assert [p.approval_id for p in gw.approvals()] == [denied]


def test_a_pause_whose_commit_conflicts_names_no_approval_it_did_not_open(
    kit: Kit, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pause would open an approval, but its commit finds the artifact revoked (or its
    proof replayed): the store writes no approval, and the denial names none."""
    commit = gw.store.commit

    def revoked_first(job: WriteJob) -> int:
        gw.store.revoke("sub", kit.runtime.runtime_id, reason="runtime lost", now=NOW)
        return commit(job)

    monkeypatch.setattr(gw.store, "commit", revoked_first)
    d = gw.decide(big(kit, kit.artifact()))
    assert (d.outcome, codes(d)) == (Outcome.DENY, ["artifact.revoked"])
    assert d.approval_id is None
    record = logged(gw, d.log_index)
    assert (record["approval_id"], record["approvers"]) == (None, [])
    assert gw.approvals() == []


def test_an_approval_that_expires_before_the_commit_is_not_used(
    kit: Kit, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision is evaluated a second before the approval expires; its commit runs
    at the expiry (a queue of commits, a slow disk). The commit reads the clock again:
    nothing executes on an approval that had expired when the decision was recorded."""
    artifact = kit.artifact(ttl=3600)
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben")
    expires_at = gw.approval(approval)[0].expires_at
    commit = gw.store.commit

    def late_commit(job: WriteJob) -> int:
        kit.clock.t = expires_at
        return commit(job)

    monkeypatch.setattr(gw.store, "commit", late_commit)
    kit.clock.t = expires_at - 1
    d = gw.decide(big(kit, artifact, 2500))
    assert (d.outcome, codes(d)) == (Outcome.DENY, ["approval.expired"])
    assert approval in d.reasons[0].detail
    assert gw.approval(approval)[0].status == "pending"  # not consumed: it simply expired
    assert logged(gw, d.log_index)["outcome"] == "deny"

    def broken_clock_commit(job: WriteJob) -> int:
        kit.clock.error = OSError("clock gone")
        try:
            return commit(job)
        finally:
            kit.clock.error = None

    monkeypatch.setattr(gw.store, "commit", broken_clock_commit)
    kit.clock.t = expires_at - 1  # a clock that fails in the commit: nothing executes
    d = gw.decide(big(kit, artifact, 2500))
    assert (d.outcome, codes(d)) == (Outcome.FAIL_CLOSED, ["internal.error"])
    assert logged(gw, d.log_index)["outcome"] == "fail_closed"
    assert gw.approval(approval)[0].status == "pending"

    monkeypatch.setattr(gw.store, "commit", commit)
    kit.clock.t = expires_at - 1  # the same decision committed in time proceeds
    assert gw.decide(big(kit, artifact, 2500)).outcome is Outcome.PROCEED
    assert gw.approval(approval)[0].status == "consumed"


def test_an_approval_does_not_survive_a_policy_change(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact()
    pinned = kit.artifact(gov={"policy": gw.policy.hash})
    approval = paused(gw.decide(big(kit, artifact)))
    pinned_approval = paused(gw.decide(big(kit, pinned)))
    for a in (approval, pinned_approval):
        review(kit, gw, a, "ana")
        review(kit, gw, a, "ben")
    gw.close()
    changed = QUORUM_TWO.replace("reason: refunds are manual", "reason: refunds are by hand")
    (kit.home / "policy.yaml").write_text(changed, encoding="utf-8")
    reopened = kit.gateway()
    assert reopened.policy.hash != gw.policy.hash

    d = reopened.decide(big(kit, artifact))
    assert paused(d) != approval  # decided under another policy: a new approval
    assert reopened.approval(approval)[0].status == "pending"
    pinned_d = reopened.decide(big(kit, pinned))
    assert codes(pinned_d) == ["policy.mismatch"]


# --- the audit trail -------------------------------------------------------------------------


def test_the_resumed_record_links_the_pause_and_names_the_approvers(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact()
    pause = gw.decide(big(kit, artifact))
    approval = paused(pause)
    paused_record = logged(gw, pause.log_index)
    assert (paused_record["outcome"], paused_record["approval_id"]) == ("pause", approval)
    assert paused_record["approvers"] == []
    review(kit, gw, approval, "ben")
    review(kit, gw, approval, "ana")

    resumed = gw.decide(big(kit, artifact))
    record = logged(gw, resumed.log_index)
    assert record["outcome"] == "proceed"
    assert record["approval_id"] == pause.decision_id
    assert record["approvers"] == ["ana", "ben"]
    assert record["request_hash"] == paused_record["request_hash"]
    assert resumed.receipt is not None
    node = kit.node_key.public
    claims = verify_receipt(resumed.receipt, keys={node.thumbprint(): node}, now=NOW, leeway=0)
    assert claims["approval"] == approval


def test_the_resumed_record_names_only_approvers_who_still_count(kit: Kit, gw: Gateway) -> None:
    """cy approved too, then left trust.toml: the quorum stands on ana and ben, and the
    record names them, not everyone who once reviewed."""
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    for name in ("ana", "ben", "cy"):
        review(kit, gw, approval, name)
    gw.close()
    trust = kit.home / "trust.toml"
    text = trust.read_text(encoding="utf-8")
    without_cy = _approver_toml("cy", KEYS["cy"].public)
    assert without_cy in text
    trust.write_text(text.replace(without_cy, ""), encoding="utf-8")
    reopened = kit.gateway()
    resumed = reopened.decide(big(kit, artifact))
    assert resumed.outcome is Outcome.PROCEED
    assert logged(reopened, resumed.log_index)["approvers"] == ["ana", "ben"]


def test_every_review_is_an_audit_record_holding_the_signed_review(kit: Kit, gw: Gateway) -> None:
    approval = paused(gw.decide(big(kit, kit.artifact())))
    reviews = [
        review(kit, gw, approval, "ana")[0],
        review(kit, gw, approval, "ben", "deny")[0],
    ]
    for index, (name, verdict) in zip(reviews, [("ana", "approve"), ("ben", "deny")], strict=True):
        record = logged(gw, index)
        assert record["kind"] == "review"
        assert record["decision_id"] == approval
        assert (record["approver"], record["verdict"]) == (name, verdict)
        assert record["approver_kid"] == KEYS[name].public.thumbprint()
        signed = verify(
            record["review"], typ=APPROVAL_TYP, max_size=8192, keys=gw.trust.approver_keys
        )
        assert signed.claims["iss"] == name
        assert signed.claims["aid"] == approval
        assert signed.claims["verdict"] == verdict


# --- concurrency and restarts ------------------------------------------------------------------


@pytest.mark.parametrize("uses", [1, 20, None], ids=["single-use", "twenty-uses", "unlimited"])
def test_racing_resumes_execute_exactly_once(kit: Kit, gw: Gateway, uses: int | None) -> None:
    artifact = kit.artifact(uses=uses)
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben")
    submissions = [big(kit, artifact) for _ in range(16)]
    barrier = threading.Barrier(len(submissions))
    results: list[Decision] = []
    lock = threading.Lock()

    def resume(wire: dict[str, Any]) -> None:
        barrier.wait()
        d = gw.decide(wire)
        with lock:
            results.append(d)

    threads = [threading.Thread(target=resume, args=(w,)) for w in submissions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [d for d in results if d.executes]
    assert len(results) == 16
    assert len(winners) == 1
    assert winners[0].approval_id == approval
    assert gw.approval(approval)[0].status == "consumed"
    records = [json.loads(e.entry) for e in gw.store.entries(0, gw.store.size())]
    used = [r for r in records if r["kind"] == "decision" and r["outcome"] == "proceed"]
    assert [r["approval_id"] for r in used] == [approval]
    link = gw._artifacts.verify(artifact, now=NOW).digest  # uses are counted per exact link
    if uses is not None:
        assert gw.store.uses_consumed(link) == 1  # the losers gave back what they claimed


def test_pauses_racing_on_one_request_open_one_approval(kit: Kit, gw: Gateway) -> None:
    """Two submissions of one request decided on an event loop together: both are
    evaluated before either commits, so each sees no approval and asks to open one. Only
    one opens; otherwise each could be approved and the request would run twice."""
    artifact = kit.artifact()

    async def both() -> list[Decision]:
        return list(
            await asyncio.gather(
                gw.decide_async(big(kit, artifact)), gw.decide_async(big(kit, artifact))
            )
        )

    first, second = sorted(asyncio.run(both()), key=lambda d: d.approval_id is None)
    approval = paused(first)
    assert second.outcome is Outcome.PAUSE
    assert (codes(second), second.approval_id) == (["approval.required"], None)
    assert "ask again" in second.reasons[0].detail
    assert [p.approval_id for p in gw.approvals()] == [approval]
    assert logged(gw, second.log_index)["approval_id"] is None
    assert paused(gw.decide(big(kit, artifact))) == approval  # asking again waits on it
    review(kit, gw, approval, "ana")
    review(kit, gw, approval, "ben")
    assert gw.decide(big(kit, artifact)).outcome is Outcome.PROCEED
    assert paused(gw.decide(big(kit, artifact))) != approval  # used once, as any approval


def test_an_approver_whose_key_was_rotated_out_reviews_again_with_the_new_one(
    kit: Kit,
) -> None:
    """Dee's review signed with her old key stops counting once that key leaves the trust
    store (say it leaked); she is not locked out: her review with the new key counts."""
    old, new = PrivateKey.generate(), PrivateKey.generate()

    def dee(*keys: PrivateKey) -> str:
        jwks = ", ".join(
            "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in key.public.to_jwk().items()) + "}"
            for key in keys
        )
        return f'\n[[approver]]\nid = "dee"\ngroups = ["finance"]\nkeys = [{jwks}]\n'

    trust = kit.home / "trust.toml"
    before = trust.read_text(encoding="utf-8")
    trust.write_text(before + dee(old, new), encoding="utf-8")
    gw = kit.gateway()
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "dee", key=old)
    review(kit, gw, approval, "ana")
    trust.write_text(before + dee(new), encoding="utf-8")  # the old key is rotated out
    gw = kit.gateway()
    assert paused(gw.decide(big(kit, artifact))) == approval  # 1/2 now: dee's is void
    with pytest.raises(ApprovalError, match="no approver's"):
        review(kit, gw, approval, "dee", key=old)
    review(kit, gw, approval, "dee", key=new)
    assert gw.decide(big(kit, artifact)).outcome is Outcome.PROCEED
    with pytest.raises(ApprovalError):  # and once is once: no second review with it
        review(kit, gw, approval, "dee", key=new)


def test_a_request_approved_under_two_artifacts_executes_once(kit: Kit, gw: Gateway) -> None:
    """The same request paused under two artifacts opens two approvals (each is for its
    exact chain); approving both must not let it run twice: the one used closes the
    other, and the request under the other artifact pauses afresh."""
    first, second = kit.artifact(), kit.artifact()
    one, two = paused(gw.decide(big(kit, first))), paused(gw.decide(big(kit, second)))
    assert one != two
    for approval in (one, two):
        review(kit, gw, approval, "ana")
        review(kit, gw, approval, "ben")
    assert gw.decide(big(kit, first)).outcome is Outcome.PROCEED
    assert gw.approval(two)[0].status == "closed"
    again = gw.decide(big(kit, second))
    assert paused(again) not in {one, two}
    with pytest.raises(ApprovalError, match="closed"):
        review(kit, gw, two, "cy")


def test_a_request_approved_under_two_rules_executes_once(tmp_path: Path) -> None:
    """Which pause rule matches can hang on the artifact: the same request then opens an
    approval under each rule, and using one closes the other all the same."""
    policy = QUORUM_TWO.replace(
        "  - name: big-transfers\n",
        "  - name: big-ticketed-transfers\n"
        '    match: {action: payments.transfer, resource: "acct:**"}\n'
        '    when: "request.args.amount > 1000 && has(artifact.gov.ticket)"\n'
        "    effect: pause\n"
        "    approvers: [finance]\n"
        "    quorum: 2\n"
        "    ttl: 600\n"
        "  - name: big-transfers\n",
    )
    kit = make_kit(tmp_path, policy=policy)
    try:
        trust_approvers(kit, KEYS)
        gw = kit.gateway()
        plain, ticketed = kit.artifact(), kit.artifact(gov={"ticket": "FIN-1"})
        one, two = paused(gw.decide(big(kit, plain))), paused(gw.decide(big(kit, ticketed)))
        assert {gw.approval(one)[0].rule, gw.approval(two)[0].rule} == {
            "big-transfers",
            "big-ticketed-transfers",
        }
        for approval in (one, two):
            review(kit, gw, approval, "ana")
            review(kit, gw, approval, "ben")
        assert gw.decide(big(kit, ticketed)).outcome is Outcome.PROCEED
        assert gw.approval(one)[0].status == "closed"
        assert gw.decide(big(kit, plain)).outcome is Outcome.PAUSE
    finally:
        kit.close()


def test_a_deny_is_final_for_the_request_whatever_artifact_asks_again(
    kit: Kit, gw: Gateway
) -> None:
    """After a deny, neither a fresh artifact nor a link the runtime delegates to itself
    opens a new approval that other approvers could grant."""
    artifact = kit.artifact(ttl=3600)
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "cy", "deny")
    own_link = delegate_artifact(
        parent=artifact,
        holder_key=kit.runtime.key,
        subject=kit.runtime.runtime_id,
        runtime_key=kit.runtime.key.public,
        scope=[{"action": "payments.transfer", "resource": "acct:**"}],
        now=NOW,
    )
    for token in (kit.artifact(), own_link):
        d = gw.decide(big(kit, token))
        assert (d.outcome, codes(d), d.approval_id) == (
            Outcome.DENY,
            ["approval.denied"],
            approval,
        )
    assert [p.approval_id for p in gw.approvals()] == [approval]


def _posing_as(kit: Kit, subject: str) -> tuple[Runtime, str]:
    """The kit's runtime, asking with a link it delegated to itself naming ``subject``."""
    link = delegate_artifact(
        parent=kit.artifact(ttl=3600),
        holder_key=kit.runtime.key,
        subject=subject,
        runtime_key=kit.runtime.key.public,
        scope=[{"action": "payments.transfer", "resource": "acct:**"}],
        now=NOW,
    )
    return Runtime(subject, kit.runtime.key), link


def _forget_holders(kit: Kit, keep: str | None = None) -> None:
    """Every stored approval as one opened before its holder was kept (or, with
    ``keep``, kept as that)."""
    conn = sqlite3.connect(kit.config.store)
    with conn:
        for approval_id, body in conn.execute("SELECT id, body FROM approvals").fetchall():
            kept = json.loads(body)
            del kept["holder"]
            if keep is not None:
                kept["holder"] = keep
            conn.execute(
                "UPDATE approvals SET body = ? WHERE id = ?", (json.dumps(kept), approval_id)
            )
    conn.close()


def test_another_runtimes_deny_is_not_final_for_this_one(kit: Kit, gw: Gateway) -> None:
    """A runtime delegates to itself a link naming another runtime's subject, asks the
    very request that runtime will ask, and has it denied: the deny was final by request
    and rule alone, so the other runtime's own request was denied before it ever asked.
    A deny is final for the runtime the asking chain vouches for (here the poser
    itself: its own link names the subject), never for another's."""
    victim = Runtime("agent-victim", PrivateKey.generate())
    request = kit.request(amount=2500, runtime=victim.runtime_id)
    poser, posing = _posing_as(kit, victim.runtime_id)
    denied = paused(gw.decide(poser.submission(request, posing, audience=GATEWAY_ID, now=NOW)))
    review(kit, gw, denied, "cy", "deny")
    again = gw.decide(poser.submission(request, posing, audience=GATEWAY_ID, now=NOW))
    assert (again.outcome, codes(again), again.approval_id) == (
        Outcome.DENY,
        ["approval.denied"],
        denied,
    )
    own = kit.artifact(subject=victim.runtime_id, runtime_key=victim.key)
    asked = gw.decide(victim.submission(request, own, audience=GATEWAY_ID, now=NOW))
    opened = paused(asked)
    assert opened != denied
    holder = gw.approval(opened)[0].holder
    assert holder.startswith(ASKER_FORM)
    assert json.loads(holder.removeprefix(ASKER_FORM)) == [AUTHORITY_ID, victim.runtime_id]
    review(kit, gw, opened, "ana")
    review(kit, gw, opened, "ben")
    resumed = gw.decide(victim.submission(request, own, audience=GATEWAY_ID, now=NOW))
    assert resumed.outcome is Outcome.PROCEED


def test_a_deny_stays_final_when_the_runtime_asks_with_a_new_key(kit: Kit, gw: Gateway) -> None:
    """The authority vouched for the runtime's name, not for a key: an artifact issued
    to the same runtime bound to a new key asks as the same runtime."""
    approval = paused(gw.decide(big(kit, kit.artifact())))
    review(kit, gw, approval, "cy", "deny")
    rekeyed = Runtime(kit.runtime.runtime_id, PrivateKey.generate())
    token = kit.artifact(runtime_key=rekeyed.key)
    d = gw.decide(rekeyed.submission(kit.request(amount=2500), token, audience=GATEWAY_ID, now=NOW))
    assert (d.outcome, codes(d), d.approval_id) == (Outcome.DENY, ["approval.denied"], approval)
    assert [p.approval_id for p in gw.approvals()] == [approval]


def test_a_delegate_posing_as_its_sibling_cannot_have_the_siblings_request_denied(
    kit: Kit, gw: Gateway
) -> None:
    """An orchestrator delegates to two agents; one delegates to itself a link naming
    the other and has the other's request denied. The other asks as the orchestrator
    vouched for it; the poser as itself."""
    root = kit.artifact(ttl=3600)
    scope = [{"action": "payments.transfer", "resource": "acct:**"}]
    agents = {name: Runtime(name, PrivateKey.generate()) for name in ("agent-b", "agent-c")}
    links = {
        name: delegate_artifact(
            parent=root,
            holder_key=kit.runtime.key,
            subject=name,
            runtime_key=agent.key.public,
            scope=scope,
            now=NOW,
        )
        for name, agent in agents.items()
    }
    posing = delegate_artifact(
        parent=links["agent-b"],
        holder_key=agents["agent-b"].key,
        subject="agent-c",
        runtime_key=agents["agent-b"].key.public,
        scope=scope,
        now=NOW,
    )
    request = kit.request(amount=2500, runtime="agent-c")
    poser = Runtime("agent-c", agents["agent-b"].key)
    denied = paused(gw.decide(poser.submission(request, posing, audience=GATEWAY_ID, now=NOW)))
    review(kit, gw, denied, "cy", "deny")
    sibling = agents["agent-c"]
    asked = gw.decide(sibling.submission(request, links["agent-c"], audience=GATEWAY_ID, now=NOW))
    assert paused(asked) != denied


def _delegated(parent: str, holder: PrivateKey, to: Runtime) -> str:
    return delegate_artifact(
        parent=parent,
        holder_key=holder,
        subject=to.runtime_id,
        runtime_key=to.key.public,
        scope=[{"action": "payments.transfer", "resource": "acct:**"}],
        now=NOW,
    )


def test_a_delegated_runtimes_deny_stays_final_when_its_delegator_is_re_keyed(
    kit: Kit, gw: Gateway
) -> None:
    """A delegated runtime is its name as its delegator named it, not as the
    delegator's key signed it: the delegator re-keyed (a fresh artifact from the
    authority) and delegating again made the denied request askable anew."""
    agent = Runtime("agent-c", PrivateKey.generate())
    request = kit.request(amount=2500, runtime=agent.runtime_id)
    first = _delegated(kit.artifact(ttl=3600), kit.runtime.key, agent)
    denied = paused(gw.decide(agent.submission(request, first, audience=GATEWAY_ID, now=NOW)))
    review(kit, gw, denied, "cy", "deny")
    rekeyed = PrivateKey.generate()
    again = _delegated(kit.artifact(ttl=3600, runtime_key=rekeyed), rekeyed, agent)
    d = gw.decide(agent.submission(request, again, audience=GATEWAY_ID, now=NOW))
    assert (d.outcome, codes(d), d.approval_id) == (Outcome.DENY, ["approval.denied"], denied)


def test_a_descendant_naming_its_ancestor_cannot_have_the_ancestors_request_denied(
    kit: Kit, gw: Gateway
) -> None:
    """A delegate names its delegator's subject in a link of its own: it asks as its
    own descendant, not as the delegator (the first link naming that subject is the
    delegator's own)."""
    agent = Runtime("agent-c", PrivateKey.generate())
    root = kit.artifact(ttl=3600)
    back = _delegated(
        _delegated(root, kit.runtime.key, agent),
        agent.key,
        Runtime(kit.runtime.runtime_id, agent.key),
    )
    request = kit.request(amount=2500)
    poser = Runtime(kit.runtime.runtime_id, agent.key)
    denied = paused(gw.decide(poser.submission(request, back, audience=GATEWAY_ID, now=NOW)))
    review(kit, gw, denied, "cy", "deny")
    own = gw.decide(kit.submission(request, root))
    assert paused(own) != denied


@pytest.mark.parametrize("earlier", ["a key", "a first asker"])
def test_a_deny_whose_holder_is_in_an_earlier_form_is_final_for_every_runtime(
    kit: Kit, gw: Gateway, earlier: str
) -> None:
    """A holder kept by an earlier version, as the root key's thumbprint or as the first
    form of the asker (the issuer and subject of the first link naming the runtime, a
    key's thumbprint for a delegated one), names nobody this version can tell: its deny
    stays final for every runtime, as one kept without a holder."""
    victim = Runtime("agent-victim", PrivateKey.generate())
    request = kit.request(amount=2500, runtime=victim.runtime_id)
    poser, posing = _posing_as(kit, victim.runtime_id)
    denied = paused(gw.decide(poser.submission(request, posing, audience=GATEWAY_ID, now=NOW)))
    review(kit, gw, denied, "cy", "deny")
    key = kit.runtime.key.public.thumbprint()
    _forget_holders(kit, keep=key if earlier == "a key" else json.dumps([key, victim.runtime_id]))
    own = kit.artifact(subject=victim.runtime_id, runtime_key=victim.key)
    d = gw.decide(victim.submission(request, own, audience=GATEWAY_ID, now=NOW))
    assert (d.outcome, codes(d), d.approval_id) == (Outcome.DENY, ["approval.denied"], denied)


def test_an_approval_kept_before_holders_were_resumes_despite_another_runtimes_deny(
    kit: Kit, gw: Gateway
) -> None:
    """The commit that uses an approval checks for a deny as the decision asks, not as
    the approval it uses names (an old one names nobody, which matched every deny)."""
    victim = Runtime("agent-victim", PrivateKey.generate())
    request = kit.request(amount=2500, runtime=victim.runtime_id)
    own = kit.artifact(subject=victim.runtime_id, runtime_key=victim.key)
    waiting = paused(gw.decide(victim.submission(request, own, audience=GATEWAY_ID, now=NOW)))
    _forget_holders(kit)
    poser, posing = _posing_as(kit, victim.runtime_id)
    denied = paused(gw.decide(poser.submission(request, posing, audience=GATEWAY_ID, now=NOW)))
    review(kit, gw, denied, "cy", "deny")
    review(kit, gw, waiting, "ana")
    review(kit, gw, waiting, "ben")
    resumed = gw.decide(victim.submission(request, own, audience=GATEWAY_ID, now=NOW))
    assert (resumed.outcome, resumed.approval_id) == (Outcome.PROCEED, waiting)


def test_a_deny_kept_before_holders_were_is_final_for_every_runtime(kit: Kit, gw: Gateway) -> None:
    """An approval opened before the holder was kept names none: its deny stays final
    for the request whoever asks, as it was."""
    approval = paused(gw.decide(big(kit, kit.artifact())))
    review(kit, gw, approval, "cy", "deny")
    _forget_holders(kit)
    other = Runtime(kit.runtime.runtime_id, PrivateKey.generate())
    token = kit.artifact(runtime_key=other.key)
    d = gw.decide(other.submission(kit.request(amount=2500), token, audience=GATEWAY_ID, now=NOW))
    assert (d.outcome, codes(d), d.approval_id) == (Outcome.DENY, ["approval.denied"], approval)


def test_a_restart_between_pause_and_resume(kit: Kit) -> None:
    artifact = kit.artifact()
    first = kit.gateway()
    approval = paused(first.decide(big(kit, artifact)))
    first.close()

    second = kit.gateway()
    review(kit, second, approval, "ana")
    second.close()

    third = kit.gateway()
    review(kit, third, approval, "ben")
    resumed = third.decide(big(kit, artifact))
    assert (resumed.outcome, resumed.approval_id) == (Outcome.PROCEED, approval)


# --- notification hooks -----------------------------------------------------------------


def test_a_failing_notification_hook_changes_no_decision(kit: Kit) -> None:
    events: list[dict[str, Any]] = []

    def hook(message: dict[str, Any]) -> None:
        events.append(message)
        raise RuntimeError("the pager is down")

    gw = notifying(kit, hook)
    artifact = kit.artifact()
    approval = paused(gw.decide(big(kit, artifact)))
    review(kit, gw, approval, "ana")
    _, after, reviews = review(kit, gw, approval, "ben")
    assert (after.status, len(reviews)) == ("pending", 2)
    resumed = gw.decide(big(kit, artifact))
    assert resumed.outcome is Outcome.PROCEED

    denied = paused(gw.decide(big(kit, artifact, 9999)))
    review(kit, gw, denied, "cy", "deny")
    assert gw.decide(big(kit, artifact, 9999)).outcome is Outcome.DENY

    assert [e["event"] for e in events] == ["opened", "approved", "resumed", "opened", "denied"]
    assert events[0]["approval"]["approval_id"] == approval
    assert events[2]["decision"]["decision_id"] == resumed.decision_id


# --- the demo --------------------------------------------------------------------------------


def test_the_demo_approves_resumes_refuses_a_self_approval_and_reroutes() -> None:
    lines: list[str] = []
    assert run_demo(lines.append) == 0
    steps = {line.split("  ")[1].strip(): line for line in lines if line.startswith("  ")}
    assert " refused " in steps["carol approves (she requested it)"]
    assert "principal" in steps["carol approves (she requested it)"]
    assert "finance 1/2" in steps["alice approves"]
    assert "finance 2/2" in steps["bob approves"]
    resumed = [line for line in lines if " proceed " in line and "approved by" in line]
    assert len(resumed) == 1
    assert "approved by alice, bob" in resumed[0]
    assert "ran        sandbox_build (not run_build)" in "\n".join(lines)
    assert "decision   reroute -> sandbox" in "\n".join(lines)
    assert "outcome    succeeded, sha256:" in "\n".join(lines)
