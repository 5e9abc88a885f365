"""The decision pipeline (DESIGN §3): the only place a decision is made.

``Gateway.decide`` runs the ordered stages; each passes or ends the decision with a
reason. Deny is the default: the outcome is ``proceed`` or ``reroute`` only when every
stage passed and a policy rule said so. Any exception becomes ``fail_closed`` with
``internal.error`` (a store failure: ``store.unavailable``); the decision is then
appended to the log in one atomic, durable commit together with its replay state, and
only after that commit is the caller told anything (write-ahead). A decision that could
not be logged is ``fail_closed`` with ``audit.unavailable``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Generator, Mapping
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, cast

from execgate._approval_flow import ApprovalFlow
from execgate._outcomes import OutcomeLog
from execgate._state import RECORD_VERSION, DecisionState
from execgate._timing import TimedState, clock_problem, whole_seconds
from execgate.approvals import check_pauses
from execgate.artifacts import DEFAULT_MAX_DEPTH, Artifact, ArtifactVerifier
from execgate.attestations import check_environment, verify_attestation_by
from execgate.audit.log import AuditLog
from execgate.errors import (
    AuditError,
    ConfigError,
    StoreError,
    StoreUnavailable,
    VerificationError,
)
from execgate.home import CONFIG_NAME, GatewayConfig, load_config, service_copy
from execgate.jose import PrivateKey, canonical_json
from execgate.keyfile import (
    atomic_write,
    read_private_file,
    read_private_key,
    refuse_shared_writes,
    refuse_unsafe_path,
)
from execgate.lineage import verify_parent
from execgate.model import Decision, Outcome, Reason
from execgate.policy import Policy, parse_policy
from execgate.policy.loader import SERVICE_GONE, Pin, read_policy
from execgate.proofs import verify_proof
from execgate.receipts import sign_receipt
from execgate.scope import check_scope
from execgate.store.base import (
    PURGED_DETAIL,
    ApprovalRow,
    Conflict,
    LoopCommits,
    Store,
    UseClaim,
    WriteJob,
)
from execgate.store.sqlite import SQLiteStore
from execgate.submission import MAX_REQUEST_BYTES, Submission
from execgate.trust import TrustStore

if TYPE_CHECKING:
    from execgate._admin_log import PolicyReload
    from execgate.adapters.guard import Guard
    from execgate.proofs import Runtime

__all__ = ["MAX_REQUEST_BYTES", "Gateway", "Submission", "policy_view"]

_PURGE_EVERY: Final = 4096
# A request over this many canonical bytes is logged without its arguments when no
# proof of possession verified (see Gateway._logged_request).
ANONYMOUS_REQUEST_BYTES: Final = 16 * 1024
# How long decide_async waits for a writer to take its record before withdrawing it.
COMMIT_TIMEOUT: Final = 30.0
# How long after its evaluation a decision's commit may still land (seconds): it waits
# at most COMMIT_TIMEOUT for a writer to take it. Purges keep this much more state.
PURGE_LAG: Final = 2 * int(COMMIT_TIMEOUT)
# Seconds before the loop tries a busy store again. uvloop (libuv) counts its timers in
# whole milliseconds and runs one that rounds to none (under 0.5 ms) on the loop's next
# turn: at 0.3 ms the loop spun through some 300,000 tries a second while another worker
# wrote.
_FLUSH_RETRY: Final = 0.001

_log = logging.getLogger(__name__)


def new_decision_id() -> str:
    """A UUIDv7 (RFC 9562 §5.7): the Unix time in milliseconds, then 74 random bits.

    Ordered by time, so each decision's id lands beside the last in the audit log's
    index of decision ids: a batch of decisions changes one or two of its pages, where
    random ids changed one page each (about a quarter of the pages a batch writes). The
    74 random bits keep an id as hard to guess as a random UUID is for this purpose."""
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76  # version 7
        | (rand >> 68) << 64
        | 0b10 << 62  # the RFC 4122 variant
        | rand & ((1 << 62) - 1)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Where a decision's housekeeping runs (see Gateway._decide): called with a chore (which
# never raises), it runs it or hands it off, and says whether it did; it never raises.
Chores = Callable[[Callable[[], None]], bool]


def _inline(chore: Callable[[], None]) -> bool:
    chore()
    return True


def policy_view(artifact: Artifact) -> dict[str, Any]:
    """The ``artifact`` a policy condition sees: the claims its authority signed, the
    root of a delegation chain (an artifact not delegated is its own root). A delegator
    chooses its link's ``sub``, ``iat``, ``jti`` and ``uses`` and adds ``gov`` and ``att``
    keys (DESIGN §4.2), so no value only a delegator vouches for may be what lets a
    request through: a runtime could delegate to itself and claim anything (a ticket, a
    ``requested_by``, another runtime's name, a single use per self-minted child).
    Every link's own values are in ``chain`` (root first: ``iss``, ``sub``, ``jti``,
    ``gov``, ``att``), for a rule that means to read what a delegator added;
    ``size(artifact.chain) > 1`` means delegated. The request's ``runtime`` is the last
    link's ``sub``, named by its delegator, who may give a child its own name: the
    runtime the authority named, holding the key it bound, is ``artifact.sub`` with
    ``size(artifact.chain) == 1``."""
    links = artifact.chain
    root = links[0]
    return {
        "env": {},
        **root.claims,
        "gov": dict(root.gov),
        "att": dict(root.claims.get("att", {})),
        "chain": [
            {
                "iss": link.issuer,
                "sub": link.subject,
                "jti": link.jti,
                "gov": dict(link.gov),
                "att": dict(link.claims.get("att", {})),
            }
            for link in links
        ],
    }


def _held(sent: weakref.ref[WriteJob]) -> WriteJob:
    """The job a store is finalizing (it holds the job while it calls finalize)."""
    job = sent()
    assert job is not None
    return job


def _resume(
    steps: Generator[WriteJob, int, Decision], result: int | Exception
) -> WriteJob | Decision:
    """Hand a commit's log index (or its error) back to ``Gateway._decide``: the next
    write it needs, or the decision once it has returned."""
    try:
        if isinstance(result, Exception):
            return steps.throw(result)
        return steps.send(result)
    except StopIteration as done:
        decision: Decision = done.value
        return decision


class _Unsigned(Exception):
    """Raised inside a commit to roll back a decision whose receipt could not be signed."""


def _same_node_key(kept: Path, key: PrivateKey, path: Path, *, new: bool) -> None:
    """The service's node key is the one its first open had (``kept`` holds that key's
    thumbprint, written by the first open, ``new``): its receipts and checkpoints are
    signed by one key. A key replaced on disk takes effect at a restart of the service."""
    thumbprint = key.public.thumbprint()
    if new:
        atomic_write(kept, thumbprint.encode("ascii"), mode=0o600)
        return
    try:
        first = read_private_file(kept, limit=128).decode("ascii")
    except FileNotFoundError as exc:
        raise ConfigError(SERVICE_GONE) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {kept}: {exc}") from exc
    if first != thumbprint:
        raise ConfigError(
            f"{path} is not the node key this service started with; restart the service"
            " to sign with another key"
        )


class _Unready(Exception):
    """What a decision needs of the gateway itself cannot be had (the policy in force,
    the clock): ``fail_closed`` / ``internal.error`` with this message."""


def _pinned(
    pin: Pin, policy_file: Path, targets: Collection[str], trust: TrustStore
) -> tuple[Policy, int]:
    """The policy pinned now, and the descriptor of its version, for ``pin.hold`` once
    the policy is in place (see ``Gateway.current_policy``)."""
    fd, text = pin.read()
    try:
        policy = parse_policy(text, source=f"{policy_file} (in force: {pin.path})", targets=targets)
        check_pauses(policy, trust)
    except BaseException:
        os.close(fd)
        raise
    return policy, fd


class Gateway(ApprovalFlow, OutcomeLog):
    """A gateway node: decides requests against its trust store, policy and store.

    The decision stages live here; reviewing paused requests (``ApprovalFlow``) and
    logging execution outcomes and checkpoints (``OutcomeLog``) are mixed in.
    """

    def __init__(
        self,
        *,
        gateway_id: str,
        audiences: Collection[str],
        node_key: PrivateKey,
        trust: TrustStore,
        policy: Policy,
        store: Store,
        now: Callable[[], float],
        leeway: int = 60,
        proof_max_age: int = 120,
        receipt_ttl: int = 86400,
        checkpoint_every: int = 1000,
        checkpoint_interval: int = 300,
        max_depth: int = DEFAULT_MAX_DEPTH,
        notify: Callable[[dict[str, Any]], None] | None = None,
    ):
        if not 0 <= leeway <= 60:
            raise ValueError("leeway must be within [0, 60] seconds")
        self.gateway_id = gateway_id
        self.audiences = frozenset([gateway_id, *audiences])
        self.node_key = node_key
        self.policy = policy
        self.store = store
        self._now = now
        self._leeway = leeway
        self._max_depth = max_depth
        self._notify_hook = notify
        self.trust = trust
        self._proof_max_age = proof_max_age
        self._receipt_ttl = receipt_ttl
        self._count = 0
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_lock = threading.Lock()
        self._last_checkpoint: tuple[int, int] | None = None  # (size, time)
        self._checkpoint_queued = False  # a checkpoint chore is on its way (_checkpoint_soon)
        # The policy file and reroute targets ``open`` loaded the policy from (None when
        # the gateway was built directly: nothing to reload), and what serializes reloads.
        self.policy_source: tuple[Path, frozenset[str]] | None = None
        self.policy_in_force: Path | None = None  # see ``open``
        self._pin: Pin | None = None  # the pinned version this process runs
        self._taking = threading.Lock()  # one thread takes a new pinned version
        self.reload_lock = threading.Lock()
        # Called with each decision made and the seconds spent in each stage (metrics);
        # None (the default) costs nothing. It cannot change or fail a decision: it runs
        # after the record is durable, and its exceptions are dropped.
        self.observer: Callable[[Decision, Mapping[str, float]], None] | None = None
        # decide_async: the event loop a commit of the queued jobs is scheduled on, if any
        # (a loop, not a flag: a loop closed before its flush ran must not block others)
        self._flush_on: asyncio.AbstractEventLoop | None = None

    @property
    def audit(self) -> AuditLog:
        """The audit log of the current store, signed with this node's key."""
        return AuditLog(self.store, origin=self.gateway_id, key=self.node_key)

    @property
    def trust(self) -> TrustStore:
        return self._artifacts.trust

    @trust.setter
    def trust(self, trust: TrustStore) -> None:
        """Swap the trust store; verified-artifact memory starts afresh with it."""
        self._artifacts = ArtifactVerifier(
            trust=trust, audiences=self.audiences, leeway=self._leeway, max_depth=self._max_depth
        )

    @classmethod
    def open(
        cls,
        home: Path,
        *,
        now: Callable[[], float] = time.time,
        store: Store | None = None,
        policy_in_force: Path | None = None,
        new_service: bool = False,
    ) -> Gateway:
        """Open the gateway described by a home directory (see ``execgate init``).

        ``store`` replaces the home's SQLite store (tests, or a store known to be down).
        The ``[approvals]`` hooks of the config become the ``notify`` hook (a ``Notifier``).

        ``policy_in_force`` names the file that holds the policy in force for a service
        of several processes (``execgate serve``), in a directory private to the service
        (this user's, writable by no one else). The service's first open
        (``new_service``) loads the home's policy and writes its text there; every later
        open reads the policy from that file, not from the home's policy file, so a
        worker started later (to replace one that died) runs what the others run, even
        if the file on disk has been edited, or broken, without a reload since.
        ``reload_policy`` replaces it, and every process of the service takes the new
        version before its next decision (``current_policy``).

        The same directory keeps what else the first open read: the config and the
        trust store as they were then (``home.service_copy``), and the node key's
        thumbprint; a later open whose node key is another refuses to start, and so does
        one that finds any of these gone (it cannot know what the service runs).
        """
        if policy_in_force is None:
            return cls._open(home, now=now, store=store, pin=None, new=False)
        pin = Pin(policy_in_force)
        try:
            with pin.lock():
                return cls._open(home, now=now, store=store, pin=pin, new=new_service)
        except BaseException:
            pin.close()
            raise

    @classmethod
    def _open(
        cls,
        home: Path,
        *,
        now: Callable[[], float],
        store: Store | None,
        pin: Pin | None,
        new: bool,
    ) -> Gateway:
        service = None if pin is None else pin.path.parent
        config = load_config(
            home,
            data=service_copy(service, "execgate.toml", home / CONFIG_NAME, "config", new=new),
        )
        # A later open of a service reads the pinned policy and the kept trust store, not
        # the files: their state is the next reload's or restart's to check, not a reason
        # for a replacement worker not to start. A file is only as safe as the directories
        # on the way to it (through any link): who may write one may put another file there.
        read: list[tuple[Path, str]] = [(config.node_key.parent, "key directory")]
        if pin is None or new:
            read.append((config.policy, "policy"))
            refuse_unsafe_path(config.trust, "trust store")
            refuse_unsafe_path(config.policy, "policy")
        # Anyone who may write the store may take back revocations, spend or free proofs
        # and rewrite the log: its file, the files beside it and its directory.
        store_path = Path(config.store)
        read += [(store_path.parent, "state store directory")]
        read += [
            (store_path.with_name(store_path.name + suffix), "state store file")
            for suffix in ("", "-wal", "-shm", "-head")
        ]
        for path, what in read:
            with suppress(FileNotFoundError):  # a missing policy is reported when read
                refuse_shared_writes(path, path.stat().st_mode, what)
        node_key = read_private_key(config.node_key)
        trust = TrustStore.load(
            config.trust,
            data=service_copy(service, "trust.toml", config.trust, "trust store", new=new),
        )
        if service is not None:
            _same_node_key(service / "node.jkt", node_key, config.node_key, new=new)
        held = trust.holder_of(node_key.public.thumbprint())
        if held is not None:
            raise ConfigError(
                f"{config.trust}: {held} holds this gateway's node key ({config.node_key}),"
                " which signs its receipts and checkpoints; give that principal a key of"
                " its own"
            )
        if config.gateway_id in trust.mesh_nodes:
            raise ConfigError(
                f"{config.trust}: mesh_node {config.gateway_id!r} has this gateway's own id;"
                " a mesh node is another gateway: give it that gateway's id"
            )
        targets = config.targets.keys()
        pin_fd = None
        if pin is None:
            policy = read_policy(config.policy, targets=targets)[0]
            check_pauses(policy, trust)  # every pause can be approved by someone
        else:
            if new:
                first, text = read_policy(config.policy, targets=targets)
                check_pauses(first, trust)
                with pin.replacing(text):
                    pass
            policy, pin_fd = _pinned(pin, config.policy, targets, trust)
        try:
            gateway = cls._made(config, node_key, trust, policy, store, now)
        except BaseException:
            if pin_fd is not None:
                os.close(pin_fd)
            raise
        gateway.policy_source = (config.policy, frozenset(config.targets))
        gateway.policy_in_force = None if pin is None else pin.path
        if pin is not None and pin_fd is not None:
            try:
                pin.hold(pin_fd)
            except BaseException:
                gateway.close()
                raise
            gateway._pin = pin
        return gateway

    @classmethod
    def _made(
        cls,
        config: GatewayConfig,
        node_key: PrivateKey,
        trust: TrustStore,
        policy: Policy,
        store: Store | None,
        now: Callable[[], float],
    ) -> Gateway:
        notifier = None
        if config.notify_command is not None or config.notify_url is not None:
            from execgate.notify import Notifier

            notifier = Notifier(
                command=config.notify_command, url=config.notify_url, timeout=config.notify_timeout
            )
        gateway = cls(
            gateway_id=config.gateway_id,
            audiences=config.audiences,
            node_key=node_key,
            trust=trust,
            policy=policy,
            store=store if store is not None else SQLiteStore(config.store),
            now=now,
            leeway=config.leeway,
            proof_max_age=config.proof_max_age,
            receipt_ttl=config.receipt_ttl,
            checkpoint_every=config.checkpoint_every,
            checkpoint_interval=config.checkpoint_interval,
            max_depth=config.max_depth,
            notify=notifier,
        )
        return gateway

    def current_policy(self) -> Policy:
        """The policy a decision starting now runs: ``policy``; for a service whose
        policy is pinned (``open``), the pinned one, taken here first when another
        process has pinned a new one since (a reload there). A pinned version that
        cannot be taken raises: decisions fail closed rather than run a policy the
        service no longer has in force."""
        pin = self._pin
        if pin is None or not pin.moved():
            return self.policy
        source = self.policy_source
        assert source is not None, "a pinned gateway was opened from a home"
        with self._taking:
            if pin.moved():
                old = self.policy
                policy, held = _pinned(pin, source[0], source[1], self.trust)
                # The policy first, then the version it is: a decision that finds the
                # pin not moved meanwhile already finds this policy.
                self.policy = policy
                pin.hold(held)
                _log.info("policy in force taken: %s -> %s", old.hash, policy.hash)
        return self.policy

    def guard(
        self,
        *,
        runtime: Runtime,
        artifact: str,
        attestation: str | Callable[[], str | None] | None = None,
    ) -> Guard:
        """A ``Guard`` that runs callables for ``runtime`` only when this gateway says so
        (DESIGN §6 ``gateway.guard``): see ``execgate.adapters.guard``."""
        from execgate.adapters.guard import Guard

        return Guard(
            self,
            runtime=runtime,
            artifact=artifact,
            audience=self.gateway_id,
            attestation=attestation,
            now=self._now,
        )

    # -- policy reload (admin) -----------------------------------------------------------

    def reload_policy(
        self,
        *,
        via: str = "api",
        admin: str | None = None,
        admin_kid: str | None = None,
        token_jti: str | None = None,
    ) -> PolicyReload:
        """Re-read the home's policy file and put it in force, or refuse it and keep the
        old one; either way an ``admin`` audit record says so (see ``_admin_log``)."""
        from execgate._admin_log import reload_policy

        return reload_policy(self, via=via, admin=admin, admin_kid=admin_kid, token_jti=token_jti)

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            if self._pin is not None:
                with self._taking:  # a take under way (in a thread beside a loop) ends first
                    self._pin.close()

    def drain_notifications(self) -> None:
        """Deliver the approval notifications this gateway's ``[approvals]`` hooks still
        hold, within their timeout (``execgate.notify.drain``); a hook of another kind is
        the caller's to wait for. For a process that ends without running what is
        registered at exit (a worker of ``serve --workers N``)."""
        from execgate.notify import Notifier, drain

        if isinstance(self._notify_hook, Notifier):
            drain(self._notify_hook)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the pipeline ------------------------------------------------------------------

    def decide(self, submission: Submission | Mapping[str, Any]) -> Decision:
        """Decide one request. Raises only ``RequestError`` for a malformed request."""
        steps = self._decide(submission)
        step: WriteJob | Decision = next(steps)
        while isinstance(step, WriteJob):  # each write the decision needs, in this thread
            try:
                index = self.store.commit(step)
            except Exception as exc:  # noqa: BLE001 - the pipeline decides what it means
                step = _resume(steps, exc)
            else:
                step = _resume(steps, index)
        return step

    async def decide_async(self, submission: Submission | Mapping[str, Any]) -> Decision:
        """``decide`` for an event loop: the stages run in the calling thread (the loop's:
        they are CPU work and short reads), and the record is group-committed with every
        other decision in flight by the loop itself once it has run what is ready (see
        ``SQLiteStore.lead_now``). With a store that cannot ``submit``, the commit runs in
        the loop's default executor. Same stages, same records, same answers as
        ``decide``. Housekeeping a decision may fall due for (purging expired replay state,
        signing a checkpoint) runs in the loop's default executor, never on the loop: it
        writes outside the batches and may wait for the writers' turn, which would stall
        every request on the loop meanwhile."""
        loop = asyncio.get_running_loop()
        store = self.store
        batching = cast("LoopCommits", store) if hasattr(store, "submit") else None

        def later(chore: Callable[[], None]) -> bool:
            try:
                loop.run_in_executor(None, chore)  # a chore never raises: nothing to await
            except Exception as exc:  # noqa: BLE001 - e.g. the executor was shut down
                _log.warning("housekeeping skipped: %s: %s", type(exc).__name__, exc)
                return False
            return True

        taken: Callable[[], Policy] | None = None  # the stages take it themselves
        pin = self._pin
        try:
            moved = pin is not None and pin.moved()
        except Exception:  # noqa: BLE001 - taken beside the loop, where it fails again
            moved = True
        if not moved and pin is not None:
            # Just looked: the pin has not moved, so the policy in force is the one held
            # (the stages would otherwise look again: a second stat per decision).
            held = self.policy

            def taken() -> Policy:
                return held
        elif moved:
            # A new version pinned (a reload in another process): read and compiled beside
            # the loop, which serves every other request meanwhile (a large policy takes
            # seconds). The stages get what came of it, a failure too (which fails the
            # decision closed), and do not take it again on the loop.
            try:
                policy = await loop.run_in_executor(None, self.current_policy)
            except Exception as exc:  # noqa: BLE001 - the stages fail closed on it
                failed = exc

                def taken() -> Policy:
                    raise failed
            else:

                def taken() -> Policy:
                    return policy

        steps = self._decide(submission, later, taken)
        step: WriteJob | Decision = next(steps)
        while isinstance(step, WriteJob):
            try:
                if batching is None:
                    index = await loop.run_in_executor(None, store.commit, step)
                else:
                    index = await self._submitted(loop, batching, step)
            except Exception as exc:  # noqa: BLE001 - the pipeline decides what it means
                step = _resume(steps, exc)
            else:
                step = _resume(steps, index)
        return step

    async def _submitted(
        self, loop: asyncio.AbstractEventLoop, store: LoopCommits, job: WriteJob
    ) -> int:
        """Submit a job, make sure a flush is scheduled, and await the job's index. Past
        ``COMMIT_TIMEOUT`` a job no writer has taken is withdrawn (it is then never
        written) and fails; one a writer has taken is awaited to its end, as ``commit``
        does."""
        future = store.submit(job, loop=loop)
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self._flush, loop, store)

        def expire() -> None:
            if store.withdraw(future) and not future.done():
                future.set_exception(
                    StoreUnavailable(f"the audit append did not start within {COMMIT_TIMEOUT:.0f}s")
                )

        timer = loop.call_later(COMMIT_TIMEOUT, expire)
        try:
            # Cancelling the task cancels this future too; the writer then finds it done
            # and leaves it (see SQLiteStore._LoopFuture.settle).
            index: int = await future
        except BaseException:
            # Nobody will hear the answer (server shutdown, an embedder's timeout, the
            # coroutine closed): a job not yet taken is withdrawn and never written; one
            # being written completes and stays in the log (nothing executes on it: its
            # answer is never given).
            store.withdraw(future)
            raise
        finally:
            timer.cancel()
        return index

    def _flush(self, loop: asyncio.AbstractEventLoop, store: LoopCommits) -> None:
        """Commit what is queued (scheduled with ``call_soon``: after the loop has run
        every callback that was ready, so the decisions made meanwhile share the batch);
        when another writer holds the store, retry shortly."""
        try:
            done = store.lead_now()
        except Exception:  # noqa: BLE001 - each job's future carries its own failure
            done = True
        except BaseException:  # an interrupt, raised on: the next submit flushes again
            self._flush_on = None
            raise
        if done:
            self._flush_on = None
        else:
            loop.call_later(_FLUSH_RETRY, self._flush, loop, store)

    def _decide(
        self,
        submission: Submission | Mapping[str, Any],
        later: Chores = _inline,
        taken: Callable[[], Policy] | None = None,
    ) -> Generator[WriteJob, int, Decision]:
        """The whole decision as a generator: it yields each write job to commit and is
        sent the job's log index (or thrown the commit's error), so ``decide`` and
        ``decide_async`` share every stage and differ only in how they wait, and in
        where housekeeping runs (``later``: in this thread, or beside the loop).
        ``taken`` gives the policy in force when the caller has taken it already (else
        ``current_policy``)."""
        if not isinstance(submission, Submission):
            submission = Submission.from_json(submission)
        observer = self.observer
        state = (
            DecisionState(decision_id=new_decision_id(), now=0)
            if observer is None
            else TimedState(new_decision_id(), 0)
        )
        state.policy = self.policy  # one policy for the whole decision (see reload_policy)
        try:
            try:
                state.now = whole_seconds(self._now())
            except Exception as exc:
                raise _Unready(f"the gateway clock cannot be read: {clock_problem(exc)}") from exc
            try:
                state.policy = (taken or self.current_policy)()
            except Exception as exc:  # this worker's log has the details
                _log.error("the policy in force cannot be taken: %s: %s", type(exc).__name__, exc)
                raise _Unready(
                    f"the service's policy in force changed and cannot be taken here"
                    f" ({type(exc).__name__})"
                ) from exc
            self._evaluate(submission, state)
        except VerificationError as exc:
            state.stop(Outcome.DENY, exc.code, exc.detail)
        except StoreError as exc:
            state.stop(Outcome.FAIL_CLOSED, "store.unavailable", str(exc))
        except _Unready as exc:
            state.stop(Outcome.FAIL_CLOSED, "internal.error", str(exc))
        except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
            state.stop(
                Outcome.FAIL_CLOSED,
                "internal.error",
                f"{type(exc).__name__} in stage {state.stage}",
            )
        self._count += 1
        if self._count % _PURGE_EVERY == 0:
            later(functools.partial(self._purge, state.now))
        if observer is None or not isinstance(state, TimedState):
            return (yield from self._record(state, later))
        state.stage = "audit"  # the record, its commit and receipt: timed as one stage
        decision = yield from self._record(state, later)
        with suppress(Exception):
            observer(decision, state.finish())
        return decision

    def _evaluate(self, submission: Submission, state: DecisionState) -> None:
        request = state.request = submission.request
        state.request_hash = submission.request_hash
        state.request_size = submission.request_size

        state.stage = "artifact"
        artifact = state.artifact = self._artifacts.verify(submission.artifact, now=state.now)

        # Revocation (stage 4) and proof replay (stage 6) are checked inside the commit
        # that records this decision (``WriteJob``), the only check that no concurrent
        # revocation or presentation can slip past; their reasons come first there.

        state.stage = "binding"
        if request.runtime != artifact.subject:
            raise VerificationError(
                "identity.mismatch", f"runtime {request.runtime!r} is not the artifact's subject"
            )
        state.proof = verify_proof(
            submission.proof,
            jkt=artifact.jkt,
            request_hash=submission.request_hash,
            ath=artifact.digest,
            audiences=self.audiences,
            now=state.now,
            max_age=self._proof_max_age,
            leeway=self._leeway,
        )

        state.stage = "replay"
        for link in artifact.chain:  # a child's use is also a use of every limited ancestor
            if link.uses is not None and self.store.uses_consumed(link.digest) >= link.uses:
                raise VerificationError(
                    "artifact.exhausted", f"all {link.uses} uses of {link.jti} are spent"
                )

        state.stage = "environment"
        environment: dict[str, str] = {}
        if artifact.env:
            environment, attester = verify_attestation_by(
                submission.attestation,
                trust=self.trust,
                runtime=request.runtime,
                jkt=artifact.jkt,
                now=state.now,
                leeway=self._leeway,
            )
            check_environment(artifact.env, environment)
            state.grounds.append(
                (("kid", attester), "environment.untrusted", "the attestation's attester key")
            )

        state.stage = "scope"
        miss = check_scope(artifact.grants, request.action, request.resource, request.args)
        if miss is not None:
            raise VerificationError(miss.code, miss.detail)

        state.stage = "lineage"
        if request.parent is not None:
            state.parent = verify_parent(
                request.parent,
                gateway_id=self.gateway_id,
                node_key=self.node_key.public,
                trust=self.trust,
                child_links=[link.digest for link in artifact.chain],
                now=state.now,
                leeway=self._leeway,
            )
            state.grounds.append(
                (("kid", state.parent.kid), "lineage.broken", "the parent receipt's signing key")
            )

        state.stage = "policy"
        policy = state.policy
        assert policy is not None
        pinned = artifact.gov.get("policy")
        if pinned is not None and pinned != policy.hash:
            raise VerificationError(
                "policy.mismatch", f"artifact pins policy {pinned}, loaded is {policy.hash}"
            )
        result = policy.evaluate(
            request=request.for_conditions(),
            artifact=policy_view(artifact),
            environment=environment,
            now=state.now,
        )
        state.rule = result.rule
        state.outcome = result.outcome
        state.route = result.target
        if result.code is not None:
            state.reasons = [Reason(result.code, result.detail)]
        if result.outcome is Outcome.PAUSE:
            state.stage = "approval"
            assert result.pause is not None
            assert result.rule is not None
            self._pause_or_resume(state, artifact, result.rule, result.pause)
        state.stage = "audit"

    # -- audit and receipt -------------------------------------------------------------

    def _record_dict(self, state: DecisionState) -> dict[str, Any]:
        artifact, proof = state.artifact, state.proof
        return {
            "v": RECORD_VERSION,
            "kind": "decision",
            "decision_id": state.decision_id,
            "gateway": self.gateway_id,
            "at": state.now,
            "outcome": state.outcome.value,
            "reasons": [r.to_json() for r in state.reasons],
            "rule": state.rule,
            "route": state.route,
            "approval_id": state.approval,
            "approvers": state.approvers,
            "parent_decision": state.parent.decision_id if state.parent else None,
            "parent_gateway": state.parent.gateway if state.parent else None,
            **self._logged_request(state),
            "request_hash": state.request_hash,
            "artifact_jti": artifact.jti if artifact else None,
            "chain": [link.jti for link in artifact.chain] if artifact else [],
            # Each link, root first: who signed it (kid), whom it names (sub) and the key
            # it binds (jkt), so a revocation can be traced down the chain exactly.
            "chain_links": [
                {
                    "jti": link.jti,
                    "kid": link.kid,
                    "sub": link.subject,
                    "jkt": link.jkt,
                    "digest": link.digest,
                }
                for link in artifact.chain
            ]
            if artifact
            else [],
            "issuer": artifact.issuer if artifact else None,
            "issuer_kid": artifact.kid if artifact else None,
            "subject": artifact.subject if artifact else None,
            "runtime_jkt": artifact.jkt if artifact else None,
            "proof_jti": proof.jti if proof else None,
            "policy_hash": state.policy_hash,
            # What else the decision stood on (an attester's or a parent receipt's key,
            # the approvers' keys and names), each with the code its revocation gives:
            # a revocation's cascade finds these decisions too.
            "grounds": [
                {"kind": kind, "value": value, "code": code}
                for (kind, value), code, _ in state.grounds
            ],
        }

    @staticmethod
    def _logged_request(state: DecisionState) -> dict[str, Any]:
        """The request as its record holds it: whole, except when no proof of possession
        verified (so nothing says who sent it) and it is over ``ANONYMOUS_REQUEST_BYTES``.
        Anyone reaching the gateway can send such a request, and its arguments (up to
        1 MiB) would otherwise stay in the permanent log, a megabyte per call; the record
        keeps the action, resource, runtime and parent, ``request_hash`` still binds the
        whole request, and ``args_omitted`` says the arguments were left out."""
        if state.request is None:
            return {"request": None}
        request = state.request.canonical()
        if state.proof is None and state.request_size > ANONYMOUS_REQUEST_BYTES:
            del request["args"]
            return {"request": request, "args_omitted": True}
        return {"request": request}

    def _record(self, state: DecisionState, later: Chores) -> Generator[WriteJob, int, Decision]:
        made: list[Decision] = []
        artifact, proof = state.artifact, state.proof
        retry = False

        def finalize(conflict: str | None, index: int) -> bytes:
            if conflict == Conflict.REPLAY:
                state.stop(Outcome.DENY, "replay.detected", "this proof has been presented before")
            elif conflict == Conflict.REVOKED:
                found = _held(sent).revoked
                key = None if found is None else (found.kind, found.value)
                ground = next((g for g in state.grounds if g[0] == key), None)
                if found is not None and ground is not None:
                    state.stop(
                        Outcome.DENY,
                        ground[1],
                        f"{ground[2]}: {found.kind} {found.value} is revoked: {found.reason}",
                    )
                else:
                    state.stop(
                        Outcome.DENY,
                        "artifact.revoked",
                        "revoked"
                        if found is None
                        else f"{found.kind} {found.value} revoked: {found.reason}",
                    )
            elif conflict == Conflict.APPROVAL_CLOSED:
                state.stop(
                    Outcome.DENY,
                    "approval.required",
                    f"approval {state.approval} was used or closed by another decision meanwhile",
                )
            elif conflict == Conflict.APPROVAL_DENIED:
                denied = _held(sent).denied
                state.stop(
                    Outcome.DENY,
                    "approval.denied",
                    f"approval {denied} of this request under rule {state.rule!r} was denied"
                    " meanwhile",
                )
                state.open_approval, state.approval = None, denied
            elif conflict == Conflict.APPROVAL_EXPIRED:
                state.stop(
                    Outcome.DENY,
                    "approval.expired",
                    f"approval {state.approval} expired before this decision was recorded:"
                    " ask again to open a new one",
                )
            elif conflict == Conflict.EXHAUSTED:
                assert artifact is not None
                spent = _held(sent).exhausted
                link = next((k for k in artifact.chain if spent and k.digest == spent.jti), None)
                state.stop(
                    Outcome.DENY,
                    "artifact.exhausted",
                    "all uses are spent"
                    if link is None
                    else f"all {link.uses} uses of {link.jti} are spent",
                )
            elif conflict == Conflict.APPROVAL_OPEN:
                state.stop(
                    Outcome.PAUSE,
                    "approval.required",
                    "another decision opened the approval for this request meanwhile:"
                    " ask again to wait on it",
                )
                state.approval, state.open_approval = None, None
            elif conflict == Conflict.PURGED:
                state.stop(Outcome.FAIL_CLOSED, "store.unavailable", PURGED_DETAIL)
            elif conflict is not None:  # a store's answer this gateway does not know
                state.stop(
                    Outcome.FAIL_CLOSED,
                    "store.unavailable",
                    f"the store answered an unknown conflict {conflict!r}",
                )
            if conflict is not None and conflict != Conflict.APPROVAL_OPEN:
                # The store wrote none of the claims: an approval being opened was not
                # (the decision names none), and one being used was not used (it names
                # it, but no approvers it went through on).
                if state.open_approval is not None:
                    state.approval = state.open_approval = None
                state.approvers = []  # and the grounds it would have stood on with them
                state.grounds = [g for g in state.grounds if g[1] != "approval.required"]
            record = self._record_dict(state)
            receipt: str | None
            try:
                receipt = sign_receipt(
                    key=self.node_key,
                    gateway_id=self.gateway_id,
                    record=record,
                    log_index=index,
                    ttl=self._receipt_ttl,
                )
            except Exception as exc:  # an unsigned decision executes nothing
                state.stop(Outcome.FAIL_CLOSED, "internal.error", f"receipt signing failed: {exc}")
                if not retry:
                    # Roll back this job's replay and use claims (nothing executes, so
                    # nothing is consumed); it is logged below as fail_closed without them.
                    raise _Unsigned from exc
                record, receipt = self._record_dict(state), None
            made.append(self._decision(state, index, receipt))
            return canonical_json(record)

        use: UseClaim | None = None
        chain_uses: tuple[UseClaim, ...] = ()
        if state.outcome.executes and artifact is not None:
            claims = tuple(
                # Counted per exact link (its token's digest), not per jti: a jti is chosen
                # by whoever mints the link and may collide with another's.
                UseClaim(link.digest, link.uses, link.expires + self._leeway, self._leeway)
                for link in artifact.chain
                if link.uses is not None
            )
            if claims:
                use, chain_uses = claims[-1], claims[:-1]
        job = WriteJob(
            proof_jti=proof.jti if proof else None,
            proof_expires_at=(proof.issued_at if proof else 0) + self._proof_max_age + self._leeway,
            proof_window=self._proof_max_age + self._leeway,
            use=use,
            finalize=finalize,
            decision_id=state.decision_id,
            chain_uses=chain_uses,
            open_approval=(
                ApprovalRow(
                    state.open_approval.approval_id,
                    "pending",
                    json.dumps(state.open_approval.to_json()),
                )
                if state.open_approval is not None and state.outcome is Outcome.PAUSE
                else None
            ),
            consume_approval=state.consume_approval if state.outcome.executes else None,
            asker=state.asker,
            clock=self._now,
            revocation_keys=(
                (*artifact.revocation_keys(), *(g[0] for g in state.grounds))
                if artifact is not None
                else ()
            ),
        )
        # finalize reads the job through a weak reference: the job holds finalize, and a
        # closure over the job itself would make each decision a reference cycle, left
        # for the garbage collector instead of freed when its answer is given.
        sent = weakref.ref(job)
        try:
            index = yield job
        except AuditError as exc:
            return self._unlogged(state, str(exc), store_down=isinstance(exc, StoreUnavailable))
        except _Unsigned:
            pass  # the state already says fail_closed / internal.error
        except Exception as exc:  # noqa: BLE001 - log the failure instead
            state.stop(
                Outcome.FAIL_CLOSED, "internal.error", f"{type(exc).__name__} in stage audit"
            )
        else:
            # The record is durable: from here on nothing may change the decision.
            self._checkpoint_soon(index + 1, state.now, later)
            decision = made[-1]
            if decision.outcome is Outcome.PAUSE and state.open_approval is not None:
                self._notify("opened", state.open_approval, decision)
            elif decision.executes and state.consume_approval is not None:
                self._notify("resumed", None, decision)
            return decision
        made.clear()
        retry = True
        if state.open_approval is not None:  # rolled back with the job: never opened
            state.approval, state.open_approval = None, None
        try:
            yield WriteJob(None, 0, None, finalize, decision_id=state.decision_id)
            return made[-1]
        except Exception as exc:  # noqa: BLE001
            return self._unlogged(
                state,
                f"{type(exc).__name__}: {exc}",
                store_down=isinstance(exc, StoreUnavailable),
            )

    def _decision(self, state: DecisionState, index: int | None, receipt: str | None) -> Decision:
        artifact = state.artifact
        return Decision(
            decision_id=state.decision_id,
            outcome=state.outcome,
            reasons=tuple(state.reasons),
            request_hash=state.request_hash,
            policy_hash=state.policy_hash,
            decided_at=state.now,
            artifact_jti=artifact.jti if artifact else None,
            chain=tuple(link.jti for link in artifact.chain) if artifact else (),
            rule=state.rule,
            route=state.route,
            log_index=index,
            receipt=receipt,
            approval_id=state.approval,
        )

    def _unlogged(self, state: DecisionState, detail: str, *, store_down: bool = False) -> Decision:
        """The log could not take the record: nothing may execute, and we say so (and
        that the store is down, when it is). An approval this decision was opening was not
        opened: its reason and id go."""
        kept = [] if state.outcome.executes else state.reasons
        if state.open_approval is not None:
            kept = [r for r in kept if r.code != "approval.required"]
            state.approval, state.open_approval = None, None
        state.stop(Outcome.FAIL_CLOSED, "audit.unavailable", detail)
        said = any(r.code == "store.unavailable" for r in kept)
        down = [Reason("store.unavailable", detail)] if store_down and not said else []
        state.reasons = [*kept, *down, *state.reasons]
        return self._decision(state, None, None)

    def _checkpoint_soon(self, size: int, now: int, later: Chores) -> None:
        """Hand a checkpoint to ``later`` when one is due and none is on its way already
        (the decisions of one batch all find it due until it is made)."""
        if self._checkpoint_queued or not self._checkpoint_due(size, now):
            return
        self._checkpoint_queued = True

        def chore() -> None:
            try:
                self._checkpoint_if_due(size, now)
            finally:
                self._checkpoint_queued = False

        if not later(chore):
            self._checkpoint_queued = False

    def _purge(self, now: int) -> None:
        """Forget replay and use state that no gateway on this store could still need.

        A row's expiry was set by whichever process wrote it, with that process's
        ``proof_max_age`` and ``leeway``; one configured wider since (a gateway restarted
        with a longer proof age) would still accept that proof, or that artifact's use.
        So rows are kept this process's own window longer than their expiry: whatever
        the writer's limits were, a row goes only once no limit this process applies
        could accept what it records. (The processes of one store share one home, and
        so one ``[limits]``, except while a changed home is being rolled out.) And they
        are kept ``PURGE_LAG`` longer still: the store refuses any claim whose own time
        (a proof's ``iat``, an artifact's ``exp``) is before the latest expiry a purge
        removed, at most the purge's cutoff (``Conflict.PURGED``, against a clock gone
        back), and a decision of another process may commit that long after it was
        evaluated. A failed purge only lets replay state grow until the next one, and is
        never the decision's concern (a chore: see ``_decide``)."""
        try:
            self.store.purge_expired(now - self._proof_max_age - self._leeway - PURGE_LAG)
        except Exception as exc:  # noqa: BLE001
            _log.warning(
                "expired replay state not purged: %s: %s",
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, StoreError),  # a store that is down is no bug
            )
