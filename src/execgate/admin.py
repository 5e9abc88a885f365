"""Admin tokens: who may revoke, review over HTTP, reload the policy or export the log.

An admin proves who they are with a short-lived compact JWS, ``typ:
execgate-admin+jwt``, signed with a key listed under ``[[admin]]`` in the trust store
(``kid`` is its RFC 7638 thumbprint, looked up in that pinned set only; the strict codec
of ``execgate.jose`` does the rest). Claims, all required and no others:

    iss   the admin id (must be the ``[[admin]]`` that holds the signing key)
    aud   the gateway id (a token for one gateway is worthless at another)
    iat   issued at; not in the future beyond the leeway
    exp   expiry; at most ``MAX_TTL`` (one hour) after ``iat``
    jti   unique id, 16-128 characters: each token is good for ONE call; the gateway
          records it with the call's audit record, atomically, so a captured token
          cannot be replayed
    htm   the HTTP method it is for (``POST``)
    htu   the request path it is for (``/v1/revocations``), without the query, as the
          gateway routes it: percent-decoded
    htq   the request's query string exactly as sent, without the ``?`` (``start=0&end=9``;
          empty for a call without one)
    bh    base64url SHA-256 of the request body, byte for byte as sent (of no bytes for
          a call without a body)

``htm``/``htu`` bind a token to one call, as DPoP binds a proof (RFC 9449 §4.2): a token
minted to list approvals cannot revoke, even for an admin who holds both roles. ``htq``
and ``bh`` bind it to what the call says, which DPoP leaves to TLS: a token taken off the
wire (a gateway served without TLS, a proxy that logs headers) and sent first with
another query or body cannot revoke something else than its admin asked to, record
another review, nor read other log entries. Single use costs nothing to a command-line
caller, which mints a token per call.

Which calls an admin may make comes from the trust store, not from the token: the
``roles`` of their ``[[admin]]`` (``ADMIN_ROLES``). A token that does not verify is
``admin.unauthenticated`` (HTTP 401); a valid one whose admin lacks the role a route
needs is ``admin.forbidden`` (403). Both are audited by the server, never with the token.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Final

from execgate.errors import AdminError, JoseError
from execgate.jose import JTI, PrivateKey, encode, sha256_b64url, verify
from execgate.trust import ADMIN_ROLES, Admin, TrustStore, signer_refusal

__all__ = [
    "ADMIN_ROLES",
    "ADMIN_TYP",
    "MAX_TTL",
    "AdminError",
    "AdminToken",
    "authorize",
    "check_body",
    "issue_admin_token",
    "verify_admin_token",
]

ADMIN_TYP: Final = "execgate-admin+jwt"
MAX_TTL: Final = 3600
MAX_TOKEN_BYTES: Final = 4096
UNAUTHENTICATED: Final = "admin.unauthenticated"
FORBIDDEN: Final = "admin.forbidden"
_CLAIMS: Final = frozenset({"iss", "aud", "iat", "exp", "jti", "htm", "htu", "htq", "bh"})
_METHOD: Final = re.compile(r"[A-Z]{1,16}")
_QUERY: Final = re.compile(r"[!-~]*")  # what a client sends: printable ASCII, no space


@dataclass(frozen=True, slots=True)
class AdminToken:
    """A verified admin token: whose, which key, the id that makes it single-use, and the
    hash of the one body it may carry (``check_body``)."""

    admin: Admin
    kid: str
    jti: str
    expires: int
    method: str
    path: str
    query: str
    body_hash: str


def issue_admin_token(
    *,
    key: PrivateKey,
    admin: str,
    audience: str,
    method: str,
    path: str,
    now: int,
    ttl: int = 60,
    query: str = "",
    body: bytes = b"",
) -> str:
    """A token for one call ``method path?query`` with ``body`` (exactly the query string
    and bytes the call will send) at gateway ``audience``, valid ``ttl`` seconds."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be within 1..{MAX_TTL} seconds")
    if not _METHOD.fullmatch(method):
        raise ValueError("method must be an upper-case HTTP method such as POST")
    if not path.startswith("/"):
        raise ValueError("the path must start with '/' (/v1/revocations, say)")
    if "?" in path:
        raise ValueError("path must be the request path without its query (pass that as query)")
    if query.startswith("?") or "#" in query:
        raise ValueError("query must be the query string as sent, without '?' or a fragment")
    if not _QUERY.fullmatch(query):
        raise ValueError(
            "query must be printable ASCII, as a client sends it: percent-encode anything"
            " else (a space is %20)"
        )
    claims = {
        "iss": admin,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(18),
        "htm": method,
        "htu": path,
        "htq": query,
        "bh": sha256_b64url(body),
    }
    return encode({"typ": ADMIN_TYP, "kid": key.public.thumbprint()}, claims, key)


def _refuse(detail: str) -> AdminError:
    return AdminError(UNAUTHENTICATED, detail)


def verify_admin_token(
    token: str,
    *,
    trust: TrustStore,
    audiences: frozenset[str],
    method: str,
    path: str,
    query: str,
    now: int,
    leeway: int,
) -> AdminToken:
    """The admin ``token`` proves, for the call ``method path?query`` now (``query`` the
    raw query string, empty for none); or ``AdminError`` (``admin.unauthenticated``)
    saying why not. The call's body is the caller's to check
    with ``check_body`` before acting on it (a server reads the body only once the token
    verified), and so is single use (``AdminToken.jti``, remembered until ``expires``)."""
    try:
        verified = verify(token, typ=ADMIN_TYP, max_size=MAX_TOKEN_BYTES, keys=trust.admin_keys)
    except JoseError as exc:
        raise _refuse(signer_refusal(exc, what="token", signer="admin")) from exc
    claims = verified.claims
    if set(claims) != _CLAIMS:
        missing, extra = sorted(_CLAIMS - set(claims)), sorted(set(claims) - _CLAIMS)
        raise _refuse(f"the token's claims are wrong (missing {missing}, unknown {extra})")
    kid: str = verified.header["kid"]
    admin = trust.admin_for_kid(kid)
    assert admin is not None  # the key came from the admin key set
    if claims["iss"] != admin.id:
        raise _refuse(f"the token names {claims['iss']!r} but is signed by {admin.id!r}")
    if not isinstance(claims["aud"], str) or claims["aud"] not in audiences:
        raise _refuse("the token is for another gateway (aud)")
    iat, exp = claims["iat"], claims["exp"]  # integers: the codec checks NumericDates
    if exp - iat > MAX_TTL or exp <= iat:
        raise _refuse(f"the token's lifetime must be 1..{MAX_TTL} seconds")
    if iat > now + leeway:
        raise _refuse("the token is issued in the future")
    if now >= exp + leeway:
        raise _refuse("the token has expired")
    jti = claims["jti"]
    if not isinstance(jti, str) or not JTI.fullmatch(jti):
        raise _refuse("the token's jti must be 16-128 base64url characters")
    if claims["htm"] != method or claims["htu"] != path:
        raise _refuse(f"the token is for another call, not {method} {path}")
    if claims["htq"] != query:
        raise _refuse(
            "the token is for another query (htq): mint it over exactly the query string"
            " the call sends"
        )
    body_hash = claims["bh"]
    if not isinstance(body_hash, str):
        raise _refuse("the token's bh is not a string")
    return AdminToken(admin, kid, jti, exp + leeway, method, path, query, body_hash)


def check_body(token: AdminToken, body: bytes) -> None:
    """Return if ``body`` (the bytes received) is the one ``token`` was minted over;
    else ``AdminError`` (``admin.unauthenticated``)."""
    if token.body_hash != sha256_b64url(body):
        raise _refuse(
            "the token is for another body (bh): mint it over exactly the bytes the call sends"
        )


def authorize(token: AdminToken, role: str) -> None:
    """Return if the token's admin holds ``role``; else ``AdminError`` (``admin.forbidden``)."""
    if role not in ADMIN_ROLES:
        raise ValueError(f"unknown admin role {role!r}")
    if role not in token.admin.roles:
        raise AdminError(
            FORBIDDEN,
            f"admin {token.admin.id!r} does not hold the role {role!r} this call needs",
            admin=token.admin.id,
        )
