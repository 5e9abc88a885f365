"""Proof of possession: ``Runtime.proof`` and ``verify_proof``, and the hashes they bind."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from execgate.errors import VerificationError
from execgate.jose import PrivateKey, b64url_encode, canonical_json, encode, parse_unverified
from execgate.model import Request
from execgate.proofs import PROOF_TYP, Proof, Runtime, artifact_hash, request_hash, verify_proof

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
        artifact=artifact,
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
    hdr = {"typ": PROOF_TYP, "jwk": key.public.to_jwk()}
    hdr.update(header or {})
    return encode(hdr, {k: v for k, v in body.items() if v is not None}, key)


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
