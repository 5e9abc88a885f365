"""Decision receipts (DESIGN §4.5): the gateway-signed form of a decision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from execgate.errors import JoseError, VerificationError
from execgate.jose import PrivateKey, PublicKey, encode, verify

__all__ = ["RECEIPT_TYP", "sign_receipt", "verify_receipt", "verify_receipt_by"]

RECEIPT_TYP: Final = "execgate-receipt+jwt"
MAX_RECEIPT_BYTES: Final = 16 * 1024


def sign_receipt(
    *, key: PrivateKey, gateway_id: str, record: Mapping[str, Any], log_index: int, ttl: int
) -> str:
    """Sign the decision record's public fields, plus where it sits in the log."""
    claims = {
        "iss": gateway_id,
        "iat": record["at"],
        "exp": record["at"] + ttl,
        "did": record["decision_id"],
        "outcome": record["outcome"],
        "reasons": [r["code"] for r in record["reasons"]],
        "rh": record["request_hash"],
        "jti": record["artifact_jti"],
        "chain": record["chain"],
        "links": [link["digest"] for link in record["chain_links"]],
        "pol": record["policy_hash"],
        "parent": record["parent_decision"],
        "route": record["route"],
        "approval": record["approval_id"],
        "log": {"id": gateway_id, "index": log_index},
    }
    return encode({"typ": RECEIPT_TYP, "kid": key.public.thumbprint()}, claims, key)


def verify_receipt(
    token: str, *, keys: Mapping[str, PublicKey], now: int, leeway: int
) -> dict[str, Any]:
    """Verify a receipt against pinned gateway keys; return its claims."""
    return verify_receipt_by(token, keys=keys, now=now, leeway=leeway)[0]


def verify_receipt_by(
    token: str, *, keys: Mapping[str, PublicKey], now: int, leeway: int
) -> tuple[dict[str, Any], str]:
    """Verify a receipt against pinned gateway keys; return its claims and the key id
    that signed it (so the caller can check the issuer owns that key)."""
    try:
        verified = verify(token, typ=RECEIPT_TYP, max_size=MAX_RECEIPT_BYTES, keys=keys)
    except JoseError as exc:
        raise VerificationError("lineage.broken", f"receipt rejected: {exc.detail}") from exc
    claims = dict(verified.claims)
    exp = claims.get("exp")
    if not isinstance(exp, int) or now >= exp + leeway:
        raise VerificationError("lineage.broken", "the receipt has expired")
    return claims, str(verified.header["kid"])
