"""Execution lineage (DESIGN §3 stage 9): a request names its parent execution.

The parent is named by presenting its decision receipt. It counts only if the receipt
is signed by this gateway's node key or by a mesh node in the trust store, is still
valid, records a decision that executed (proceed or reroute), and the child's artifact
descends from the parent's artifact chain (or is the same artifact). Anything else is
``lineage.broken``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from execgate.errors import VerificationError
from execgate.jose import PublicKey
from execgate.receipts import verify_receipt_by
from execgate.trust import TrustStore

__all__ = ["ParentExecution", "verify_parent"]


@dataclass(frozen=True, slots=True)
class ParentExecution:
    decision_id: str
    gateway: str
    chain: tuple[str, ...]
    kid: str  # the key that signed the receipt (a revocation by kid takes it back)


def _broken(detail: str) -> VerificationError:
    return VerificationError("lineage.broken", detail)


def verify_parent(
    receipt: str,
    *,
    gateway_id: str,
    node_key: PublicKey,
    trust: TrustStore,
    child_links: Sequence[str],
    now: int,
    leeway: int,
) -> ParentExecution:
    """Verify a parent receipt for a child whose chain has the link digests ``child_links``
    (each link's token hash: jtis are chosen by whoever mints a link, digests are not)."""
    own = node_key.thumbprint()
    claims, kid = verify_receipt_by(
        receipt, keys={**trust.mesh_keys, own: node_key}, now=now, leeway=leeway
    )
    node = trust.mesh_node_for_kid(kid)
    signer = gateway_id if kid == own else node.id if node is not None else None
    if signer is None or claims.get("iss") != signer:
        raise _broken("the parent receipt's issuer does not own the key that signed it")
    if claims.get("outcome") not in ("proceed", "reroute"):
        raise _broken(f"the parent decision was {claims.get('outcome')!r}: it did not execute")
    decision_id, chain = claims.get("did"), claims.get("chain")
    if not isinstance(decision_id, str) or not decision_id:
        raise _broken("the parent receipt names no decision")
    links = claims.get("links")
    for value, what in ((chain, "artifact chain"), (links, "chain links")):
        if not isinstance(value, list) or not value or not all(isinstance(j, str) for j in value):
            raise _broken(f"the parent receipt names no {what}")
    assert isinstance(chain, list)
    assert isinstance(links, list)
    if list(child_links[: len(links)]) != links:
        raise _broken("the child's artifact does not descend from the parent's artifact")
    return ParentExecution(decision_id=decision_id, gateway=signer, chain=tuple(chain), kid=kid)
