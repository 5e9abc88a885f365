"""What ``execgate serve`` enforces below the app: header size and client timeouts.

These limits live in the HTTP protocol, not in the app, because the app only sees a
request once its headers are complete: a client that sends 1 MB of headers, or one
header byte every few seconds, must be stopped before that, or every such connection
holds memory and a slot for as long as the client likes.

``LimitedHttpToolsProtocol`` is uvicorn's httptools protocol with three additions:

- **Header size** (``[server] header_limit``, bytes): the raw bytes of the request line
  and headers are counted as they arrive (up to the blank line that ends them, so a body
  in the same packet is not counted; empty lines before the request line, which llhttp
  skips, count, and do not end the head), and so are the parsed URL and header fields (a
  second count). Requests pipelined in one read are each counted on their own: the read
  goes to the parser a piece at a time, up to the end of a head or of a Content-Length
  body, so that the next head starts at a known place. Only the parser finds where a
  chunked body ends, so a chunked body is fed at most ``header_limit`` bytes at a time:
  behind one, every byte of the piece that was neither body nor a chunk's size line
  counts against the next request, which may count against it the chunked one's trailers
  (bounded as trailers are, below) and the heads of requests pipelined whole in between;
  a head that begins and ends inside one such piece (blanks llhttp skips included) is at
  most the piece, so at most the limit. Past the limit the client gets ``431`` with a
  typed body (``request.headers_too_large``) and the connection is closed; the app never
  sees the request. Trailer fields, which a chunked body may end with, count against the
  same limit as they arrive: every byte after the head that is not body counts, less the
  size lines the chunks received need (their hex length and two line ends each, plus
  ``_CHUNK_SLACK`` for the chunk in progress and the last one): httptools keeps a field
  being received in memory until it ends, and the app waits for the body's end, so one
  endless trailer would otherwise grow without bound. Chunk extensions count too. Past
  the limit the answer is the same ``431``, and the app's request ends as if the client
  had gone. Trailer fields are counted and dropped, never headers: uvicorn would add
  them to the list the app's scope holds as its headers, so a trailer read with the head
  would be read as a header (an ``X-Original-Method`` naming a forward-auth call), and
  one read after it would not, depending on how the packets fell.
- **Header time** (``[server] header_timeout``, seconds): the headers must be complete
  within that time of the connection being opened, of the previous response on a
  keep-alive connection, or of their first byte when they were pipelined behind a
  request still being served. A client that has sent part of a request by then gets
  ``408`` (``request.timeout``) and the connection is closed; a connection on which
  nothing was sent (or blank lines only) is closed without an answer (there is no
  request to answer, and a client that raced a new request against the close would read
  a 408 meant for nobody). So an idle connection, new or kept alive, lives at most
  ``header_timeout`` seconds, and ``timeout_keep_alive`` is the same number; uvicorn's
  keep-alive timer is cancelled as soon as it is set, since it would close without a
  word on a request begun (read with the one before it, say).
- **Send time** (``[server] body_timeout``, seconds): a client that stops reading its
  answers (one that pipelines requests and never reads, say) leaves them in the
  server's buffers, and uvicorn waits for them to drain without a limit. Once the
  transport has asked to stop writing, a client that takes not one byte of what is
  waiting for it (in the transport's buffer and the kernel's send queue) within that
  time is dropped, with a reset (``request.timeout`` in the refusal count); one that
  reads, however slowly, is not (as nginx's ``send_timeout``). Otherwise each such
  client would hold a connection slot, and megabytes of buffers, as long as it likes.
- **Typed errors** for what uvicorn answers in plain text: a request the parser refuses
  is ``400`` ``request.malformed`` (at once, even past the head: the app's read of the
  body ends as if the client had gone, rather than waiting out its time), and so is a
  request target with a fragment (``#``; RFC 9112 §3.2 allows none), which uvicorn would
  drop without a word (so that ``/v1/forward-auth/api/x#/../../admin`` would be decided
  as ``/api/x``); over the concurrency limit, ``503`` ``server.overloaded`` (the check
  is uvicorn's, answered here). A refusal answered here carries its code in
  ``Execgate-Reason`` as well, as the app's typed errors and forward-auth's denials do,
  so a proxy that passes that header on tells the client why. A request refused while an
  answer to one before it is still being made or written gets no answer of its own: that
  answer is sent whole, then the connection is closed.
- **Upgrades** are not served (there are no WebSocket routes): an upgrade request is
  answered as plain HTTP, then the connection closes, since llhttp stops where the new
  protocol would begin and nothing after it can be read as HTTP. One with a body, or a
  ``CONNECT``, is ``400`` ``request.malformed``: llhttp skips such a body, so the app
  would read none and the bytes after it could pass for another request.

The body's time limit (``[server] body_timeout``) is the app's: ``read_body`` bounds
the read (``408``), since only the handler knows when it wants a body.

Other choices: ``limit_concurrency`` is 1024 connections plus in-flight requests per
worker (uvicorn counts both). An idle kept-alive connection counts, so the limit must
be well above the number of clients a proxy pools; past it each new request is refused
at once with 503 rather than queued without bound in the thread pool (whose 40 threads
decide; SQLite commits one writer at a time). ``backlog`` is 2048 (uvicorn's default; the
kernel caps it at ``net.core.somaxconn``): connections the kernel accepts while every
worker is busy, before it refuses them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import socket
import struct
import termios
import weakref
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any, Final, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from execgate.home import ServerConfig
from execgate.server import logs
from execgate.server._http import QUERY_MARK, REASON_HEADER
from execgate.server.metrics import REFUSALS_STATE

__all__ = ["BACKLOG", "LIMIT_CONCURRENCY", "LimitedHttpToolsProtocol", "uvicorn_options"]

LIMIT_CONCURRENCY: Final = 1024
BACKLOG: Final = 2048
_END_OF_HEAD: Final = (b"\r\n\r\n", b"\n\n")
_HEAD_BEGINS: Final = re.compile(rb"[^\r\n]")  # llhttp skips line ends before a request line
_LINGER: Final = 2.0  # seconds a refused client's remaining bytes are read and dropped
# The size line of the chunk in progress (16 hex digits and CRLF at most), the last
# chunk's "0" line and the final CRLF: framing not yet matched by a completed chunk.
_CHUNK_SLACK: Final = 18 + 3 + 2


class _Refused(Exception):
    """Stops the parser after the connection was answered and closed."""


_REASON: Final = REASON_HEADER.lower().encode("ascii") + b": "  # as uvicorn writes names
_JOINED: Final = 64 * 1024  # bytes of a body copied onto the head it follows, at most


class _OneSend(asyncio.Transport):
    """A connection's transport that sends an answer's head together with what follows.

    uvicorn writes a response's status line and headers, then its body, as two writes:
    two ``send`` calls, two segments, and two wakeups of the client, where one would do.
    Measured with two stacks side by side, each on a core of its own with its load
    generator, alternating which has this: forward-auth answered a median 4% more calls
    a second (-5% to +11% over seven pairs), /healthz 11% more (+2% to +23%).

    So the first write after a request's head is complete (``arm``) is held and sent
    with the next write; with none in the same turn of the loop, it is sent at the next
    turn, and before any close or end of writing. That write is the request's answer's
    head, or a ``100 Continue``; with requests pipelined behind an answer still being
    written, a part of that answer (held the same way). A next write over ``_JOINED``
    bytes is sent after the held one rather than copied onto it. Every write of the
    connection passes through here in order, and nothing else is held."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._armed = False
        self._held: bytes | None = None
        self._on_close = on_close  # told once a close waits for what is unsent

    def arm(self) -> None:
        self._armed = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if len(data) > _JOINED:
                self._transport.write(held)
                self._transport.write(data)
            else:
                self._transport.write(held + data)
        elif self._armed and data:
            self._armed = False
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send what is held (dropped if the connection is already closing: its peer is
        gone, since a close here sends it first)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()
        if self._on_close is not None:
            self._on_close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and header time limits."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerConfig,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_limit = limits.header_limit
        self._header_timeout = limits.header_timeout
        self._send_timeout = limits.body_timeout
        self._stalled: asyncio.TimerHandle | None = None  # answers not taken (pause_writing)
        self._waiting = 0  # bytes waiting for the client when that timer was armed
        # Every request cycle of this connection: with pipelining, the one writing is not
        # always ``self.cycle`` (the last one parsed).
        self._cycles: weakref.WeakSet[RequestResponseCycle] = weakref.WeakSet()
        # uvicorn answers an exceeded limit in plain text; the same check is made in
        # on_headers_complete with a typed body instead.
        self._concurrency = self.limit_concurrency
        self.limit_concurrency = None
        self._in_head = True  # the current request's line and headers are not complete
        self._raw = 0  # raw bytes of the current head received so far
        self._parsed = 0  # bytes of the current head the parser has handed over
        self._started = False  # a byte other than a line end of the current head arrived
        self._tail = b""  # the last bytes of the head so far (a terminator may straddle)
        self._framing = 0  # bytes after the head that were not body: chunk lines, trailers
        self._framed = 0  # of those, what the completed chunks' size lines and CRLFs took
        self._chunk = 0  # body bytes of the chunk in progress
        self._body_left: int | None = None  # of a Content-Length body, bytes still to come
        self._encoded = False  # the current request named a Transfer-Encoding
        self._begun = False  # the parser has begun the current request (on_message_begin)
        # Of the piece of a read being fed (_fed): whether a request ended in it, its body
        # bytes, the size lines it surely held of chunked requests that ended in it, and
        # the framing that the request whose body it went on with had before it.
        self._ended = False
        self._piece_body = self._piece_lines = 0
        self._before: int | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    # -- connection and data -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._out = _OneSend(transport, self.loop, on_close=self._closing)
        super().connection_made(self._out)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unstall()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._arm_stall()

    def _closing(self) -> None:
        """A close waits for what is unsent to drain, which a client that takes nothing
        never lets happen, and the transport only asks to stop writing past its high-water
        mark: with less than that left over the kernel's full queue (many small answers to
        pipelined requests) it never does. So a close with anything unsent is timed too."""
        if self._stalled is None and self._unsent():
            self._arm_stall()

    def _arm_stall(self) -> None:
        self._waiting = self._unsent()
        self._stalled = self.loop.call_later(self._send_timeout, self._send_timed_out)

    def _unsent(self) -> int:
        """Bytes written for the client that it has not taken: the transport's buffer and
        the kernel's send queue (Linux ``SIOCOUTQ``, unsent and unacknowledged)."""
        waiting = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError, ValueError):
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                waiting += struct.unpack("i", raw)[0]
        return waiting

    def resume_writing(self) -> None:
        self._unstall()
        super().resume_writing()

    def _unstall(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _send_timed_out(self) -> None:
        # Also when the transport is closing: a close waits for the buffer to drain,
        # which a client that takes nothing never lets happen.
        self._stalled = None
        if self._unsent() < self._waiting:  # it took some: slow, not gone
            self._arm_stall()
            return
        self.logger.warning(
            "dropped a connection whose client took nothing for %d s", self._send_timeout
        )
        self._count_refusal("request.timeout")
        for cycle in list(self._cycles):  # their apps' sends return at once, writing nothing
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # Reset on close: the kernel frees its buffers now. (uvloop's stand-in for a
            # socket the transport is closing raises ValueError: the abort still goes.)
            with suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        """Feed ``data`` to the parser a piece at a time, so that each head is counted
        from its first byte (a head read with the end of the request before it was not
        counted at all): up to a head's end, up to a Content-Length body's end, and in a
        chunked body, whose end only the parser finds, ``header_limit`` bytes at most
        (``_fed``)."""
        start, view = 0, memoryview(data)
        while start < len(data) and not self._refused:
            stop = len(data)
            if self._in_head:
                stop = self._head_end(data, start)
                self._raw += stop - start
                if self._raw > self._header_limit:
                    self._too_large()
                    return
            elif self._body_left:
                stop = min(stop, start + self._body_left)
            elif self._body_left is None:
                # A chunked body: what the parser finds in one piece past its end (a head,
                # trailers) is counted as a whole (_fed), so a piece is at most the limit.
                stop = min(stop, start + self._header_limit)
            piece = data if stop - start == len(data) else view[start:stop]
            start = stop
            if not self._fed(piece):
                return
        if self._in_head and self._raw and self._deadline is None and not self._refused:
            self._arm()  # a head begun behind a request in flight: from its first byte

    def _fed(self, piece: bytes | memoryview) -> bool:
        """Hand ``piece`` to the parser; whether to go on with the rest of the read.

        A request that ends inside the piece with another begun after it ended in a
        chunked body (the other pieces end where requests do). Every byte of the piece
        that was neither body nor surely a chunk's size line then counts against the
        request begun: its head or, past it, its body's framing (with its head). That may
        count against it the end of the request before (its trailers, bounded as the limit
        bounds trailers) and the heads of requests pipelined whole in between; never less
        than its own bytes in the piece. A request begun and ended inside the piece is
        counted by its parsed fields alone, and is at most the piece: such a piece is at
        most ``header_limit`` bytes (``data_received``)."""
        self._ended = False
        self._piece_body = self._piece_lines = 0
        self._before = None if self._in_head else self._framing
        if not self._in_head:
            self._framing += len(piece)  # on_body takes the body's share back
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            # ws is "none": the request is served as plain HTTP, but llhttp has stopped
            # where the upgraded protocol would begin, so nothing after it can be read
            # as HTTP. The connection ends with its answer; what follows is dropped.
            self._unsupported_upgrade_warning()
            if self.cycle is not None:
                self.cycle.keep_alive = False
            self._refused = True
            return False
        except httptools.HttpParserError:
            if not self._refused:
                # Past the head, the app may be waiting for a body that will never come.
                refuse = self._refuse if self._in_head else self._refuse_request
                refuse(400, "request.malformed", "the request is not valid HTTP/1.1")
            return False
        if self._ended and (self._begun or not self._in_head):
            spare = len(piece) - self._piece_body - self._piece_lines
            if self._in_head:
                self._raw, self._started, self._tail = spare, True, bytes(piece[-3:])
                if self._raw > self._header_limit:
                    self._too_large()
                    return False
            else:  # in the body of the request begun (a Content-Length one has no framing)
                self._framing = spare if self._body_left is None else 0
        if (
            not self._in_head
            and not self._refused
            and self._framing - self._framed > self._header_limit + _CHUNK_SLACK
        ):
            self._refuse_request(
                431,
                "request.headers_too_large",
                f"the request's trailer fields exceed {self._header_limit} bytes",
            )
        return not self._refused

    def _head_end(self, data: bytes, start: int) -> int:
        """Where the head being received ends in ``data``, read from ``start`` (the end of
        ``data`` when it does not end there). Line ends before a request line are part of
        its head, but do not end it: llhttp skips them, and reads on."""
        if not self._started:
            if data[start] in b"\r\n":
                first = _HEAD_BEGINS.search(data, start)
                if first is None:
                    return len(data)
                start = first.start()
            self._started = True
        tail = self._tail
        stop = len(data)
        if tail:  # an end straddling two reads
            window = tail + data[start : start + 3]
            for end in _END_OF_HEAD:
                if (i := window.find(end, max(0, len(tail) - len(end) + 1))) >= 0:
                    stop = min(stop, start + i + len(end) - len(tail))
        for end in _END_OF_HEAD:  # each looked for only before the one found
            if (i := data.find(end, start, stop)) >= 0:
                stop = i + len(end)
        self._tail = (tail + data[max(start, stop - 3) : stop])[-3:]
        return stop

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        self._parsed = 16  # the method, spaces, version and line ends around the URL

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        if b"#" in url:  # each piece, as the parser hands them over
            # uvicorn would drop the fragment without a word, deciding another target
            self._refuse(400, "request.malformed", "a request target holds no fragment ('#')")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and the line end
        if self._in_head:  # a trailer field is counted, never a header (module docstring)
            if len(name) == 14 and name.lower() == b"content-length":
                # llhttp refuses a bad one, or a second; it takes 4,300 leading zeros,
                # which int() does not
                self._body_left = int(value.strip().lstrip(b"0") or b"0")
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                self._encoded = True
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._concurrency is not None and (
            len(self.connections) >= self._concurrency or len(self.tasks) >= self._concurrency
        ):
            self._refuse(503, "server.overloaded", "too many connections; retry later")
            raise _Refused
        if self.parser.should_upgrade() and (
            self._body_left or self._encoded or self.parser.get_method() == b"CONNECT"
        ):
            # llhttp would skip the body of an upgrade (or a CONNECT's tunnel): the app
            # would read none, and the bytes after it could be read as another request.
            self._refuse(400, "request.malformed", "an upgrade request carries no body here")
            raise _Refused
        self.scope[QUERY_MARK] = b"?" in self.url  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()
        # Only now: should uvicorn refuse the head (a target it cannot parse), the request
        # refused is this one, never the one before it still being answered.
        self._in_head = False
        self._cycles.add(self.cycle)
        self._out.arm()  # the answer's head goes with its body (see _OneSend)

    def on_body(self, body: bytes) -> None:
        self._framing -= len(body)
        self._piece_body += len(body)
        if self._body_left is not None:
            self._body_left -= len(body)
        self._chunk += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunk = 0

    def on_chunk_complete(self) -> None:
        self._framed += len(f"{self._chunk:x}") + 4  # "<hex size>\r\n" and the "\r\n" after

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._before is None:  # its body began in this piece: all its size lines too
            self._piece_lines += self._framed
        else:  # at least those not matched by the framing it had before this piece
            self._piece_lines += max(0, self._framed - self._before)
            self._before = None
        self._in_head = True
        self._raw = self._parsed = 0
        self._started = self._begun = False
        self._tail = b""
        self._framing = self._framed = self._chunk = 0
        self._body_left = None
        self._encoded = False
        self._ended = True

    def on_response_complete(self) -> None:
        # With a request queued behind it, the one answered had its body whole (the
        # parser had gone on to the next); a body still arriving is the queued one's.
        mid_body = not self.pipeline and not self._in_head
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if mid_body:
            # Answered before the request's body arrived whole (a GET with a body, an
            # early 413): the rest would be read with no deadline, and each byte would
            # postpone the keep-alive timeout. Stop here instead, as after a refusal (and
            # without uvicorn's timer, which would cut the lingering short).
            self._unset_keepalive_if_required()
            self._refused = True
            self._disarm()
            self._close_lingering()
            return
        if not self.pipeline:
            # This deadline stands for uvicorn's keep-alive timer, set just before for the
            # same time: that one would close without a word on a request already begun.
            self._unset_keepalive_if_required()
            self._arm()

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > self._header_limit:
            self._too_large()
            raise _Refused

    # -- refusals ----------------------------------------------------------------------

    def _too_large(self) -> None:
        # Past the head, what is too large is the request being received (a trailer
        # field that ended): refused as such, not left for its app to time out on.
        refuse = self._refuse if self._in_head else self._refuse_request
        refuse(
            431,
            "request.headers_too_large",
            f"the request line and headers exceed {self._header_limit} bytes",
        )

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined head behind a request in flight: not its turn yet
            return
        if not self._started:  # nothing was asked, blank lines at most: nothing to answer
            self.transport.close()
            return
        self._refuse(
            408, "request.timeout", f"the headers did not arrive within {self._header_timeout} s"
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer with a typed error and close; nothing reaches the app. Counted in
        the app's metrics when its lifespan handed over the counter."""
        self.logger.warning("refused a request: %d %s", status, code)
        self._count_refusal(code)
        self._refused = True
        self._disarm()
        if self.flow is not None:
            self.flow.pause_reading()
        queued = {id(cycle) for cycle, _ in self.pipeline}
        answering = [
            cycle
            for cycle in self._cycles
            if not cycle.response_complete and not cycle.disconnected and id(cycle) not in queued
        ]
        if answering:
            # An answer is being made or written on this connection (perhaps for a request
            # before the refused one, which was queued behind it): let it finish, then
            # close. Requests queued behind it go unanswered, as on any closed connection.
            # The close is a lingering one: uvicorn's own, with the refused request's
            # bytes unread, reset the connection, which could destroy that answer.
            for cycle in answering:
                cycle.keep_alive = False
                lingering = _LingeringClose(self.transport, self._close_lingering)
                cycle.transport = cast("asyncio.Transport", lingering)
            self.pipeline.clear()
            return
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(_REASON + code.encode("ascii") + b"\r\n")
        head.append(b"content-length: " + str(len(body)).encode("ascii") + b"\r\n")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self._close_lingering()

    def _count_refusal(self, code: str) -> None:
        count = self.app_state.get(REFUSALS_STATE)
        if callable(count):
            with suppress(Exception):  # a count must never stop the answer
                count(code)

    def _refuse_request(self, status: int, code: str, message: str) -> None:
        """Refuse the request being received whose app has not answered yet: its
        ``receive`` reports the client gone and whatever it sends is dropped, and the
        typed error is the answer."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(status, code, message)

    def _close_lingering(self) -> None:
        """Close our side, then read and drop what the client is still sending for a
        moment before closing: closing a socket with unread data resets it, and the
        reset can destroy the answer before the client has read it."""
        if self.transport.can_write_eof():
            self.transport.write_eof()
            if self.flow is not None:
                self.flow.resume_reading()
            self.loop.call_later(_LINGER, self.transport.close)
        else:  # pragma: no cover - TCP transports can
            self.transport.close()


class _LingeringClose:
    """The transport an answer in flight writes to when the connection closes after it:
    everything is the transport's own but ``close``, which lingers (``_close_lingering``)."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self._transport = transport
        self._close = close

    def close(self) -> None:
        self._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that enforce ``server``'s limits."""
    return {
        # A partial, not a class made per config: it pickles by reference into the
        # worker processes uvicorn spawns.
        "http": partial(LimitedHttpToolsProtocol, limits=server),
        "ws": "none",  # no WebSocket routes: see Upgrades in the module docstring
        "timeout_keep_alive": server.header_timeout,
        "limit_concurrency": LIMIT_CONCURRENCY,
        "backlog": BACKLOG,
        "log_config": logs.log_config(),
    }
