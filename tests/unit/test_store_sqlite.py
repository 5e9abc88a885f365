"""The embedded SQLite store: append-only, dense, atomic, durable across reopen.

Every test uses a real SQLite file under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_audit_log import TracedStore

import execgate.store.sqlite
from execgate.errors import AuditError, StoreError, StoreUnavailable
from execgate.store.base import Conflict, UseClaim, WriteJob
from execgate.store.sqlite import SQLiteStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(path)
    yield s
    s.close()


class Seen:
    """Collects what ``finalize`` was told, per job."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, int]] = []

    def job(
        self,
        payload: bytes,
        *,
        proof_jti: str | None = None,
        proof_expires_at: int = 0,
        use: UseClaim | None = None,
        proof_window: int = 0,
    ) -> WriteJob:
        def finalize(conflict: str | None, index: int) -> bytes:
            self.calls.append((conflict, index))
            return payload

        return WriteJob(proof_jti, proof_expires_at, use, finalize, proof_window=proof_window)


def entry_job(
    payload: bytes,
    *,
    proof_jti: str | None = None,
    proof_expires_at: int = 0,
    use: UseClaim | None = None,
) -> WriteJob:
    return Seen().job(payload, proof_jti=proof_jti, proof_expires_at=proof_expires_at, use=use)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        target(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- opening -------------------------------------------------------------------------


def test_many_openers_of_one_new_file_all_succeed(tmp_path: Path) -> None:
    """Several processes or threads may open a home's store before it exists (CLI calls
    side by side, an embedder's threads): each gets the same store, none an error."""
    for attempt in range(5):
        path = tmp_path / f"new-{attempt}.db"
        failures: list[Exception] = []

        def open_it(_: int, path: Path = path, failures: list[Exception] = failures) -> None:
            try:
                SQLiteStore(path).close()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

        run_threads(8, open_it)
        assert failures == []
        db = sqlite3.connect(path)
        try:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall() == [
                (str(execgate.store.sqlite.SCHEMA_VERSION),)
            ]
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            db.close()


def test_a_file_held_by_another_writer_is_an_error_after_the_wait(tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        conn = sqlite3.connect(tmp_path / "held.db", timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            execgate.store.sqlite._wal(conn, patience=0.05)
        conn.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --- append-only ----------------------------------------------------------------------


def test_audit_log_refuses_update_and_delete(store: SQLiteStore, path: Path) -> None:
    store.commit(entry_job(b'{"n":0}'))
    store.commit(entry_job(b'{"n":1}'))
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit_log SET entry = x'00' WHERE idx = 0")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_log WHERE idx = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
    finally:
        conn.close()
    assert [e.entry for e in store.entries(0, 10)] == [b'{"n":0}', b'{"n":1}']


def test_audit_log_refuses_replacing_or_skipping_an_index(store: SQLiteStore, path: Path) -> None:
    store.commit(entry_job(b"first"))
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("INSERT OR REPLACE INTO audit_log (idx, entry) VALUES (0, x'00')")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("REPLACE INTO audit_log (idx, entry) VALUES (0, x'00')")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("INSERT INTO audit_log (idx, entry) VALUES (5, x'00')")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("INSERT INTO audit_log (idx, entry) VALUES (-1, x'00')")
    finally:
        conn.close()
    assert [e.entry for e in store.entries(0, 10)] == [b"first"]
    assert store.commit(entry_job(b"second")) == 1


def test_insert_or_replace_cannot_rewrite_tree_nodes_outcomes_or_checkpoints(
    store: SQLiteStore, path: Path
) -> None:
    """A REPLACE that conflicts deletes the old row without firing its DELETE trigger:
    the tree, the one outcome of a decision and the checkpoints refuse it on INSERT."""
    store.commit(entry_job(b"decided"))
    store.commit(WriteJob(None, 0, None, lambda _c, _i: b"ran", decision_id="d", kind="outcome"))
    store.add_checkpoint(2, "signed note", now=0)
    nodes = [store.node(0, 0), store.node(0, 1), store.node(1, 0)]
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("INSERT OR REPLACE INTO merkle_nodes VALUES (0, 1, x'00')")
        with pytest.raises(sqlite3.DatabaseError, match="one outcome per decision"):
            conn.execute(
                "INSERT OR REPLACE INTO audit_log (idx, entry, kind, decision_id)"
                " VALUES (2, x'00', 'outcome', 'd')"
            )
        conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (2, 'forged', 0)")  # ignored
        conn.commit()
    finally:
        conn.close()
    assert [store.node(0, 0), store.node(0, 1), store.node(1, 0)] == nodes
    assert [e.entry for e in store.entries(0, 10)] == [b"decided", b"ran"]
    assert store.checkpoints() == [(2, "signed note")]


# --- indexes --------------------------------------------------------------------------


def test_indexes_are_dense_from_zero_across_restarts(path: Path) -> None:
    s = SQLiteStore(path)
    assert s.size() == 0
    assert [s.commit(entry_job(b"a%d" % i)) for i in range(3)] == [0, 1, 2]
    s.close()
    s = SQLiteStore(path)
    try:
        assert s.size() == 3
        assert [s.commit(entry_job(b"b%d" % i)) for i in range(2)] == [3, 4]
        assert [(e.index, e.entry) for e in s.entries(0, 100)] == [
            (0, b"a0"),
            (1, b"a1"),
            (2, b"a2"),
            (3, b"b0"),
            (4, b"b1"),
        ]
        assert [e.index for e in s.entries(1, 3)] == [1, 2]
        assert s.entries(5, 10) == []
    finally:
        s.close()


def test_finalize_sees_the_index_it_is_given(store: SQLiteStore) -> None:
    seen = Seen()
    for i in range(3):
        assert store.commit(seen.job(b"x%d" % i)) == i
    assert seen.calls == [(None, 0), (None, 1), (None, 2)]


def _hammer(stores: list[SQLiteStore], threads: int, per_thread: int) -> dict[int, bytes]:
    got: dict[int, bytes] = {}
    lock = threading.Lock()

    def work(t: int) -> None:
        s = stores[t % len(stores)]
        for i in range(per_thread):
            payload = f"t{t}-{i}".encode()
            index = s.commit(entry_job(payload))
            with lock:
                assert index not in got
                got[index] = payload

    run_threads(threads, work)
    return got


def test_group_commit_under_16_threads_gives_unique_dense_indexes(store: SQLiteStore) -> None:
    got = _hammer([store], 16, 25)
    assert sorted(got) == list(range(400))
    assert {e.index: e.entry for e in store.entries(0, 400)} == got
    assert store.size() == 400


def test_group_commit_when_more_jobs_queue_than_one_batch_holds(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execgate.store.sqlite, "_BATCH_MAX", 2)
    got = _hammer([store], 16, 10)
    assert sorted(got) == list(range(160))
    assert {e.index: e.entry for e in store.entries(0, 160)} == got


def test_two_store_instances_on_one_file_stay_dense(path: Path) -> None:
    a, b = SQLiteStore(path), SQLiteStore(path)
    try:
        got = _hammer([a, b], 8, 20)
        assert sorted(got) == list(range(160))
        assert {e.index: e.entry for e in a.entries(0, 160)} == got
    finally:
        a.close()
        b.close()


def test_a_failing_finalize_fails_only_its_own_job(store: SQLiteStore) -> None:
    def bad(conflict: str | None, index: int) -> bytes:
        raise RuntimeError("cannot build record")

    store.commit(entry_job(b"ok-0"))
    with pytest.raises(RuntimeError, match="cannot build record"):
        store.commit(WriteJob("jti-of-the-failed-job", 10**12, UseClaim("a", 1, 10**12), bad))
    assert not store.proof_seen("jti-of-the-failed-job")
    assert store.uses_consumed("a") == 0
    assert store.commit(entry_job(b"ok-1")) == 1


def test_a_record_that_is_not_bytes_fails_the_append(store: SQLiteStore) -> None:
    def not_bytes(conflict: str | None, index: int) -> bytes:
        return None  # type: ignore[return-value]

    with pytest.raises(StoreError):
        store.commit(WriteJob(None, 0, None, not_bytes))
    assert store.size() == 0


# --- replay and uses ------------------------------------------------------------------


def test_replay_insert_is_atomic(store: SQLiteStore) -> None:
    seen = Seen()
    store.commit(seen.job(b"1", proof_jti="proof-1", proof_expires_at=10**12))
    store.commit(seen.job(b"2", proof_jti="proof-1", proof_expires_at=10**12))
    store.commit(seen.job(b"3", proof_jti="proof-2", proof_expires_at=10**12))
    assert seen.calls == [(None, 0), (Conflict.REPLAY, 1), (None, 2)]
    assert store.proof_seen("proof-1")
    assert store.proof_seen("proof-2")
    assert not store.proof_seen("proof-3")
    assert store.size() == 3  # the replay is logged too


def test_concurrent_commits_of_one_proof_let_exactly_one_through(store: SQLiteStore) -> None:
    seen = Seen()

    def work(i: int) -> None:
        store.commit(seen.job(b"%d" % i, proof_jti="the-proof", proof_expires_at=10**12))

    run_threads(16, work)
    conflicts = [c for c, _ in seen.calls]
    assert conflicts.count(None) == 1
    assert conflicts.count(Conflict.REPLAY) == 15


def test_uses_limit_is_atomic_under_concurrency(store: SQLiteStore) -> None:
    seen = Seen()

    def work(i: int) -> None:
        store.commit(seen.job(b"%d" % i, proof_jti=f"p-{i}", use=UseClaim("art-1", 3, 10**12)))

    run_threads(20, work)
    conflicts = [c for c, _ in seen.calls]
    assert conflicts.count(None) == 3
    assert conflicts.count(Conflict.EXHAUSTED) == 17
    assert store.uses_consumed("art-1") == 3
    assert store.uses_consumed("another") == 0


def test_a_replayed_job_consumes_no_use(store: SQLiteStore) -> None:
    seen = Seen()
    use = UseClaim("art-1", 5, 10**12)
    store.commit(seen.job(b"1", proof_jti="p", use=use))
    store.commit(seen.job(b"2", proof_jti="p", use=use))
    assert [c for c, _ in seen.calls] == [None, Conflict.REPLAY]
    assert store.uses_consumed("art-1") == 1


# --- purge ----------------------------------------------------------------------------


def test_purge_expired_removes_only_expired_rows(store: SQLiteStore) -> None:
    store.commit(
        entry_job(b"1", proof_jti="old", proof_expires_at=100, use=UseClaim("u-old", 9, 100))
    )
    store.commit(
        entry_job(b"2", proof_jti="edge", proof_expires_at=150, use=UseClaim("u-edge", 9, 150))
    )
    store.commit(
        entry_job(b"3", proof_jti="new", proof_expires_at=200, use=UseClaim("u-new", 9, 200))
    )
    assert store.purge_expired(150) == 2
    assert not store.proof_seen("old")
    assert store.proof_seen("edge")
    assert store.proof_seen("new")
    assert store.uses_consumed("u-old") == 0
    assert store.uses_consumed("u-edge") == 1
    assert store.uses_consumed("u-new") == 1
    assert store.size() == 3  # the log is never purged
    assert store.purge_expired(150) == 0


def test_claims_expiring_before_a_purge_are_refused_not_taken(
    path: Path, store: SQLiteStore
) -> None:
    """After a purge that removed rows expiring up to 149, a row expiring before 150 could
    have existed and be gone: a claim like that (only possible once the clock has gone
    back) is never taken as new. The marks only rise, and they are in the file, so every
    process and restart sees them."""
    store.commit(entry_job(b"0", proof_jti="gone", proof_expires_at=149, use=UseClaim("g", 9, 149)))
    store.purge_expired(150)
    store.purge_expired(100)  # a purge with a clock behind changes nothing
    seen = Seen()
    store.commit(seen.job(b"1", proof_jti="late", proof_expires_at=149))
    store.commit(seen.job(b"2", proof_jti="p2", proof_expires_at=10**12, use=UseClaim("u", 9, 149)))
    store.commit(seen.job(b"3", proof_jti="edge", proof_expires_at=150, use=UseClaim("u", 9, 150)))
    assert [c for c, _ in seen.calls] == [Conflict.PURGED, Conflict.PURGED, None]
    assert not store.proof_seen("late")  # nothing of a refused claim is written
    assert not store.proof_seen("p2")
    assert store.proof_seen("edge")
    assert store.uses_consumed("u") == 1
    assert store.size() == 4  # the refusals are logged
    store.close()
    reopened = SQLiteStore(path)
    try:
        again = Seen()
        reopened.commit(again.job(b"4", proof_jti="late-2", proof_expires_at=120))
        assert again.calls == [(Conflict.PURGED, 4)]
    finally:
        reopened.close()


def test_a_purge_that_removed_nothing_refuses_nothing(store: SQLiteStore) -> None:
    """Only what a purge removed can be forgotten: one that found nothing expired
    raises no mark, and a claim of any time is checked as usual."""
    assert store.purge_expired(10**9) == 0
    seen = Seen()
    store.commit(seen.job(b"1", proof_jti="p", proof_expires_at=5, use=UseClaim("u", 9, 5)))
    assert seen.calls == [(None, 0)]


def test_a_purge_while_the_clock_read_years_ahead_refuses_for_a_proofs_lifetime(
    store: SQLiteStore,
) -> None:
    """The clock reads years ahead (a bad time source) and a purge runs: it removes
    what was live, proofs expiring at 1,000 and a use count at 5,000. Once the clock is
    right again (about 900), the replay of a removed proof is still refused, and so is
    a use of the removed count; a new proof is taken as soon as its expiry passes the
    latest removed proof's (not in years), and a count expiring after the latest removed
    one is taken too."""
    store.commit(entry_job(b"1", proof_jti="p1", proof_expires_at=1_000))
    store.commit(entry_job(b"2", proof_jti="p2", proof_expires_at=950, use=UseClaim("u", 9, 5_000)))
    assert store.purge_expired(2_000_000_000) == 3  # the clock read 2033
    seen = Seen()
    store.commit(seen.job(b"3", proof_jti="p1", proof_expires_at=1_000))  # a replay
    store.commit(seen.job(b"4", proof_jti="p3", proof_expires_at=1_001))  # new
    store.commit(
        seen.job(b"5", proof_jti="p4", proof_expires_at=1_002, use=UseClaim("u", 9, 5_000))
    )
    store.commit(
        seen.job(b"6", proof_jti="p5", proof_expires_at=1_003, use=UseClaim("v", 9, 5_001))
    )
    assert [c for c, _ in seen.calls] == [Conflict.PURGED, None, Conflict.PURGED, None]
    assert store.proof_seen("p3")
    assert not store.proof_seen("p4")  # refused: nothing of it is written
    assert store.uses_consumed("v") == 1


def test_a_gateway_configured_wider_since_a_purge_still_refuses_what_it_removed(
    store: SQLiteStore,
) -> None:
    """A claim is compared with the purge mark by its own time (a proof's iat, an
    artifact's exp), not by the expiry the gateway adds its window to: a proof issued at
    820 and logged with a 180 s window (expiry 1,000) is removed; replayed at a gateway
    since configured with an hour's window (expiry 4,480), it is still refused, and so
    is a use of a removed count claimed with a wider leeway."""
    store.commit(
        Seen().job(
            b"1",
            proof_jti="p",
            proof_expires_at=1_000,
            proof_window=180,
            use=UseClaim("u", 9, 2_000, 0),
        )
    )
    assert store.purge_expired(2_000_000_000) == 2
    seen = Seen()
    store.commit(seen.job(b"2", proof_jti="p", proof_expires_at=820 + 3_660, proof_window=3_660))
    store.commit(
        seen.job(
            b"3",
            proof_jti="q",
            proof_expires_at=10**12,
            proof_window=180,
            use=UseClaim("u", 9, 2_060, 60),
        )
    )
    store.commit(seen.job(b"4", proof_jti="r", proof_expires_at=1_001 + 180, proof_window=180))
    assert [c for c, _ in seen.calls] == [Conflict.PURGED, Conflict.PURGED, None]


def test_a_store_with_one_mark_for_both_keeps_it_for_both(path: Path, store: SQLiteStore) -> None:
    """A store purged before the marks were kept apart has only ``purged_before``, raised
    to the clock's reading: it still covers use counts."""
    store.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO meta VALUES ('purged_before', '150')")
    db.commit()
    db.close()
    reopened = SQLiteStore(path)
    try:
        seen = Seen()
        reopened.commit(
            seen.job(b"1", proof_jti="p", proof_expires_at=10**12, use=UseClaim("u", 9, 149))
        )
        reopened.commit(seen.job(b"2", proof_jti="q", proof_expires_at=149))
        reopened.commit(
            seen.job(b"3", proof_jti="r", proof_expires_at=150, use=UseClaim("u", 9, 150))
        )
        assert [c for c, _ in seen.calls] == [Conflict.PURGED, Conflict.PURGED, None]
    finally:
        reopened.close()


def test_a_purge_that_fails_removes_nothing(path: Path, store: SQLiteStore) -> None:
    """The deletions and the mark are one transaction: a purge stopped half way (here by a
    trigger refusing the second deletion) leaves every row, and no mark, behind."""
    store.commit(entry_job(b"1", proof_jti="old", proof_expires_at=100, use=UseClaim("u", 9, 100)))
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER no_use_purge BEFORE DELETE ON artifact_uses"
        " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
    )
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="disk trouble"):
        store.purge_expired(150)
    assert store.proof_seen("old")
    seen = Seen()
    store.commit(seen.job(b"2", proof_jti="late", proof_expires_at=120))
    assert seen.calls == [(None, 1)]  # no mark was left either


# --- revocations ----------------------------------------------------------------------


def test_revocation_is_idempotent_and_found_by_any_key(store: SQLiteStore) -> None:
    assert store.revoke("jti", "j-1", reason="leaked", now=10)
    assert not store.revoke("jti", "j-1", reason="again", now=20)
    assert store.revoke("sub", "agent-9", reason="offboarded", now=30)
    [first, second] = store.revocations()
    assert (first.kind, first.value, first.reason, first.revoked_at) == ("jti", "j-1", "leaked", 10)
    assert (second.kind, second.value) == ("sub", "agent-9")
    hit = store.revoked([("kid", "k"), ("jti", "j-1")])
    assert hit is not None
    assert hit.value == "j-1"
    assert store.revoked([("sub", "j-1"), ("jti", "agent-9")]) is None  # kind matters
    assert store.revoked([]) is None


def test_revocation_kind_is_checked(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="kind"):
        store.revoke("user", "x", reason="r", now=1)


# --- durability and lifecycle ---------------------------------------------------------


def test_state_survives_close_and_reopen(path: Path) -> None:
    s = SQLiteStore(path)
    s.revoke("kid", "k-1", reason="rotated", now=5)
    s.commit(
        entry_job(b"rec", proof_jti="p-1", proof_expires_at=10**12, use=UseClaim("a", 2, 10**12))
    )
    s.close()
    s = SQLiteStore(path)
    try:
        assert s.proof_seen("p-1")
        assert s.uses_consumed("a") == 1
        assert [r.value for r in s.revocations()] == ["k-1"]
        assert [e.entry for e in s.entries(0, 1)] == [b"rec"]
        seen = Seen()
        s.commit(seen.job(b"again", proof_jti="p-1"))
        assert seen.calls == [(Conflict.REPLAY, 1)]
    finally:
        s.close()


def test_closed_store_refuses_reads_and_writes(path: Path) -> None:
    s = SQLiteStore(path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(AuditError):
        s.commit(entry_job(b"x"))
    with pytest.raises(StoreError):
        s.proof_seen("x")
    with pytest.raises(StoreError):
        s.size()


def test_close_leaves_a_read_in_progress_to_finish(path: Path) -> None:
    """A read in another thread when the store closes (a checkpoint beside the event
    loop while the server shuts down): its connection stays open until the read gives
    it back, then closes. Closed under the read, it crashed the process."""
    s = SQLiteStore(path)
    s.commit(entry_job(b"x"))
    with s._reader() as conn:
        with s._reader() as idle:
            pass  # given back: idle from here on
        s.close()  # closes the idle one at once; "conn" is in use
        with pytest.raises(sqlite3.ProgrammingError):
            idle.execute("SELECT 1")
        assert conn.execute("SELECT COUNT(*) FROM audit_log").fetchone() == (1,)
    with pytest.raises(sqlite3.ProgrammingError):  # closed as it came back
        conn.execute("SELECT 1")
    with pytest.raises(StoreError):
        s.size()


def test_a_side_write_waiting_for_its_turn_while_the_store_closes_writes_nothing(
    path: Path,
) -> None:
    """A purge or checkpoint beside the loop waits for the writer lock while the server
    shuts down and closes the store: when it gets the lock it writes nothing, and does
    not open the writers' lock file again (nothing would ever close it)."""
    s = SQLiteStore(path)
    real = s._writer_lock

    class ClosesFirst:
        """The writer lock, but the store closes while the first caller waits for it."""

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            s._writer_lock = real  # close() and the release below use the real one
            s.close()
            return real.acquire(blocking, timeout)

    s._writer_lock = ClosesFirst()  # type: ignore[assignment]
    with pytest.raises(StoreUnavailable, match="closed"):
        s.purge_expired(12345)
    assert s._turn is None
    assert not real.locked()
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key = 'purged_before'").fetchone() is None
    check.close()


def test_synchronous_mode_is_checked(path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(path, synchronous="EXTRA; DROP TABLE audit_log")


def test_store_runs_in_wal_mode(store: SQLiteStore, path: Path) -> None:
    store.commit(entry_job(b"x"))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.revoke("sub", "agent-9", reason="r", now=1),
        lambda s: s.add_checkpoint(0, "note", now=1),
        lambda s: s.purge_expired(1),
    ],
    ids=["revoke", "add_checkpoint", "purge_expired"],
)
def test_writes_outside_the_batches_take_the_writers_turn(
    store: SQLiteStore, path: Path, write: Callable[[SQLiteStore], object]
) -> None:
    """Another process holds the writers' flock (another open file of the lock, as
    another process has): the write waits for its turn, then runs. So a batch led on an
    event loop sees the store busy while such a write runs, instead of its thread
    waiting in SQLite's busy handler."""
    other = os.open(str(path) + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    done = threading.Event()
    try:
        fcntl.flock(other, fcntl.LOCK_EX)

        def run() -> None:
            write(store)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        assert not done.wait(0.5)  # waiting for the turn
        fcntl.flock(other, fcntl.LOCK_UN)
        assert done.wait(10)
        thread.join()
    finally:
        os.close(other)
    queued = store.submit(WriteJob(None, 0, None, lambda _c, _i: b"{}"))
    fcntl_held = os.open(str(path) + "-writer.lock", os.O_RDWR)
    try:
        fcntl.flock(fcntl_held, fcntl.LOCK_EX)
        assert store.lead_now() is False  # busy: the loop would try again shortly
    finally:
        os.close(fcntl_held)
    assert store.lead_now() is True
    assert queued.result(5) == 0


class _ActingQueue:
    """The store's queue, running ``act`` in another thread right after the first put."""

    def __init__(self, queue: Any, act: Callable[[], object]) -> None:
        self._queue = queue
        self._act: Callable[[], object] | None = act

    def put(self, item: object) -> None:
        self._queue.put(item)
        act, self._act = self._act, None
        if act is not None:
            other = threading.Thread(target=act)
            other.start()
            other.join()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def _while_queuing(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, act: Callable[[], object]
) -> None:
    """Run ``act`` in another thread right after ``submit`` queues its job, before
    ``submit`` returns (the window another thread's commit or close can fall into)."""
    monkeypatch.setattr(store, "_queue", _ActingQueue(store._queue, act))


def test_a_job_another_thread_writes_before_submit_returns_keeps_its_future(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread's commit leads the batch holding the job just queued: the
    submitter still gets the job's future (already done), not an error that would have
    the pipeline log the same decision a second time."""
    _while_queuing(
        store, monkeypatch, lambda: store.commit(WriteJob(None, 0, None, lambda _c, _i: b"{}"))
    )
    queued = store.submit(WriteJob(None, 0, None, lambda _c, _i: b"[]"))
    assert queued.result(5) == 0
    assert store.size() == 2


def test_a_store_closed_while_submit_queues_fails_that_job_through_its_future(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _while_queuing(store, monkeypatch, store.close)
    queued = store.submit(WriteJob(None, 0, None, lambda _c, _i: b"{}"))
    with pytest.raises(StoreUnavailable):
        queued.result(5)


@contextmanager
def _turn_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process holds the store's writers' ``flock`` (and never lets go) inside;
    killed (SIGKILL frees its lock) at the end."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            str(path) + "-writer.lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_writers_turn_held_past_the_wait_fails_instead_of_hanging(
    store: SQLiteStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process took the writers' flock and stopped (SIGSTOP, a debugger): a
    commit and a side write give up after the wait with StoreUnavailable, nothing is
    written, and once that process is gone (SIGKILL frees its lock) writing resumes."""
    monkeypatch.setattr(execgate.store.sqlite, "_COMMIT_TIMEOUT", 0.3)
    with _turn_held_elsewhere(path):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"held the writers' turn for 0\.3s"):
            store.commit(WriteJob(None, 0, None, lambda _c, _i: b"{}"))
        with pytest.raises(StoreUnavailable, match="held the writers' turn"):
            store.revoke("sub", "agent-9", reason="r", now=1)
        assert time.monotonic() - started < 5
        assert store.size() == 0
        assert store.revocations() == []
    assert store.commit(WriteJob(None, 0, None, lambda _c, _i: b"{}")) == 0
    assert store.revoke("sub", "agent-9", reason="r", now=1) is True


def test_a_new_store_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    """The log holds every request's arguments: not for other local users to read,
    whatever the umask or the home directory's mode."""
    tmp_path.chmod(0o755)
    s = SQLiteStore(tmp_path / "state.db")
    try:
        s.commit(WriteJob(None, 0, None, lambda _c, _i: b"{}"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        s.close()
    assert modes["state.db"] == 0o600
    assert modes["state.db-wal"] == 0o600
    assert modes["state.db-writer.lock"] == 0o600


def test_a_lock_file_that_cannot_be_opened_is_store_unavailable(path: Path) -> None:
    (path.parent / (path.name + "-writer.lock")).mkdir()  # a directory: open() fails
    s = SQLiteStore(path)
    try:
        with pytest.raises(StoreUnavailable, match="writers' turn"):
            s.revoke("sub", "agent-9", reason="r", now=1)
        with pytest.raises(StoreError):
            s.purge_expired(1)
    finally:
        s.close()


def test_a_closed_store_takes_no_more_writes(path: Path) -> None:
    s = SQLiteStore(path)
    s.close()
    for write in (
        lambda: s.revoke("sub", "agent-9", reason="r", now=1),
        lambda: s.add_checkpoint(0, "note", now=1),
        lambda: s.purge_expired(1),
    ):
        with pytest.raises(StoreUnavailable, match="closed"):
            write()
    assert s._turn is None  # its lock file was not opened again


def test_the_readiness_probe_gives_up_in_time_and_leaves_nothing_behind(
    store: SQLiteStore, path: Path
) -> None:
    """A process holds the writers' turn and never lets go: each probe gives up after
    its time, keeps no thread or descriptor waiting for that turn, and once the turn is
    free the store is writable again."""
    with _turn_held_elsewhere(path):
        with pytest.raises(StoreUnavailable):  # opens the lock file, kept open after
            store.check_writable(0.05)
        threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
        started = time.monotonic()
        for _ in range(10):
            with pytest.raises(StoreUnavailable, match=r"held the writers' turn for 0\.05s"):
                store.check_writable(0.05)
        assert time.monotonic() - started < 5
        assert threading.active_count() == threads
        assert len(os.listdir("/proc/self/fd")) == fds
    store.check_writable(5.0)


@contextmanager
def _small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only; skipped, loudly, elsewhere)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs of its own, and mounting one needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


_BATCHES_IN_A_CHILD = """
import sys, threading
from pathlib import Path
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore

store = SQLiteStore(Path(sys.argv[1]))
failed = []
start = threading.Barrier(64)

def caller(i):
    start.wait()
    for n in range(30):
        job = WriteJob(f"jti-{i}-{n}", 2**40, None, lambda c, x: b"x" * 1000)
        try:
            store.commit(job)
        except Exception as exc:
            failed.append(exc)

threads = [threading.Thread(target=caller, args=(i,)) for i in range(64)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(store.size(), len(failed), repr(failed[:1]))
"""


def test_appends_need_no_room_outside_the_store(tmp_path: Path) -> None:
    """A batch's jobs each run in a savepoint, whose undo pages SQLite keeps in memory
    only up to 64 KiB and then in a temporary file, by default in /var/tmp or $TMPDIR,
    which may be another, full disk while the home's has room (the readiness probe asks
    only the home's). The store keeps them in memory: with the temporary directory full,
    every append of large batches still succeeds."""
    with _small_disk(tmp_path / "tmp", "1m") as full:
        with (full / "filler").open("wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
        done = subprocess.run(
            [sys.executable, "-c", _BATCHES_IN_A_CHILD, str(tmp_path / "state.db")],
            env={**os.environ, "SQLITE_TMPDIR": str(full), "TMPDIR": str(full)},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    assert done.stdout.split(maxsplit=2)[:2] == ["1920", "0"], done.stdout


def test_the_readiness_probe_says_a_full_disk_where_appends_fail(tmp_path: Path) -> None:
    """A write transaction opens on a full disk (it writes nothing until its commit), so
    the probe also asks the file system for room: it is not ready while appends fail,
    and ready again once there is room."""
    with _small_disk(tmp_path / "disk", "16m") as disk:
        store = SQLiteStore(disk / "state.db")
        try:
            store.commit(entry_job(b"first"))
            store.check_writable(1.0)
            filler = disk / "filler"
            with filler.open("wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * 65536)
            with pytest.raises(StoreUnavailable, match="KiB free, under 4 MiB"):
                store.check_writable(1.0)

            def append_until_it_fails() -> None:
                for _ in range(64):  # the log's pages take what the filler left
                    store.commit(entry_job(b"x" * 4096))

            with pytest.raises(StoreUnavailable, match="full"):
                append_until_it_fails()
            filler.unlink()
            store.check_writable(1.0)
            assert store.commit(entry_job(b"again")) == store.size() - 1
        finally:
            store.close()


def test_the_readiness_probe_says_a_read_only_file_system(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.statvfs

    def read_only(where: str) -> os.statvfs_result:
        disk = real(where)
        fields = list(disk)
        fields[8] = disk.f_flag | os.ST_RDONLY  # f_flag
        return os.statvfs_result(fields)

    store.check_writable(1.0)
    monkeypatch.setattr(os, "statvfs", read_only)
    with pytest.raises(StoreUnavailable, match="read-only: every append fails"):
        store.check_writable(1.0)


def test_the_readiness_probe_waits_for_sqlites_own_lock_no_longer_than_its_time(
    store: SQLiteStore, path: Path
) -> None:
    """A writer outside the writers' turn (another program on the same file) holds
    SQLite's write lock: the probe gives up after its time, not SQLite's busy timeout."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot start a write"):
            store.check_writable(0.3)
        assert time.monotonic() - started < 3
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.check_writable(5.0)


def test_a_page_of_approvals_is_found_from_its_cursor_by_the_index(tmp_path: Path) -> None:
    """The table keeps every approval ever opened: a page after a cursor is searched for
    in the index from the cursor on, not read from the newest approval down."""
    store = TracedStore(tmp_path / "state.db")
    try:
        store.approvals(limit=10, after="some-approval")
        [sql] = [s for s in store.statements if "FROM approvals AS a" in s]
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        plan = [str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
    finally:
        db.close()
    assert any(
        step.startswith("SEARCH a USING INDEX approvals_newest_first (expires_at<") for step in plan
    ), plan
    assert not any(step.startswith("SCAN a") for step in plan), plan


def test_a_removed_store_file_is_not_made_again_by_a_read_or_a_probe(path: Path) -> None:
    """Once open, the store never creates its file: a read or the readiness probe after
    the file was removed fails, where it would otherwise make a new, empty store with
    the process's umask instead of 0600."""
    store = SQLiteStore(path)
    try:
        assert store.size() == 0  # a reader connection exists; later ones are new
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        with pytest.raises(StoreError):
            store.check_writable(1.0)
        # The pool's reader, and a new one beside it.
        with pytest.raises(StoreError), store._reader(), store._reader():
            pass
        assert not path.exists()
    finally:
        store.close()


def _turn_helpers() -> int:
    return sum(t.name == "execgate-writers-turn" for t in threading.enumerate())


def test_a_turn_held_for_long_leaves_one_waiting_helper_not_one_per_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each commit that gives up waiting for a turn another process holds (stopped while
    writing) left a thread and a descriptor blocked until that process let go: one more
    every timeout, for as long as it held on. A wait takes over the helper given up on."""
    monkeypatch.setattr(execgate.store.sqlite, "_COMMIT_TIMEOUT", 0.2)
    store = SQLiteStore(tmp_path / "state.db")
    job = WriteJob(None, 0, None, lambda _c, _i: b'{"n":1}')
    assert store.commit(job) == 0
    before = _turn_helpers()
    other = os.open(store.path + "-writer.lock", os.O_RDWR)  # another process's turn
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        for _ in range(4):
            with pytest.raises(StoreUnavailable, match="held the writers' turn"):
                store.commit(WriteJob(None, 0, None, lambda _c, _i: b'{"n":2}'))
        assert _turn_helpers() == before + 1
    finally:
        os.close(other)  # lets go: the helper takes the turn and, given up on, lets it go
    deadline = time.monotonic() + 10
    while _turn_helpers() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _turn_helpers() == before
    assert store.commit(WriteJob(None, 0, None, lambda _c, _i: b'{"n":3}')) == 1
    store.close()
