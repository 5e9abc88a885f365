"""What the log answers: the cascade of a revocation and the lineage of a decision."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gatekit import GATEWAY_ID, NOW, Kit, make_kit

from execgate.audit.query import cascade, lineage_tree
from execgate.delegation import delegate_artifact
from execgate.jose import PrivateKey, parse_unverified
from execgate.model import Decision, Outcome, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime

SCOPE = [{"action": "payments.transfer", "resource": "acct:**"}]


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def run(gw: Gateway, runtime: Runtime, artifact: str, parent: str | None = None) -> Decision:
    request = Request(
        action="payments.transfer",
        resource="acct:1",
        runtime=runtime.runtime_id,
        args={"amount": 5},
        parent=parent,
    )
    d = gw.decide(runtime.submission(request, artifact, audience=GATEWAY_ID, now=NOW))
    assert d.outcome is Outcome.PROCEED, d.reasons
    return d


def child_of(parent: str, holder: PrivateKey, subject: str) -> tuple[str, Runtime]:
    runtime = Runtime(subject, PrivateKey.generate())
    token = delegate_artifact(
        parent=parent,
        holder_key=holder,
        subject=subject,
        runtime_key=runtime.key.public,
        scope=SCOPE,
        now=NOW,
    )
    return token, runtime


def jti(token: str) -> str:
    value = parse_unverified(token, max_size=1 << 20).claims["jti"]
    assert isinstance(value, str)
    return value


def test_cascade_names_every_descendant_and_nothing_else(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)
    other = kit.artifact(ttl=3600, jti="other-root")
    child, runner = child_of(root, kit.runtime.key, "agent-2")
    grandchild, worker = child_of(child, runner.key, "agent-3")
    d_root, d_child, d_grand = (
        run(gw, kit.runtime, root),
        run(gw, runner, child),
        run(gw, worker, grandchild),
    )
    d_other = run(gw, kit.runtime, other)

    by_middle = cascade(gw.store, "jti", jti(child))
    assert by_middle.artifacts == (jti(child), jti(grandchild))
    assert [d[1] for d in by_middle.decisions] == [d_child.decision_id, d_grand.decision_id]

    by_root = cascade(gw.store, "jti", jti(root))
    assert {d[1] for d in by_root.decisions} == {
        d_root.decision_id,
        d_child.decision_id,
        d_grand.decision_id,
    }
    assert d_other.decision_id not in {d[1] for d in by_root.decisions}

    by_key = cascade(gw.store, "kid", runner.key.public.thumbprint())
    assert {d[1] for d in by_key.decisions} == {d_child.decision_id, d_grand.decision_id}

    by_sub = cascade(gw.store, "sub", "agent-3")
    assert [d[1] for d in by_sub.decisions] == [d_grand.decision_id]
    assert by_sub.artifacts == (jti(grandchild),)

    with pytest.raises(ValueError, match="kind"):
        cascade(gw.store, "nope", "x")


def test_cascade_names_decisions_that_stood_on_an_attester_or_parent_receipt_key(
    kit: Kit,
) -> None:
    """Revoking an attester's key denies what its attestations let through
    (environment.untrusted), and a node key the receipts it signed (lineage.broken):
    the report names the decisions that stood on them, as the revocation will."""
    gw = kit.gateway()
    token = kit.artifact([{"action": "reports.read", "resource": "**"}], env={"region": ["eu"]})
    attested = gw.decide(
        kit.submission(
            kit.request("reports.read", "report:q3"),
            token,
            attestation=kit.attestation({"region": "eu"}),
        )
    )
    assert attested.outcome is Outcome.PROCEED, attested.reasons
    root = kit.artifact(ttl=3600)
    plain = run(gw, kit.runtime, root)
    assert plain.receipt is not None
    child = run(gw, kit.runtime, root, parent=plain.receipt)

    by_attester = cascade(gw.store, "kid", kit.attester.public.thumbprint())
    assert [d[1] for d in by_attester.decisions] == [attested.decision_id]
    assert by_attester.artifacts == ()  # no artifact is revoked by it
    by_node = cascade(gw.store, "kid", gw.node_key.public.thumbprint())
    assert [d[1] for d in by_node.decisions] == [child.decision_id]
    [entry] = gw.store.entries(child.log_index or 0, (child.log_index or 0) + 1)
    assert json.loads(entry.entry)["grounds"] == [
        {"kind": "kid", "value": gw.node_key.public.thumbprint(), "code": "lineage.broken"}
    ]


def test_lineage_tree_climbs_to_the_oldest_parent_and_shows_every_child(kit: Kit) -> None:
    gw = kit.gateway()
    root = kit.artifact(ttl=3600)
    child, runner = child_of(root, kit.runtime.key, "agent-2")
    top = run(gw, kit.runtime, root)
    assert top.receipt
    mid = run(gw, runner, child, parent=top.receipt)
    sibling = run(gw, kit.runtime, root, parent=top.receipt)
    assert mid.receipt
    leaf = run(gw, runner, child, parent=mid.receipt)

    tree = lineage_tree(gw.store, leaf.decision_id)
    assert tree is not None
    assert tree.decision_id == top.decision_id
    assert [c.decision_id for c in tree.children] == [mid.decision_id, sibling.decision_id]
    assert [c.decision_id for c in tree.children[0].children] == [leaf.decision_id]
    assert tree.children[0].chain == [jti(root), jti(child)]
    as_json = tree.to_json()
    assert as_json["children"][0]["children"][0]["decision_id"] == leaf.decision_id
    assert lineage_tree(gw.store, "no-such-decision") is None
