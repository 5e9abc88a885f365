"""Minting delegated artifacts (DESIGN §4.2): a holder narrows what it was given.

The runtime holding artifact P signs child C with the key P binds (``cnf.jkt``): C's
header carries that public key as ``jwk``, C's ``iss`` is its thumbprint and C's ``prf``
embeds P. ``delegate_artifact`` checks the child against its parent with the same rules
the gateway applies, and refuses to sign a child the gateway would refuse.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from execgate.artifacts import (
    ARTIFACT_TYP,
    MAX_ARTIFACT_BYTES,
    _parse_claims,
    parse_env,
    unverified_links,
)
from execgate.attenuation import widening
from execgate.errors import JoseError, VerificationError
from execgate.jose import PrivateKey, PublicKey, encode, parse_unverified
from execgate.scope import parse_grants
from execgate.trust import Authority

__all__ = ["delegate_artifact"]


def _parent_claims(parent: str) -> dict[str, Any]:
    """The parent's claims, with the shape every step below relies on (not verified:
    the gateway verifies the whole chain when the child is presented)."""
    try:
        parsed = parse_unverified(parent, max_size=MAX_ARTIFACT_BYTES)
    except JoseError as exc:
        raise ValueError(f"the parent is not a well-formed artifact: {exc.detail}") from exc
    if parsed.header.get("typ") != ARTIFACT_TYP:
        raise ValueError(f"the parent is a {parsed.header.get('typ')!r} token, not an artifact")
    claims = dict(parsed.claims)
    cnf, aud = claims.get("cnf"), claims.get("aud")
    window = (claims.get("exp"), claims.get("nbf", claims.get("iat")))
    for ok, missing in (
        (isinstance(cnf, dict) and isinstance(cnf.get("jkt"), str), "no cnf.jkt"),
        (all(type(t) is int for t in window), "no usable validity window"),
        (
            isinstance(aud, str)
            or (isinstance(aud, list) and bool(aud) and all(isinstance(a, str) for a in aud)),
            "no audience",
        ),
        (isinstance(claims.get("env", {}), dict), "an env that is not an object"),
        (isinstance(claims.get("gov", {}), dict), "a gov that is not an object"),
        (isinstance(claims.get("att", {}), dict), "an att that is not an object"),
    ):
        if not ok:
            raise ValueError(f"the parent is not a well-formed artifact: it has {missing}")
    return claims


def _chain_jtis(parent: str) -> set[object]:
    """The jti of the parent and of every link above it (``prf``, unverified)."""
    return {claims.get("jti") for claims in unverified_links(parent)}


def delegate_artifact(
    *,
    parent: str,
    holder_key: PrivateKey,
    subject: str,
    runtime_key: PublicKey,
    scope: Sequence[Mapping[str, Any]],
    now: int,
    ttl: int | None = None,
    audience: str | Sequence[str] | None = None,
    env: Mapping[str, str | Sequence[str]] | None = None,
    gov: Mapping[str, str] | None = None,
    att: Mapping[str, str] | None = None,
    uses: int | None = None,
    jti: str | None = None,
) -> str:
    """Mint a child of ``parent`` for ``subject``/``runtime_key``, signed by the holder.

    ``ttl`` defaults to the parent's remaining life and may not exceed it; ``audience``
    defaults to the parent's; ``env``, ``gov`` and ``att`` are added to the parent's (a
    key of the parent may only be narrowed, never dropped or rewritten); ``uses``
    defaults to the parent's.
    """
    p = _parent_claims(parent)
    if jti is not None and jti in _chain_jtis(parent):
        raise ValueError(f"jti {jti!r} is already a link's in the parent's chain: give a new one")
    holder = holder_key.public.thumbprint()
    if p["cnf"]["jkt"] != holder:
        raise ValueError("holder_key is not the key the parent artifact binds (its cnf.jkt)")
    p_exp: int = p["exp"]
    p_nbf: int = p["nbf"] if "nbf" in p else p["iat"]  # ints: checked by _parent_claims
    exp = p_exp if ttl is None else now + ttl
    if exp <= now:
        raise ValueError("the child would already be expired")
    p_env = p.get("env", {})
    child_env: dict[str, Any] = dict(p_env)
    for key, value in (env or {}).items():
        child_env[key] = list(value) if isinstance(value, list | tuple) else value
    child_gov = {**p.get("gov", {}), **(gov or {})}
    child_att = {**p.get("att", {}), **(att or {})}
    claims: dict[str, Any] = {
        "iss": holder,
        "sub": subject,
        "aud": p.get("aud")
        if audience is None
        else audience
        if isinstance(audience, str)
        else list(audience),
        "iat": now,
        "nbf": max(now, p_nbf),
        "exp": exp,
        "jti": jti or secrets.token_urlsafe(16),
        "scope": [dict(g) for g in scope],
        "cnf": {"jkt": runtime_key.thumbprint()},
        "prf": [parent],
    }
    if child_env:
        claims["env"] = child_env
    if child_gov:
        claims["gov"] = child_gov
    if child_att:
        claims["att"] = child_att
    child_uses = p.get("uses") if uses is None else uses
    if child_uses is not None:
        claims["uses"] = child_uses
    # Refuse to sign what verification would refuse to read, as issue_artifact does.
    try:
        _parse_claims("", claims, Authority(holder, {holder: holder_key.public}, ()), holder)
    except VerificationError as exc:
        raise ValueError(f"cannot delegate: {exc.detail}") from exc
    try:
        problem = widening(
            child_grants=parse_grants(claims["scope"]),
            parent_grants=parse_grants(p.get("scope")),
            child_window=(claims["nbf"], exp),
            parent_window=(p_nbf, p_exp),
            child_audience=[claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"],
            parent_audience=[p["aud"]] if isinstance(p.get("aud"), str) else p.get("aud", []),
            child_env=parse_env(child_env) if child_env else {},
            parent_env=parse_env(p_env) if p_env else {},
            child_gov=child_gov,
            parent_gov=p.get("gov", {}),
            child_uses=child_uses,
            parent_uses=p.get("uses"),
            child_att=child_att,
            parent_att=p.get("att", {}),
        )
    except (ValueError, VerificationError) as exc:
        raise ValueError(f"cannot delegate: {exc}") from exc
    if problem is not None:
        raise ValueError(f"the child would widen its parent: {problem}")
    token = encode({"typ": ARTIFACT_TYP, "jwk": holder_key.public.to_jwk()}, claims, holder_key)
    if len(token) > MAX_ARTIFACT_BYTES:
        raise ValueError(
            f"the delegated artifact is {len(token)} bytes; the limit is {MAX_ARTIFACT_BYTES}"
        )
    return token
