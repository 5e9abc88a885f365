"""Admin routes: approvals, revocations, policy reload, audit export and consistency proofs.

Every route here but the consistency proof needs an admin token (``execgate.admin``) in
``Authorization: Bearer``: one token per call, bound to its method, path, query and body,
signed by an ``[[admin]]`` key of the trust store whose ``roles`` include the route's role:

    GET  /v1/admin/approvals                    approvals  approvals and their state, by page
    GET  /v1/admin/approvals/{id}               approvals  one, with its reviews
    POST /v1/admin/approvals/{id}/reviews       approvals  record an approver's signed review
    POST /v1/revocations                        revoke     revoke a jti, key id, subject or artifact
    POST /v1/admin/policy/reload                reload     load policy.yaml again, everywhere
    GET  /v1/admin/audit/export                 audit      the whole log, as ``audit export``
    GET  /v1/audit/consistency?first=N&second=M (public)   RFC 9162 consistency proof

No token, a bad one (expired, another gateway's, another call's, query's or body's,
replayed, an unknown key) is 401 ``admin.unauthenticated`` with ``WWW-Authenticate:
Bearer``; a good one whose admin lacks the role is 403 ``admin.forbidden``. Both are
audited, and so is every call let through (before it acts: see ``execgate._admin_log``)
and a method an admin route does not take (405 ``method.not_allowed``, ``refuse_method``).
A body is read only once the token has verified and was not used before (``_let_in``).
The decision endpoints never need a token.

A review over HTTP takes two factors: the admin token lets the call in, and the body
carries the approver's own signed review (``execgate.approvals.sign_review``), which the
gateway checks exactly as ``execgate approvals approve`` does. An admin key is never an
approver key (the trust store refuses one key for two principals).

Policy reload must reach every worker process of ``execgate serve``, not only the one
that answered. The answering worker reads the policy file, logs the reload and pins the
new policy (``Gateway.open``'s ``policy_in_force``); every other worker takes the pinned
version before its next decision (``Gateway.current_policy``), so no file is read twice
and all end on what was logged, whatever the file holds by then. An invalid file is
refused (422 ``policy.reload_refused``) and nothing changes anywhere. SIGHUP does the
same (``install_reload_signal``): ``execgate serve`` passes it to one worker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from execgate._admin_log import (
    PolicyReload,
    admin_record,
    append_admin_record,
    revoked_detail,
    spent,
)
from execgate._hup import take_early_hup
from execgate._timing import clock_seconds
from execgate.admin import (
    FORBIDDEN,
    UNAUTHENTICATED,
    AdminError,
    AdminToken,
    authorize,
    check_body,
)
from execgate.admin import verify_admin_token as _verify_token
from execgate.approvals import VERDICTS, Pending, Review
from execgate.errors import ApprovalError, EvidenceError
from execgate.home import ServerConfig
from execgate.model import ID_TEXT, MAX_ID
from execgate.server._http import (
    HttpError,
    JsonResponse,
    handled,
    parse_json,
    query_int,
    read_body,
)
from execgate.server._spec import BODY_ERRORS, COMMON_ERRORS, error, header, json_body, ref
from execgate.store.base import REVOCATION_KINDS

if TYPE_CHECKING:
    from execgate.pipeline import Gateway

__all__ = [
    "COMPONENTS",
    "ERROR_CODES",
    "PATHS",
    "ROUTES",
    "SCHEMAS",
    "install_reload_signal",
]

REVIEW_BODY_LIMIT: Final = 16 * 1024
REVOCATION_BODY_LIMIT: Final = 8 * 1024
# A listing of approvals answers with at most this many unless ``?limit`` says fewer (or
# more, up to MAX_APPROVALS_PAGE): the table keeps every approval ever opened.
APPROVALS_PAGE: Final = 100
MAX_APPROVALS_PAGE: Final = 1000
_MAX_VALUE: Final = 1024
_THUMBPRINT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_BEARER: Final = re.compile(r"Bearer +([A-Za-z0-9_.-]+) *", re.IGNORECASE)
_CHUNK: Final = 64 * 1024
_log = logging.getLogger("execgate.server")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _now(request: Request) -> int:
    now: Callable[[], float] = request.app.state.now
    return clock_seconds(now)


# -- authentication ---------------------------------------------------------------------


_ANONYMOUS_DETAIL: Final = 160  # characters of a refusal's detail logged without a token
_MAX_METHOD: Final = 16  # characters of an unknown method kept in the log


def _challenge(exc: AdminError, presented: bool) -> dict[str, str]:
    if exc.code == FORBIDDEN:
        return {"WWW-Authenticate": 'Bearer realm="execgate", error="insufficient_scope"'}
    if presented:
        return {"WWW-Authenticate": 'Bearer realm="execgate", error="invalid_token"'}
    return {"WWW-Authenticate": 'Bearer realm="execgate"'}


def _refusal(exc: AdminError, presented: bool) -> HttpError:
    status = 403 if exc.code == FORBIDDEN else 401
    return HttpError(status, exc.code, exc.detail, _challenge(exc, presented))


def _bearer(header: str | None) -> str:
    match = _BEARER.fullmatch(header or "")
    if match is None:
        raise AdminError(
            UNAUTHENTICATED,
            "send an admin token as 'Authorization: Bearer <token>'"
            if header is None
            else "the Authorization header is not 'Bearer <token>'",
        )
    return match.group(1)


def _revocation_keys(token: AdminToken) -> tuple[tuple[str, str], ...]:
    """What revoking stops an admin's calls: its key (``kid``, the thumbprint) or the
    admin (``sub``, its id: admins, approvers and the subjects of artifacts are
    principals of one name space, as for reviews)."""
    return (("kid", token.kid), ("sub", token.admin.id))


def _unrevoked(gateway: Gateway, token: AdminToken) -> None:
    """An admin whose key (``kid``) or id (``sub``) is revoked signs no more calls, from
    the moment the revocation returned until ``trust.toml`` no longer lists it."""
    revoked = gateway.store.revoked(_revocation_keys(token))
    if revoked is not None:
        raise AdminError(UNAUTHENTICATED, revoked_detail(token.admin.id, revoked.kind))


def _unspent(gateway: Gateway, token: AdminToken) -> None:
    if spent(gateway, token.jti):
        raise AdminError(UNAUTHENTICATED, "this admin token was used before (replay)")


async def _admin(
    request: Request, role: str, action: str, *, vet: Callable[[bytes], object] | None = None
) -> AdminToken:
    """The verified token of an admin holding ``role``, for a call without a body
    (``vet`` as for ``_let_in``: it sees no bytes, and may refuse the query)."""
    return (await _let_in(request, role, action, limit=None, vet=vet))[0]


async def _let_in(
    request: Request,
    role: str,
    action: str,
    *,
    limit: int | None,
    vet: Callable[[bytes], object] | None = None,
    asks: Callable[[], dict[str, Any]] | None = None,
) -> tuple[AdminToken, bytes]:
    """The verified token of an admin holding ``role``, and the call's body: at most
    ``limit`` bytes, read only once the token verified and was not spent before (none
    without a limit: the route reads none), and the one the token was minted over
    (``bh``); ``vet`` may refuse that body, or the call's query or path parameters (an
    ``HttpError``), before the call is let in. ``asks`` (called once ``vet`` passed)
    gives what the call asks for, written into the record that lets it in: a change
    that takes effect before its own record is appended is logged ahead of it.

    Every outcome is audited. A token that does not verify names no ``jti`` to spend; a
    verified one refused for its role (or as used before) is spent with its refusal (it
    named this call). One whose call then fails, a body that cannot be read, is not the
    token's or is refused by ``vet``, is refused unspent: the call it was minted for (the
    one a thief would have swapped the body of) may still come. The token is spent with
    the record that lets the call in, which alone settles a race of two calls with it."""
    gateway = _gateway(request)
    now = _now(request)
    # The path the call was routed by (its parameters are read from it), not
    # ``request.url.path``, which is rebuilt and parsed again: tabs and newlines dropped,
    # ``?`` and ``#`` quoted, so one token would reach several ids and its record would
    # name a path other than the one acted on.
    method, path = request.method, request.scope["path"]
    query = request.scope.get("query_string", b"").decode("latin-1")  # as sent, undecoded
    header = request.headers.get("authorization")

    def log(
        result: str,
        code: str,
        detail: str,
        token: AdminToken | None,
        *,
        spend: bool,
        extra: dict[str, Any] | None = None,
    ) -> None:
        append_admin_record(
            gateway,
            admin_record(
                gateway,
                action=action,
                result=result,
                code=code,
                detail=detail,
                now=now,
                method=method,
                # Without a verified token, the path is anyone's text: kept short too.
                path=path if token is not None else path[:_ANONYMOUS_DETAIL],
                admin=None if token is None else token.admin.id,
                admin_kid=None if token is None else token.kid,
                token_jti=None if token is None else token.jti,
                **(extra or {}),
            ),
            spend=(token.jti, token.expires) if spend and token is not None else None,
            # Letting the call in: checked again in the commit (see _unrevoked).
            unrevoked=_revocation_keys(token)
            if token is not None and result == "authorized"
            else (),
        )

    def check() -> AdminToken:
        token: AdminToken | None = None
        try:
            token = _verify_token(
                _bearer(header),
                trust=gateway.trust,
                # This gateway's own id only, not the mesh audiences decisions accept: an
                # admin token is spent in this node's store, so one good at several nodes
                # could be replayed once at each.
                audiences=frozenset({gateway.gateway_id}),
                method=method,
                path=path,
                query=query,
                now=now,
                leeway=gateway._leeway,
            )
            _unrevoked(gateway, token)
            authorize(token, role)
            _unspent(gateway, token)  # a replay is refused before its body is read
        except AdminError as refused:
            # Without a verified token the detail may quote what the caller sent: kept
            # short, so anyone reaching the port adds little to the permanent log.
            detail = refused.detail if token is not None else refused.detail[:_ANONYMOUS_DETAIL]
            try:  # a verified token is spent even when refused: it named this call
                log("refused", refused.code, detail, token, spend=True)
            except AdminError as replayed:
                raise _refusal(replayed, True) from refused
            raise _refusal(refused, header is not None) from refused
        return token

    def admit(token: AdminToken, body: bytes) -> None:
        try:
            check_body(token, body)
        except AdminError as refused:
            log("refused", refused.code, refused.detail, token, spend=False)
            raise _refusal(refused, True) from refused
        if vet is not None:
            try:
                vet(body)
            except HttpError as unfit:
                log("refused", unfit.code, unfit.message, token, spend=False)
                raise
            except Exception as failed:
                log("refused", "internal.error", type(failed).__name__, token, spend=False)
                raise
        # Under "asked": a record refused in the commit (a replay, a revocation of this
        # admin meanwhile) keeps it, and it is not what a done record says was done.
        extra = None if asks is None else {"asked": asks()}
        try:
            log("authorized", "admin.authorized", f"role {role}", token, spend=True, extra=extra)
        except AdminError as replayed:  # the refusal is what was logged
            raise _refusal(replayed, True) from replayed

    token = await run_in_threadpool(check)
    body = b""
    if limit is not None:
        try:
            body = await read_body(request, limit=limit)
        except HttpError as unread:
            await run_in_threadpool(log, "refused", unread.code, unread.message, token, spend=False)
            raise
    await run_in_threadpool(admit, token, body)
    return token, body


async def audit_reader(
    request: Request, action: str, *, vet: Callable[[bytes], object] | None = None
) -> None:
    """Let a read of whole log records through: anyone with ``[server] public_audit``,
    else only an admin holding ``audit`` (401/403 otherwise, audited like every admin
    call). The records are what the export holds, request arguments included, so they
    are guarded like it. ``vet`` (as for ``_let_in``: it sees no body) checks the call's
    parameters: for an admin, once the token verified (a refusal is audited and leaves
    the token unspent); for anyone, before the read."""
    server: ServerConfig = request.app.state.server
    if not server.public_audit:
        await _admin(request, "audit", action, vet=vet)
    elif vet is not None:
        vet(b"")


def _done(
    request: Request,
    token: AdminToken,
    action: str,
    detail: str,
    *,
    refused: str | None = None,
    **extra: Any,
) -> int:
    """Log what an authorized call changed, or with ``refused`` (a reason code) why it
    changed nothing after all; return the record's index."""
    gateway = _gateway(request)
    return append_admin_record(
        gateway,
        admin_record(
            gateway,
            action=action,
            result="done" if refused is None else "refused",
            code=f"{action}.done" if refused is None else refused,
            detail=detail,
            now=_now(request),
            method=request.method,
            path=request.scope["path"],
            admin=token.admin.id,
            admin_kid=token.kid,
            token_jti=token.jti,
            **extra,
        ),
    )


# -- approvals --------------------------------------------------------------------------


def _approval_id(request: Request) -> str:
    approval_id: str = request.path_params["approval_id"]
    if not ID_TEXT.fullmatch(approval_id):
        raise HttpError(404, "approval.not_found", "no such approval at this gateway")
    return approval_id


def _find(gateway: Gateway, approval_id: str) -> tuple[Pending, list[Review]]:
    if gateway.store.approval(approval_id) is None:
        raise HttpError(404, "approval.not_found", f"no approval {approval_id} at this gateway")
    return gateway.approval(approval_id)


def _page(request: Request) -> tuple[int, str | None]:
    """``?limit`` (1 to MAX_APPROVALS_PAGE, APPROVALS_PAGE by default) and ``?after``
    (the last approval id of the page before, one the store holds), or 400
    ``request.invalid_query``. Reads the store: in a worker thread."""
    limit = query_int(request, "limit", APPROVALS_PAGE)
    assert limit is not None
    if not 1 <= limit <= MAX_APPROVALS_PAGE:
        raise HttpError(400, "request.invalid_query", f"limit must be 1 to {MAX_APPROVALS_PAGE}")
    after = request.query_params.get("after")
    if after is not None and not ID_TEXT.fullmatch(after):
        raise HttpError(400, "request.invalid_query", "after must be an approval id")
    if after is not None and _gateway(request).store.approval(after) is None:
        raise HttpError(400, "request.invalid_query", "after names no approval at this gateway")
    return limit, after


async def list_approvals(request: Request) -> Response:
    """A page of approvals, the latest to expire first, and ``next``: the ``after`` of
    the next page, or null after the last. The query is refused before the token is
    spent, an unknown ``after`` too (approvals are never removed: one found then is
    still there for the listing)."""
    query: list[tuple[int, str | None]] = []  # what the vet read: not read again
    await _admin(request, "approvals", "approvals.list", vet=lambda _: query.append(_page(request)))
    [(limit, after)] = query
    gateway, now = _gateway(request), _now(request)

    def listing() -> tuple[list[dict[str, Any]], str | None]:
        page = gateway.approvals(limit=limit + 1, after=after)  # one more: is there a next?
        found = []
        for pending in page[:limit]:
            _, reviews = gateway.approval(pending.approval_id)
            found.append({**pending.to_json(), **gateway.approval_status(pending, reviews, now)})
        return found, page[limit - 1].approval_id if len(page) > limit else None

    found, following = await run_in_threadpool(listing)
    return JsonResponse({"approvals": found, "next": following})


async def show_approval(request: Request) -> Response:
    await _admin(request, "approvals", "approvals.show", vet=lambda _: _approval_id(request))
    approval_id = _approval_id(request)
    gateway, now = _gateway(request), _now(request)

    def show() -> dict[str, Any]:
        pending, reviews = _find(gateway, approval_id)
        return {
            **pending.to_json(),
            **gateway.approval_status(pending, reviews, now),
            "reviews": [r.to_json() for r in reviews],
        }

    return JsonResponse(await run_in_threadpool(show))


async def post_review(request: Request) -> Response:
    body: dict[str, str] = {}

    def vet(raw: bytes) -> None:
        _approval_id(request)
        parsed = parse_json(request, raw)
        if not (isinstance(parsed, dict) and set(parsed) == {"review"}) or not isinstance(
            parsed["review"], str
        ):
            raise HttpError(
                400,
                "request.invalid",
                'the body must be {"review": "<the approver\'s signed review>"}',
            )
        body.update(parsed)

    # The body is checked before the call is let in: a refused one is audited as such.
    token, _ = await _let_in(
        request, "approvals", "approvals.review", limit=REVIEW_BODY_LIMIT, vet=vet
    )
    approval_id = _approval_id(request)
    gateway, now = _gateway(request), _now(request)

    def review() -> dict[str, Any]:
        _find(gateway, approval_id)
        try:
            index, after, reviews = gateway.review(approval_id, body["review"])
        except ApprovalError as exc:
            # Audited: the call's record so far says only that it was let in.
            code = "approval.review_refused"
            _done(request, token, "approvals.review", str(exc), refused=code)
            raise HttpError(409, code, str(exc)) from exc
        mine = next((r for r in reviews if r.token == body["review"]), None)
        if mine is None:  # the same approver's next review (a new key) replaced it meanwhile
            raise HttpError(
                409,
                "approval.review_refused",
                f"the review was logged at index {index}, then replaced by a later review"
                " of the same approver",
            )
        return {
            "approval_id": approval_id,
            "approver": mine.approver,
            "verdict": mine.verdict,
            "log_index": index,
            "admin": token.admin.id,
            **gateway.approval_status(after, reviews, now),
        }

    return JsonResponse(await run_in_threadpool(review))


# -- revocations ------------------------------------------------------------------------


def _revocation(body: object) -> tuple[str, str, str, bool]:
    if (
        not isinstance(body, dict)
        or not {"kind", "value", "reason"} <= set(body)
        or set(body) - {"kind", "value", "reason", "cascade"}
    ):
        raise HttpError(
            400,
            "request.invalid",
            "the body must be {kind: jti|kid|sub|artifact, value, reason} (and optionally"
            " cascade: true)",
        )
    kind, value, reason = body["kind"], body["value"], body["reason"]
    cascade = body.get("cascade", False)
    if kind not in REVOCATION_KINDS:
        kinds = ", ".join(REVOCATION_KINDS)
        raise HttpError(400, "request.invalid", f"kind must be one of {kinds}")
    for name, text in (("value", value), ("reason", reason)):
        if not isinstance(text, str) or not text.strip() or len(text) > _MAX_VALUE:
            raise HttpError(
                400, "request.invalid", f"{name} must be a non-empty string of at most 1024"
            )
    if kind == "kid" and not _THUMBPRINT.fullmatch(value):
        raise HttpError(400, "request.invalid", "a kid is a 43-character RFC 7638 thumbprint")
    if kind == "artifact" and not _THUMBPRINT.fullmatch(value):
        raise HttpError(
            400,
            "request.invalid",
            "an artifact is named by the base64url SHA-256 of its token (43 characters)",
        )
    if not isinstance(cascade, bool):
        raise HttpError(400, "request.invalid", "cascade must be true or false")
    return kind, value, reason, cascade


async def post_revocation(request: Request) -> Response:
    asked: list[tuple[str, str, str, bool]] = []

    def vet(raw: bytes) -> None:
        asked.append(_revocation(parse_json(request, raw)))

    def asks() -> dict[str, Any]:
        kind, value, reason, cascade = asked[0]
        return {"revocation": {"kind": kind, "value": value, "reason": reason, "cascade": cascade}}

    # The body is checked before the call is let in: a refused one is audited as such.
    # The record letting it in says what is revoked: the revocation is in force once
    # committed, before the record of it done.
    token, _ = await _let_in(
        request, "revoke", "revocation", limit=REVOCATION_BODY_LIMIT, vet=vet, asks=asks
    )
    [(kind, value, reason, cascade)] = asked
    gateway, now = _gateway(request), _now(request)

    def revoke() -> dict[str, Any]:
        fresh = gateway.store.revoke(kind, value, reason=reason, now=now)
        index = _done(
            request,
            token,
            "revocation",
            f"{kind} {value} {'revoked' if fresh else 'was already revoked'}",
            revocation={"kind": kind, "value": value, "reason": reason},
            already_revoked=not fresh,
        )
        doc: dict[str, Any] = {
            "kind": kind,
            "value": value,
            "revoked": fresh,
            "already_revoked": not fresh,
            "log_index": index,
        }
        if cascade:
            from execgate.audit.query import cascade as reach

            try:
                found = reach(gateway.store, kind, value)
            except EvidenceError as exc:  # revoked all the same; the report is extra
                doc["cascade"] = None
                doc["cascade_error"] = str(exc)
            else:
                doc["cascade"] = {
                    "artifacts": list(found.artifacts),
                    "decisions": [
                        {"index": i, "decision_id": d, "outcome": o} for i, d, o in found.decisions
                    ],
                }
        return doc

    return JsonResponse(await run_in_threadpool(revoke))


# -- policy reload ----------------------------------------------------------------------


def _no_body(body: bytes) -> None:
    if body:
        raise HttpError(400, "request.invalid", "a policy reload takes no body; send none")


async def post_reload(request: Request) -> Response:
    # The call takes no body: one is read (never an unbounded one) only to be refused.
    token, _ = await _let_in(request, "reload", "policy.reload", limit=1024, vet=_no_body)
    gateway = _gateway(request)

    def reload() -> PolicyReload:
        return gateway.reload_policy(
            via="http", admin=token.admin.id, admin_kid=token.kid, token_jti=token.jti
        )

    done = await run_in_threadpool(reload)
    if not done.reloaded:
        raise HttpError(
            422,
            "policy.reload_refused",
            f"the policy was refused; {done.previous_hash} stays in force: {done.error}",
        )
    return JsonResponse(
        {
            "reloaded": True,
            "policy_hash": done.policy_hash,
            "previous_policy_hash": done.previous_hash,
            "log_index": done.log_index,
            # Pinned: every worker of the service takes it before its next decision.
            "workers": "all" if gateway.policy_in_force is not None else "this process",
        }
    )


def _reload_on_signal(gateway: Gateway) -> None:
    try:
        done = gateway.reload_policy(via="signal")
    except Exception as exc:  # noqa: BLE001 - a failed reload leaves the old policy in force
        _log.warning("policy reload on SIGHUP failed; the old policy stays: %s", exc)
        return
    if not done.reloaded:
        return  # refused: logged by reload_policy and audited


def install_reload_signal(gateway: Gateway) -> Callable[[], None]:
    """Make SIGHUP reload ``gateway``'s policy (off the event loop), and reload now if
    one came while the process was starting; return what undoes it.

    Only the main thread of a process can own a signal handler: elsewhere (an app run
    in-process by tests) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    # A storm of SIGHUPs is one reload under way and at most one more: the one waiting
    # has not read the file yet, so what it reads is what every later signal asked for.
    queued, running = threading.Event(), threading.Lock()

    def reload() -> None:
        with running:  # the executor has other threads: one reload at a time
            queued.clear()  # before the file is read: a SIGHUP from now on queues one
            _reload_on_signal(gateway)

    def on_hup() -> None:
        if not queued.is_set():
            queued.set()
            try:
                loop.run_in_executor(None, reload)
            except Exception as exc:  # noqa: BLE001 - e.g. the executor is shut down
                queued.clear()  # not left set: later SIGHUPs would all be dropped
                _log.warning("policy reload on SIGHUP not started: %s", type(exc).__name__)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None
    if take_early_hup():
        on_hup()

    def remove() -> None:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGHUP)
            # Not the default action that removing leaves: a SIGHUP while the gateway
            # closes would end the process before its last appends.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    return remove


# -- audit ------------------------------------------------------------------------------


def _chunks(spool: IO[str]) -> Iterator[bytes]:
    try:
        while chunk := spool.read(_CHUNK):
            yield chunk.encode("utf-8")
    finally:
        spool.close()


async def get_export(request: Request) -> Response:
    await _admin(request, "audit", "audit.export")
    gateway, now = _gateway(request), _now(request)

    def export() -> IO[str]:
        # Written whole first (to a temporary file, not memory), then streamed: what is
        # sent is one consistent export, ending with a checkpoint over all of it.
        spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by _chunks
        try:
            gateway.audit.export(spool, now=now)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    spool = await run_in_threadpool(export)
    return StreamingResponse(
        _chunks(spool),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="audit-export.jsonl"'},
    )


async def get_consistency(request: Request) -> Response:
    first = query_int(request, "first", None)
    if first is None:
        raise HttpError(400, "request.invalid_query", "first (the older tree size) is required")
    second = query_int(request, "second", None)
    log = _gateway(request).audit

    def prove() -> dict[str, Any]:
        size = log.size()
        size2 = size if second is None else second
        if max(first, size2) > size:
            raise HttpError(
                404, "audit.index_not_found", f"the log has {size} entries; ask within that"
            )
        try:
            proof = log.consistency_proof(first, size2)
            roots = log.root(first), log.root(size2)
        except EvidenceError as exc:
            raise HttpError(400, "audit.range_invalid", str(exc)) from exc

        def encode(digest: bytes) -> str:
            return base64.b64encode(digest).decode("ascii")

        return {
            "first": first,
            "second": size2,
            "first_root": encode(roots[0]),
            "second_root": encode(roots[1]),
            "proof": [encode(h) for h in proof],
        }

    return JsonResponse(await run_in_threadpool(prove))


_ACTIONS: Final[dict[object, str]] = {}  # each admin route's endpoint: its audited action
# The reads of whole log records (``audit_reader``): admin routes unless public_audit.
_AUDIT_READS: Final[dict[object, str]] = {}


def audit_read_route(path: str, handler: Callable[[Request], Any], action: str) -> Route:
    """The GET route of a read that ``audit_reader`` guards: a method it does not take is
    refused and audited as at any admin route, unless ``[server] public_audit`` makes
    it a public one."""
    endpoint = handled(handler)
    _AUDIT_READS[endpoint] = action
    return Route(path, endpoint, methods=["GET"])


def _admin_route(path: str, handler: Callable[[Request], Any], method: str, action: str) -> Route:
    """The route, taking ``method`` only: not the HEAD Starlette adds to a GET, which
    would run a whole read (an export) to send none of it."""
    endpoint = handled(handler)
    _ACTIONS[endpoint] = action
    route = Route(path, endpoint, methods=[method])
    route.methods = {method}
    return route


ROUTES: Final[list[BaseRoute]] = [
    _admin_route("/v1/admin/approvals", list_approvals, "GET", "approvals.list"),
    _admin_route("/v1/admin/approvals/{approval_id}", show_approval, "GET", "approvals.show"),
    _admin_route(
        "/v1/admin/approvals/{approval_id}/reviews", post_review, "POST", "approvals.review"
    ),
    _admin_route("/v1/revocations", post_revocation, "POST", "revocation"),
    _admin_route("/v1/admin/policy/reload", post_reload, "POST", "policy.reload"),
    _admin_route("/v1/admin/audit/export", get_export, "GET", "audit.export"),
    Route("/v1/audit/consistency", handled(get_consistency), methods=["GET"]),
]
# The admin reads that take no HEAD (see _admin_route).
NO_HEAD: Final = frozenset(
    route.path for route in ROUTES if isinstance(route, Route) and route.methods == {"GET"}
)


async def refuse_method(request: Request, refusal: Response) -> Response:
    """``refusal`` (a 405: a method no route at this path takes), audited first when the
    path is an admin route's (an audit read's too, see ``audit_read_route``): every call
    refused at an admin route is in the log, as an anonymous one (nothing of the call
    was checked), its method and path kept short. If the log cannot take the record,
    the answer is the typed 503 of any admin call whose refusal could not be logged."""
    endpoint = request.scope.get("endpoint")
    action = _ACTIONS.get(endpoint)
    if action is None:
        server: ServerConfig = request.app.state.server
        action = None if server.public_audit else _AUDIT_READS.get(endpoint)
    if action is None:
        return refusal

    async def audited(request: Request) -> Response:
        gateway, now = _gateway(request), _now(request)
        record = admin_record(
            gateway,
            action=action,
            result="refused",
            code="method.not_allowed",
            detail=f"this route does not take {request.method[:_MAX_METHOD]}",
            now=now,
            method=request.method[:_MAX_METHOD],
            path=request.scope["path"][:_ANONYMOUS_DETAIL],
        )
        await run_in_threadpool(append_admin_record, gateway, record)
        return refusal

    answer: Response = await handled(audited)(request)
    return answer


# -- the OpenAPI description ------------------------------------------------------------

_SECURITY: Final[list[dict[str, list[str]]]] = [{"adminToken": []}]
_CHALLENGE: Final = {
    "WWW-Authenticate": header(
        'the Bearer challenge (RFC 6750): realm="execgate", with error="invalid_token" for'
        ' a token that does not verify, error="insufficient_scope" for a missing role',
        required=True,
    )
}
AUTH_ERRORS: Final = {
    "401": error("no admin token, or one that does not verify (audited)", _CHALLENGE),
    "403": error("the admin does not hold the role this call needs (audited)", _CHALLENGE),
}
_APPROVAL_ID: Final = {
    "name": "approval_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": MAX_ID, "pattern": f"^{ID_TEXT.pattern}$"},
}


def _op(
    summary: str,
    operation: str,
    role: str,
    ok: dict[str, Any],
    *,
    errors: dict[str, Any] | None = None,
    **more: Any,
) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": f"Needs an admin token whose admin holds the role `{role}`.",
        "operationId": operation,
        "security": _SECURITY,
        **more,
        "responses": {"200": ok, **AUTH_ERRORS, **COMMON_ERRORS, **(errors or {})},
    }


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


PATHS: Final[dict[str, Any]] = {
    "/v1/admin/approvals": {
        "get": _op(
            "Approvals, newest first (the latest to expire first), with their state,"
            " a page at a time",
            "listApprovals",
            "approvals",
            json_body(
                {
                    "type": "object",
                    "required": ["approvals", "next"],
                    "properties": {
                        "approvals": {"type": "array", "items": ref("Approval")},
                        "next": {
                            "type": ["string", "null"],
                            "description": "?after for the next page; null after the last",
                        },
                    },
                },
                "a page of approvals",
            ),
            errors={
                "400": error(
                    "limit or after is not valid, or after names no approval; or malformed"
                    " HTTP (request.malformed)"
                )
            },
            parameters=[
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": f"at most this many (default {APPROVALS_PAGE})",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_APPROVALS_PAGE},
                },
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": "the approvals listed after this one (a page's next)",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~-]{1,128}$"},
                },
            ],
        )
    },
    "/v1/admin/approvals/{approval_id}": {
        "get": _op(
            "One approval with its reviews",
            "showApproval",
            "approvals",
            json_body(ref("Approval"), "the approval"),
            parameters=[_APPROVAL_ID],
        )
    },
    "/v1/admin/approvals/{approval_id}/reviews": {
        "post": _op(
            "Record an approver's signed review (the approver's factor; the token is the admin's)",
            "reviewApproval",
            "approvals",
            json_body(ref("ReviewAnswer"), "the review is logged; the approval's state after it"),
            parameters=[_APPROVAL_ID],
            requestBody=_body("ReviewBody"),
            errors={**BODY_ERRORS, "409": error("the review was refused (and why)")},
        )
    },
    "/v1/revocations": {
        "post": _op(
            "Revoke an artifact (jti), a key (kid) or a subject (sub)",
            "revoke",
            "revoke",
            json_body(ref("RevocationAnswer"), "revoked (or already revoked), and logged"),
            requestBody=_body("RevocationBody"),
            errors=BODY_ERRORS,
        )
    },
    "/v1/admin/policy/reload": {
        "post": _op(
            "Load the home's policy file again in every worker",
            "reloadPolicy",
            "reload",
            json_body(ref("ReloadAnswer"), "the new policy is in force"),
            errors={
                "400": error("a body was sent: the call takes none; or malformed HTTP"),
                "413": error("the body exceeds 1 KiB (refused before it is read whole)"),
                "422": error("the policy was refused; the old one stays in force"),
            },
        )
    },
    "/v1/admin/audit/export": {
        "get": _op(
            "The whole audit log as an offline-verifiable export (JSON lines)",
            "exportAudit",
            "audit",
            {
                "description": "execgate-audit-export/1 lines",
                "headers": {
                    "Content-Disposition": header(
                        'attachment; filename="audit-export.jsonl"', required=True
                    )
                },
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
        )
    },
    "/v1/audit/consistency": {
        "get": {
            "summary": "RFC 9162 consistency proof between two tree sizes",
            "operationId": "auditConsistency",
            "parameters": [
                {
                    "name": "first",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                },
                {"name": "second", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            ],
            "responses": {
                **COMMON_ERRORS,
                "200": json_body(ref("ConsistencyProof"), "the proof (hashes in base64)"),
                "400": error(
                    "a size is missing or zero, or first is above second; or malformed HTTP"
                    " (request.malformed)"
                ),
                "404": error("a size is beyond the log"),
            },
        }
    },
}

SCHEMAS: Final[dict[str, Any]] = {
    "Approval": {"type": "object", "required": ["approval_id", "state"]},
    "ReviewBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["review"],
        "properties": {"review": {"type": "string", "description": "execgate-approval+jwt"}},
    },
    "RevocationBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "value", "reason"],
        "properties": {
            "kind": {"type": "string", "enum": list(REVOCATION_KINDS)},
            "value": {"type": "string", "minLength": 1, "maxLength": _MAX_VALUE},
            "reason": {"type": "string", "minLength": 1, "maxLength": _MAX_VALUE},
            "cascade": {"type": "boolean"},
        },
        # A key and an exact artifact are named by a base64url SHA-256 (43 characters).
        "if": {"properties": {"kind": {"enum": ["kid", "artifact"]}}},
        "then": {"properties": {"value": {"pattern": f"^{_THUMBPRINT.pattern}$"}}},
    },
    "ReviewAnswer": {
        "type": "object",
        "required": ["approval_id", "approver", "verdict", "log_index", "admin"],
        "properties": {
            "approval_id": {"type": "string"},
            "approver": {"type": "string"},
            "verdict": {"enum": sorted(VERDICTS)},
            "log_index": {"type": "integer", "minimum": 0},
            "admin": {"type": "string"},
        },
    },
    "RevocationAnswer": {
        "type": "object",
        "required": ["kind", "value", "revoked", "already_revoked", "log_index"],
        "properties": {
            "kind": {"enum": list(REVOCATION_KINDS)},
            "value": {"type": "string"},
            "revoked": {"type": "boolean"},
            "already_revoked": {"type": "boolean"},
            "log_index": {"type": "integer", "minimum": 0},
            "cascade": {
                "description": "with cascade: what the revoked value let through (null when"
                " the report could not be made: cascade_error says why; revoked all the same)",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["artifacts", "decisions"],
                        "properties": {
                            "artifacts": {"type": "array", "items": {"type": "string"}},
                            "decisions": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["index", "decision_id", "outcome"],
                                    "properties": {
                                        "index": {"type": "integer", "minimum": 0},
                                        "decision_id": {"type": "string"},
                                        "outcome": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                ],
            },
            "cascade_error": {"type": "string"},
        },
    },
    "ReloadAnswer": {
        "type": "object",
        "required": ["reloaded", "policy_hash", "previous_policy_hash", "log_index", "workers"],
        "properties": {
            "reloaded": {"const": True},
            "policy_hash": {"type": "string"},
            "previous_policy_hash": {"type": "string"},
            "log_index": {"type": "integer", "minimum": 0},
            "workers": {"enum": ["all", "this process"]},
        },
    },
    "ConsistencyProof": {
        "type": "object",
        "required": ["first", "second", "first_root", "second_root", "proof"],
        "properties": {
            "first": {"type": "integer"},
            "second": {"type": "integer"},
            "first_root": {"type": "string"},
            "second_root": {"type": "string"},
            "proof": {"type": "array", "items": {"type": "string"}},
        },
    },
}

ERROR_CODES: Final[list[str]] = [
    UNAUTHENTICATED,
    FORBIDDEN,
    "approval.not_found",
    "approval.review_refused",
    "policy.reload_refused",
    "audit.range_invalid",
]

COMPONENTS: Final[dict[str, Any]] = {
    "securitySchemes": {
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": (
                "JWS (typ execgate-admin+jwt), one per call: its method, path, query and body"
            ),
        }
    }
}
