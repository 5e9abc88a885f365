"""The audit log at scale, as ratios measured in one run (DESIGN §4.6, §7).

A gateway home is made in a temporary directory and its SQLite log is filled with
realistic decision records (the JCS bytes of a decision, ~700 bytes each) and a signed
checkpoint every 1,000 entries. The big log is built by a bulk path (one connection,
``synchronous=OFF``, large transactions; the same rows the store writes, with the Merkle
nodes from ``Frontier``), because building it through durable commits would take hours;
everything measured afterwards goes through the real code. Targets:

    (a) durable single append (SQLiteStore.commit, synchronous=FULL), median at BIG entries
        <= 1.3 x the median at 1,000 entries (append cost does not grow with the log)
    (b) verify_export of the exported BIG log >= 100,000 entries/s on one core, in a child
        process pinned to one CPU, with peak RSS (VmHWM of that process) < 200 MB
    (c) inclusion proof generation for random indexes of the BIG log: median <= 2 ms
    (d) 16 concurrent callers deciding through Gateway.decide: decisions/s with
        synchronous=FULL >= 0.8 x the same run with synchronous=OFF (group commit hides
        the fsync)

BIG is 1,000,000 (100,000 with EXECGATE_BENCH_QUICK=1).

Run: make bench   (EXECGATE_BENCH_QUICK=1 for a short smoke run)
"""

from __future__ import annotations

import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

from bench_decide import decide_concurrently
from execgate.artifacts import issue_artifact
from execgate.audit.checkpoint import Checkpoint, sign_checkpoint
from execgate.audit.log import AuditLog, verify_export
from execgate.audit.merkle import Frontier, leaf_hash, verify_inclusion
from execgate.audit.note import Signer
from execgate.home import init_home
from execgate.jose import PrivateKey, canonical_json
from execgate.keyfile import read_private_key
from execgate.model import Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore

QUICK = os.environ.get("EXECGATE_BENCH_QUICK") == "1"
BIG: Final = 100_000 if QUICK else 1_000_000
SMALL: Final = 1_000
CHECKPOINT_EVERY: Final = 1_000
GATEWAY_ID: Final = "gw-bench"
_PLACEHOLDER: Final = "00000000-0000-4000-8000-000000000000"


def _record_template() -> bytes:
    """The JCS bytes of a typical proceed decision, with a placeholder decision id."""
    return canonical_json(
        {
            "v": 1,
            "kind": "decision",
            "decision_id": _PLACEHOLDER,
            "gateway": GATEWAY_ID,
            "at": 1_700_000_000,
            "outcome": "proceed",
            "reasons": [],
            "rule": "payments",
            "route": None,
            "approval": None,
            "parent_decision": None,
            "request": {
                "action": "payments.transfer",
                "resource": "acct:42",
                "args": {"amount": 120, "currency": "EUR", "memo": "invoice 2024-118"},
                "runtime": "agent-1",
                "parent": None,
            },
            "request_hash": "q1pWjyXnWn4bGxZ0XlW8n0yE2Bf8n6KXh8Qb0y7R3Hc",
            "artifact_jti": "Zr3x0pQvW1cK8yTn5mA2bE",
            "chain": ["Zr3x0pQvW1cK8yTn5mA2bE"],
            "issuer": "example-authority",
            "issuer_kid": "mJx1w3Yh3bQ0a6u8yRk2sVn9cT4pZ5dL7eF0gH1iJ2k",
            "subject": "agent-1",
            "runtime_jkt": "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f",
            "proof_jti": "Xk2mP9qR4sT6uV8wY0zA1b",
            "policy_hash": "sha256:" + "7f0c3e1d2b4a6958" * 4,
        }
    )


TEMPLATE: Final = _record_template()


def new_entry() -> tuple[str, bytes]:
    decision_id = str(uuid.uuid4())
    return decision_id, TEMPLATE.replace(_PLACEHOLDER.encode(), decision_id.encode())


def build_log(path: Path, size: int, signer: Signer) -> None:
    """Fill an empty store with ``size`` entries and a checkpoint every 1,000 (bulk path)."""
    SQLiteStore(path).close()  # the schema, exactly as the store makes it
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB for the build only
    frontier = Frontier()
    chunk = 50_000
    for start in range(0, size, chunk):
        rows, nodes, checkpoints = [], [], []
        for index in range(start, min(size, start + chunk)):
            decision_id, entry = new_entry()
            rows.append((index, entry, "decision", decision_id))
            nodes.extend(frontier.append(entry))
            if (index + 1) % CHECKPOINT_EVERY == 0:
                note = sign_checkpoint(Checkpoint(GATEWAY_ID, index + 1, frontier.root()), signer)
                checkpoints.append((index + 1, note, 1_700_000_000))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO audit_log (idx, entry, kind, decision_id) VALUES (?, ?, ?, ?)", rows
        )
        conn.executemany("INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        conn.executemany(
            "INSERT INTO checkpoints (size, note, created_at) VALUES (?, ?, ?)", checkpoints
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    # Written around the store: its committed head is made as 'audit reset-head
    # --unverified' makes it (a store that holds entries without one takes no more).
    store = SQLiteStore(path)
    try:
        store.remake_head()
    finally:
        store.close()


# --- (a) append latency -----------------------------------------------------------------


def _append(store: SQLiteStore) -> int:
    decision_id, entry = new_entry()
    return store.commit(WriteJob(None, 0, None, lambda _c, _i: entry, decision_id=decision_id))


def append_latency(small: SQLiteStore, big: SQLiteStore, n: int) -> tuple[float, float]:
    """Median durable append (µs) on each store, measured in alternating rounds."""
    for store in (small, big):
        for _ in range(50):
            _append(store)  # warm the connection and the right edge of every B-tree
    samples: dict[int, list[int]] = {id(small): [], id(big): []}
    rounds = 10
    for _ in range(rounds):
        for store in (small, big):
            for _ in range(n // rounds):
                t0 = time.perf_counter_ns()
                _append(store)
                samples[id(store)].append(time.perf_counter_ns() - t0)
    return (
        statistics.median(samples[id(small)]) / 1000,
        statistics.median(samples[id(big)]) / 1000,
    )


# --- (b) offline verification in a child process ------------------------------------------


def verify_child(export: str, public_jwk: str) -> None:
    """Run in a child process: verify the export, print elapsed seconds and peak RSS."""
    from execgate.jose import PublicKey

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    key = PublicKey.from_jwk(json.loads(public_jwk))
    t0 = time.perf_counter()
    with open(export, encoding="ascii") as fh:
        report = verify_export(fh, key)
    elapsed = time.perf_counter() - t0
    # ru_maxrss survives exec, so a child forked from a big parent starts with the parent's
    # peak; VmHWM belongs to this process image alone.
    with open("/proc/self/status", encoding="ascii") as status:
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"entries": report.entries, "seconds": elapsed, "rss_kb": hwm_kb, "maxrss": maxrss_kb}
        )
    )


def verify_in_child(export: Path, key: PrivateKey) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--verify-child",
            str(export),
            json.dumps(key.public.to_jwk()),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# --- (c) inclusion proofs -----------------------------------------------------------------


def proof_latency(audit: AuditLog, size: int, n: int) -> float:
    """Median µs to build an inclusion proof for a random index; every proof is checked."""
    root = audit.root(size)
    rng = random.Random(9162)
    samples = []
    for _ in range(n):
        index = rng.randrange(size)
        t0 = time.perf_counter_ns()
        proof = audit.inclusion_proof(index, size)
        samples.append(time.perf_counter_ns() - t0)
        verify_inclusion(leaf_hash(audit.entry(index)), index, size, proof, root)
    return statistics.median(samples) / 1000


# --- (d) durable group commit ---------------------------------------------------------------


class Rig:
    """A gateway home with one artifact and a runtime that signs fresh proofs."""

    def __init__(self, root: Path):
        self.home = root / "home"
        init_home(self.home, gateway_id=GATEWAY_ID)
        authority = read_private_key(self.home / "keys" / "authority.jwk")
        self.runtime = Runtime("agent-1", PrivateKey.generate())
        self.now = int(time.time())
        self.artifact = issue_artifact(
            key=authority,
            issuer="example-authority",
            subject="agent-1",
            audience=GATEWAY_ID,
            runtime_key=self.runtime.key.public,
            scope=[{"action": "payments.*", "resource": "acct:**"}],
            now=self.now,
            ttl=86400,
        )
        self.request = Request(
            action="payments.transfer", resource="acct:42", runtime="agent-1", args={"amount": 120}
        )

    def submissions(self, n: int) -> list[dict[str, Any]]:
        return [
            self.runtime.submission(self.request, self.artifact, audience=GATEWAY_ID, now=self.now)
            for _ in range(n)
        ]

    def rate(self, synchronous: str, callers: int, per_caller: int) -> float:
        store = SQLiteStore(self.home / "state.db", synchronous=synchronous)
        gateway = Gateway.open(self.home, now=time.time, store=store)
        try:
            for s in self.submissions(50):
                gateway.decide(s)  # warm up
            batches = [self.submissions(per_caller) for _ in range(callers)]
            return decide_concurrently(gateway, batches)
        finally:
            gateway.close()


def group_commit(root: Path, callers: int, per_caller: int, rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` decisions/s with synchronous FULL and OFF, runs interleaved."""
    rig = Rig(root)
    full, off = [], []
    for _ in range(rounds):
        full.append(rig.rate("FULL", callers, per_caller))
        off.append(rig.rate("OFF", callers, per_caller))
    return max(full), max(off)


# --- the run ----------------------------------------------------------------------------------


def main() -> int:
    n_append = 500 if QUICK else 2000
    n_proofs = 300 if QUICK else 2000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # (d) first, on a quiet disk: the big build leaves gigabytes for the kernel to
        # write back, and fsyncs issued meanwhile would measure that instead.
        callers, per_caller = 16, (40 if QUICK else 200)
        full_rate, off_rate = group_commit(root / "gc", callers, per_caller, 2 if QUICK else 3)

        init_home(root / "home", gateway_id=GATEWAY_ID)
        node_key = read_private_key(root / "home" / "keys" / "node.jwk")
        signer = Signer(GATEWAY_ID, node_key)
        t0 = time.perf_counter()
        build_log(root / "small.db", SMALL, signer)
        build_log(root / "big.db", BIG, signer)
        build_s = time.perf_counter() - t0
        os.sync()  # the build's dirty pages reach the disk before anything is timed
        small, big = SQLiteStore(root / "small.db"), SQLiteStore(root / "big.db")
        try:
            proof_us = proof_latency(AuditLog(big, origin=GATEWAY_ID, key=node_key), BIG, n_proofs)
            small_us, big_us = append_latency(small, big, n_append)
            export = root / "big.jsonl"
            t0 = time.perf_counter()
            with export.open("w", encoding="ascii") as fh:
                exported = AuditLog(big, origin=GATEWAY_ID, key=node_key).export(
                    fh, now=int(time.time())
                )
            export_s = time.perf_counter() - t0
        finally:
            small.close()
            big.close()
        os.sync()
        child = verify_in_child(export, node_key)
        if child["entries"] != exported:
            raise SystemExit(f"verified {child['entries']} entries, exported {exported}")
        verify_rate = child["entries"] / child["seconds"]
        rss_mb = child["rss_kb"] / 1024

    rows = [
        (f"build {BIG:,} + {SMALL:,} entries (bulk, OFF)", f"{build_s:.1f} s", "", ""),
        (f"durable append median at {SMALL:,}", f"{small_us:.0f} us", "1.00x", ""),
        (
            f"durable append median at {BIG:,}",
            f"{big_us:.0f} us",
            f"{big_us / small_us:.2f}x",
            "<= 1.30x",
        ),
        (f"export {exported:,} entries", f"{export_s:.1f} s", f"{exported / export_s:,.0f}/s", ""),
        (
            "verify_export, 1 core",
            f"{child['seconds']:.1f} s",
            f"{verify_rate:,.0f}/s",
            ">= 100,000/s",
        ),
        ("verify_export peak RSS (child)", f"{rss_mb:.0f} MB", "", "< 200 MB"),
        (f"inclusion proof median ({BIG:,})", f"{proof_us:.0f} us", "", "<= 2000 us"),
        (
            f"decisions/s, {callers} callers, FULL",
            f"{full_rate:.0f}",
            f"{full_rate / off_rate:.2f}x",
            ">= 0.80x",
        ),
        (f"decisions/s, {callers} callers, OFF", f"{off_rate:.0f}", "1.00x", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    verdicts = {
        "append median at BIG <= 1.3x at 1k": big_us <= 1.3 * small_us,
        "verify_export >= 100,000 entries/s": verify_rate >= 100_000,
        "verify_export peak RSS < 200 MB": rss_mb < 200,
        "inclusion proof median <= 2 ms": proof_us <= 2000,
        "16 callers FULL >= 0.8x OFF": full_rate >= 0.8 * off_rate,
    }
    for name, ok in verdicts.items():
        print(f"{'MET ' if ok else 'MISS'}  {name}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--verify-child":
        verify_child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
