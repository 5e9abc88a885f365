"""The HTTP decision API in process (httpx ``ASGITransport``, lifespan included): every
endpoint, every typed error, and that no error decides or logs anything.

Starlette's ``TestClient`` is not used: from Starlette 1.x on it warns that it wants
``httpx2``, and warnings are errors here. ``Client`` below is the same idea in a few
lines: one event loop in a thread (an anyio blocking portal) runs the app's lifespan and
every request.
"""

from __future__ import annotations

import base64
import fcntl
import gc
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import schemathesis
from anyio.from_thread import start_blocking_portal
from gatekit import GATEWAY_ID, NOW, PAYMENTS, POLICY, Kit, make_kit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message
from test_audit_log import fork_the_tree

import execgate.server.app as server_app
from execgate.audit.checkpoint import verify_tlog_proof
from execgate.audit.log import AuditLog, SigningRefused
from execgate.home import ServerConfig
from execgate.jose import PrivateKey
from execgate.model import Decision
from execgate.pipeline import Gateway
from execgate.policy import parse_policy
from execgate.policy.loader import pin_policy
from execgate.proofs import Runtime
from execgate.receipts import verify_receipt
from execgate.server import create_app
from execgate.server._http import read_body
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore
from execgate.store.unavailable import UnavailableStore

SHELL = ({"action": "shell.exec", "resource": "host:**"},)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


class Client:
    """A synchronous client for an ASGI app, with its lifespan run (or not)."""

    def __init__(
        self,
        app: Starlette,
        *,
        lifespan: bool = True,
        peer: tuple[str, int] = ("127.0.0.1", 1234),
        raise_app_exceptions: bool = True,
    ) -> None:
        """``peer`` is the client address the app sees (forward-auth trusts by it); with
        ``raise_app_exceptions`` off, an exception the app re-raises after answering is
        not raised here (a server logs it and keeps serving)."""
        self.app = app
        self._stack = ExitStack()
        self._portal = self._stack.enter_context(start_blocking_portal())
        if lifespan:
            context = app.router.lifespan_context(app)
            try:
                self._stack.enter_context(self._portal.wrap_async_context_manager(context))
            except BaseException:  # a startup that fails leaves no portal thread behind
                self._stack.close()
                raise
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(
                app=app, client=peer, raise_app_exceptions=raise_app_exceptions
            ),
            base_url="http://gateway.test",
        )

    def close(self) -> None:
        self._portal.call(self._client.aclose)
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            return await self._client.request(method, url, **kwargs)

        return self._portal.call(send)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


@pytest.fixture
def client(kit: Kit) -> Iterator[Client]:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as c:
        yield c


@pytest.fixture
def public(kit: Kit) -> Iterator[Client]:
    """A server whose log entries anyone may read (``[server] public_audit``); who may
    read them otherwise is tested with the admin routes (test_server_admin)."""
    app = create_app(
        open_gateway=kit.gateway, now=kit.clock, server=ServerConfig(public_audit=True)
    )
    with Client(app) as c:
        yield c


def decide(client: Client, submission: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/decisions", json=submission)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    code: str = body["error"]["code"]
    assert response.headers["execgate-reason"] == code  # every typed error says it twice
    return code


def log_size(client: Client) -> int:
    size: int = client.app.state.gateway.store.size()
    return size


# -- decisions: 200 for every outcome, the outcome in the body ----------------------------


def test_proceed_returns_the_decision_with_a_verifying_receipt(kit: Kit, client: Client) -> None:
    body = decide(client, kit.submit())
    assert body["outcome"] == "proceed"
    assert body["reasons"] == []
    assert body["log_index"] == 0
    key = kit.node_key.public
    claims = verify_receipt(
        body["receipt"], keys={key.thumbprint(): key}, now=kit.clock.now, leeway=0
    )
    assert claims["outcome"] == "proceed"


@pytest.mark.parametrize(
    ("action", "amount", "outcome", "code"),
    [
        ("payments.refund", 5, "deny", "policy.denied"),
        ("payments.transfer", 5000, "pause", "approval.required"),
    ],
)
def test_non_proceed_outcomes_are_200_with_a_reason(
    kit: Kit, client: Client, action: str, amount: int, outcome: str, code: str
) -> None:
    body = decide(client, kit.submit(kit.request(action, amount=amount)))
    assert body["outcome"] == outcome
    assert body["reasons"][0]["code"] == code
    assert body["receipt"]


def test_reroute_names_its_target(kit: Kit, client: Client) -> None:
    request = kit.request("shell.exec", "host:build-1", argv=["ls"], cwd="/")
    body = decide(client, kit.submission(request, kit.artifact(SHELL)))
    assert (body["outcome"], body["route"]) == ("reroute", "sandbox")


def test_a_replayed_submission_is_denied(kit: Kit, client: Client) -> None:
    submission = kit.submit()
    assert decide(client, submission)["outcome"] == "proceed"
    again = decide(client, submission)
    assert again["outcome"] == "deny"
    assert [r["code"] for r in again["reasons"]] == ["replay.detected"]


def test_a_failing_clock_is_fail_closed_not_an_http_error(kit: Kit, client: Client) -> None:
    submission = kit.submit()
    kit.clock.error = RuntimeError("clock broke")
    body = decide(client, submission)
    assert body["outcome"] == "fail_closed"
    assert body["reasons"][0]["code"] == "internal.error"


def test_a_store_that_is_down_answers_fail_closed(kit: Kit) -> None:
    app = create_app(open_gateway=lambda: kit.gateway(UnavailableStore("disk gone")))
    with Client(app) as client:
        body = decide(client, kit.submit())
        assert body["outcome"] == "fail_closed"
        assert body["receipt"] is None
        assert error_of(client.get("/readyz"), 503) == "not_ready"
        # A read of the entries is an admin call, and even its refusal must be logged.
        assert error_of(client.get("/v1/audit/entries"), 503) == "audit.unavailable"
    public = ServerConfig(public_audit=True)
    app = create_app(open_gateway=lambda: kit.gateway(UnavailableStore("disk gone")), server=public)
    with Client(app) as client:
        assert error_of(client.get("/v1/audit/entries"), 503) == "store.unavailable"


def test_a_store_that_lost_committed_entries_decides_and_signs_nothing(kit: Kit) -> None:
    """``state.db`` put back to an older copy under a home whose gateway had committed
    more (as a removed ``-wal`` and a kill also leave it): decisions fail closed, the
    probe says why, and no checkpoint is signed for a size the node signed before."""
    state = kit.home / "state.db"
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        assert decide(client, kit.submit())["outcome"] == "proceed"
    kit.close()
    older = state.read_bytes()
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        assert decide(client, kit.submit())["outcome"] == "proceed"
        signed = client.get("/v1/audit/checkpoint").json()
    kit.close()
    assert signed["size"] == 2
    state.write_bytes(older)
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        body = decide(client, kit.submit())
        ready = client.get("/readyz")
        checkpoint = client.get("/v1/audit/checkpoint")
    assert body["outcome"] == "fail_closed"
    assert [r["code"] for r in body["reasons"]] == ["audit.unavailable"]
    assert "1 entries but 2 were committed" in body["reasons"][0]["detail"]
    assert error_of(ready, 503) == "not_ready"
    assert "1 entries but 2 were committed" in ready.json()["error"]["message"]
    assert error_of(checkpoint, 503) == "audit.unavailable"


def test_a_store_lost_while_serving_tells_clients_no_file_name(kit: Kit) -> None:
    """The home disappears under a running server (renamed: every new connection and
    the writers' lock file fail to open). Decisions fail closed and reads are typed 503s,
    and none of them tells the client where the gateway keeps its state; once the home is
    back, the same server decides again."""
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        moved = kit.home.with_name("moved-away")
        kit.home.rename(moved)
        try:
            body = decide(client, kit.submit())
            ready = client.get("/readyz")
            lookup = client.get(f"/v1/decisions/{body['decision_id']}")
        finally:
            moved.rename(kit.home)
        assert body["outcome"] == "fail_closed"
        assert [r["code"] for r in body["reasons"]] == ["store.unavailable", "audit.unavailable"]
        assert error_of(ready, 503) == "not_ready"
        assert error_of(lookup, 503) == "store.unavailable"
        for said in (json.dumps(body), ready.text, lookup.text):
            assert str(kit.home.parent) not in said
            assert "state.db" not in said
        assert decide(client, kit.submit())["outcome"] == "proceed"


@pytest.mark.parametrize("on_the_loop", [True, False], ids=["decide_async", "decide"])
def test_a_writers_lock_that_cannot_be_opened_tells_clients_no_file_name(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, *, on_the_loop: bool
) -> None:
    """The store opens, but its writers' lock file cannot (a directory took its name):
    the ``OSError`` names the file, and neither a decision (led on the event loop, or a
    large one committed in a worker thread) nor a checkpoint write may pass that on."""
    if not on_the_loop:  # a body over this is decided in a thread, with ``commit``
        monkeypatch.setattr(server_app, "INLINE_BODY_LIMIT", 0)
    lock = kit.home / "state.db-writer.lock"
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        lock.mkdir()
        try:
            body = decide(client, kit.submit())
            checkpoint = client.get("/v1/audit/checkpoint")
        finally:
            lock.rmdir()
        assert body["outcome"] == "fail_closed"
        assert [r["code"] for r in body["reasons"]] == ["store.unavailable", "audit.unavailable"]
        assert error_of(checkpoint, 503) == "audit.unavailable"
        for said in (json.dumps(body), checkpoint.text):
            assert "Is a directory" in said
            assert str(kit.home.parent) not in said
            assert "writer.lock" not in said
        assert decide(client, kit.submit())["outcome"] == "proceed"


class _ReadyProbeBreaks(UnavailableStore):
    """A store whose checkpoint read fails with an error that is not the store's own:
    one that names a file, as an ``OSError`` does."""

    def recent_checkpoints(self) -> Iterator[tuple[int, str]]:
        raise FileNotFoundError(2, "No such file or directory", "/srv/secret/state.db")


def test_readyz_tells_the_probe_no_internals_of_an_unexpected_failure(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(open_gateway=lambda: kit.gateway(_ReadyProbeBreaks("unused")))
    with Client(app) as client:
        ready = client.get("/readyz")
    assert error_of(ready, 503) == "not_ready"
    assert ready.json()["error"]["message"] == "FileNotFoundError in the readiness check"
    logged = [r for r in caplog.records if "the readiness check failed" in r.getMessage()]
    assert len(logged) == 1
    assert "/srv/secret/state.db" in logged[0].getMessage()  # the operator's log says it
    assert logged[0].exc_info is not None


# -- typed errors: nothing decided, nothing logged ---------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "request.malformed_json"),
        (b'{"request": 1, "request": 2}', 400, "request.malformed_json"),
        (b'{"x": NaN}', 400, "request.malformed_json"),
        (b"\xff\xfe", 400, "request.malformed_json"),
        (b"[]", 400, "request.invalid"),
        # half a million nested empty lists in a megabyte: each value costs Python work
        (
            b'{"request": {"args": {"l": ['
            + b",".join([b"[[[[[[[[[[]]]]]]]]]]"] * 50_000)
            + b"]}}}",
            400,
            "request.malformed_json",
        ),
        (b'{"artifact": "a.b.c"}', 400, "request.invalid"),
        (
            b'{"request": {"action": "a", "resource": "r", "runtime": "x"}, "extra": 1}',
            400,
            "request.invalid",
        ),
    ],
)
def test_bad_bodies_are_typed_400s(client: Client, body: bytes, status: int, code: str) -> None:
    response = client.post(
        "/v1/decisions", content=body, headers={"content-type": "application/json"}
    )
    assert error_of(response, status) == code
    assert log_size(client) == 0


def test_a_number_too_long_to_read_says_so_in_the_clients_terms(client: Client) -> None:
    body = b'{"request": {"args": {"n": ' + b"9" * 5001 + b"}}}"
    response = client.post(
        "/v1/decisions", content=body, headers={"content-type": "application/json"}
    )
    assert error_of(response, 400) == "request.malformed_json"
    message = response.json()["error"]["message"]
    assert "a number has more than 4300 digits" in message
    assert "sys." not in message
    assert log_size(client) == 0


@pytest.mark.parametrize("encoding", ["gzip", "br", "identity, gzip"])
def test_an_encoded_body_is_415_not_read_as_what_its_label_says(
    kit: Kit, client: Client, encoding: str
) -> None:
    """A JSON body is not decoded: a compressed one is refused as such, and a plain one
    labelled compressed is not decided as if the label were wrong."""
    response = client.post(
        "/v1/decisions",
        content=json.dumps(kit.submit()),
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert error_of(response, 415) == "request.unsupported_media_type"
    assert "Content-Encoding" in response.json()["error"]["message"]
    assert log_size(client) == 0
    plain = client.post(
        "/v1/decisions",
        content=json.dumps(kit.submit()),
        headers={"content-type": "application/json", "content-encoding": "identity"},
    )
    assert plain.status_code == 200


def test_every_content_encoding_header_counts(kit: Kit, client: Client) -> None:
    """Not only the first: ``identity`` then ``gzip`` is an encoded body too."""
    response = client.post(
        "/v1/decisions",
        content=json.dumps(kit.submit()),
        headers=[
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
            ("content-encoding", "gzip"),
        ],
    )
    assert error_of(response, 415) == "request.unsupported_media_type"
    assert log_size(client) == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/jsonx", "form"])
def test_wrong_content_type_is_415(kit: Kit, client: Client, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/v1/decisions", content=json.dumps(kit.submit()), headers=headers)
    assert error_of(response, 415) == "request.unsupported_media_type"
    assert log_size(client) == 0


def test_json_with_a_charset_is_accepted(kit: Kit, client: Client) -> None:
    response = client.post(
        "/v1/decisions",
        content=json.dumps(kit.submit()),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.json()["outcome"] == "proceed"


def test_an_oversized_body_is_413(client: Client) -> None:
    big = b'{"request": "' + b"x" * server_app.DECISION_BODY_LIMIT + b'"}'
    response = client.post(
        "/v1/decisions", content=big, headers={"content-type": "application/json"}
    )
    assert error_of(response, 413) == "request.too_large"
    assert log_size(client) == 0


@pytest.mark.parametrize("declared", ["-1", "0" * 4400 + "2"])
def test_a_bad_content_length_is_400(client: Client, declared: str) -> None:
    """Also one of more digits than int() reads (an HTTP parser takes leading zeros)."""
    response = client.post(
        "/v1/decisions",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": declared},
    )
    assert error_of(response, 400) == "request.bad_content_length"


async def _asgi_post(
    app: Any, path: str, chunks: list[bytes], content_length: int | None
) -> tuple[int, dict[str, Any], int]:
    """Drive the app directly: return (status, body, how many chunks it read)."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    else:  # how HTTP/1.1 sends a body of no declared length
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    read = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal read
        read += 1
        more = read < len(chunks)
        return {"type": "http.request", "body": chunks[read - 1], "more_body": more}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_declared_oversized_body_is_refused_before_reading_it(
    kit: Kit, anyio_backend: str
) -> None:
    app = create_app(open_gateway=kit.gateway)
    chunks = [b"x" * 1024] * 10
    status, body, read = await _asgi_post(
        app, "/v1/decisions", chunks, server_app.DECISION_BODY_LIMIT + 1
    )
    assert (status, body["error"]["code"], read) == (413, "request.too_large", 0)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("declared", [None, 10])
async def test_a_streamed_body_stops_being_read_past_the_limit(
    kit: Kit, anyio_backend: str, declared: int | None
) -> None:
    """No Content-Length, or one that lies: reading stops at the first chunk past it."""
    app = create_app(open_gateway=kit.gateway)
    chunk = 64 * 1024
    chunks = [b" " * chunk] * (server_app.OUTCOME_BODY_LIMIT // chunk + 50)
    status, body, read = await _asgi_post(app, "/v1/decisions/x/outcome", chunks, declared)
    assert (status, body["error"]["code"]) == (413, "request.too_large")
    assert read == 1  # one 64 KiB chunk already exceeds the 16 KiB outcome limit
    chunks = [b" " * 1024] * (server_app.DECISION_BODY_LIMIT // 1024 + 100)
    status, body, read = await _asgi_post(app, "/v1/decisions", chunks, None)
    assert (status, body["error"]["code"]) == (413, "request.too_large")
    assert read == server_app.DECISION_BODY_LIMIT // 1024 + 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("version", "headers", "expected"),
    [
        ("1.1", [], b""),  # HTTP/1: neither header, no body; receive is never called
        ("1.0", [], b""),
        ("1.1", [(b"transfer-encoding", b"chunked")], b'{"a": 1}'),
        ("1.1", [(b"content-length", b"8")], b'{"a": 1}'),
        # The first Content-Length counts, as request.headers.get would give it.
        ("1.1", [(b"content-length", b"8"), (b"content-length", b"99999")], b'{"a": 1}'),
        ("2", [], b'{"a": 1}'),  # HTTP/2 may send a body with neither header
    ],
)
async def test_a_body_is_read_unless_http1_says_there_is_none(
    anyio_backend: str, version: str, headers: list[tuple[bytes, bytes]], expected: bytes
) -> None:
    scope = {
        "type": "http",
        "http_version": version,
        "method": "POST",
        "headers": headers,
        "app": Starlette(),  # read_body looks up [server] body_timeout there
    }
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b'{"a": 1}', "more_body": False}

    assert await read_body(Request(scope, receive), limit=1024) == expected
    assert calls == (0 if expected == b"" else 1)


def test_unknown_routes_are_404(client: Client) -> None:
    assert error_of(client.get("/nope"), 404) == "route.not_found"
    assert "/openapi.json lists them" in client.get("/nope").json()["error"]["message"]
    # A trailing slash is another path, not a redirect built from the client's Host.
    assert error_of(client.get("/healthz/", headers={"host": "evil.example"}), 404) == (
        "route.not_found"
    )
    assert error_of(client.post("/v1/revocations/", json={}), 404) == "route.not_found"
    assert error_of(client.get("/v1/audit/proofs/abc"), 404) == "route.not_found"
    assert error_of(client.post("/v1/decision", json={}), 404) == "route.not_found"


def test_a_log_index_of_thousands_of_digits_is_no_route_not_a_crash(
    kit: Kit, public: Client
) -> None:
    # int() of over 4,300 digits raises: that must not happen while routing.
    assert error_of(public.get("/v1/audit/proofs/" + "9" * 5000), 404) == "route.not_found"
    assert error_of(public.get("/v1/audit/proofs/" + "9" * 20), 404) == "route.not_found"
    assert error_of(public.get("/v1/audit/proofs/" + "9" * 19), 404) == "audit.index_not_found"
    decide(public, kit.submit())
    assert public.get("/v1/audit/proofs/" + "0" * 19).json()["index"] == 0


def test_a_failure_outside_every_handler_is_a_typed_500(kit: Kit) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("not from any handler")

    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    app.router.routes.append(Route("/broken", broken))
    with Client(app, raise_app_exceptions=False) as c:
        assert error_of(c.get("/broken"), 500) == "internal.error"
        assert c.get("/healthz").status_code == 200


def test_wrong_methods_are_405_with_allow(client: Client) -> None:
    response = client.get("/v1/decisions")
    assert error_of(response, 405) == "method.not_allowed"
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["message"] == "this route takes POST"
    assert error_of(client.delete("/v1/audit/checkpoint"), 405) == "method.not_allowed"
    assert error_of(client.put("/v1/decisions/x/outcome", json={}), 405) == "method.not_allowed"


def test_an_unexpected_failure_is_a_typed_500_and_logged(
    kit: Kit, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    gateway: Gateway = client.app.state.gateway

    def broken(decision_id: str, kind: str) -> None:
        raise RuntimeError("bug")

    gateway.store.find = broken  # type: ignore[method-assign]
    assert error_of(client.get("/v1/decisions/abc"), 500) == "internal.error"
    [logged] = [r for r in caplog.records if "answered 500" in r.getMessage()]
    assert logged.getMessage() == "unexpected RuntimeError answered 500"
    assert logged.exc_info is not None  # its frames: the JSON line keeps them


# -- decision records and outcomes --------------------------------------------------------


def test_get_decision_returns_the_logged_record_and_its_outcome(
    kit: Kit, client: Client, public: Client
) -> None:
    decided = decide(client, kit.submit())
    decision_id = decided["decision_id"]
    body = client.get(f"/v1/decisions/{decision_id}").json()
    assert body["view"] == "receipt"
    assert body["decision"]["index"] == decided["log_index"]
    assert body["decision"]["record"]["outcome"] == "proceed"
    assert body["decision"]["record"]["request_hash"] == decided["request_hash"]
    assert body["outcome"] is None

    digest = "sha256:" + "ab" * 32
    report = {"status": "succeeded", "exit_code": 0, "result_digest": digest}
    response = client.post(
        f"/v1/decisions/{decision_id}/outcome",
        json=report,
        headers={"Execgate-Proof": outcome_proof(kit, decision_id, report)},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"decision_id": decision_id, "log_index": 1}
    outcome = client.get(f"/v1/decisions/{decision_id}").json()["outcome"]
    assert outcome["index"] == 1
    # Without credentials: that an outcome was reported, not how it ended (a digest of
    # a small result or of an exception's name is easily guessed).
    assert outcome["record"] == {
        "v": outcome["record"]["v"],
        "kind": "outcome",
        "decision_id": decision_id,
        "gateway": GATEWAY_ID,
        "at": kit.clock.now,
    }
    # Where the log is public (or for an audit admin), the whole outcome record.
    shown = public.get(f"/v1/decisions/{decision_id}").json()["outcome"]["record"]
    assert (shown["status"], shown["exit_code"], shown["result_digest"]) == ("succeeded", 0, digest)

    again = client.post(
        f"/v1/decisions/{decision_id}/outcome",
        json={"status": "failed"},
        headers={"Execgate-Proof": outcome_proof(kit, decision_id, {"status": "failed"})},
    )
    assert error_of(again, 409) == "outcome.conflict"
    assert log_size(client) == 2


def test_a_decision_id_shows_only_what_the_receipt_says(kit: Kit, client: Client) -> None:
    """Decision ids travel (access log, upstream, client, a child's parent): without
    credentials a lookup shows the receipt's fields, never the request or the details."""
    secret = kit.request("payments.transfer", amount=5, iban="DE-SECRET")
    allowed = decide(client, kit.submit(secret))
    capped = kit.artifact([{**PAYMENTS[0], "constraints": {"amount": {"max": 100}}}])
    refused = decide(client, kit.submission(kit.request("payments.transfer", amount=101), capped))
    assert refused["reasons"][0]["detail"] == "argument 'amount' exceeds max 100"
    for decided in (allowed, refused):
        response = client.get(f"/v1/decisions/{decided['decision_id']}")
        assert response.status_code == 200
        assert "DE-SECRET" not in response.text
        assert "exceeds max" not in response.text
        record = response.json()["decision"]["record"]
        assert "request" not in record
        assert "subject" not in record
        assert record["decision_id"] == decided["decision_id"]
        assert record["outcome"] == decided["outcome"]
        assert record["reasons"] == [{"code": r["code"]} for r in decided["reasons"]]


@pytest.mark.parametrize(
    "odd", ["a%00b", "a%0Ab", "%F0%9F%98%80" * 40, "a" * 129, "%3Cscript%3E", "a%20b"]
)
def test_an_id_no_gateway_makes_is_not_found_without_a_lookup_or_an_echo(
    client: Client, odd: str
) -> None:
    """Ids are this gateway's UUIDs: anything but [A-Za-z0-9._~-]{1,128} is no such
    decision (or approval), refused before the store is asked, and not repeated back."""
    for response in (
        client.get(f"/v1/decisions/{odd}"),
        client.post(f"/v1/decisions/{odd}/outcome", json={"status": "failed"}),
    ):
        assert error_of(response, 404) == "decision.not_found"
        assert response.json()["error"]["message"] == "no such decision in this gateway's log"
    assert log_size(client) == 0


def test_public_audit_shows_the_whole_decision_record(kit: Kit, public: Client) -> None:
    decided = decide(public, kit.submit(kit.request("payments.transfer", amount=5, iban="X-1")))
    body = public.get(f"/v1/decisions/{decided['decision_id']}").json()
    assert body["view"] == "whole"
    assert body["decision"]["record"]["request"]["args"] == {"amount": 5, "iban": "X-1"}


def outcome_proof(kit: Kit, decision_id: str, report: dict[str, Any], **kw: Any) -> str:
    runtime = kw.pop("runtime", kit.runtime)
    return str(
        runtime.outcome_proof(
            kw.pop("decision_id", decision_id),
            status=report["status"],
            exit_code=report.get("exit_code"),
            result_digest=report.get("result_digest"),
            audience=kw.pop("audience", GATEWAY_ID),
            now=kw.pop("now", kit.clock.now),
        )
    )


def test_only_the_runtime_let_through_can_report_the_outcome(kit: Kit, client: Client) -> None:
    """Decision ids are public (the log, forward-auth answers): an outcome report must be
    signed by the key the decision bound, for that decision and that very report."""
    decision_id = decide(client, kit.submit())["decision_id"]
    other_id = decide(client, kit.submit())["decision_id"]
    url = f"/v1/decisions/{decision_id}/outcome"
    report = {"status": "failed", "exit_code": 1}
    someone = Runtime(kit.runtime.runtime_id, PrivateKey.generate())
    forged = {
        "identity.proof_missing": None,
        "identity.mismatch": outcome_proof(kit, decision_id, report, runtime=someone),
        "identity.proof_invalid": outcome_proof(kit, other_id, report),  # another decision
    }
    for code, proof in forged.items():
        headers = {} if proof is None else {"Execgate-Proof": proof}
        assert error_of(client.post(url, json=report, headers=headers), 403) == code
    for mismatch in (
        outcome_proof(kit, decision_id, {"status": "succeeded", "exit_code": 1}),  # another report
        outcome_proof(kit, decision_id, report, audience="gw-elsewhere"),
        outcome_proof(kit, decision_id, report, now=kit.clock.now - 3600),  # stale
        kit.submit()["proof"],  # a request proof is not an outcome proof
    ):
        headers = {"Execgate-Proof": mismatch}
        assert error_of(client.post(url, json=report, headers=headers), 403) == (
            "identity.proof_invalid"
        )
    assert log_size(client) == 2  # nothing was written for any of them
    signed = {"Execgate-Proof": outcome_proof(kit, decision_id, report)}
    assert client.post(url, json=report, headers=signed).status_code == 200


@pytest.mark.parametrize("kind", ["kid", "sub"])
@pytest.mark.parametrize("when", ["before", "in the commit"])
def test_a_revoked_runtime_or_runtime_key_reports_no_outcome(
    kit: Kit, client: Client, monkeypatch: pytest.MonkeyPatch, kind: str, when: str
) -> None:
    """A key revoked after a compromise signs no more reports: whoever stole it could
    otherwise write how earlier decisions ended into the log. A revocation that returns
    while the report is checked wins in the commit."""
    decided = decide(client, kit.submit())
    decision_id = decided["decision_id"]
    url = f"/v1/decisions/{decision_id}/outcome"
    report = {"status": "succeeded", "exit_code": 0}
    signed = {"Execgate-Proof": outcome_proof(kit, decision_id, report)}
    value = kit.runtime.key.public.thumbprint() if kind == "kid" else kit.runtime.runtime_id
    gateway: Gateway = client.app.state.gateway
    if when == "before":
        gateway.store.revoke(kind, value, reason="key stolen", now=NOW)
    else:
        commit = gateway.store.commit

        def revoked_first(job: WriteJob) -> int:
            if job.kind == "outcome":
                gateway.store.revoke(kind, value, reason="key stolen", now=NOW)
            return commit(job)

        monkeypatch.setattr(gateway.store, "commit", revoked_first)
    refused = client.post(url, json=report, headers=signed)
    assert error_of(refused, 403) == "artifact.revoked"
    document = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    document["/v1/decisions/{decision_id}/outcome"]["POST"].validate_response(refused)
    whose = "runtime key" if kind == "kid" else "runtime"
    assert refused.json()["error"]["message"] == (
        f"the {whose} decision {decision_id} bound is revoked: it reports no outcome"
    )
    assert log_size(client) == 1  # the decision; no outcome


def test_outcome_errors(kit: Kit, client: Client) -> None:
    denied = decide(client, kit.submit(kit.request("payments.refund", amount=1)))["decision_id"]
    proceeded = decide(client, kit.submit())["decision_id"]
    post = client.post
    assert error_of(post(f"/v1/decisions/{denied}/outcome", json={"status": "succeeded"}), 409) == (
        "outcome.conflict"
    )
    assert error_of(post("/v1/decisions/nope/outcome", json={"status": "succeeded"}), 404) == (
        "decision.not_found"
    )
    bads: list[object] = [{"status": "maybe"}, {"status": 1}, {}, [], {"status": "failed", "x": 1}]
    bads += [{"status": "failed", "exit_code": "1"}, {"status": "x", "result_digest": "md5"}]
    bads += [{"status": []}, {"status": {}}]
    # A bad report is a 400 whatever the decision: 409 says a good report came too late.
    for decision_id in (proceeded, denied):
        url = f"/v1/decisions/{decision_id}/outcome"
        for bad in bads:
            assert error_of(post(url, json=bad), 400) == "request.invalid", bad
    assert error_of(post(url, content=b"status=ok"), 415) == "request.unsupported_media_type"
    assert log_size(client) == 2


def test_unknown_and_absurd_decision_ids_are_404(client: Client) -> None:
    assert error_of(client.get("/v1/decisions/nope"), 404) == "decision.not_found"
    assert error_of(client.get("/v1/decisions/" + "x" * 500), 404) == "decision.not_found"


# -- audit --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/audit/checkpoint", "/v1/audit/proofs/0"])
def test_a_failing_clock_signs_no_checkpoint_and_answers_a_typed_503(
    kit: Kit, public: Client, route: str
) -> None:
    decide(public, kit.submit())
    kit.clock.t = float("nan")
    response = public.get(route)
    assert error_of(response, 503) == "audit.unavailable"
    message = response.json()["error"]["message"]
    assert "the gateway clock cannot be read (its reading is outside 1970..9999 (nan))" in message
    kit.clock.t = NOW
    assert public.get(route).status_code == 200


def test_checkpoint_entries_and_proofs(kit: Kit, public: Client) -> None:
    for _ in range(3):
        decide(public, kit.submit())
    checkpoint = public.get("/v1/audit/checkpoint").json()
    assert (checkpoint["origin"], checkpoint["size"]) == (GATEWAY_ID, 3)
    assert checkpoint["checkpoint"].startswith(f"{GATEWAY_ID}\n3\n")

    page = public.get("/v1/audit/entries", params={"start": 1, "end": 3}).json()
    assert (page["start"], page["end"], page["size"], page["next"]) == (1, 3, 3, None)
    assert [e["index"] for e in page["entries"]] == [1, 2]
    entry = base64.b64decode(page["entries"][0]["entry"])
    assert json.loads(entry) == page["entries"][0]["record"]

    proof = public.get("/v1/audit/proofs/1").json()
    assert proof["format"] == "c2sp-tlog-proof"
    gateway: Gateway = public.app.state.gateway
    verified = verify_tlog_proof(proof["evidence"], entry, gateway.audit.verifier)
    assert verified.size == 3
    assert error_of(public.get("/v1/audit/proofs/3"), 404) == "audit.index_not_found"


def test_the_checkpoint_size_is_the_size_its_note_signs(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log may grow between the signing and the answer (decisions of other
    callers): ``size`` is the signed note's, never the log's size read apart, which
    would pair the note with another tree (a false fork to whoever checks them)."""
    decide(public, kit.submit())
    gateway: Gateway = public.app.state.gateway
    signed = AuditLog.checkpoint
    grown: list[Decision] = []

    def signed_then_grown(log: AuditLog, *, now: int) -> str:
        note = signed(log, now=now)
        if not grown:
            grown.append(gateway.decide(kit.submit()))  # another caller's, meanwhile
        return note

    monkeypatch.setattr(AuditLog, "checkpoint", signed_then_grown)
    answer = public.get("/v1/audit/checkpoint").json()
    assert answer["checkpoint"].startswith(f"{GATEWAY_ID}\n1\n")
    assert answer["size"] == 1
    assert gateway.audit.size() == 2


def test_a_flood_of_checkpoint_calls_signs_one_a_second(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may ask for a checkpoint, and one of a grown log is signed, checked and
    stored: calls within ``CHECKPOINT_MAX_AGE`` of one signing, however many arrive at
    once, are answered with it, and nothing is written for them."""
    gateway: Gateway = public.app.state.gateway
    signed = AuditLog.checkpoint
    signings: list[int] = []

    def counted(log: AuditLog, *, now: int) -> str:
        signings.append(now)
        time.sleep(0.05)  # calls arriving meanwhile wait for this one
        return signed(log, now=now)

    monkeypatch.setattr(AuditLog, "checkpoint", counted)
    decide(public, kit.submit())
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: public.get("/v1/audit/checkpoint").json(), range(16)))
    assert {(a["size"], a["checkpoint"]) for a in answers} == {(1, answers[0]["checkpoint"])}
    decide(public, kit.submit())
    kit.clock.t += server_app.CHECKPOINT_MAX_AGE - 0.01
    assert public.get("/v1/audit/checkpoint").json() == answers[0]
    assert (len(signings), [size for size, _ in gateway.store.checkpoints()]) == (1, [1])

    kit.clock.t += 0.01
    assert public.get("/v1/audit/checkpoint").json()["size"] == 2
    decide(public, kit.submit())
    kit.clock.t -= 60  # a clock set back does not keep an answer longer
    assert public.get("/v1/audit/checkpoint").json()["size"] == 3
    assert [size for size, _ in gateway.store.checkpoints()] == [1, 2, 3]


def test_a_flood_of_proof_calls_for_new_entries_signs_one_checkpoint_a_second(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evidence for an entry no stored checkpoint covers is made against the checkpoint
    kept for ``/v1/audit/checkpoint``: anyone (``public_audit``) asking for the newest
    entries again and again gets a signature and a stored row a second, not one per
    call; an entry appended after the kept checkpoint is a 503 to ask again later."""
    gateway: Gateway = public.app.state.gateway
    signed = AuditLog.checkpoint
    signings: list[int] = []

    def counted(log: AuditLog, *, now: int) -> str:
        signings.append(now)
        return signed(log, now=now)

    monkeypatch.setattr(AuditLog, "checkpoint", counted)
    first = decide(public, kit.submit())
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: public.get("/v1/audit/proofs/0"), range(16)))
    assert {a.status_code for a in answers} == {200}
    assert len(signings) == 1
    [entry] = gateway.store.entries(0, 1)
    assert verify_tlog_proof(answers[0].json()["evidence"], entry.entry, gateway.audit.verifier)

    second = decide(public, kit.submit())
    assert (first["log_index"], second["log_index"]) == (0, 1)
    for _ in range(5):
        late = public.get("/v1/audit/proofs/1")
        assert error_of(late, 503) == "audit.not_checkpointed"
        assert late.headers["Retry-After"] == "1"
    assert public.get("/v1/audit/proofs/0").status_code == 200  # covered: still served
    assert (len(signings), [size for size, _ in gateway.store.checkpoints()]) == (1, [1])

    kit.clock.t += server_app.CHECKPOINT_MAX_AGE
    proof = public.get("/v1/audit/proofs/1")
    assert proof.status_code == 200
    [entry] = gateway.store.entries(1, 2)
    verified = verify_tlog_proof(proof.json()["evidence"], entry.entry, gateway.audit.verifier)
    assert verified.size == 2
    assert (len(signings), [size for size, _ in gateway.store.checkpoints()]) == (2, [1, 2])


def test_a_worker_never_answers_an_older_checkpoint_than_another_stored(kit: Kit) -> None:
    """Each worker keeps the checkpoint it signed for a second; a newer one another
    worker stored meanwhile is the answer over it, so a caller served by both in turn
    never sees the tree head go back (and could take that for a fork)."""
    with (
        Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as one,
        Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as two,
    ):
        decide(one, kit.submit())
        first = one.get("/v1/audit/checkpoint").json()
        decide(two, kit.submit())
        second = two.get("/v1/audit/checkpoint").json()
        again = one.get("/v1/audit/checkpoint").json()
    assert [a["size"] for a in (first, second, again)] == [1, 2, 2]
    assert again == second


def test_a_checkpoint_that_failed_is_not_kept(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed = AuditLog.checkpoint
    refusals = [SigningRefused("the log no longer extends checkpoint 9")]

    def refused_once(log: AuditLog, *, now: int) -> str:
        if refusals:
            raise refusals.pop()
        return signed(log, now=now)

    monkeypatch.setattr(AuditLog, "checkpoint", refused_once)
    decide(public, kit.submit())
    assert error_of(public.get("/v1/audit/checkpoint"), 503) == "audit.unavailable"
    assert public.get("/v1/audit/checkpoint").json()["size"] == 1


def test_a_tree_the_node_refuses_to_sign_is_a_503(kit: Kit, public: Client) -> None:
    for _ in range(3):
        decide(public, kit.submit())
    assert public.get("/v1/audit/checkpoint").status_code == 200
    gateway: Gateway = public.app.state.gateway
    fork_the_tree(kit, gateway)
    gateway.store.close()
    gateway.store = SQLiteStore(kit.config.store)  # a fresh view of the rewritten file
    assert decide(public, kit.submit())["outcome"] == "fail_closed"
    response = public.get("/v1/audit/checkpoint")
    assert error_of(response, 503) == "audit.unavailable"
    assert "not the 3 that were committed" in response.json()["error"]["message"]


def test_entries_pages_are_bounded(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_app, "MAX_PAGE", 2)
    for _ in range(3):
        decide(public, kit.submit())
    page = public.get("/v1/audit/entries").json()
    assert ([e["index"] for e in page["entries"]], page["next"]) == ([0, 1], 2)
    page = public.get("/v1/audit/entries", params={"start": 2, "end": 100}).json()
    assert ([e["index"] for e in page["entries"]], page["next"]) == ([2], None)
    page = public.get("/v1/audit/entries", params={"start": 10}).json()
    assert (page["entries"], page["next"], page["end"]) == ([], None, 10)


def test_a_large_decision_request_is_decided_like_any_other(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 64 KiB a body is parsed and decided in a worker thread (off the event loop);
    the answer and the record are the same."""

    async def not_on_the_loop(self: Gateway, submission: Any) -> Any:
        raise AssertionError("a large request must not be decided on the event loop")

    monkeypatch.setattr(Gateway, "decide_async", not_on_the_loop)
    big = kit.request("payments.transfer", amount=5, memo="m" * 100_000)
    decided = decide(public, kit.submit(big))
    assert decided["outcome"] == "proceed"
    record = public.get(f"/v1/decisions/{decided['decision_id']}").json()["decision"]["record"]
    assert record["request"]["args"]["memo"] == "m" * 100_000
    nested = b"[" * 40_000 + b"]" * 40_000  # 80 KB, too deep for the strict parser
    response = public.post(
        "/v1/decisions", content=nested, headers={"Content-Type": "application/json"}
    )
    assert error_of(response, 400) == "request.malformed_json"
    assert log_size(public) == 1


def test_entries_pages_are_bounded_in_bytes(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records can be large (a runtime's request holds up to 1 MiB of arguments): a page
    ends once it holds MAX_PAGE_BYTES of entries, never before its first."""
    for _ in range(3):
        decide(public, kit.submit())
    first = public.get("/v1/audit/entries").json()["entries"]
    sizes = [len(base64.b64decode(e["entry"])) for e in first]
    monkeypatch.setattr(server_app, "MAX_PAGE_BYTES", sizes[0] + sizes[1])
    page = public.get("/v1/audit/entries").json()
    assert ([e["index"] for e in page["entries"]], page["end"], page["next"]) == ([0, 1], 2, 2)
    monkeypatch.setattr(server_app, "MAX_PAGE_BYTES", 1)
    page = public.get("/v1/audit/entries", params={"start": 1}).json()
    assert ([e["index"] for e in page["entries"]], page["next"]) == ([1], 2)
    page = public.get("/v1/audit/entries", params={"start": 2}).json()
    assert ([e["index"] for e in page["entries"]], page["next"]) == ([2], None)


def test_a_page_of_entries_the_store_no_longer_has_is_a_503(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that says it has entries but returns none (a damaged file): a typed 503,
    not a page whose `next` is its own start (a client following it would spin)."""
    decide(public, kit.submit())
    store = public.app.state.gateway.store
    monkeypatch.setattr(store, "entries", lambda start, end: [])
    assert error_of(public.get("/v1/audit/entries"), 503) == "audit.unavailable"


def test_entries_are_read_a_few_at_a_time_up_to_the_byte_cap(
    kit: Kit, public: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(5):
        decide(public, kit.submit())
    listed = public.get("/v1/audit/entries").json()["entries"]
    sizes = [len(base64.b64decode(e["entry"])) for e in listed]
    monkeypatch.setattr(server_app, "_READ_AHEAD", 2)
    monkeypatch.setattr(server_app, "MAX_PAGE_BYTES", sum(sizes[:3]))
    page = public.get("/v1/audit/entries").json()
    assert ([e["index"] for e in page["entries"]], page["next"]) == ([0, 1, 2], 3)
    monkeypatch.setattr(server_app, "MAX_PAGE_BYTES", sum(sizes))
    page = public.get("/v1/audit/entries").json()
    assert ([e["index"] for e in page["entries"]], page["next"]) == ([0, 1, 2, 3, 4], None)


@pytest.mark.parametrize(
    # %C2%B2 is a superscript two, %D9%A3 an Arabic-Indic three: digits to str.isdigit
    "query",
    ["start=-1", "start=x", "end=1.5", "start=3&end=2", "start=%C2%B2", "end=%D9%A3"],
)
def test_bad_entry_queries_are_400(public: Client, query: str) -> None:
    assert error_of(public.get(f"/v1/audit/entries?{query}"), 400) == "request.invalid_query"


# -- health and the OpenAPI document ------------------------------------------------------


def test_healthz_and_readyz(client: Client, kit: Kit) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["gateway"] == GATEWAY_ID
    decide(client, kit.submit())
    size = client.get("/v1/audit/checkpoint").json()["size"]
    ready = client.get("/readyz").json()
    assert (ready["log_size"], ready["checkpoint_size"]) == (1, size) == (1, 1)


def test_the_served_app_freezes_its_startup_heap_an_embedded_one_does_not(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``execgate serve``'s app (``app_from_environment``) moves what startup made out
    of the garbage collector's reach once the gateway is open; ``create_app`` leaves the
    embedding process's collector alone."""
    gc.unfreeze()
    try:
        with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
            decide(client, kit.submit())
            assert gc.get_freeze_count() == 0
        monkeypatch.setenv("EXECGATE_HOME", str(kit.home))
        served = server_app.app_from_environment()
        assert gc.get_freeze_count() == 0  # not before the gateway opens
        with Client(served) as client:
            assert gc.get_freeze_count() > 10_000
            assert client.get("/readyz").status_code == 200
    finally:
        gc.unfreeze()


def test_readyz_says_which_policy_runs_and_is_503_when_the_pinned_one_cannot(
    kit: Kit, tmp_path: Path
) -> None:
    """A worker of a service takes the policy another worker pinned before answering the
    probe; one that cannot take it is not ready (its decisions fail closed meanwhile)."""
    pinned = tmp_path / "service" / "policy.yaml"
    pinned.parent.mkdir(mode=0o700)

    def opened() -> Gateway:
        return Gateway.open(kit.home, now=kit.clock, policy_in_force=pinned, new_service=True)

    with Client(create_app(open_gateway=opened, now=kit.clock)) as client:
        first = client.get("/readyz").json()["policy_hash"]
        assert first == kit.gateway().policy.hash
        edited = POLICY.replace("refunds are manual", "refunds are checked")
        pin_policy(pinned, edited)
        assert (
            client.get("/readyz").json()["policy_hash"]
            == parse_policy(edited, source="x", targets=kit.config.targets).hash
        )
        pin_policy(pinned, "version: 1\nrules: []\n")
        ready = client.get("/readyz")
        assert error_of(ready, 503) == "not_ready"
        assert str(pinned) not in ready.text
        assert decide(client, kit.submit())["outcome"] == "fail_closed"


def test_readyz_is_503_while_another_process_holds_the_writers_turn(
    kit: Kit, client: Client
) -> None:
    """A process stopped while writing holds the turn: every decision here would fail
    closed after 30 s. The probe says so within about a second, and is ready again once
    the turn is let go."""
    assert client.get("/readyz").status_code == 200
    fd = os.open(kit.home / "state.db-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        ready = client.get("/readyz")
        waited = time.monotonic() - started
    finally:
        os.close(fd)
    assert error_of(ready, 503) == "not_ready"
    assert "writers' turn" in ready.json()["error"]["message"]
    assert 0.9 <= waited < 10
    assert client.get("/readyz").status_code == 200
    assert decide(client, kit.submit())["outcome"] == "proceed"


def test_readyz_is_503_when_the_log_is_shorter_than_its_checkpoint(
    kit: Kit, client: Client
) -> None:
    """Entries removed behind the gateway's back (an intruder with the file, triggers
    dropped): the log no longer holds what the node signed."""
    for _ in range(3):
        decide(client, kit.submit())
    assert client.get("/v1/audit/checkpoint").json()["size"] == 3
    conn = sqlite3.connect(kit.config.store)
    try:
        conn.execute("DROP TRIGGER audit_log_no_delete")
        conn.execute("DELETE FROM audit_log WHERE idx = 2")
        conn.commit()
    finally:
        conn.close()
    ready = client.get("/readyz")
    assert error_of(ready, 503) == "not_ready"
    assert "holds 2 entries, fewer than its checkpoint of 3" in ready.json()["error"]["message"]


def test_readyz_is_503_before_the_gateway_opens(kit: Kit) -> None:
    with Client(create_app(open_gateway=kit.gateway), lifespan=False) as client:
        assert error_of(client.get("/readyz"), 503) == "not_ready"
        assert client.get("/healthz").status_code == 200


def test_openapi_describes_every_route_and_nothing_else(client: Client) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    routes = client.app.routes
    described = {
        (path, method.upper()) for path, ops in document["paths"].items() for method in ops
    }
    served = set()
    for route in routes:
        assert isinstance(route, Route)
        path = re.sub(r":\w+\}", "}", route.path)  # {index:convertor} is {index}
        served |= {(path, m) for m in route.methods or ()}
    assert described == served
    assert {m for _, m in served} >= {"GET", "HEAD", "POST"}
    for path, ops in document["paths"].items():
        for op in ops.values():
            assert "200" in op["responses"], path
            for parameter in op.get("parameters", []):
                named = "{" + parameter["name"] + "}" in path
                assert named or parameter["in"] in ("query", "header")


def test_a_worker_whose_supervisor_is_gone_does_not_start(kit: Kit) -> None:
    """A worker started by ``serve`` (``supervisor``: its pid) whose parent is another
    process by the time it starts refuses to start, before opening the gateway; with its
    parent still there it starts."""
    opened: list[Gateway] = []

    def opening() -> Gateway:
        opened.append(kit.gateway())
        return opened[-1]

    orphan = create_app(open_gateway=opening, now=kit.clock, supervisor=os.getpid())
    with pytest.raises(RuntimeError, match="no supervisor"):
        Client(orphan)
    assert opened == []
    adopted = create_app(open_gateway=opening, now=kit.clock, supervisor=os.getppid())
    with Client(adopted) as client:
        assert client.get("/readyz").status_code == 200
    assert len(opened) == 1
