"""Prometheus metrics at /metrics: decisions, stage latency, HTTP traffic, store gauges.

What is counted, and why these labels:

- ``execgate_decisions_total{outcome, reason}``: one count per decision. ``reason`` is
  the code that settled the outcome (the last reason; ``none`` for a plain proceed). Both
  label sets are closed (the five outcomes, ``errors.REASON_CODES``); anything else is
  counted as ``other``, so a label can never grow with input.
- ``execgate_decision_stage_seconds{stage}``: the pipeline's stages as it marks them
  (``Gateway.observer``, timed by ``execgate._timing``); ``audit`` is the durable record
  and receipt.
- ``execgate_http_requests_total{method, route, status}`` and
  ``execgate_http_request_duration_seconds{method, route}``: by route *template*
  (``/v1/decisions/{decision_id}``), never the raw path, and with unknown methods as
  ``other``: ids and probes do not create series.
- ``execgate_http_refused_total{code}``: requests refused below the app, before any
  route saw them (``server._limits``: 431 ``request.headers_too_large``, 408
  ``request.timeout``, 400 ``request.malformed``, 503 ``server.overloaded``), so a
  flood of oversized or stalled requests shows; the codes are a closed set.
- ``execgate_audit_log_entries``, ``execgate_replay_store_entries``,
  ``execgate_pending_approvals``: the shared state, read from the store at scrape time,
  at most once a second per process (not kept per process: with several workers each
  would hold a stale copy), and ``execgate_store_up`` (1 when the store answered).

The whole text is made at most once a second per process, and scrapes arriving together
wait for that one: with several workers a render reads and merges every worker's files
(tens of milliseconds holding the interpreter lock), and /metrics needs no credential.
Two scrapes less than a second apart that two workers answer may see a counter step
back (each worker's text is its own), which Prometheus takes for a reset.

A store that is down does not fail the scrape: the three store gauges are left out,
``execgate_store_up`` is 0, and the decision and HTTP counters are still served (they
are what shows the ``fail_closed`` decisions the outage causes). A 500 there would hide
exactly that.

Several workers: ``execgate serve`` runs several uvicorn worker processes, and a counter
kept in one of them is a fraction of the truth. ``multiprocess_dir`` makes a fresh
private directory (0700) for prometheus-client's multiprocess mode before the workers
start, names it in ``PROMETHEUS_MULTIPROC_DIR`` (inherited by every worker) and removes
it at exit; each worker then writes its counters and histograms to memory-mapped files
there, and a scrape, whichever worker answers it, sums them all
(``MultiProcessCollector``). Files are named after a worker *slot*, not a pid: a
worker takes the first free slot (a lock on ``slot-N.lock`` there, held for its life,
released by the kernel however it ends), so the replacement for a dead worker takes
that worker's files and counts on from its values. Counts a dead worker made stay
(a counter must not go down), and the directory holds one set of files per slot in
use at once, however often workers die and restart (with pids, each restart left
2 MiB more, and every scrape read them all). No multiprocess *gauge* is used (the
gauges come from the store), so there is no per-process value a dead worker would
leave stale, and nothing to mark dead. Without that variable (tests, an app run in
process, or a process that loaded prometheus-client before the variable was set), each
app keeps its own ``CollectorRegistry``, never the global default one.

/metrics is not authenticated, like /healthz: it holds counts, codes and templates,
never an id, token or argument. The server binds to loopback unless told otherwise.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execgate.errors import REASON_CODES
from execgate.model import Decision, Outcome
from execgate.pipeline import Gateway
from execgate.server import logs
from execgate.server._envdir import private_dir_in_env
from execgate.server._http import handled
from execgate.server._kept import Kept
from execgate.server._spec import PROTOCOL_ERRORS
from execgate.server._tally import Tally

__all__ = [
    "ERROR_CODES",
    "MULTIPROC_ENV",
    "PATHS",
    "REFUSALS_STATE",
    "ROUTES",
    "SCHEMAS",
    "Instrumented",
    "Metrics",
    "multiprocess_dir",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
METRICS_FILE_BYTES: Final = 2 << 20  # allocated for each of a worker's metrics files
# The key under which the app's lifespan state hands ``Metrics.refusal`` to the protocol
# (uvicorn passes that state to each connection's protocol: server._limits).
REFUSALS_STATE: Final = "execgate.refusals"
_OUTCOMES: Final = frozenset(o.value for o in Outcome)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STAGE_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    1.0, 2.5, 10.0,
)  # fmt: skip
_HTTP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def _multiprocess() -> bool:
    """Multiprocess mode: the directory is named and prometheus-client was loaded with it
    (its value class is chosen once, at import)."""
    return bool(os.environ.get(MULTIPROC_ENV)) and values.ValueClass is not values.MutexValue


GAUGE_MAX_AGE: Final = 1.0  # seconds one read of the store serves this process's scrapes


class _StoreGauges(Collector):
    """The shared-state gauges, read from the open gateway's store for a scrape.

    /metrics needs no credential, and counting the replay store scans it (a few ms at
    hundreds of thousands of rows): a read serves every scrape of the next
    ``GAUGE_MAX_AGE`` seconds, and scrapes that arrive together wait for one read
    instead of each making its own. A scraper polls every 15 s or so; a second of age
    is nothing to it, and a flood of scrapes costs the store one read a second."""

    def __init__(self, gateway: Callable[[], Gateway | None], now: Callable[[], float]) -> None:
        self._gateway = gateway
        self._now = now
        self._kept: Kept[Gateway | None, tuple[int, int, int] | None] = Kept(
            GAUGE_MAX_AGE, time.monotonic
        )

    def describe(self) -> Iterable[Metric]:
        return []  # computed per scrape; nothing to check against at registration

    def _read(self) -> tuple[int, int, int] | None:
        gateway = self._gateway()
        return self._kept.get(gateway, lambda: self._read_store(gateway))

    def _read_store(self, gateway: Gateway | None) -> tuple[int, int, int] | None:
        if gateway is None:
            return None
        try:
            store = gateway.store
            return store.size(), store.replay_size(), store.pending_approvals(int(self._now()))
        except Exception:  # noqa: BLE001 - a store that is down: no gauges, store_up 0
            return None

    def collect(self) -> Iterable[Metric]:
        read = self._read()
        if read is not None:
            size, replay, pending = read
            yield GaugeMetricFamily(
                "execgate_audit_log_entries", "entries in the audit log", value=size
            )
            yield GaugeMetricFamily(
                "execgate_replay_store_entries",
                "proof ids remembered for replay detection",
                value=replay,
            )
            yield GaugeMetricFamily(
                "execgate_pending_approvals",
                "approvals waiting for reviews (not expired)",
                value=pending,
            )
        yield GaugeMetricFamily(
            "execgate_store_up",
            "1 when the store answered its last read (at most a second old), else 0",
            value=0 if read is None else 1,
        )


class Metrics:
    """The metrics of one app: its own registry, or the multiprocess directory."""

    def __init__(self, *, gateway: Callable[[], Gateway | None], now: Callable[[], float]) -> None:
        """``gateway`` returns the app's open gateway (None while it is not open): the
        gauges read its store."""
        self.multiprocess = _multiprocess()
        registry = None if self.multiprocess else CollectorRegistry()
        self.decisions = Counter(
            "execgate_decisions",
            "decisions by outcome and the reason code that settled it",
            ["outcome", "reason"],
            registry=registry,
        )
        self.stages = Histogram(
            "execgate_decision_stage_seconds",
            "seconds spent in each decision stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "execgate_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "execgate_http_request_duration_seconds",
            "HTTP request duration by method and route template",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            "execgate_http_refused",
            "requests refused below the app (header size and time, malformed, overload)",
            ["code"],
            registry=registry,
        )
        # Decisions and requests are counted in bulk, once per event-loop turn (_tally).
        self._tally = Tally()
        self._gauges = _StoreGauges(gateway, now)
        self._open = gateway
        # The text of a scrape serves the scrapes of the next GAUGE_MAX_AGE seconds: with
        # several workers one takes tens of milliseconds (every worker's files are read
        # and merged, holding the interpreter lock), and /metrics needs no credential.
        self._rendered: Kept[Gateway | None, bytes] = Kept(GAUGE_MAX_AGE, time.monotonic)
        self._registry = registry
        if registry is not None:
            registry.register(self._gauges)

    def observe(self, decision: Decision, stages: Mapping[str, float]) -> None:
        """The gateway's observer: count the decision, time its stages, log it."""
        outcome = decision.outcome.value
        codes = [r.code for r in decision.reasons]
        reason = codes[-1] if codes else "none"
        tally = self._tally
        tally.count(
            self.decisions,
            (
                outcome if outcome in _OUTCOMES else "other",
                reason if reason in REASON_CODES or reason == "none" else "other",
            ),
        )
        # The stage names are the pipeline's own, a fixed few.
        tally.observe_each(self.stages, (((stage,), s) for stage, s in stages.items()))
        logs.decision(decision.decision_id, outcome, codes, stages)

    def observing(self, open_gateway: Callable[[], Gateway]) -> Callable[[], Gateway]:
        """``open_gateway``, with every gateway it opens observed by these metrics."""

        def opened() -> Gateway:
            gateway = open_gateway()
            gateway.observer = self.observe
            return gateway

        return opened

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        self._tally.count(self.requests, (method, route, str(status)))
        self._tally.observe(self.latency, (method, route), seconds)

    def flush(self) -> None:
        """Write the counts and observations this process holds (see ``_tally``)."""
        self._tally.flush()

    def refusal(self, code: str) -> None:
        """Count one request refused below the app (``server._limits``)."""
        self.refused.labels(code if code in REFUSAL_CODES else "other").inc()

    def render(self) -> bytes:
        """The text exposition of everything (blocking: the gauges read the store),
        after writing what this process holds; made at most once per ``GAUGE_MAX_AGE``
        (scrapes that arrive together wait for one)."""
        return self._rendered.get(self._open(), self._render)

    def _render(self) -> bytes:
        self.flush()
        registry = self._registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self._gauges)
        return generate_latest(registry)


class Instrumented:
    """ASGI middleware: count and time each HTTP request by route template, and write
    its one access-log line (with the decision id when a decision was made)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fields = logs.request_fields()
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = str(getattr(route, "path", "unmatched")) if route else "unmatched"
            method = str(scope.get("method", ""))
            self._metrics.request(method, template, status, seconds)
            logs.access(
                method=method if method in _METHODS else "other",
                route=template,
                status=status,
                seconds=seconds,
                fields=fields,
            )


async def get_metrics(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def allocated_mmap_dict(filename: str, read_mode: bool = False) -> MmapedDict:
    """prometheus-client's memory-mapped file of one worker's values, with its disk
    blocks allocated before anything is written to it.

    The library sizes a new file by truncating it (a sparse file) and writes through the
    mapping: on a full disk the first write to a page without a block kills the worker
    with SIGBUS, whatever request it was serving, and every replacement dies the same
    way at its first new series. With the blocks taken first, a full disk is an
    ``OSError`` here instead, which fails that request and leaves the worker serving
    (its decisions fail closed, as the store cannot write either).
    ``METRICS_FILE_BYTES`` is about three times what a worker wrote here after answering
    each route with each method (0.64 MB of histograms; the labels are closed sets), so
    a service of two workers takes 8 MiB; were it outgrown, the library's own growth
    would be sparse again."""
    if not read_mode:
        fd = os.open(filename, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(os.fstat(fd).st_size, METRICS_FILE_BYTES))
        finally:
            os.close(fd)
    return MmapedDict(filename, read_mode)  # type: ignore[no-untyped-call]


# prometheus-client opens each worker's files through this name (values.py, read at
# each new file): every one of them is allocated first. Readers (the scrape's
# MultiProcessCollector) read the files without it.
values.MmapedDict = allocated_mmap_dict  # type: ignore[attr-defined,assignment]

MAX_SLOTS: Final = 1024  # worker slots tried before a metric write fails


class _Slot:
    """The process identifier prometheus-client names a worker's files with: the first
    free slot of the multiprocess directory, held by a lock for the life of the process.

    The library calls it before every write, to notice a fork: the slot is taken again
    only in a process other than the one that took it. A forked child takes a slot of
    its own while it still holds its parent's (the descriptor it inherited shares the
    parent's lock), and lets go of that one only then: taking the parent's slot again
    (the parent gone) would give the library the name it already has, so it would not
    start the child's values afresh, and the child would write its copy of the parent's
    counts over what the parent counted since the fork (a child that closed what it
    inherited finds the parent's slot free: it never takes that one). A slot no process
    holds is free whatever happened to its last holder: the kernel drops a lock with the
    last descriptor, at SIGKILL too."""

    def __init__(self) -> None:
        self._pid = -1
        self._name = ""
        self._held = -1
        self._held_file: tuple[int, int] | None = None  # the slot file's device and inode
        self.started = False  # until then "": no slot is taken before a value is made

    def __call__(self) -> str:
        if self.started and os.getpid() != self._pid:
            self._take()
        return self._name

    def _take(self) -> None:
        directory = os.environ[MULTIPROC_ENV]
        inherited, inherited_file, before = self._held, self._held_file, self._name
        for slot in range(MAX_SLOTS):
            if f"slot{slot}" == before:  # free if the child closed what it inherited
                continue
            fd = os.open(
                os.path.join(directory, f"slot-{slot}.lock"),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                status = os.fstat(fd)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            self._held, self._held_file = fd, (status.st_dev, status.st_ino)
            self._pid, self._name = os.getpid(), f"slot{slot}"
            break
        else:
            raise OSError(f"all {MAX_SLOTS} metrics slots in {directory} are held")
        if inherited >= 0 and inherited != self._held:  # the parent's, in a forked child
            with suppress(OSError):  # let go of it, unless the number is another file's now
                held = os.fstat(inherited)
                if (held.st_dev, held.st_ino) == inherited_file:
                    os.close(inherited)


# In a worker (the directory named before prometheus-client was loaded), values are
# written to the files of the worker's slot. The library asks for the identifier once
# as it is set up; the slot is taken at the first value made (each value asks first).
if _multiprocess():
    _slot = _Slot()
    values.ValueClass = values.MultiProcessValue(process_identifier=_slot)  # type: ignore[no-untyped-call]
    _slot.started = True


def multiprocess_dir(parent: Path | None = None) -> AbstractContextManager[Path]:
    """A fresh private directory for the workers' metrics (in ``parent``, see
    ``private_dir_in_env``), named in ``PROMETHEUS_MULTIPROC_DIR`` for the processes
    started inside; removed at exit.

    Enter it in the serving process before uvicorn starts its workers. A directory
    already named in the environment is not reused: files left by an earlier run (or
    by another user) would be summed into this one's counters.
    """
    return private_dir_in_env(MULTIPROC_ENV, prefix="execgate-metrics-", parent=parent)


ROUTES: Final[list[BaseRoute]] = [Route("/metrics", handled(get_metrics), methods=["GET"])]
PATHS: Final[dict[str, Any]] = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format)",
            "operationId": "metrics",
            "description": (
                "Decisions by outcome and reason, stage latency, HTTP requests by route"
                " template and status, requests refused below the app by code, audit"
                " log size, replay store size, pending approvals. With a store that is"
                " down the store gauges are absent and execgate_store_up is 0; the"
                " counters are still served."
            ),
            "responses": {
                "200": {
                    "description": "metrics",
                    "content": {
                        CONTENT_TYPE_LATEST.split(";", 1)[0]: {"schema": {"type": "string"}}
                    },
                },
                **PROTOCOL_ERRORS,
            },
        }
    }
}
SCHEMAS: Final[dict[str, Any]] = {}
# The limits every route shares, enforced below the app (server._limits) or while a
# body is read (server._http.read_body): listed here so the document's Error schema
# names every code the service can answer with.
ERROR_CODES: Final[list[str]] = [
    "request.headers_too_large",
    "request.timeout",
    "request.malformed",
    "server.overloaded",
]
# What server._limits refuses with (execgate_http_refused_total's closed label set).
REFUSAL_CODES: Final = frozenset(ERROR_CODES)
