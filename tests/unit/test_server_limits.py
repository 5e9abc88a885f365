"""The server-level limits of a real ``execgate serve`` (two worker processes, so the
protocol's options also cross into spawned workers): oversized headers (431), headers
and bodies that do not arrive in time (408), malformed HTTP (400): a typed body, the
connection closed, nothing decided, and the server keeps serving.

Raw sockets, because an HTTP client library would not send what these tests send.
"""

from __future__ import annotations

import asyncio
import errno
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_server_process
import uvicorn
from gatekit import Kit, make_kit
from test_server_process import START_TIMEOUT, Server, _decide, serve

from execgate.home import ServerConfig
from execgate.server import create_app
from execgate.server._limits import uvicorn_options
from execgate.server.metrics import GAUGE_MAX_AGE, REFUSALS_STATE, Metrics
from execgate.store.sqlite import SQLiteStore

READ_TIMEOUT = 20.0  # generous: a loaded machine must not fail the test


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    k.clock.t = time.time()  # the server reads the real clock
    config = k.home / "execgate.toml"
    text = config.read_text(encoding="utf-8")
    for old, new in (
        ("header_limit = 98304", "header_limit = 8192"),
        ("header_timeout = 10", "header_timeout = 1"),
        ("body_timeout = 30", "body_timeout = 1"),
    ):
        assert old in text
        text = text.replace(old, new)
    config.write_text(text, encoding="utf-8")
    yield k
    k.close()


@pytest.fixture
def server(kit: Kit) -> Iterator[Server]:
    with serve(kit, workers=2) as s:
        yield s


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT)
    sock.settimeout(READ_TIMEOUT)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    return status, headers, json.loads(body)


def _healthy(server: Server) -> None:
    response = httpx.get(server.url + "/healthz", timeout=10.0)
    assert response.status_code == 200


def _log_lines(server: Server) -> list[dict[str, Any]]:
    """The JSON log lines of the server (the CLI's own start-up note is plain text)."""
    text = server.stderr()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _nothing_decided(
    kit: Kit, server: Server, *, refused: str | None = None, status: int = 408
) -> None:
    """Stop the server; nothing was decided, and no request reached the app other than
    the health probes (and, when named, the ``refused`` route, answered ``status``)."""
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()
    seen = {
        (line["route"], line["status"])
        for line in _log_lines(server)
        if line["logger"] == "execgate.access"
    }
    allowed = {("/readyz", 200), ("/healthz", 200)}
    assert seen - allowed == ({(refused, status)} if refused else set())
    with closing(SQLiteStore(kit.config.store)) as store:
        assert store.size() == 0


def test_oversized_headers_are_refused_with_431(kit: Kit, server: Server) -> None:
    pad = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    request = b"POST /v1/decisions HTTP/1.1\r\nHost: gw\r\n" + pad * 100  # ~100 KB
    with closing(_connect(server)) as sock:
        with suppress(BrokenPipeError, ConnectionResetError):  # refused part-way through
            sock.sendall(request)
        status, headers, body = _parse(_read_all(sock))
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert body["error"]["code"] == headers["execgate-reason"] == "request.headers_too_large"
    _healthy(server)
    _nothing_decided(kit, server)


def test_a_large_body_in_the_same_packet_is_not_counted_as_headers(
    kit: Kit, server: Server
) -> None:
    """Only the bytes up to the blank line count against header_limit (8 KiB here)."""
    body = json.dumps({"request": {}, "pad": "x" * 100_000}).encode()
    head = (
        b"POST /v1/decisions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with closing(_connect(server)) as sock:
        sock.sendall(head + body)
        status, _, error = _parse(_read_all(sock))
    assert status == 400  # the app read it, and refused the submission
    assert error["error"]["code"] == "request.invalid"


def test_one_huge_header_line_is_refused_before_it_ends(kit: Kit, server: Server) -> None:
    """A single header that never ends: counted as it arrives, not when it is parsed."""
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Long: " + b"b" * 20_000)
        status, _, body = _parse(_read_all(sock))
    assert status == 431
    assert body["error"]["code"] == "request.headers_too_large"
    _healthy(server)
    _nothing_decided(kit, server)


@pytest.mark.parametrize("pieces", [1, 2], ids=["one-chunk", "two-byte-chunks"])
@pytest.mark.parametrize("with_head", [True, False], ids=["body-with-head", "head-first"])
def test_a_trailer_that_never_ends_is_refused_before_it_ends(
    kit: Kit, server: Server, pieces: int, with_head: bool
) -> None:
    """A chunked body's trailer fields count against header_limit (8 KiB here) as they
    arrive: one endless trailer would otherwise grow in the parser while the app waits
    for the body. Neither tiny chunks nor body bytes read with the head buy it room."""
    body = json.dumps(kit.submit()).encode()
    head = (
        b"POST /v1/decisions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    size = len(body) if pieces == 1 else pieces
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(c), c)
        for c in (body[i : i + size] for i in range(0, len(body), size))
    )
    trailer = 0
    with closing(_connect(server)) as sock:
        if not with_head:
            sock.sendall(head)
            time.sleep(0.2)  # the head parsed on its own
        sock.sendall((head if with_head else b"") + chunks + b"0\r\nX-Trailer: ")
        with suppress(BrokenPipeError, ConnectionResetError):  # refused part-way through
            while trailer < 1 << 20 and not select.select([sock], [], [], 0.05)[0]:
                sock.sendall(b"t" * 1024)  # the field never ends
                trailer += 1024
        status, headers, error = _parse(_read_all(sock))
    # Answered once about 8 KiB of trailer was in (the rest: what was sent while the
    # answer was on its way, 1 KiB per 50 ms)
    assert trailer <= 2 * 8192
    assert status == 431
    assert headers["connection"] == "close"
    assert error["error"]["code"] == "request.headers_too_large"
    assert "trailer" in error["error"]["message"]
    _healthy(server)
    # The app's read of the body ended as if the client had gone (its answer is dropped).
    _nothing_decided(kit, server, refused="/v1/decisions", status=400)


def test_many_small_chunks_and_a_short_trailer_are_decided(kit: Kit, server: Server) -> None:
    """Chunk size lines are framing, not trailers: a body sent a few bytes at a time
    (more framing than header_limit in all) with a short trailer is decided as usual."""
    body = json.dumps(kit.submit()).encode() + b" " * 4096  # JSON may end in blanks
    pieces = [body[i : i + 1] for i in range(len(body))]
    assert 5 * len(pieces) > 2 * 8192  # "1\r\n" and "\r\n" a byte: twice header_limit
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    head = (
        b"POST /v1/decisions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with closing(_connect(server)) as sock:
        sock.sendall(head + chunked + b"0\r\nX-Trailer: fine\r\n\r\n")
        status, _, decision = _parse(_read_all(sock))
    assert (status, decision["outcome"]) == (200, "proceed")


def test_headers_that_stall_get_408(kit: Kit, server: Server) -> None:
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Half: abc")  # and stall
        status, headers, body = _parse(_read_all(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert body["error"]["code"] == headers["execgate-reason"] == "request.timeout"
    _healthy(server)
    _nothing_decided(kit, server)


def test_a_stalled_second_request_on_a_kept_alive_connection_gets_408(
    kit: Kit, server: Server
) -> None:
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = b""
        while b'"alive"' not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and stall
        status, _, body = _parse(_read_all(sock))
    assert status == 408
    assert body["error"]["code"] == "request.timeout"
    _nothing_decided(kit, server)


def test_a_partial_request_pipelined_behind_an_answer_gets_408(kit: Kit, server: Server) -> None:
    """Read with the request before it, so nothing more arrives after that one's answer:
    it gets its 408 too (uvicorn's keep-alive timer, set for the same time, closed the
    connection first, without a word)."""
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        raw = _read_all(sock)  # and stall
    [(first, alive), (status, body)] = _answers(raw, ["GET", "GET"])
    assert (first, alive) == (200, b'{"status":"alive"}')
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request.timeout"
    _nothing_decided(kit, server)


@pytest.mark.parametrize("after", [b"", b"\r\n"], ids=["nothing", "a-blank-line"])
def test_an_idle_kept_alive_connection_is_closed_without_an_answer(
    server: Server, after: bytes
) -> None:
    """Nothing asked, nothing answered: also after a blank line, which some clients send
    after a request (and llhttp skips), however many bytes it counts for."""
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n" + after)
        raw = _read_all(sock)  # and send nothing more
    [(status, alive)] = _answers(raw, ["GET"])
    assert (status, alive) == (200, b'{"status":"alive"}')


def test_a_connection_that_sends_nothing_is_closed(kit: Kit, server: Server) -> None:
    with closing(_connect(server)) as sock:
        assert _read_all(sock) == b""  # closed by the server, with nothing to answer
    _healthy(server)


def test_a_body_that_stalls_gets_408_and_nothing_is_decided(kit: Kit, server: Server) -> None:
    body = json.dumps(kit.submit()).encode()
    head = (
        b"POST /v1/decisions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with closing(_connect(server)) as sock:
        sock.sendall(head + body[: len(body) // 2])  # and stall
        status, headers, error = _parse(_read_all(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert error["error"]["code"] == "request.timeout"
    _healthy(server)
    _nothing_decided(kit, server, refused="/v1/decisions")


def test_a_forward_auth_body_that_stalls_is_refused_and_the_connection_closed(
    kit: Kit, server: Server
) -> None:
    """Forward-auth refuses (403, so a proxy denies) with the reason, and closes the
    connection, whose body may still be on its way, as every other route does."""
    head = b"POST /v1/forward-auth/reports/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n"
    with closing(_connect(server)) as sock:
        sock.sendall(head + b"{")  # and stall
        status, headers, error = _parse(_read_all(sock))
    assert status == 403
    assert headers["execgate-reason"] == "request.timeout"
    assert headers["connection"] == "close"
    assert error["error"]["code"] == "request.timeout"
    _healthy(server)
    _nothing_decided(kit, server, refused="/v1/forward-auth/{path:path}", status=403)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000000\r\n\r\n",
        b"POST /v1/decisions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n",
        # The same behind another request: the one answered then is the queued one.
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000000\r\n\r\n",
    ],
    ids=["get", "post", "pipelined"],
)
def test_a_body_trickling_after_the_answer_cannot_hold_the_connection(
    server: Server, head: bytes
) -> None:
    """Answered before its body arrived (a route that reads none, an early 413): the
    connection closes soon, however slowly the client keeps sending."""
    with closing(_connect(server)) as sock:
        sock.sendall(head)
        first = sock.recv(65536)
        assert first.startswith((b"HTTP/1.1 200", b"HTTP/1.1 413"))
        assert _closed_while_trickling(sock, within=8.0)  # header_timeout 1 s + 2 s linger
    _healthy(server)


def _closed_while_trickling(sock: socket.socket, *, within: float) -> bool:
    """Send a byte every 0.3 s until the server closes the connection (True) or
    ``within`` seconds pass (False)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        time.sleep(0.3)
        try:
            sock.sendall(b"a")
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def _pipelined_past_the_buffers(sock: socket.socket, server: Server, *, last: bytes) -> int:
    """Send enough pipelined requests for the OpenAPI document that their answers
    overflow the kernel's largest send buffer (so the server's transport must wait for
    the client), the last one with ``last`` headers; returns the answers' size."""
    size = len(httpx.get(f"http://127.0.0.1:{server.port}/openapi.json").content)
    most = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    count = (most + (1 << 20)) // size + 1
    request = b"GET /openapi.json HTTP/1.1\r\nHost: gw\r\n"
    sock.sendall((request + b"\r\n") * (count - 1) + request + last + b"\r\n")
    return count * size


def _slow_reader(server: Server) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    return sock


@pytest.mark.parametrize("last", [b"", b"Connection: close\r\n"])
def test_a_client_that_takes_no_answers_is_dropped(server: Server, last: bytes) -> None:
    """Requests pipelined, and no answer ever read: once the client has taken nothing for
    body_timeout (1 s here), the server resets the connection, instead of holding it,
    and megabytes of buffers, as long as the client likes (each such client takes a
    slot of the connection limit). The same with a last request that asks to close.
    (Not reproduced here: the transport already closing, when the last answer itself
    filled the buffers; the timer no longer skips that case.)"""
    with closing(_slow_reader(server)) as sock:
        _pipelined_past_the_buffers(sock, server, last=last)
        deadline = time.monotonic() + READ_TIMEOUT
        dropped = 0
        while not dropped and time.monotonic() < deadline:
            time.sleep(0.2)  # reading nothing
            dropped = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert dropped == errno.ECONNRESET  # reset: what was buffered for it was discarded
    _healthy(server)


def test_a_client_that_reads_slowly_is_not_dropped(server: Server) -> None:
    """A client that keeps taking its answers, if more slowly than they are written (the
    server's buffers stay full for far longer than body_timeout), gets all of them."""
    with closing(_slow_reader(server)) as sock:
        expected = _pipelined_past_the_buffers(sock, server, last=b"")
        read = 0
        while read < expected:  # about 800 KB/s: the buffers drain for seconds
            chunk = sock.recv(8192)
            assert chunk, f"closed after {read} of {expected} bytes"
            read += len(chunk)
            time.sleep(0.01)
    _healthy(server)


def _answers(raw: bytes, methods: list[str]) -> list[tuple[int, bytes]]:
    """Each answer's status and body, in order, from the bytes of a kept-alive
    connection, for requests of ``methods`` (Content-Length framed; an interim 100 and
    an answer to HEAD have no body)."""
    found = []
    pending = list(methods)
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if status != 100 and pending.pop(0) == "HEAD":
            length = 0
        found.append((status, raw[:length]))
        raw = raw[length:]
    return found


def test_answers_to_pipelined_requests_and_a_head_arrive_whole_and_in_order(
    server: Server,
) -> None:
    """An answer's head is held for its body (see _limits._OneSend): pipelined requests
    still get their answers whole and in order, and a HEAD answer, which has no body to
    go with, still gets its head."""
    requests = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with closing(_connect(server)) as sock:
        sock.sendall(requests)
        raw = _read_all(sock)
    answers = _answers(raw, ["GET", "HEAD", "GET", "GET"])
    assert [status for status, _ in answers] == [200, 200, 404, 200], raw[:400]
    bodies = [body for _, body in answers]
    assert bodies[0] == bodies[3] == b'{"status":"alive"}'
    assert bodies[1] == b""
    assert json.loads(bodies[2])["error"]["code"] == "route.not_found"
    with closing(_connect(server)) as sock:  # the HEAD answer alone: its head is sent
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, head
            head += chunk
    assert head.startswith(b"HTTP/1.1 200 ")


def test_a_body_still_arriving_behind_an_answered_request_is_read(kit: Kit, server: Server) -> None:
    """A request queued behind another whose body is still on its way when the first is
    answered is served, not dropped as if the answered request's body were unfinished."""
    body = json.dumps(kit.submit()).encode()
    with closing(_connect(server)) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /v1/decisions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        first = b""
        while b'{"status":"alive"}' not in first:
            chunk = sock.recv(65536)
            assert chunk, first
            first += chunk
        sock.sendall(body[10:])
        raw = first + _read_all(sock)
    [(alive, _), (status, decided)] = _answers(raw, ["GET", "POST"])
    assert (alive, status) == (200, 200), raw[-300:]
    assert json.loads(decided)["outcome"] == "proceed"
    assert "Exception in ASGI application" not in server.stderr()


def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
    kit: Kit, server: Server
) -> None:
    body = json.dumps(kit.submit()).encode()
    with closing(_connect(server)) as sock:
        sock.sendall(
            b"POST /v1/decisions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = sock.recv(65536)  # nothing else is sent until this arrives
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(body)
        raw = interim + _read_all(sock)
    [(continued, _), (status, decided)] = _answers(raw, ["POST"])
    assert (continued, status) == (100, 200)
    assert json.loads(decided)["outcome"] == "proceed"


def test_malformed_http_gets_a_typed_400(kit: Kit, server: Server) -> None:
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nBad Header\x00: x\r\n\r\n")
        status, headers, body = _parse(_read_all(sock))
    assert status == 400
    assert body["error"]["code"] == headers["execgate-reason"] == "request.malformed"
    _healthy(server)
    _nothing_decided(kit, server)


def test_a_request_target_with_a_fragment_is_malformed(kit: Kit, server: Server) -> None:
    """uvicorn drops a fragment from the target without a word, so this call was decided
    as ``/api/x``. A request target holds no fragment (RFC 9112 §3.2)."""
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /v1/forward-auth/api/x#/../../admin HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, headers, body = _parse(_read_all(sock))
    assert status == 400
    assert body["error"]["code"] == headers["execgate-reason"] == "request.malformed"
    assert "fragment" in body["error"]["message"]
    _healthy(server)
    _nothing_decided(kit, server)


def test_a_decision_still_works_within_the_limits(kit: Kit, server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10.0) as client:  # one connection
        decision = client.post("/v1/decisions", json=kit.submit()).json()
        assert decision["outcome"] == "proceed"
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'execgate_decisions_total{outcome="proceed",reason="none"} 1.0' in metrics.text
    assert server.stop() == 0
    access = [line for line in _log_lines(server) if line["logger"] == "execgate.access"]
    # The start-up probe first: on a busy machine one may time out and be asked again.
    probes = [(a["route"], a["status"]) for a in access if a["route"] == "/readyz"]
    assert probes
    assert set(probes) == {("/readyz", 200)}
    access = access[len(probes) :]
    assert [(a["route"], a["status"]) for a in access] == [
        ("/v1/decisions", 200),
        ("/metrics", 200),
    ]
    assert access[0]["decision_id"] == decision["decision_id"]


# ``execgate serve`` as the CLI runs it: inside ``multiprocess_dir()``, so the workers'
# counters are summed at every scrape.
_WITH_SHARED_METRICS = (
    "import sys\n"
    "from execgate.cli import main\n"
    "from execgate.server.metrics import multiprocess_dir\n"
    "with multiprocess_dir():\n"
    "    code = main(sys.argv[1:])\n"
    "sys.exit(code)\n"
)


def test_metrics_add_up_across_two_workers(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """``execgate serve --workers 2`` inside ``multiprocess_dir()``: whichever worker
    answers /metrics counts the decisions of both."""
    monkeypatch.setattr(
        test_server_process, "_EXECGATE", (sys.executable, "-c", _WITH_SHARED_METRICS)
    )
    with serve(kit, workers=2) as server:
        decided = 0
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        # New connections until both workers have decided (the kernel picks who accepts).
        with ThreadPoolExecutor(max_workers=4) as pool:
            while len(pids) < 2 and time.monotonic() < deadline:
                batch = [kit.submit() for _ in range(8)]
                answers = list(pool.map(_decide, [server.url] * 8, batch))
                assert all(a["outcome"] == "proceed" for a in answers)
                decided += len(answers)
                pids = {line["pid"] for line in _log_lines(server) if "decision_id" in line}
        assert len(pids) == 2, "the two workers never both decided"
        counted = f'execgate_decisions_total{{outcome="proceed",reason="none"}} {decided}.0'
        # A worker writes its counts at the end of the loop turn that made them (a
        # moment after answering); the other may answer the first scrape before that.
        deadline = time.monotonic() + 10
        while counted not in httpx.get(server.url + "/metrics", timeout=10.0).text:
            assert time.monotonic() < deadline, "the counts never reached /metrics"
            time.sleep(0.05)
        time.sleep(GAUGE_MAX_AGE)  # what either worker rendered before is not served now
        for _ in range(6):  # fresh connections: several scrapes, either worker
            text = httpx.get(server.url + "/metrics", timeout=10.0).text
            assert counted in text
            assert f"execgate_audit_log_entries {decided}.0" in text
        assert server.stop() == 0


def test_refusals_below_the_app_are_counted(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """431, 400 and 408 never reach a route, so the access log's request counts miss
    them: each is counted by code in execgate_http_refused_total, whichever worker
    refused it and whichever answers the scrape."""
    monkeypatch.setattr(
        test_server_process, "_EXECGATE", (sys.executable, "-c", _WITH_SHARED_METRICS)
    )
    pad = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    sent = {
        "request.headers_too_large": b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + pad * 20,
        "request.malformed": b"GET /healthz HTTP/1.1\r\nBad Header\x00: x\r\n\r\n",
        "request.timeout": b"GET /healthz HTTP/1.1\r\nHost: gw\r\n",  # never ends
    }
    with serve(kit, workers=2) as server:
        for code, request in sent.items():
            with closing(_connect(server)) as sock:
                with suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(request)
                _, _, body = _parse(_read_all(sock))
            assert body["error"]["code"] == code
        for _ in range(4):  # fresh connections: either worker answers
            text = httpx.get(server.url + "/metrics", timeout=10.0).text
            for code in sent:
                assert f'execgate_http_refused_total{{code="{code}"}} 1.0' in text
            assert 'execgate_http_refused_total{code="server.overloaded"}' not in text
        assert server.stop() == 0


@contextmanager
def _in_thread(app: Any, limits: ServerConfig | None = None, **options: Any) -> Iterator[int]:
    """A real uvicorn server for ``app`` in a thread, with the limits' protocol (for
    ``limits``, the defaults when not given); yields its port."""
    config_options = {**uvicorn_options(limits or ServerConfig()), "log_config": None, **options}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        running = uvicorn.Server(uvicorn.Config(app, **config_options))
        thread = threading.Thread(target=running.run, kwargs={"sockets": [listener]})
        thread.start()
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not running.started and time.monotonic() < deadline:
                time.sleep(0.02)
            assert running.started
            yield port
        finally:
            running.should_exit = True
            thread.join(timeout=15)


def _ask_socket(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _ask(port: int, request: bytes) -> tuple[int, dict[str, str], Any]:
    with closing(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
        sock.sendall(request)
        return _parse(_read_all(sock))


def test_the_default_header_limit_holds_every_evidence_header_at_its_longest(
    kit: Kit,
) -> None:
    """Artifact and attestation 16 KiB, proof 8 KiB, parent receipt 16 KiB, runtime 1 KiB,
    and both families' method and URI headers at their longest (docs/forward-auth.md):
    under the default header_limit together, with room left for the proxy's own."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    sizes = {"Authorization": 16 * 1024, "Execgate-Attestation": 16 * 1024}
    sizes |= {"Execgate-Proof": 8 * 1024, "Execgate-Parent": 16 * 1024, "Execgate-Runtime": 1024}
    sizes |= {"X-Original-Method": 64, "X-Original-URI": 8192}
    sizes |= {"X-Forwarded-Method": 64, "X-Forwarded-Uri": 8192}
    head = b"GET /v1/forward-auth HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n" + b"".join(
        name.encode() + b": " + b"a" * size + b"\r\n" for name, size in sizes.items()
    )
    assert len(head) > 73 * 1024
    assert ServerConfig().header_limit - len(head) > 16 * 1024  # the proxy's own headers
    with _in_thread(app) as port, closing(_ask_socket(port)) as sock:  # the defaults
        sock.sendall(head + b"\r\n")
        raw = _read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]


def test_a_refusal_behind_an_answer_in_the_making_waits_for_it(kit: Kit) -> None:
    """A request refused while the one before it is still being answered (its trailer too
    large, here) does not answer in that one's place: the answer in the making is sent
    whole, then the connection is closed."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            listening = asyncio.ensure_future(receive())  # as a streaming answer does
            await asyncio.sleep(0.5)
            listening.cancel()
        body = b"answered " + scope["path"].encode()
        length = str(len(body)).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        await send({"type": "http.response.body", "body": body})

    with _in_thread(app, ServerConfig(header_limit=8192)) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        with closing(sock):
            sock.sendall(
                b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /next HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n"
            )
            time.sleep(0.2)
            sock.sendall(b"X-Trailer: " + b"a" * 9000)
            raw = _read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert raw.endswith(b"answered /slow"), raw[-200:]
    assert raw.count(b"HTTP/1.1 ") == 1


def test_over_the_concurrency_limit_is_a_typed_503(kit: Kit) -> None:
    """The protocol's own overload answer (uvicorn's is plain text), on a real uvicorn
    server in a thread with a limit of one: the connection asking is already one."""
    app = create_app(open_gateway=kit.gateway, server=ServerConfig())
    with _in_thread(app, lifespan="off", limit_concurrency=1) as port:
        status, headers, body = _ask(port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 503
    assert headers["connection"] == "close"
    assert body["error"]["code"] == headers["execgate-reason"] == "server.overloaded"


def test_a_refusal_is_answered_even_when_counting_it_fails(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[str] = []

    def broken(self: Metrics, code: str) -> None:
        counted.append(code)
        raise RuntimeError("the metrics are broken")

    monkeypatch.setattr(Metrics, "refusal", broken)
    app = create_app(open_gateway=kit.gateway, server=ServerConfig())
    with _in_thread(app, lifespan="on") as port:
        status, _, body = _ask(port, b"GET /healthz HTTP/1.1\r\nBad Header\x00: x\r\n\r\n")
        after, _, _ = _ask(port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert counted == ["request.malformed"]  # the lifespan handed the counter over
    assert status == 400
    assert body["error"]["code"] == "request.malformed"
    assert after == 200


def _echo(refused: list[str]) -> Any:
    """An ASGI app that reads each request's body whole, then answers in JSON with its
    path, its body's size and the header names its scope holds. Its lifespan hands the
    protocol ``refused.append`` as the refusal count, as the gateway's app hands its
    metrics."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            scope["state"][REFUSALS_STATE] = refused.append
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        names = [name.decode("latin-1") for name, _ in scope["headers"]]
        body = json.dumps({"path": scope["path"], "size": size, "headers": names}).encode()
        length = str(len(body)).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        await send({"type": "http.response.body", "body": body})

    return app


def _open(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)


@pytest.mark.parametrize("pause", [False, True], ids=["with-the-head", "after-a-pause"])
def test_trailer_fields_never_become_headers(pause: bool) -> None:
    """uvicorn adds each parsed field to the request's headers, the list the app's scope
    holds, trailer fields too: a trailer read with the head would be read as a header (an
    ``X-Original-Method`` naming a forward-auth call) and one read after it would not,
    depending on how the packets fell. Trailer fields are counted, then dropped."""
    head = (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"\r\n3\r\nabc\r\n"
    )
    end = b"0\r\nX-Original-Method: GET\r\nX-Original-URI: /api/x\r\n\r\n"
    with _in_thread(_echo([])) as port, closing(_open(port)) as sock:
        if pause:
            sock.sendall(head)
            time.sleep(0.2)  # the head and the chunk read before the trailers
            sock.sendall(end)
        else:
            sock.sendall(head + end)
        status, _, seen = _parse(_read_all(sock))
    assert status == 200
    assert seen == {"path": "/x", "size": 3, "headers": ["host", "transfer-encoding", "connection"]}


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",  # not a chunk size
        b"Transfer-Encoding: identity\r\n\r\nhello",  # a coding a request may not have
    ],
    ids=["bad-chunk-size", "identity"],
)
def test_a_body_the_parser_refuses_is_answered_400_at_once(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, framing: bytes
) -> None:
    """Refused by the parser once the head was complete, so once the app was waiting for
    the body: the typed 400 is the answer, at once, not the app's after its body_timeout
    (10 s here), and the refusal is counted once."""
    counted: list[str] = []
    monkeypatch.setattr(Metrics, "refusal", lambda self, code: counted.append(code))
    limits = ServerConfig(body_timeout=10)
    app = create_app(open_gateway=kit.gateway, server=limits)
    with _in_thread(app, limits, lifespan="on") as port:
        started = time.monotonic()
        status, headers, body = _ask(
            port, b"POST /v1/forward-auth/api/x HTTP/1.1\r\nHost: gw\r\n" + framing
        )
        answered = time.monotonic() - started
    assert answered < 5
    assert status == 400
    assert headers["connection"] == "close"
    assert body["error"]["code"] == headers["execgate-reason"] == "request.malformed"
    assert counted == ["request.malformed"]
    assert kit.records() == []  # nothing decided


def _refused_at_once(port: int, request: bytes) -> tuple[int, dict[str, str], Any]:
    """Send ``request`` (an oversized head); the answer, asserted to come well before
    header_timeout (10 s in these tests)."""
    started = time.monotonic()
    with closing(_open(port)) as sock:
        with suppress(BrokenPipeError, ConnectionResetError):  # refused part-way through
            sock.sendall(request)
        answer = _parse(_read_all(sock))
    assert time.monotonic() - started < 5
    return answer


def test_blank_lines_before_a_request_line_count_and_do_not_end_its_head() -> None:
    """llhttp skips empty lines before a request line. They count against header_limit,
    and the head's end is looked for only after them: a blank line there ended the head
    as counted, and all that followed was held until header_timeout."""
    refused: list[str] = []
    limits = ServerConfig(header_limit=8192, header_timeout=10)
    with _in_thread(_echo(refused), limits) as port:
        status, headers, body = _refused_at_once(
            port, b"\r\n\r\nGET /x HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 130_000
        )
        _, _, seen = _ask(port, b"\r\n\r\nGET /y HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert status == 431
    assert headers["connection"] == "close"
    assert body["error"]["code"] == headers["execgate-reason"] == "request.headers_too_large"
    assert refused == ["request.headers_too_large"]
    assert seen["path"] == "/y"  # blank lines before a request line are still allowed


_FIRST = {
    "get": b"GET /first HTTP/1.1\r\nHost: gw\r\n\r\n",
    "content-length": b"POST /first HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"POST /first HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
}


@pytest.mark.parametrize("first", list(_FIRST))
def test_a_head_read_with_the_request_before_it_counts_from_its_first_byte(first: str) -> None:
    """The bytes of a request read together with the end of the one before it count
    against header_limit: an endless header there was held until header_timeout (10 s
    here), then the connection closed without a word. The request before it is answered;
    the oversized one is refused, once that answer is sent (a 431 of its own only if
    that answer had already gone)."""
    refused: list[str] = []
    limits = ServerConfig(header_limit=8192, header_timeout=10)
    with _in_thread(_echo(refused), limits) as port:
        started = time.monotonic()
        with closing(_open(port)) as sock:
            with suppress(BrokenPipeError, ConnectionResetError):  # refused part-way through
                sock.sendall(
                    _FIRST[first] + b"GET /big HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 100_000
                )
            raw = _read_all(sock)
        closed = time.monotonic() - started
    [(status, body), *rest] = _answers(raw, ["GET"] * raw.count(b"HTTP/1.1 "))
    assert (status, json.loads(body)["path"]) == (200, "/first")
    assert [(s, json.loads(b)["error"]["code"]) for s, b in rest] in (
        [],
        [(431, "request.headers_too_large")],
    )
    assert closed < 5
    assert refused == ["request.headers_too_large"]


@pytest.mark.parametrize("first", list(_FIRST))
def test_requests_pipelined_in_one_write_are_each_counted_on_their_own(first: str) -> None:
    """Requests pipelined in one write, the last one's head cut short and finished in a
    second write: each is answered, in order. Each head counts on its own: behind a GET
    or a Content-Length body, twelve of 1 KiB (past header_limit together, and read
    together with the first part of the last); behind a chunked body, the heads read
    with its end may count together (see _limits), so there are two small ones."""
    chunked = first == "chunked"
    pad = b"" if chunked else b"X-Pad: " + b"p" * 1024 + b"\r\n"
    behind = 2 if chunked else 12
    requests = _FIRST[first] + b"".join(
        b"GET /%d HTTP/1.1\r\nHost: gw\r\n%s\r\n" % (i, pad) for i in range(behind)
    )
    with (
        _in_thread(_echo([]), ServerConfig(header_limit=8192)) as port,
        closing(_open(port)) as sock,
    ):
        sock.sendall(requests + b"GET /last HTTP/1.1\r\nHo")
        time.sleep(0.2)  # read before the rest of the last head
        sock.sendall(b"st: gw\r\nConnection: close\r\n\r\n")
        raw = _read_all(sock)
    answers = _answers(raw, ["GET"] * (behind + 2))
    assert [status for status, _ in answers] == [200] * (behind + 2), raw[-300:]
    seen = [json.loads(body) for _, body in answers]
    assert [s["path"] for s in seen] == ["/first", *(f"/{i}" for i in range(behind)), "/last"]
    assert seen[0]["size"] == (0 if first == "get" else 5)
    framing = {"get": [], "content-length": ["content-length"], "chunked": ["transfer-encoding"]}
    assert seen[0]["headers"] == ["host", *framing[first]]


def test_a_head_uvicorn_refuses_behind_an_answer_in_flight_never_takes_its_place() -> None:
    """uvicorn refuses a target llhttp took (an absolute form without a path): the
    request refused is that one; the one before it, still being answered, is answered."""
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"answered /slow"})

    with _in_thread(app) as port, closing(_open(port)) as sock:
        sock.sendall(
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET http://h HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        raw = _read_all(sock)
    assert calls == ["/slow"]
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert b"answered /slow" in raw
    assert raw.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize(
    "behind",
    [
        b"GET /b HTTP/1.1\r\nHost: x\r\nX:" + b" " * 100_000 + b"v\r\n\r\n",
        b"GET" + b" " * 100_000 + b"/b HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["blank-value", "blank-request-line"],
)
def test_a_head_parsed_whole_behind_a_chunked_body_counts_what_the_parser_skips(
    behind: bytes,
) -> None:
    """Blanks llhttp skips without a word (before a value, between the request line's
    parts) are bytes of a head all the same: read with the end of a chunked body, such a
    head over the limit is refused, as it is alone."""
    refused: list[str] = []
    chunked = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    limits = ServerConfig(header_limit=8192)
    with _in_thread(_echo(refused), limits) as port, closing(_open(port)) as sock:
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(chunked + behind)
        raw = _read_all(sock)
    assert b'"path": "/b"' not in raw
    assert refused == ["request.headers_too_large"]


@pytest.mark.parametrize(
    "head",
    [
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\n"
        b"Content-Length: 5\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\n"
        b"Transfer-Encoding: chunked\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n",
    ],
    ids=["content-length", "chunked", "connect"],
)
def test_an_upgrade_with_a_body_is_refused(head: bytes) -> None:
    """llhttp skips an upgrade's body: the app would read none, and bytes after it could
    be read as another request. Refused, nothing served."""
    refused: list[str] = []
    with _in_thread(_echo(refused)) as port, closing(_open(port)) as sock:
        sock.sendall(head + b"\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, error = _parse(_read_all(sock))
    assert (status, error["error"]["code"]) == (400, "request.malformed")
    assert refused == ["request.malformed"]


def test_an_upgrade_without_a_body_is_served_and_the_connection_ends() -> None:
    """Upgrades are not served (no WebSocket routes): the request is answered as plain
    HTTP, then the connection closes; what followed it is never read as a request."""
    refused: list[str] = []
    with _in_thread(_echo(refused)) as port, closing(_open(port)) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
        time.sleep(0.2)  # in a read of its own, after the upgrade was parsed
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"/smuggled" not in raw
    assert raw.count(b"HTTP/1.1 ") == 1


def test_a_content_length_with_thousands_of_leading_zeros_is_read_as_llhttp_reads_it() -> None:
    """llhttp takes it; Python's int() refuses a string of over 4,300 digits."""
    with _in_thread(_echo([])) as port, closing(_open(port)) as sock:
        sock.sendall(
            b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
            + b"0" * 4400
            + b"5\r\n\r\nhello"
        )
        status, _, seen = _parse(_read_all(sock))
    assert (status, seen["size"]) == (200, 5)
