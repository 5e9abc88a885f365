"""``_limits._OneSend``: what reaches the socket, and when. The real server's tests
(test_server_limits) show the answers stay whole and in order; these show the head and
body leave in one write, which only a transport that records its calls can see."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from execgate.server._limits import _OneSend


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def write_eof(self) -> None:
        self.calls.append(("eof",))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close",))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort",))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7


def _run(scenario: Any) -> list[tuple[Any, ...]]:
    async def main() -> list[tuple[Any, ...]]:
        raw = _Recording()
        await scenario(_OneSend(raw, asyncio.get_running_loop()), raw)
        await asyncio.sleep(0)  # any flush still due
        return raw.calls

    return asyncio.run(main())


def test_an_answers_head_leaves_with_its_body_and_nothing_else_is_held() -> None:
    async def answer(out: _OneSend, raw: _Recording) -> None:
        out.write(b"before ")  # not armed: straight through
        out.arm()
        out.write(b"head ")
        assert raw.calls == [("write", b"before ")]
        assert out.get_write_buffer_size() == 7 + len(b"head ")
        out.write(memoryview(b"body"))
        out.write(b" more")

    assert _run(answer) == [("write", b"before "), ("write", b"head body"), ("write", b" more")]


def test_a_large_body_is_sent_after_the_head_not_copied_onto_it() -> None:
    big = b"x" * (64 * 1024 + 1)

    async def answer(out: _OneSend, raw: _Recording) -> None:
        out.arm()
        out.write(b"head")
        out.write(big)

    assert _run(answer) == [("write", b"head"), ("write", big)]


def test_a_head_with_no_write_after_it_leaves_at_the_next_turn() -> None:
    async def head_only(out: _OneSend, raw: _Recording) -> None:
        out.arm()
        out.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert raw.calls == []
        await asyncio.sleep(0)
        assert raw.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]

    assert len(_run(head_only)) == 1


def _peer_gone(out: _OneSend, raw: _Recording) -> None:
    raw.closing = True  # connection_lost: the transport is closing


@pytest.mark.parametrize(
    ("then", "expected"),
    [
        (lambda out, raw: out.close(), [("write", b"head"), ("close",)]),
        (lambda out, raw: out.write_eof(), [("write", b"head"), ("eof",)]),
        (lambda out, raw: out.abort(), [("abort",)]),
        (_peer_gone, []),
    ],
    ids=["close sends it first", "end of writing sends it first", "abort drops it", "gone"],
)
def test_what_is_held_when_the_connection_ends(then: Any, expected: list[Any]) -> None:
    async def scenario(out: _OneSend, raw: _Recording) -> None:
        out.arm()
        out.write(b"head")
        then(out, raw)

    assert _run(scenario) == expected


def test_a_close_tells_the_protocol_after_what_is_held_is_sent() -> None:
    """The protocol times a close that waits on unsent bytes (a client that stopped
    reading lets no close finish): it is told once the transport is closing."""
    seen: list[list[tuple[Any, ...]]] = []

    async def main() -> None:
        raw = _Recording()
        out = _OneSend(
            raw, asyncio.get_running_loop(), on_close=lambda: seen.append(list(raw.calls))
        )
        out.arm()
        out.write(b"head")
        out.close()

    asyncio.run(main())
    assert seen == [[("write", b"head"), ("close",)]]
