"""The committed tree head beside the store (``<store>-head``): a log that lost entries,
or that a process sees through a stale view, takes no more entries and signs nothing.

Real SQLite files, and real processes where the failure needs two (a removed ``-shm``)
or a kill (a removed ``-wal``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.audit.checkpoint import open_checkpoint
from execgate.audit.log import AuditLog, SigningRefused
from execgate.errors import AuditError, StoreUnavailable
from execgate.jose import PrivateKey
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore

KEY = PrivateKey.generate()


def job(payload: bytes) -> WriteJob:
    return WriteJob(None, 0, None, lambda _conflict, index: payload + b" %d" % index)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def fill(path: Path, n: int, payload: bytes = b"entry") -> list[int]:
    store = SQLiteStore(path)
    try:
        return [store.commit(job(payload)) for _ in range(n)]
    finally:
        store.close()


def rows(path: Path) -> list[int]:
    """The log's indexes as a new process reads them (the files, not this process's
    view: SQLite shares one per file within a process)."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        " print(*(i for (i,) in c.execute('SELECT idx FROM audit_log ORDER BY rowid')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return [int(i) for i in out.stdout.split()]


def head(path: Path) -> bytes:
    return Path(f"{path}-head").read_bytes()


class Writer:
    """Another process with the store open, driven one command a line: ``commit``
    appends one entry, ``revoke`` records a revocation, ``ready`` runs the readiness
    probe, ``close`` closes the store and exits."""

    CODE = textwrap.dedent(
        """
        import sys
        from execgate.store.base import WriteJob
        from execgate.store.sqlite import SQLiteStore
        store = SQLiteStore(sys.argv[1])
        print("open", flush=True)
        for n, line in enumerate(sys.stdin):
            command = line.strip()
            if command == "close":
                store.close()
                print("closed", flush=True)
                break
            try:
                if command == "commit":
                    job = WriteJob(None, 0, None, lambda c, i: b"other %d" % i)
                    print("index", store.commit(job), flush=True)
                elif command == "revoke":
                    print("revoked", store.revoke("jti", f"x{n}", reason="r", now=1), flush=True)
                elif command == "ready":
                    store.check_writable(1.0)
                    print("ready", flush=True)
            except Exception as exc:
                print("refused", type(exc).__name__, exc, flush=True)
        """
    )

    def __init__(self, path: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == "open"

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def commit(self) -> str:
        return self.send("commit")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.close()

    def close(self) -> None:
        """Close its pipes (it then closes the store and exits, if alive) and wait."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Close the store cleanly, then exit."""
        assert self.send("close") == "closed"
        self.close()


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.kill()
        else:
            w.close()


def test_each_commit_leaves_the_committed_size_and_root_beside_the_store(path: Path) -> None:
    store = SQLiteStore(path)
    log = AuditLog(store, origin="test.example/log", key=PrivateKey.generate())
    try:
        for n in range(1, 6):
            store.commit(job(b"entry"))
            assert store.committed_head() == (n, log.root(n), 0)
        store.revoke("jti", "x", reason="r", now=1)  # the log is as it was; one more write
        assert store.committed_head() == (5, log.root(5), 1)
    finally:
        store.close()
    assert len(head(path)) == 60


def test_a_store_restored_from_an_older_copy_takes_no_entry_and_signs_nothing(
    path: Path, tmp_path: Path
) -> None:
    key = PrivateKey.generate()
    fill(path, 3)
    assert not Path(f"{path}-wal").exists()  # the last close folded it into the file
    shutil.copy(path, tmp_path / "old.db")
    store = SQLiteStore(path)
    log = AuditLog(store, origin="test.example/log", key=key)
    for _ in range(2):
        store.commit(job(b"entry"))
    signed = open_checkpoint(log.checkpoint(now=1), log.verifier)
    store.close()
    assert signed.size == 5

    shutil.copy(tmp_path / "old.db", path)  # back to 3 entries (and no checkpoint)
    store = SQLiteStore(path)
    log = AuditLog(store, origin="test.example/log", key=key)
    try:
        with pytest.raises(AuditError, match="holds 3 entries but 5 were committed"):
            store.commit(job(b"forked"))
        with pytest.raises(AuditError, match="holds 3 entries but 5 were committed"):
            store.check_writable(1.0)
        with pytest.raises(SigningRefused, match="holds 3 entries but 5 were committed"):
            log.checkpoint(now=2)
        assert store.size() == 3
        assert store.checkpoints() == []
    finally:
        store.close()


def test_a_log_whose_entries_were_replaced_takes_no_entry(path: Path, tmp_path: Path) -> None:
    fill(path, 3)
    head_at_3 = head(path)
    fill(path, 2)
    other = tmp_path / "other.db"
    fill(other, 5, b"other")  # as many entries, other bytes: another root
    shutil.copy(other, path)
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match="first 5 entries are not the 5 that were committed"):
            store.commit(job(b"x"))
    finally:
        store.close()
    # A head behind the log (a process killed between its commit and the head's write)
    # is checked against the log's first entries: another log's are refused too.
    Path(f"{path}-head").write_bytes(head_at_3)
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match="first 3 entries are not the 3 that were committed"):
            store.commit(job(b"x"))
        with pytest.raises(AuditError, match="first 3 entries are not the 3 that were committed"):
            store.check_writable(1.0)
        assert store.size() == 5
    finally:
        store.close()


def test_a_head_behind_the_log_is_checked_and_moves_on(path: Path, tmp_path: Path) -> None:
    """A writer killed between its commit and the head's write leaves the head one
    batch behind; the next commit checks the log still holds what the head names."""
    fill(path, 3)
    behind = head(path)
    fill(path, 2)
    Path(f"{path}-head").write_bytes(behind)
    store = SQLiteStore(path)
    try:
        assert store.committed_head() is not None
        assert store.committed_head()[0] == 3  # type: ignore[index]
        assert store.commit(job(b"entry")) == 5
        assert store.committed_head()[0] == 6  # type: ignore[index]
        store.check_writable(1.0)
    finally:
        store.close()


def wal_removed_after_two_appends(path: Path, writers: list[Writer], *, first: int) -> Writer:
    """A writer that appended two entries (``first`` and the next) before its -wal file
    was removed, and was refused a third."""
    w = Writer(path)
    writers.append(w)
    assert [w.commit(), w.commit()] == [f"index {first}", f"index {first + 1}"]
    os.remove(f"{path}-wal")
    assert w.commit().startswith("refused AuditError the store's -wal file was removed")
    return w


def test_a_removed_wal_then_a_kill_loses_entries_and_the_store_says_so(
    path: Path, writers: list[Writer]
) -> None:
    """What a process appended before its -wal file was removed lives only in the
    removed file: it appends nothing more, and once it is killed those entries are gone,
    although each was acknowledged."""
    fill(path, 2)
    w = wal_removed_after_two_appends(path, writers, first=2)
    assert w.send("revoke").startswith("refused AuditError the store's -wal file was removed")
    assert w.send("ready").startswith("refused AuditError the store's -wal file was removed")
    w.kill()
    store = SQLiteStore(path)
    try:
        assert store.size() == 2  # what the kill took
        with pytest.raises(AuditError, match="holds 2 entries but 4 were committed"):
            store.commit(job(b"entry"))
        with pytest.raises(AuditError, match="holds 2 entries but 4 were committed"):
            store.check_writable(1.0)
    finally:
        store.close()


def test_a_removed_wal_then_a_clean_stop_keeps_every_entry(
    path: Path, writers: list[Writer]
) -> None:
    """Stopped cleanly (the last connection to the store), the process copies the
    removed file back into the store, as SQLite does on every last close."""
    w = wal_removed_after_two_appends(path, writers, first=0)
    w.stop()
    assert rows(path) == [0, 1]
    store = SQLiteStore(path)
    try:
        assert store.commit(job(b"entry")) == 2
    finally:
        store.close()


def test_a_removed_shm_under_two_processes_gives_no_index_twice(
    path: Path, writers: list[Writer]
) -> None:
    """SQLite keeps the index of its write-ahead log in ``-shm``: a process that opens
    the store after the file was removed builds a new one, while a process that had it
    open keeps the removed one, and neither sees the other's appends. The process whose
    view is stale must not append: its entries would take indexes already given."""
    first = Writer(path)
    writers.append(first)
    assert first.commit() == "index 0"
    assert first.commit() == "index 1"
    os.remove(f"{path}-shm")
    second = Writer(path)
    writers.append(second)
    assert second.commit() == "index 2"
    refused = "refused AuditError the store's -shm file was removed or replaced"
    assert first.commit().startswith(refused)
    assert first.send("revoke").startswith(refused)
    assert first.send("ready").startswith(refused)
    assert second.commit() == "index 3"
    assert second.send("revoke") == "revoked True"
    first.stop()
    second.stop()
    assert rows(path) == [0, 1, 2, 3]


def test_a_process_with_a_stale_shm_never_closes_the_store_last(
    path: Path, writers: list[Writer]
) -> None:
    """The last connection to close copies the write-ahead log back into the file as
    its own index of it says, and deletes the log. From a stale index that would undo
    what the other process wrote: so the stale process never closes its anchor, and
    the next process to open the store rebuilds the index from the log itself."""
    first = Writer(path)
    writers.append(first)
    assert first.commit() == "index 0"
    os.remove(f"{path}-shm")
    second = Writer(path)
    writers.append(second)
    assert second.commit() == "index 1"
    assert second.commit() == "index 2"
    assert first.commit().startswith("refused AuditError the store's -shm file")
    second.stop()  # not the last: first still has the store open
    first.stop()  # the last, with a stale index
    assert rows(path) == [0, 1, 2]
    store = SQLiteStore(path)
    try:
        assert store.commit(job(b"entry")) == 3
        assert store.committed_head()[:2] == (4, AuditLog(store, origin="o", key=KEY).root(4))  # type: ignore[index]
    finally:
        store.close()


def test_a_store_put_back_to_an_older_copy_that_lost_only_a_revocation_is_refused(
    path: Path, tmp_path: Path
) -> None:
    """The head counts the writes that append nothing too: an older copy with the same
    log but without a later revocation (or purge, or checkpoint) is refused."""
    fill(path, 2)
    shutil.copy(path, tmp_path / "old.db")
    store = SQLiteStore(path)
    try:
        assert store.revoke("jti", "stolen", reason="leaked", now=1)
    finally:
        store.close()
    shutil.copy(tmp_path / "old.db", path)
    store = SQLiteStore(path)
    try:
        for write in (
            lambda: store.commit(job(b"entry")),
            lambda: store.revoke("jti", "other", reason="r", now=1),
            lambda: store.purge_expired(10),
            lambda: store.add_checkpoint(2, "note", now=1),
            lambda: store.check_writable(1.0),
        ):
            with pytest.raises(AuditError, match="holds 0 of the 1 revocations, purges and"):
                write()
        assert store.revocations() == []
    finally:
        store.close()


def test_a_head_that_cannot_be_opened_for_writing_stops_the_write_before_it(
    path: Path,
) -> None:
    """Opened before the commit: a head that cannot be written stops the write, instead
    of the entry being committed while the head stays behind (and nobody told)."""
    fill(path, 2)
    os.remove(f"{path}-head")
    os.mkdir(f"{path}-head")
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match="cannot open the store's committed tree head"):
            store.commit(job(b"entry"))
        with pytest.raises(AuditError, match="cannot open the store's committed tree head"):
            store.revoke("jti", "x", reason="r", now=1)
        with pytest.raises(AuditError, match="cannot open the store's committed tree head"):
            store.check_writable(1.0)
        with pytest.raises(AuditError, match="cannot read the store's committed tree head"):
            store.committed_head()
        assert store.size() == 2
        assert store.revocations() == []
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["a flipped bit", "emptied"])
def test_a_damaged_head_stops_writes(path: Path, damage: str) -> None:
    """A head is made whole (written aside, then renamed), so an empty file is not "no
    head yet": it stops writes, as any damaged head does."""
    fill(path, 3)
    damaged = bytearray(head(path))
    damaged[20] ^= 1
    Path(f"{path}-head").write_bytes(bytes(damaged) if damage == "a flipped bit" else b"")
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match="committed tree head is damaged"):
            store.commit(job(b"entry"))
        with pytest.raises(AuditError, match="committed tree head is damaged"):
            store.committed_head()
        assert store.size() == 3
    finally:
        store.close()
    os.remove(f"{path}-head")  # removed: missing, which is no way out
    with pytest.raises(AuditError, match=r"holds 3 log entries .* head \(state.db-head\) is miss"):
        fill(path, 1)
    store = SQLiteStore(path)
    try:
        assert store.remake_head().size == 3  # what audit reset-head does once verified
    finally:
        store.close()
    assert fill(path, 1) == [3]
    assert not Path(f"{path}-head.new").exists()


def _pwrite_failing_once(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    failures = iter([OSError(28, "No space left on device")])

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


def test_a_head_that_cannot_be_written_fails_its_batch_closed(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is committed but its callers are not told it was: they fail closed,
    and the next batch finds the head behind the log, checks it, and moves it on."""
    fill(path, 2)
    store = SQLiteStore(path)
    try:
        _pwrite_failing_once(monkeypatch)
        with pytest.raises(StoreUnavailable, match="committed but its committed tree head was"):
            store.commit(job(b"entry"))
        assert store.size() == 3
        assert store.committed_head()[0] == 2  # type: ignore[index]
        assert store.commit(job(b"entry")) == 3
        assert store.committed_head()[0] == 4  # type: ignore[index]
    finally:
        store.close()


def test_a_side_write_whose_head_cannot_be_written_says_so(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revocation holds (it was committed); its caller is told the head was not
    written, not that the writers' turn failed."""
    fill(path, 1)
    store = SQLiteStore(path)
    try:
        _pwrite_failing_once(monkeypatch)
        with pytest.raises(StoreUnavailable, match=r"^the write was committed but its committed"):
            store.revoke("jti", "x", reason="r", now=1)
        assert [r.value for r in store.revocations()] == ["x"]
        assert store.commit(job(b"entry")) == 1
    finally:
        store.close()


@pytest.mark.parametrize("first", [True, False], ids=["first-write", "made-anew"])
def test_a_head_that_cannot_be_made_leaves_nothing_aside(
    path: Path, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """The first write of a new store makes its head; ``remake_head`` makes one anew.
    Either, failing, leaves no head and nothing aside, and the store as it was."""
    if not first:
        fill(path, 1)
        os.remove(f"{path}-head")
    store = SQLiteStore(path)
    try:

        def fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(AuditError, match="cannot make the store's committed tree head"):
            store.commit(job(b"entry")) if first else store.remake_head()
        assert sorted(p.name for p in path.parent.iterdir() if "head" in p.name) == []
        monkeypatch.undo()
        assert store.size() == (0 if first else 1)
        if not first:
            store.remake_head()
        assert store.commit(job(b"entry")) == (0 if first else 1)
    finally:
        store.close()


def test_the_first_head_is_made_durable_before_the_first_write_commits(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that holds anything without a head is refused, so the rename that puts
    the first head in place is synced (its directory) before the write it heads commits:
    a power cut must not leave the write without it."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = SQLiteStore(path)
    try:
        assert store.commit(job(b"entry")) == 0
    finally:
        store.close()
    assert str(path.parent.resolve()) in synced


def test_a_missing_head_stops_every_write_and_signature(path: Path) -> None:
    """A store that holds anything has a head (made before its first write commits, and
    never removed): one without is a head lost, or an older copy put back without its
    head. Nothing is appended, revoked or signed on it, the probe says not ready, and
    nothing makes the head again but ``remake_head`` (``audit reset-head``)."""
    fill(path, 2)
    os.remove(f"{path}-head")
    missing = r"holds 2 log entries and 0 other writes but its committed tree head .* missing"
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match=missing):
            store.commit(job(b"entry"))
        with pytest.raises(AuditError, match=missing):
            store.revoke("jti", "x", reason="r", now=1)
        with pytest.raises(AuditError, match=missing):
            store.check_writable(1.0)
        with pytest.raises(AuditError, match=missing):
            store.committed_head()
        log = AuditLog(store, origin="example.test/log", key=PrivateKey.generate())
        with pytest.raises(SigningRefused, match=missing):
            log.checkpoint(now=1)
        assert not Path(f"{path}-head").exists()
        assert (store.size(), store.revocations(), store.checkpoints()) == (2, [], [])
    finally:
        store.close()


def test_a_store_with_only_other_writes_has_a_head_too(path: Path) -> None:
    store = SQLiteStore(path)
    try:
        store.revoke("jti", "x", reason="r", now=1)
        os.remove(f"{path}-head")
        with pytest.raises(AuditError, match="holds 0 log entries and 1 other writes"):
            store.commit(job(b"entry"))
    finally:
        store.close()


def test_a_head_made_anew_must_match_what_was_verified(path: Path) -> None:
    """``remake_head`` reads the head's root from the stored tree: given the size and
    root the entries were checked to give, the tree must give them too."""
    fill(path, 3)
    committed = head(path)
    os.remove(f"{path}-head")
    conn = sqlite3.connect(path)
    root = conn.execute("SELECT hash FROM merkle_nodes WHERE level = 1 AND idx = 0").fetchone()[0]
    conn.close()
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match="does not hold the 2 entries that were checked"):
            store.remake_head((2, bytes(32)))
        with pytest.raises(AuditError, match="does not hold the 4 entries that were checked"):
            store.remake_head((4, bytes(root)))
        assert not Path(f"{path}-head").exists()
        assert store.remake_head((2, bytes(root))).size == 3
        assert head(path) == committed
    finally:
        store.close()


def test_a_whole_head_that_says_writes_were_lost_is_never_made_anew(
    path: Path, tmp_path: Path
) -> None:
    """An older copy put back under a whole head: the head says what was lost, and
    making it anew would let the node sign a second tree head for a size it signed
    before (or forget a revocation). Only a missing or damaged head is made anew."""
    fill(path, 2)
    shutil.copy(path, tmp_path / "older.db")
    store = SQLiteStore(path)
    try:
        store.revoke("jti", "x", reason="r", now=1)
        store.commit(job(b"entry"))
    finally:
        store.close()
    committed = head(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "older.db", path)
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match=r"holds 2 entries but 3 .* whole: it is made anew"):
            store.remake_head()
        assert head(path) == committed
        Path(f"{path}-head").write_bytes(b"")  # damaged: made anew
        assert store.remake_head().size == 2
    finally:
        store.close()


def test_the_probe_says_not_ready_while_a_new_store_cannot_make_its_head(path: Path) -> None:
    """The first write makes the head: the readiness probe makes it then, so a store
    whose first write could not make it (here its aside name is taken by a directory)
    is not ready, instead of ready while every decision fails closed."""
    os.mkdir(f"{path}-head.new")
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match="cannot make the store's committed tree head"):
            store.check_writable(1.0)
        assert not Path(f"{path}-head").exists()
        os.rmdir(f"{path}-head.new")
        store.check_writable(1.0)
        assert Path(f"{path}-head").exists()
        assert store.commit(job(b"entry")) == 0
    finally:
        store.close()


def test_a_head_of_the_first_format_is_read_and_replaced(path: Path) -> None:
    """The first heads had no count of writes (52 bytes): one is checked for its size
    and root, and the next write replaces it."""
    fill(path, 3)
    store = SQLiteStore(path)
    try:
        root = AuditLog(store, origin="o", key=KEY).root(3)
    finally:
        store.close()
    body = b"EGTH" + (3).to_bytes(8, "big") + root
    Path(f"{path}-head").write_bytes(body + hashlib.sha256(body).digest()[:8])
    store = SQLiteStore(path)
    try:
        assert store.committed_head() == (3, root, 0)
        assert store.commit(job(b"entry")) == 3
        assert store.committed_head()[0] == 4  # type: ignore[index]
    finally:
        store.close()
    assert len(head(path)) == 60
    other = b"EGTH" + (3).to_bytes(8, "big") + bytes(32)
    Path(f"{path}-head").write_bytes(other + hashlib.sha256(other).digest()[:8])
    store = SQLiteStore(path)
    try:
        with pytest.raises(AuditError, match="first 3 entries are not the 3 that were committed"):
            store.commit(job(b"entry"))
    finally:
        store.close()


def test_a_store_behind_a_symbolic_link_keeps_its_files_beside_the_real_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "data").mkdir()
    link = tmp_path / "state.db"
    link.symlink_to(tmp_path / "data" / "real.db")
    assert fill(link, 2) == [0, 1]
    assert (tmp_path / "data" / "real.db-head").exists()
    store = SQLiteStore(link)
    try:
        store.check_writable(1.0)
        assert store.commit(job(b"entry")) == 2
    finally:
        store.close()
    # One lock file for the writers' turn, whichever name a process opened it by: two
    # would let a store opened by its link and one opened by its real path write at once.
    assert sorted(p.name for p in tmp_path.rglob("*-writer.lock")) == ["real.db-writer.lock"]


def test_another_store_in_the_process_of_a_stale_shm_is_stale_from_the_start(
    path: Path, writers: list[Writer]
) -> None:
    """SQLite keeps one mapping of -shm per file in a process: a store opened in the
    process after another found it stale reads through that same stale index."""
    first = SQLiteStore(path)
    try:
        first.commit(job(b"entry"))
        os.remove(f"{path}-shm")
        other = Writer(path)
        writers.append(other)
        assert other.commit() == "index 1"
        with pytest.raises(AuditError, match="-shm file was removed or replaced"):
            first.commit(job(b"entry"))
        second = SQLiteStore(path)
        try:
            with pytest.raises(AuditError, match="-shm file was removed or replaced"):
                second.commit(job(b"entry"))
            with pytest.raises(AuditError, match="-shm file was removed or replaced"):
                second.check_writable(1.0)
        finally:
            second.close()
        other.stop()
    finally:
        first.close()
    assert rows(path) == [0, 1]


def test_a_clean_stop_after_a_removed_wal_never_copies_over_a_newer_one(
    path: Path, writers: list[Writer]
) -> None:
    """The -wal was removed while all of it was in the file (as after any checkpoint),
    and a process started since made a new one, indexed by the same -shm. The first
    process closing last must not copy frames from the removed file into the store
    where the index names the new one's."""
    first = Writer(path)
    writers.append(first)
    assert [first.commit() for _ in range(3)] == ["index 0", "index 1", "index 2"]
    copier = sqlite3.connect(path)
    assert copier.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    copier.close()
    os.remove(f"{path}-wal")
    second = Writer(path)
    writers.append(second)
    assert [second.commit() for _ in range(3)] == ["index 3", "index 4", "index 5"]
    assert second.send("revoke") == "revoked True"
    assert first.commit().startswith("refused AuditError the store's -wal file was removed")
    second.stop()
    first.stop()  # the last to close
    assert rows(path) == [0, 1, 2, 3, 4, 5]
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        check.close()


def test_a_database_file_replaced_under_a_process_is_written_no_more(
    path: Path, tmp_path: Path
) -> None:
    """Another file renamed over the store (an older copy, say): this process has the
    old one open, and a process started since would open the new one under the same
    -wal and -shm. This one writes and signs nothing more."""
    fill(path, 2)
    shutil.copy(path, tmp_path / "old.db")
    store = SQLiteStore(path)
    try:
        assert store.commit(job(b"entry")) == 2
        os.replace(tmp_path / "old.db", path)
        with pytest.raises(AuditError, match="store's database file was removed or replaced"):
            store.commit(job(b"entry"))
        with pytest.raises(AuditError, match="store's database file was removed or replaced"):
            store.committed_head()
    finally:
        store.close()
