"""The admin routes in process: who is let in (401/403, both audited), approvals reviewed
over HTTP, revocations, policy reload, the audit export and consistency proofs."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from gatekit import GATEWAY_ID, NOW, POLICY, Kit, make_kit
from test_server_api import Client, decide, error_of

from execgate.admin import issue_admin_token
from execgate.approvals import Pending, Review, sign_review
from execgate.audit.checkpoint import open_checkpoint, verify_tlog_proof
from execgate.audit.log import verify_export
from execgate.audit.merkle import verify_consistency
from execgate.audit.note import Verifier
from execgate.errors import EvidenceError, StoreUnavailable
from execgate.home import ServerConfig
from execgate.jose import sha256_b64url
from execgate.keyfile import read_private_key
from execgate.pipeline import Gateway
from execgate.server import admin as admin_module
from execgate.server import create_app
from execgate.server.app import CHECKPOINT_MAX_AGE
from execgate.server.openapi import openapi_document
from execgate.store.base import WriteJob
from execgate.store.unavailable import UnavailableStore

RELOAD = "/v1/admin/policy/reload"
REVOKE = "/v1/revocations"
APPROVALS = "/v1/admin/approvals"
EXPORT = "/v1/admin/audit/export"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    k.add_admin("auditor", ["audit"])  # may only read and export the log
    k.add_admin("revoker", ["revoke"])  # may only revoke
    yield k
    k.close()


@pytest.fixture
def client(kit: Kit) -> Iterator[Client]:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as c:
        yield c


def token(kit: Kit, method: str, path: str, *, who: str = "admin", **over: Any) -> dict[str, str]:
    """An admin token for the call ``method path`` (with the query ``path`` ends in, if
    any, and the bytes ``body``, none by default)."""
    key = read_private_key(kit.home / "keys" / f"{who}.jwk")
    path, _, query = path.partition("?")
    value = issue_admin_token(
        key=key,
        admin=over.pop("admin", who),
        audience=over.pop("audience", GATEWAY_ID),
        method=method,
        path=path,
        query=query,
        now=over.pop("now", kit.clock.now),
        ttl=over.pop("ttl", 60),
        body=over.pop("body", b""),
    )
    return {"Authorization": f"Bearer {value}"}


def encoded(body: Any) -> bytes:
    return json.dumps(body).encode()


def post(client: Client, kit: Kit, path: str, body: Any, **over: Any) -> httpx.Response:
    """POST ``body`` as JSON with an admin token minted over exactly those bytes."""
    data = encoded(body)
    headers = {"Content-Type": "application/json", **token(kit, "POST", path, body=data, **over)}
    return client.post(path, content=data, headers=headers)


def logged(client: Client) -> list[bytes]:
    """The app's log, read from its store (reading it over HTTP would log that read)."""
    store = client.app.state.gateway.store
    return [e.entry for e in store.entries(0, store.size())]


def records(client: Client, kind: str = "admin") -> list[dict[str, Any]]:
    return [r for r in map(json.loads, logged(client)) if r["kind"] == kind]


def entries_text(client: Client) -> str:
    return "\n".join(entry.decode() for entry in logged(client))


# -- who is let in ----------------------------------------------------------------------


def test_no_token_is_401_with_a_challenge_and_is_audited(kit: Kit, client: Client) -> None:
    response = client.post(RELOAD)
    assert error_of(response, 401) == "admin.unauthenticated"
    assert response.headers["www-authenticate"] == 'Bearer realm="execgate"'
    [record] = records(client)
    assert record["result"] == "refused"
    assert record["code"] == "admin.unauthenticated"
    assert record["admin"] is None
    assert record["action"] == "policy.reload"
    assert (record["method"], record["path"]) == ("POST", RELOAD)
    assert record["v"] == 1


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda k: {"Authorization": "Basic YWRtaW46YWRtaW4="}, "not 'Bearer"),
        (lambda k: {"Authorization": "Bearer not.a.token"}, "malformed"),
        (lambda k: token(k, "POST", RELOAD, now=k.clock.now - 200), "expired"),
        (lambda k: token(k, "POST", RELOAD, audience="gw-other"), "another gateway"),
        (lambda k: token(k, "POST", REVOKE), "another call"),
        (lambda k: token(k, "GET", RELOAD), "another call"),
        (lambda k: token(k, "POST", RELOAD, who="approver-alice", admin="alice"), "no admin's"),
        (lambda k: token(k, "POST", RELOAD, who="auditor", admin="admin"), "signed by"),
    ],
    ids=["basic", "garbage", "expired", "audience", "path", "method", "approver-key", "spoof"],
)
def test_bad_tokens_are_401_and_audited(kit: Kit, client: Client, make: Any, fragment: str) -> None:
    headers = make(kit)
    response = client.post(RELOAD, headers=headers)
    assert error_of(response, 401) == "admin.unauthenticated"
    assert fragment in response.json()["error"]["message"]
    assert "invalid_token" in response.headers["www-authenticate"]
    [record] = records(client)
    assert (record["result"], record["code"], record["admin"]) == (
        "refused",
        "admin.unauthenticated",
        None,
    )
    # The token itself is never logged.
    secret = headers["Authorization"].split(" ", 1)[1]
    assert secret not in entries_text(client)


def test_a_token_is_single_use(kit: Kit, client: Client) -> None:
    headers = token(kit, "GET", APPROVALS)
    assert client.get(APPROVALS, headers=headers).status_code == 200
    again = client.get(APPROVALS, headers=headers)
    assert error_of(again, 401) == "admin.unauthenticated"
    assert "replay" in again.json()["error"]["message"]
    first, second = records(client)
    assert (first["result"], first["admin"]) == ("authorized", "admin")
    assert (second["result"], second["code"]) == ("refused", "admin.unauthenticated")
    assert first["token_jti"] == second["token_jti"] is not None


def test_a_token_is_for_the_path_the_call_is_routed_by(kit: Kit, client: Client) -> None:
    """The path a token names is compared with the one the route and its parameters
    are read from: a tab or a newline the URL parser would drop does not let a token
    for one id reach another, and the record names the path refused."""
    for sent, routed in (
        (f"{APPROVALS}/%09abc", f"{APPROVALS}/\tabc"),
        (f"{APPROVALS}/ab%0Ac", f"{APPROVALS}/ab\nc"),
    ):
        response = client.get(sent, headers=token(kit, "GET", f"{APPROVALS}/abc"))
        assert error_of(response, 401) == "admin.unauthenticated"
        assert "another call" in response.json()["error"]["message"]
        assert records(client)[-1]["path"] == routed
    assert [r["result"] for r in records(client)] == ["refused", "refused"]


@pytest.mark.parametrize(
    ("kind", "said"),
    [("kid", "the key of admin 'auditor' is revoked"), ("sub", "admin 'auditor' is revoked")],
)
def test_a_revoked_admin_key_signs_no_more_calls(
    kit: Kit, client: Client, kind: str, said: str
) -> None:
    """Revoking an admin's key by its key id (its thumbprint, as for any key), or the
    admin by its id (``sub``, as for approvers), refuses its tokens from then on, and the
    refusal is audited under that admin."""
    auditor = read_private_key(kit.home / "keys" / "auditor.jwk").public.thumbprint()
    path = "/v1/audit/entries"
    assert client.get(path, headers=token(kit, "GET", path, who="auditor")).status_code == 200
    value = auditor if kind == "kid" else "auditor"
    body = {"kind": kind, "value": value, "reason": "key leaked"}
    assert post(client, kit, REVOKE, body, who="revoker").json()["revoked"] is True
    refused = client.get(path, headers=token(kit, "GET", path, who="auditor"))
    assert error_of(refused, 401) == "admin.unauthenticated"
    assert refused.json()["error"]["message"] == said
    last = records(client)[-1]
    assert (last["result"], last["admin"], last["admin_kid"]) == ("refused", "auditor", auditor)
    assert client.get(APPROVALS, headers=token(kit, "GET", APPROVALS)).status_code == 200


@pytest.mark.parametrize(
    ("kind", "said"),
    [("kid", "the key of admin 'auditor' is revoked"), ("sub", "admin 'auditor' is revoked")],
)
def test_an_admin_key_revoked_while_its_call_is_read_lets_nothing_in(
    kit: Kit, client: Client, monkeypatch: pytest.MonkeyPatch, kind: str, said: str
) -> None:
    """The token was checked, then the revocation (of the key, or of the admin)
    returned before the record that lets the call in was committed (a body still
    arriving, say): the commit checks both again, and the revocation wins."""
    auditor = read_private_key(kit.home / "keys" / "auditor.jwk").public.thumbprint()
    gateway: Gateway = client.app.state.gateway
    commit = gateway.store.commit

    def revoked_first(job: WriteJob) -> int:
        if job.revocation_keys == (("kid", auditor), ("sub", "auditor")):
            value = auditor if kind == "kid" else "auditor"
            gateway.store.revoke(kind, value, reason="key leaked", now=NOW)
        return commit(job)

    monkeypatch.setattr(gateway.store, "commit", revoked_first)
    path = "/v1/audit/entries"
    refused = client.get(path, headers=token(kit, "GET", path, who="auditor"))
    assert error_of(refused, 401) == "admin.unauthenticated"
    assert refused.json()["error"]["message"] == said
    last = records(client)[-1]
    assert (last["result"], last["code"], last["admin"]) == (
        "refused",
        "admin.unauthenticated",
        "auditor",
    )


def test_a_spent_token_stays_spent_when_the_clock_goes_back_past_a_purge(
    kit: Kit, client: Client
) -> None:
    headers = token(kit, "GET", APPROVALS, ttl=3600)
    assert client.get(APPROVALS, headers=headers).status_code == 200
    gateway: Gateway = client.app.state.gateway
    kit.clock.t += 86400  # a day ahead: the purge forgets the spent token
    gateway._purge(kit.clock.now)
    kit.clock.t -= 86400 - 5  # set right again: the token is within its hour
    again = client.get(APPROVALS, headers=headers)
    assert error_of(again, 401) == "admin.unauthenticated"
    assert "cannot be checked for replay" in again.json()["error"]["message"]
    assert records(client)[-1]["result"] == "refused"


def test_a_role_the_admin_lacks_is_403_and_audited(kit: Kit, client: Client) -> None:
    body = encoded({"kind": "sub", "value": "agent-1", "reason": "test"})
    headers = {"Content-Type": "application/json"}
    headers |= token(kit, "POST", REVOKE, who="auditor", body=body)
    response = client.post(REVOKE, content=body, headers=headers)
    assert error_of(response, 403) == "admin.forbidden"
    assert "insufficient_scope" in response.headers["www-authenticate"]
    [record] = records(client)
    assert (record["result"], record["code"], record["admin"]) == (
        "refused",
        "admin.forbidden",
        "auditor",
    )
    # Nothing was revoked: the decision proceeds.
    assert decide(client, kit.submit())["outcome"] == "proceed"
    # The refused token is spent too.
    again = client.post(REVOKE, content=body, headers=headers)
    assert "replay" in again.json()["error"]["message"]


def test_a_token_carries_only_the_body_it_was_minted_for(kit: Kit, client: Client) -> None:
    """A token taken off the wire and sent first with another body (revoke someone else
    than the admin asked to) is 401 and audited, and revokes nothing; the admin's own
    call, with the body the token was minted over, still goes through."""
    meant = encoded({"kind": "sub", "value": "agent-1", "reason": "key lost"})
    other = encoded({"kind": "sub", "value": "agent-2", "reason": "key lost"})
    headers = {"Content-Type": "application/json"}
    headers |= token(kit, "POST", REVOKE, body=meant)
    swapped = client.post(REVOKE, content=other, headers=headers)
    assert error_of(swapped, 401) == "admin.unauthenticated"
    assert "another body" in swapped.json()["error"]["message"]
    [record] = records(client)
    assert (record["result"], record["code"]) == ("refused", "admin.unauthenticated")
    # Whose token it was is on the record (its signature verified): a stolen token shows.
    admin_key = read_private_key(kit.home / "keys" / "admin.jwk")
    assert (record["admin"], record["admin_kid"]) == ("admin", admin_key.public.thumbprint())
    assert record["token_jti"] is not None
    store = client.app.state.gateway.store
    assert list(store.revocations()) == []
    done = client.post(REVOKE, content=meant, headers=headers)
    assert done.status_code == 200, done.text
    assert [(r.kind, r.value) for r in store.revocations()] == [("sub", "agent-1")]
    assert records(client)[-1]["result"] == "done"


def test_no_body_is_read_before_a_token_lets_the_call_in(kit: Kit, client: Client) -> None:
    """The token is checked before the body: without a valid one, a body over the
    route's limit makes the call 401 (audited), not 413. With one, it is 413, audited
    with the token's admin, and the token stays unspent (its own call may still come)."""
    big = encoded({"kind": "sub", "value": "agent-1", "reason": "x" * 9000})
    json_type = {"Content-Type": "application/json"}
    anonymous = client.post(REVOKE, content=big, headers=json_type)
    assert error_of(anonymous, 401) == "admin.unauthenticated"
    small = encoded({"kind": "sub", "value": "agent-1", "reason": "lost"})
    headers = json_type | token(kit, "POST", REVOKE, body=small)
    too_large = client.post(REVOKE, content=big, headers=headers)
    assert error_of(too_large, 413) == "request.too_large"
    first, second = records(client)
    assert (first["result"], first["code"], first["admin"]) == (
        "refused",
        "admin.unauthenticated",
        None,
    )
    assert (second["result"], second["code"], second["admin"]) == (
        "refused",
        "request.too_large",
        "admin",
    )
    assert client.post(REVOKE, content=small, headers=headers).status_code == 200


def test_a_policy_reload_with_a_body_is_refused(kit: Kit, client: Client) -> None:
    """A reload takes no body. A token minted over one is refused (400, audited) before
    the call is let in; a token minted for no body, sent with one, is not that body's
    (401). Neither is spent: the plain reload goes through afterwards."""
    data = encoded({"policy": "mine"})
    json_type = {"Content-Type": "application/json"}
    with_body = client.post(
        RELOAD, content=data, headers=json_type | token(kit, "POST", RELOAD, body=data)
    )
    assert error_of(with_body, 400) == "request.invalid"
    assert "takes no body" in with_body.json()["error"]["message"]
    plain = token(kit, "POST", RELOAD)
    assert error_of(client.post(RELOAD, content=data, headers=json_type | plain), 401) == (
        "admin.unauthenticated"
    )
    assert [(r["action"], r["result"], r["code"]) for r in records(client)] == [
        ("policy.reload", "refused", "request.invalid"),
        ("policy.reload", "refused", "admin.unauthenticated"),
    ]
    assert client.post(RELOAD, headers=plain).status_code == 200


def test_a_spent_token_is_refused_as_a_replay_before_its_body_is_read(
    kit: Kit, client: Client
) -> None:
    body = encoded({"kind": "sub", "value": "agent-1", "reason": "lost"})
    headers = {"Content-Type": "application/json"} | token(kit, "POST", REVOKE, body=body)
    assert client.post(REVOKE, content=body, headers=headers).status_code == 200
    for again in (body, encoded({"kind": "sub", "value": "agent-2", "reason": "x" * 9000})):
        refused = client.post(REVOKE, content=again, headers=headers)
        assert error_of(refused, 401) == "admin.unauthenticated"
        assert "used before (replay)" in refused.json()["error"]["message"]
        assert records(client)[-1]["detail"] == "this admin token was used before (replay)"


def test_decision_endpoints_need_no_token(kit: Kit, client: Client) -> None:
    body = decide(client, kit.submit())
    assert body["outcome"] == "proceed"
    assert client.get(f"/v1/decisions/{body['decision_id']}").status_code == 200
    assert client.get("/v1/audit/checkpoint").status_code == 200
    assert records(client) == []


def test_a_store_that_is_down_refuses_every_admin_call(kit: Kit) -> None:
    gateway = kit.gateway(UnavailableStore("disk on fire"))
    with Client(create_app(open_gateway=lambda: gateway, now=kit.clock)) as client:
        body = {"kind": "sub", "value": "agent-1", "reason": "test"}
        response = post(client, kit, REVOKE, body)
        assert response.status_code == 503
        assert error_of(client.post(RELOAD), 503) in {"audit.unavailable", "store.unavailable"}
        # A refusal that cannot be logged is not answered as if it had been.
        assert error_of(client.delete(REVOKE), 503) in {"audit.unavailable", "store.unavailable"}


def test_a_wrong_method_at_an_admin_route_is_refused_and_audited(kit: Kit, client: Client) -> None:
    """Every call refused at an admin route is in the log, a method no route takes too
    (anonymous: nothing of it was checked, its method and path kept short). A wrong
    method elsewhere is not an admin call, and is not logged."""
    calls = [
        ("DELETE", REVOKE, "revocation"),
        ("GET", RELOAD, "policy.reload"),
        ("POST", APPROVALS, "approvals.list"),
        ("PUT", f"{APPROVALS}/{'a' * 300}", "approvals.show"),
        ("GET", f"{APPROVALS}/x/reviews", "approvals.review"),
        ("POST", "/v1/admin/audit/export", "audit.export"),
        ("HEAD", "/v1/admin/audit/export", "audit.export"),  # a GET route's HEAD too
        ("HEAD", APPROVALS, "approvals.list"),
        # The reads of whole records are admin routes too (without public_audit).
        ("POST", "/v1/audit/entries", "audit.entries"),
        ("DELETE", "/v1/audit/proofs/0", "audit.proof"),
    ]
    for method, path, action in calls:
        # Even with a good token: the refusal comes before anything of the call is read.
        response = client.request(method, path, headers=token(kit, method, path))
        assert response.status_code == 405, (method, path)
        assert response.headers["execgate-reason"] == "method.not_allowed"  # HEAD: no body
        assert response.headers["allow"]
        record = records(client)[-1]
        assert (record["action"], record["result"], record["code"]) == (
            action,
            "refused",
            "method.not_allowed",
        )
        assert (record["method"], record["path"], record["admin"]) == (method, path[:160], None)
    assert len(records(client)) == len(calls)
    assert error_of(client.post("/healthz"), 405) == "method.not_allowed"
    assert error_of(client.delete("/v1/audit/consistency"), 405) == "method.not_allowed"
    assert error_of(client.put("/v1/decisions/abc"), 405) == "method.not_allowed"
    assert len(records(client)) == len(calls)


# -- approvals --------------------------------------------------------------------------


def _pause(kit: Kit, client: Client) -> tuple[dict[str, Any], dict[str, Any]]:
    request = kit.request("payments.transfer", amount=5000)
    artifact = kit.artifact()
    paused = decide(client, kit.submission(request, artifact))
    assert paused["outcome"] == "pause"
    return paused, {"request": request, "artifact": artifact}


def _review(kit: Kit, client: Client, approval_id: str, verdict: str = "approve") -> str:
    shown = client.get(
        f"{APPROVALS}/{approval_id}", headers=token(kit, "GET", f"{APPROVALS}/{approval_id}")
    )
    assert shown.status_code == 200, shown.text
    pending = Pending.from_json(json.dumps(shown.json()), "pending")
    return sign_review(
        key=read_private_key(kit.home / "keys" / "approver-alice.jwk"),
        approver="alice",
        pending=pending,
        verdict=verdict,
        now=kit.clock.now,
        comment="looks right",
    )


def test_an_approval_reviewed_over_http_lets_the_request_proceed(kit: Kit, client: Client) -> None:
    paused, held = _pause(kit, client)
    approval_id = paused["approval_id"]
    listed = client.get(APPROVALS, headers=token(kit, "GET", APPROVALS)).json()["approvals"]
    assert [(a["approval_id"], a["state"]) for a in listed] == [(approval_id, "pending")]
    review = _review(kit, client, approval_id)
    path = f"{APPROVALS}/{approval_id}/reviews"
    response = post(client, kit, path, {"review": review})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["approver"], body["verdict"], body["state"]) == ("alice", "approve", "approved")
    assert body["quorum_met"] is True
    [logged] = records(client, "review")
    assert logged["approver"] == "alice"
    resumed = decide(client, kit.submission(held["request"], held["artifact"]))
    assert resumed["outcome"] == "proceed"
    assert resumed["approval_id"] == approval_id


def test_the_admin_answers_are_the_shapes_the_document_gives(kit: Kit, client: Client) -> None:
    """Schemathesis fuzzes admin operations without a credential (their 401): here the
    answers of calls let in, and of the probes, are checked against /openapi.json."""
    document = schemathesis.openapi.from_dict(client.get("/openapi.json").json())

    def conforms(method: str, template: str, response: httpx.Response) -> None:
        assert response.status_code == 200, response.text
        document[template][method].validate_response(response)

    conforms("GET", "/healthz", client.get("/healthz"))
    conforms("GET", "/readyz", client.get("/readyz"))
    paused, _ = _pause(kit, client)
    approval = paused["approval_id"]
    review = {"review": _review(kit, client, approval)}
    path = f"{APPROVALS}/{approval}/reviews"
    conforms("POST", APPROVALS + "/{approval_id}/reviews", post(client, kit, path, review))
    for body in (
        {"kind": "jti", "value": paused["artifact_jti"], "reason": "r", "cascade": True},
        {"kind": "sub", "value": "someone", "reason": "r"},
    ):
        conforms("POST", REVOKE, post(client, kit, REVOKE, body))
    conforms("POST", RELOAD, client.post(RELOAD, headers=token(kit, "POST", RELOAD)))
    export = "/v1/admin/audit/export"
    conforms("GET", export, client.get(export, headers=token(kit, "GET", export)))


def test_approvals_are_listed_a_page_at_a_time(
    kit: Kit, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table keeps every approval ever opened: a listing answers with a page (at
    most ``?limit``, ``APPROVALS_PAGE`` by default) and ``next``, the ``?after`` of the
    next page. A bad ``limit`` or ``after`` is refused before the token is spent."""
    opened = [
        decide(client, kit.submit(kit.request("payments.transfer", amount=5000 + n)))
        for n in range(5)
    ]
    assert {d["outcome"] for d in opened} == {"pause"}

    def listed(path: str) -> dict[str, Any]:
        answer = client.get(path, headers=token(kit, "GET", path))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    whole = listed(APPROVALS)
    order = [a["approval_id"] for a in whole["approvals"]]
    assert sorted(order) == sorted(d["approval_id"] for d in opened)
    assert whole["next"] is None
    pages, path = [], f"{APPROVALS}?limit=2"
    while True:
        page = listed(path)
        pages.append([a["approval_id"] for a in page["approvals"]])
        if page["next"] is None:
            break
        path = f"{APPROVALS}?limit=2&after={page['next']}"
    assert pages == [order[0:2], order[2:4], order[4:5]]

    monkeypatch.setattr(admin_module, "APPROVALS_PAGE", 3)
    page = listed(APPROVALS)
    assert ([a["approval_id"] for a in page["approvals"]], page["next"]) == (order[:3], order[2])

    bads = ("limit=0", "limit=1001", "limit=two", "after=a%2Fb", "after=" + "x" * 129)
    for bad in (*bads, "after=no-such-approval"):
        path = f"{APPROVALS}?{bad}"
        headers = token(kit, "GET", path)
        for _ in range(2):  # refused before the token is spent: the same token twice
            assert error_of(client.get(path, headers=headers), 400) == "request.invalid_query"
    answer = client.get(path, headers=headers)
    assert "names no approval" in answer.json()["error"]["message"]


def test_a_review_replaced_meanwhile_is_a_typed_409(
    kit: Kit, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approver's next review (signed with a new key) lands between recording this
    one and reading the approval back: the answer says so instead of failing."""
    paused, _ = _pause(kit, client)
    approval_id = paused["approval_id"]
    gateway: Gateway = client.app.state.gateway
    recorded = gateway.review

    def replaced(aid: str, review: str) -> tuple[int, Pending, list[Review]]:
        index, after, reviews = recorded(aid, review)
        return index, after, [r for r in reviews if r.token != review]

    monkeypatch.setattr(gateway, "review", replaced)
    path = f"{APPROVALS}/{approval_id}/reviews"
    review = _review(kit, client, approval_id)
    response = post(client, kit, path, {"review": review})
    assert error_of(response, 409) == "approval.review_refused"
    assert "replaced" in response.json()["error"]["message"]
    [logged] = records(client, "review")  # it was recorded all the same
    assert logged["approver"] == "alice"


def test_a_review_needs_both_the_admin_token_and_the_approver_signature(
    kit: Kit, client: Client
) -> None:
    paused, _ = _pause(kit, client)
    path = f"{APPROVALS}/{paused['approval_id']}/reviews"
    review = _review(kit, client, paused["approval_id"])
    # The approver's review without an admin token is not let in.
    assert error_of(client.post(path, json={"review": review}), 401) == "admin.unauthenticated"
    # An admin token with a review the admin signed (not an approver) is refused.
    forged = sign_review(
        key=read_private_key(kit.home / "keys" / "admin.jwk"),
        approver="admin",
        pending=Pending.from_json(
            json.dumps(
                client.get(
                    f"{APPROVALS}/{paused['approval_id']}",
                    headers=token(kit, "GET", f"{APPROVALS}/{paused['approval_id']}"),
                ).json()
            ),
            "pending",
        ),
        verdict="approve",
        now=kit.clock.now,
    )
    refused = post(client, kit, path, {"review": forged})
    assert error_of(refused, 409) == "approval.review_refused"
    assert "no approver's" in refused.json()["error"]["message"]
    assert records(client, "review") == []
    refusal = records(client)[-1]  # audited: not only the record that let the call in
    assert (refusal["action"], refusal["result"], refusal["code"]) == (
        "approvals.review",
        "refused",
        "approval.review_refused",
    )
    assert "no approver's" in refusal["detail"]
    before = len(records(client))
    bad = post(client, kit, path, {"verdict": "approve"})
    assert error_of(bad, 400) == "request.invalid"
    [record] = records(client)[before:]
    assert (record["result"], record["code"]) == ("refused", "request.invalid")


def test_an_approver_key_revoked_over_http_reviews_nothing(kit: Kit, client: Client) -> None:
    paused, held = _pause(kit, client)
    approval_id = paused["approval_id"]
    review = _review(kit, client, approval_id)
    alice = read_private_key(kit.home / "keys" / "approver-alice.jwk").public.thumbprint()
    body = {"kind": "kid", "value": alice, "reason": "laptop lost"}
    assert post(client, kit, REVOKE, body).status_code == 200
    refused = post(client, kit, f"{APPROVALS}/{approval_id}/reviews", {"review": review})
    assert error_of(refused, 409) == "approval.review_refused"
    assert "revoked" in refused.json()["error"]["message"]
    assert records(client, "review") == []
    assert records(client)[-1]["code"] == "approval.review_refused"
    again = decide(client, kit.submission(held["request"], held["artifact"]))
    assert (again["outcome"], again["approval_id"]) == ("pause", approval_id)


def test_unknown_approvals_are_404(kit: Kit, client: Client) -> None:
    path = f"{APPROVALS}/no-such-id"
    assert error_of(client.get(path, headers=token(kit, "GET", path)), 404) == "approval.not_found"
    # An id no gateway makes is not looked up, nor repeated back.
    odd = client.get(f"{APPROVALS}/a%00b", headers=token(kit, "GET", f"{APPROVALS}/a\x00b"))
    assert error_of(odd, 404) == "approval.not_found"
    assert odd.json()["error"]["message"] == "no such approval at this gateway"


# -- revocations ------------------------------------------------------------------------


def test_a_revocation_over_http_denies_the_next_decision(kit: Kit, client: Client) -> None:
    artifact = kit.artifact()
    first = decide(client, kit.submission(kit.request(amount=1), artifact))
    assert first["outcome"] == "proceed"
    body = {"kind": "jti", "value": first["artifact_jti"], "reason": "key leaked", "cascade": True}
    response = post(client, kit, REVOKE, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["revoked"], answer["already_revoked"]) == (True, False)
    assert [d["decision_id"] for d in answer["cascade"]["decisions"]] == [first["decision_id"]]
    after = decide(client, kit.submission(kit.request(amount=2), artifact))
    assert [r["code"] for r in after["reasons"]] == ["artifact.revoked"]
    authorized, done = records(client)
    assert (authorized["result"], done["result"]) == ("authorized", "done")
    assert authorized["asked"] == {"revocation": body}  # what is revoked, logged ahead
    assert done["revocation"] == {
        "kind": "jti",
        "value": first["artifact_jti"],
        "reason": "key leaked",
    }
    again = post(client, kit, REVOKE, body).json()
    assert (again["revoked"], again["already_revoked"]) == (False, True)


def test_a_revocation_in_force_is_in_the_log_even_when_its_done_record_is_not(
    kit: Kit, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revocation commits on its own, then its "done" record: were that append to
    fail (or the process to die in between), the record that let the call in already
    says what is revoked, by whom and why."""
    gateway: Gateway = client.app.state.gateway
    revoke, commit = gateway.store.revoke, gateway.store.commit
    revoked: list[bool] = []

    def revoking(*args: Any, **kwargs: Any) -> bool:
        revoked.append(revoke(*args, **kwargs))
        return revoked[-1]

    def failing_after_the_revocation(job: WriteJob) -> int:
        if revoked:
            raise StoreUnavailable("disk full")
        return commit(job)

    monkeypatch.setattr(gateway.store, "revoke", revoking)
    monkeypatch.setattr(gateway.store, "commit", failing_after_the_revocation)
    body = {"kind": "sub", "value": "agent-x", "reason": "compromised", "cascade": False}
    response = post(client, kit, REVOKE, body)
    assert error_of(response, 503) == "audit.unavailable"
    assert gateway.store.revoked([("sub", "agent-x")]) is not None  # in force
    [authorized] = records(client)
    assert (authorized["result"], authorized["admin"]) == ("authorized", "admin")
    assert authorized["asked"] == {"revocation": body}


def test_a_revocation_refused_in_its_commit_revokes_nothing_and_says_what_it_asked(
    kit: Kit, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoking admin is revoked itself while its call is read: the record that
    would have let it in is a refusal, keeps what the call asked under "asked" (not as
    a revocation done), and nothing is revoked."""
    gateway: Gateway = client.app.state.gateway
    commit = gateway.store.commit

    def revoked_first(job: WriteJob) -> int:
        if ("sub", "revoker") in job.revocation_keys:
            gateway.store.revoke("sub", "revoker", reason="gone", now=NOW)
        return commit(job)

    monkeypatch.setattr(gateway.store, "commit", revoked_first)
    body = {"kind": "sub", "value": "agent-x", "reason": "compromised"}
    response = post(client, kit, REVOKE, body, who="revoker")
    assert error_of(response, 401) == "admin.unauthenticated"
    assert gateway.store.revoked([("sub", "agent-x")]) is None
    [refused] = records(client)
    assert (refused["result"], refused["admin"]) == ("refused", "revoker")
    assert refused["asked"] == {"revocation": {**body, "cascade": False}}
    assert "revocation" not in refused


def test_an_exact_artifact_is_revoked_over_http_by_its_digest(kit: Kit, client: Client) -> None:
    artifact, other = kit.artifact(), kit.artifact()
    assert decide(client, kit.submission(kit.request(amount=1), artifact))["outcome"] == "proceed"
    digest = sha256_b64url(artifact.encode("ascii"))
    body = {"kind": "artifact", "value": digest, "reason": "leaked", "cascade": True}
    response = post(client, kit, REVOKE, body)
    assert response.status_code == 200, response.text
    assert len(response.json()["cascade"]["decisions"]) == 1
    after = decide(client, kit.submission(kit.request(amount=2), artifact))
    assert [r["code"] for r in after["reasons"]] == ["artifact.revoked"]
    assert decide(client, kit.submission(kit.request(amount=3), other))["outcome"] == "proceed"


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "issuer", "value": "x", "reason": "r"},
        {"kind": "sub", "value": "", "reason": "r"},
        {"kind": "sub", "value": "x", "reason": " "},
        {"kind": "kid", "value": "not-a-thumbprint", "reason": "r"},
        {"kind": "artifact", "value": "a.b.c", "reason": "r"},  # a digest, not the token
        {"kind": "sub", "value": "x"},
        {"kind": "sub", "value": "x", "reason": "r", "extra": 1},
        {"kind": "sub", "value": "x", "reason": "r", "cascade": "yes"},
        [],
    ],
)
def test_bad_revocation_bodies_are_400_and_revoke_nothing(
    kit: Kit, client: Client, body: Any
) -> None:
    response = post(client, kit, REVOKE, body)
    assert error_of(response, 400) == "request.invalid"
    # Audited as refused, never as let in (the call then failing): an auditor reading
    # the log sees no revocation that was authorized and never made.
    [refused] = records(client)
    assert (refused["result"], refused["code"]) == ("refused", "request.invalid")
    assert decide(client, kit.submit())["outcome"] == "proceed"


def test_a_check_that_fails_unexpectedly_is_audited_and_a_typed_500(
    kit: Kit, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every admin call is audited, one whose checks fail in an unforeseen way too; it
    is refused (nothing revoked) and leaves the token unspent."""

    def broken(body: object) -> tuple[str, str, str, bool]:
        raise RuntimeError("a defect")

    monkeypatch.setattr(admin_module, "_revocation", broken)
    response = post(client, kit, REVOKE, {"kind": "sub", "value": "x", "reason": "r"})
    assert error_of(response, 500) == "internal.error"
    assert [(r["result"], r["code"], r["detail"]) for r in records(client)] == [
        ("refused", "internal.error", "RuntimeError")
    ]
    assert decide(client, kit.submit())["outcome"] == "proceed"


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "request.malformed_json"),
        (b'{"kind": "sub", "value": "x", "reason": "r"}', "text/plain", 415, None),
    ],
)
def test_an_unreadable_revocation_body_is_audited_as_refused(
    kit: Kit, client: Client, data: bytes, content_type: str, status: int, code: str | None
) -> None:
    headers = {"Content-Type": content_type, **token(kit, "POST", REVOKE, body=data)}
    response = client.post(REVOKE, content=data, headers=headers)
    expected = code or "request.unsupported_media_type"
    assert error_of(response, status) == expected
    assert [(r["result"], r["code"]) for r in records(client)] == [("refused", expected)]


# -- policy reload ----------------------------------------------------------------------


def test_reload_puts_a_new_policy_in_force(kit: Kit, client: Client) -> None:
    before = decide(client, kit.submit())["policy_hash"]
    (kit.home / "policy.yaml").write_text(POLICY.replace("refunds are manual", "never"))
    response = client.post(RELOAD, headers=token(kit, "POST", RELOAD))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["previous_policy_hash"] == before
    assert answer["policy_hash"] != before
    assert answer["workers"] == "this process"
    assert decide(client, kit.submit())["policy_hash"] == answer["policy_hash"]
    done = records(client)[-1]
    assert (done["code"], done["admin"], done["via"]) == ("policy.reloaded", "admin", "http")
    assert (done["previous_policy_hash"], done["policy_hash"]) == (before, answer["policy_hash"])
    assert done["detail"].endswith("(policy.yaml)")  # by name: where the home lies is not logged


def test_an_invalid_policy_is_refused_and_the_old_one_stays(
    kit: Kit, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    before = decide(client, kit.submit())["policy_hash"]
    (kit.home / "policy.yaml").write_text("version: 1\nrules: []\n")
    response = client.post(RELOAD, headers=token(kit, "POST", RELOAD))
    assert error_of(response, 422) == "policy.reload_refused"
    assert before in response.json()["error"]["message"]
    assert decide(client, kit.submit())["policy_hash"] == before
    refused = records(client)[-1]
    assert (refused["code"], refused["result"]) == ("policy.reload_refused", "refused")
    assert refused["policy_hash"] == before
    assert any("policy reload refused" in r.getMessage() for r in caplog.records)
    (kit.home / "policy.yaml").unlink()
    gone = client.post(RELOAD, headers=token(kit, "POST", RELOAD))
    assert error_of(gone, 422) == "policy.reload_refused"
    assert str(kit.home) in gone.json()["error"]["message"]  # the admin is told where
    assert decide(client, kit.submit())["policy_hash"] == before
    logged = records(client)[-1]
    assert "policy.yaml" in logged["detail"]
    assert str(kit.home) not in json.dumps(records(client))  # the log is not


# -- audit ------------------------------------------------------------------------------


def test_the_export_verifies_offline_with_the_admin_records_in_it(kit: Kit, client: Client) -> None:
    decide(client, kit.submit())
    client.post(RELOAD)  # an audited refusal
    assert error_of(client.get(EXPORT), 401) == "admin.unauthenticated"
    denied = client.get(EXPORT, headers=token(kit, "GET", EXPORT, who="auditor"))
    assert denied.status_code == 200
    assert denied.headers["content-type"].startswith("application/x-ndjson")
    lines = denied.text.splitlines()
    report = verify_export(lines, kit.node_key.public)
    assert report.entries == len(lines) - 1 - report.checkpoints
    kinds = [
        json.loads(base64.b64decode(json.loads(line)["entry"]))["kind"]
        for line in lines[1:]
        if "entry" in json.loads(line)
    ]
    assert kinds == ["decision", "admin", "admin", "admin"]
    second = next(n for n, line in enumerate(lines) if line.startswith('{"index":1,'))
    tampered = list(lines)
    tampered[second] = json.dumps({"index": 1, "entry": base64.b64encode(b"{}").decode()})
    with pytest.raises(EvidenceError, match="do not match"):
        verify_export(tampered, kit.node_key.public)


ENTRIES = "/v1/audit/entries"


@pytest.mark.parametrize("path", [ENTRIES, "/v1/audit/proofs/0"])
def test_reading_log_entries_needs_the_audit_role(kit: Kit, client: Client, path: str) -> None:
    """Entries hold request arguments, as the export does: by default nobody reads them
    without an admin token whose admin holds `audit`; refusals and reads are audited."""
    decided = decide(client, kit.submit(kit.request("payments.transfer", amount=77)))
    anonymous = client.get(path)
    assert error_of(anonymous, 401) == "admin.unauthenticated"
    assert "77" not in anonymous.text
    wrong_role = client.get(path, headers=token(kit, "GET", path, who="revoker"))
    assert error_of(wrong_role, 403) == "admin.forbidden"
    allowed = client.get(path, headers=token(kit, "GET", path, who="auditor"))
    assert allowed.status_code == 200, allowed.text
    if path == ENTRIES:
        [first, *_] = allowed.json()["entries"]
        assert first["record"]["decision_id"] == decided["decision_id"]
        assert first["record"]["request"]["args"] == {"amount": 77}
    else:
        assert allowed.json()["format"] == "c2sp-tlog-proof"
    action = "audit.entries" if path == ENTRIES else "audit.proof"
    assert [(r["action"], r["code"], r["admin"]) for r in records(client)] == [
        (action, "admin.unauthenticated", None),
        (action, "admin.forbidden", "revoker"),
        (action, "admin.authorized", "auditor"),
    ]
    # Hashes only: the checkpoint and consistency proofs stay public.
    assert client.get("/v1/audit/checkpoint").status_code == 200
    assert client.get("/v1/audit/consistency", params={"first": 1}).status_code == 200


def test_a_whole_decision_record_needs_the_audit_role(kit: Kit, client: Client) -> None:
    decided = decide(client, kit.submit(kit.request("payments.transfer", amount=77)))
    path = f"/v1/decisions/{decided['decision_id']}"
    assert client.get(path).json()["view"] == "receipt"  # no credentials: not an admin call
    assert records(client) == []
    forged = client.get(path, headers={"Authorization": "Bearer not.a.token"})
    assert error_of(forged, 401) == "admin.unauthenticated"  # a credential is always checked
    wrong_role = client.get(path, headers=token(kit, "GET", path, who="revoker"))
    assert error_of(wrong_role, 403) == "admin.forbidden"
    whole = client.get(path, headers=token(kit, "GET", path, who="auditor")).json()
    assert whole["view"] == "whole"
    assert whole["decision"]["record"]["request"]["args"] == {"amount": 77}
    assert [(r["action"], r["code"]) for r in records(client)] == [
        ("audit.decision", "admin.unauthenticated"),
        ("audit.decision", "admin.forbidden"),
        ("audit.decision", "admin.authorized"),
    ]


def test_the_token_is_checked_before_the_parameters(kit: Kit, client: Client) -> None:
    """An anonymous call is 401 and audited whatever its parameters; an admin's call with
    bad ones is refused under that admin, and leaves its token unspent."""
    long_id = "a" * 300
    decision = f"/v1/decisions/{long_id}"
    calls = [
        ("GET", f"{ENTRIES}?start=3&end=2", "audit.entries"),
        ("GET", f"{APPROVALS}/{long_id}", "approvals.show"),
        ("POST", f"{APPROVALS}/{long_id}/reviews", "approvals.review"),
        ("GET", decision, "audit.decision"),
    ]
    for method, path, action in calls:
        response = client.request(method, path, headers={"Authorization": "Bearer x.y.z"})
        assert error_of(response, 401) == "admin.unauthenticated", path
        assert records(client)[-1]["action"] == action
    headers = token(kit, "GET", f"{ENTRIES}?start=x", who="auditor")
    for _ in range(2):  # refused under its admin, unspent: the same token twice
        assert (
            error_of(client.get(f"{ENTRIES}?start=x", headers=headers), 400)
            == "request.invalid_query"
        )
        refused = records(client)[-1]
        assert (refused["result"], refused["code"], refused["admin"]) == (
            "refused",
            "request.invalid_query",
            "auditor",
        )
    for method, path, action in calls[1:]:
        who = "auditor" if path == decision else "admin"
        minted = token(kit, method, path, who=who)
        for _ in range(2):  # refused under its admin, unspent: the same token twice
            missing = client.request(method, path, headers=minted)
            assert error_of(missing, 404).endswith(".not_found"), path
            refused = records(client)[-1]
            assert (refused["action"], refused["result"], refused["admin"]) == (
                action,
                "refused",
                who,
            )


def test_a_token_reads_only_the_entries_it_was_minted_for(kit: Kit, client: Client) -> None:
    """The query is part of the call a token binds: one minted to read entries 0-1 is
    refused, audited and left unspent when sent for more (a token taken off the wire
    cannot read the rest of the log), and still reads what it was minted for."""
    for amount in (1, 2, 3):
        decide(client, kit.submit(kit.request("payments.transfer", amount=amount)))
    headers = token(kit, "GET", f"{ENTRIES}?start=0&end=1", who="auditor")
    for other in (f"{ENTRIES}?start=0&end=3", f"{ENTRIES}?end=1&start=0", ENTRIES):
        refused = client.get(other, headers=headers)
        assert error_of(refused, 401) == "admin.unauthenticated", other
        assert "another query" in refused.json()["error"]["message"]
        assert "entries" not in refused.json()
        record = records(client)[-1]
        assert (record["action"], record["code"]) == ("audit.entries", "admin.unauthenticated")
    page = client.get(f"{ENTRIES}?start=0&end=1", headers=headers)
    assert page.status_code == 200, page.text
    assert [e["index"] for e in page.json()["entries"]] == [0]
    assert error_of(client.get(f"{ENTRIES}?start=0&end=1", headers=headers), 401) == (
        "admin.unauthenticated"  # spent by the read
    )


def test_an_anonymous_refusal_keeps_a_short_path(kit: Kit, client: Client) -> None:
    """A path is the caller's text: without a verified token, the record keeps as little
    of it as of the refusal's detail."""
    path = f"/v1/decisions/{'a' * 5000}"
    assert error_of(client.get(path, headers={"Authorization": "x"}), 401) == (
        "admin.unauthenticated"
    )
    [record] = records(client)
    assert record["path"] == path[:160]


def test_public_audit_lets_anyone_read_the_entries(kit: Kit) -> None:
    assert kit.config.server.public_audit is False  # what a new home says
    app = create_app(
        open_gateway=kit.gateway, now=kit.clock, server=ServerConfig(public_audit=True)
    )
    with Client(app) as client:
        decide(client, kit.submit())
        page = client.get(ENTRIES)
        assert page.status_code == 200
        assert [e["record"]["kind"] for e in page.json()["entries"]] == ["decision"]
        assert client.get("/v1/audit/proofs/0").status_code == 200
        assert error_of(client.post(ENTRIES), 405) == "method.not_allowed"
        assert records(client) == []  # an open read is not an admin call, nor its 405


def test_an_admins_proof_of_an_entry_newer_than_the_kept_checkpoint_is_made_at_once(
    kit: Kit, client: Client
) -> None:
    """Only a public log answers evidence from the checkpoint kept for a second (a 503
    for newer entries): an admin's token is spent on the call, so a 503 would cost a new
    token, and an admin's call is a durable append already; one is signed for it."""
    decide(client, kit.submit())
    assert client.get("/v1/audit/checkpoint").json()["size"] == 1  # kept for a second
    newer = decide(client, kit.submit())
    path = f"/v1/audit/proofs/{newer['log_index']}"
    proof = client.get(path, headers=token(kit, "GET", path, who="auditor"))
    assert proof.status_code == 200, proof.text
    gateway: Gateway = client.app.state.gateway
    [entry] = gateway.store.entries(1, 2)
    verified = verify_tlog_proof(proof.json()["evidence"], entry.entry, gateway.audit.verifier)
    assert verified.size == 3  # signed now: the two decisions and the audited read
    assert [(r["action"], r["code"]) for r in records(client)] == [
        ("audit.proof", "admin.authorized")
    ]


def test_consistency_proofs_verify_between_signed_checkpoints(kit: Kit, client: Client) -> None:
    verifier = Verifier(GATEWAY_ID, kit.node_key.public)
    decide(client, kit.submit())
    decide(client, kit.submit())
    decide(client, kit.submit())
    old = client.get("/v1/audit/checkpoint").json()
    for _ in range(4):
        decide(client, kit.submit())
    kit.clock.t += CHECKPOINT_MAX_AGE  # the answer of a second ago is not kept
    new = client.get("/v1/audit/checkpoint").json()
    answer = client.get(
        "/v1/audit/consistency", params={"first": old["size"], "second": new["size"]}
    ).json()
    proof = [base64.b64decode(h) for h in answer["proof"]]
    roots = [open_checkpoint(cp["checkpoint"], verifier).root for cp in (old, new)]
    verify_consistency(old["size"], new["size"], proof, roots[0], roots[1])
    assert base64.b64decode(answer["second_root"]) == roots[1]
    latest = client.get("/v1/audit/consistency", params={"first": 1}).json()
    assert latest["second"] == new["size"]
    with pytest.raises(EvidenceError, match="consistency"):
        verify_consistency(old["size"], new["size"], proof[:-1], roots[0], roots[1])


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"first": "0"},
        {"first": "2", "second": "1"},
        {"first": "x"},
        {"first": "\u00b2"},  # a superscript two: a digit to str.isdigit, not to int
    ],
)
def test_bad_consistency_ranges_are_400(kit: Kit, client: Client, params: dict[str, str]) -> None:
    decide(client, kit.submit())
    decide(client, kit.submit())
    response = client.get("/v1/audit/consistency", params=params)
    assert error_of(response, 400) in {"audit.range_invalid", "request.invalid_query"}


@pytest.mark.parametrize("params", [{"first": "1", "second": "99"}, {"first": "99"}])
def test_consistency_beyond_the_log_is_404(
    kit: Kit, client: Client, params: dict[str, str]
) -> None:
    decide(client, kit.submit())
    decide(client, kit.submit())
    response = client.get("/v1/audit/consistency", params=params)
    assert error_of(response, 404) == "audit.index_not_found"


def test_the_openapi_document_declares_the_bearer_scheme() -> None:
    document = openapi_document()
    assert document["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    assert document["paths"][REVOKE]["post"]["security"] == [{"adminToken": []}]
    assert "security" not in document["paths"]["/v1/audit/consistency"]["get"]
    codes = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
    assert {"admin.unauthenticated", "admin.forbidden"} <= set(codes["code"]["enum"])


def test_the_cli_mints_a_token_the_server_accepts(
    kit: Kit, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    from execgate.cli import main

    key = str(kit.home / "keys" / "admin.jwk")
    argv = ["--home", str(kit.home), "admin", "token", "--key", key, "--method", "GET"]
    assert main([*argv, "--path", APPROVALS]) == 0
    minted = capsys.readouterr().out.strip()
    kit.clock.t = time.time()  # the CLI signs with the real clock
    response = client.get(APPROVALS, headers={"Authorization": f"Bearer {minted}"})
    assert response.status_code == 200, response.text
    assert records(client)[-1]["admin"] == "admin"
    # A key that is no admin's is a usage error, and nothing is printed.
    alice = str(kit.home / "keys" / "approver-alice.jwk")
    assert main([*argv[:4], "--key", alice, "--method", "GET", "--path", APPROVALS]) == 2
    assert "no admin's" in capsys.readouterr().err
    # --data: the token is good for exactly that body, as curl --data-binary sends it.
    body = '{"kind":"sub","value":"agent-1","reason":"lost"}'
    revoke = [*argv[:6], "--method", "POST", "--path", REVOKE]
    assert main([*revoke, "--data", body]) == 0
    minted = capsys.readouterr().out.strip()
    headers = {"Authorization": f"Bearer {minted}", "Content-Type": "application/json"}
    response = client.post(REVOKE, content=body.encode(), headers=headers)
    assert response.status_code == 200, response.text
    assert main(revoke) == 0  # without --data: for a call with no body
    minted = capsys.readouterr().out.strip()
    headers["Authorization"] = f"Bearer {minted}"
    refused = client.post(REVOKE, content=body.encode(), headers=headers)
    assert error_of(refused, 401) == "admin.unauthenticated"
    assert "another body" in refused.json()["error"]["message"]
    # --data-file: the file's bytes exactly, line break and all (as curl --data-binary).
    exact = (body + "\n").encode()
    (kit.home.parent / "body.json").write_bytes(exact)
    assert main([*revoke, "--data-file", str(kit.home.parent / "body.json")]) == 0
    headers["Authorization"] = f"Bearer {capsys.readouterr().out.strip()}"
    assert client.post(REVOKE, content=exact, headers=headers).status_code == 200
    # Bytes that are not UTF-8 are bound as the shell passed them, not refused or recoded.
    assert main([*revoke, "--data", os.fsdecode(b"\xff{}")]) == 0
    payload = capsys.readouterr().out.strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["bh"] == sha256_b64url(b"\xff{}")
    # One body, and none for a GET: usage errors, nothing printed.
    assert main([*revoke, "--data", body, "--data-file", str(kit.home.parent / "body.json")]) == 2
    assert "give the body once" in capsys.readouterr().err
    assert main([*argv, "--path", APPROVALS, "--data", body]) == 2
    captured = capsys.readouterr()
    assert "sends no body" in captured.err
    assert captured.out == ""
    assert main([*revoke, "--data-file", str(kit.home.parent / "missing.json")]) == 2
    assert "cannot read --data-file" in capsys.readouterr().err
    # A query in --path: the token is good for that query, as written, and no other.
    read = f"{ENTRIES}?start=0&end=1"
    assert main([*argv[:6], "--method", "GET", "--path", read]) == 0
    headers = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
    assert error_of(client.get(f"{ENTRIES}?start=0&end=9", headers=headers), 401) == (
        "admin.unauthenticated"
    )
    assert client.get(read, headers=headers).status_code == 200


def test_a_token_a_purge_removed_is_refused_under_a_wider_leeway(kit: Kit) -> None:
    """A spent token's record is compared with the purge mark by the token's own exp, not
    by the expiry this gateway's leeway gives it: removed by a purge while the clock read
    a day ahead, it is not taken as unspent by a gateway since given a minute's leeway."""
    kit.set_leeway(0)
    start = kit.clock.t
    headers = token(kit, "GET", APPROVALS)
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        assert client.get(APPROVALS, headers=headers).status_code == 200
        kit.clock.t = start + 86400
        client.app.state.gateway._purge(kit.clock.now)
        assert client.app.state.gateway.store.replay_size() == 0
    kit.clock.t = start + 5
    kit.set_leeway(60)
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        assert client.app.state.gateway._leeway == 60
        replay = client.get(APPROVALS, headers=headers)
        assert error_of(replay, 401) == "admin.unauthenticated"
        assert "cannot be checked for replay" in replay.json()["error"]["message"]


def test_a_token_for_a_mesh_audience_is_refused(kit: Kit) -> None:
    """Decisions accept the mesh audiences; admin tokens only this gateway's own id,
    since each node spends them in its own store."""
    config = kit.home / "execgate.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace(f'audiences = ["{GATEWAY_ID}"]', f'audiences = ["{GATEWAY_ID}", "mesh-1"]'),
        encoding="utf-8",
    )
    gateway = Gateway.open(kit.home, now=kit.clock)
    assert "mesh-1" in gateway.audiences
    with Client(create_app(open_gateway=lambda: gateway, now=kit.clock)) as client:
        response = client.get(APPROVALS, headers=token(kit, "GET", APPROVALS, audience="mesh-1"))
        assert error_of(response, 401) == "admin.unauthenticated"
        ok = client.get(APPROVALS, headers=token(kit, "GET", APPROVALS))
        assert ok.status_code == 200


def test_an_anonymous_refusal_logs_a_short_detail(kit: Kit, client: Client) -> None:
    noise = "x" * 5000
    response = client.post(RELOAD, headers={"Authorization": f"Bearer {noise}.{noise}.{noise}"})
    assert error_of(response, 401) == "admin.unauthenticated"
    [record] = records(client)
    assert len(record["detail"]) <= 160
