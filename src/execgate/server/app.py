"""The decision API: routes, their handlers, and the app's lifespan (one ``Gateway``).

Decisions run on the event loop (``Gateway.decide_async``): the stages are CPU work and
short WAL reads, and the loop itself group-commits the records of every decision in
flight once it has run what is ready (``SQLiteStore.lead_now``). One thread doing the
work, rather than a thread per request contending for the interpreter, is what makes a
worker fast. Reads and outcome reports still run in the thread pool. An
HTTP error (4xx, 5xx) always means nothing was decided: the decision endpoints answer
200 with the decision object for every outcome, and the outcome is in the body.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import gc
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from execgate._hup import hup_before_handler
from execgate._outcomes import check_report
from execgate._timing import clock_seconds
from execgate.adapters.http import PROOF_HEADER
from execgate.audit.checkpoint import unverified_checkpoint
from execgate.audit.log import AuditLog, NotCheckpointed, SigningRefused
from execgate.errors import (
    ConfigError,
    EvidenceError,
    RequestError,
    StoreError,
    VerificationError,
)
from execgate.home import CONFIG_NAME, ServerConfig, load_config, service_copy
from execgate.model import ID_TEXT, Outcome
from execgate.pipeline import Gateway
from execgate.server import admin, forward_auth, logs, metrics
from execgate.server._envdir import LOCK_FLAGS, SERVICE_LOCK
from execgate.server._http import (
    HttpError,
    JsonResponse,
    error_response,
    handled,
    query_int,
    read_json,
    whole_number,
)
from execgate.server._kept import Kept
from execgate.server.openapi import openapi_document
from execgate.store.base import LogEntry, Store
from execgate.submission import MAX_REQUEST_BYTES, Submission

__all__ = [
    "DECISION_BODY_LIMIT",
    "MAX_PAGE",
    "MAX_PAGE_BYTES",
    "OUTCOME_BODY_LIMIT",
    "POLICY_IN_FORCE_ENV",
    "SUPERVISOR_ENV",
    "app_from_environment",
    "create_app",
]

_log = logging.getLogger("execgate.server")

DECISION_BODY_LIMIT: Final = 2 * MAX_REQUEST_BYTES  # the request, artifact, proof, attestation
OUTCOME_BODY_LIMIT: Final = 16 * 1024
INLINE_BODY_LIMIT: Final = 64 * 1024  # decision bodies parsed on the event loop
MAX_PAGE_BYTES: Final = 4 * 1024 * 1024  # of entries per page of /v1/audit/entries
MAX_PAGE: Final = 1000  # audit entries per page
_READ_AHEAD: Final = 32  # entries read from the store at a time for a page
READY_WRITE_TIMEOUT: Final = 1.0  # seconds /readyz waits for the writers' turn
STARTUP_FAILURE: Final = 3  # uvicorn's: a worker that exits with it stops the service
SUPERVISOR_CHECK: Final = 1.0  # seconds between a worker's looks at its supervisor


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _record(entry: LogEntry) -> dict[str, Any]:
    try:
        record = json.loads(entry.entry)
    except ValueError:
        record = None
    return {"index": entry.index, "record": record}


# -- decisions --------------------------------------------------------------------------


async def post_decision(request: Request) -> Response:
    declared = whole_number(request.headers.get("content-length", ""))  # as read_body reads it
    small = declared is not None and declared <= INLINE_BODY_LIMIT
    body = await read_json(request, limit=DECISION_BODY_LIMIT)
    gateway = _gateway(request)

    def parse() -> Submission:
        try:
            return Submission.from_json(body)
        except RequestError as exc:
            raise HttpError(400, "request.invalid", str(exc)) from exc

    # The stages run on the event loop (Gateway.decide_async: CPU work and short reads,
    # the commit awaited). A large request is parsed, hashed and decided in a worker
    # thread instead (Gateway.decide, which commits there): its record alone may take
    # the JSON encoder a good part of a second, and every other request would wait.
    if small:
        decision = await gateway.decide_async(parse())
    else:
        decision = await run_in_threadpool(lambda: gateway.decide(parse()))
    return JsonResponse(decision.to_json())


def _decision_id(request: Request) -> str:
    decision_id: str = request.path_params["decision_id"]
    if not ID_TEXT.fullmatch(decision_id):
        raise HttpError(404, "decision.not_found", "no such decision in this gateway's log")
    return decision_id


# What anyone holding a decision id may read of its record: the fields its receipt
# signs (reason codes without their details, which may quote the request).
_RECEIPT_FIELDS: Final = (
    "v",
    "kind",
    "decision_id",
    "gateway",
    "at",
    "outcome",
    "request_hash",
    "artifact_jti",
    "chain",
    "policy_hash",
    "parent_decision",
    "route",
    "approval_id",
)


def _receipt_view(logged: dict[str, Any]) -> dict[str, Any]:
    record = logged["record"]
    if record is None:
        return logged
    shown = {k: record[k] for k in _RECEIPT_FIELDS if k in record}
    shown["reasons"] = [{"code": r["code"]} for r in record.get("reasons", [])]
    return {"index": logged["index"], "record": shown}


# Of an outcome record, only that one was reported: its status, exit code and result
# digest are no receipt's (a digest of a small result or an exception's name is easily
# guessed), and need what the whole decision record needs.
_OUTCOME_FIELDS: Final = ("v", "kind", "decision_id", "gateway", "at")


def _outcome_view(logged: dict[str, Any]) -> dict[str, Any]:
    record = logged["record"]
    if record is None:
        return logged
    shown = {k: record[k] for k in _OUTCOME_FIELDS if k in record}
    return {"index": logged["index"], "record": shown}


async def get_decision(request: Request) -> Response:
    """The decision's record and its outcome's. Whole (request arguments, reason details,
    who the artifact named) with ``[server] public_audit`` (no credential is read then)
    or for an admin holding ``audit`` (without it, any ``Authorization`` header is
    checked as that, and audited); otherwise
    only what its receipt says: a decision id is no secret (it is in the access log, is
    sent to the upstream and to the client, and names a child's parent), and its
    holder need not be the one who sent the request."""
    server: ServerConfig = request.app.state.server
    whole = server.public_audit or "authorization" in request.headers
    if whole:
        await admin.audit_reader(request, "audit.decision", vet=lambda _: _decision_id(request))
    decision_id = _decision_id(request)
    store = _gateway(request).store

    def lookup() -> tuple[LogEntry | None, LogEntry | None]:
        return store.find(decision_id, "decision"), store.find(decision_id, "outcome")

    decided, outcome = await run_in_threadpool(lookup)
    if decided is None:
        raise HttpError(404, "decision.not_found", f"decision {decision_id} is not in the log")
    shown = _record(decided)
    return JsonResponse(
        {
            "decision_id": decision_id,
            "view": "whole" if whole else "receipt",
            "decision": shown if whole else _receipt_view(shown),
            "outcome": None
            if outcome is None
            else _record(outcome)
            if whole
            else _outcome_view(_record(outcome)),
        }
    )


async def post_outcome(request: Request) -> Response:
    decision_id = _decision_id(request)
    body = await read_json(request, limit=OUTCOME_BODY_LIMIT)
    if not isinstance(body, dict) or set(body) - {"status", "exit_code", "result_digest"}:
        raise HttpError(
            400,
            "request.invalid",
            "the body must be an object with status, and optionally exit_code and result_digest",
        )
    try:  # a bad report is a 400 whatever the decision (a 409 is for a good one)
        check_report(body.get("status"), body.get("exit_code"), body.get("result_digest"))
    except RequestError as exc:
        raise HttpError(400, "request.invalid", str(exc)) from exc
    status: str = body["status"]
    gateway = _gateway(request)

    proof = request.headers.get(PROOF_HEADER)

    def report() -> int:
        decided = gateway.store.find(decision_id, "decision")
        if decided is None:
            raise HttpError(404, "decision.not_found", f"decision {decision_id} is not in the log")
        logs.about(decision_id)  # on the access line, whatever the report's answer
        try:
            return gateway.report_outcome(
                decision_id,
                status=status,
                exit_code=body.get("exit_code"),  # type-checked by report_outcome
                result_digest=body.get("result_digest"),
                proof_required=True,
                proof=proof,
            )
        except VerificationError as exc:
            raise HttpError(403, exc.code, exc.detail) from exc
        except RequestError as exc:
            outcome = json.loads(decided.entry).get("outcome")
            if not Outcome(outcome).executes or gateway.store.find(decision_id, "outcome"):
                raise HttpError(409, "outcome.conflict", str(exc)) from exc
            raise HttpError(400, "request.invalid", str(exc)) from exc

    index = await run_in_threadpool(report)
    return JsonResponse({"decision_id": decision_id, "log_index": index})


# -- audit ------------------------------------------------------------------------------


CHECKPOINT_MAX_AGE: Final = 1.0  # seconds one signed checkpoint answers every caller


def _kept_checkpoint(request: Request, log: AuditLog) -> tuple[str, int]:
    """The checkpoint this process signed less than ``CHECKPOINT_MAX_AGE`` seconds ago,
    or one signed now (checked against the last one and stored), with the size its note
    signs: the log's own size, read apart, may have grown since. (``checkpoint`` signed
    the note or checked it: it is not verified again here.) In a worker thread."""
    now: Callable[[], float] = request.app.state.now
    kept: Kept[Store, tuple[str, int]] = request.app.state.checkpoint

    def checkpoint() -> tuple[str, int]:
        note = log.checkpoint(now=clock_seconds(now))
        return note, unverified_checkpoint(note).size

    return kept.get(log.store, checkpoint)


async def get_checkpoint(request: Request) -> Response:
    """Anyone may ask, and a checkpoint of a grown log is signed, checked against the
    last one and stored: one made in this process less than ``CHECKPOINT_MAX_AGE``
    seconds ago is the answer instead, so a flood of calls costs a signature and a
    stored row a second, not one per call. A caller whose receipt's index it does not
    cover yet asks again a second later. A newer one stored meanwhile (by another
    worker, or the housekeeping) is the answer over the one kept: a caller served by
    two workers in turn never gets an older tree head after a newer one."""
    log = _gateway(request).audit

    def answer() -> tuple[str, int]:
        note, size = _kept_checkpoint(request, log)
        stored = next(log.store.recent_checkpoints(), None)
        if stored is not None and stored[0] > size and log.signed_here(stored[1]):
            return stored[1], stored[0]
        return note, size

    try:
        note, size = await run_in_threadpool(answer)
    except SigningRefused as exc:
        raise HttpError(503, "audit.unavailable", str(exc)) from exc
    return JsonResponse({"origin": log.origin, "size": size, "checkpoint": note})


def _bounds(request: Request) -> tuple[int, int | None]:
    start = query_int(request, "start", 0)
    assert start is not None
    end = query_int(request, "end", None)
    if end is not None and end < start:
        raise HttpError(400, "request.invalid_query", "end must not be below start")
    return start, end


async def get_entries(request: Request) -> Response:
    # Bad bounds after the token verified: a refusal audited under its admin, and the
    # token left unspent (it is spent on a real read only).
    await admin.audit_reader(request, "audit.entries", vet=lambda _: _bounds(request))
    start, end = _bounds(request)
    store = _gateway(request).store

    def page() -> Response:
        """Read and rendered in a worker thread: decoding and encoding a page of large
        records is too much work for the event loop. Entries are read a few at a time,
        and a page ends at ``MAX_PAGE`` entries or once it holds ``MAX_PAGE_BYTES`` of
        them (at least one), so no more than that is ever held: ``next`` goes on."""
        size = store.size()
        stop = min(size, start + MAX_PAGE, size if end is None else end)
        entries: list[LogEntry] = []
        held = 0
        full = False
        at = start
        while at < stop and not full:
            chunk = store.entries(at, min(stop, at + _READ_AHEAD))
            if not chunk:
                if entries:
                    break  # what was read is served; `next` points at the gap
                raise HttpError(
                    503, "audit.unavailable", f"the log holds no entry {at} below its size {size}"
                )
            for entry in chunk:
                full = bool(entries) and held + len(entry.entry) > MAX_PAGE_BYTES
                if full:
                    break
                entries.append(entry)
                held += len(entry.entry)
            at += len(chunk)
        stop = start + len(entries) if start < stop else stop
        return JsonResponse(
            {
                "start": start,
                "end": max(start, stop),
                "size": size,
                "next": stop if stop < (size if end is None else min(end, size)) else None,
                "entries": [
                    {**_record(e), "entry": base64.b64encode(e.entry).decode("ascii")}
                    for e in entries
                ],
            }
        )

    return await run_in_threadpool(page)


async def get_proof(request: Request) -> Response:
    """Evidence against the newest stored checkpoint that covers the entry; for an entry
    none covers yet, under ``public_audit`` (anyone may call), against the checkpoint
    ``/v1/audit/checkpoint`` answers with (kept for a second), so that a flood of calls
    for the newest entries costs a signature and a stored row a second, not one per
    call: an entry appended after that one is a 503 ``audit.not_checkpointed``, to ask
    again a second later. For an admin, one is signed then."""
    await admin.audit_reader(request, "audit.proof")
    index: int = request.path_params["index"]
    log = _gateway(request).audit
    now: Callable[[], float] = request.app.state.now
    server: ServerConfig = request.app.state.server
    # An admin's call signs one if needed: it is a durable append already (the audited
    # read), and its single-use token is spent before the evidence is made, so a 503
    # would cost the admin a new token for nothing.
    kept = (lambda: _kept_checkpoint(request, log)[0]) if server.public_audit else None

    def evidence() -> str:
        if index >= log.size():
            raise HttpError(404, "audit.index_not_found", f"index {index} is not in the log")
        try:
            return log.evidence(index, now=clock_seconds(now), checkpoint=kept)
        except NotCheckpointed as exc:
            raise HttpError(
                503,
                "audit.not_checkpointed",
                f"{exc}: ask again in {CHECKPOINT_MAX_AGE:g} s",
                {"Retry-After": f"{math.ceil(CHECKPOINT_MAX_AGE)}"},
            ) from exc
        except SigningRefused as exc:
            raise HttpError(503, "audit.unavailable", str(exc)) from exc
        except EvidenceError as exc:  # the log shrank meanwhile: it is damaged
            raise HttpError(404, "audit.index_not_found", str(exc)) from exc

    text = await run_in_threadpool(evidence)
    return JsonResponse({"index": index, "format": "c2sp-tlog-proof", "evidence": text})


# -- health and description -------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JsonResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    """Ready when the gateway opened (keys and policy loaded), runs the service's policy
    in force (taken now if another worker reloaded it), the store and the audit log
    answer (and the log is not shorter than its newest checkpoint), and a write could
    start within ``READY_WRITE_TIMEOUT`` (a process stuck holding the writers' turn
    would make every decision fail closed) on a file system with room for it (see
    ``SQLiteStore.check_writable``); 503 with the failing check otherwise."""
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None:
        return error_response(503, "not_ready", "the gateway is not open")

    def check() -> dict[str, Any]:
        gateway.node_key.public.thumbprint()
        policy = gateway.current_policy()  # one this worker cannot take: not ready
        newest = next(gateway.store.recent_checkpoints(), None)
        size = gateway.audit.size()  # read after: never below a checkpoint honestly made
        if newest is not None and newest[0] > size:
            raise SigningRefused(
                f"the audit log holds {size} entries, fewer than its checkpoint of"
                f" {newest[0]}: it was cut short"
            )
        gateway.store.check_writable(READY_WRITE_TIMEOUT)  # appends would fail closed
        return {
            "log_size": size,
            "checkpoint_size": newest[0] if newest else 0,
            "policy_hash": policy.hash,
        }

    try:
        detail = await run_in_threadpool(check)
    except (StoreError, SigningRefused) as exc:  # our own words, which name no file
        return error_response(503, "not_ready", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        # Anything else may carry a path or other internals: the log has it, not the probe
        # (in the message itself: the JSON log lines keep an exception's type, not its text).
        _log.error("the readiness check failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return error_response(503, "not_ready", f"{type(exc).__name__} in the readiness check")
    return JsonResponse({"status": "ready", "gateway": gateway.gateway_id, **detail})


async def openapi(request: Request) -> Response:
    return JsonResponse(openapi_document())


class _LogIndex(Convertor[int]):
    """A log index in a path: at most 19 digits. Starlette's ``int`` takes any number of
    them, and ``int()`` of more than 4,300 raises while routing, before any handler: an
    untyped 500 and a logged traceback for anyone who sends one. A longer one is no
    route (a typed 404), as a path segment that is not a number is."""

    regex = "[0-9]{1,19}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("execgate_log_index", _LogIndex())

ROUTES: Final = [
    *forward_auth.ROUTES,
    *admin.ROUTES,
    *metrics.ROUTES,
    Route("/v1/decisions", handled(post_decision), methods=["POST"]),
    Route("/v1/decisions/{decision_id}", handled(get_decision), methods=["GET"]),
    Route("/v1/decisions/{decision_id}/outcome", handled(post_outcome), methods=["POST"]),
    Route("/v1/audit/checkpoint", handled(get_checkpoint), methods=["GET"]),
    admin.audit_read_route("/v1/audit/entries", get_entries, "audit.entries"),
    admin.audit_read_route("/v1/audit/proofs/{index:execgate_log_index}", get_proof, "audit.proof"),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown route, wrong method) as typed bodies; a wrong method at an
    admin route is audited (``admin.refuse_method``)."""
    assert isinstance(exc, HTTPException)
    codes = {404: "route.not_found", 405: "method.not_allowed"}
    message = {
        404: "no such route; /openapi.json lists them",
        405: f"this route takes {(exc.headers or {}).get('Allow', 'other methods')}",
    }.get(exc.status_code, exc.detail)
    refusal = error_response(
        exc.status_code, codes.get(exc.status_code, "request.refused"), message, exc.headers
    )
    if exc.status_code == 405:
        return await admin.refuse_method(request, refusal)
    return refusal


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Whatever fails outside a route's handler (which answers its own, see ``handled``):
    a typed 500 all the same, never a plain-text page. (Starlette logs it and re-raises
    it to the server once this is sent.)"""
    return error_response(500, "internal.error", f"{type(exc).__name__} in {request.url.path}")


def create_app(
    *,
    open_gateway: Callable[[], Gateway],
    now: Callable[[], float] = time.time,
    server: ServerConfig | None = None,
    freeze_heap: bool = False,
    supervisor: int | None = None,
) -> Starlette:
    """The decision API around the gateway ``open_gateway`` returns (opened at startup,
    closed at shutdown, after uvicorn has let in-flight requests finish). ``server`` is
    the home's ``[server]`` section (trusted proxies, limits); loopback-only by default.

    ``freeze_heap`` (for a process that serves only this app, as ``execgate serve``'s
    workers do): once the gateway is open, what startup made (modules, the compiled
    policy, the CEL programs, the routes: tens of thousands of objects that live as
    long as the process) is moved out of the garbage collector's reach with
    ``gc.freeze()``. Each full collection walked all of it, pausing every request of
    the worker for 25-30 ms every second or two under forward-auth load; it now walks
    only what requests made (1-4 ms). It is process-wide, so an app embedded elsewhere
    leaves it off.

    ``supervisor`` (a worker of ``execgate serve --workers N``): the pid of the process
    that started this one. A worker started after it is gone does not start, and one
    whose supervisor goes (killed with SIGKILL, say) stops as on SIGTERM, letting its
    in-flight decisions finish: it would otherwise serve on, holding the port, with no
    process to replace a dead worker or to pass on SIGHUP."""
    telemetry = metrics.Metrics(gateway=lambda: getattr(app.state, "gateway", None), now=now)
    open_gateway = telemetry.observing(open_gateway)  # counts and times every decision

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if supervisor is not None and os.getppid() != supervisor:
            _log.error("the serve process (pid %d) is gone; this worker does not start", supervisor)
            raise RuntimeError("no supervisor")
        try:
            gateway = open_gateway()
        except (ConfigError, StoreError) as exc:
            # Our own words (uvicorn's line keeps only the type): why it did not start.
            _log.error("cannot open the gateway: %s", exc)
            raise
        app.state.gateway = gateway
        # SIGHUP reloads the policy (in a served process's main thread; see admin).
        uninstall = admin.install_reload_signal(gateway)
        if freeze_heap:
            gc.collect()  # what startup dropped goes now, not into the frozen heap
            gc.freeze()
        watch = None if supervisor is None else asyncio.create_task(_stop_without(supervisor))
        try:
            # The server's lifespan state reaches each connection's protocol, which
            # counts what it refuses before any route sees it (server._limits).
            yield {metrics.REFUSALS_STATE: telemetry.refusal}
        finally:
            if watch is not None:
                watch.cancel()
            uninstall()
            app.state.gateway = None
            gateway.close()
            telemetry.flush()  # the counts of the last loop turn, before the loop stops
            # The approval notifications still queued, now: a worker of `serve --workers
            # N` ends by SIGTERM raised again after this, so nothing at exit runs there.
            await asyncio.to_thread(gateway.drain_notifications)

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
        middleware=[Middleware(metrics.Instrumented, metrics=telemetry)],
    )
    # No redirect from "/path/" to "/path": Starlette's answer is an empty 307 whose
    # Location is built from the client's Host header, and an admin call so redirected
    # was neither refused nor audited. An unknown path is a typed 404.
    app.router.redirect_slashes = False
    app.state.now = now
    app.state.server = server if server is not None else ServerConfig()
    app.state.metrics = telemetry
    app.state.checkpoint = Kept(CHECKPOINT_MAX_AGE, now)
    return app


async def _stop_without(supervisor: int) -> None:
    """Once this process's parent is no longer ``supervisor`` (it died, and this process
    was handed to another), stop as SIGTERM stops a worker: gracefully."""
    while os.getppid() == supervisor:
        await asyncio.sleep(SUPERVISOR_CHECK)
    _log.warning("the serve process (pid %d) is gone; this worker stops", supervisor)
    signal.raise_signal(signal.SIGTERM)


# Set by ``execgate serve --workers N`` (N > 1): the supervisor's pid (see create_app).
SUPERVISOR_ENV: Final = "EXECGATE_SUPERVISOR_PID"
_held: list[int] = []  # this process's hold on it, for as long as the process lives


def _hold_service_lock(service: Path) -> None:
    """Hold the service directory's lock (shared) until this process ends: a ``serve``
    started after this worker's supervisor died must not remove the directory while
    this worker still finishes its last requests. Nothing to hold is not an error here:
    the gateway's open says what is wrong with the directory."""
    try:
        fd = os.open(service / SERVICE_LOCK, LOCK_FLAGS)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return
    _held.append(fd)


# Set by ``execgate serve``: the file holding the policy in force for the service (see
# ``Gateway.open``), so a worker that replaces a dead one runs what the others run.
POLICY_IN_FORCE_ENV: Final = "EXECGATE_POLICY_IN_FORCE"


def app_from_environment() -> Starlette:
    """The app for the home in ``$EXECGATE_HOME`` (the uvicorn factory of ``execgate serve``)."""
    home = os.environ.get("EXECGATE_HOME")
    if not home:
        raise RuntimeError("EXECGATE_HOME is not set; start the service with 'execgate serve'")
    pinned = os.environ.get(POLICY_IN_FORCE_ENV)
    in_force = Path(pinned) if pinned else None
    # Until the app's handler is in place, a SIGHUP is remembered (admin), not the end.
    with suppress(ValueError):  # only the main thread may set one (not so in tests)
        signal.signal(signal.SIGHUP, hup_before_handler)
    if in_force is not None:
        _hold_service_lock(in_force.parent)
    try:
        # The [server] section as the service read it at start (see Gateway.open).
        kept = (
            None
            if in_force is None
            else service_copy(
                in_force.parent, "execgate.toml", Path(home) / CONFIG_NAME, "config", new=False
            )
        )
        config = load_config(Path(home), data=kept)
    except ConfigError as exc:
        # uvicorn restarts a worker that exits otherwise, round after round.
        _log.error("cannot start: %s", exc)
        sys.exit(STARTUP_FAILURE)
    logs.lean_records()  # a worker process serves this app and nothing else
    supervisor = os.environ.get(SUPERVISOR_ENV)
    return create_app(
        open_gateway=lambda: Gateway.open(Path(home), policy_in_force=in_force),
        server=config.server,
        freeze_heap=True,  # a worker process serves this app and nothing else
        supervisor=int(supervisor) if supervisor and supervisor.isdigit() else None,
    )
