"""Typed error bodies and bounded request bodies: what every endpoint shares.

Every error is ``{"error": {"code": "...", "message": "..."}}`` with a stable dotted
code (these are HTTP error codes, apart from the decision reason codes of DESIGN §2: an
error means nothing was decided and nothing executes).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from execgate.errors import AuditError, JoseError, StoreError
from execgate.home import ServerConfig
from execgate.jose import compact_json, loads_strict
from execgate.submission import MAX_REQUEST_VALUES

__all__ = [
    "QUERY_MARK",
    "REASON_HEADER",
    "Handler",
    "HttpError",
    "JsonResponse",
    "error_response",
    "handled",
    "parse_json",
    "query_int",
    "read_body",
    "read_json",
    "whole_number",
]

JSON_TYPE: Final = "application/json"
REASON_HEADER: Final = "Execgate-Reason"  # every typed error's code, and a denial's
# Scope key: True when the request target held a '?' (ASGI's query_string is empty for
# both "/x" and "/x?"); set by execgate serve's protocol (server._limits).
QUERY_MARK: Final = "execgate.query_mark"
INLINE_JSON: Final = 64 * 1024  # bodies parsed on the event loop; larger ones in a thread
_log = logging.getLogger("execgate.server")
_HTTP1: Final = frozenset({"1.0", "1.1"})  # where a body is declared or absent (read_body)

Handler = Callable[[Request], Awaitable[Response]]


class JsonResponse(JSONResponse):
    """A JSON response written by ``jose.compact_json``: the same compact bytes as
    Starlette's own, several times faster for plain content."""

    def render(self, content: Any) -> bytes:
        return compact_json(content)


class HttpError(Exception):
    """An HTTP request refused before anything was decided."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JsonResponse:
    """The typed error body, its code also in ``Execgate-Reason`` (as a forward-auth
    denial carries it, and the refusals below the app: one header a proxy can pass on)."""
    return JsonResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={REASON_HEADER: code, **(headers or {})},
    )


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_TYPE


def whole_number(text: str) -> int | None:
    """``text`` as a non-negative integer: ASCII digits only (``str.isdigit`` also takes
    '²'), at most 20 of them (``int()`` refuses more than 4,300, and an HTTP parser takes
    leading zeros); None for anything else."""
    if text.isascii() and text.isdigit() and len(text) <= 20:
        return int(text)
    return None


def query_int(request: Request, name: str, default: int | None) -> int | None:
    """A query parameter of ASCII digits (``str.isdigit`` also takes '²'), or ``default``
    when absent; anything else is 400 ``request.invalid_query``."""
    text = request.query_params.get(name)
    if text is None:
        return default
    value = whole_number(text)
    if value is None:
        raise HttpError(400, "request.invalid_query", f"{name} must be a non-negative integer")
    return value


def _framing(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """The first ``Content-Length`` (as ``request.headers.get`` gives it), and whether a
    ``Transfer-Encoding`` is present, in one pass over the raw headers (their names are
    lower case in ASGI), without the two missing-key exceptions of a ``Headers`` lookup
    on every forward-auth call."""
    declared: str | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            if declared is None:
                declared = value.decode("latin-1")
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


async def read_body(request: Request, *, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit``: first on
    the declared ``Content-Length`` (nothing is read), then while streaming (reading stops
    at the first chunk past the limit, whatever the header said). A body that has not
    arrived whole within ``[server] body_timeout`` seconds is refused with 408 and the
    connection is closed (the rest of it may still be on its way). A request that
    declares neither a ``Content-Length`` nor a ``Transfer-Encoding`` has no body
    in HTTP/1 (RFC 9112 §6.3): nothing is read (a proxy's forward-auth GET, most of all).
    HTTP/2 and 3 may send a body with neither, so there it is read as any other."""
    declared, framed = _framing(request.scope.get("headers") or ())
    if declared is None and not framed and request.scope.get("http_version") in _HTTP1:
        return b""
    if declared is not None:
        length = whole_number(declared)
        if length is None:
            raise HttpError(400, "request.bad_content_length", "Content-Length is not a number")
        if length > limit:
            raise HttpError(
                413, "request.too_large", f"the body is {declared} bytes; the limit is {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    server = getattr(request.app.state, "server", None)
    timeout = (server if isinstance(server, ServerConfig) else ServerConfig()).body_timeout
    try:
        async with asyncio.timeout(timeout):  # a timer, cheaper than an anyio cancel scope
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, "request.too_large", f"the body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise HttpError(
            408,
            "request.timeout",
            f"the body did not arrive within {timeout} s",
            headers={"Connection": "close"},
        ) from exc
    except ClientDisconnect as exc:  # gone, or refused below the app: nobody reads this
        raise HttpError(
            400, "request.malformed", "the connection ended before the body did"
        ) from exc
    return b"".join(chunks)


async def read_json(request: Request, *, limit: int) -> Any:
    """A strict JSON body (DESIGN §4: no duplicate members, no NaN, depth ≤ 32; at most
    ``MAX_REQUEST_VALUES`` values, as for a decision request). One over
    ``INLINE_JSON`` bytes is parsed in a worker thread: a megabyte of nested brackets
    takes the strict parser most of a second, which on the event loop would stall every
    other request of the worker."""
    _json_type(request)
    return await _parsed(await read_body(request, limit=limit))


def _json_type(request: Request) -> None:
    if not _is_json(request.headers.get("content-type")):
        raise HttpError(415, "request.unsupported_media_type", f"send the body as {JSON_TYPE}")
    # A compressed body is not decoded here: refused as such, not read as malformed JSON
    # (and a plain body labelled compressed is not taken for what its label says).
    codings = ",".join(request.headers.getlist("content-encoding")).lower().split(",")
    if any(coding.strip() not in ("", "identity") for coding in codings):
        raise HttpError(
            415,
            "request.unsupported_media_type",
            "send the body without Content-Encoding (it is not decoded here)",
        )


def parse_json(request: Request, body: bytes) -> Any:
    """``read_json`` for a small body already read, in the calling thread (an admin call
    reads its body, at most a few KiB, once its token verified, and checks it against
    the token before parsing it: ``execgate.admin``)."""
    _json_type(request)
    return _strict(body)


async def _parsed(body: bytes) -> Any:
    if len(body) > INLINE_JSON:
        return await run_in_threadpool(_strict, body)
    return _strict(body)


def _strict(body: bytes) -> Any:
    try:
        return loads_strict(body, max_values=MAX_REQUEST_VALUES)
    except (JoseError, ValueError, RecursionError) as exc:
        why = str(exc)
        if "integer string conversion" in why:  # Python's own words are for its caller
            why = f"a number has more than {sys.get_int_max_str_digits()} digits"
        message = f"the body is not strict JSON: {why}"
        raise HttpError(400, "request.malformed_json", message) from exc


def handled(handler: Handler) -> Handler:
    """Translate refusals and store failures into typed error bodies; never a traceback."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except AuditError as exc:
            return error_response(503, "audit.unavailable", f"the audit log is unavailable: {exc}")
        except StoreError as exc:
            return error_response(503, "store.unavailable", f"the store is unavailable: {exc}")
        except Exception as exc:  # noqa: BLE001 - a typed 500, nothing executes
            _log.error("unexpected %s answered 500", type(exc).__name__, exc_info=exc)
            return error_response(
                500, "internal.error", f"{type(exc).__name__} in {request.url.path}"
            )

    return wrapped
