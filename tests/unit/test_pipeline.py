"""The decision pipeline, stage by stage: every denial reason with its exact code.

Each test builds real artifacts, proofs and attestations against a real gateway home
(``execgate init``) on its SQLite store, then asserts what a caller sees: the outcome, the
reason code, and what the audit log recorded.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import GATEWAY_ID, NOW, RUNTIME_ID, Kit, make_kit

from execgate.artifacts import MAX_ARTIFACT_BYTES
from execgate.errors import RequestError, VerificationError
from execgate.jose import PrivateKey, b64url_decode, b64url_encode, canonical_json, encode
from execgate.model import Decision, Outcome, Request
from execgate.pipeline import MAX_REQUEST_BYTES, Gateway, Submission
from execgate.proofs import PROOF_TYP, artifact_hash, request_hash
from execgate.receipts import MAX_RECEIPT_BYTES, verify_receipt
from execgate.store.base import WriteJob
from execgate.submission import MAX_REQUEST_VALUES


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


@pytest.fixture
def gw(kit: Kit) -> Gateway:
    return kit.gateway()


def codes(decision: Decision) -> list[str]:
    return [r.code for r in decision.reasons]


def logged(gw: Gateway, decision: Decision) -> dict[str, Any]:
    """The audit record of ``decision``, checked to be exactly its JCS bytes."""
    assert decision.log_index is not None
    [entry] = gw.store.entries(decision.log_index, decision.log_index + 1)
    record: dict[str, Any] = json.loads(entry.entry)
    assert canonical_json(record) == entry.entry
    assert record["decision_id"] == decision.decision_id
    return record


def assert_denied(gw: Gateway, decision: Decision, code: str) -> None:
    """Denied with exactly ``code``, nothing executes, and the log says the same."""
    assert decision.outcome is Outcome.DENY, decision
    assert codes(decision) == [code], decision.reasons
    assert not decision.executes
    assert decision.route is None
    record = logged(gw, decision)
    assert record["outcome"] == "deny"
    assert [r["code"] for r in record["reasons"]] == [code]


# --- the proceed path -----------------------------------------------------------------


def test_proceed_is_receipted_and_logged_with_every_decision_field(kit: Kit, gw: Gateway) -> None:
    request = kit.request(amount=100, currency="EUR")
    artifact = kit.artifact(gov={"ticket": "FIN-1"}, att={"on_behalf_of": "alice"})
    submission = kit.submission(request, artifact)

    d = gw.decide(submission)

    assert d.outcome is Outcome.PROCEED
    assert d.executes
    assert d.reasons == ()
    assert d.rule == "payments"
    assert d.log_index == 0
    assert d.policy_hash == gw.policy.hash
    assert d.request_hash == request_hash(request)
    assert d.decided_at == NOW
    assert d.receipt is not None

    node = kit.node_key.public
    claims = verify_receipt(d.receipt, keys={node.thumbprint(): node}, now=NOW, leeway=0)
    assert claims["iss"] == GATEWAY_ID
    assert claims["did"] == d.decision_id
    assert claims["outcome"] == "proceed"
    assert claims["reasons"] == []
    assert claims["rh"] == request_hash(request)
    assert claims["pol"] == gw.policy.hash
    assert claims["jti"] == d.artifact_jti
    assert claims["log"] == {"id": GATEWAY_ID, "index": d.log_index}

    record = logged(gw, d)
    public = d.to_json()
    for name in ("decision_id", "outcome", "reasons", "request_hash", "policy_hash"):
        assert record[name] == public[name], name
    for name in ("artifact_jti", "chain", "rule", "route"):
        assert record[name] == public[name], name
    assert record["at"] == d.decided_at
    assert record["kind"] == "decision"
    assert record["gateway"] == GATEWAY_ID
    assert record["request"] == request.canonical()
    assert record["issuer"] == "example-authority"
    assert record["subject"] == RUNTIME_ID
    assert record["runtime_jkt"] == kit.runtime.key.public.thumbprint()
    assert record["issuer_kid"] == kit.authority.public.thumbprint()
    assert isinstance(record["proof_jti"], str)
    assert gw.store.size() == 1


def test_receipt_does_not_verify_under_another_key(kit: Kit, gw: Gateway) -> None:
    d = gw.decide(kit.submit())
    assert d.receipt is not None
    other = PrivateKey.generate().public
    with pytest.raises(VerificationError, match=r"lineage\.broken"):
        verify_receipt(d.receipt, keys={kit.node_key.public.thumbprint(): other}, now=NOW, leeway=0)


def test_log_indexes_are_dense_and_denials_are_logged_too(kit: Kit, gw: Gateway) -> None:
    decisions = [
        gw.decide(kit.submit()),
        gw.decide({"request": kit.request(amount=1).canonical(), "artifact": None, "proof": None}),
        gw.decide(kit.submit(kit.request("payments.refund", amount=1))),
    ]
    assert [d.log_index for d in decisions] == [0, 1, 2]
    assert [logged(gw, d)["outcome"] for d in decisions] == ["proceed", "deny", "deny"]
    assert all(d.receipt for d in decisions)


def test_decision_ids_are_uuidv7_in_the_order_they_were_made(kit: Kit, gw: Gateway) -> None:
    """RFC 9562 version 7: the wall clock's milliseconds first (the gateway's clock for
    the decision is another matter: the kit's is fixed), then 74 random bits."""
    ids = []
    for _ in range(5):
        before = time.time_ns() // 1_000_000
        decision = gw.decide(kit.submit())
        after = time.time_ns() // 1_000_000
        made = uuid.UUID(decision.decision_id)
        assert str(made) == decision.decision_id == logged(gw, decision)["decision_id"]
        assert (made.version, made.variant) == (7, uuid.RFC_4122)
        assert before <= made.int >> 80 <= after
        ids.append(decision.decision_id)
        time.sleep(0.002)
    assert sorted(ids) == ids
    assert len({i[-12:] for i in ids}) == 5  # random tails


def test_accepts_a_submission_object(kit: Kit, gw: Gateway) -> None:
    request = kit.request(amount=3)
    artifact = kit.artifact()
    wire = kit.submission(request, artifact)
    sub = Submission(request, artifact, wire["proof"])
    assert sub.request_hash == request_hash(request)
    assert gw.decide(sub).outcome is Outcome.PROCEED


def test_reroute_names_its_target(kit: Kit, gw: Gateway) -> None:
    artifact = kit.artifact([{"action": "shell.exec", "resource": "host:**"}])
    request = kit.request("shell.exec", "host:build-1", argv=["make"], cwd="/src")
    d = gw.decide(kit.submission(request, artifact))
    assert d.outcome is Outcome.REROUTE
    assert d.executes
    assert d.route == "sandbox"
    assert d.rule == "shell-to-sandbox"
    assert logged(gw, d)["route"] == "sandbox"


def test_pause_rule_requires_approval(kit: Kit, gw: Gateway) -> None:
    d = gw.decide(kit.submit(kit.request(amount=2500)))
    assert d.outcome is Outcome.PAUSE
    assert codes(d) == ["approval.required"]
    assert d.rule == "big-transfers"
    assert not d.executes
    assert logged(gw, d)["outcome"] == "pause"


# --- artifact -------------------------------------------------------------------------


@pytest.mark.parametrize("artifact", [None, ""])
def test_artifact_missing(kit: Kit, gw: Gateway, artifact: str | None) -> None:
    wire = kit.submit()
    wire["artifact"] = artifact
    assert_denied(gw, gw.decide(wire), "artifact.missing")


def _malformed_artifacts(kit: Kit) -> dict[str, object]:
    big = kit.claims(att={"reason": "x" * MAX_ARTIFACT_BYTES})
    return {
        "garbage": "this is not a token",
        "three-garbage-parts": "a.b.c",
        "not-a-string": 12345,
        "wrong-typ": kit.raw_artifact(kit.claims(), header={"typ": "JWT"}),
        "unknown-claim": kit.raw_artifact(kit.claims(admin=True)),
        "missing-exp": kit.raw_artifact(kit.claims(exp=None)),
        "missing-iat": kit.raw_artifact(kit.claims(iat=None)),
        "empty-scope": kit.raw_artifact(kit.claims(scope=[])),
        "scope-grant-without-action": kit.raw_artifact(kit.claims(scope=[{"resource": "acct:1"}])),
        "scope-unknown-constraint": kit.raw_artifact(
            kit.claims(
                scope=[
                    {"action": "payments.*", "resource": "acct:**", "constraints": {"a": {"x": 1}}}
                ]
            )
        ),
        "cnf-not-an-object": kit.raw_artifact(kit.claims(cnf="thumb")),
        "uses-zero": kit.raw_artifact(kit.claims(uses=0)),
        "aud-empty-list": kit.raw_artifact(kit.claims(aud=[])),
        "gov-unknown-key": kit.raw_artifact(kit.claims(gov={"owner": "bob"})),
        "oversize": kit.raw_artifact(big),
    }


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "three-garbage-parts",
        "not-a-string",
        "wrong-typ",
        "unknown-claim",
        "missing-exp",
        "missing-iat",
        "empty-scope",
        "scope-grant-without-action",
        "scope-unknown-constraint",
        "cnf-not-an-object",
        "uses-zero",
        "aud-empty-list",
        "gov-unknown-key",
        "oversize",
    ],
)
def test_artifact_malformed(kit: Kit, gw: Gateway, case: str) -> None:
    artifact = _malformed_artifacts(kit)[case]
    request = kit.request(amount=1)
    wire = kit.submission(request, artifact if isinstance(artifact, str) else "x")
    wire["artifact"] = artifact
    d = gw.decide(wire)
    assert_denied(gw, d, "artifact.malformed")
    if case == "oversize":
        assert len(str(artifact)) > MAX_ARTIFACT_BYTES
        assert "longer than" in d.reasons[0].detail


def test_artifact_signature_invalid(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact()
    head, payload, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[0] ^= 0x01
    tampered = f"{head}.{payload}.{b64url_encode(bytes(raw))}"
    wire = kit.submission(kit.request(amount=1), tampered)
    assert_denied(gw, gw.decide(wire), "artifact.signature_invalid")


def test_artifact_with_altered_claims_fails_the_signature(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact()
    head, _, sig = token.split(".")
    widened = kit.claims(scope=[{"action": "**", "resource": "**"}])
    forged = f"{head}.{b64url_encode(json.dumps(widened).encode())}.{sig}"
    wire = kit.submission(kit.request(amount=1), forged)
    assert_denied(gw, gw.decide(wire), "artifact.signature_invalid")


def test_artifact_from_an_unknown_key(kit: Kit, gw: Gateway) -> None:
    stranger = PrivateKey.generate()
    token = kit.artifact(key=stranger)
    d = gw.decide(kit.submission(kit.request(amount=1), token))
    assert_denied(gw, d, "artifact.untrusted_issuer")


def test_artifact_signed_by_the_attester_key_is_not_an_authority(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(key=kit.attester)
    d = gw.decide(kit.submission(kit.request(amount=1), token))
    assert_denied(gw, d, "artifact.untrusted_issuer")


def test_artifact_iss_must_own_the_key(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(issuer="another-authority")
    d = gw.decide(kit.submission(kit.request(amount=1), token))
    assert_denied(gw, d, "artifact.untrusted_issuer")
    assert "does not own" in d.reasons[0].detail


@pytest.mark.parametrize(
    "grant",
    [
        {"action": "users.delete", "resource": "acct:1"},
        {"action": "payments.**", "resource": "acct:**"},
        {"action": "payments.transfer", "resource": "**"},
        {"action": "shell.exec", "resource": "acct:1"},
    ],
)
def test_artifact_grant_outside_the_authority_scope(
    kit: Kit, gw: Gateway, grant: dict[str, Any]
) -> None:
    token = kit.artifact([{"action": "payments.*", "resource": "acct:**"}, grant])
    d = gw.decide(kit.submission(kit.request(amount=1), token))
    assert_denied(gw, d, "artifact.untrusted_issuer")
    assert "may not grant" in d.reasons[0].detail
    again = gw.decide(kit.submission(kit.request(amount=1), token))  # refusals are not cached
    assert_denied(gw, again, "artifact.untrusted_issuer")


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [(0, "proceed"), (59, "proceed"), (60, "artifact.expired"), (3600, "artifact.expired")],
)
def test_artifact_expiry_with_leeway(kit: Kit, gw: Gateway, offset: int, outcome: str) -> None:
    token = kit.artifact(now=NOW - 600, ttl=600)  # exp == NOW
    kit.clock.t = NOW + offset
    d = gw.decide(kit.submission(kit.request(amount=1), token))
    if outcome == "proceed":
        assert d.outcome is Outcome.PROCEED, d.reasons
    else:
        assert_denied(gw, d, outcome)


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [
        (100, "proceed"),
        (40, "proceed"),
        (39, "artifact.not_yet_valid"),
        (-500, "artifact.not_yet_valid"),
    ],
)
def test_artifact_not_before_with_leeway(kit: Kit, gw: Gateway, offset: int, outcome: str) -> None:
    token = kit.artifact(not_before=NOW + 100)
    kit.clock.t = NOW + offset
    d = gw.decide(kit.submission(kit.request(amount=1), token))
    if outcome == "proceed":
        assert d.outcome is Outcome.PROCEED, d.reasons
    else:
        assert_denied(gw, d, outcome)


def test_artifact_wrong_audience(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(audience="gw-elsewhere")
    assert_denied(
        gw, gw.decide(kit.submission(kit.request(amount=1), token)), "artifact.wrong_audience"
    )


def test_artifact_audience_list_naming_this_gateway(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(audience=["gw-elsewhere", GATEWAY_ID])
    assert gw.decide(kit.submission(kit.request(amount=1), token)).outcome is Outcome.PROCEED


# --- revocation -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["jti", "issuer-kid", "runtime-jkt", "sub"])
def test_artifact_revoked(kit: Kit, gw: Gateway, target: str) -> None:
    token = kit.artifact(jti="revocable-jti-1")
    kind, value = {
        "jti": ("jti", "revocable-jti-1"),
        "issuer-kid": ("kid", kit.authority.public.thumbprint()),
        "runtime-jkt": ("kid", kit.runtime.key.public.thumbprint()),
        "sub": ("sub", RUNTIME_ID),
    }[target]
    # An unrelated revocation of each kind changes nothing.
    for k in ("jti", "kid", "sub"):
        gw.store.revoke(k, "unrelated", reason="noise", now=NOW)
    assert gw.decide(kit.submission(kit.request(amount=1), token)).outcome is Outcome.PROCEED

    assert gw.store.revoke(kind, value, reason="compromised", now=NOW)
    d = gw.decide(kit.submission(kit.request(amount=1), token))
    assert_denied(gw, d, "artifact.revoked")
    assert "compromised" in d.reasons[0].detail


def test_a_revoked_artifact_is_denied_as_revoked_whatever_else_went_wrong(
    kit: Kit, gw: Gateway
) -> None:
    """Revocation is checked in the commit for every decision on a verified artifact and
    comes first there: what the other stages found (a bad proof, a replay, a policy deny,
    a pause) does not hide it, and nothing is claimed for it (no approval opens)."""
    token = kit.artifact(jti="revocable-jti-2")
    used = kit.submission(kit.request(amount=1), token)
    assert gw.decide(used).outcome is Outcome.PROCEED
    assert gw.store.revoke("jti", "revocable-jti-2", reason="compromised", now=NOW)
    for wire in (
        kit.submission(kit.request(amount=1), token, signer=PrivateKey.generate()),  # bad proof
        used,  # a replay
        kit.submission(kit.request("payments.refund", amount=1), token),  # policy deny
        kit.submission(kit.request(amount=5000), token),  # a pause
    ):
        d = gw.decide(wire)
        assert_denied(gw, d, "artifact.revoked")
        assert d.reasons[0].detail == "jti revocable-jti-2 revoked: compromised"
    assert gw.store.approvals() == []


# --- uses -----------------------------------------------------------------------------


def test_single_use_artifact_is_exhausted_by_its_second_use(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(uses=1)
    first = gw.decide(kit.submission(kit.request(amount=1), token))
    assert first.outcome is Outcome.PROCEED
    second = gw.decide(kit.submission(kit.request(amount=1), token))
    assert_denied(gw, second, "artifact.exhausted")


def test_uses_are_counted_only_for_decisions_that_execute(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(uses=2)
    refused = [
        gw.decide(kit.submission(kit.request("payments.refund", amount=1), token)),  # deny
        gw.decide(kit.submission(kit.request(amount=5000), token)),  # pause
        gw.decide(kit.submission(kit.request("payments.charge"), token)),  # erroring rule
        gw.decide(kit.submission(kit.request(amount=1), token, audience="nope")),  # bad proof
    ]
    assert [d.outcome for d in refused] == [Outcome.DENY, Outcome.PAUSE, Outcome.DENY, Outcome.DENY]
    ok = [gw.decide(kit.submission(kit.request(amount=1), token)) for _ in range(2)]
    assert [d.outcome for d in ok] == [Outcome.PROCEED, Outcome.PROCEED]
    assert_denied(gw, gw.decide(kit.submission(kit.request(amount=1), token)), "artifact.exhausted")


def test_a_reroute_consumes_a_use(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact([{"action": "shell.exec", "resource": "host:**"}], uses=1)
    request = kit.request("shell.exec", "host:a", argv=["ls"])
    assert gw.decide(kit.submission(request, token)).outcome is Outcome.REROUTE
    assert_denied(gw, gw.decide(kit.submission(request, token)), "artifact.exhausted")


def test_uses_limit_holds_under_concurrency(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(uses=3)
    subs = [kit.submission(kit.request(amount=1), token) for _ in range(20)]
    results: list[Decision] = []
    lock = threading.Lock()
    start = threading.Barrier(len(subs))

    def run(wire: dict[str, Any]) -> None:
        start.wait()
        d = gw.decide(wire)
        with lock:
            results.append(d)

    threads = [threading.Thread(target=run, args=(s,)) for s in subs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = [d.outcome for d in results]
    assert outcomes.count(Outcome.PROCEED) == 3
    assert all(codes(d) == ["artifact.exhausted"] for d in results if not d.executes)
    assert sorted(d.log_index for d in results if d.log_index is not None) == list(range(20))


# --- proof of possession --------------------------------------------------------------


@pytest.mark.parametrize("proof", [None, ""])
def test_proof_missing(kit: Kit, gw: Gateway, proof: str | None) -> None:
    wire = kit.submit()
    wire["proof"] = proof
    assert_denied(gw, gw.decide(wire), "identity.proof_missing")


def _proof(kit: Kit, claims: dict[str, Any], *, key: PrivateKey | None = None) -> str:
    signer = key or kit.runtime.key
    return encode({"typ": PROOF_TYP, "jwk": signer.public.to_jwk()}, claims, signer)


def _proof_claims(kit: Kit, request: Request, artifact: str, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": "proof-jti-0123456789",
        "iat": kit.clock.now,
        "aud": GATEWAY_ID,
        "rh": request_hash(request),
        "ath": artifact_hash(artifact),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_handmade_proof_claims_are_accepted(kit: Kit, gw: Gateway) -> None:
    """The baseline the invalid-proof cases below each change one thing of."""
    request, token = kit.request(amount=1), kit.artifact()
    wire = {"request": request.canonical(), "artifact": token}
    wire["proof"] = _proof(kit, _proof_claims(kit, request, token, nonce="n-1"))
    assert gw.decide(wire).outcome is Outcome.PROCEED


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("too-old", {"iat": NOW - 121}),
        ("future-iat", {"iat": NOW + 61}),
        ("wrong-aud", {"aud": "gw-elsewhere"}),
        ("aud-as-list", {"aud": [GATEWAY_ID]}),
        ("aud-as-object", {"aud": {"gw": GATEWAY_ID}}),
        ("wrong-rh", {"rh": request_hash(Request("payments.transfer", "acct:2", RUNTIME_ID))}),
        ("wrong-ath", {"ath": artifact_hash("a.b.c")}),
        ("missing-rh", {"rh": None}),
        ("missing-iat", {"iat": None}),
        ("unknown-claim", {"scope": "everything"}),
        ("short-jti", {"jti": "abc"}),
        ("missing-jti", {"jti": None}),
        ("nonce-not-string", {"nonce": 7}),
    ],
)
def test_proof_invalid(kit: Kit, gw: Gateway, case: str, overrides: dict[str, Any]) -> None:
    request, token = kit.request(amount=1), kit.artifact()
    proof = _proof(kit, _proof_claims(kit, request, token, **overrides))
    wire = {"request": request.canonical(), "artifact": token, "proof": proof}
    assert_denied(gw, gw.decide(wire), "identity.proof_invalid")


@pytest.mark.parametrize("iat", [NOW - 120, NOW + 60])
def test_proof_iat_window_edges(kit: Kit, gw: Gateway, iat: int) -> None:
    request, token = kit.request(amount=1), kit.artifact()
    proof = _proof(kit, _proof_claims(kit, request, token, iat=iat))
    d = gw.decide({"request": request.canonical(), "artifact": token, "proof": proof})
    assert d.outcome is Outcome.PROCEED, d.reasons


def test_request_altered_after_signing(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact()
    wire = kit.submission(kit.request(amount=10), token)
    wire["request"]["args"]["amount"] = 4000
    assert_denied(gw, gw.decide(wire), "identity.proof_invalid")
    wire = kit.submission(kit.request(amount=10), token)
    assert_denied(
        gw,
        gw.decide(Submission(kit.request(amount=11), token, wire["proof"])),
        "identity.proof_invalid",
    )


def test_proof_for_another_artifact(kit: Kit, gw: Gateway) -> None:
    request = kit.request(amount=1)
    wire = kit.submission(request, kit.artifact(jti="artifact-a-000001"))
    wire["artifact"] = kit.artifact(jti="artifact-b-000001")
    assert_denied(gw, gw.decide(wire), "identity.proof_invalid")


@pytest.mark.parametrize("proof", ["garbage", "a.b.c", 42, ["x"]])
def test_proof_garbage(kit: Kit, gw: Gateway, proof: object) -> None:
    wire = kit.submit()
    wire["proof"] = proof
    assert_denied(gw, gw.decide(wire), "identity.proof_invalid")


def test_proof_with_a_kid_instead_of_a_jwk(kit: Kit, gw: Gateway) -> None:
    request, token = kit.request(amount=1), kit.artifact()
    key = kit.runtime.key
    proof = encode(
        {"typ": PROOF_TYP, "kid": key.public.thumbprint()}, _proof_claims(kit, request, token), key
    )
    wire = {"request": request.canonical(), "artifact": token, "proof": proof}
    assert_denied(gw, gw.decide(wire), "identity.proof_invalid")


def test_proof_by_another_key_is_an_identity_mismatch(kit: Kit, gw: Gateway) -> None:
    wire = kit.submission(kit.request(amount=1), kit.artifact(), signer=PrivateKey.generate())
    assert_denied(gw, gw.decide(wire), "identity.mismatch")


def test_proof_header_jwk_lying_about_the_signer(kit: Kit, gw: Gateway) -> None:
    """The header names the bound key, but another key signed: the signature fails."""
    request, token = kit.request(amount=1), kit.artifact()
    intruder = PrivateKey.generate()
    header = {"typ": PROOF_TYP, "jwk": kit.runtime.key.public.to_jwk()}
    proof = encode(header, _proof_claims(kit, request, token), intruder)
    wire = {"request": request.canonical(), "artifact": token, "proof": proof}
    assert_denied(gw, gw.decide(wire), "identity.proof_invalid")


def test_request_runtime_must_be_the_artifact_subject(kit: Kit, gw: Gateway) -> None:
    wire = kit.submission(kit.request(amount=1, runtime="agent-2"), kit.artifact())
    d = gw.decide(wire)
    assert_denied(gw, d, "identity.mismatch")
    assert "agent-2" in d.reasons[0].detail


# --- what an unauthenticated request leaves in the log ------------------------------------


def test_a_large_request_without_a_valid_proof_is_logged_without_its_arguments(
    kit: Kit, gw: Gateway
) -> None:
    """Anyone can send a 1 MiB request; without a proof that verified, only its action,
    resource, runtime and hash reach the permanent log."""
    big = kit.request("payments.transfer", memo="x" * 20_000)
    wire = kit.submit(big)
    for anonymous in ({**wire, "proof": None}, {**wire, "artifact": "not-a-jws"}):
        d = gw.decide(anonymous)
        assert d.outcome is Outcome.DENY
        record = logged(gw, d)
        assert record["args_omitted"] is True
        assert "args" not in record["request"]
        assert record["request"]["action"] == "payments.transfer"
        assert record["request_hash"] == request_hash(big)
        assert d.log_index is not None
        assert len(gw.store.entries(d.log_index, d.log_index + 1)[0].entry) < 8_000
    small_wire = kit.submit()
    small = gw.decide({**small_wire, "proof": None})  # small: kept whole, as any other
    assert "args_omitted" not in logged(gw, small)
    assert logged(gw, small)["request"]["args"] == small_wire["request"]["args"]
    signed = gw.decide(wire)  # the runtime's own large request is logged whole
    assert logged(gw, signed)["request"] == big.canonical()
    assert "args_omitted" not in logged(gw, signed)


def test_a_parent_longer_than_any_receipt_is_refused_before_anything_is_logged(
    kit: Kit, gw: Gateway
) -> None:
    """An anonymous request's parent stays in the log whole (its arguments do not): one
    of a megabyte added a megabyte a call. No receipt is longer than MAX_RECEIPT_BYTES,
    so a longer parent is a malformed request, refused like one and logged nowhere."""
    wire = kit.submit()
    request = {**wire["request"], "parent": "x" * (MAX_RECEIPT_BYTES + 1)}
    with pytest.raises(RequestError, match=f"parent receipt .*at most {MAX_RECEIPT_BYTES}"):
        gw.decide({**wire, "request": request, "proof": None})
    wide = {**wire["request"], "parent": "\U0001f600" * MAX_RECEIPT_BYTES}  # 4 bytes each
    with pytest.raises(RequestError, match="parent receipt \\(ASCII text"):
        gw.decide({**wire, "request": wide, "proof": None})
    assert gw.store.size() == 0
    longest = {**wire["request"], "parent": "x" * MAX_RECEIPT_BYTES}
    decision = gw.decide({**wire, "request": longest, "proof": None})
    assert decision.outcome is Outcome.DENY  # a request: decided, and logged
    assert gw.store.size() == 1


# --- replay ---------------------------------------------------------------------------


def test_replayed_proof_is_detected(kit: Kit, gw: Gateway) -> None:
    wire = kit.submit()
    assert gw.decide(wire).outcome is Outcome.PROCEED
    assert_denied(gw, gw.decide(wire), "replay.detected")


def test_replay_is_detected_across_gateway_restarts(kit: Kit) -> None:
    wire = kit.submit()
    first = kit.gateway()
    assert first.decide(wire).outcome is Outcome.PROCEED
    first.close()
    second = kit.gateway()
    assert_denied(second, second.decide(wire), "replay.detected")


def test_a_purge_keeps_what_a_wider_configured_gateway_still_accepts(kit: Kit) -> None:
    """A proof recorded under ``proof_max_age = 120`` is still fresh for a gateway
    restarted with 600: that gateway's purge must not forget it, or it could be replayed."""
    wire = kit.submit()
    first = kit.gateway()
    assert first.decide(wire).outcome is Outcome.PROCEED
    first.close()
    config = kit.home / "execgate.toml"
    text = config.read_text(encoding="utf-8")
    assert "proof_max_age = 120" in text
    config.write_text(text.replace("proof_max_age = 120", "proof_max_age = 600"), "utf-8")
    kit.clock.t = NOW + 400  # past the row's expiry (iat + 120 + leeway), inside 600
    second = kit.gateway()
    second._purge(int(kit.clock.t))
    assert_denied(second, second.decide(wire), "replay.detected")
    kit.clock.t = NOW + 600 + 60 + 600 + 60 + 1  # no limit can accept it any more
    second._purge(int(kit.clock.t))
    assert second.store.replay_size() == 0


def test_a_clock_gone_back_past_a_purge_fails_closed_instead_of_forgetting(kit: Kit) -> None:
    """A purge while the clock read a day ahead forgets the records of today's proofs and
    single-use artifacts; once it is set right again, those must not pass as unseen.
    Fresh proofs pass again once the clock is past the latest expiry the purge removed,
    a proof's lifetime later (before, every decision failed closed until the clock
    caught up with the day-ahead reading)."""
    gw = kit.gateway()
    spent = kit.submit()
    assert gw.decide(spent).outcome is Outcome.PROCEED
    once = kit.artifact(uses=1, ttl=3600)
    assert gw.decide(kit.submission(kit.request(amount=1), once)).outcome is Outcome.PROCEED
    kit.clock.t = NOW + 86400  # the clock jumps a day ahead; a purge runs
    gw._purge(kit.clock.now)
    assert gw.store.replay_size() == 0
    kit.clock.t = NOW + 5  # and is set right again
    for decision in (
        gw.decide(spent),  # the replay of a proof whose record is gone
        gw.decide(kit.submission(kit.request(amount=1), once)),  # a second use
    ):
        assert decision.outcome is Outcome.FAIL_CLOSED
        assert codes(decision) == ["store.unavailable"]
        assert "the clock has gone back" in decision.reasons[0].detail
        assert logged(gw, decision)["outcome"] == "fail_closed"
    fresh = gw.decide(kit.submit())  # issued before the latest proof removed expired
    assert fresh.outcome is Outcome.FAIL_CLOSED
    assert gw.store.replay_size() == 0  # nothing was claimed
    # Past the spent proof's expiry (its iat plus proof_max_age and leeway), none of the
    # removed proofs can be a fresh one.
    kit.clock.t = NOW + 120 + 60 + 1
    assert gw.decide(kit.submit()).outcome is Outcome.PROCEED
    # A single-use artifact's count is checked against the latest count removed: one
    # expiring before it fails closed, one expiring after it is counted as usual.
    shorter, longer = kit.artifact(uses=1, ttl=600), kit.artifact(uses=1, ttl=7200)
    assert gw.decide(kit.submission(kit.request(amount=2), shorter)).outcome is (
        Outcome.FAIL_CLOSED
    )
    assert gw.decide(kit.submission(kit.request(amount=3), longer)).outcome is Outcome.PROCEED


def test_a_leeway_widened_since_a_purge_does_not_let_what_it_removed_pass(kit: Kit) -> None:
    """The store compares a claim with its purge marks by the claim's own time (the
    proof's iat, the artifact's exp), not by the expiry this gateway's limits give it: a
    proof spent and a single use taken with no leeway, both removed by a purge while the
    clock read a day ahead, are still refused by a gateway since given a minute's."""
    kit.set_leeway(0)
    before = kit.gateway()
    spent = kit.submit()
    once = kit.artifact(uses=1, ttl=3600)
    assert before.decide(spent).outcome is Outcome.PROCEED
    assert before.decide(kit.submission(kit.request(amount=1), once)).outcome is Outcome.PROCEED
    kit.clock.t = NOW + 86400
    before._purge(kit.clock.now)
    assert before.store.replay_size() == 0
    kit.clock.t = NOW + 5
    kit.set_leeway(60)
    after = kit.gateway()
    assert after._leeway == 60
    replay = after.decide(spent)  # it expires at NOW+180 under the new limits
    assert replay.outcome is Outcome.FAIL_CLOSED
    assert codes(replay) == ["store.unavailable"]
    # Past the removed proofs (NOW+120), a fresh proof passes, so only the count can
    # refuse the second use: it expires at NOW+3660 under the new limits.
    kit.clock.t = NOW + 125
    assert after.decide(kit.submit()).outcome is Outcome.PROCEED
    second = after.decide(kit.submission(kit.request(amount=1), once))
    assert second.outcome is Outcome.FAIL_CLOSED
    assert codes(second) == ["store.unavailable"]


def test_a_commit_that_lands_after_another_gateways_purge_still_counts(kit: Kit) -> None:
    """With tight limits (a 5 s proof age, no leeway), a decision whose commit waited a
    few seconds behind other writers, while another process purged, is not mistaken for
    one whose replay state was purged: purges keep PURGE_LAG more."""
    config = kit.home / "execgate.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace("proof_max_age = 120", "proof_max_age = 5").replace(
        "leeway = 60 ", "leeway = 0 "
    )
    config.write_text(text, encoding="utf-8")
    slow, other = kit.gateway(), kit.gateway()
    # Something for the purge to remove, expiring just after the slow decision's proof
    # is issued: without PURGE_LAG the purge would remove it and mark past that proof.
    kit.clock.t = NOW - 4
    assert other.decide(kit.submit()).outcome is Outcome.PROCEED  # its row expires at NOW+1
    kit.clock.t = NOW
    commit = slow.store.commit

    def after_a_purge(job: WriteJob) -> int:
        other._purge(kit.clock.now + 30)  # the other process's clock, 30 s on
        return commit(job)

    slow.store.commit = after_a_purge  # type: ignore[method-assign]
    assert slow.decide(kit.submit()).outcome is Outcome.PROCEED


def test_concurrent_replays_let_exactly_one_proceed(kit: Kit, gw: Gateway) -> None:
    wire = kit.submit()
    n = 16
    results: list[Decision] = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def run() -> None:
        start.wait()
        d = gw.decide(wire)
        with lock:
            results.append(d)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n
    assert [d.outcome for d in results].count(Outcome.PROCEED) == 1
    assert sorted(tuple(codes(d)) for d in results if not d.executes) == [("replay.detected",)] * (
        n - 1
    )
    records = [json.loads(e.entry) for e in gw.store.entries(0, n)]
    assert [r["outcome"] for r in records].count("proceed") == 1


# --- environment ----------------------------------------------------------------------

REPORTS = [{"action": "reports.read", "resource": "**"}]


def _env_decide(kit: Kit, gw: Gateway, attestation: str | None) -> Decision:
    token = kit.artifact(REPORTS, env={"region": ["eu-west-1", "eu-central-1"]})
    return gw.decide(
        kit.submission(kit.request("reports.read", "report:q3"), token, attestation=attestation)
    )


def test_environment_attested_and_matching(kit: Kit, gw: Gateway) -> None:
    d = _env_decide(kit, gw, kit.attestation({"region": "eu-central-1", "host": "h1"}))
    assert d.outcome is Outcome.PROCEED, d.reasons


def test_an_attestation_whose_attester_key_is_revoked_does_not_count(kit: Kit, gw: Gateway) -> None:
    attestation = kit.attestation({"region": "eu-central-1"})
    assert _env_decide(kit, gw, attestation).outcome is Outcome.PROCEED
    gw.store.revoke("kid", kit.attester.public.thumbprint(), reason="attester lost", now=NOW)
    d = _env_decide(kit, gw, kit.attestation({"region": "eu-central-1"}))
    assert (d.outcome, codes(d)) == (Outcome.DENY, ["environment.untrusted"])
    assert "attester key: kid " in d.reasons[0].detail
    assert "attester lost" in d.reasons[0].detail


def test_environment_is_not_checked_without_env_conditions(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(REPORTS)
    d = gw.decide(kit.submission(kit.request("reports.read", "report:q3"), token))
    assert d.outcome is Outcome.PROCEED


@pytest.mark.parametrize(
    "case",
    ["missing", "stranger", "authority-key", "other-runtime", "expired", "future", "garbage"],
)
def test_environment_untrusted(kit: Kit, gw: Gateway, case: str) -> None:
    attestation = {
        "missing": None,
        "stranger": kit.attestation(key=PrivateKey.generate()),
        "authority-key": kit.attestation(key=kit.authority),
        "other-runtime": kit.attestation(subject="agent-2"),
        "expired": kit.attestation(now=NOW - 400, ttl=300),  # exp NOW-100, leeway 60
        "future": kit.attestation(now=NOW + 61),
        "garbage": "not-an-attestation",
    }[case]
    assert_denied(gw, _env_decide(kit, gw, attestation), "environment.untrusted")


@pytest.mark.parametrize("env", [{"region": "us-east-1"}, {"host": "h1"}])
def test_environment_mismatch(kit: Kit, gw: Gateway, env: dict[str, str]) -> None:
    assert_denied(gw, _env_decide(kit, gw, kit.attestation(env)), "environment.mismatch")


# --- scope ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("payments.refund.partial", "acct:1"),
        ("users.delete", "acct:1"),
        ("payments.transfer", "bank:1"),
    ],
)
def test_scope_not_granted(kit: Kit, gw: Gateway, action: str, resource: str) -> None:
    token = kit.artifact([{"action": "payments.*", "resource": "acct:**"}])
    assert_denied(
        gw, gw.decide(kit.submission(kit.request(action, resource), token)), "scope.not_granted"
    )


CONSTRAINED = [
    {
        "action": "payments.*",
        "resource": "acct:**",
        "constraints": {
            "amount": {"max": 500, "min": 1},
            "currency": {"enum": ["EUR", "USD"]},
            "memo": {"pattern": "[A-Z]{3}-[0-9]+"},
            "iban": {"prefix": "DE"},
        },
    }
]
GOOD_ARGS: dict[str, Any] = {"amount": 500, "currency": "EUR", "memo": "INV-7", "iban": "DE0012"}


def test_constrained_request_inside_every_bound_proceeds(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(CONSTRAINED)
    for args in (
        GOOD_ARGS,
        {**GOOD_ARGS, "amount": 1, "currency": "USD"},
        {**GOOD_ARGS, "amount": 2.5},
    ):
        d = gw.decide(kit.submission(kit.request(**args), token))
        assert d.outcome is Outcome.PROCEED, (args, d.reasons)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"amount": 501}, "exceeds max"),
        ({"amount": 500.5}, "exceeds max"),
        ({"amount": 0}, "below min"),
        ({"amount": "100"}, "not a number"),
        ({"amount": True}, "not a number"),
        ({"amount": None}, "not a number"),
        ({"currency": "GBP"}, "not one of"),
        ({"currency": ["EUR"]}, "not one of"),
        ({"memo": "inv-7"}, "does not match"),
        ({"memo": "INV-7x"}, "does not match"),
        ({"memo": 7}, "not a string"),
        ({"iban": "FR0012"}, "does not start with"),
        ({"iban": 12}, "not a string"),
        ({"amount": "MISSING"}, "missing"),
        ({"iban": "MISSING"}, "missing"),
    ],
)
def test_scope_constraint_violated(
    kit: Kit, gw: Gateway, change: dict[str, Any], detail: str
) -> None:
    args = {**GOOD_ARGS, **change}
    args = {k: v for k, v in args.items() if v != "MISSING"}
    token = kit.artifact(CONSTRAINED)
    d = gw.decide(kit.submission(kit.request(**args), token))
    assert_denied(gw, d, "scope.constraint_violated")
    assert detail in d.reasons[0].detail


def test_constraint_on_a_huge_integer_argument_is_a_violation(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(CONSTRAINED)
    # 2**53 - 1 is the largest integer with a canonical JSON form: still a number.
    d = gw.decide(kit.submission(kit.request(**{**GOOD_ARGS, "amount": 2**53 - 1}), token))
    assert_denied(gw, d, "scope.constraint_violated")
    assert "exceeds max" in d.reasons[0].detail


def test_a_second_grant_can_admit_what_the_first_refuses(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(
        [
            {"action": "payments.*", "resource": "acct:**", "constraints": {"amount": {"max": 10}}},
            {
                "action": "payments.transfer",
                "resource": "acct:9",
                "constraints": {"amount": {"max": 900}},
            },
        ]
    )
    assert gw.decide(kit.submission(kit.request(resource="acct:9", amount=800), token)).executes
    d = gw.decide(kit.submission(kit.request(resource="acct:8", amount=800), token))
    assert_denied(gw, d, "scope.constraint_violated")


# --- lineage --------------------------------------------------------------------------


def test_request_with_a_parent_is_lineage_broken(kit: Kit, gw: Gateway) -> None:
    wire = kit.submission(kit.request(amount=1, parent="some.parent.receipt"), kit.artifact())
    assert_denied(gw, gw.decide(wire), "lineage.broken")


def test_delegated_artifact_is_lineage_broken(kit: Kit, gw: Gateway) -> None:
    token = kit.raw_artifact(kit.claims(prf=[kit.artifact()]))
    assert_denied(gw, gw.decide(kit.submission(kit.request(amount=1), token)), "lineage.broken")


# --- policy ---------------------------------------------------------------------------


def test_policy_deny_rule(kit: Kit, gw: Gateway) -> None:
    d = gw.decide(kit.submit(kit.request("payments.refund", amount=1)))
    assert_denied(gw, d, "policy.denied")
    assert d.rule == "refunds-denied"
    assert "refunds are manual" in d.reasons[0].detail


@pytest.mark.parametrize("args", [{}, {"amount": "12"}, {"amount": True}])
def test_policy_erroring_condition_denies(kit: Kit, gw: Gateway, args: dict[str, Any]) -> None:
    d = gw.decide(kit.submit(kit.request("payments.charge", **args)))
    assert_denied(gw, d, "policy.denied")
    assert d.rule == "charges-over-ten"
    assert "condition failed" in d.reasons[0].detail


def test_policy_false_condition_falls_through_to_the_next_rule(kit: Kit, gw: Gateway) -> None:
    d = gw.decide(kit.submit(kit.request("payments.charge", amount=5)))
    assert d.outcome is Outcome.PROCEED
    assert d.rule == "payments"


def test_policy_no_match(kit: Kit, gw: Gateway) -> None:
    token = kit.artifact(REPORTS)
    d = gw.decide(kit.submission(kit.request("reports.read", "wiki:page"), token))
    assert_denied(gw, d, "policy.no_match")
    assert d.rule is None


def test_policy_pin_that_differs_is_a_mismatch(kit: Kit, gw: Gateway) -> None:
    d = gw.decide(kit.submit(gov={"policy": "sha256:" + "0" * 64}))
    assert_denied(gw, d, "policy.mismatch")


def test_policy_pin_that_matches_proceeds(kit: Kit, gw: Gateway) -> None:
    d = gw.decide(kit.submit(gov={"policy": gw.policy.hash, "ticket": "T-1"}))
    assert d.outcome is Outcome.PROCEED


def test_policy_sees_artifact_governance(tmp_path: Path) -> None:
    policy = """\
version: 1
rules:
  - name: ticketed
    match: {action: "payments.*"}
    when: "has(artifact.gov.ticket) && environment == {} && now > 0"
    effect: proceed
  - name: other
    match: {action: "**"}
    effect: deny
"""
    kit = make_kit(tmp_path, policy=policy)
    try:
        gw = kit.gateway()
        assert gw.decide(kit.submit(gov={"ticket": "T-9"})).rule == "ticketed"
        d = gw.decide(kit.submit())
        assert d.rule == "other"
        assert_denied(gw, d, "policy.denied")
    finally:
        kit.close()


# --- malformed submissions ------------------------------------------------------------


def _bad_submissions() -> dict[str, object]:
    good = {"action": "payments.transfer", "resource": "acct:1", "runtime": RUNTIME_ID}
    deep: list[Any] = []
    for _ in range(5_000):
        deep = [deep]
    return {
        "args-too-deep": {"request": {**good, "args": {"x": deep}}},
        "not-an-object": ["request"],
        "null": None,
        "unknown-field": {"request": good, "artifact": None, "proof": None, "extra": 1},
        "missing-request": {"artifact": "a.b.c", "proof": "a.b.c"},
        "request-not-an-object": {"request": "payments.transfer"},
        "request-unknown-field": {"request": {**good, "user": "root"}},
        "request-missing-action": {"request": {"resource": "acct:1", "runtime": RUNTIME_ID}},
        "action-not-a-string": {"request": {**good, "action": 7}},
        "empty-resource": {"request": {**good, "resource": ""}},
        "runtime-list": {"request": {**good, "runtime": [RUNTIME_ID]}},
        "args-list": {"request": {**good, "args": ["--force"]}},
        "parent-number": {"request": {**good, "parent": 1}},
        "args-not-json": {"request": {**good, "args": {"x": b"bytes"}}},
        "args-float-nan": {"request": {**good, "args": {"x": float("nan")}}},
        "args-int-too-big": {"request": {**good, "args": {"x": 2**64}}},
        # JCS writes 1e20 as the integer 100000000000000000000, itself without a form
        "args-float-written-as-a-huge-int": {"request": {**good, "args": {"x": 1e20}}},
        "args-float-2-53": {"request": {**good, "args": {"x": [1.5, -(2.0**53)]}}},
        "oversize": {"request": {**good, "args": {"blob": "x" * MAX_REQUEST_BYTES}}},
        "action-too-long": {"request": {**good, "action": "a" * 1025}},
        # look-alikes of a name a rule matches exactly, for an executor that trims
        "action-newline": {"request": {**good, "action": "payments.refund\n"}},
        "action-nul": {"request": {**good, "action": "payments.refund\x00"}},
        "action-zero-width": {"request": {**good, "action": "payments.refund\u200b"}},
        "resource-no-break-space": {"request": {**good, "resource": "acct:1\u00a0"}},
        "action-trailing-space": {"request": {**good, "action": "payments.refund "}},
        "resource-leading-space": {"request": {**good, "resource": " acct:42"}},
        "runtime-trailing-space": {"request": {**good, "runtime": RUNTIME_ID + " "}},
        # a path a glob matches as text but that leads elsewhere once resolved
        "resource-dot-dot": {"request": {**good, "resource": "/srv/data/../../etc/passwd"}},
        "resource-dot-dot-end": {"request": {**good, "resource": "files:/srv/data/.."}},
        "resource-dot": {"request": {**good, "resource": "/srv/./data"}},
        "resource-only-dots": {"request": {**good, "resource": ".."}},
        "resource-dot-dot-after-a-scheme": {"request": {**good, "resource": "files:../x"}},
        "resource-dot-after-a-scheme": {"request": {**good, "resource": "files:./x"}},
        "resource-dot-dot-backslashes": {"request": {**good, "resource": "C:\\a\\..\\b"}},
        # a path the file system and most web frameworks read without its empty segment
        "resource-empty-segment": {"request": {**good, "resource": "/srv//secret/x"}},
        "resource-empty-first-segment": {"request": {**good, "resource": "//srv/secret"}},
        "resource-empty-segment-backslashes": {"request": {**good, "resource": "\\a\\\\b"}},
        "runtime-bidi": {"request": {**good, "runtime": "agent-\u202e1"}},
        "request-non-string-key": {"request": {**good, 1: "x"}},
        "non-string-key": {"request": good, 2: "x"},
        "request-is-a-request": {"request": Request("a", "r", RUNTIME_ID)},
    }


@pytest.mark.parametrize("case", list(_bad_submissions()))
def test_malformed_submission_is_a_request_error(kit: Kit, gw: Gateway, case: str) -> None:
    with pytest.raises(RequestError):
        gw.decide(_bad_submissions()[case])  # type: ignore[arg-type]
    assert gw.store.size() == 0


@pytest.mark.parametrize("resource", ["/srv/data/.ssh", "/a/...", "a..b", "acct:1.2", "/v1.2/x."])
def test_dots_inside_a_resource_segment_are_fine(resource: str) -> None:
    assert Request("files.read", resource, RUNTIME_ID).resource == resource


@pytest.mark.parametrize("resource", ["/", "/srv/", "s3://bucket//key", "acct:1 2"])
def test_a_trailing_slash_a_slash_pair_outside_a_path_and_inner_spaces_are_fine(
    resource: str,
) -> None:
    assert Request("files.read", resource, RUNTIME_ID).resource == resource


def test_numbers_that_read_back_alike_are_decided_and_logged(kit: Kit, gw: Gateway) -> None:
    """A float JCS writes with an exponent, or as an integer within +-(2**53 - 1), reads
    back as itself: decided and logged like any other (the huge ones are refused above,
    with nothing logged either way, instead of a decision that cannot be logged)."""
    big = kit.request(amount=5, x=1e21, y=float(2**53 - 1), z=-0.0)
    decision = gw.decide(kit.submit(big))
    assert decision.outcome is Outcome.PROCEED
    assert logged(gw, decision)["request"]["args"] == {
        "amount": 5,
        "x": 1e21,
        "y": 2**53 - 1,
        "z": 0,
    }


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe{}", b'{"request": {}, "request": {}}', b"[1, 2]", b'{"a": NaN}'],
)
def test_submission_from_bytes_rejects_non_json(data: bytes) -> None:
    with pytest.raises(RequestError):
        Submission.from_bytes(data)


def test_submission_from_bytes_round_trip(kit: Kit, gw: Gateway) -> None:
    data = json.dumps(kit.submit()).encode()
    assert gw.decide(Submission.from_bytes(data)).outcome is Outcome.PROCEED


def test_submission_from_bytes_over_the_limit() -> None:
    with pytest.raises(RequestError, match="exceeds"):
        Submission.from_bytes(b" " * (2 * MAX_REQUEST_BYTES + 1))


def test_oversize_request_built_in_python_is_refused_too(kit: Kit) -> None:
    request = kit.request(blob="x" * MAX_REQUEST_BYTES)
    with pytest.raises(RequestError, match="limit"):
        Submission(request, "a.b.c", "a.b.c")


def test_a_request_of_too_many_values_is_refused_every_way_in() -> None:
    """A megabyte of nested empty lists is half a million values, each costing Python work
    wherever the request is walked: more than MAX_REQUEST_VALUES is refused up front."""
    many: list[list[int]] = [[]] * (MAX_REQUEST_VALUES // 2)
    Submission(Request("a", "r", "rt", args={"l": many}), None, None)
    too_many: dict[str, Any] = {"l": [[]] * (MAX_REQUEST_VALUES + 1)}
    with pytest.raises(RequestError, match=f"more than {MAX_REQUEST_VALUES} JSON values"):
        Submission(Request("a", "r", "rt", args=too_many), None, None)
    wire = {"request": {"action": "a", "resource": "r", "runtime": "rt", "args": too_many}}
    with pytest.raises(RequestError, match=f"more than {MAX_REQUEST_VALUES} values"):
        Submission.from_bytes(json.dumps(wire).encode())


def test_request_at_the_size_limit_is_accepted() -> None:
    base = Request("a", "r", "rt", args={"blob": ""})
    room = MAX_REQUEST_BYTES - len(canonical_json(base.canonical()))
    Submission(Request("a", "r", "rt", args={"blob": "x" * room}), None, None)
    with pytest.raises(RequestError):
        Submission(Request("a", "r", "rt", args={"blob": "x" * (room + 1)}), None, None)


def test_a_policy_reload_during_a_decision_does_not_mix_two_policies(kit: Kit, gw: Gateway) -> None:
    """The policy is taken once when a decision starts: a reload landing while the
    policy stage runs changes neither the hash in the decision, its record and receipt,
    nor which policy decided."""
    from execgate.policy import parse_policy

    old = gw.policy
    new = parse_policy(
        "version: 1\nrules:\n  - name: all-denied\n    match: {action: '**', resource: '**'}\n"
        "    effect: deny\n",
        source="reloaded",
        targets=(),
    )
    assert new.hash != old.hash

    class ReloadedMidway:
        hash = old.hash

        def evaluate(self, **kwargs: Any) -> Any:
            gw.policy = new  # what reload_policy does, at the worst moment
            return old.evaluate(**kwargs)

    gw.policy = ReloadedMidway()  # type: ignore[assignment]
    decision = gw.decide(kit.submit(kit.request("payments.charge", amount=50)))
    assert decision.outcome is Outcome.PROCEED
    assert decision.policy_hash == old.hash
    assert decision.log_index is not None
    assert decision.receipt is not None
    logged = gw.store.entries(decision.log_index, decision.log_index + 1)[0]
    assert json.loads(logged.entry)["policy_hash"] == old.hash
    node = kit.node_key.public
    claims = verify_receipt(decision.receipt, keys={node.thumbprint(): node}, now=NOW, leeway=0)
    assert claims["pol"] == old.hash
    after = gw.decide(kit.submit(kit.request("payments.charge", amount=50)))
    assert after.outcome is Outcome.DENY
    assert after.policy_hash == new.hash
