"""Proof of possession (DESIGN §4.3): the runtime signs each request with its bound key.

``Runtime`` is what an executor holds: its id and private key. ``Runtime.proof`` binds one
request (``rh``, the SHA-256 of its JCS canonical form) to one artifact (``ath``) for one
audience, with a fresh ``jti``. ``verify_proof`` is the gateway side.

An outcome reported over HTTP carries the same kind of proof (``typ:
execgate-outcome+jwt``, ``Runtime.outcome_proof``): signed by the key the decision bound,
naming the decision (``did``) and the hash of the report (``oh``, SHA-256 of the JCS of
``{decision_id, status, exit_code, result_digest}``), so only the runtime that was let
through can say how its execution ended; ``verify_outcome_proof`` is the gateway side.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from execgate.errors import JoseError, VerificationError
from execgate.jose import JTI, PrivateKey, canonical_json, encode, sha256_b64url, verify
from execgate.model import Request

__all__ = [
    "OUTCOME_PROOF_TYP",
    "PROOF_TYP",
    "Proof",
    "Runtime",
    "artifact_hash",
    "outcome_hash",
    "request_hash",
    "verify_outcome_proof",
    "verify_proof",
]

PROOF_TYP: Final = "execgate-proof+jwt"
OUTCOME_PROOF_TYP: Final = "execgate-outcome+jwt"
_OUTCOME_CLAIMS: Final = frozenset({"jti", "iat", "aud", "did", "oh"})
MAX_PROOF_BYTES: Final = 8 * 1024
_CLAIMS: Final = frozenset({"jti", "iat", "aud", "rh", "ath", "nonce"})


def request_hash(request: Request) -> str:
    """base64url(SHA-256(JCS(canonical request)))."""
    return sha256_b64url(canonical_json(request.canonical()))


def outcome_hash(
    decision_id: str, *, status: str, exit_code: int | None, result_digest: str | None
) -> str:
    """base64url(SHA-256(JCS(the outcome report))), as an outcome proof's ``oh``."""
    report = {
        "decision_id": decision_id,
        "status": status,
        "exit_code": exit_code,
        "result_digest": result_digest,
    }
    return sha256_b64url(canonical_json(report))


def artifact_hash(artifact: str) -> str:
    """base64url(SHA-256(artifact compact string))."""
    return sha256_b64url(artifact.encode("ascii"))


@dataclass(frozen=True, slots=True)
class Runtime:
    """An executor: its runtime id (the artifact's ``sub``) and the key the artifact binds."""

    runtime_id: str
    key: PrivateKey

    def proof(
        self,
        request: Request,
        artifact: str,
        *,
        audience: str,
        now: int,
        nonce: str | None = None,
    ) -> str:
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "aud": audience,
            "rh": request_hash(request),
            "ath": artifact_hash(artifact),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": PROOF_TYP, "jwk": self.key.public.to_jwk()}
        return encode(header, claims, self.key)

    def outcome_proof(
        self,
        decision_id: str,
        *,
        status: str,
        exit_code: int | None = None,
        result_digest: str | None = None,
        audience: str,
        now: int,
    ) -> str:
        """The proof for reporting a decision's outcome over HTTP (``Execgate-Proof`` on
        ``POST /v1/decisions/{id}/outcome``)."""
        claims = {
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "aud": audience,
            "did": decision_id,
            "oh": outcome_hash(
                decision_id, status=status, exit_code=exit_code, result_digest=result_digest
            ),
        }
        header = {"typ": OUTCOME_PROOF_TYP, "jwk": self.key.public.to_jwk()}
        return encode(header, claims, self.key)

    def submission(
        self,
        request: Request,
        artifact: str,
        *,
        audience: str,
        now: int,
        attestation: str | None = None,
    ) -> dict[str, Any]:
        """The wire shape of DESIGN §6, ready for ``Gateway.decide`` or ``POST /v1/decisions``."""
        return {
            "request": request.canonical(),
            "artifact": artifact,
            "proof": self.proof(request, artifact, audience=audience, now=now),
            "attestation": attestation,
        }


@dataclass(frozen=True, slots=True)
class Proof:
    jti: str
    issued_at: int
    jkt: str


def _invalid(detail: str) -> VerificationError:
    return VerificationError("identity.proof_invalid", detail)


def _signed_claims(
    token: object, *, typ: str, allowed: frozenset[str], jkt: str, bound: str
) -> Mapping[str, Any]:
    """The claims of a proof JWS of type ``typ`` signed by the key ``jkt`` names (the key
    ``bound`` names in the ``identity.mismatch`` detail), with no claim beyond
    ``allowed``; what both kinds of proof check first."""
    if token is None or token == "":
        raise VerificationError("identity.proof_missing", "no proof of possession was presented")
    if not isinstance(token, str):
        raise _invalid("the proof must be a compact JWS string")
    try:
        verified = verify(token, typ=typ, max_size=MAX_PROOF_BYTES, embedded_jwk=True)
    except JoseError as exc:
        raise _invalid(exc.detail) from exc
    if verified.key.thumbprint() != jkt:
        raise VerificationError(
            "identity.mismatch", f"the proof key is not the key {bound} (cnf.jkt)"
        )
    claims: Mapping[str, Any] = verified.claims
    if set(claims) - allowed:
        raise _invalid(f"unknown claims {sorted(set(claims) - allowed)}")
    return claims


def _fresh_for_us(
    claims: Mapping[str, Any], *, audiences: frozenset[str], now: int, max_age: int, leeway: int
) -> int:
    """A proof's ``iat`` once it is within ``max_age`` (and not in the future beyond
    ``leeway``) and its ``aud`` names one of ``audiences``."""
    iat = claims.get("iat")
    if not isinstance(iat, int):
        raise _invalid("iat is required")
    if iat > now + leeway:
        raise _invalid(f"iat {iat} is in the future")
    if now - iat > max_age:
        raise _invalid(f"proof is older than {max_age}s")
    aud = claims.get("aud")
    if not isinstance(aud, str) or aud not in audiences:  # a list is unhashable: not a set test
        raise _invalid("aud must be a string naming an audience of this gateway")
    return iat


def verify_proof(
    token: object,
    *,
    jkt: str,
    request_hash: str,
    ath: str,
    audiences: frozenset[str],
    now: int,
    max_age: int,
    leeway: int,
) -> Proof:
    """Verify the proof for a request (by its hash) and the artifact presented with it,
    by its hash ``ath`` (``artifact_hash``: a verified ``Artifact`` holds it as its
    ``digest``) (DESIGN §3 stage 5)."""
    claims = _signed_claims(
        token, typ=PROOF_TYP, allowed=_CLAIMS, jkt=jkt, bound="this artifact is bound to"
    )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not JTI.fullmatch(jti):
        raise _invalid("jti must be 16-128 base64url characters carrying at least 96 random bits")
    iat = _fresh_for_us(claims, audiences=audiences, now=now, max_age=max_age, leeway=leeway)
    if claims.get("rh") != request_hash:
        raise _invalid("rh does not match this request")
    if claims.get("ath") != ath:
        raise _invalid("ath does not match the presented artifact")
    nonce = claims.get("nonce")
    if nonce is not None and not isinstance(nonce, str):
        raise _invalid("nonce must be a string")
    return Proof(jti=jti, issued_at=iat, jkt=jkt)


def verify_outcome_proof(
    token: object,
    *,
    jkt: str,
    decision_id: str,
    report_hash: str,
    audiences: frozenset[str],
    now: int,
    max_age: int,
    leeway: int,
) -> None:
    """Verify the proof of an outcome report: signed by the key ``jkt`` names (the one the
    decision bound), for this decision, this report and this gateway, and fresh."""
    claims = _signed_claims(
        token, typ=OUTCOME_PROOF_TYP, allowed=_OUTCOME_CLAIMS, jkt=jkt, bound="this decision bound"
    )
    _fresh_for_us(claims, audiences=audiences, now=now, max_age=max_age, leeway=leeway)
    if claims.get("did") != decision_id:
        raise _invalid("did does not name this decision")
    if claims.get("oh") != report_hash:
        raise _invalid("oh does not match this outcome report")
