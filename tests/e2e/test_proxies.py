"""Real nginx (``auth_request``), Envoy (``ext_authz``) and Traefik (ForwardAuth) in front
of a real ``execgate serve``: what reaches the application, and what never does.

Each proxy runs the configuration ``docs/proxies.md`` documents (``configs/``), once per
proxy for the whole module, with its own gateway and its own two upstreams (``main`` and
``sandbox``). Every assertion about what got through is made on the upstreams' own logs,
by the request's ``X-E2E-Id``; the status the client saw is asserted separately.

The tests that break the gateway (hang, kill) come last and put it back afterwards.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxykit import DOWN, HANGING, NO_TARGET, PROXIES, TOO_LARGE, Stack, stack


@pytest.fixture(scope="module", params=PROXIES)
def proxied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    kind: str = request.param
    base: Path = tmp_path_factory.mktemp(f"e2e-{kind}")
    with stack(kind, base) as s:
        yield s


# -- what gets through -------------------------------------------------------------------


def test_proceed_reaches_the_main_upstream(proxied: Stack) -> None:
    sent = proxied.call("GET", "/api/items?page=2")
    assert sent.response.status_code == 200, sent.response.text
    assert sent.response.json() == {"upstream": "main"}
    [record] = proxied.main.seen(sent.e2e_id)
    assert record["method"] == "GET"
    assert record["path"] == "/api/items?page=2"
    # The upstream sees execgate's answer: which decision let the call through.
    assert record["headers"]["execgate-outcome"] == "proceed"
    assert record["headers"]["execgate-decision"]
    assert "execgate-route" not in record["headers"]
    assert proxied.sandbox.seen(sent.e2e_id) == []


def test_proceed_with_a_body(proxied: Stack) -> None:
    body = b'{"name": "widget", "count": 3}'
    sent = proxied.call("POST", "/api/items", body=body)
    assert sent.response.status_code == 200, sent.response.text
    [record] = proxied.main.seen(sent.e2e_id)
    assert (record["method"], record["path"], record["body_length"]) == (
        "POST",
        "/api/items",
        len(body),
    )


def test_a_body_is_bound_where_the_proxy_forwards_it(proxied: Stack) -> None:
    """Envoy and Traefik (as configured) send the body to execgate, so a proof made for
    one body does not let another through. nginx's auth_request cannot send the body, so
    there the proof covers method and URI only (docs/proxies.md says so)."""
    signed, sent_body = b'{"amount": 1}', b'{"amount": 1000000}'
    headers = proxied.evidence("POST", "/api/items", signed)
    sent = proxied.send("POST", "/api/items", headers, body=sent_body)
    if proxied.proxy.binds_body:
        assert sent.response.status_code == 403
        assert sent.response.headers["execgate-reason"] == "identity.proof_invalid"
        assert proxied.reached(sent) == []
    else:
        assert sent.response.status_code == 200
        assert proxied.reached(sent) == ["main"]


def test_reroute_reaches_the_sandbox_only(proxied: Stack) -> None:
    sent = proxied.call("GET", "/experiments/run-7")
    assert sent.response.status_code == 200, sent.response.text
    assert sent.response.json() == {"upstream": "sandbox"}
    [record] = proxied.sandbox.seen(sent.e2e_id)
    assert record["headers"]["execgate-route"] == "sandbox"
    assert record["headers"]["execgate-outcome"] == "reroute"
    assert proxied.main.seen(sent.e2e_id) == []


@pytest.mark.parametrize("uri", ["/dry/run-1", "/cased/run-1"])
def test_reroute_to_a_target_the_proxy_does_not_serve_reaches_nothing(
    proxied: Stack, uri: str
) -> None:
    """execgate says reroute to ``dry-run``, or to ``Sandbox`` (not ``sandbox``: target
    names are compared exactly); no proxy here serves it, and none may fall back to the
    main upstream or take it for the sandbox (an nginx ``map`` key ignores case)."""
    sent = proxied.call("GET", uri)
    assert sent.response.status_code == NO_TARGET[proxied.proxy.kind]
    assert proxied.reached(sent) == []


# -- what never gets through -------------------------------------------------------------


def test_a_body_over_the_limit_reaches_nothing(proxied: Stack) -> None:
    sent = proxied.call("POST", "/api/items", body=b"x" * ((1 << 20) + 1))
    assert sent.response.status_code == TOO_LARGE[proxied.proxy.kind]
    assert proxied.reached(sent) == []


@pytest.mark.parametrize(
    ("method", "uri", "outcome", "reason"),
    [
        ("GET", "/admin/users", "deny", "policy.denied"),
        ("DELETE", "/private/files/1", "deny", "scope.not_granted"),
        ("POST", "/api/transfers/9", "pause", "approval.required"),
    ],
    ids=["policy-deny", "out-of-scope", "pause"],
)
def test_refused_requests_reach_no_upstream(
    proxied: Stack, method: str, uri: str, outcome: str, reason: str
) -> None:
    sent = proxied.call(method, uri, body=b"{}" if method == "POST" else None)
    assert sent.response.status_code == 403
    assert sent.response.headers["execgate-outcome"] == outcome
    assert sent.response.headers["execgate-reason"] == reason
    assert sent.response.headers["execgate-decision"]
    # A pause names the approval the call now waits on; nothing else does.
    assert ("execgate-approval" in sent.response.headers) == (outcome == "pause")
    assert proxied.reached(sent) == []


def test_no_evidence_reaches_no_upstream(proxied: Stack) -> None:
    sent = proxied.send("GET", "/api/items", {})
    assert sent.response.status_code == 403
    assert sent.response.headers["execgate-reason"] == "artifact.missing"
    assert proxied.reached(sent) == []


def test_a_replayed_request_never_reaches_the_upstream(proxied: Stack) -> None:
    headers = proxied.evidence("GET", "/api/items/42")
    first = proxied.send("GET", "/api/items/42", headers)
    again = proxied.send("GET", "/api/items/42", headers)
    assert first.response.status_code == 200
    assert proxied.reached(first) == ["main"]
    assert again.response.status_code == 403
    assert again.response.headers["execgate-reason"] == "replay.detected"
    assert proxied.reached(again) == []


def test_evidence_for_another_call_is_refused(proxied: Stack) -> None:
    """A proof made for ``GET /api/items`` does not let ``GET /admin/users`` through."""
    sent = proxied.send("GET", "/admin/users", proxied.evidence("GET", "/api/items"))
    assert sent.response.status_code == 403
    assert sent.response.headers["execgate-reason"] == "identity.proof_invalid"
    assert proxied.reached(sent) == []


# -- what a client cannot choose ---------------------------------------------------------

_SPOOFED = {
    "Execgate-Route": "sandbox",
    "Execgate-Outcome": "proceed",
    "Execgate-Decision": "forged",
}


def test_a_client_route_header_does_not_pick_the_sandbox(proxied: Stack) -> None:
    headers = {**proxied.evidence("GET", "/api/items"), **_SPOOFED}
    sent = proxied.send("GET", "/api/items", headers)
    assert sent.response.status_code == 200, sent.response.text
    assert proxied.sandbox.seen(sent.e2e_id) == []
    [record] = proxied.main.seen(sent.e2e_id)
    # The upstream sees execgate's answer only, never the client's copies.
    assert "execgate-route" not in record["headers"]
    assert record["headers"]["execgate-outcome"] == "proceed"
    assert record["headers"]["execgate-decision"] != "forged"


def test_a_client_route_header_does_not_redirect_a_reroute(proxied: Stack) -> None:
    headers = {**proxied.evidence("GET", "/experiments/run-8"), "Execgate-Route": "main"}
    sent = proxied.send("GET", "/experiments/run-8", headers)
    assert sent.response.status_code == 200, sent.response.text
    assert proxied.reached(sent) == ["sandbox"]


@pytest.mark.parametrize("signed_for", ["/admin/users", "/api/items"])
def test_client_headers_cannot_turn_a_deny_into_anything_else(
    proxied: Stack, signed_for: str
) -> None:
    """A client names an allowed call in every header a proxy or execgate reads for the
    original call or the answer, while asking for a denied one. With evidence for the
    denied call the policy still denies it; with evidence for the allowed call the proof
    does not match the call the proxy actually forwards."""
    headers = {
        **proxied.evidence("GET", signed_for),
        **_SPOOFED,
        "X-Original-Method": "GET",
        "X-Original-URI": "/api/items",
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": "/api/items",
    }
    sent = proxied.send("GET", "/admin/users", headers)
    assert sent.response.status_code == 403
    assert proxied.reached(sent) == []


_OVERRIDES = {
    "X-HTTP-Method-Override": "DELETE",
    "X-HTTP-Method": "DELETE",
    "X-Method-Override": "DELETE",
    "X-Original-URL": "/admin/users",
    "X-Rewrite-URL": "/admin/users",
    "X-Original-URI": "/admin/users",
    "X-Original-Method": "DELETE",
    "X-Forwarded-Uri": "/admin/users",
    "X-Forwarded-Method": "DELETE",
    "X-Forwarded-Prefix": "/admin",
}


def test_override_headers_never_reach_the_upstream(proxied: Stack) -> None:
    """execgate decides GET /api/items; a service reading any of these headers would run
    DELETE, or serve /admin/users (Laravel and Express method overrides, Symfony's
    X-Original-URL, Spring's X-Forwarded-Prefix). The proxy removes them all."""
    headers = {**proxied.evidence("GET", "/api/items"), **_OVERRIDES}
    sent = proxied.send("GET", "/api/items", headers)
    assert sent.response.status_code == 200, sent.response.text
    [record] = proxied.main.seen(sent.e2e_id)
    assert (record["method"], record["path"]) == ("GET", "/api/items")
    assert record["headers"]["execgate-outcome"] == "proceed"
    assert set(record["headers"]) == {"x-e2e-id", "execgate-outcome", "execgate-decision"}


def _underscored(name: str) -> list[str]:
    """Every spelling of ``name`` with at least one of its hyphens an underscore."""
    first, *rest = name.split("-")
    return [
        first + "".join(sep + part for sep, part in zip(seps, rest, strict=True))
        for seps in itertools.product("-_", repeat=len(rest))
        if "_" in seps
    ]


# The same headers spelled with underscores, and execgate's own answer headers so
# spelled: a service that reads headers as CGI variables (wsgiref, uWSGI, PHP) takes
# X_Original_URL or X-Original_URL for X-Original-URL, Execgate_Route for Execgate-Route.
_UNDERSCORED = {
    spelling: value
    for name, value in {
        **_OVERRIDES,
        "Execgate-Route": "sandbox",
        "Execgate-Outcome": "reroute",
        "Execgate-Decision": "forged",
    }.items()
    for spelling in _underscored(name)
}


def test_override_headers_spelled_with_underscores_never_reach_the_upstream(
    proxied: Stack,
) -> None:
    """nginx (ignore_invalid_headers) and Envoy (headers_with_underscores_action) drop
    every name with an underscore; the Traefik configuration removes each spelling."""
    assert len(_UNDERSCORED) == 37
    headers = {**proxied.evidence("GET", "/api/items"), **_UNDERSCORED}
    sent = proxied.send("GET", "/api/items", headers)
    assert sent.response.status_code == 200, sent.response.text
    [record] = proxied.main.seen(sent.e2e_id)
    assert set(record["headers"]) == {"x-e2e-id", "execgate-outcome", "execgate-decision"}
    assert record["headers"]["execgate-outcome"] == "proceed"


# -- a gateway that is gone or stuck (these break the gateway, then restore it) ----------


def test_a_hanging_gateway_lets_nothing_through(proxied: Stack) -> None:
    headers = proxied.evidence("GET", "/api/items")
    proxied.gateway.freeze()
    try:
        started = time.monotonic()
        sent = proxied.send("GET", "/api/items", headers)
        elapsed = time.monotonic() - started
    finally:
        proxied.gateway.thaw()
    assert sent.response.status_code == HANGING[proxied.proxy.kind]
    # The proxy gave up on its own configured auth timeout, not on the client's.
    assert elapsed < proxied.proxy.auth_timeout + 5
    assert proxied.reached(sent) == []


def test_a_killed_gateway_lets_nothing_through(proxied: Stack) -> None:
    headers = proxied.evidence("GET", "/api/items")
    proxied.gateway.kill()
    try:
        sent = proxied.send("GET", "/api/items", headers)
    finally:
        proxied.gateway.restart()
    assert sent.response.status_code == DOWN[proxied.proxy.kind]
    assert proxied.reached(sent) == []
    # Back up: the same proxy lets a fresh, allowed call through again.
    again = proxied.call("GET", "/api/items")
    assert again.response.status_code == 200
    assert proxied.reached(again) == ["main"]
