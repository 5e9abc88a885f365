"""Forward-auth in process (httpx ``ASGITransport``, lifespan included): how the original
call is found, every outcome's answer, the refusals that decide nothing, and the
``execgate proof --http-method`` headers passing through it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from gatekit import GATEWAY_ID, RUNTIME_ID, Kit, make_kit
from starlette.applications import Starlette
from starlette.types import Message
from test_server_api import Client as ApiClient
from test_server_limits import _ask, _in_thread

from execgate.adapters.http import forward_auth_headers
from execgate.cli import main
from execgate.errors import ConfigError
from execgate.keyfile import write_keypair
from execgate.pipeline import Gateway
from execgate.policy import load_policy
from execgate.policy.loader import parse_policy
from execgate.server import create_app
from execgate.store.unavailable import UnavailableStore

HTTP = ({"action": "http.*", "resource": "/**"},)
POLICY = """\
version: 1
rules:
  - name: admin-denied
    match: {action: "http.*", resource: "/admin/**"}
    effect: deny
    reason: no admin calls over http
  - name: payments-paused
    match: {action: http.post, resource: "/api/payments/**"}
    effect: pause
    approvers: [finance]
    quorum: 1
    ttl: 600
  - name: reports-to-sandbox
    match: {action: http.get, resource: "/reports/**"}
    effect: reroute
    target: sandbox
  - name: api
    match: {action: "http.*", resource: "/api/**"}
    effect: proceed
"""
ORIGINAL = "X-Original-Method", "X-Original-URI"
FORWARDED = "X-Forwarded-Method", "X-Forwarded-Uri"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path, policy=POLICY)
    # init_home's sample authority may not grant http.*: widen only this test's trust store.
    trust = k.home / "trust.toml"
    text = trust.read_text(encoding="utf-8")
    grant = '{action = "reports.read", resource = "**"},'
    assert grant in text
    trust.write_text(
        text.replace(grant, grant + '\n  {action = "http.*", resource = "/**"},'),
        encoding="utf-8",
    )
    yield k
    k.close()


class Client(ApiClient):
    """The in-process client of the API tests, with the forward-auth tests' shortcuts."""

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    def log_size(self) -> int:
        return self.gateway.audit.size()


@pytest.fixture
def client(kit: Kit) -> Iterator[Client]:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as c:
        yield c


def headers_for(
    kit: Kit,
    method: str,
    uri: str,
    *,
    body: bytes | None = None,
    artifact: str | None = None,
    **kw: Any,
) -> dict[str, str]:
    return forward_auth_headers(
        kit.runtime,
        artifact=artifact if artifact is not None else kit.artifact(HTTP),
        audience=GATEWAY_ID,
        method=method,
        uri=uri,
        body=body,
        now=kit.clock.now,
        **kw,
    )


def nginx(
    client: Client,
    method: str,
    uri: str,
    headers: dict[str, str],
    names: tuple[str, str] = ORIGINAL,
) -> httpx.Response:
    """The auth request nginx (or, with FORWARDED, Traefik) sends: a GET naming the call."""
    return client.request(
        "GET", "/v1/forward-auth", headers={**headers, names[0]: method, names[1]: uri}
    )


def refused(response: httpx.Response, code: str, status: int = 403) -> None:
    """A typed error, with the code also in Execgate-Reason: nothing was decided."""
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {"code": code, "message": response.json()["error"]["message"]}
    }
    assert response.headers["Execgate-Reason"] == code
    assert "Execgate-Decision" not in response.headers


def denied(response: httpx.Response, outcome: str, reason: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert response.headers["Execgate-Outcome"] == outcome
    assert response.headers["Execgate-Reason"] == reason
    assert "Execgate-Route" not in response.headers
    body: dict[str, Any] = response.json()
    assert body["outcome"] == outcome
    assert body["reasons"][0]["code"] == reason
    assert response.headers["Execgate-Decision"] == body["decision_id"]
    return body


# -- the four ways an answer goes ------------------------------------------------------------


def test_proceed_is_200_without_a_route(kit: Kit, client: Client) -> None:
    response = nginx(client, "GET", "/api/x?page=2", headers_for(kit, "GET", "/api/x?page=2"))
    assert response.status_code == 200, response.text
    assert response.headers["Execgate-Outcome"] == "proceed"
    assert "Execgate-Route" not in response.headers
    assert "Execgate-Reason" not in response.headers
    body = response.json()
    assert response.headers["Execgate-Decision"] == body["decision_id"]
    logged = client.gateway.store.find(body["decision_id"], "decision")
    assert logged is not None
    request = json.loads(logged.entry)["request"]
    assert request == {
        "action": "http.get",
        "resource": "/api/x",
        "args": {"method": "GET", "uri": "/api/x?page=2"},
        "runtime": RUNTIME_ID,
        "parent": None,
    }


def test_reroute_is_200_with_the_route(kit: Kit, client: Client) -> None:
    response = nginx(client, "GET", "/reports/q3", headers_for(kit, "GET", "/reports/q3"))
    assert response.status_code == 200, response.text
    assert response.headers["Execgate-Outcome"] == "reroute"
    assert response.headers["Execgate-Route"] == "sandbox"
    assert response.json()["route"] == "sandbox"


def test_deny_is_403_with_the_reason_and_the_decision(kit: Kit, client: Client) -> None:
    response = nginx(client, "DELETE", "/admin/users", headers_for(kit, "DELETE", "/admin/users"))
    body = denied(response, "deny", "policy.denied")
    assert body["rule"] == "admin-denied"


def test_a_call_no_rule_matches_is_denied(kit: Kit, client: Client) -> None:
    response = nginx(client, "GET", "/elsewhere", headers_for(kit, "GET", "/elsewhere"))
    denied(response, "deny", "policy.no_match")


def test_pause_is_403_with_the_approval(kit: Kit, client: Client) -> None:
    response = nginx(client, "POST", "/api/payments/7", headers_for(kit, "POST", "/api/payments/7"))
    body = denied(response, "pause", "approval.required")
    assert body["approval_id"]
    assert response.headers["Execgate-Approval"] == body["approval_id"]


def test_a_store_that_is_down_is_403_fail_closed(kit: Kit) -> None:
    app = create_app(open_gateway=lambda: kit.gateway(UnavailableStore("disk gone")), now=kit.clock)
    with Client(app) as client:
        response = nginx(client, "GET", "/api/x", headers_for(kit, "GET", "/api/x"))
        denied(response, "fail_closed", "store.unavailable")


def test_an_unexpected_failure_is_never_200(kit: Kit, client: Client) -> None:
    kit.clock.error = RuntimeError("clock broke")
    response = nginx(client, "GET", "/api/x", headers_for(kit, "GET", "/api/x"))
    assert response.status_code == 403
    assert response.headers["Execgate-Outcome"] == "fail_closed"


def test_a_gateway_that_is_not_open_is_a_typed_500(kit: Kit) -> None:
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    app.state.gateway = None  # as after shutdown
    with Client(app) as client:
        client.app.state.gateway = None
        response = nginx(client, "GET", "/api/x", headers_for(kit, "GET", "/api/x"))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal.error"
    assert response.headers["Execgate-Reason"] == "internal.error"  # as every typed error


# -- the proof binds the call -------------------------------------------------------------------


def test_the_same_headers_twice_are_a_replay(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/x")
    assert nginx(client, "GET", "/api/x", headers).status_code == 200
    denied(nginx(client, "GET", "/api/x", headers), "deny", "replay.detected")


@pytest.mark.parametrize(
    ("method", "uri"), [("GET", "/api/b"), ("POST", "/api/a"), ("GET", "/api/a?x=1")]
)
def test_a_proof_is_bound_to_the_method_and_the_uri(
    kit: Kit, client: Client, method: str, uri: str
) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    denied(nginx(client, method, uri, headers), "deny", "identity.proof_invalid")


def test_a_proof_for_another_runtime_id_is_refused(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    headers["Execgate-Runtime"] = "agent-2"
    denied(nginx(client, "GET", "/api/a", headers), "deny", "identity.mismatch")


def test_envoy_style_binds_the_forwarded_body(kit: Kit, client: Client) -> None:
    body = b'{"amount": 5}'
    headers = headers_for(kit, "PUT", "/api/items/1?v=2", body=body)
    response = client.request(
        "PUT", "/v1/forward-auth/api/items/1?v=2", headers=headers, content=body
    )
    assert response.status_code == 200, response.text
    logged = client.gateway.store.find(response.json()["decision_id"], "decision")
    assert logged is not None
    args = json.loads(logged.entry)["request"]["args"]
    assert args["uri"] == "/api/items/1?v=2"
    assert "body_sha256" in args

    headers = headers_for(kit, "PUT", "/api/items/1?v=2", body=body)
    response = client.request(
        "PUT", "/v1/forward-auth/api/items/1?v=2", headers=headers, content=b'{"amount": 5000}'
    )
    denied(response, "deny", "identity.proof_invalid")


def test_envoy_style_keeps_the_path_as_sent(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a%20b")
    response = client.request("GET", "/v1/forward-auth/api/a%20b", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["request_hash"]


def test_envoy_style_keeps_an_empty_query(kit: Kit) -> None:
    """``/api/a?`` is what the proxy forwards (Envoy keeps the '?'), so it is what is
    decided: under ``execgate serve``'s protocol the empty query is not dropped."""
    answers = {}
    with _in_thread(create_app(open_gateway=kit.gateway, now=kit.clock)) as port:
        for bound in ("/api/a?", "/api/a"):
            head = "".join(f"{k}: {v}\r\n" for k, v in headers_for(kit, "GET", bound).items())
            status, headers, _ = _ask(
                port,
                b"GET /v1/forward-auth/api/a? HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                + head.encode()
                + b"\r\n",
            )
            answers[bound] = (status, headers.get("execgate-reason"))
    assert answers == {"/api/a?": (200, None), "/api/a": (403, "identity.proof_invalid")}


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "DELETE"])
def test_envoy_style_serves_every_method(kit: Kit, client: Client, method: str) -> None:
    headers = headers_for(kit, method, "/api/a")
    response = client.request(method, "/v1/forward-auth/api/a", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Execgate-Outcome"] == "proceed"


def test_envoy_style_without_a_path_is_refused(kit: Kit, client: Client) -> None:
    before = client.log_size()
    refused(client.request("GET", "/v1/forward-auth", headers={}), "request.invalid")
    assert client.log_size() == before


# -- which headers name the call --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/forward-auth/admin/b", "/v1/forward-auth?x=1"])
@pytest.mark.parametrize("names", [ORIGINAL, FORWARDED])
def test_a_call_named_by_headers_and_by_the_path_is_refused(
    kit: Kit, client: Client, path: str, names: tuple[str, str]
) -> None:
    """A proxy that asks with the path (Envoy) may pass on the client's own X-Original-*
    or X-Forwarded-* headers: the client must not get its signed GET /api/a decided in
    place of the POST /admin/b the upstream receives."""
    headers = headers_for(kit, "GET", "/api/a")
    before = client.log_size()
    response = client.request(
        "POST", path, headers={**headers, names[0]: "GET", names[1]: "/api/a"}
    )
    refused(response, "request.invalid")
    assert "no path after it" in response.json()["error"]["message"]
    assert client.log_size() == before
    # The same headers at the bare route name the call: decided, and it proceeds.
    response = client.request(
        "GET", "/v1/forward-auth", headers={**headers, names[0]: "GET", names[1]: "/api/a"}
    )
    assert response.status_code == 200, response.text


def test_a_complete_x_original_pair_wins_over_half_an_x_forwarded_one(
    kit: Kit, client: Client
) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    headers.update({"X-Original-Method": "GET", "X-Original-URI": "/api/a"})
    response = client.request(
        "GET", "/v1/forward-auth", headers={**headers, "X-Forwarded-Method": "GET"}
    )
    assert response.status_code == 200, response.text


def test_x_forwarded_is_used_without_x_original(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "PATCH", "/api/c?d=1")
    response = client.request(
        "POST",
        "/v1/forward-auth",
        headers={
            **headers,
            "X-Forwarded-Method": "PATCH",
            "X-Forwarded-Uri": "/api/c?d=1",
            "X-Forwarded-Host": "svc.example",
            "X-Forwarded-Proto": "https",
        },
    )
    assert response.status_code == 200, response.text
    logged = client.gateway.store.find(response.json()["decision_id"], "decision")
    assert logged is not None
    assert json.loads(logged.entry)["request"]["action"] == "http.patch"


def test_x_original_and_x_forwarded_that_disagree_are_refused(kit: Kit, client: Client) -> None:
    # A client sent X-Original-* through a proxy that sets X-Forwarded-* (or the reverse).
    headers = headers_for(kit, "GET", "/api/a")
    before = client.log_size()
    response = client.request(
        "GET",
        "/v1/forward-auth",
        headers={
            **headers,
            "X-Original-Method": "GET",
            "X-Original-URI": "/api/a",
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Uri": "/admin/a",
        },
    )
    refused(response, "request.invalid")
    assert client.log_size() == before
    agreeing = {
        **headers,
        "X-Original-Method": "GET",
        "X-Original-URI": "/api/a",
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": "/api/a",
    }
    assert client.request("GET", "/v1/forward-auth", headers=agreeing).status_code == 200


@pytest.mark.parametrize("names", [ORIGINAL, FORWARDED])
def test_half_a_pair_is_refused(kit: Kit, client: Client, names: tuple[str, str]) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    for name in names:
        response = client.request(
            "GET",
            "/v1/forward-auth/api/a",
            headers={**headers, name: "GET" if "ethod" in name else "/api/a"},
        )
        refused(response, "request.invalid")


@pytest.mark.parametrize(
    ("method", "uri"),
    [("G T", "/api/a"), ("GET", "api/a"), ("GET", "/api/../admin"), ("GET", "/api/%2e%2e/admin")],
)
def test_a_call_that_cannot_be_a_request_is_refused(
    kit: Kit, client: Client, method: str, uri: str
) -> None:
    before = client.log_size()
    refused(nginx(client, method, uri, headers_for(kit, "GET", "/api/a")), "request.invalid")
    assert client.log_size() == before


# -- trusted proxies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["X-Original-URI", "X-Forwarded-For", "x-forwarded-uri", "X-Original-Anything"]
)
def test_forwarded_headers_from_an_untrusted_peer_are_refused_and_not_logged(
    kit: Kit, name: str
) -> None:
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    with Client(app, peer=("10.1.2.3", 1234)) as client:
        before = client.log_size()
        headers = {**headers_for(kit, "GET", "/api/a"), name: "/api/a"}
        refused(
            client.request("GET", "/v1/forward-auth/api/a", headers=headers),
            "request.untrusted_forwarded",
        )
        assert client.log_size() == before


@pytest.mark.parametrize(
    "peer", ["10.1.2.3", "192.168.1.1", "fe80::1", "::ffff:10.0.0.1", "not-an-address", ""]
)
def test_peers_outside_the_default_loopback_are_untrusted(kit: Kit, peer: str) -> None:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock), peer=(peer, 1)) as client:
        response = nginx(client, "GET", "/api/a", headers_for(kit, "GET", "/api/a"))
        refused(response, "request.untrusted_forwarded")


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_peers_are_trusted_by_default(kit: Kit, peer: str) -> None:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock), peer=(peer, 1)) as client:
        response = nginx(client, "GET", "/api/a", headers_for(kit, "GET", "/api/a"))
        assert response.status_code == 200, response.text


def raw_call(app: Starlette, headers: list[tuple[bytes, bytes]], **scope_items: Any) -> Message:
    """One request straight into the ASGI app (no lifespan: for refusals that come before
    the gateway is used), with scope fields httpx cannot produce; the response start."""
    sent: list[Message] = []
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/forward-auth/api/a",
        "raw_path": b"/v1/forward-auth/api/a",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("gateway.test", 80),
        "client": ("127.0.0.1", 1234),
        "app": app,
    }
    scope.update(scope_items)
    scope = {k: v for k, v in scope.items() if v is not None}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def call() -> None:
        await app(scope, receive, send)

    anyio.run(call)
    return sent[0]


def test_a_connection_without_a_peer_address_is_untrusted(kit: Kit) -> None:
    """An ASGI server may not know the peer (a Unix socket): then nothing is believed."""
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    headers = [(b"x-original-method", b"GET"), (b"x-original-uri", b"/api/a")]
    start = raw_call(app, headers, client=None)
    assert start["status"] == 403
    assert (b"execgate-reason", b"request.untrusted_forwarded") in start["headers"]


def test_envoy_style_without_a_raw_path_is_refused(kit: Kit) -> None:
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    start = raw_call(app, [], raw_path=None)
    assert start["status"] == 403
    assert (b"execgate-reason", b"request.invalid") in start["headers"]


def test_envoy_style_with_an_encoded_prefix_is_refused(kit: Kit) -> None:
    """The route matches the decoded path; the call is read from the raw one."""
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    start = raw_call(app, [], raw_path=b"/v1/forward%2Dauth/api/a")
    assert start["status"] == 403
    assert (b"execgate-reason", b"request.invalid") in start["headers"]


def test_a_bad_content_length_is_refused(kit: Kit) -> None:
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    start = raw_call(app, [(b"content-length", b"12x")])
    assert start["status"] == 403
    assert (b"execgate-reason", b"request.bad_content_length") in start["headers"]


def test_a_configured_proxy_network_is_trusted(kit: Kit) -> None:
    import ipaddress

    from execgate.home import ServerConfig

    server = ServerConfig(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    app = create_app(open_gateway=kit.gateway, now=kit.clock, server=server)
    with Client(app, peer=("10.1.2.3", 1234)) as client:
        assert nginx(client, "GET", "/api/a", headers_for(kit, "GET", "/api/a")).status_code == 200
    with Client(app, peer=("::ffff:10.1.2.3", 1234)) as client:
        assert nginx(client, "GET", "/api/a", headers_for(kit, "GET", "/api/a")).status_code == 200
    with Client(app, peer=("127.0.0.1", 1234)) as client:  # loopback is no longer listed
        refused(
            nginx(client, "GET", "/api/a", headers_for(kit, "GET", "/api/a")),
            "request.untrusted_forwarded",
        )


def test_an_untrusted_peer_may_still_ask_envoy_style(kit: Kit) -> None:
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    with Client(app, peer=("10.1.2.3", 1234)) as client:
        headers = headers_for(kit, "GET", "/api/a")
        assert client.request("GET", "/v1/forward-auth/api/a", headers=headers).status_code == 200


# -- evidence headers ---------------------------------------------------------------------------


def test_a_missing_artifact_is_a_logged_denial(kit: Kit, client: Client) -> None:
    before = client.log_size()
    response = nginx(client, "GET", "/api/a", {})
    body = denied(response, "deny", "artifact.missing")
    assert client.log_size() == before + 1
    logged = client.gateway.store.find(body["decision_id"], "decision")
    assert logged is not None
    assert json.loads(logged.entry)["request"]["runtime"] == "(unknown)"


def test_a_missing_proof_is_a_logged_denial(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    del headers["Execgate-Proof"]
    del headers["Execgate-Runtime"]  # the runtime comes from the artifact's sub
    before = client.log_size()
    body = denied(nginx(client, "GET", "/api/a", headers), "deny", "identity.proof_missing")
    assert client.log_size() == before + 1
    logged = client.gateway.store.find(body["decision_id"], "decision")
    assert logged is not None
    assert json.loads(logged.entry)["request"]["runtime"] == RUNTIME_ID


def test_the_artifact_may_come_in_execgate_artifact(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    artifact = headers.pop("Authorization").removeprefix("Bearer ")
    headers["Execgate-Artifact"] = artifact
    assert nginx(client, "GET", "/api/a", headers).status_code == 200


def test_execgate_artifact_wins_over_a_service_bearer_token(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    headers["Execgate-Artifact"] = headers.pop("Authorization").removeprefix("Bearer ")
    headers["Authorization"] = "Bearer the-service-own-token"
    assert nginx(client, "GET", "/api/a", headers).status_code == 200


def test_a_non_bearer_authorization_is_no_artifact(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    headers["Authorization"] = "Basic " + headers["Authorization"].removeprefix("Bearer ")
    denied(nginx(client, "GET", "/api/a", headers), "deny", "artifact.missing")


def test_a_garbage_artifact_is_a_logged_denial(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a", artifact="not.a.jws")
    del headers["Execgate-Runtime"]
    denied(nginx(client, "GET", "/api/a", headers), "deny", "artifact.malformed")


def test_an_artifact_without_an_http_grant_is_denied(kit: Kit, client: Client) -> None:
    artifact = kit.artifact([{"action": "http.get", "resource": "/api/public/**"}])
    headers = headers_for(kit, "GET", "/api/a", artifact=artifact)
    denied(nginx(client, "GET", "/api/a", headers), "deny", "scope.not_granted")


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("Execgate-Artifact", 16 * 1024 + 1),
        ("Authorization", 16 * 1024 + 8),
        ("Execgate-Proof", 8 * 1024 + 1),
        ("Execgate-Attestation", 16 * 1024 + 1),
        ("Execgate-Parent", 16 * 1024 + 1),
        ("Execgate-Runtime", 1025),
    ],
)
def test_an_oversized_evidence_header_is_refused_and_not_logged(
    kit: Kit, client: Client, name: str, size: int
) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    headers[name] = ("Bearer " if name == "Authorization" else "") + "a" * size
    headers[name] = headers[name][:size]
    before = client.log_size()
    refused(nginx(client, "GET", "/api/a", headers), "request.header_too_large")
    assert client.log_size() == before


def test_a_header_given_twice_is_refused(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "GET", "/api/a")
    raw = [(k, v) for k, v in headers.items()] + [("Execgate-Proof", headers["Execgate-Proof"])]
    raw += [("X-Original-Method", "GET"), ("X-Original-URI", "/api/a")]
    before = client.log_size()
    refused(client.request("GET", "/v1/forward-auth", headers=raw), "request.invalid")
    assert client.log_size() == before


def test_a_body_over_the_limit_is_413(kit: Kit, client: Client) -> None:
    headers = headers_for(kit, "POST", "/api/a")
    response = client.request(
        "POST", "/v1/forward-auth/api/a", headers=headers, content=b"x" * (1024 * 1024 + 1)
    )
    refused(response, "request.too_large", status=413)


def test_an_unsendable_route_target_is_not_a_200(tmp_path: Path) -> None:
    """A home cannot name such a target (load_config refuses it); a gateway built in
    code with one still answers a reroute to it with a typed 500, never a 200 that
    would let the proxy route on a header it could not be sent."""
    kit = make_kit(tmp_path)
    try:
        config = kit.home / "execgate.toml"
        text = config.read_text(encoding="utf-8")
        config.write_text(text + '\n[targets."s\u00e4ndbox"]\n', encoding="utf-8")
        with pytest.raises(ConfigError, match="a target name must be"):
            kit.gateway()
        config.write_text(text, encoding="utf-8")
        trust = kit.home / "trust.toml"
        grant = '{action = "reports.read", resource = "**"},'
        trust.write_text(
            trust.read_text(encoding="utf-8").replace(
                grant, grant + '\n  {action = "http.*", resource = "/**"},'
            ),
            encoding="utf-8",
        )
        base = kit.gateway()
        odd = tmp_path / "odd-policy.yaml"
        odd.write_text(POLICY.replace("target: sandbox", 'target: "s\\u00e4ndbox"'))
        gateway = Gateway(
            gateway_id=base.gateway_id,
            audiences=base.audiences,
            node_key=base.node_key,
            trust=base.trust,
            policy=load_policy(odd, targets={"s\u00e4ndbox"}),
            store=base.store,
            now=kit.clock,
        )
        with Client(create_app(open_gateway=lambda: gateway, now=kit.clock)) as client:
            response = nginx(client, "GET", "/reports/a", headers_for(kit, "GET", "/reports/a"))
            assert response.status_code == 500
            assert response.json()["error"]["code"] == "internal.error"
            assert response.headers["Execgate-Reason"] == "internal.error"
    finally:
        kit.close()


# -- the command line's headers pass ---------------------------------------------------------


def test_cli_headers_pass_through_forward_auth(
    kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    kit.clock.t = time.time()  # the command dates its proof by the real clock
    (kit.home.parent / "art.jwt").write_text(kit.artifact(HTTP) + "\n")
    key = kit.home.parent / "runtime.jwk"
    write_keypair(key, kit.runtime.key)
    argv = [
        "--home", str(kit.home), "proof", "--http-method", "POST", "--http-uri", "/api/x?y=1",
        "--artifact", str(kit.home.parent / "art.jwt"), "--runtime-key", str(key),
    ]  # fmt: skip
    body = kit.home.parent / "body.json"
    body.write_bytes(b'{"n": 1}')
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        assert main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        headers = dict(line.split(": ", 1) for line in lines)
        assert set(headers) == {"Authorization", "Execgate-Proof", "Execgate-Runtime"}
        assert headers["Execgate-Runtime"] == RUNTIME_ID  # from the artifact's sub
        assert nginx(client, "POST", "/api/x?y=1", headers).status_code == 200

        assert main([*argv, "--body-file", str(body), "--header-format", "json"]) == 0
        headers = json.loads(capsys.readouterr().out)
        response = client.request(
            "POST", "/v1/forward-auth/api/x?y=1", headers=headers, content=b'{"n": 1}'
        )
        assert response.status_code == 200, response.text

        assert main([*argv, "--audience", "another-gateway"]) == 0
        lines = capsys.readouterr().out.splitlines()
        headers = dict(line.split(": ", 1) for line in lines)
        denied(nginx(client, "POST", "/api/x?y=1", headers), "deny", "identity.proof_invalid")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--http-method", "GET"], "give --http-uri too"),
        (["--http-uri", "/a"], "give --http-method too"),
        (["--http-method", "GET", "--http-uri", "a"], "starting with '/'"),
        (["--http-method", "G T", "--http-uri", "/a"], "RFC 9110 token"),
        (["--http-method", "GET", "--http-uri", "/a", "--request", "r.json"], "cannot be combined"),
        ([], "give --request FILE"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(
    kit: Kit, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    (kit.home.parent / "art.jwt").write_text(kit.artifact(HTTP) + "\n")
    key = kit.home.parent / "runtime.jwk"
    write_keypair(key, kit.runtime.key)
    argv = ["--home", str(kit.home), "proof", "--artifact", str(kit.home.parent / "art.jwt"),
            "--runtime-key", str(key), *extra]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert message in captured.err


def test_the_documented_rule_denies_a_call_whose_body_was_not_bound() -> None:
    """docs/forward-auth.md's rule for calls whose body matters, ahead of a proceed rule:
    a POST with no body_sha256 (nginx never forwards the body) is denied, one with it
    goes on to the next rule."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "forward-auth.md").read_text()
    [snippet] = [block.partition("\n")[2] for block in page.split("```yaml")[1:]]
    rule = snippet.partition("```")[0]
    proceed = '  - name: api\n    match: {action: "http.*", resource: "/api/**"}\n'
    policy = parse_policy(
        f"version: 1\nrules:\n{rule}{proceed}    effect: proceed\n", source="doc", targets=()
    )
    args = {"method": "POST", "uri": "/api/transfers/9"}
    outcomes = []
    for bound in ({}, {"body_sha256": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"}):
        request: dict[str, Any] = {"action": "http.post", "resource": "/api/transfers/9"}
        request |= {"runtime": "r", "args": {**args, **bound}}
        result = policy.evaluate(request=request, artifact={}, environment={}, now=0)
        outcomes.append((result.outcome.value, result.rule))
    assert outcomes == [("deny", "transfers-need-a-bound-body"), ("proceed", "api")]
