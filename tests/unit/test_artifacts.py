"""Issuing and verifying artifacts (and attestations) directly, without a gateway."""

from __future__ import annotations

from typing import Any

import pytest

from execgate.artifacts import ARTIFACT_TYP, issue_artifact, verify_artifact
from execgate.attestations import check_environment, issue_attestation, verify_attestation
from execgate.errors import VerificationError
from execgate.jose import PrivateKey, encode, parse_unverified
from execgate.scope import Grant
from execgate.trust import TrustStore

NOW = 1_700_000_000
AUD = frozenset({"gw-1"})
AUTHORITY = PrivateKey.from_seed(bytes(range(32)))
ATTESTER = PrivateKey.from_seed(bytes(range(1, 33)))
RUNTIME = PrivateKey.from_seed(bytes(range(2, 34)))

TRUST = TrustStore.from_dict(
    {
        "authority": [
            {
                "id": "auth-1",
                "keys": [AUTHORITY.public.to_jwk()],
                "scope": [
                    {
                        "action": "payments.*",
                        "resource": "acct:**",
                        "constraints": {"amount": {"max": 500}},
                    },
                    {"action": "reports.read", "resource": "**"},
                ],
            }
        ],
        "attester": [{"id": "att-1", "keys": [ATTESTER.public.to_jwk()]}],
    }
)

SCOPE = [
    {"action": "payments.transfer", "resource": "acct:1", "constraints": {"amount": {"max": 100}}}
]


def issue(**kw: Any) -> str:
    args: dict[str, Any] = {
        "key": AUTHORITY,
        "issuer": "auth-1",
        "subject": "agent-1",
        "audience": "gw-1",
        "runtime_key": RUNTIME.public,
        "scope": SCOPE,
        "now": NOW,
        "ttl": 600,
    }
    args.update(kw)
    return issue_artifact(**args)


def verify(token: object, *, now: int = NOW, leeway: int = 0) -> Any:
    return verify_artifact(token, trust=TRUST, audiences=AUD, now=now, leeway=leeway)


def code_of(token: object, **kw: Any) -> str:
    with pytest.raises(VerificationError) as info:
        verify(token, **kw)
    return info.value.code


# --- round trip -----------------------------------------------------------------------


def test_issue_then_verify_round_trip() -> None:
    token = issue(
        audience=["gw-0", "gw-1"],
        not_before=NOW + 5,
        jti="jti-123",
        env={"region": ["eu-west-1", "eu-central-1"], "image": "sha256:abc"},
        gov={"ticket": "T-1", "policy": "sha256:" + "a" * 64},
        att={"on_behalf_of": "alice"},
        uses=3,
    )
    art = verify(token, now=NOW + 5)
    assert art.token == token
    assert art.issuer == "auth-1"
    assert art.authority.id == "auth-1"
    assert art.kid == AUTHORITY.public.thumbprint()
    assert art.subject == "agent-1"
    assert art.audience == ("gw-0", "gw-1")
    assert (art.not_before, art.expires) == (NOW + 5, NOW + 600)
    assert art.jti == "jti-123"
    assert art.grants == (Grant.parse(SCOPE[0]),)
    assert art.jkt == RUNTIME.public.thumbprint()
    assert art.env == {"region": ("eu-west-1", "eu-central-1"), "image": ("sha256:abc",)}
    assert art.gov == {"ticket": "T-1", "policy": "sha256:" + "a" * 64}
    assert art.uses == 3
    assert art.claims["att"] == {"on_behalf_of": "alice"}


def test_issued_artifact_has_the_documented_shape() -> None:
    parsed = parse_unverified(issue(), max_size=16384)
    assert parsed.header == {
        "typ": ARTIFACT_TYP,
        "kid": AUTHORITY.public.thumbprint(),
        "alg": "Ed25519",
    }
    assert set(parsed.claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "cnf"}
    assert parsed.claims["cnf"] == {"jkt": RUNTIME.public.thumbprint()}
    assert len(parsed.claims["jti"]) >= 16
    assert parse_unverified(issue(), max_size=16384).claims["jti"] != parsed.claims["jti"]


def test_optional_claims_are_left_out_when_not_given() -> None:
    claims = parse_unverified(issue(env={}, gov={}, att={}), max_size=16384).claims
    assert not {"env", "gov", "att", "uses", "prf"} & set(claims)
    art = verify(issue())
    assert art.uses is None
    assert art.env == {}
    assert art.gov == {}


# --- issue refuses what verify would refuse ------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"ttl": 0},
        {"ttl": -5},
        {"scope": []},
        {"scope": [{"action": "a***", "resource": "r"}]},
        {"scope": [{"action": "a", "resource": "r", "when": "always"}]},
        {"scope": [{"action": "a", "resource": "r", "constraints": {"n": {"max": "5"}}}]},
        {"scope": [{"action": "a", "resource": "r", "constraints": {"n": {"pattern": "("}}}]},
        {"uses": 0},
        {"uses": -1},
        {"uses": True},
        {"uses": 2**53},  # beyond JSON's safe integers (and SQLite's, at 2**63)
        {"subject": ""},
        {"issuer": ""},
        {"jti": "x" * 1025},
        {"audience": []},
        {"audience": [""]},
        {"env": {"region": []}},
        {"env": {"region": 5}},
        {"gov": {"owner": "bob"}},
        {"gov": {"ticket": 5}},
        {"att": {"who": "bob"}},
        {"not_before": 1.5},
        {"now": -1},
    ],
)
def test_issue_refuses_invalid_claims(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        issue(**kw)


def test_issue_accepts_huge_integer_bounds_and_verify_reads_them() -> None:
    trust = TrustStore.from_dict(
        {
            "authority": [
                {
                    "id": "auth-1",
                    "keys": [AUTHORITY.public.to_jwk()],
                    "scope": [{"action": "**", "resource": "**"}],
                }
            ]
        }
    )
    scope = [
        {"action": "a", "resource": "r", "constraints": {"n": {"max": 10**30, "min": -(10**400)}}}
    ]
    art = verify_artifact(issue(scope=scope), trust=trust, audiences=AUD, now=NOW, leeway=0)
    assert art.grants[0].violation({"n": 10**29}) is None
    assert art.grants[0].violation({"n": 10**31}) is not None


# --- verify ---------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "code"), [(NOW + 599, None), (NOW + 600, "artifact.expired")])
def test_expiry_without_leeway(now: int, code: str | None) -> None:
    if code is None:
        verify(issue(), now=now)
    else:
        assert code_of(issue(), now=now) == code


@pytest.mark.parametrize(("now", "code"), [(NOW + 659, None), (NOW + 660, "artifact.expired")])
def test_expiry_with_leeway(now: int, code: str | None) -> None:
    if code is None:
        verify(issue(), now=now, leeway=60)
    else:
        assert code_of(issue(), now=now, leeway=60) == code


@pytest.mark.parametrize(
    ("now", "leeway", "ok"),
    [(NOW + 10, 0, True), (NOW + 9, 0, False), (NOW - 50, 60, True), (NOW - 51, 60, False)],
)
def test_not_before(now: int, leeway: int, ok: bool) -> None:
    token = issue(not_before=NOW + 10)
    if ok:
        verify(token, now=now, leeway=leeway)
    else:
        assert code_of(token, now=now, leeway=leeway) == "artifact.not_yet_valid"


def test_nbf_defaults_to_iat() -> None:
    claims = {
        "iss": "auth-1",
        "sub": "agent-1",
        "aud": "gw-1",
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "j" * 16,
        "scope": SCOPE,
        "cnf": {"jkt": RUNTIME.public.thumbprint()},
    }
    token = encode({"typ": ARTIFACT_TYP, "kid": AUTHORITY.public.thumbprint()}, claims, AUTHORITY)
    assert verify(token).not_before == NOW
    assert code_of(token, now=NOW - 1) == "artifact.not_yet_valid"


@pytest.mark.parametrize("token", [None, ""])
def test_missing(token: object) -> None:
    assert code_of(token) == "artifact.missing"


def test_wrong_audience() -> None:
    assert code_of(issue(audience="gw-2")) == "artifact.wrong_audience"


@pytest.mark.parametrize(
    ("grant", "ok"),
    [
        (
            {
                "action": "payments.refund",
                "resource": "acct:9",
                "constraints": {"amount": {"max": 500}},
            },
            True,
        ),
        (
            {
                "action": "payments.refund",
                "resource": "acct:9",
                "constraints": {"amount": {"max": 501}},
            },
            False,
        ),
        ({"action": "payments.refund", "resource": "acct:9"}, False),
        (
            {
                "action": "payments.refund",
                "resource": "acct:9",
                "constraints": {"other": {"max": 1}},
            },
            False,
        ),
        ({"action": "reports.read", "resource": "anything:at/all"}, True),
        ({"action": "reports.*", "resource": "x"}, False),
    ],
)
def test_grants_must_stay_inside_the_authority_scope(grant: dict[str, Any], ok: bool) -> None:
    token = issue(scope=[grant])
    if ok:
        verify(token)
    else:
        assert code_of(token) == "artifact.untrusted_issuer"


def test_issuer_must_be_the_key_owner() -> None:
    assert code_of(issue(issuer="auth-2")) == "artifact.untrusted_issuer"


def test_unknown_key_and_attester_key_are_untrusted_issuers() -> None:
    assert code_of(issue(key=PrivateKey.generate())) == "artifact.untrusted_issuer"
    assert code_of(issue(key=ATTESTER)) == "artifact.untrusted_issuer"


def test_header_jwk_does_not_make_a_key_trusted() -> None:
    intruder = PrivateKey.generate()
    header = {
        "typ": ARTIFACT_TYP,
        "kid": AUTHORITY.public.thumbprint(),
        "jwk": intruder.public.to_jwk(),
    }
    claims = parse_unverified(issue(), max_size=16384).claims
    assert code_of(encode(header, claims, intruder)) == "artifact.signature_invalid"


# --- attestations ---------------------------------------------------------------------


def test_attestation_round_trip_and_environment_check() -> None:
    token = issue_attestation(
        key=ATTESTER,
        subject="agent-1",
        runtime_key=RUNTIME.public,
        env={"region": "eu-west-1"},
        now=NOW,
        ttl=60,
    )
    env = verify_attestation(
        token, trust=TRUST, runtime="agent-1", jkt=RUNTIME.public.thumbprint(), now=NOW, leeway=0
    )
    assert env == {"region": "eu-west-1"}
    check_environment({"region": ("us-east-1", "eu-west-1")}, env)
    with pytest.raises(VerificationError) as info:
        check_environment({"region": ("us-east-1",)}, env)
    assert info.value.code == "environment.mismatch"
    with pytest.raises(VerificationError) as info:
        check_environment({"image": ("sha256:a",)}, env)
    assert info.value.code == "environment.mismatch"


@pytest.mark.parametrize(
    ("now", "ok"), [(NOW + 59, True), (NOW + 60, False), (NOW - 1, False), (NOW, True)]
)
def test_attestation_validity_window(now: int, ok: bool) -> None:
    token = issue_attestation(
        key=ATTESTER, subject="agent-1", runtime_key=RUNTIME.public, env={"r": "x"}, now=NOW, ttl=60
    )
    if ok:
        verify_attestation(
            token,
            trust=TRUST,
            runtime="agent-1",
            jkt=RUNTIME.public.thumbprint(),
            now=now,
            leeway=0,
        )
    else:
        with pytest.raises(VerificationError) as info:
            verify_attestation(
                token,
                trust=TRUST,
                runtime="agent-1",
                jkt=RUNTIME.public.thumbprint(),
                now=now,
                leeway=0,
            )
        assert info.value.code == "environment.untrusted"


@pytest.mark.parametrize(
    "kw", [{"ttl": 0}, {"env": {}}, {"env": {"region": 1}}, {"env": {"region": ["a"]}}]
)
def test_issue_attestation_refuses_invalid_input(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "key": ATTESTER,
        "subject": "agent-1",
        "runtime_key": RUNTIME.public,
        "env": {"r": "x"},
        "now": NOW,
        "ttl": 60,
    }
    args.update(kw)
    with pytest.raises(ValueError):  # noqa: PT011
        issue_attestation(**args)


def test_attestation_with_extra_claims_is_untrusted() -> None:
    claims = {
        "sub": "agent-1",
        "iat": NOW,
        "exp": NOW + 60,
        "env": {"r": "x"},
        "cnf": {"jkt": RUNTIME.public.thumbprint()},
        "admin": True,
    }
    token = encode(
        {"typ": "execgate-env+jwt", "kid": ATTESTER.public.thumbprint()}, claims, ATTESTER
    )
    with pytest.raises(VerificationError) as info:
        verify_attestation(
            token,
            trust=TRUST,
            runtime="agent-1",
            jkt=RUNTIME.public.thumbprint(),
            now=NOW,
            leeway=0,
        )
    assert info.value.code == "environment.untrusted"


def test_an_attestation_of_another_runtime_key_is_untrusted() -> None:
    """A delegator can name any runtime id; it cannot hold that runtime's key."""
    token = issue_attestation(
        key=ATTESTER, subject="agent-1", runtime_key=RUNTIME.public, env={"r": "x"}, now=NOW, ttl=60
    )
    other = PrivateKey.generate().public.thumbprint()
    with pytest.raises(VerificationError, match="another runtime key") as info:
        verify_attestation(token, trust=TRUST, runtime="agent-1", jkt=other, now=NOW, leeway=0)
    assert info.value.code == "environment.untrusted"
    legacy = {"sub": "agent-1", "iat": NOW, "exp": NOW + 60, "env": {"r": "x"}}
    unbound = encode(
        {"typ": "execgate-env+jwt", "kid": ATTESTER.public.thumbprint()}, legacy, ATTESTER
    )
    with pytest.raises(VerificationError):
        verify_attestation(
            unbound,
            trust=TRUST,
            runtime="agent-1",
            jkt=RUNTIME.public.thumbprint(),
            now=NOW,
            leeway=0,
        )
