"""Forward-auth for nginx auth_request, Envoy ext_authz (HTTP) and Traefik ForwardAuth.

The proxy asks before it forwards a call; the gateway rebuilds the call as an execution
request (``execgate.adapters.http.http_request``, the same mapping the runtime signed)
and runs the whole pipeline on it. The answer is only a status and headers, because
that is all a proxy reads: 200 lets the call through (with ``Execgate-Route`` on a
reroute, never on a proceed, so a proxy can route on its presence), 403 refuses it.
Only ``proceed`` and ``reroute`` are 200; every other outcome and every failure is not.

Where the original call is found, first match wins:

1. ``X-Original-Method`` + ``X-Original-URI`` (nginx ``proxy_set_header``);
2. ``X-Forwarded-Method`` + ``X-Forwarded-Uri`` (Traefik);
3. the auth request itself (Envoy): its method, and its raw path after the
   ``/v1/forward-auth`` prefix, with its query string.

A call named by headers is asked at ``/v1/forward-auth`` itself (no path after it, no
query); otherwise it is refused, so a client whose headers an Envoy passes on cannot name
another call than the one the path says.

A header naming the original call is a claim only the proxy may make: a client reaching
the gateway directly could otherwise have any call approved in the name of another. So
any ``X-Original-*`` or ``X-Forwarded-*`` header is believed only from a peer inside
``[server] trusted_proxies`` (the TCP peer address, never a header), and from any other
peer its presence alone refuses the request (403 ``request.untrusted_forwarded``) before
anything is read, decided or logged.

Input that cannot become a request at all is refused with a typed error before the
pipeline: an invalid method or URI (``request.invalid``), an evidence header over the
size its token type may have (``request.header_too_large``: nothing is parsed or hashed
from it), a header given twice (``request.invalid``: which one a proxy would pass on is
unknowable), a body over 1 MiB (413), a body that does not arrive in time (403
``request.timeout``; the connection is closed). Each carries ``Execgate-Reason`` like a
denial.
A missing artifact or proof is not such an error: it is a request, and the pipeline
denies it (``artifact.missing``, ``identity.proof_missing``) and logs that like any
other decision.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from execgate.adapters.http import (
    ARTIFACT_HEADER,
    ATTESTATION_HEADER,
    PARENT_HEADER,
    PROOF_HEADER,
    RUNTIME_HEADER,
    body_sha256,
    http_request,
)
from execgate.artifacts import MAX_ARTIFACT_BYTES
from execgate.attestations import MAX_ATTESTATION_BYTES
from execgate.errors import JoseError, RequestError
from execgate.home import ServerConfig
from execgate.jose import parse_unverified
from execgate.model import Decision, Outcome
from execgate.pipeline import Gateway
from execgate.proofs import MAX_PROOF_BYTES
from execgate.receipts import MAX_RECEIPT_BYTES
from execgate.server._http import (
    QUERY_MARK,
    REASON_HEADER,
    HttpError,
    JsonResponse,
    handled,
    read_body,
)
from execgate.server._spec import COMMON_ERRORS, error, header, json_body, ref
from execgate.submission import MAX_REQUEST_BYTES, Submission

__all__ = ["ERROR_CODES", "PATHS", "ROUTES", "SCHEMAS"]

PREFIX: Final = "/v1/forward-auth"
METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
BODY_LIMIT: Final = MAX_REQUEST_BYTES
# The runtime of a request whose runtime cannot be known (no Execgate-Runtime header and
# no readable artifact): such a request has no artifact that verifies, so it is denied
# at the artifact stage, and the log shows this value.
UNKNOWN_RUNTIME: Final = "(unknown)"

_INLINE_BODY: Final = 64 * 1024  # bytes hashed on the event loop; larger in a thread
_HEADER_VALUE: Final = re.compile(r"[!-~]{1,1024}")
_FORWARDED_PREFIXES: Final = ("x-original-", "x-forwarded-")
# Each header read here, with the longest value it may have.
_LIMITS: Final = {
    ARTIFACT_HEADER.lower(): MAX_ARTIFACT_BYTES,
    "authorization": len("Bearer ") + MAX_ARTIFACT_BYTES,
    PROOF_HEADER.lower(): MAX_PROOF_BYTES,
    ATTESTATION_HEADER.lower(): MAX_ATTESTATION_BYTES,
    PARENT_HEADER.lower(): MAX_RECEIPT_BYTES,
    RUNTIME_HEADER.lower(): 1024,
    "x-original-method": 64,
    "x-forwarded-method": 64,
    "x-original-uri": 8192,
    "x-forwarded-uri": 8192,
}


def _trusted(request: Request) -> bool:
    """Whether the TCP peer is a trusted proxy; an unknown or unparsable peer is not."""
    server: ServerConfig = request.app.state.server
    if request.client is None:
        return False
    return _peer_trusted(request.client.host, server.trusted_proxies)


@functools.lru_cache(maxsize=1024)
def _peer_trusted(
    host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """Cached per peer address: the same few proxies ask again and again."""
    try:
        peer = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = peer.ipv4_mapped if isinstance(peer, ipaddress.IPv6Address) else None
    return any(peer in net or (mapped is not None and mapped in net) for net in networks)


def _headers(request: Request) -> dict[str, str]:
    """The headers read here, each at most once and within its size limit."""
    found: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1").lower()
        limit = _LIMITS.get(name)
        if limit is None:
            continue
        if name in found:
            raise HttpError(403, "request.invalid", f"the {name} header is given more than once")
        if len(raw_value) > limit:
            raise HttpError(
                403,
                "request.header_too_large",
                f"the {name} header is {len(raw_value)} bytes; the limit is {limit}",
            )
        found[name] = raw_value.decode("latin-1")
    return found


def _original(request: Request, headers: Mapping[str, str]) -> tuple[str, str]:
    """The original call's method and URI (see the module docstring for the order).

    A proxy passes on headers the client sent unless told otherwise (nginx passes a
    client's ``X-Forwarded-Uri``, Traefik a client's ``X-Original-URI``), so when both
    families name a method or a URI they must name the same one: a client cannot
    override what its own proxy says it asked for."""
    for field in ("method", "uri"):
        values = {headers.get(f"x-{kind}-{field}") for kind in ("original", "forwarded")}
        if None not in values and len(values) > 1:
            raise HttpError(
                403,
                "request.invalid",
                f"X-Original-{field} and X-Forwarded-{field} name different calls",
            )
    raw: bytes = request.scope.get("raw_path") or b""
    path = raw.split(b"?", 1)[0].decode("latin-1")  # some servers leave the query in
    if not path.startswith(PREFIX):
        raise HttpError(403, "request.invalid", f"the path does not start with {PREFIX} as sent")
    query: bytes = request.scope.get("query_string") or b""
    for kind in ("original", "forwarded"):
        method = headers.get(f"x-{kind}-method")
        uri = headers.get(f"x-{kind}-uri")
        if method is not None or uri is not None:
            if method is None or uri is None:
                raise HttpError(
                    403,
                    "request.invalid",
                    f"X-{kind.title()}-Method and X-{kind.title()}-URI must be sent together",
                )
            # The call is named by these headers or by the path, never both: a proxy
            # that asks with the path (Envoy) and passes on a client's X-Original-URI
            # would otherwise have the gateway decide on the call the client named.
            if path != PREFIX or query:
                raise HttpError(
                    403,
                    "request.invalid",
                    f"X-{kind.title()}-URI names the call: ask at {PREFIX} itself, with no"
                    " path after it and no query",
                )
            return method, uri
    uri = path[len(PREFIX) :]
    if query or request.scope.get(QUERY_MARK):  # "/x?" is not "/x" to every service
        uri += "?" + query.decode("latin-1")
    return request.method, uri


def _artifact(headers: Mapping[str, str]) -> str | None:
    """``Execgate-Artifact``, else the token of ``Authorization: Bearer``. The dedicated
    header wins, so a service may keep its own bearer token in ``Authorization``."""
    if ARTIFACT_HEADER.lower() in headers:
        return headers[ARTIFACT_HEADER.lower()].strip()
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _runtime(headers: Mapping[str, str], artifact: str | None) -> str:
    """``Execgate-Runtime``, else the artifact's ``sub`` read WITHOUT verification: it
    only fills the field; the pipeline verifies the artifact and the proof binds it."""
    if RUNTIME_HEADER.lower() in headers:
        return headers[RUNTIME_HEADER.lower()]
    if artifact:
        return _unverified_subject(artifact)
    return UNKNOWN_RUNTIME


@functools.lru_cache(maxsize=1024)
def _unverified_subject(artifact: str) -> str:
    """The ``sub`` of an artifact, parsed only (cached: a runtime presents the same
    artifact call after call, and the pipeline verifies it anyway)."""
    try:
        subject = parse_unverified(artifact, max_size=MAX_ARTIFACT_BYTES).claims.get("sub")
    except (JoseError, ValueError, RecursionError):
        subject = None
    return subject if isinstance(subject, str) and subject else UNKNOWN_RUNTIME


def _header_value(value: str | None, what: str) -> str:
    """A value for a response header: one line of visible ASCII, or refuse to answer
    (a proxy must not let a call through on a header it cannot read)."""
    if value is None or not _HEADER_VALUE.fullmatch(value):
        raise HttpError(500, "internal.error", f"the {what} cannot be sent as a header")
    return value


def _answer(decision: Decision) -> Response:
    headers = {
        "Execgate-Decision": _header_value(decision.decision_id, "decision id"),
        "Execgate-Outcome": decision.outcome.value,
    }
    if decision.outcome is Outcome.PROCEED:
        return JsonResponse(decision.to_json(), headers=headers)
    if decision.outcome is Outcome.REROUTE:
        headers["Execgate-Route"] = _header_value(decision.route, "route target")
        return JsonResponse(decision.to_json(), headers=headers)
    headers[REASON_HEADER] = decision.reasons[0].code if decision.reasons else "internal.error"
    if decision.approval_id is not None:
        headers["Execgate-Approval"] = _header_value(decision.approval_id, "approval id")
    return JsonResponse(decision.to_json(), status_code=403, headers=headers)


async def forward_auth(request: Request) -> Response:
    if not _trusted(request):
        forwarded = sorted(
            {
                name.decode("latin-1").lower()
                for name, _ in request.headers.raw
                if name.decode("latin-1").lower().startswith(_FORWARDED_PREFIXES)
            }
        )
        if forwarded:
            raise HttpError(
                403,
                "request.untrusted_forwarded",
                f"{', '.join(forwarded)} sent by a peer outside [server] trusted_proxies",
            )
    headers = _headers(request)
    method, uri = _original(request, headers)
    try:
        body = await read_body(request, limit=BODY_LIMIT)
    except HttpError as exc:
        status = 413 if exc.status == 413 else 403
        raise HttpError(status, exc.code, exc.message, exc.headers) from exc  # Connection
    gateway: Gateway = request.app.state.gateway
    artifact = _artifact(headers)

    def submission() -> Submission:
        try:
            execution = http_request(
                method=method,
                uri=uri,
                runtime=_runtime(headers, artifact),
                body_hash=body_sha256(body),
                parent=headers.get(PARENT_HEADER.lower()),
            )
            return Submission(
                execution,
                artifact,
                headers.get(PROOF_HEADER.lower()),
                headers.get(ATTESTATION_HEADER.lower()),
            )
        except RequestError as exc:
            raise HttpError(403, "request.invalid", str(exc)) from exc

    # The stages run on the event loop (see Gateway.decide_async); only a large body is
    # hashed in a worker thread, so one big request cannot stall every other one.
    made = await run_in_threadpool(submission) if len(body) > _INLINE_BODY else submission()
    return _answer(await gateway.decide_async(made))


ROUTES: Final[list[BaseRoute]] = [
    Route(PREFIX, handled(forward_auth), methods=METHODS),
    Route(PREFIX + "/{path:path}", handled(forward_auth), methods=METHODS),
]

# -- the OpenAPI description ------------------------------------------------------------

ERROR_CODES: Final[list[str]] = [
    "request.invalid",
    "request.untrusted_forwarded",
    "request.header_too_large",
    "request.bad_content_length",
    "request.too_large",
    "internal.error",
]


_DESCRIPTION: Final = """\
Forward-auth for nginx auth_request, Envoy ext_authz (HTTP service, path_prefix
/v1/forward-auth) and Traefik ForwardAuth (docs/forward-auth.md).

The original call is X-Original-Method + X-Original-URI, else X-Forwarded-Method +
X-Forwarded-Uri, else this request's own method and its path after /v1/forward-auth
(with the query). X-Original-* and X-Forwarded-* headers are refused from peers outside
[server] trusted_proxies. Evidence: Authorization: Bearer <artifact> or Execgate-Artifact,
Execgate-Proof, optional Execgate-Attestation, Execgate-Runtime, Execgate-Parent. The
call becomes the request {action: http.<method>, resource: <path>, args: {method, uri,
body_sha256 when a body is forwarded}, runtime, parent} and runs the whole pipeline."""

_DECISION_HEADERS: Final = {
    "Execgate-Decision": header("the decision id"),
    "Execgate-Outcome": header("proceed, reroute, pause, deny or fail_closed"),
}
_RESPONSES: Final = {
    "200": {
        **json_body(ref("Decision"), "proceed or reroute: the call may go ahead"),
        "headers": {
            **_DECISION_HEADERS,
            "Execgate-Route": header("the reroute target; absent on proceed"),
        },
    },
    "403": {
        "description": (
            "the call may not go ahead: a pause, deny or fail_closed decision (the body is"
            " the decision), or input that could not become a request (a typed error)"
        ),
        "headers": {
            **_DECISION_HEADERS,
            REASON_HEADER: header("the first reason code, or the error code"),
            "Execgate-Approval": header("on pause: the approval the request waits on"),
        },
        "content": {"application/json": {"schema": {"oneOf": [ref("Decision"), ref("Error")]}}},
    },
    "413": error("the forwarded body exceeds 1 MiB"),
    **COMMON_ERRORS,
}


def _operations(operation: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        method.lower(): {
            "summary": "Decide whether a proxied HTTP call may go ahead",
            "description": _DESCRIPTION,
            "operationId": f"{operation}{method.title()}",
            **({"parameters": parameters} if parameters else {}),
            "responses": _RESPONSES,
        }
        for method in METHODS
        if method != "HEAD"  # served with GET
    }


PATHS: Final[dict[str, Any]] = {
    PREFIX: _operations("forwardAuth", []),
    PREFIX + "/{path}": _operations(
        "forwardAuthPath",
        [
            {
                "name": "path",
                "in": "path",
                "required": True,
                "description": (
                    "the original call's path as sent, raw (Envoy sends its call's own path"
                    " here): it may hold '/', which a client generated from this document"
                    " would encode as %2F, refused as an encoded separator; such a client"
                    " names the call with X-Original-Method and X-Original-URI at"
                    " /v1/forward-auth instead"
                ),
                "schema": {"type": "string"},
            }
        ],
    ),
}
SCHEMAS: Final[dict[str, Any]] = {}
