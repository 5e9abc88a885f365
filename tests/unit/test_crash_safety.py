"""Crash safety: SIGKILL a deciding gateway process at random moments, restart it on the
same home, and check that nothing it acknowledged was lost and the log still verifies.

A real child process (``crash_child.py``) decides in a loop from several threads on a real
SQLite home made here, printing each decision the moment ``decide`` returns. The parent
kills it with SIGKILL at a random delay after it is ready, several times, then lets a last
run finish cleanly. Afterwards every decision the child printed (proceed or otherwise) is
in the log at the index it was given, every printed outcome too, indexes are dense, the
export verifies with only the node's public key, every stored Merkle node is the
recomputed one, and appends carry on after the last restart. No mocks.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from gatekit import GATEWAY_ID, PAYMENTS, RUNTIME_ID, Kit, make_kit

from execgate.audit.log import AuditLog, verify_export
from execgate.audit.merkle import Frontier, root_at
from execgate.keyfile import public_path_for, read_public_key
from execgate.model import Outcome, Request
from execgate.pipeline import Gateway
from execgate.store.sqlite import SQLiteStore

CHILD = Path(__file__).with_name("crash_child.py")
KILLS = 8
FINAL = 12  # decisions of the last, clean run


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


@dataclass
class Run:
    """One child process and the complete lines it has printed so far."""

    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def read(self, out: IO[bytes]) -> None:
        with out:
            for raw in iter(out.readline, b""):
                if not raw.endswith(b"\n"):
                    break  # cut off by the kill: never acknowledged whole
                line = raw.decode("utf-8").rstrip("\n")
                if line == "ready":
                    self.ready.set()
                else:
                    self.lines.append(line)

    def join(self) -> None:
        assert self.reader is not None
        self.reader.join(timeout=30)


def spawn(home: Path, spec: Path, limit: int, stderr: IO[bytes]) -> Run:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(home), str(spec), str(limit)],
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    run = Run(proc)
    assert proc.stdout is not None
    run.reader = threading.Thread(target=run.read, args=(proc.stdout,), daemon=True)
    run.reader.start()
    return run


def write_spec(kit: Kit, path: Path) -> None:
    now = int(time.time())
    artifact = kit.artifact(
        [*PAYMENTS, {"action": "shell.exec", "resource": "host:**"}], now=now, ttl=3600
    )
    spec = {
        "runtime": RUNTIME_ID,
        "runtime_key": kit.runtime.key.to_jwk(private=True),
        "artifact": artifact,
        "audience": GATEWAY_ID,
    }
    path.write_text(json.dumps(spec), encoding="utf-8")


def check_log(path: Path, printed: list[str]) -> int:
    """Everything printed is logged where it said; indexes are dense. Returns the size."""
    store = SQLiteStore(path)
    try:
        size = store.size()
        for line in printed:
            kind, decision_id, *rest = line.split(" ")
            if kind == "decision":
                outcome, index = rest
                found = store.find(decision_id, "decision")
                assert found is not None, f"acknowledged {line!r} is not in the log"
                assert str(found.index) == index, line
                assert json.loads(found.entry)["outcome"] == outcome, line
            else:
                assert kind == "outcome", line
                found = store.find(decision_id, "outcome")
                assert found is not None, f"acknowledged {line!r} is not in the log"
                assert str(found.index) == rest[0], line
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        count, low, high = db.execute(
            "SELECT COUNT(*), MIN(idx), MAX(idx) FROM audit_log"
        ).fetchone()
        decisions, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT decision_id) FROM audit_log WHERE kind = 'decision'"
        ).fetchone()
    assert (count, low, high) == (size, 0, size - 1)
    assert decisions == distinct
    return int(size)


def check_tree(kit: Kit, path: Path) -> None:
    """The export verifies offline, its roots are recomputed, and so is every stored node."""
    store = SQLiteStore(path)
    try:
        log = [e.entry for e in store.entries(0, store.size())]
        out = io.StringIO()
        AuditLog(store, origin=GATEWAY_ID, key=kit.node_key).export(out, now=int(time.time()))
        public = read_public_key(public_path_for(kit.config.node_key))
        report = verify_export(io.StringIO(out.getvalue()), public)
        frontier = Frontier()
        expected: set[tuple[int, int, bytes]] = set()
        for entry in log:
            expected.update(frontier.append_hash(hashlib.sha256(b"\x00" + entry).digest()))
        assert report.entries == len(log)
        assert report.root == frontier.root() == root_at(len(log), store.node)
        assert report.checkpoints >= 2
        records = [json.loads(entry) for entry in log]
        for record in records:
            if record["kind"] == "outcome":
                decided = records[record["decision_index"]]
                assert decided["decision_id"] == record["decision_id"]
                assert decided["outcome"] in ("proceed", "reroute")
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT level, idx, hash FROM merkle_nodes").fetchall()
    assert {(int(a), int(b), bytes(h)) for a, b, h in rows} == expected


def test_sigkill_loses_nothing_acknowledged_and_the_log_verifies(kit: Kit, tmp_path: Path) -> None:
    config = kit.home / "execgate.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            "checkpoint_every = 1000", "checkpoint_every = 25"
        ),
        encoding="utf-8",
    )
    spec = tmp_path / "spec.json"
    write_spec(kit, spec)
    path = kit.config.store
    seed = random.randrange(2**32)
    print(f"crash test seed {seed}")  # shown by pytest if the test fails
    rng = random.Random(seed)
    printed: list[str] = []
    with (tmp_path / "child.err").open("wb") as stderr:
        for _ in range(KILLS):
            run = spawn(kit.home, spec, 0, stderr)
            assert run.ready.wait(60), "the child never opened its gateway"
            time.sleep(rng.uniform(0.05, 0.5))
            run.proc.send_signal(signal.SIGKILL)
            assert run.proc.wait(30) == -signal.SIGKILL, (tmp_path / "child.err").read_text()
            run.join()
            printed.extend(run.lines)
            check_log(path, printed)
        before = check_log(path, printed)
        last = spawn(kit.home, spec, FINAL, stderr)
        assert last.proc.wait(60) == 0, (tmp_path / "child.err").read_text()
        last.join()
    decided = [line.split(" ") for line in last.lines if line.startswith("decision ")]
    assert len(decided) == FINAL
    assert all(int(index) >= before for *_, index in decided)
    printed.extend(last.lines)

    proceeds = [line for line in printed if line.split(" ")[2:3] == ["proceed"]]
    assert len(proceeds) >= KILLS  # the kills did land while decisions were being made
    size = check_log(path, printed)
    check_tree(kit, path)

    # appends carry on after the last crash, in this process too
    with Gateway.open(kit.home) as gw:
        now = int(time.time())
        artifact = kit.artifact(now=now, ttl=600)
        request = Request("payments.transfer", "acct:1", RUNTIME_ID, {"amount": 100})
        wire = kit.runtime.submission(request, artifact, audience=GATEWAY_ID, now=now)
        d = gw.decide(wire)
        assert (d.outcome, d.log_index) == (Outcome.PROCEED, size)
    check_tree(kit, path)
