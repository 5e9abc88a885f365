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

from execgate.artifacts import ARTIFACT_TYP, MAX_ARTIFACT_BYTES, parse_env
from execgate.attenuation import widening
from execgate.errors import JoseError, VerificationError
from execgate.jose import PrivateKey, PublicKey, encode, parse_unverified
from execgate.scope import parse_grants

__all__ = ["delegate_artifact"]


def _parent_claims(parent: str) -> dict[str, Any]:
    try:
        return dict(parse_unverified(parent, max_size=MAX_ARTIFACT_BYTES).claims)
    except JoseError as exc:
        raise ValueError(f"the parent is not a well-formed artifact: {exc.detail}") from exc


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
    defaults to the parent's; ``env`` and ``gov`` are added to the parent's (a key of
    the parent may only be narrowed, never dropped); ``uses`` defaults to the parent's.
    """
    p = _parent_claims(parent)
    holder = holder_key.public.thumbprint()
    if p.get("cnf", {}).get("jkt") != holder:
        raise ValueError("holder_key is not the key the parent artifact binds (its cnf.jkt)")
    p_exp, p_nbf = p.get("exp"), p.get("nbf", p.get("iat"))
    if not isinstance(p_exp, int) or not isinstance(p_nbf, int):
        raise ValueError("the parent has no usable validity window")
    exp = p_exp if ttl is None else now + ttl
    if exp <= now:
        raise ValueError("the child would already be expired")
    p_env = p.get("env", {})
    child_env: dict[str, Any] = dict(p_env)
    for key, value in (env or {}).items():
        child_env[key] = list(value) if isinstance(value, list | tuple) else value
    child_gov = {**p.get("gov", {}), **(gov or {})}
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
    if att:
        claims["att"] = dict(att)
    child_uses = p.get("uses") if uses is None else uses
    if child_uses is not None:
        claims["uses"] = child_uses
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
