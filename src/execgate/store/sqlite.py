"""The embedded default store: one SQLite file in WAL mode, ``synchronous=FULL``.

Writes practise leader/follower group commit: a caller queues its write job and takes the
writer lock; whoever holds it drains every queued job into one transaction (each job in
its own savepoint) and one fsync makes the whole batch durable. A caller whose job was
committed by another leader finds it done when it gets the lock. Nobody returns before
the commit that holds its record, so a ``proceed`` is never reported before it is in the
log (write-ahead); a lone caller pays no thread hand-off. A caller that gives up waiting
for the lock (``_COMMIT_TIMEOUT``) before any leader took its job withdraws it, so it is
never written after its caller was told the append failed. Reads use a small pool of
reader connections and never block the writer (WAL).

An event loop does not wait in a thread: it ``submit``s a job (a future) and calls
``lead_now``, which leads the queued batches in the loop's own thread when no other
writer holds the lock, and otherwise returns at once so the loop retries shortly
(``Gateway.decide_async``). Writers of several processes (server workers) take turns
with an ``flock`` on ``<store>-writer.lock`` around each batch.

The log table is append-only: triggers refuse UPDATE and DELETE, and any INSERT that
does not take the next index (a replacement, a gap).

Beside the file, ``<store>-head`` holds the committed head: the log's size and Merkle
root, and the number of writes besides appends (revocations, purges, checkpoints: every
other write appends to the log), as of the last commit, written after each commit, in
the writers' turn, through a descriptor opened before it (a head that cannot be written
stops the write). Every
write, every readiness probe and every checkpoint signature first checks that the store
still holds what the head names (``check_head``). A store that lost writes it
acknowledged (its ``-wal`` file removed and the writer killed, an older copy put back)
would otherwise append entries at indexes already given, forget revocations, and have
the node sign a second tree head for a size it signed before: it takes no more writes
and signs nothing (``AuditError``: every decision fails closed, ``/readyz`` answers
503) until the lost writes are put back. Under ``synchronous=FULL`` the head is not
synced: it is written after a commit that is, so after a power cut it can only be
behind the store, which is checked (its root against the log's first entries) and then
moved on; under NORMAL or OFF a power cut may take commits the head names, and the
store is then refused as one that lost them. The first head is made (whole: written
aside, renamed, and the rename synced) before the store's first write commits, and
none is ever removed: a store that holds anything without one lost it, or is a copy
put back without it, and is refused the same way until ``remake_head`` (``execgate
audit reset-head``, once the log has been shown whole) makes it anew. (A store made
before heads were kept needs that once too.)

Each store also keeps one connection open for its whole life (its anchor), and before
every write checks that its file, ``-wal`` and ``-shm`` are still the files it opened
(``_check_files``): removed under a running process, they leave that process writing
to a file nobody else reads, or reading the log through an index nobody else updates.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final, overload

from execgate.audit.merkle import Frontier, root_at
from execgate.errors import AuditError, StoreError, StoreUnavailable
from execgate.store.base import (
    REVOCATION_KINDS,
    ApprovalRow,
    CommittedHead,
    Conflict,
    LogEntry,
    Revocation,
    UseClaim,
    WriteJob,
    check_head,
    deny_is_final,
)

__all__ = ["SQLiteStore"]

SCHEMA_VERSION: Final = 2
_BATCH_MAX: Final = 256
_COMMIT_TIMEOUT: Final = 30.0
_PROBE_RETRY: Final = 0.005  # seconds between a readiness probe's tries for the turn
_QUEUED, _TAKEN, _WITHDRAWN = "queued", "taken", "withdrawn"
# Meta keys: replay state (proof jti, admin token jti) expiring below the first may be
# gone, and use counts expiring below the second (or the first: a store written before
# the two were kept apart has one mark for both).
_PURGED_BEFORE: Final = "purged_before"
_USES_PURGED_BEFORE: Final = "uses_purged_before"
_WRITES: Final = "writes"  # meta key: side writes committed (see ``_side_write``)
# <store>-head: magic, the log's size and the store's writes (8 bytes each, big-endian),
# the log's root (32), then the first 8 bytes of the SHA-256 of what precedes them (a
# torn or damaged head is never taken for a real one).
_HEAD_MAGIC: Final = b"EGH2"
_HEAD_BODY: Final = len(_HEAD_MAGIC) + 8 + 8 + 32
_HEAD_SIZE: Final = _HEAD_BODY + 8
# The first heads had no count of writes: magic, size, root, check (52 bytes). One is
# read as a head of unknown writes, and the next write replaces it.
_OLD_HEAD_MAGIC: Final = b"EGTH"
_OLD_HEAD_BODY: Final = len(_OLD_HEAD_MAGIC) + 8 + 32
_HEAD_READS: Final = 3  # a reader outside the writers' turn may meet a write half done
_DAMAGED: Final = (
    "the store's committed tree head is damaged: nothing more is appended or signed until"
    " it is put back, or made anew with 'execgate audit reset-head' (README: The gateway"
    " home)"
)
# The first head is made before the first write commits, and none is ever removed: a
# store that holds anything without one lost it, or is a copy put back without it.
_MISSING: Final = (
    "the store holds {size} log entries and {writes} other writes but its committed tree"
    " head ({name}) is missing: nothing more is appended or signed until it is put back,"
    " or made anew with 'execgate audit reset-head' (README: The gateway home)"
)
# Free space under which the readiness probe says appends may fail: a batch writes up to
# about a megabyte, and SQLite's write-ahead log grows to about 4 MiB between the times
# it is copied back into the file.
_MIN_FREE: Final = 4 * 1024 * 1024

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS proof_jti (
    jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS proof_jti_expiry ON proof_jti (expires_at);
CREATE TABLE IF NOT EXISTS artifact_uses (
    jti TEXT PRIMARY KEY, used INTEGER NOT NULL, max_uses INTEGER NOT NULL,
    expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revocations (
    kind TEXT NOT NULL, value TEXT NOT NULL, reason TEXT NOT NULL, revoked_at INTEGER NOT NULL,
    PRIMARY KEY (kind, value)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_log (
    idx INTEGER PRIMARY KEY, entry BLOB NOT NULL, kind TEXT NOT NULL, decision_id TEXT);
CREATE INDEX IF NOT EXISTS audit_log_decision ON audit_log (decision_id, kind);
CREATE UNIQUE INDEX IF NOT EXISTS audit_log_one_outcome ON audit_log (decision_id)
    WHERE kind = 'outcome';
CREATE TABLE IF NOT EXISTS merkle_nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY, note TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
    BEGIN SELECT RAISE(ABORT, 'the Merkle tree is append-only'); END;
CREATE TRIGGER IF NOT EXISTS merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
    BEGIN SELECT RAISE(ABORT, 'the Merkle tree is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
-- A conflicting INSERT OR REPLACE deletes the old row without a DELETE trigger firing
-- (recursive_triggers is off by default, and is per connection): refused here instead.
CREATE TRIGGER IF NOT EXISTS merkle_nodes_no_replace BEFORE INSERT ON merkle_nodes
    WHEN EXISTS (SELECT 1 FROM merkle_nodes WHERE level = NEW.level AND idx = NEW.idx)
    BEGIN SELECT RAISE(ABORT, 'the Merkle tree is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_replace BEFORE INSERT ON checkpoints
    WHEN EXISTS (SELECT 1 FROM checkpoints WHERE size = NEW.size)
    BEGIN SELECT RAISE(IGNORE); END;
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, request_hash TEXT NOT NULL, status TEXT NOT NULL,
    expires_at INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS approvals_by_request ON approvals (request_hash);
CREATE INDEX IF NOT EXISTS approvals_newest_first ON approvals (expires_at DESC, id);
CREATE TABLE IF NOT EXISTS reviews (
    approval_id TEXT NOT NULL, approver TEXT NOT NULL, verdict TEXT NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (approval_id, approver)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_one_outcome_only BEFORE INSERT ON audit_log
    WHEN NEW.kind = 'outcome' AND EXISTS (
        SELECT 1 FROM audit_log WHERE kind = 'outcome' AND decision_id = NEW.decision_id)
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: one outcome per decision'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_next_index BEFORE INSERT ON audit_log
    WHEN NEW.idx IS NOT (SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_log)
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: an entry takes the next index'); END;
"""


def _first_revocation(
    conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]]
) -> Revocation | None:
    """The first revocation among (kind, value) ``pairs``, or None."""
    row = conn.execute(_revocation_query(len(pairs)), [x for p in pairs for x in p]).fetchone()
    return Revocation(*row) if row else None


@functools.lru_cache(maxsize=64)
def _revocation_query(pairs: int) -> str:
    where = " OR ".join(["(kind = ? AND value = ?)"] * pairs)
    return f"SELECT kind, value, reason, revoked_at FROM revocations WHERE {where} LIMIT 1"  # noqa: S608 (placeholders only)


def _reason(exc: BaseException) -> str:
    """What went wrong, without a file name: an ``OSError`` (the writers' lock file) says
    its path, which a decision's reasons and an HTTP answer must not (see ``_connect``)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _head_record(head: CommittedHead) -> bytes:
    body = _HEAD_MAGIC + head.size.to_bytes(8, "big") + head.writes.to_bytes(8, "big") + head.root
    return body + hashlib.sha256(body).digest()[:8]


def _parse_head(data: bytes) -> CommittedHead | None:
    """The head ``data`` holds, or None when it is not a whole, intact one."""
    if len(data) == _OLD_HEAD_BODY + 8 and data.startswith(_OLD_HEAD_MAGIC):
        body = data[:_OLD_HEAD_BODY]
        if hashlib.sha256(body).digest()[:8] != data[_OLD_HEAD_BODY:]:
            return None
        return CommittedHead(size=int.from_bytes(body[4:12], "big"), root=body[12:], writes=0)
    body = data[:_HEAD_BODY]
    if (
        len(data) != _HEAD_SIZE
        or not body.startswith(_HEAD_MAGIC)
        or hashlib.sha256(body).digest()[:8] != data[_HEAD_BODY:]
    ):
        return None
    return CommittedHead(
        size=int.from_bytes(body[4:12], "big"),
        root=body[20:],
        writes=int.from_bytes(body[12:20], "big"),
    )


def _unreadable(exc: OSError) -> AuditError:
    return AuditError(f"cannot read the store's committed tree head: {_reason(exc)}")


def _head_in(fd: int) -> CommittedHead | None:
    """The head the open file ``fd`` holds, or None when it is not a whole, intact one."""
    try:
        return _parse_head(os.pread(fd, _HEAD_SIZE + 1, 0))
    except OSError as exc:
        raise _unreadable(exc) from exc


def _read_head(path: str, *, tries: int) -> CommittedHead | None:
    """The committed head, or None where none was made yet (a head is made whole, so an
    empty or short file is a damaged one)."""
    for _ in range(tries):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unreadable(exc) from exc
        try:
            head = _head_in(fd)
        finally:
            os.close(fd)
        if head is not None:
            return head
    raise AuditError(_DAMAGED)


def _open_head(path: str) -> tuple[int | None, CommittedHead | None]:
    """The head's file open for writing, and what it holds; (None, None) where none was
    made yet. Opened before anything is written, so a head that cannot be written stops
    the write instead of lagging behind it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise AuditError(f"cannot open the store's committed tree head: {_reason(exc)}") from exc
    try:
        head = _head_in(fd)
    except AuditError:
        os.close(fd)
        raise
    if head is None:
        os.close(fd)
        raise AuditError(_DAMAGED)
    return fd, head


def _make_head(path: str, head: CommittedHead) -> int:
    """A store's first head, made whole or not at all (written aside and synced, then
    renamed into place: after a power cut the head is there whole, or not yet), open for
    writing."""
    aside = path + ".new"
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if os.pwrite(fd, _head_record(head), 0) != _HEAD_SIZE:
                raise OSError(errno.EIO, "written short")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(aside, path)
        # The rename made durable before the write it heads commits: a store that
        # holds anything and has no head is refused, so a power cut must not undo it.
        directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        with suppress(OSError):
            os.remove(aside)
        raise AuditError(f"cannot make the store's committed tree head: {_reason(exc)}") from exc


def _put_head(fd: int, head: CommittedHead) -> None:
    try:
        written = os.pwrite(fd, _head_record(head), 0)
    except OSError as exc:
        written, reason = -1, _reason(exc)
    else:
        reason = "written short"
    if written != _HEAD_SIZE:
        raise StoreUnavailable(
            f"the write was committed but its committed tree head was not: {reason}"
        )


def _count_write(conn: sqlite3.Connection, writes: int) -> None:
    conn.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_WRITES, str(writes + 1)),
    )


def _writes(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?", (_WRITES,)
    ).fetchone()
    return int(row[0]) if row else 0


_SUFFIXES: Final = ("", "-shm", "-wal")


def _identities(path: str) -> dict[str, tuple[int, int]]:
    """The device and inode numbers of ``path``'s file, -shm and -wal (those that exist),
    by ``stat``. (On ext4 a ``stat`` of the -wal just after the fsync of a commit takes
    about 60 microseconds: a store pays it once a batch. Listing the directory instead
    was cheaper in a small one, but grows with the directory, misses a file mounted over
    the store, and cannot tell files apart where the file system gives every entry one
    number or ignores case.)"""
    found = {}
    for suffix in _SUFFIXES:
        try:
            st = os.stat(path + suffix)
        except FileNotFoundError:
            continue
        found[suffix] = (st.st_dev, st.st_ino)
    return found


class _Opened:
    """The -shm and -wal this process opened for one database file, with the stores open
    on it: SQLite shares one mapping of -shm per file in a process, so a store opened
    while another is open on the same file sees the files that one saw, not those now
    on disk. Forgotten when the last of them closes, unless one kept its anchor open
    (that mapping then stays, and so does the file: its identity is never reused)."""

    lock = threading.Lock()
    by_file: dict[tuple[int, int], _Opened] = {}  # noqa: RUF012 - one registry, under lock

    def __init__(self, files: dict[str, tuple[int, int]]):
        self.files = files
        self.stores = 0
        self.stale: str | None = None  # which file was found removed or replaced
        self.kept = False  # a store's anchor on it is never closed: nor is this mapping


def _keep_open(conn: sqlite3.Connection) -> None:
    """Never close ``conn``, not even as the interpreter exits (its reference count is
    raised once more than anything will lower it). A process's last connection to close
    copies the write-ahead log back into the file as that process's index of it says;
    when that index is a stale copy, that overwrites other processes' writes and deletes
    the log that held them. The operating system drops the connection's locks when the
    process ends, and the next process to open the store rebuilds the index from the
    log as it is."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def _log_size(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_log").fetchone()[0])


def _stored_node(conn: sqlite3.Connection, level: int, index: int) -> bytes | None:
    row = conn.execute(
        "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)
    ).fetchone()
    return None if row is None else bytes(row[0])


def _node(conn: sqlite3.Connection, level: int, index: int) -> bytes:
    """A node a writer needs: missing, the log's tree is damaged."""
    found = _stored_node(conn, level, index)
    if found is None:
        raise AuditError(f"the Merkle tree lacks node ({level}, {index})")
    return found


def _root_at(conn: sqlite3.Connection, size: int) -> bytes:
    """The root of the log's first ``size`` entries, from ``conn``'s view of the tree."""
    return root_at(size, functools.partial(_node, conn))


def _wal(conn: sqlite3.Connection, *, patience: float = 10.0) -> None:
    """Put the file in WAL mode. Turning a new file to WAL needs it to itself, and SQLite
    answers "database is locked" at once, without its busy wait, while another
    connection opens the same new file: so that is retried for up to ``patience``."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _already_open(conn: sqlite3.Connection, body: dict[str, object]) -> bool:
    """Whether an approval for the same request, chain, policy and rule is still open:
    decisions racing on one request must not open one approval each (each could be
    approved, and the request run once per approval)."""
    same = (body["links"], body["policy_hash"], body["rule"])
    for (other,) in conn.execute(
        "SELECT body FROM approvals WHERE request_hash = ? AND status = 'pending'"
        " AND expires_at > ?",
        (body["request_hash"], body["created_at"]),
    ):
        o = json.loads(other)
        if (o["links"], o["policy_hash"], o["rule"]) == same:
            return True
    return False


def _denied(conn: sqlite3.Connection, asking: Mapping[str, Any], asker: str) -> str | None:
    """A denied approval of the request and rule of approval body ``asking``, if any: one
    deny is final for a request under its rule when ``asker`` asks again (whatever
    artifact it asks with, whatever policy: ``Pending.denies``), and one that committed
    after the decision read the approvals still wins."""
    for approval_id, body in conn.execute(
        "SELECT id, body FROM approvals WHERE request_hash = ? AND status = 'denied'",
        (asking["request_hash"],),
    ):
        denied = json.loads(body)
        if denied.get("rule") == asking.get("rule") and deny_is_final(
            denied.get("holder") or "", asker
        ):
            return str(approval_id)
    return None


def _close_siblings(conn: sqlite3.Connection, used: str) -> None:
    """Close every other open approval of the request an approval was just used for
    (under any artifact, rule or policy): one approved request executes once, even if
    it was paused several ways and every approval was granted."""
    conn.execute(
        "UPDATE approvals SET status = 'closed' WHERE status = 'pending' AND id != ?"
        " AND request_hash = (SELECT request_hash FROM approvals WHERE id = ?)",
        (used, used),
    )


class _Pending:
    __slots__ = ("future", "job", "result", "state")

    def __init__(self, job: WriteJob, *, future: _JobFuture | _LoopFuture | None = None):
        self.job = job
        self.result: int | BaseException | None = None
        self.state = _QUEUED  # _TAKEN once a leader drained it; _WITHDRAWN by its caller
        # submitted jobs: resolved by whoever committed them
        self.future = future
        if future is not None:
            future.pending = self

    def resolve(self) -> None:
        future, result = self.future, self.result
        if future is None or result is None:
            return
        self.future = None  # its future keeps .pending (for withdraw): no cycle left to collect
        if isinstance(future, _LoopFuture):
            future.settle_from_any_thread(result)
            return
        with suppress(InvalidStateError):  # its awaiter was cancelled: nobody to tell
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class _JobFuture(Future[int]):
    """A submitted job's future, which knows its job (to withdraw it)."""

    pending: _Pending


class _LoopFuture(asyncio.Future[int]):
    """A job submitted from an event loop: an asyncio future of that loop, settled
    directly when the loop's own thread committed the job (the usual case: the loop
    leads its batches itself), else handed to the loop thread-safely. No thread-safe
    future and no wake-up of the loop per decision."""

    pending: _Pending

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.thread = threading.get_ident()

    def settle(self, result: int | BaseException) -> None:
        if self.done():  # its awaiter was cancelled (or timed out): nobody to tell
            return
        if isinstance(result, BaseException):
            self.set_exception(result)
        else:
            self.set_result(result)

    def settle_from_any_thread(self, result: int | BaseException) -> None:
        with suppress(RuntimeError):  # its loop has closed: nobody to tell
            if threading.get_ident() == self.thread:
                self.settle(result)
            else:
                self.get_loop().call_soon_threadsafe(self.settle, result)


class _TurnWaiter:
    """A helper thread's blocking ``flock`` of the writers' turn, on a descriptor of its
    own (see ``_wait_for_turn``)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.taken = threading.Event()
        self.settle = threading.Lock()  # settles the helper's end against a give-up
        self.failed: list[OSError] = []
        self.given_up = False  # no caller waits for it: what it takes, it lets go
        self.done = False  # the helper has ended (taken, failed or let go)
        threading.Thread(target=self._take, name="execgate-writers-turn", daemon=True).start()

    def _take(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.failed.append(exc)
        with self.settle:
            self.done = True
            if self.given_up:
                os.close(self.fd)
                return
            self.taken.set()

    def adopt(self) -> bool:
        """Wait on for the turn this helper, given up on, still waits for."""
        with self.settle:
            if self.done or not self.given_up:
                return False
            self.given_up = False
            return True


_GIVEN_UP: dict[str, _TurnWaiter] = {}  # per lock file: the last helper given up on
_GIVEN_UP_LOCK = threading.Lock()


def _give_up(waiter: _TurnWaiter, path: str) -> None:
    """Leave ``waiter`` (its ``settle`` held, the turn not taken) to let go of the turn
    once it takes it, or to the next wait on ``path`` to take over."""
    waiter.given_up = True
    with _GIVEN_UP_LOCK:
        _GIVEN_UP[path] = waiter


def _wait_for_turn(path: str, timeout: float) -> int:
    """Wait at most ``timeout`` seconds for the writers' ``flock`` on ``path``; return the
    descriptor that holds it, or raise ``StoreUnavailable``.

    A blocking ``flock`` has no time limit, so it runs in a helper thread while this one
    waits with one; the kernel still wakes it the moment the holder lets go (polling
    instead lost the turn, under load, to a holder that takes it again at once). The
    helper locks a descriptor of its own: given up on, it closes that descriptor once it
    gets the lock, which releases it and nothing else (the store's own descriptor may
    hold the turn again by then, and a lock is per open file). The next wait takes over
    a helper given up on that still waits, rather than start another: a turn held for
    hours (a stopped process) would otherwise leave a thread and a descriptor behind
    every ``timeout``."""
    with _GIVEN_UP_LOCK:
        waiter = _GIVEN_UP.pop(path, None)
    if waiter is None or not waiter.adopt():
        waiter = _TurnWaiter(path)
    try:
        waiter.taken.wait(timeout)
    except BaseException:  # an interrupt (KeyboardInterrupt): nobody waits for the turn now
        with waiter.settle:
            if waiter.taken.is_set():
                os.close(waiter.fd)  # taken meanwhile: let go of it at once
            else:
                _give_up(waiter, path)
        raise
    with waiter.settle:
        if not waiter.taken.is_set():
            _give_up(waiter, path)
            raise StoreUnavailable(f"another process has held the writers' turn for {timeout:g}s")
    if waiter.failed:
        os.close(waiter.fd)
        raise waiter.failed[0]
    return waiter.fd


class SQLiteStore:
    """A ``Store`` in one SQLite file. Thread-safe; one writer thread per instance."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError("synchronous must be FULL, NORMAL or OFF")
        self.path = os.path.abspath(path)
        # SQLite follows a symbolic link and keeps -wal and -shm beside the real file:
        # so do the committed head and the checks of those files.
        self._real = os.path.realpath(self.path)
        self._synchronous = synchronous
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # idle
        self._lock = threading.Lock()  # settles a reader's return against close
        self._closed = False
        # Created owner-only: the log holds every request's arguments. SQLite gives its
        # -wal and -shm files the database file's mode. (One that exists is left as it
        # is; one that cannot be made here is reported by the connect below.)
        with suppress(OSError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        conn = self._connect(opening=True)
        opened = False
        try:
            with conn:
                has_meta = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                ).fetchone()
                row = (
                    conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                    if has_meta
                    else None
                )
                if row is not None and row[0] != str(SCHEMA_VERSION):
                    raise StoreError(
                        f"{self.path} holds schema version {row[0]}; this execgate needs"
                        f" {SCHEMA_VERSION}: keep the old file (it holds the old log) and move"
                        " it aside to start a new store"
                    )
                conn.executescript(_SCHEMA)
                if row is None:  # a new file; another process may be creating it too
                    conn.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
            opened = True
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        finally:
            if not opened:
                conn.close()
        # The anchor: this connection, idle, stays open until ``close``. While it is, it
        # holds SQLite's shared lock on the file (so no other process may delete -wal
        # and -shm: that takes the file to itself), and every connection this process
        # opens shares the -shm it mapped. So -wal and -shm are the files they were now
        # until ``close``, unless someone removes or replaces them (``_check_files``).
        self._anchor = conn
        self._anchor_kept = False  # never closed (see _check_files)
        try:
            found = _identities(self._real)
        except OSError as exc:
            conn.close()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        if len(found) != len(_SUFFIXES):
            conn.close()
            raise StoreError(f"cannot open store {self.path}: SQLite made no -wal or -shm file")
        self._file = found[""]
        with _Opened.lock:
            shared = _Opened.by_file.setdefault(self._file, _Opened(found))
            shared.stores += 1
        self._opened = shared
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._writer_lock = threading.Lock()
        self._claim_lock = threading.Lock()  # settles a job's state: taken or withdrawn
        self._writer: sqlite3.Connection | None = None
        self._frontier: Frontier | None = None  # the leader's view of the tree's right edge
        # That frontier's root at its size, computed for the head it committed (a frontier
        # grows in place: the size tells whether it still is the one the root is of).
        self._frontier_root: tuple[Frontier, int, bytes] | None = None
        self._turn: int | None = None  # the cross-process writer lock file (_process_turn)
        self._head_path = self._real + "-head"

    def _connect(self, *, opening: bool = False, batches: bool = False) -> sqlite3.Connection:
        """A connection to the file (``batches``: the one that writes the batches). Only
        the store's opening names the file in an error: a later failure reaches decisions
        and HTTP answers, which must not tell a client where the gateway keeps its state
        (its operator knows)."""
        try:
            # After the opening, the file must be there: a removed one is not made again
            # (a readiness probe or a read would otherwise make a new, empty store, with
            # the process's umask, not the 0600 the opening gives it).
            target, uri = (
                (self.path, False)
                if opening
                else (Path(os.path.abspath(self.path)).as_uri() + "?mode=rw", True)
            )
            conn = sqlite3.connect(
                target, timeout=10.0, isolation_level=None, check_same_thread=False, uri=uri
            )
            _wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA busy_timeout = 10000")
            if batches:
                # A batch's savepoints keep their undo pages in memory (at most the pages
                # the batch changes) instead of in a temporary file once past 64 KiB (the
                # spill SQLite makes by default): half the bytes written per decision,
                # and no append fails for want of room in /var/tmp or $TMPDIR, a disk the
                # readiness probe does not ask about. (Not for the readers: a large sort
                # there, of the approvals say, may go on spilling to a file.)
                conn.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as exc:
            what = f"store {self.path}" if opening else "the store"
            raise StoreError(f"cannot open {what}: {exc}") from exc
        return conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """An idle reader connection, or a new one. ``close`` closes only idle ones: one
        in use is closed as it comes back (closing it under a query crashes the process)."""
        if self._closed:
            raise StoreError("the store is closed")
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        except (sqlite3.Error, UnicodeEncodeError, OverflowError) as exc:  # not bindable
            raise StoreError(f"store read failed: {exc}") from exc
        finally:
            with self._lock:
                if self._closed:
                    with suppress(sqlite3.Error):
                        conn.close()
                else:
                    self._readers.put(conn)

    # -- reads -------------------------------------------------------------------------

    def revoked(self, keys: Iterable[tuple[str, str]]) -> Revocation | None:
        pairs = list(keys)
        if not pairs:
            return None
        with self._reader() as conn:
            return _first_revocation(conn, pairs)

    def revocations(self) -> Sequence[Revocation]:
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT kind, value, reason, revoked_at FROM revocations"
                " ORDER BY revoked_at, kind, value"
            ).fetchall()
        return [Revocation(*r) for r in rows]

    def proof_seen(self, jti: str) -> bool:
        with self._reader() as conn:
            return (
                conn.execute("SELECT 1 FROM proof_jti WHERE jti = ?", (jti,)).fetchone() is not None
            )

    def uses_consumed(self, jti: str) -> int:
        with self._reader() as conn:
            row = conn.execute("SELECT used FROM artifact_uses WHERE jti = ?", (jti,)).fetchone()
        return int(row[0]) if row else 0

    def entries(self, start: int, end: int) -> Sequence[LogEntry]:
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT idx, entry FROM audit_log WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            ).fetchall()
        return [LogEntry(int(i), bytes(e)) for i, e in rows]

    def find(self, decision_id: str, kind: str) -> LogEntry | None:
        """The log entry of one decision (``kind="decision"``) or of its outcome."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT idx, entry FROM audit_log WHERE decision_id = ? AND kind = ?"
                " ORDER BY idx LIMIT 1",
                (decision_id, kind),
            ).fetchone()
        return LogEntry(int(row[0]), bytes(row[1])) if row else None

    def node(self, level: int, index: int) -> bytes:
        """The hash of the complete subtree covering leaves [index·2^level, (index+1)·2^level)."""
        with self._reader() as conn:
            found = _stored_node(conn, level, index)
        if found is None:  # never removed (a trigger refuses it): the store is damaged
            raise AuditError(f"the Merkle tree has no node ({level}, {index}): it is damaged")
        return found

    def add_checkpoint(self, size: int, note: str, *, now: int) -> None:
        """Keep a signed checkpoint; a second one for the same size is ignored."""
        with self._side_write("store the checkpoint") as conn:
            conn.execute(
                "INSERT OR IGNORE INTO checkpoints (size, note, created_at) VALUES (?, ?, ?)",
                (size, note, now),
            )

    def approval(self, approval_id: str) -> ApprovalRow | None:
        with self._reader() as conn:
            row = conn.execute(
                "SELECT id, status, body FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        return ApprovalRow(*row) if row else None

    def approvals(
        self,
        *,
        request_hash: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Sequence[ApprovalRow]:
        """Approvals, newest first (the latest to expire first, then by id): only those
        of one request when ``request_hash`` is set, at most ``limit``, and with
        ``after`` only those listed after that approval (none when it is unknown)."""
        where: list[str] = []
        params: list[str | int] = []
        if request_hash is not None:
            where.append("a.request_hash = ?")
            params.append(request_hash)
        if after is not None:
            # The bound first, alone: SQLite then searches the index from the cursor on
            # instead of reading it from the newest approval down.
            where.append(
                "a.expires_at <= (SELECT expires_at FROM approvals WHERE id = ?)"
                " AND (a.expires_at < (SELECT expires_at FROM approvals WHERE id = ?)"
                " OR a.id > ?)"
            )
            params += [after, after, after]
        sql = "SELECT a.id, a.status, a.body FROM approvals AS a"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.expires_at DESC, a.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._reader() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [ApprovalRow(*r) for r in rows]

    def reviews(self, approval_id: str) -> Sequence[str]:
        """The stored reviews of one approval (JSON bodies), in approver order."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT body FROM reviews WHERE approval_id = ? ORDER BY approver", (approval_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def checkpoints(self) -> Sequence[tuple[int, str]]:
        """Every stored checkpoint as (size, signed note), oldest first."""
        with self._reader() as conn:
            rows = conn.execute("SELECT size, note FROM checkpoints ORDER BY size").fetchall()
        return [(int(size), str(note)) for size, note in rows]

    def newest_checkpoint(self) -> tuple[int, int] | None:
        """The size and the time (``created_at``) of the newest stored checkpoint."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT size, created_at FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def recent_checkpoints(self) -> Iterator[tuple[int, str]]:
        """The stored checkpoints newest first, read a few at a time as they are taken
        (a log checkpointed for years holds millions; the newest is what is wanted). One
        stored after the first read is not included."""
        below: int | None = None
        while True:
            with self._reader() as conn:
                rows = conn.execute(
                    "SELECT size, note FROM checkpoints WHERE ? IS NULL OR size < ?"
                    " ORDER BY size DESC LIMIT 16",
                    (below, below),
                ).fetchall()
            yield from ((int(size), str(note)) for size, note in rows)
            if len(rows) < 16:
                return
            below = int(rows[-1][0])

    def size(self) -> int:
        with self._reader() as conn:
            return _log_size(conn)

    def committed_head(self) -> CommittedHead | None:
        """What the last commit left (see the module docstring), or None where no commit
        has left one yet. Read outside the writers' turn: a head is only ever behind the
        store, never ahead of it, unless the store lost writes (or, from this process,
        when its view is stale: then ``AuditError``, as for a write)."""
        self._check_files()
        # What the store holds first: a head, once made, is there before anything is.
        with self._reader() as conn:
            size, writes = _log_size(conn), _writes(conn)
        head = _read_head(self._head_path, tries=_HEAD_READS)
        if head is None and (size or writes):
            raise AuditError(self._missing(size, writes))
        return head

    def _missing(self, size: int, writes: int) -> str:
        return _MISSING.format(size=size, writes=writes, name=os.path.basename(self._head_path))

    def _check_files(self) -> None:
        """``AuditError`` once the store's file, -wal or -shm is not the file this process
        opened (removed or replaced: see ``__init__``), from then on, for every store of
        this process on that file. A process whose -shm was replaced sees the log
        through a stale index of it while a process that opened the store since sees it
        through a new one, and neither sees the other's appends (and a replaced
        database file is another store under the same -wal); so this process writes
        and signs nothing more on it, and never closes its anchor. After a removed
        -wal, what this process wrote lives only in the removed file: it writes nothing
        more either, and ``close`` decides whether its anchor may close."""
        opened = self._opened
        if opened.stale is None:
            try:
                found = _identities(self._real)
            except OSError as exc:
                raise StoreUnavailable(f"cannot look at the store's files: {_reason(exc)}") from exc
            for suffix, known in opened.files.items():
                if found.get(suffix) == known:
                    continue
                with _Opened.lock:
                    opened.stale = opened.stale or suffix or "database"
                break
            else:
                return
        if opened.stale != "-wal":
            self._keep_anchor()
        raise AuditError(
            f"the store's {opened.stale} file was removed or replaced while this process had"
            " it open: this process appends and signs nothing more until it is restarted"
            " (README: The gateway home)"
        )

    def _keep_anchor(self) -> None:
        if not self._anchor_kept:
            _keep_open(self._anchor)
            self._anchor_kept = True
            with _Opened.lock:
                self._opened.kept = True

    def _take_head(
        self, size: int, writes: int, root: Callable[[int], bytes]
    ) -> tuple[int, CommittedHead]:
        """In a write transaction, in the writers' turn: check the store (``size``,
        ``writes``, ``root``) against its committed head, and return the head's file open
        for writing with what it holds (made now, where there was none: only for a store
        that holds nothing yet; see ``remake_head``)."""
        fd, head = _open_head(self._head_path)
        if fd is None and (size or writes):
            raise AuditError(self._missing(size, writes))
        try:
            check_head(head, size, root, writes)
            if fd is None or head is None:
                head = CommittedHead(size, root(size), writes)
                fd = _make_head(self._head_path, head)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        return fd, head

    # -- writes ------------------------------------------------------------------------

    def revoke(self, kind: str, value: str, *, reason: str, now: int) -> bool:
        """Record a revocation; False when it was already revoked. Durable on return."""
        if kind not in REVOCATION_KINDS:
            raise ValueError(f"kind must be one of {', '.join(REVOCATION_KINDS)}")
        with self._side_write("record revocation") as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO revocations VALUES (?, ?, ?, ?)", (kind, value, reason, now)
            )
        return cur.rowcount == 1

    def purge_expired(self, now: int) -> int:
        """Forget replay and use state that expired before ``now``; returns rows removed.

        Each table's mark is raised past the latest expiry it removes (the marks only
        rise): a claim whose own time (a proof's ``iat``, an admin token's or an
        artifact's ``exp``; see ``WriteJob.proof_window``, ``UseClaim.leeway``) is
        before a mark is refused from then on (``Conflict.PURGED``), since a row that
        recorded it may be gone, whatever window the gateway that wrote it added. Under
        a clock that only moves forward and one ``[limits]`` for every gateway of the
        store that never happens (a claim the pipeline accepts is younger than any purge
        removes: see ``Gateway._purge``); after the clock has gone back, it
        keeps a replay of a proof whose record was purged from passing as new. The mark
        is what was removed, not ``now``: a purge run while the clock read years ahead
        removes rows that expire a proof's lifetime after the true time, so once the
        clock is right again fresh proofs are refused for about that long, not for
        years; use counts, until the longest-lived artifact whose count was removed
        expires."""
        # One transaction (the side write's), the marks first: no writer ever sees rows
        # gone and a mark not yet raised, and a purge that fails removes nothing.
        with self._side_write("purge expired state") as conn:
            for table, key in (
                ("proof_jti", _PURGED_BEFORE),
                ("artifact_uses", _USES_PURGED_BEFORE),
            ):
                latest = conn.execute(
                    f"SELECT MAX(expires_at) FROM {table} WHERE expires_at < ?",  # noqa: S608 - two fixed names
                    (now,),
                ).fetchone()[0]
                if latest is not None:
                    conn.execute(
                        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET"
                        " value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                        (key, str(latest + 1)),
                    )
            a = conn.execute("DELETE FROM proof_jti WHERE expires_at < ?", (now,)).rowcount
            b = conn.execute("DELETE FROM artifact_uses WHERE expires_at < ?", (now,)).rowcount
        return a + b

    @contextmanager
    def _write_turn(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own in a write transaction (``BEGIN IMMEDIATE``) in the
        writers' turn (this process's writer lock, then the writers' ``flock``), so a
        batch being led on an event loop (``lead_now``) sees the store busy and tries
        again shortly, instead of its thread waiting in SQLite's busy handler. Rolled back
        unless committed, and closed, when the block ends; a lock file that fails is
        ``StoreUnavailable``."""
        if self._closed:  # as for a commit; and its lock file is not opened again
            raise StoreUnavailable("the store is closed")
        if not self._writer_lock.acquire(timeout=_COMMIT_TIMEOUT):
            raise StoreUnavailable(f"no turn to write within {_COMMIT_TIMEOUT}s")
        try:
            if self._closed:  # closed while this writer waited: nothing more is written
                raise StoreUnavailable("the store is closed")
            with self._process_turn(wait=True):
                self._check_files()
                conn = self._connect()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
                finally:
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    conn.close()
        except OSError as exc:  # the lock file
            raise StoreUnavailable(f"cannot take the writers' turn: {_reason(exc)}") from exc
        finally:
            self._writer_lock.release()

    @contextmanager
    def _side_write(self, what: str) -> Iterator[sqlite3.Connection]:
        """A write outside the commit batches (a revocation, a checkpoint, a purge), in
        the writers' turn (``_write_turn``), counted, and checked against the committed
        head first. A failed statement is ``StoreError("cannot <what>: ...")``."""
        fd: int | None = None
        try:
            with self._write_turn() as conn:
                writes = _writes(conn)
                fd, head = self._take_head(
                    _log_size(conn), writes, functools.partial(_root_at, conn)
                )
                yield conn
                _count_write(conn, writes)
                conn.execute("COMMIT")
                # The log is as it was: the head names what it named of it (one behind
                # the log stays behind until the next batch moves it on).
                _put_head(fd, head._replace(writes=writes + 1))
        except (sqlite3.Error, UnicodeEncodeError, OverflowError) as exc:  # not bindable
            raise StoreError(f"cannot {what}: {exc}") from exc
        finally:
            if fd is not None:
                os.close(fd)

    def remake_head(self, verified: tuple[int, bytes] | None = None) -> CommittedHead:
        """Make the committed head anew from the store as it is, replacing one missing or
        damaged (``execgate audit reset-head``, once the log has been shown whole): in the
        writers' turn, in a write transaction, so it names no write half done. With
        ``verified`` (size, root: what the log was checked to hold), the store's tree
        must give that root at that size first, or ``AuditError`` and nothing is made:
        the head's root is read from the stored tree, which may differ from the entries
        that were checked. A head that is whole is never replaced by one that names
        less: where it says the store lost writes, that is ``AuditError`` too (the writes
        are put back, or the home is made anew; see ``check_head``)."""
        try:
            with self._write_turn() as conn:
                size, writes = _log_size(conn), _writes(conn)
                try:
                    kept = _read_head(self._head_path, tries=1)
                except AuditError:  # damaged or unreadable: what is made anew
                    kept = None
                try:
                    check_head(kept, size, functools.partial(_root_at, conn), writes)
                except AuditError as exc:
                    raise AuditError(
                        f"{exc} (the committed tree head is whole: it is made anew only"
                        " where it is missing or damaged)"
                    ) from exc
                if verified is not None and (
                    verified[0] > size or _root_at(conn, verified[0]) != verified[1]
                ):
                    raise AuditError(
                        f"the store's tree does not hold the {verified[0]} entries that"
                        " were checked: no head is made"
                    )
                head = CommittedHead(size, _root_at(conn, size), writes)
                os.close(_make_head(self._head_path, head))
                return head
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read the store: {exc}") from exc

    def check_writable(self, timeout: float) -> None:
        """See ``Store.check_writable``: within ``timeout``, this process's writer lock,
        the writers' ``flock`` (tried again every few milliseconds: a probe needs no
        place in the queue, and must leave no waiting thread behind when the holder
        never lets go), then ``BEGIN IMMEDIATE``, the committed head opened for writing
        and checked (made, if it was removed, as the next write would make it) and
        ``ROLLBACK`` with what is left; and first, room to write (``_check_room``)."""
        deadline = time.monotonic() + timeout
        if self._closed:
            raise StoreUnavailable("the store is closed")
        self._check_room()
        try:
            conn = self._connect()  # before any lock: nobody waits on the connecting
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the store: {exc}") from exc
        try:
            if not self._writer_lock.acquire(timeout=timeout):
                raise StoreUnavailable(f"no turn to write within {timeout:g}s")
            try:
                self._probe_turn(conn, deadline, timeout)
            finally:
                self._writer_lock.release()
        except OSError as exc:  # the lock file
            raise StoreUnavailable(f"cannot take the writers' turn: {_reason(exc)}") from exc
        finally:
            conn.close()

    def _check_room(self) -> None:
        """``StoreUnavailable`` when the store's file system is read-only or nearly full:
        a write transaction still opens there (it writes nothing until its commit), but
        every append fails. Free space is counted as this process may use it (root may
        use the blocks a file system keeps for it)."""
        try:
            disk = os.statvfs(os.path.dirname(self._real))  # where SQLite writes
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the store's file system: {_reason(exc)}") from exc
        if disk.f_flag & os.ST_RDONLY:
            raise StoreUnavailable("the store's file system is read-only: every append fails")
        free = (disk.f_bfree if os.geteuid() == 0 else disk.f_bavail) * disk.f_frsize
        if free < _MIN_FREE:
            raise StoreUnavailable(
                f"the store's file system has {free // 1024} KiB free, under"
                f" {_MIN_FREE // 1024 // 1024} MiB: appends may fail"
            )

    def _probe_turn(self, conn: sqlite3.Connection, deadline: float, timeout: float) -> None:
        turn = self._turn_fd()
        try:  # from before the turn is taken: an interrupt just after leaves it free
            while True:
                try:
                    fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreUnavailable(
                            f"another process has held the writers' turn for {timeout:g}s"
                        ) from None
                    time.sleep(_PROBE_RETRY)
            left = max(deadline - time.monotonic(), 0.0)
            conn.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
            self._check_files()
            conn.execute("BEGIN IMMEDIATE")
            # Writable, as the next commit needs it; a new store's first head is made
            # now, as that commit would (so a directory that takes no new file is not
            # ready).
            fd, _ = self._take_head(
                _log_size(conn), _writes(conn), functools.partial(_root_at, conn)
            )
            os.close(fd)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot start a write: {exc}") from exc
        finally:
            if conn.in_transaction:  # not after an error that rolled it back already
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            fcntl.flock(turn, fcntl.LOCK_UN)

    def _turn_fd(self) -> int:
        """This store's descriptor of ``<store>-writer.lock`` (opened once, held by the
        writer lock): the writers' turn across processes."""
        if self._turn is None:
            self._turn = os.open(
                self._real + "-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        return self._turn

    def commit(self, job: WriteJob) -> int:
        """Append one decision's writes; return its log index once durable."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        pending = _Pending(job)
        self._queue.put(pending)
        try:
            started = self._writer_lock.acquire(timeout=_COMMIT_TIMEOUT)
        except BaseException:
            # Interrupted (KeyboardInterrupt): nobody will hear the answer. A job no
            # leader has taken is withdrawn, never written; one being written completes
            # and stays in the log, and nothing executes on it.
            self._withdraw(pending)
            raise
        if not started:
            if self._withdraw(pending):  # no leader has it: it will never be written
                raise StoreUnavailable(f"the audit append did not start within {_COMMIT_TIMEOUT}s")
            # A leader is writing it right now: its result is moments away.
            self._writer_lock.acquire()
        try:
            # Nobody has committed it yet: lead batches until one holds it (more jobs than
            # one batch takes may be queued ahead of it).
            while pending.result is None:
                emptied = self._lead()
                # Not written, and the queue it was put on before was found empty: taken
                # off it by a leader that an interrupt stopped before it was in a batch.
                # No leader will ever write it (this one holds the lock).
                if pending.result is None and emptied and self._withdraw(pending):
                    pending.result = StoreUnavailable(
                        "the audit append was interrupted before it started"
                    )
        except BaseException:  # an interrupt: not taken yet, it is withdrawn (as above)
            self._withdraw(pending)
            raise
        finally:
            self._writer_lock.release()
        if isinstance(pending.result, BaseException):
            raise pending.result
        assert isinstance(pending.result, int)
        return pending.result

    @overload
    def submit(self, job: WriteJob) -> Future[int]: ...
    @overload
    def submit(self, job: WriteJob, *, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]: ...

    def submit(
        self, job: WriteJob, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> Future[int] | asyncio.Future[int]:
        """Queue one decision's writes without waiting: the future resolves to its log
        index once the commit holding it is durable (or to the error that stopped it).

        For a caller that must not block its thread on the commit (the HTTP server's
        event loop). It is written by the next leader: a ``commit`` caller, or the
        submitter itself through ``lead_now``, which never waits. A submitter that gives
        up waiting withdraws its job with ``withdraw``. With ``loop`` (called from that
        loop's thread), the future is an asyncio future of that loop."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        future = _JobFuture() if loop is None else _LoopFuture(loop)
        pending = _Pending(job, future=future)
        self._queue.put(pending)
        if self._closed:  # closed meanwhile: nobody will lead again
            self._fail_queued()
        # The local, not pending.future: another thread may have written (or failed) the
        # job and resolved it since the put, which drops pending's reference to it.
        return future

    def lead_now(self) -> bool:
        """Commit every queued job in this thread, batch by batch, if that needs no
        waiting: True when done (or nothing was queued), False when another thread of
        this process or another process is writing (try again shortly).

        Why the event loop writes itself: a writer thread beside the loop would fight it
        for the interpreter lock on every C call either makes (each signature check and
        SQLite read of the loop waits for the writer's Python work, and the other way
        round), which measured a third more CPU per decision than writing in the loop,
        where the only wait is the fsync that makes a whole batch durable."""
        if self._queue.empty():
            return True
        if not self._writer_lock.acquire(blocking=False):
            return False
        try:
            with self._process_turn(wait=False) as turn:
                if not turn:
                    return False
                while not self._queue.empty() and not self._closed:
                    self._lead(turn_taken=True)
            return True
        except OSError as exc:  # the lock file: every queued job fails now, not later
            self._fail_queued(StoreUnavailable(f"cannot take the writers' turn: {_reason(exc)}"))
            return True
        finally:
            self._writer_lock.release()

    def withdraw(self, future: Future[int] | asyncio.Future[int]) -> bool:
        """Withdraw a submitted job no leader has taken yet; False once one has (its
        result is then moments away and must be awaited)."""
        if not isinstance(future, _JobFuture | _LoopFuture):
            raise TypeError("withdraw takes a future that submit returned")
        return self._withdraw(future.pending)

    def _withdraw(self, pending: _Pending) -> bool:
        with self._claim_lock:
            if pending.state == _QUEUED:
                pending.state = _WITHDRAWN
                return True
        return False

    def _fail_queued(self, error: AuditError | None = None) -> None:
        """Every job still queued fails (it was never written): the store closed, or
        ``error`` stopped the writer."""
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return
            with self._claim_lock:
                if pending.state != _QUEUED:
                    continue
                pending.state = _TAKEN
            pending.result = error or StoreUnavailable(
                "the store closed before this record was written"
            )
            pending.resolve()

    def _lead(self, *, turn_taken: bool = False) -> bool:
        """Write one batch of queued jobs and resolve each; return whether it found the
        queue empty (every job queued before was taken). Whatever stops the batch is
        every job's result; an interrupt (KeyboardInterrupt, SystemExit) is raised on
        after that, once no job it took is left unresolved."""
        batch: list[_Pending] = []
        interrupted: BaseException | None = None
        emptied = False
        try:
            with self._claim_lock:
                while len(batch) < _BATCH_MAX:
                    try:
                        pending = self._queue.get_nowait()
                    except queue.Empty:
                        emptied = True
                        break
                    if pending.state == _QUEUED:  # skip what its caller has given up on
                        batch.append(pending)
                        pending.state = _TAKEN
        except BaseException as exc:  # an interrupt: what was taken is not written
            for p in batch:
                p.result = StoreUnavailable(f"audit append failed: {_reason(exc)}")
                p.resolve()
            raise
        if self._closed:  # closed while this leader waited: nothing more is written
            for p in batch:
                p.result = StoreUnavailable("the store closed before this record was written")
                p.resolve()
            return emptied
        if not batch:  # nothing queued (or only what its callers gave up on)
            return emptied
        try:
            if self._writer is None:
                self._writer = self._connect(batches=True)
            if turn_taken:
                self._write_batch(self._writer, batch)
            else:
                with self._process_turn(wait=True):
                    self._write_batch(self._writer, batch)
        except BaseException as exc:  # noqa: BLE001 - every failure reaches every caller
            error = (  # the log's own refusals stay AuditError; anything else is the store
                exc
                if isinstance(exc, AuditError)
                else StoreUnavailable(f"audit append failed: {_reason(exc)}")
            )
            for p in batch:
                p.result = error
            if self._writer is not None:
                with suppress(sqlite3.Error):
                    self._writer.close()
            self._writer = None
            self._frontier = None
            if not isinstance(exc, Exception):
                interrupted = exc
        for p in batch:
            p.resolve()
        if interrupted is not None:
            raise interrupted
        return emptied

    def _load_frontier(self, conn: sqlite3.Connection, size: int) -> Frontier:
        """The frontier of a ``size``-entry log, read from the stored complete subtrees."""
        if self._frontier is not None and self._frontier.size == size:
            return self._frontier
        hashes = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                hashes.append(_node(conn, level, start >> level).hex())
                start += 1 << level
        self._frontier = Frontier.from_json({"size": size, "hashes": hashes})
        return self._frontier

    @contextmanager
    def _process_turn(self, *, wait: bool) -> Iterator[bool]:
        """Take the writers' turn across processes (several server workers share one
        file) with an ``flock`` on ``<store>-writer.lock``: a waiting writer starts the
        moment the other commits, instead of in SQLite's busy handler, which sleeps in
        growing steps (1, 2, 5, 10… ms) and lets one process starve the other. Yields
        whether the turn was taken (always, when ``wait``). Held by the writer lock.

        With ``wait``, a turn not had within ``_COMMIT_TIMEOUT`` (another process stopped
        while writing) is ``StoreUnavailable``: its callers fail closed instead of
        hanging (see ``_wait_for_turn``)."""
        held = self._turn_fd()
        # From before the turn is taken: an interrupt just after taking it leaves it
        # free too (letting go where it is not held lets go of nothing).
        try:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                held = _wait_for_turn(self._real + "-writer.lock", _COMMIT_TIMEOUT)
            yield True
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
            if held != self._turn:
                os.close(held)

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        self._check_files()
        conn.execute("BEGIN IMMEDIATE")
        fd: int | None = None
        try:
            index = _log_size(conn)
            frontier = self._load_frontier(conn, index)
            self._frontier = None  # trusted again only once this batch commits
            marks = dict(
                conn.execute(
                    "SELECT key, CAST(value AS INTEGER) FROM meta WHERE key IN (?, ?, ?)",
                    (_PURGED_BEFORE, _USES_PURGED_BEFORE, _WRITES),
                ).fetchall()
            )
            writes = marks.get(_WRITES, 0)
            start, known = index, self._frontier_root

            def root(n: int) -> bytes:
                if n != start:
                    return _root_at(conn, n)
                if known is not None and known[0] is frontier and known[1] == start:
                    return known[2]  # the one this batch's frontier gave after the last
                return frontier.root()

            fd, _ = self._take_head(index, writes, root)
            purged = (
                marks.get(_PURGED_BEFORE, 0),
                max(marks.get(_PURGED_BEFORE, 0), marks.get(_USES_PURGED_BEFORE, 0)),
            )
            for p in batch:
                job = p.job
                assert job is not None
                conn.execute("SAVEPOINT job")
                try:
                    entry = job.finalize(self._claim(conn, job, purged), index)
                    conn.execute(
                        "INSERT INTO audit_log (idx, entry, kind, decision_id) VALUES (?, ?, ?, ?)",
                        (index, entry, job.kind, job.decision_id),
                    )
                except Exception as exc:  # noqa: BLE001 - reported to that caller only
                    conn.execute("ROLLBACK TO job")
                    p.result = StoreUnavailable(str(exc)) if isinstance(exc, sqlite3.Error) else exc
                else:
                    conn.executemany(
                        "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)",
                        frontier.append(entry),
                    )
                    p.result = index
                    index += 1
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
            self._frontier = frontier
            committed = CommittedHead(frontier.size, frontier.root(), writes)
            self._frontier_root = (frontier, committed.size, committed.root)
            # Not written (its file was open and writable a moment ago: a failing disk):
            # the batch's callers fail closed (their entries are in the log, their
            # answers are never given), and the next batch finds the head behind and
            # checks it.
            _put_head(fd, committed)
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _claim(conn: sqlite3.Connection, job: WriteJob, purged: tuple[int, int]) -> str | None:
        """Check and take what the job claims, in order: not revoked (nothing is written
        for a revoked artifact), state not purged (``purged``: the marks below which
        replay state and use counts may be gone), the proof unseen (it stays spent
        whatever follows), then uses and approvals (given back on a conflict)."""
        if job.revocation_keys:
            job.revoked = _first_revocation(conn, job.revocation_keys)
            if job.revoked is not None:
                return Conflict.REVOKED
        uses = [u for u in (*job.chain_uses, job.use) if u is not None]
        # A removed row expired at its own time plus its writer's window (at least 0), so
        # it is below the mark; a claim is compared by its own time, which is then below
        # the mark too, whatever window the gateway claiming it now applies.
        proofs_before, uses_before = purged
        if (
            job.proof_jti is not None and job.proof_expires_at - job.proof_window < proofs_before
        ) or any(u.expires_at - u.leeway < uses_before for u in uses):
            return Conflict.PURGED  # nothing is claimed: whether it was before is unknown
        if job.proof_jti is not None:
            try:
                conn.execute(
                    "INSERT INTO proof_jti (jti, expires_at) VALUES (?, ?)",
                    (job.proof_jti, job.proof_expires_at),
                )
            except sqlite3.IntegrityError:
                return Conflict.REPLAY
        if not (uses or job.consume_approval or job.open_approval or job.review):
            return None
        # A conflict below makes the decision a deny: the uses and the approval it claimed
        # before the conflict are given back (the proof stays spent, as for any deny).
        conn.execute("SAVEPOINT claim")
        conflict = SQLiteStore._claim_state(conn, job, uses)
        if conflict is not None:
            conn.execute("ROLLBACK TO claim")
        conn.execute("RELEASE claim")
        return conflict

    @staticmethod
    def _claim_state(conn: sqlite3.Connection, job: WriteJob, uses: list[UseClaim]) -> str | None:
        for use in uses:  # the limited ancestors' uses first, then the artifact's own
            conn.execute(
                "INSERT OR IGNORE INTO artifact_uses VALUES (?, 0, ?, ?)",
                (use.jti, use.limit, use.expires_at),
            )
            cur = conn.execute(
                "UPDATE artifact_uses SET used = used + 1 WHERE jti = ? AND used < ?",
                (use.jti, use.limit),
            )
            if cur.rowcount != 1:
                job.exhausted = use
                return Conflict.EXHAUSTED
        if job.consume_approval is not None:
            used = conn.execute(
                "SELECT body FROM approvals WHERE id = ?", (job.consume_approval,)
            ).fetchone()
            if used is not None:
                job.denied = _denied(conn, json.loads(used[0]), job.asker)
                if job.denied is not None:
                    return Conflict.APPROVAL_DENIED
            cur = conn.execute(
                "UPDATE approvals SET status = 'consumed'"
                " WHERE id = ? AND status = 'pending' AND expires_at > ?",
                (job.consume_approval, int(job.clock())),
            )
            if cur.rowcount != 1:
                pending = conn.execute(
                    "SELECT 1 FROM approvals WHERE id = ? AND status = 'pending'",
                    (job.consume_approval,),
                ).fetchone()
                return Conflict.APPROVAL_CLOSED if pending is None else Conflict.APPROVAL_EXPIRED
            _close_siblings(conn, job.consume_approval)
        if job.open_approval is not None:
            row = job.open_approval
            body = json.loads(row.body)
            job.denied = _denied(conn, body, job.asker)
            if job.denied is not None:
                return Conflict.APPROVAL_DENIED
            if _already_open(conn, body):
                return Conflict.APPROVAL_OPEN
            conn.execute(
                "INSERT INTO approvals (id, request_hash, status, expires_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (row.approval_id, body["request_hash"], row.status, body["expires_at"], row.body),
            )
        if job.review is not None:
            review = job.review
            still_open = conn.execute(
                "SELECT 1 FROM approvals WHERE id = ? AND status = 'pending'",
                (review.approval_id,),
            ).fetchone()
            if still_open is None:
                return Conflict.APPROVAL_CLOSED
            if review.verdict == "deny":
                conn.execute(
                    "UPDATE approvals SET status = 'denied' WHERE id = ?", (review.approval_id,)
                )
            if review.replaces:  # signed with a key since removed: no longer counted
                conn.execute(
                    "DELETE FROM reviews WHERE approval_id = ? AND approver = ?",
                    (review.approval_id, review.approver),
                )
            try:
                conn.execute(
                    "INSERT INTO reviews (approval_id, approver, verdict, body)"
                    " VALUES (?, ?, ?, ?)",
                    (review.approval_id, review.approver, review.verdict, review.body),
                )
            except sqlite3.IntegrityError:
                return Conflict.APPROVAL_CLOSED
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._writer_lock:
            self._fail_queued()  # submitted jobs no leader took: never written
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._turn is not None:
                os.close(self._turn)
                self._turn = None
        with self._lock:  # the idle readers; each one in use is closed as it comes back
            while True:
                try:
                    conn = self._readers.get_nowait()
                except queue.Empty:
                    break
                with suppress(sqlite3.Error):
                    conn.close()
        with suppress(StoreError):  # one last look: a stale -shm keeps the anchor open
            self._check_files()
        if self._opened.stale is not None:
            # A removed -wal: closing last copies it back into the file, which keeps what
            # this process wrote. But a -wal another process has made since at that path
            # is indexed by the same -shm: copying from the removed one would write its
            # frames where the index names the new one's. (While that process has the
            # store open, no close copies anything.)
            wal = self._opened.files["-wal"]
            with suppress(OSError):
                if _identities(self._real).get("-wal", wal) != wal:
                    self._keep_anchor()
        with _Opened.lock:
            self._opened.stores -= 1
            if self._opened.stores == 0 and not self._opened.kept:
                _Opened.by_file.pop(self._file, None)
        if not self._anchor_kept:
            with suppress(sqlite3.Error):
                self._anchor.close()

    # -- gauges for /metrics (server.metrics) ------------------------------------------

    def replay_size(self) -> int:
        with self._reader() as conn:
            row = conn.execute("SELECT COUNT(*) FROM proof_jti").fetchone()
        return int(row[0])

    def pending_approvals(self, now: int) -> int:
        with self._reader() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM approvals WHERE status = 'pending' AND expires_at > ?",
                (now,),
            ).fetchone()
        return int(row[0])
