"""Proof of possession: ``Runtime.proof`` and ``verify_proof``, and the hashes they bind."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from execgate.errors import VerificationError
from execgate.jose import (
    PrivateKey,
    b64url_encode,
    canonical_json,
    compact_json,
    encode,
    parse_unverified,
)
from execgate.model import Request
from execgate.proofs import (
    OUTCOME_PROOF_TYP,
    PROOF_TYP,
    Proof,
    Runtime,
    artifact_hash,
    outcome_hash,
    request_hash,
    verify_outcome_proof,
    verify_proof,
)

NOW = 1_700_000_000
AUD = frozenset({"gw-1", "mesh-1"})
KEY = PrivateKey.from_seed(bytes(range(32)))
RUNTIME = Runtime("agent-1", KEY)
ARTIFACT = "eyJhbGciOiJFZDI1NTE5In0.e30.c2ln"  # any string: ath only hashes it
REQUEST = Request("payments.transfer", "acct:1", "agent-1", args={"amount": 5, "to": "bob"})


def check(
    token: object,
    *,
    request: Request = REQUEST,
    artifact: str = ARTIFACT,
    jkt: str | None = None,
    now: int = NOW,
) -> Proof:
    return verify_proof(
        token,
        jkt=KEY.public.thumbprint() if jkt is None else jkt,
        request_hash=request_hash(request),
        ath=artifact_hash(artifact),
        audiences=AUD,
        now=now,
        max_age=120,
        leeway=60,
    )


def code_of(token: object, **kw: Any) -> str:
    with pytest.raises(VerificationError) as info:
        check(token, **kw)
    return info.value.code


def handmade(key: PrivateKey = KEY, header: dict[str, Any] | None = None, **claims: Any) -> str:
    body: dict[str, Any] = {
        "jti": "p" * 22,
        "iat": NOW,
        "aud": "gw-1",
        "rh": request_hash(REQUEST),
        "ath": artifact_hash(ARTIFACT),
    }
    body.update(claims)
    hdr = {"alg": "Ed25519", "typ": PROOF_TYP, "jwk": key.public.to_jwk()}
    hdr.update(header or {})
    # Signed by hand, not by encode (which refuses some of these): the verifier's refusal
    # is what is tested.
    payload = {k: v for k, v in body.items() if v is not None}
    signing_input = f"{b64url_encode(compact_json(hdr))}.{b64url_encode(compact_json(payload))}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"


# --- hashes ---------------------------------------------------------------------------


def test_request_hash_is_sha256_of_the_jcs_canonical_request() -> None:
    canonical = {
        "action": "payments.transfer",
        "resource": "acct:1",
        "args": {"amount": 5, "to": "bob"},
        "runtime": "agent-1",
        "parent": None,
    }
    assert REQUEST.canonical() == canonical
    expected = b64url_encode(hashlib.sha256(canonical_json(canonical)).digest())
    assert request_hash(REQUEST) == expected


def test_request_hash_ignores_argument_order_and_sees_every_field() -> None:
    same = Request("payments.transfer", "acct:1", "agent-1", args={"to": "bob", "amount": 5})
    assert request_hash(same) == request_hash(REQUEST)
    variants = [
        Request("payments.refund", "acct:1", "agent-1", args={"amount": 5, "to": "bob"}),
        Request("payments.transfer", "acct:2", "agent-1", args={"amount": 5, "to": "bob"}),
        Request("payments.transfer", "acct:1", "agent-2", args={"amount": 5, "to": "bob"}),
        Request("payments.transfer", "acct:1", "agent-1", args={"amount": 6, "to": "bob"}),
        Request("payments.transfer", "acct:1", "agent-1", args={"amount": 5.5, "to": "bob"}),
        Request("payments.transfer", "acct:1", "agent-1", args={"amount": 5}),
        Request(
            "payments.transfer", "acct:1", "agent-1", args={"amount": 5, "to": "bob"}, parent="r"
        ),
    ]
    hashes = {request_hash(r) for r in variants}
    assert len(hashes) == len(variants)
    assert request_hash(REQUEST) not in hashes


def test_shell_argv_is_hashed_as_an_array() -> None:
    argv = Request(
        "shell.exec", "host:a", "agent-1", args={"argv": ["rm", "-rf", "/tmp/x"], "cwd": "/"}
    )
    joined = Request("shell.exec", "host:a", "agent-1", args={"argv": "rm -rf /tmp/x", "cwd": "/"})
    assert request_hash(argv) != request_hash(joined)


def test_artifact_hash() -> None:
    digest = hashlib.sha256(ARTIFACT.encode("ascii")).digest()
    assert artifact_hash(ARTIFACT) == b64url_encode(digest)
    assert artifact_hash(ARTIFACT + "x") != artifact_hash(ARTIFACT)


# --- round trip -----------------------------------------------------------------------


def test_proof_round_trip() -> None:
    token = RUNTIME.proof(REQUEST, ARTIFACT, audience="mesh-1", now=NOW, nonce="n-1")
    proof = check(token)
    assert proof.issued_at == NOW
    assert proof.jkt == KEY.public.thumbprint()
    parsed = parse_unverified(token, max_size=8192)
    assert parsed.header["typ"] == PROOF_TYP
    assert parsed.header["jwk"] == KEY.public.to_jwk()
    assert "d" not in parsed.header["jwk"]
    assert parsed.claims == {
        "jti": proof.jti,
        "iat": NOW,
        "aud": "mesh-1",
        "rh": request_hash(REQUEST),
        "ath": artifact_hash(ARTIFACT),
        "nonce": "n-1",
    }


def test_every_proof_has_a_fresh_jti_of_at_least_96_bits() -> None:
    jtis = {
        check(RUNTIME.proof(REQUEST, ARTIFACT, audience="gw-1", now=NOW)).jti for _ in range(50)
    }
    assert len(jtis) == 50
    assert all(len(j) >= 16 for j in jtis)


def test_submission_is_the_wire_shape() -> None:
    wire = RUNTIME.submission(REQUEST, ARTIFACT, audience="gw-1", now=NOW, attestation="att")
    assert set(wire) == {"request", "artifact", "proof", "attestation"}
    assert wire["request"] == REQUEST.canonical()
    assert wire["artifact"] == ARTIFACT
    assert wire["attestation"] == "att"
    check(wire["proof"])


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_missing(token: object) -> None:
    assert code_of(token) == "identity.proof_missing"


def test_proof_by_another_key_is_an_identity_mismatch() -> None:
    other = Runtime("agent-1", PrivateKey.generate())
    assert code_of(other.proof(REQUEST, ARTIFACT, audience="gw-1", now=NOW)) == "identity.mismatch"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        5,
        b"bytes",
        handmade(header={"typ": "JWT"}),
        handmade(header={"jwk": {**KEY.public.to_jwk(), "d": b64url_encode(bytes(32))}}),
        handmade(header={"jwk": {"kty": "oct", "k": "AAAA"}}),
        handmade(iat=NOW - 121),
        handmade(iat=NOW + 61),
        handmade(iat=None),
        handmade(aud="gw-2"),
        handmade(aud=["gw-1"]),
        handmade(aud=None),
        handmade(rh=request_hash(Request("x", "y", "agent-1"))),
        handmade(rh=None),
        handmade(ath=artifact_hash("other")),
        handmade(ath=None),
        handmade(jti="short"),
        handmade(jti="x" * 129),
        handmade(jti=" " * 16),
        handmade(jti="\x00" * 16),
        handmade(jti="\u200b" * 16),
        handmade(jti="p" * 21 + "="),
        handmade(jti="p" * 21 + "."),
        handmade(jti=12345678901234567890),
        handmade(nonce=["n"]),
        handmade(sub="agent-1"),
        handmade(nonce="n" * 9000),
    ],
)
def test_invalid(token: object) -> None:
    assert code_of(token) == "identity.proof_invalid"


def test_iat_window_edges_are_inclusive() -> None:
    check(handmade(iat=NOW - 120))
    check(handmade(iat=NOW + 60))


def test_proof_binds_request_and_artifact() -> None:
    token = RUNTIME.proof(REQUEST, ARTIFACT, audience="gw-1", now=NOW)
    altered = Request("payments.transfer", "acct:1", "agent-1", args={"amount": 500, "to": "bob"})
    assert code_of(token, request=altered) == "identity.proof_invalid"
    assert code_of(token, artifact=ARTIFACT + "x") == "identity.proof_invalid"


# --- outcome proofs ----------------------------------------------------------------------

DECISION = "0c8f2bb4-5c1a-4d55-9f6e-2b7c1e1f7a10"
REPORT = {"status": "succeeded", "exit_code": 0, "result_digest": "sha256:" + "ab" * 32}


def check_outcome(token: object, *, jkt: str | None = None, now: int = NOW) -> None:
    verify_outcome_proof(
        token,
        jkt=KEY.public.thumbprint() if jkt is None else jkt,
        decision_id=DECISION,
        report_hash=outcome_hash(DECISION, **REPORT),  # type: ignore[arg-type]
        audiences=AUD,
        now=now,
        max_age=120,
        leeway=60,
    )


def _outcome_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": "j" * 22,
        "iat": NOW,
        "aud": "gw-1",
        "did": DECISION,
        "oh": outcome_hash(DECISION, **REPORT),  # type: ignore[arg-type]
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _outcome_token(**overrides: Any) -> str:
    header = {"typ": OUTCOME_PROOF_TYP, "jwk": KEY.public.to_jwk()}
    return encode(header, _outcome_claims(**overrides), KEY)


def test_outcome_proof_round_trip() -> None:
    token = RUNTIME.outcome_proof(DECISION, **REPORT, audience="gw-1", now=NOW)  # type: ignore[arg-type]
    check_outcome(token)
    assert parse_unverified(token, max_size=8192).header["typ"] == OUTCOME_PROOF_TYP


def test_outcome_hash_binds_every_field_of_the_report() -> None:
    base = outcome_hash(DECISION, **REPORT)  # type: ignore[arg-type]
    changed = [
        outcome_hash("another", **REPORT),  # type: ignore[arg-type]
        outcome_hash(DECISION, **{**REPORT, "status": "failed"}),  # type: ignore[arg-type]
        outcome_hash(DECISION, **{**REPORT, "exit_code": 1}),  # type: ignore[arg-type]
        outcome_hash(DECISION, **{**REPORT, "exit_code": None}),  # type: ignore[arg-type]
        outcome_hash(DECISION, **{**REPORT, "result_digest": None}),  # type: ignore[arg-type]
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)


@pytest.mark.parametrize(
    ("token", "code", "detail"),
    [
        (None, "identity.proof_missing", "no proof"),
        ("", "identity.proof_missing", "no proof"),
        (42, "identity.proof_invalid", "compact JWS string"),
        ("a.b.c", "identity.proof_invalid", "JSON|base64"),
        (_outcome_token(extra="x"), "identity.proof_invalid", "unknown claims"),
        (_outcome_token(iat=None), "identity.proof_invalid", "iat is required"),
        (_outcome_token(iat=NOW + 61), "identity.proof_invalid", "in the future"),
        (_outcome_token(iat=NOW - 121), "identity.proof_invalid", "older than"),
        (_outcome_token(aud=["gw-1"]), "identity.proof_invalid", "aud"),
        (_outcome_token(aud="elsewhere"), "identity.proof_invalid", "aud"),
        (_outcome_token(did="another"), "identity.proof_invalid", "did"),
        (_outcome_token(oh="x"), "identity.proof_invalid", "oh"),
        (  # a request's proof is not an outcome's
            RUNTIME.proof(REQUEST, ARTIFACT, audience="gw-1", now=NOW),
            "identity.proof_invalid",
            "typ",
        ),
    ],
)
def test_outcome_proof_refusals(token: object, code: str, detail: str) -> None:
    with pytest.raises(VerificationError, match=detail) as info:
        check_outcome(token)
    assert info.value.code == code


def test_outcome_proof_by_another_key_is_an_identity_mismatch() -> None:
    other = Runtime("agent-1", PrivateKey.generate())
    token = other.outcome_proof(DECISION, **REPORT, audience="gw-1", now=NOW)  # type: ignore[arg-type]
    with pytest.raises(VerificationError) as info:
        check_outcome(token)
    assert info.value.code == "identity.mismatch"
