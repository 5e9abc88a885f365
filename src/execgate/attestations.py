"""Environment attestations (DESIGN §4.4) and the artifact ``env`` conditions they satisfy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from execgate.errors import JoseError, VerificationError
from execgate.jose import PrivateKey, PublicKey, encode, verify
from execgate.trust import TrustStore

__all__ = [
    "ATTESTATION_TYP",
    "check_environment",
    "issue_attestation",
    "verify_attestation",
    "verify_attestation_by",
]

ATTESTATION_TYP: Final = "execgate-env+jwt"
MAX_ATTESTATION_BYTES: Final = 16 * 1024


def issue_attestation(
    *,
    key: PrivateKey,
    subject: str,
    runtime_key: PublicKey,
    env: Mapping[str, str],
    now: int,
    ttl: int,
) -> str:
    """An attester's statement that the runtime holding ``runtime_key`` runs in ``env``.

    The attestation names the runtime key (``cnf.jkt``), not only the runtime id: an id
    is chosen by whoever mints an artifact, a key is not, so an attestation of one
    runtime cannot be presented for another that merely claims its name.
    """
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    if not env or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must be a non-empty object of strings")
    header = {"typ": ATTESTATION_TYP, "kid": key.public.thumbprint()}
    claims = {
        "sub": subject,
        "iat": now,
        "exp": now + ttl,
        "env": dict(env),
        "cnf": {"jkt": runtime_key.thumbprint()},
    }
    return encode(header, claims, key)


def _untrusted(detail: str) -> VerificationError:
    return VerificationError("environment.untrusted", detail)


def verify_attestation(
    token: object, *, trust: TrustStore, runtime: str, jkt: str, now: int, leeway: int
) -> dict[str, str]:
    """Return the attested environment, or raise ``environment.untrusted``."""
    return verify_attestation_by(
        token, trust=trust, runtime=runtime, jkt=jkt, now=now, leeway=leeway
    )[0]


def verify_attestation_by(
    token: object, *, trust: TrustStore, runtime: str, jkt: str, now: int, leeway: int
) -> tuple[dict[str, str], str]:
    """``verify_attestation``, and the key id (thumbprint) of the attester key that
    signed it, which a revocation by ``kid`` takes back."""
    if token is None or token == "":
        raise _untrusted("the artifact has env conditions but no attestation was presented")
    if not isinstance(token, str):
        raise _untrusted("the attestation must be a compact JWS string")
    try:
        verified = verify(
            token, typ=ATTESTATION_TYP, max_size=MAX_ATTESTATION_BYTES, keys=trust.attester_keys
        )
    except JoseError as exc:
        raise _untrusted(f"attestation rejected: {exc.detail}") from exc
    claims: Mapping[str, Any] = verified.claims
    if set(claims) != {"sub", "iat", "exp", "env", "cnf"}:
        raise _untrusted("attestation claims must be exactly sub, iat, exp, env, cnf")
    if claims["sub"] != runtime:
        raise _untrusted("the attestation is about another runtime")
    cnf = claims["cnf"]
    if not isinstance(cnf, Mapping) or set(cnf) != {"jkt"} or cnf["jkt"] != jkt:
        raise _untrusted("the attestation is about another runtime key (cnf.jkt)")
    if now >= claims["exp"] + leeway:
        raise _untrusted(f"the attestation expired at {claims['exp']}")
    if claims["iat"] > now + leeway:
        raise _untrusted("the attestation is issued in the future")
    env = claims["env"]
    if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
        raise _untrusted("attestation env must be an object of strings")
    return dict(env), str(verified.header["kid"])


def check_environment(required: Mapping[str, tuple[str, ...]], attested: Mapping[str, str]) -> None:
    """Every required key must be attested with one of its accepted values."""
    for key, accepted in required.items():
        value = attested.get(key)
        if value is None:
            raise VerificationError("environment.mismatch", f"{key!r} is not attested")
        if value not in accepted:
            raise VerificationError(
                "environment.mismatch", f"{key!r} is {value!r}, required one of {list(accepted)}"
            )
