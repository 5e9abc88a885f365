"""Authorization artifacts (DESIGN §4.1, §4.2): issue one, and verify one with its chain.

``verify_artifact`` is the safe entry point: it returns an ``Artifact`` only when the
token is well-formed and either signed by a trusted authority's pinned key (naming that
authority as ``iss``) or a delegated link whose whole chain verifies offline: each link
signed by the key its parent binds, and no wider than its parent in anything
(``attenuation``). The leaf must be inside its validity window and audience, and the
root may grant nothing beyond its authority's scope. Every failure raises
``VerificationError`` with an ``artifact.*`` or ``lineage.*`` reason code. Unknown
claims are refused rather than ignored: a condition someone wrote into an artifact and
that this gateway would not enforce must not look enforced.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from execgate.attenuation import widening
from execgate.errors import JoseError, VerificationError
from execgate.jose import (
    MAX_SAFE_INT,
    PrivateKey,
    PublicKey,
    encode,
    parse_unverified,
    sha256_b64url,
    verify,
)
from execgate.scope import Grant, parse_grants, patterns_of
from execgate.trust import Authority, TrustStore

__all__ = [
    "ARTIFACT_TYP",
    "DEFAULT_MAX_DEPTH",
    "MAX_ARTIFACT_BYTES",
    "Artifact",
    "ArtifactVerifier",
    "embedded_parent",
    "issue_artifact",
    "unverified_links",
    "verify_artifact",
]

ARTIFACT_TYP: Final = "execgate-artifact+jwt"
MAX_ARTIFACT_BYTES: Final = 16 * 1024
DEFAULT_MAX_DEPTH: Final = 8

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
    parent: Artifact | None = None  # set on a delegated artifact: the verified parent
    digest: str = ""  # base64url SHA-256 of the token: this exact link, whoever minted it
    # The links above this one, root first: gathered once (a decision reads the chain
    # several times, of an artifact verified once and kept), without this link itself,
    # which would make every artifact a reference cycle.
    _above: tuple[Artifact, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_above", () if self.parent is None else self.parent.chain)

    @property
    def chain(self) -> tuple[Artifact, ...]:
        """Every link from the root authority's artifact down to this one."""
        return (*self._above, self)

    @property
    def depth(self) -> int:
        """Delegation steps below the root: 0 for an artifact issued by an authority."""
        return 0 if self.parent is None else self.parent.depth + 1

    def revocation_keys(self) -> list[tuple[str, str]]:
        """What revoking would deny this artifact: any link's jti or exact token, the
        authority key, any holder or runtime key, any subject along the chain."""
        keys = [("kid", self.chain[0].kid)]
        for link in self.chain:
            keys += [("jti", link.jti), ("kid", link.jkt), ("sub", link.subject)]
            if link.digest:
                keys.append(("artifact", link.digest))
        return keys


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
    token: str,
    claims: Mapping[str, Any],
    authority: Authority,
    kid: str,
    parent: Artifact | None = None,
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
    if uses is not None and (
        not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= MAX_SAFE_INT
    ):
        raise _malformed(f"claim 'uses' must be an integer from 1 to {MAX_SAFE_INT}")
    try:
        # The chain's patterns with this link's: compiled on the event loop, so their
        # cost is bounded for the whole artifact, not link by link.
        above = () if parent is None else parent.chain
        grants = parse_grants(
            claims.get("scope"), compiled=patterns_of(g for link in above for g in link.grants)
        )
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
        parent=parent,
        digest=sha256_b64url(token.encode("ascii")) if token else "",
    )


def embedded_parent(claims: Mapping[str, Any]) -> str | None:
    """The parent token a delegated artifact's claims embed (``prf``: exactly one
    non-empty string), or None: no ``prf``, or one of another shape."""
    prf = claims.get("prf")
    if isinstance(prf, list) and len(prf) == 1 and isinstance(prf[0], str) and prf[0]:
        return prf[0]
    return None


def unverified_links(token: str) -> list[Mapping[str, Any]]:
    """The claims of ``token`` and of every link above it (``prf``), leaf first, read
    WITHOUT checking a signature: for limits and hints only. Stops at the first link
    that is not well formed (verifying it says what is wrong)."""
    links: list[Mapping[str, Any]] = []
    while True:  # each link lies inside the one below it, so it is shorter: this ends
        try:
            claims = parse_unverified(token, max_size=MAX_ARTIFACT_BYTES).claims
        except JoseError:
            return links
        links.append(claims)
        parent = embedded_parent(claims)
        if parent is None:
            return links
        token = parent


@lru_cache(maxsize=256)
def _claimed_depth(token: str) -> int:
    """How many links lie above ``token``, as its ``prf`` claims say (unverified): each
    token is read once, so a chain seen before costs a new leaf one parse."""
    try:
        parent = embedded_parent(parse_unverified(token, max_size=MAX_ARTIFACT_BYTES).claims)
    except JoseError:
        return 0  # verifying it says what is wrong
    if parent is None:
        return 0
    return 1 + _claimed_depth(parent)  # each link lies inside the one below: this ends


def _refuse_too_deep(token: object, max_depth: int) -> None:
    """DESIGN §3 stage 1: the chain's depth is a size limit, checked before any of its
    signatures (a chain too deep is refused as such, whatever else is wrong with it)."""
    if isinstance(token, str):
        depth = _claimed_depth(token)
        if depth > max_depth:
            raise VerificationError(
                "lineage.depth_exceeded", f"the chain is {depth} deep; the limit is {max_depth}"
            )


def _verify_signed(
    token: object, trust: TrustStore, verify_parent: Callable[[str], Artifact]
) -> Artifact:
    """The time-independent part of verifying one artifact (root or delegated)."""
    if token is None or token == "":
        raise VerificationError("artifact.missing", "no artifact was presented")
    if not isinstance(token, str):
        raise _malformed("the artifact must be a compact JWS string")
    try:
        parsed = parse_unverified(token, max_size=MAX_ARTIFACT_BYTES)
    except JoseError as exc:
        raise _malformed(exc.detail) from exc
    if "prf" in parsed.claims:
        if "jwk" not in parsed.header:
            raise _broken("a delegated artifact carries its holder's public key as jwk")
        return _verify_delegated(token, parsed.claims, verify_parent)
    return _verify_root(token, trust)


def _verify_root(token: str, trust: TrustStore) -> Artifact:
    """An artifact issued by an authority: pinned key, claims, issuer owns the key."""
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
    artifact = _parse_claims(token, verified.claims, authority, kid)
    if artifact.issuer != authority.id:
        raise VerificationError(
            "artifact.untrusted_issuer",
            f"iss {artifact.issuer!r} does not own signing key {kid} (owner: {authority.id!r})",
        )
    return artifact


def _broken(detail: str) -> VerificationError:
    return VerificationError("lineage.broken", detail)


def _verify_delegated(
    token: str, claims: Mapping[str, Any], verify_parent: Callable[[str], Artifact]
) -> Artifact:
    """A link of a delegation chain (DESIGN §4.2): its parent first, then the link."""
    embedded = embedded_parent(claims)
    if embedded is None:
        raise _broken("prf must embed exactly one parent artifact")
    parent = verify_parent(embedded)
    try:
        verified = verify(token, typ=ARTIFACT_TYP, max_size=MAX_ARTIFACT_BYTES, embedded_jwk=True)
    except JoseError as exc:
        if exc.kind == "malformed":
            raise _malformed(f"delegated artifact: {exc.detail}") from exc
        raise _broken(f"delegated artifact: {exc.detail}") from exc
    holder = verified.key.thumbprint()
    if holder != parent.jkt:
        raise _broken("the link is signed by a key its parent does not bind (cnf.jkt)")
    child = _parse_claims(token, verified.claims, parent.authority, holder, parent)
    if child.issuer != holder:
        raise _broken("a delegated artifact's iss must be the thumbprint of the key that signed it")
    if any(link.jti == child.jti for link in parent.chain):
        raise _broken(f"jti {child.jti} appears twice in the chain")
    problem = widening(
        child_grants=child.grants,
        parent_grants=parent.grants,
        child_window=(child.not_before, child.expires),
        parent_window=(parent.not_before, parent.expires),
        child_audience=child.audience,
        parent_audience=parent.audience,
        child_env=child.env,
        parent_env=parent.env,
        child_gov=child.gov,
        parent_gov=parent.gov,
        child_uses=child.uses,
        parent_uses=parent.uses,
        child_att=child.claims.get("att") or {},
        parent_att=parent.claims.get("att") or {},
    )
    if problem is not None:
        raise VerificationError("lineage.attenuation_violated", problem)
    return child


def _check_in_force(
    artifact: Artifact, *, audiences: frozenset[str], now: int, leeway: int, max_depth: int
) -> Artifact:
    """The checks that depend on the moment and on this gateway's limits and audiences,
    re-run on every use. Checking the leaf's window and audience is enough: every link
    lies inside its parent's."""
    if artifact.depth > max_depth:
        raise VerificationError(
            "lineage.depth_exceeded",
            f"the chain is {artifact.depth} deep; the limit is {max_depth}",
        )
    if now >= artifact.expires + leeway:
        raise VerificationError("artifact.expired", f"expired at {artifact.expires}")
    if now + leeway < artifact.not_before:
        raise VerificationError("artifact.not_yet_valid", f"valid from {artifact.not_before}")
    for link in artifact.chain:  # as a proof's or attestation's: not issued in the future
        if now + leeway < link.claims["iat"]:
            raise VerificationError(
                "artifact.not_yet_valid", f"issued at {link.claims['iat']}, in the future"
            )
    if not audiences.intersection(artifact.audience):
        raise VerificationError(
            "artifact.wrong_audience",
            f"aud {list(artifact.audience)} names no audience of this gateway",
        )
    return artifact


def _within_authority(artifact: Artifact) -> Artifact:
    """``artifact`` once its root grants nothing beyond what the trust store lets its
    authority grant (every link is inside the root). It depends only on the signed
    chain and the trust store, so it is remembered with the signature."""
    root = artifact.chain[0]
    authority = root.authority
    for grant in root.grants:
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
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Artifact:
    """Verify an artifact and its whole delegation chain offline, or raise
    ``VerificationError`` (DESIGN §3 stages 2 and 3)."""

    def verify_parent(parent: str) -> Artifact:
        return _verify_signed(parent, trust, verify_parent)

    _refuse_too_deep(token, max_depth)
    artifact = _within_authority(_verify_signed(token, trust, verify_parent))
    return _check_in_force(
        artifact, audiences=audiences, now=now, leeway=leeway, max_depth=max_depth
    )


class ArtifactVerifier:
    """``verify_artifact`` for one gateway, remembering tokens whose signature verified.

    A token string is the exact signed bytes, so its signature, claims, key ownership
    and (for a delegated link) its whole verified chain cannot change while the trust
    store does not (the store is immutable; a new one needs a new verifier), and neither
    can whether its authority may grant what it grants. Every link is remembered by its
    token, so a chain seen once costs no signature checks again. Depth, validity window
    and audience are re-checked on every use; revocation and replay are checked for every
    decision in its commit. Failures are never remembered.
    """

    def __init__(
        self,
        *,
        trust: TrustStore,
        audiences: frozenset[str],
        leeway: int,
        max_depth: int = DEFAULT_MAX_DEPTH,
        size: int = 1024,
    ):
        self.trust = trust
        self._audiences = audiences
        self._leeway = leeway
        self._max_depth = max_depth
        self._signed = lru_cache(maxsize=size)(self._verify_signed)

    def _verify_signed(self, token: str) -> Artifact:
        # Only for a token not remembered (and each link above it): a chain too deep is
        # refused before its signatures are checked. Failures are not remembered.
        _refuse_too_deep(token, self._max_depth)
        return _within_authority(_verify_signed(token, self.trust, self._signed))

    def verify(self, token: object, *, now: int) -> Artifact:
        if isinstance(token, str) and 0 < len(token) <= MAX_ARTIFACT_BYTES:
            artifact = self._signed(token)
        else:
            artifact = _within_authority(_verify_signed(token, self.trust, self._signed))
        return _check_in_force(
            artifact,
            audiences=self._audiences,
            now=now,
            leeway=self._leeway,
            max_depth=self._max_depth,
        )


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
