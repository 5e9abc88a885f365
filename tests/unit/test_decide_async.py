"""``Gateway.decide_async``: the same decisions as ``decide``, group-committed by the
loop itself (or by whichever thread leads the batch), and failing closed when no writer
takes the record in time."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gatekit import GATEWAY_ID, Kit, make_kit

import execgate.pipeline as pipeline
from execgate.delegation import delegate_artifact
from execgate.errors import AuditError
from execgate.jose import PrivateKey
from execgate.model import Outcome, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.store import sqlite as sqlite_store
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore
from execgate.store.unavailable import UnavailableStore


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def test_async_decisions_match_sync_ones_and_replays_are_caught(kit: Kit) -> None:
    gateway = kit.gateway()
    submission = kit.submit()
    first = asyncio.run(gateway.decide_async(submission))
    again = asyncio.run(gateway.decide_async(submission))
    refund = gateway.decide(kit.submit(kit.request("payments.refund", amount=1)))
    refund_async = asyncio.run(
        gateway.decide_async(kit.submit(kit.request("payments.refund", amount=1)))
    )
    assert first.outcome is Outcome.PROCEED
    assert first.receipt
    assert [r.code for r in again.reasons] == ["replay.detected"]
    assert (refund.outcome, refund.reasons[0].code) == (
        refund_async.outcome,
        refund_async.reasons[0].code,
    )
    assert [first.log_index, again.log_index] == [0, 1]


def test_concurrent_async_decisions_share_commits_and_keep_indexes_dense(kit: Kit) -> None:
    gateway = kit.gateway()
    submissions = [kit.submit() for _ in range(64)]

    async def all_of_them() -> list[int | None]:
        made = await asyncio.gather(*(gateway.decide_async(s) for s in submissions))
        assert {d.outcome for d in made} == {Outcome.PROCEED}
        return [d.log_index for d in made]

    indexes = asyncio.run(all_of_them())
    assert sorted(i for i in indexes if i is not None) == list(range(64))
    assert gateway.store.size() == 64


def test_a_decision_leaves_no_reference_cycle(kit: Kit) -> None:
    """A decision's objects go when its answer is given (reference counting), not at
    the garbage collector's next pass: a served worker makes thousands a second, and
    what survives into older generations makes each collection pause longer."""
    gateway = kit.gateway()
    gateway.observer = lambda decision, stages: None  # timed stages too, as served

    async def some() -> None:
        made = await asyncio.gather(*(gateway.decide_async(kit.submit()) for _ in range(8)))
        assert {d.outcome for d in made} == {Outcome.PROCEED}

    asyncio.run(some())  # caches warm
    ours = {
        "WriteJob",
        "Decision",
        "DecisionState",
        "TimedState",
        "_Pending",
        "_LoopFuture",
        "Artifact",
    }
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        asyncio.run(some())
        assert gateway.decide(kit.submit()).outcome is Outcome.PROCEED
        runner = Runtime("agent-2", PrivateKey.generate())
        child = delegate_artifact(  # a delegated chain: an artifact with links above it
            parent=kit.artifact(ttl=3600),
            holder_key=kit.runtime.key,
            subject=runner.runtime_id,
            runtime_key=runner.key.public,
            scope=[{"action": "payments.transfer", "resource": "acct:**"}],
            now=kit.clock.now,
        )
        request = Request("payments.transfer", "acct:1", runner.runtime_id, {"amount": 5})
        submission = runner.submission(request, child, audience=GATEWAY_ID, now=kit.clock.now)
        delegated = gateway.decide(submission)
        assert (delegated.outcome, len(delegated.chain)) == (Outcome.PROCEED, 2)
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage} & ours)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


def test_a_record_no_writer_takes_in_time_fails_closed_and_is_never_written(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stuck inside the store (here: its lock held) must not leave the caller
    waiting forever, nor write the record after the caller was told it failed."""
    gateway = kit.gateway()
    store = gateway.store
    assert isinstance(store, SQLiteStore)
    monkeypatch.setattr(pipeline, "COMMIT_TIMEOUT", 0.2)
    store._writer_lock.acquire()
    try:
        decision = asyncio.run(gateway.decide_async(kit.submit()))
    finally:
        store._writer_lock.release()
    assert decision.outcome is Outcome.FAIL_CLOSED
    assert [r.code for r in decision.reasons] == ["store.unavailable", "audit.unavailable"]
    assert decision.log_index is None
    later = gateway.decide(kit.submit())  # the writer runs again; the withdrawn job stays out
    assert later.log_index == 0
    assert store.size() == 1
    assert json.loads(store.entries(0, 1)[0].entry)["decision_id"] == later.decision_id


def test_a_loop_waiting_for_another_writer_tries_again_at_most_once_a_millisecond(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process holds the writers' turn, the loop of ``execgate serve``
    (uvloop) tries the store again now and then, not on every turn of the loop: uvloop
    runs a timer that rounds to no whole millisecond at once, and 0.3 ms made the loop
    spin through some 300,000 tries a second, CPU taken from the worker that was
    writing."""
    uvloop = pytest.importorskip("uvloop")
    gateway = kit.gateway()
    store = gateway.store
    assert isinstance(store, SQLiteStore)
    tries: list[bool] = []
    lead_now = SQLiteStore.lead_now

    def counted(self: SQLiteStore) -> bool:
        done = lead_now(self)
        tries.append(done)
        return done

    monkeypatch.setattr(SQLiteStore, "lead_now", counted)
    other = os.open(store.path + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    held = time.monotonic()
    released: list[float] = []

    def release() -> None:
        fcntl.flock(other, fcntl.LOCK_UN)
        released.append(time.monotonic())

    fcntl.flock(other, fcntl.LOCK_EX)  # another process's writer has the turn
    timer = threading.Timer(0.3, release)
    timer.start()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            decision = runner.run(gateway.decide_async(kit.submit()))
    finally:
        timer.join()
        os.close(other)
    assert decision.outcome is Outcome.PROCEED
    assert decision.log_index == 0
    assert tries[-1] is True  # the last try wrote it
    assert tries.count(True) == 1
    # At most one try a millisecond while the turn was held, and twice that for slack;
    # the spinning loop made about 100,000 in 0.3 s.
    assert len(tries) <= 2 * (released[0] - held) * 1000 + 10


def test_a_store_without_submit_commits_in_the_executor(kit: Kit) -> None:
    down = kit.gateway(store=UnavailableStore("the disk is gone"))
    decision = asyncio.run(down.decide_async(kit.submit()))
    assert decision.outcome is Outcome.FAIL_CLOSED
    assert not hasattr(down.store, "submit")


def test_closing_the_store_fails_what_is_queued(kit: Kit) -> None:
    gateway: Gateway = kit.gateway()
    store = gateway.store
    assert isinstance(store, SQLiteStore)
    store._writer_lock.acquire()  # the writer thread starts and waits for the lock
    future = store.submit(WriteJob(None, 0, None, lambda conflict, index: b"{}", decision_id="x"))
    closing = threading.Thread(target=store.close)
    closing.start()
    while not store._closed:  # close has begun before the writer may run again
        time.sleep(0.01)
    store._writer_lock.release()
    closing.join(timeout=30)
    with pytest.raises(AuditError, match="closed"):
        future.result(timeout=10)
    assert not closing.is_alive()


def test_a_cancelled_decision_is_withdrawn_and_the_next_ones_still_commit(kit: Kit) -> None:
    """The awaiting task cancelled before its record was taken (a server shutting down,
    an embedder's timeout): the record is never written, and the store keeps working."""
    gateway = kit.gateway()
    store = gateway.store
    assert isinstance(store, SQLiteStore)

    async def cancel_one_then_decide() -> Outcome:
        store._writer_lock.acquire()  # no writer may take the job yet
        task = asyncio.create_task(gateway.decide_async(kit.submit()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store._writer_lock.release()
        after = await gateway.decide_async(kit.submit())
        return after.outcome

    assert asyncio.run(cancel_one_then_decide()) is Outcome.PROCEED
    assert store.size() == 1  # only the second decision


def test_a_future_cancelled_under_a_writer_does_not_break_the_batch(kit: Kit) -> None:
    store = kit.gateway().store
    assert isinstance(store, SQLiteStore)
    job = WriteJob(None, 0, None, lambda conflict, index: b"{}", decision_id="a")
    cancelled = store.submit(job)
    kept = store.submit(WriteJob(None, 0, None, lambda conflict, index: b"{}", decision_id="b"))
    assert cancelled.cancel()
    assert store.lead_now()
    assert kept.result(timeout=10) == 1  # written after the cancelled one, and told so
    assert store.size() == 2


def test_a_flush_left_on_a_closed_loop_does_not_stall_the_next_loop(kit: Kit) -> None:
    gateway = kit.gateway()
    closed = asyncio.new_event_loop()
    closed.close()
    gateway._flush_on = closed  # a flush that was scheduled there and never ran
    started = time.monotonic()
    decision = asyncio.run(gateway.decide_async(kit.submit()))
    assert decision.outcome is Outcome.PROCEED
    assert time.monotonic() - started < 5  # not the 30 s commit timeout


def test_a_loop_job_written_by_another_thread_is_told_on_its_loop(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``commit`` caller in another thread may lead the batch that holds a job the
    loop submitted: the loop's future is then settled on the loop, thread-safely."""
    store = kit.gateway().store
    assert isinstance(store, SQLiteStore)
    settled_in: list[int] = []
    settle = sqlite_store._LoopFuture.settle

    def recording(future: sqlite_store._LoopFuture, result: int | BaseException) -> None:
        settled_in.append(threading.get_ident())
        settle(future, result)

    monkeypatch.setattr(sqlite_store._LoopFuture, "settle", recording)

    def job(name: str) -> WriteJob:
        return WriteJob(None, 0, None, lambda conflict, index: b"{}", decision_id=name)

    async def submit_then_let_a_thread_write() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        future = store.submit(job("from-the-loop"), loop=loop)
        assert isinstance(future, asyncio.Future)
        other = await loop.run_in_executor(None, store.commit, job("from-a-thread"))
        return await asyncio.wait_for(future, timeout=10), other

    mine, other = asyncio.run(submit_then_let_a_thread_write())
    assert (mine, other) == (0, 1)  # queued first, so written first, by the thread
    assert store.size() == 2
    assert settled_in == [threading.get_ident()]  # asyncio.run's loop runs in this thread


def test_housekeeping_waits_beside_the_loop_not_on_it(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge falls due while another process holds the writers' turn (a worker mid-
    commit, or stopped): it waits for the turn beside the loop, so everything else on
    the loop (other requests, /healthz) is served meanwhile. On the loop it stalled
    them all for as long as it waited."""
    gateway = kit.gateway()
    store = gateway.store
    assert isinstance(store, SQLiteStore)
    monkeypatch.setattr(pipeline, "_PURGE_EVERY", 1)  # this decision's purge falls due
    monkeypatch.setattr(pipeline, "COMMIT_TIMEOUT", 0.5)
    monkeypatch.setattr(sqlite_store, "_COMMIT_TIMEOUT", 2.0)  # the purge's wait
    held = os.open(store.path + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # another process's turn

    async def decide_while_ticking() -> tuple[Outcome, float]:
        longest = 0.0

        async def tick() -> None:  # another request on the loop, in small steps
            nonlocal longest
            for _ in range(100):
                before = time.monotonic()
                await asyncio.sleep(0.01)
                longest = max(longest, time.monotonic() - before)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)  # the ticker is running first
        decision = await gateway.decide_async(kit.submit())
        await ticker
        return decision.outcome, longest

    try:
        outcome, longest = asyncio.run(decide_while_ticking())
    finally:
        os.close(held)  # the purge gets its turn (or has given up)
    assert outcome is Outcome.FAIL_CLOSED  # its own record could not be written meanwhile
    assert longest < 1.0  # the loop never waited for the purge's 2 s


def test_housekeeping_runs_in_the_callers_thread_for_decide_and_beside_the_loop_for_async(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = kit.gateway()
    monkeypatch.setattr(pipeline, "_PURGE_EVERY", 1)
    gateway._checkpoint_every = 1  # every decision signs a checkpoint
    threads: list[tuple[str, int]] = []
    purge, checkpoint = gateway._purge, gateway._checkpoint_if_due

    def purged(now: int) -> None:
        threads.append(("purge", threading.get_ident()))
        purge(now)

    def checkpointed(size: int, now: int) -> None:
        threads.append(("checkpoint", threading.get_ident()))
        checkpoint(size, now)

    monkeypatch.setattr(gateway, "_purge", purged)
    monkeypatch.setattr(gateway, "_checkpoint_if_due", checkpointed)
    assert gateway.decide(kit.submit()).outcome is Outcome.PROCEED
    me = threading.get_ident()
    assert threads == [("purge", me), ("checkpoint", me)]

    async def on_the_loop() -> int:
        assert (await gateway.decide_async(kit.submit())).outcome is Outcome.PROCEED
        return threading.get_ident()

    threads.clear()
    loop_thread = asyncio.run(on_the_loop())  # returns once the executor has finished
    assert sorted(name for name, _ in threads) == ["checkpoint", "purge"]
    assert all(thread != loop_thread for _, thread in threads)
    assert [size for size, _ in gateway.store.recent_checkpoints()][:1] == [2]


def test_a_decision_stands_when_its_housekeeping_cannot_be_handed_off(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's executor already shut down (an embedder winding its loop down): the
    durable decision is still returned; only the purge and checkpoint are skipped."""
    gateway = kit.gateway()
    monkeypatch.setattr(pipeline, "_PURGE_EVERY", 1)
    gateway._checkpoint_every = 1

    async def after_shutdown() -> Outcome:
        await asyncio.get_running_loop().shutdown_default_executor()
        return (await gateway.decide_async(kit.submit())).outcome

    assert asyncio.run(after_shutdown()) is Outcome.PROCEED
    assert gateway.store.size() == 1
    assert not gateway._checkpoint_queued  # the next decision may hand one off again


def test_one_checkpoint_is_on_its_way_at_a_time(kit: Kit) -> None:
    """Every decision of a batch finds a checkpoint due until it is made: only the first
    hands one off."""
    gateway = kit.gateway()
    gateway._checkpoint_every = 1
    handed: list[Callable[[], None]] = []

    def later(chore: Callable[[], None]) -> bool:
        handed.append(chore)
        return True

    for size in (1, 2, 3):
        gateway._checkpoint_soon(size, kit.clock.now, later)
    assert len(handed) == 1
    handed.pop()()  # it runs (no entries yet: nothing to sign) and is off its way
    gateway._checkpoint_soon(4, kit.clock.now, later)
    assert len(handed) == 1
    gateway._checkpoint_queued = False
    gateway._checkpoint_soon(5, kit.clock.now, lambda chore: False)  # could not hand off
    assert not gateway._checkpoint_queued
