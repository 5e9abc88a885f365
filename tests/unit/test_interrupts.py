"""An interrupt (KeyboardInterrupt in an embedder's REPL or agent loop, a coroutine
closed) wherever a decision waits to be written: it reaches the caller, nothing is left
held (this process's writer lock, the writers' turn other processes wait for), and a
decision nobody heard is never written later as if it had been answered. And the two
answers from outside the pipeline it must not trust: a store's unknown conflict and a
clock's reading out of range."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from gatekit import NOW, Kit, make_kit

import execgate.pipeline as pipeline
from execgate.errors import StoreUnavailable
from execgate.model import Decision, Outcome
from execgate.store import sqlite as sqlite_store
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def _store(kit: Kit) -> tuple[pipeline.Gateway, SQLiteStore]:
    gateway = kit.gateway()
    assert isinstance(gateway.store, SQLiteStore)
    return gateway, gateway.store


class _InterruptedOnce:
    """A lock whose first timed ``acquire`` is interrupted (as by Ctrl-C)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.armed = True

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.armed and timeout != -1:
            self.armed = False
            raise KeyboardInterrupt
        return bool(self.lock.acquire(blocking, timeout))

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _turn_free_to_another_process(lock_file: str) -> bool:
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code, lock_file], check=False).returncode == 0


def test_an_interrupt_waiting_for_another_processes_turn_leaves_the_turn_free(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait is a helper thread's blocking flock: interrupted, the helper is given up
    on, so it lets go of the turn the moment it gets it. It kept it for good (every
    other process on the home then waited out its commit timeout and failed closed),
    and the interrupt was swallowed into a fail_closed answer."""
    gateway, store = _store(kit)
    lock_file = store._real + "-writer.lock"

    class Interrupted(sqlite_store._TurnWaiter):
        def __init__(self, path: str) -> None:
            super().__init__(path)
            real = self.taken.wait

            def wait(timeout: float | None = None) -> bool:
                self.taken.wait = real  # type: ignore[method-assign]
                raise KeyboardInterrupt

            self.taken.wait = wait  # type: ignore[method-assign]

    monkeypatch.setattr(sqlite_store, "_TurnWaiter", Interrupted)
    other = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)  # another process, writing
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        with pytest.raises(KeyboardInterrupt):
            gateway.decide(kit.submit())
    finally:
        os.close(other)  # it lets go
    deadline = time.monotonic() + 10
    while not _turn_free_to_another_process(lock_file):
        assert time.monotonic() < deadline, "the writers' turn is still held"
        time.sleep(0.05)
    assert gateway.decide(kit.submit()).log_index == 0  # nothing was written before it


@pytest.mark.parametrize("where", ["commit", "probe"])
def test_an_interrupt_just_after_the_turn_is_taken_leaves_it_free(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C lands right after the non-blocking flock took the writers' turn, before
    the block that lets go of it: the turn stayed held until the store closed, and
    every other process on the home failed closed meanwhile."""
    gateway, store = _store(kit)
    real = fcntl.flock

    def interrupted(fd: int, operation: int) -> None:
        real(fd, operation)
        if operation == fcntl.LOCK_EX | fcntl.LOCK_NB:
            monkeypatch.setattr(fcntl, "flock", real)
            raise KeyboardInterrupt

    monkeypatch.setattr(fcntl, "flock", interrupted)
    submission = kit.submit()
    writes: dict[str, Callable[[], object]] = {
        "commit": lambda: gateway.decide(submission),
        "probe": lambda: store.check_writable(1.0),
    }
    with pytest.raises(KeyboardInterrupt):
        writes[where]()
    monkeypatch.undo()
    assert _turn_free_to_another_process(store._real + "-writer.lock")
    assert gateway.decide(kit.submit()).log_index == 0


def test_an_interrupt_waiting_to_write_withdraws_the_decision(kit: Kit) -> None:
    """Interrupted while another thread writes: the caller hears nothing and runs
    nothing, so the decision must not be written by the next writer as if it had been
    answered (its artifact's single use spent on a call that never ran)."""
    gateway, store = _store(kit)
    artifact = kit.artifact(uses=1)
    store._writer_lock = _InterruptedOnce(store._writer_lock)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        gateway.decide(kit.submission(kit.request(amount=100), artifact))
    assert store.size() == 0
    assert gateway.decide(kit.submit()).outcome is Outcome.PROCEED
    assert [r["decision_id"] for r in kit.records()] == [kit.records()[0]["decision_id"]]
    again = gateway.decide(kit.submission(kit.request(amount=100), artifact))
    assert again.outcome is Outcome.PROCEED  # its one use is still there


def test_an_async_decision_closed_while_its_record_waits_is_never_written(kit: Kit) -> None:
    """The coroutine closed (its loop torn down) rather than cancelled: the same as a
    cancel, the queued record is withdrawn."""
    gateway, store = _store(kit)
    artifact = kit.artifact(uses=1)
    store._writer_lock.acquire()  # another thread writes: the loop's flush retries
    loop = asyncio.new_event_loop()
    try:
        coroutine = gateway.decide_async(kit.submission(kit.request(amount=100), artifact))
        task = loop.create_task(coroutine)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert not task.done()
        assert store._queue.qsize() == 1
    finally:
        loop.close()
        coroutine.close()  # GeneratorExit where it awaits its record
        store._writer_lock.release()
    assert gateway.decide(kit.submit()).log_index == 0
    assert store.size() == 1
    again = gateway.decide(kit.submission(kit.request(amount=100), artifact))
    assert again.outcome is Outcome.PROCEED


def test_an_interrupt_in_a_loops_flush_leaves_the_next_decisions_flushed(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush raised through the loop (Ctrl-C) and the embedder goes on with the
    same loop: its next decisions are flushed, not left to time out."""
    monkeypatch.setattr(pipeline, "COMMIT_TIMEOUT", 3.0)
    gateway, store = _store(kit)
    real, calls = store.lead_now, []

    def lead_now() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real()

    monkeypatch.setattr(store, "lead_now", lead_now)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(gateway.decide_async(kit.submit()))
        started = time.monotonic()
        decision = loop.run_until_complete(gateway.decide_async(kit.submit()))
        assert decision.outcome is Outcome.PROCEED
        assert time.monotonic() - started < 2.5  # flushed, not failed at the timeout
    finally:
        loop.close()


def test_an_interrupt_while_a_batch_is_taken_fails_what_it_took(kit: Kit) -> None:
    """Interrupted between taking one job and the next: the job taken is failed (its
    caller fails closed), not left taken with nobody to write or answer it."""
    gateway, store = _store(kit)
    queued = store.submit(WriteJob(None, 0, None, lambda _c, _i: b"{}", decision_id="a"))
    real = store._queue
    taken: list[object] = []

    class Interrupted:
        def get_nowait(self) -> object:
            if taken:
                raise KeyboardInterrupt  # the signal lands on the second take
            taken.append(real.get_nowait())
            return taken[0]

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    store._queue = Interrupted()  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            gateway.decide(kit.submit())  # leads, and takes the queued job first
    finally:
        store._queue = real
    with pytest.raises(StoreUnavailable, match="audit append failed: KeyboardInterrupt"):
        queued.result(timeout=5)
    assert gateway.decide(kit.submit()).outcome is Outcome.PROCEED
    assert store.size() == 1


def test_a_conflict_the_gateway_does_not_know_fails_closed(kit: Kit, tmp_path: Path) -> None:
    """A store (a newer one, another kind) answers a conflict this gateway has no case
    for: nothing was claimed (the proof not spent, no use taken), so the decision must
    not stand. It was kept as decided: the same proof went through three times."""

    class Newer(SQLiteStore):
        @staticmethod
        def _claim(conn: Any, job: Any, purged: tuple[int, int]) -> str | None:
            return "serialization_failure"

    gateway = kit.gateway(Newer(tmp_path / "newer.db"))
    submission = kit.submit()
    for _ in range(2):
        decision = gateway.decide(submission)
        assert decision.outcome is Outcome.FAIL_CLOSED
        assert [r.code for r in decision.reasons] == ["store.unavailable"]
        assert "unknown conflict 'serialization_failure'" in decision.reasons[0].detail


def _decided_at(kit: Kit, gateway: pipeline.Gateway, reading: object) -> Decision:
    """A decision made while the clock reads ``reading``."""
    submission = kit.submit()
    kit.clock.t = reading  # type: ignore[assignment]
    try:
        return gateway.decide(submission)
    finally:
        kit.clock.t = NOW


@pytest.mark.parametrize(
    "reading",
    [
        2**53,
        10**30,
        pytest.param(10**5000, id="10**5000"),
        1e20,
        253_402_300_800,
        -1,
        "1700000000",
        True,
        None,
    ],
)
def test_a_clock_reading_out_of_range_fails_closed_and_is_logged(kit: Kit, reading: object) -> None:
    """A reading past the year 9999 (past 2**53, the record could not even be written:
    nothing was logged), a negative one, text or a bool: fail_closed, logged."""
    gateway = kit.gateway()
    decision = _decided_at(kit, gateway, reading)
    assert decision.outcome is Outcome.FAIL_CLOSED
    assert [r.code for r in decision.reasons] == ["internal.error"]
    assert decision.reasons[0].detail.startswith("the gateway clock cannot be read: it")
    assert decision.log_index == 0
    assert kit.records()[0]["outcome"] == "fail_closed"
    assert gateway.decide(kit.submit()).outcome is Outcome.PROCEED


@pytest.mark.parametrize(
    "reading", [NOW, NOW + 0.75, Decimal(NOW) + Decimal("0.25"), Fraction(2 * NOW + 1, 2)]
)
def test_a_clock_may_read_any_real_number_of_seconds(kit: Kit, reading: object) -> None:
    decision = _decided_at(kit, kit.gateway(), reading)
    assert decision.outcome is Outcome.PROCEED
    assert kit.records()[0]["at"] == NOW


def test_an_interrupt_in_another_callers_job_stops_the_batch_and_reaches_the_leader(
    kit: Kit,
) -> None:
    """Ctrl-C lands in the leading thread, whichever job it is writing: it was kept as
    that job's answer (another thread's) and the leader carried on. The batch is
    rolled back, every job in it fails closed, and the leader raises it."""
    gateway, store = _store(kit)

    def interrupted(_conflict: str | None, _index: int) -> bytes:
        raise KeyboardInterrupt

    queued = store.submit(WriteJob(None, 0, None, interrupted, decision_id="a"))
    with pytest.raises(KeyboardInterrupt):
        gateway.decide(kit.submit())  # leads: the queued job first
    with pytest.raises(StoreUnavailable, match="audit append failed: KeyboardInterrupt"):
        queued.result(timeout=5)
    assert store.size() == 0
    assert gateway.decide(kit.submit()).log_index == 0


def test_a_job_taken_off_the_queue_and_lost_fails_instead_of_leading_for_ever(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt right after a leader took a job off the queue, before the job was in
    its batch, loses it: its caller led empty batches for ever, holding the writer
    lock. It fails closed instead."""
    gateway, store = _store(kit)
    real = store._queue

    class Losing:
        def put(self, item: Any) -> None:
            real.put(item)
            real.get_nowait()  # as the interrupted leader did

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    monkeypatch.setattr(store, "_queue", Losing())
    decision = gateway.decide(kit.submit())
    monkeypatch.undo()
    assert (decision.outcome, [r.code for r in decision.reasons]) == (
        Outcome.FAIL_CLOSED,
        ["store.unavailable", "audit.unavailable"],
    )
    assert "interrupted before it started" in decision.reasons[0].detail
    assert store._writer_lock.acquire(blocking=False)
    store._writer_lock.release()
    assert gateway.decide(kit.submit()).log_index == 0
