"""Admin tokens (``execgate.admin``) and the ``[[admin]]`` section of the trust store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from execgate.admin import (
    ADMIN_TYP,
    MAX_TTL,
    AdminError,
    authorize,
    check_body,
    issue_admin_token,
    verify_admin_token,
)
from execgate.errors import ConfigError
from execgate.jose import PrivateKey, b64url_encode, encode, sha256_b64url
from execgate.trust import TrustStore

NOW = 1_700_000_000
GATEWAY = "gw-test"
PATH = "/v1/revocations"


def _jwk(key: PrivateKey) -> dict[str, str]:
    return key.public.to_jwk()


AUTHORITY = PrivateKey.generate()
ADMIN = PrivateKey.generate()
READER = PrivateKey.generate()
OTHER = PrivateKey.generate()


def _doc(**admin: Any) -> dict[str, Any]:
    return {
        "authority": [
            {"id": "auth", "keys": [_jwk(AUTHORITY)], "scope": [{"action": "a", "resource": "r"}]}
        ],
        "admin": [
            {"id": "ops", "roles": ["revoke", "reload"], "keys": [_jwk(ADMIN)], **admin},
            {"id": "reader", "roles": ["audit"], "keys": [_jwk(READER)]},
        ],
    }


TRUST = TrustStore.from_dict(_doc())


def _token(key: PrivateKey = ADMIN, **over: Any) -> str:
    return issue_admin_token(
        key=key,
        admin=over.pop("admin", "ops"),
        audience=over.pop("audience", GATEWAY),
        method=over.pop("method", "POST"),
        path=over.pop("path", PATH),
        now=over.pop("now", NOW),
        ttl=over.pop("ttl", 60),
        query=over.pop("query", ""),
        body=over.pop("body", b""),
    )


def _verify(token: str, **over: Any) -> Any:
    return verify_admin_token(
        token,
        trust=over.pop("trust", TRUST),
        audiences=frozenset({GATEWAY}),
        method=over.pop("method", "POST"),
        path=over.pop("path", PATH),
        query=over.pop("query", ""),
        now=over.pop("now", NOW),
        leeway=60,
    )


def _raw(claims: dict[str, Any], key: PrivateKey = ADMIN, **header: Any) -> str:
    return encode({"typ": ADMIN_TYP, "kid": key.public.thumbprint(), **header}, claims, key)


def _unchecked(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Signed without the encoder's checks, to show the verifier's."""
    signing_input = ".".join(b64url_encode(json.dumps(part).encode()) for part in (header, claims))
    return f"{signing_input}.{b64url_encode(ADMIN.sign(signing_input.encode()))}"


def _claims(**over: Any) -> dict[str, Any]:
    claims = {
        "iss": "ops",
        "aud": GATEWAY,
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "j" * 24,
        "htm": "POST",
        "htu": PATH,
        "htq": "",
        "bh": sha256_b64url(b""),
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _refused(token: str, fragment: str, **over: Any) -> None:
    with pytest.raises(AdminError) as caught:
        _verify(token, **over)
    assert caught.value.code == "admin.unauthenticated"
    assert fragment in caught.value.detail


def test_a_good_token_verifies_and_names_its_admin() -> None:
    verified = _verify(_token())
    assert verified.admin.id == "ops"
    assert verified.kid == ADMIN.public.thumbprint()
    assert verified.expires == NOW + 60 + 60  # exp plus the leeway: how long to remember it
    authorize(verified, "revoke")
    with pytest.raises(AdminError) as caught:
        authorize(verified, "audit")
    assert caught.value.code == "admin.forbidden"
    assert caught.value.admin == "ops"


def test_tokens_are_bound_to_method_path_and_gateway() -> None:
    _refused(_token(), "another call", path="/v1/admin/policy/reload")
    _refused(_token(), "another call", method="GET")
    _refused(_token(audience="gw-other"), "another gateway")


def test_tokens_are_bound_to_the_exact_body() -> None:
    """The body the token was minted over, byte for byte: another value, the same JSON
    spelled otherwise, a body where none was minted, or none where one was, is refused."""
    body = b'{"kind":"jti","value":"stolen-key","reason":"lost"}'
    check_body(_verify(_token(body=body)), body)
    check_body(_verify(_token()), b"")
    for token, sent in (
        (_token(body=body), body.replace(b"stolen-key", b"other")),
        (_token(body=body), body.replace(b",", b", ")),
        (_token(), body),
        (_token(body=body), b""),
    ):
        verified = _verify(token)  # the token itself is good: only its body is not
        with pytest.raises(AdminError) as caught:
            check_body(verified, sent)
        assert caught.value.code == "admin.unauthenticated"
        assert "another body" in caught.value.detail
    # bh is required, and a string: a token without it is refused, as any claims set not
    # exactly the documented one is.
    _refused(_raw(_claims(bh=None)), "missing ['bh']")
    _refused(_raw(_claims(bh=1)), "bh is not a string")


def test_tokens_are_bound_to_the_exact_query() -> None:
    """The query string the token was minted over, as sent: a token to read a few log
    entries reads no others, one minted without a query is good for no query, and the same
    parameters spelled or ordered otherwise are another query."""
    query = "start=0&end=9"
    assert _verify(_token(query=query), query=query).query == query
    for minted, sent in (
        (query, "start=0&end=100000"),
        (query, "end=9&start=0"),
        (query, "start=0&end=%39"),
        (query, ""),
        ("", query),
    ):
        _refused(_token(query=minted), "another query", query=sent)
    _refused(_raw(_claims(htq=None)), "missing ['htq']")
    _refused(_raw(_claims(htq=0)), "another query")  # never equal to a string
    for bad in ("?start=0", "start=0#top", "q=a b", "q=\u00e9"):
        with pytest.raises(ValueError, match="query"):
            _token(query=bad)


def test_time_limits() -> None:
    _refused(_token(), "expired", now=NOW + 60 + 60)
    _verify(_token(), now=NOW + 60 + 59)  # within the leeway
    _refused(_token(now=NOW + 61), "future")
    _refused(_raw(_claims(exp=NOW + MAX_TTL + 1)), "lifetime")
    _refused(_raw(_claims(exp=NOW)), "lifetime")
    with pytest.raises(ValueError, match="ttl"):
        _token(ttl=MAX_TTL + 1)


def test_unknown_keys_forgeries_and_impersonation_are_refused() -> None:
    _refused(_token(key=OTHER), "no admin's")
    _refused(_token(key=AUTHORITY), "no admin's")  # a trusted key, but not an admin's
    good = _token()
    head, _body, sig = good.split(".")
    forged = _token(path="/v1/admin/policy/reload").split(".")[1]
    _refused(f"{head}.{forged}.{sig}", "signature")
    _refused(_token(key=READER, admin="ops"), "signed by 'reader'")


@pytest.mark.parametrize(
    ("claims", "fragment"),
    [
        (_claims(jti=None), "missing ['jti']"),
        (_claims(htu=None), "missing ['htu']"),
        (_claims(role="admin"), "unknown ['role']"),
        (_claims(jti="short"), "jti"),
        (_claims(aud=[GATEWAY]), "another gateway"),
    ],
)
def test_claims_are_exactly_the_documented_set(claims: dict[str, Any], fragment: str) -> None:
    _refused(_raw(claims), fragment)


def test_the_typ_and_the_codec_rules_apply() -> None:
    token = encode(
        {"typ": "execgate-approval+jwt", "kid": ADMIN.public.thumbprint()}, _claims(), ADMIN
    )
    _refused(token, "malformed")
    _refused("not-a-token", "malformed")
    header = {"typ": ADMIN_TYP, "kid": ADMIN.public.thumbprint(), "alg": "Ed25519", "crit": ["x"]}
    _refused(_unchecked(header, _claims()), "malformed")
    header = {"typ": ADMIN_TYP, "kid": ADMIN.public.thumbprint(), "alg": "Ed25519"}
    _refused(_unchecked(header, _claims(iat="soon")), "malformed")  # integer NumericDates


def test_issue_refuses_what_verify_would() -> None:
    with pytest.raises(ValueError, match="method"):
        _token(method="post")
    with pytest.raises(ValueError, match="without its query"):
        _token(path="/v1/x?y=1")
    with pytest.raises(ValueError, match="must start with '/'") as refused:
        _token(path="v1/x")  # what `admin token --path` hands on, its query split off
    assert "query" not in str(refused.value)


def test_the_trust_store_checks_admin_entries() -> None:
    with pytest.raises(ConfigError, match="unknown roles \\['root'\\]"):
        TrustStore.from_dict(_doc(roles=["revoke", "root"]))
    with pytest.raises(ConfigError, match="non-empty list of role names"):
        TrustStore.from_dict(_doc(roles=[]))
    with pytest.raises(ConfigError, match="unknown keys"):
        TrustStore.from_dict(_doc(groups=["x"]))
    doc = _doc()
    doc["approver"] = [{"id": "alice", "groups": ["finance"], "keys": [_jwk(ADMIN)]}]
    with pytest.raises(ConfigError, match="one principal only"):
        TrustStore.from_dict(doc)
    doc = _doc()
    doc["admin"] = {"id": "x"}
    with pytest.raises(ConfigError, match="double brackets"):
        TrustStore.from_dict(doc)
    assert set(TRUST.admins) == {"ops", "reader"}
    assert TRUST.admin_for_kid(READER.public.thumbprint()) is TRUST.admins["reader"]
