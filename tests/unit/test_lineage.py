"""Lineage through the pipeline: delegated chains, cascading revocation, uses along a
chain, and execution lineage across two gateways that trust each other."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import GATEWAY_ID, NOW, POLICY, Kit, make_kit

from execgate.delegation import delegate_artifact
from execgate.home import init_home
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.model import Decision, Outcome, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime

CHILD_SCOPE = [{"action": "payments.transfer", "resource": "acct:**"}]


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def codes(d: Decision) -> list[str]:
    return [r.code for r in d.reasons]


def record(gw: Gateway, d: Decision) -> dict[str, Any]:
    assert d.log_index is not None
    [entry] = gw.store.entries(d.log_index, d.log_index + 1)
    value: dict[str, Any] = json.loads(entry.entry)
    return value


def delegate(
    kit: Kit, parent: str, holder: PrivateKey, subject: str, **kw: Any
) -> tuple[str, Runtime]:
    runtime = Runtime(subject, PrivateKey.generate())
    token = delegate_artifact(
        parent=parent,
        holder_key=holder,
        subject=subject,
        runtime_key=runtime.key.public,
        scope=kw.pop("scope", CHILD_SCOPE),
        now=NOW,
        **kw,
    )
    return token, runtime


def decide(
    gw: Gateway,
    runtime: Runtime,
    artifact: str,
    *,
    parent: str | None = None,
    audience: str = GATEWAY_ID,
    amount: int = 5,
) -> Decision:
    request = Request(
        action="payments.transfer",
        resource="acct:1",
        runtime=runtime.runtime_id,
        args={"amount": amount},
        parent=parent,
    )
    return gw.decide(runtime.submission(request, artifact, audience=audience, now=NOW))


def test_a_delegated_chain_proceeds_and_the_log_records_every_link(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)
    child, runner = delegate(kit, root, kit.runtime.key, "agent-2")
    grandchild, worker = delegate(kit, child, runner.key, "agent-3")
    d = decide(gw, worker, grandchild)
    assert d.outcome is Outcome.PROCEED, d.reasons
    rec = record(gw, d)
    assert len(rec["chain"]) == 3
    assert list(d.chain) == rec["chain"]
    links = rec["chain_links"]
    assert [link["sub"] for link in links] == ["agent-1", "agent-2", "agent-3"]
    assert [link["jti"] for link in links] == rec["chain"]
    assert links[0]["kid"] == kit.authority.public.thumbprint()
    assert links[1]["kid"] == kit.runtime.key.public.thumbprint()  # the root binds it
    assert links[1]["jkt"] == links[2]["kid"] == runner.key.public.thumbprint()


@pytest.mark.parametrize(
    "target",
    ["root-jti", "middle-jti", "middle-token", "middle-key", "middle-sub", "authority"],
)
def test_revoking_any_link_denies_every_descendant(kit: Kit, target: str) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)
    child, runner = delegate(kit, root, kit.runtime.key, "agent-2")
    grandchild, worker = delegate(kit, child, runner.key, "agent-3")
    assert decide(gw, worker, grandchild).outcome is Outcome.PROCEED
    art = gw._artifacts.verify(grandchild, now=NOW)
    kind, value = {
        "root-jti": ("jti", art.chain[0].jti),
        "middle-jti": ("jti", art.chain[1].jti),
        "middle-token": ("artifact", art.chain[1].digest),
        "middle-key": ("kid", runner.key.public.thumbprint()),
        "middle-sub": ("sub", "agent-2"),
        "authority": ("kid", kit.authority.public.thumbprint()),
    }[target]
    gw.store.revoke(kind, value, reason="compromised", now=NOW)
    d = decide(gw, worker, grandchild)
    assert codes(d) == ["artifact.revoked"]
    assert codes(decide(gw, runner, child)) == ["artifact.revoked"]


def test_revoking_an_exact_token_spares_another_artifact_with_its_jti(kit: Kit) -> None:
    """Whoever delegates a link chooses its jti, so a child can carry another artifact's
    (a victim's, read from a receipt). Revoking the child by its token denies the child
    and what descends from it, never the victim; revoking by the jti would deny both."""
    gw = kit.gateway()
    victim_runtime = Runtime("victim", PrivateKey.generate())
    victim = kit.artifact(ttl=3600, subject="victim", runtime_key=victim_runtime.key)
    victim_jti = gw._artifacts.verify(victim, now=NOW).jti
    evil, evil_runtime = delegate(
        kit, kit.artifact(ttl=3600), kit.runtime.key, "agent-evil", jti=victim_jti
    )
    below, below_runtime = delegate(kit, evil, evil_runtime.key, "agent-below")
    assert decide(gw, victim_runtime, victim).outcome is Outcome.PROCEED
    evil_link = gw._artifacts.verify(evil, now=NOW)
    assert evil_link.jti == victim_jti
    gw.store.revoke("artifact", evil_link.digest, reason="evil child", now=NOW)
    assert codes(decide(gw, evil_runtime, evil)) == ["artifact.revoked"]
    assert codes(decide(gw, below_runtime, below)) == ["artifact.revoked"]
    assert decide(gw, victim_runtime, victim).outcome is Outcome.PROCEED
    gw.store.revoke("jti", victim_jti, reason="by jti", now=NOW)
    assert codes(decide(gw, victim_runtime, victim)) == ["artifact.revoked"]


def test_uses_of_a_limited_ancestor_are_shared_by_its_children(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600, uses=2)
    a, runner_a = delegate(kit, root, kit.runtime.key, "agent-a")
    b, runner_b = delegate(kit, root, kit.runtime.key, "agent-b")
    assert decide(gw, runner_a, a).outcome is Outcome.PROCEED
    assert decide(gw, runner_b, b).outcome is Outcome.PROCEED
    assert codes(decide(gw, runner_a, a)) == ["artifact.exhausted"]


def test_an_ancestor_spent_between_decision_and_commit_is_named(kit: Kit) -> None:
    """The ancestor's last use goes to a sibling after this decision was evaluated (its
    check passed) and before its commit: the commit denies, naming the ancestor whose
    uses ran out, not the leaf's own budget."""
    gw = kit.gateway()
    root = kit.artifact(ttl=3600, uses=1)
    a, runner_a = delegate(kit, root, kit.runtime.key, "agent-a", uses=1)
    b, runner_b = delegate(kit, root, kit.runtime.key, "agent-b")
    request = Request(
        action="payments.transfer", resource="acct:1", runtime="agent-a", args={"amount": 5}
    )
    steps = gw._decide(runner_a.submission(request, a, audience=GATEWAY_ID, now=NOW))
    job = next(steps)  # evaluated: the root's one use was still there
    assert decide(gw, runner_b, b).outcome is Outcome.PROCEED  # the sibling takes it
    try:
        steps.send(gw.store.commit(job))
    except StopIteration as done:
        d: Decision = done.value
    root_jti = gw._artifacts.verify(root, now=NOW).jti
    assert [(r.code, r.detail) for r in d.reasons] == [
        ("artifact.exhausted", f"all 1 uses of {root_jti} are spent")
    ]
    assert record(gw, d)["outcome"] == "deny"


def test_a_delegated_artifact_is_still_judged_by_policy_and_scope(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)
    child, runner = delegate(
        kit,
        root,
        kit.runtime.key,
        "agent-2",
        scope=[
            {
                "action": "payments.transfer",
                "resource": "acct:**",
                "constraints": {"amount": {"max": 10}},
            }
        ],
    )
    assert codes(decide(gw, runner, child, amount=11)) == ["scope.constraint_violated"]


# --- execution lineage on one gateway -------------------------------------------------


def test_a_child_execution_names_its_parent_receipt(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)
    parent = decide(gw, kit.runtime, root)
    assert parent.outcome is Outcome.PROCEED
    assert parent.receipt
    child, runner = delegate(kit, root, kit.runtime.key, "agent-2")
    d = decide(gw, runner, child, parent=parent.receipt)
    assert d.outcome is Outcome.PROCEED, d.reasons
    rec = record(gw, d)
    assert rec["parent_decision"] == parent.decision_id
    assert rec["parent_gateway"] == GATEWAY_ID
    # the same artifact may name its own earlier execution as parent too
    assert decide(gw, kit.runtime, root, parent=parent.receipt).outcome is Outcome.PROCEED


def test_parent_receipts_that_do_not_count(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)
    good = decide(gw, kit.runtime, root)
    assert good.receipt
    denied = decide(gw, kit.runtime, root, amount=10**9)  # paused: it did not execute
    assert not denied.executes
    assert denied.receipt
    child, runner = delegate(kit, root, kit.runtime.key, "agent-2")
    unrelated = kit.artifact(ttl=3600, jti="unrelated-root")
    other = decide(gw, kit.runtime, unrelated)
    assert other.receipt
    tampered = good.receipt[:-3] + ("AAA" if not good.receipt.endswith("AAA") else "QQQ")
    for receipt, why in [
        (denied.receipt, "parent did not execute"),
        (tampered, "signature"),
        (other.receipt, "child does not descend from that parent's artifact"),
        ("not-a-receipt", "garbage"),
    ]:
        assert codes(decide(gw, runner, child, parent=receipt)) == ["lineage.broken"], why


def test_an_expired_parent_receipt_does_not_count(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=10**6)
    parent = decide(gw, kit.runtime, root)
    assert parent.receipt
    kit.clock.t = NOW + kit.config.receipt_ttl + 120
    request = Request(
        action="payments.transfer",
        resource="acct:1",
        runtime="agent-1",
        args={"amount": 5},
        parent=parent.receipt,
    )
    d = gw.decide(kit.runtime.submission(request, root, audience=GATEWAY_ID, now=int(kit.clock.t)))
    assert codes(d) == ["lineage.broken"]


def test_policy_can_require_a_parent(tmp_path: Path) -> None:
    policy = POLICY.replace(
        "rules:\n",
        'rules:\n  - name: orphans\n    match: {action: "payments.transfer"}\n'
        '    when: "!has(request.parent)"\n    effect: deny\n    reason: needs a parent\n',
        1,
    )
    kit = make_kit(tmp_path, policy=policy)
    try:
        gw = kit.gateway()
        root = kit.artifact(ttl=3600)
        orphan = decide(gw, kit.runtime, root)
        assert codes(orphan) == ["policy.denied"]
        # a reports read (not matched by the rule) gives a parent to cite
        report = Request(action="reports.read", resource="report:1", runtime="agent-1")
        reports = kit.artifact([{"action": "reports.read", "resource": "**"}], ttl=3600, jti="rep")
        parent = gw.decide(kit.runtime.submission(report, reports, audience=GATEWAY_ID, now=NOW))
        assert parent.outcome is Outcome.PROCEED
        assert parent.receipt
        child = decide(gw, kit.runtime, root, parent=parent.receipt)
        assert codes(child) == ["lineage.broken"]  # that parent's artifact is not an ancestor
    finally:
        kit.close()


# --- two gateways, one chain ----------------------------------------------------------


def _mesh_entry(node_id: str, key: PrivateKey) -> str:
    jwk = key.public.to_jwk()
    fields = ", ".join(f'{k} = "{v}"' for k, v in jwk.items())
    return f'\n[[mesh_node]]\nid = "{node_id}"\nkeys = [{{{fields}}}]\n'


def test_two_gateways_one_chain(tmp_path: Path) -> None:
    a_home, b_home, c_home = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for home, gid in ((a_home, "gw-a"), (b_home, "gw-b"), (c_home, "gw-c")):
        init_home(home, gateway_id=gid)
        (home / "policy.yaml").write_text(POLICY, encoding="utf-8")
    # One authority for the organisation: B and C trust A's authority key.
    for other in (b_home, c_home):
        shutil.copy(a_home / "trust.toml", other / "trust.toml")
    node = {h: read_private_key(h / "keys" / "node.jwk") for h in (a_home, b_home, c_home)}
    with (a_home / "trust.toml").open("a") as fh:
        fh.write(_mesh_entry("gw-b", node[b_home]))
    with (b_home / "trust.toml").open("a") as fh:
        fh.write(_mesh_entry("gw-a", node[a_home]))
    authority = read_private_key(a_home / "keys" / "authority.jwk")
    orchestrator = Runtime("orchestrator", PrivateKey.generate())
    from execgate.artifacts import issue_artifact

    root = issue_artifact(
        key=authority,
        issuer="example-authority",
        subject="orchestrator",
        audience=["gw-a", "gw-b", "gw-c"],
        runtime_key=orchestrator.key.public,
        scope=[{"action": "payments.*", "resource": "acct:**"}],
        now=NOW,
        ttl=3600,
    )
    sub_artifact, sub_agent = delegate_pair(root, orchestrator)
    clock = lambda: float(NOW)  # noqa: E731
    with (
        Gateway.open(a_home, now=clock) as a,
        Gateway.open(b_home, now=clock) as b,
        Gateway.open(c_home, now=clock) as c,
    ):
        parent = decide(a, orchestrator, root, audience="gw-a")
        assert parent.outcome is Outcome.PROCEED
        assert parent.receipt
        child = decide(b, sub_agent, sub_artifact, parent=parent.receipt, audience="gw-b")
        assert child.outcome is Outcome.PROCEED, child.reasons
        rec = record(b, child)
        assert rec["parent_decision"] == parent.decision_id
        assert rec["parent_gateway"] == "gw-a"
        tampered = parent.receipt.replace(".", ".A", 1)
        assert codes(decide(b, sub_agent, sub_artifact, parent=tampered, audience="gw-b")) == [
            "lineage.broken"
        ]
        # C does not trust A as a mesh node: A's receipt means nothing there
        untrusted = decide(c, sub_agent, sub_artifact, parent=parent.receipt, audience="gw-c")
        assert codes(untrusted) == ["lineage.broken"]
        # and a receipt from C, which B does not trust, is refused by B
        from_c = decide(c, orchestrator, root, audience="gw-c")
        assert from_c.receipt
        assert codes(
            decide(b, sub_agent, sub_artifact, parent=from_c.receipt, audience="gw-b")
        ) == ["lineage.broken"]
        # B revokes A's node key (a mesh peer's key lost): its receipts count no more.
        b.store.revoke("kid", node[a_home].public.thumbprint(), reason="node lost", now=NOW)
        revoked = decide(b, sub_agent, sub_artifact, parent=parent.receipt, audience="gw-b")
        assert codes(revoked) == ["lineage.broken"]
        assert "the parent receipt's signing key: kid " in revoked.reasons[0].detail
        assert "node lost" in revoked.reasons[0].detail


def delegate_pair(root: str, holder: Runtime) -> tuple[str, Runtime]:
    sub_agent = Runtime("sub-agent", PrivateKey.generate())
    token = delegate_artifact(
        parent=root,
        holder_key=holder.key,
        subject="sub-agent",
        runtime_key=sub_agent.key.public,
        scope=CHILD_SCOPE,
        now=NOW,
        audience=["gw-b", "gw-c"],
    )
    return token, sub_agent
