"""Authorization artifacts (DESIGN §4.1): issue one, and verify one against the trust store.

``verify_artifact`` is the safe entry point: it returns an ``Artifact`` only when the
token is well-formed, signed by a trusted authority's pinned key, names that authority
as ``iss``, is inside its validity window and audience, and grants nothing beyond the
authority's own scope. Every failure raises ``VerificationError`` with an ``artifact.*``
reason code. Unknown claims are refused rather than ignored: a condition someone wrote
into an artifact and that this gateway would not enforce must not look enforced.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from execgate.errors import JoseError, VerificationError
from execgate.jose import PrivateKey, PublicKey, encode, verify
from execgate.scope import Grant, parse_grants
from execgate.trust import Authority, TrustStore

__all__ = [
    "ARTIFACT_TYP",
    "MAX_ARTIFACT_BYTES",
    "Artifact",
    "ArtifactVerifier",
    "issue_artifact",
    "verify_artifact",
]

ARTIFACT_TYP: Final = "execgate-artifact+jwt"
MAX_ARTIFACT_BYTES: Final = 16 * 1024

_CLAIMS: Final = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "iat",
        "nbf",
        "exp",
        "jti",
        "scope",
        "cnf",
        "env",
        "gov",
        "att",
        "uses",
        "prf",
    }
)
_GOV_KEYS: Final = frozenset({"policy", "ticket", "purpose", "classification"})
_ATT_KEYS: Final = frozenset({"on_behalf_of", "requested_by", "reason"})


@dataclass(frozen=True, slots=True)
class Artifact:
    """A verified artifact. Only ``verify_artifact`` builds one from a token."""

    token: str
    claims: Mapping[str, Any]
    authority: Authority
    kid: str
    issuer: str
    subject: str
    audience: tuple[str, ...]
    not_before: int
    expires: int
    jti: str
    grants: tuple[Grant, ...]
    jkt: str
    env: Mapping[str, tuple[str, ...]]
    gov: Mapping[str, str]
    uses: int | None


def _malformed(detail: str) -> VerificationError:
    return VerificationError("artifact.malformed", detail)


def _str(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise _malformed(f"claim {name!r} must be a non-empty string")
    return value


def _string_map(name: str, obj: object, allowed: frozenset[str] | None) -> dict[str, str]:
    if not isinstance(obj, Mapping):
        raise _malformed(f"claim {name!r} must be an object")
    if allowed is not None and set(obj) - allowed:
        raise _malformed(f"claim {name!r} has unknown keys {sorted(set(obj) - allowed)}")
    if not all(isinstance(v, str) for v in obj.values()):
        raise _malformed(f"claim {name!r} values must be strings")
    return dict(obj)


def parse_env(obj: object) -> dict[str, tuple[str, ...]]:
    """``env`` conditions: each key maps to one required string or a list of accepted ones."""
    if not isinstance(obj, Mapping) or not obj:
        raise _malformed("claim 'env' must be a non-empty object")
    out = {}
    for key, value in obj.items():
        options = value if isinstance(value, list) else [value]
        if not options or not all(isinstance(v, str) for v in options):
            raise _malformed(
                f"env condition {key!r} must be a string or a non-empty list of strings"
            )
        out[key] = tuple(options)
    return out


def _audience(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    values = aud if isinstance(aud, list) else [aud]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise _malformed("claim 'aud' must be a string or a non-empty list of strings")
    return tuple(values)


def _parse_claims(
    token: str, claims: Mapping[str, Any], authority: Authority, kid: str
) -> Artifact:
    unknown = set(claims) - _CLAIMS
    if unknown:
        raise _malformed(f"unknown claims {sorted(unknown)}")
    for name in ("iat", "exp"):
        if name not in claims:
            raise _malformed(f"claim {name!r} is required")
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping) or set(cnf) != {"jkt"} or not isinstance(cnf["jkt"], str):
        raise _malformed("claim 'cnf' must be {\"jkt\": <RFC 7638 thumbprint>}")
    uses = claims.get("uses")
    if uses is not None and (not isinstance(uses, int) or isinstance(uses, bool) or uses < 1):
        raise _malformed("claim 'uses' must be a positive integer")
    try:
        grants = parse_grants(claims.get("scope"))
    except ValueError as exc:
        raise _malformed(f"claim 'scope': {exc}") from exc
    if "att" in claims:
        _string_map("att", claims["att"], _ATT_KEYS)
    return Artifact(
        token=token,
        claims=claims,
        authority=authority,
        kid=kid,
        issuer=_str(claims, "iss"),
        subject=_str(claims, "sub"),
        audience=_audience(claims),
        not_before=claims.get("nbf", claims["iat"]),
        expires=claims["exp"],
        jti=_str(claims, "jti"),
        grants=grants,
        jkt=cnf["jkt"],
        env=parse_env(claims["env"]) if "env" in claims else {},
        gov=_string_map("gov", claims["gov"], _GOV_KEYS) if "gov" in claims else {},
        uses=uses,
    )


def _verify_signed(token: object, trust: TrustStore) -> Artifact:
    """The time-independent part: strict JWS, pinned key, claims, issuer owns the key."""
    if token is None or token == "":
        raise VerificationError("artifact.missing", "no artifact was presented")
    if not isinstance(token, str):
        raise _malformed("the artifact must be a compact JWS string")
    try:
        verified = verify(
            token, typ=ARTIFACT_TYP, max_size=MAX_ARTIFACT_BYTES, keys=trust.authority_keys
        )
    except JoseError as exc:
        code = {
            "malformed": "artifact.malformed",
            "unknown_key": "artifact.untrusted_issuer",
            "signature_invalid": "artifact.signature_invalid",
        }[exc.kind]
        raise VerificationError(code, exc.detail) from exc
    kid = verified.header["kid"]
    authority = trust.authority_for_kid(kid)
    if authority is None:  # the key set and the index come from one store; belt and braces
        raise VerificationError("artifact.untrusted_issuer", f"key {kid} is not trusted")
    claims = verified.claims
    if "prf" in claims:
        raise VerificationError(
            "lineage.broken", "delegated artifacts (prf) are not accepted by this gateway yet"
        )
    artifact = _parse_claims(token, claims, authority, kid)
    if artifact.issuer != authority.id:
        raise VerificationError(
            "artifact.untrusted_issuer",
            f"iss {artifact.issuer!r} does not own signing key {kid} (owner: {authority.id!r})",
        )
    return artifact


def _check_in_force(
    artifact: Artifact, *, audiences: frozenset[str], now: int, leeway: int
) -> Artifact:
    """The checks that depend on the moment and on this gateway, re-run on every use."""
    if now >= artifact.expires + leeway:
        raise VerificationError("artifact.expired", f"expired at {artifact.expires}")
    if now + leeway < artifact.not_before:
        raise VerificationError("artifact.not_yet_valid", f"valid from {artifact.not_before}")
    if not audiences.intersection(artifact.audience):
        raise VerificationError(
            "artifact.wrong_audience",
            f"aud {list(artifact.audience)} names no audience of this gateway",
        )
    authority = artifact.authority
    for grant in artifact.grants:
        if not any(grant.within(allowed) for allowed in authority.scope):
            raise VerificationError(
                "artifact.untrusted_issuer",
                f"authority {authority.id!r} may not grant {grant.action} on {grant.resource}"
                " with these constraints",
            )
    return artifact


def verify_artifact(
    token: object,
    *,
    trust: TrustStore,
    audiences: frozenset[str],
    now: int,
    leeway: int,
) -> Artifact:
    """Verify a root artifact (DESIGN §3 stage 2) or raise ``VerificationError``."""
    artifact = _verify_signed(token, trust)
    return _check_in_force(artifact, audiences=audiences, now=now, leeway=leeway)


class ArtifactVerifier:
    """``verify_artifact`` for one gateway, remembering tokens whose signature verified.

    A token string is the exact signed bytes, so its signature, claims and key ownership
    cannot change while the trust store does not (the store is immutable; a new one
    needs a new verifier). Validity window, audience and the authority's scope are
    re-checked on every use; revocation and replay are checked by the pipeline every
    time. Failures are never cached.
    """

    def __init__(
        self, *, trust: TrustStore, audiences: frozenset[str], leeway: int, size: int = 1024
    ):
        self.trust = trust
        self._audiences = audiences
        self._leeway = leeway
        self._signed = lru_cache(maxsize=size)(self._verify_signed)

    def _verify_signed(self, token: str) -> Artifact:
        return _verify_signed(token, self.trust)

    def verify(self, token: object, *, now: int) -> Artifact:
        if isinstance(token, str) and 0 < len(token) <= MAX_ARTIFACT_BYTES:
            artifact = self._signed(token)
        else:
            artifact = _verify_signed(token, self.trust)
        return _check_in_force(artifact, audiences=self._audiences, now=now, leeway=self._leeway)


def issue_artifact(
    *,
    key: PrivateKey,
    issuer: str,
    subject: str,
    audience: str | Sequence[str],
    runtime_key: PublicKey,
    scope: Sequence[Mapping[str, Any]],
    now: int,
    ttl: int,
    not_before: int | None = None,
    jti: str | None = None,
    env: Mapping[str, str | Sequence[str]] | None = None,
    gov: Mapping[str, str] | None = None,
    att: Mapping[str, str] | None = None,
    uses: int | None = None,
) -> str:
    """Mint an artifact signed by an authority key. Claims are checked before signing."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "iat": now,
        "nbf": now if not_before is None else not_before,
        "exp": now + ttl,
        "jti": jti or secrets.token_urlsafe(16),
        "scope": [dict(g) for g in scope],
        "cnf": {"jkt": runtime_key.thumbprint()},
    }
    if env:
        # Lists are copied; anything else is passed on for _parse_claims to refuse.
        claims["env"] = {k: list(v) if isinstance(v, list | tuple) else v for k, v in env.items()}
    if gov:
        claims["gov"] = dict(gov)
    if att:
        claims["att"] = dict(att)
    if uses is not None:
        claims["uses"] = uses
    # Refuse to sign what verification would refuse to read.
    dummy = Authority(issuer, {key.public.thumbprint(): key.public}, ())
    try:
        _parse_claims("", claims, dummy, key.public.thumbprint())
    except VerificationError as exc:
        raise ValueError(exc.detail) from exc
    header = {"typ": ARTIFACT_TYP, "kid": key.public.thumbprint()}
    return encode(header, claims, key)
