"""Full in-process decisions against the floor measured in the same run.

The floor is raw PyNaCl doing the unavoidable cryptography of one decision: two Ed25519
verifications (artifact, proof), one signature (receipt) and one SHA-256 over 1 KiB.
A decision adds strict parsing, revocation and replay reads, scope, policy, the durable
SQLite append (WAL, synchronous=FULL) and the receipt. Targets, as ratios in this run:

    sequential median decision      <= 2.5 x floor median
                                    (also shown: the same decisions on a store that
                                    never fsyncs, to tell the CPU from the disk, and
                                    the floor plus one durable SQLite commit, the least
                                    any decision logged durably before its answer costs:
                                    where that alone is over 2.5 x, the disk rules the
                                    target out, and the run says so)
    16 concurrent callers           >= 0.6 / floor median decisions/s (as 16 threads on
                                    ``decide``, and as 16 tasks on one event loop on
                                    ``decide_async``; the better of the two counts)
    memory over 200k decisions      flat (replay entries expire and are purged)

Run: make bench   (EXECGATE_BENCH_QUICK=1 for a short smoke run)
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from execgate.artifacts import issue_artifact
from execgate.home import init_home
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.model import Outcome, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.store.sqlite import SQLiteStore

QUICK = os.environ.get("EXECGATE_BENCH_QUICK") == "1"


def _median_us(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99) - 1] / 1000


def floor_us(n: int) -> float:
    sk = SigningKey.generate()
    vk = sk.verify_key
    msg = os.urandom(600)
    sig = sk.sign(msg).signature
    blob = os.urandom(1024)

    def floor() -> None:
        vk.verify(msg, sig)
        vk.verify(msg, sig)
        sk.sign(msg)
        hashlib.sha256(blob).digest()

    return _median_us(floor, n)[0]


def commit_floor_us(root: Path, n: int) -> float:
    """One durable single-row commit on this disk: SQLite WAL, synchronous=FULL."""
    db = sqlite3.connect(root / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, v BLOB)")
    blob = os.urandom(600)

    def commit() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (blob,))
        db.execute("COMMIT")

    median = _median_us(commit, n)[0]
    db.close()
    return median


class Rig:
    """A gateway home with one artifact and a runtime that signs fresh proofs. With
    ``synchronous="OFF"`` its store never fsyncs: not durable, for comparison only."""

    def __init__(self, root: Path, clock: Callable[[], float], synchronous: str = "FULL"):
        self.home = root / "home"
        init_home(self.home, gateway_id="gw-bench")
        authority = read_private_key(self.home / "keys" / "authority.jwk")
        self.runtime = Runtime("agent-1", PrivateKey.generate())
        self.now = int(time.time())
        self.artifact = issue_artifact(
            key=authority,
            issuer="example-authority",
            subject="agent-1",
            audience="gw-bench",
            runtime_key=self.runtime.key.public,
            scope=[
                {
                    "action": "payments.*",
                    "resource": "acct:**",
                    "constraints": {"amount": {"max": 900}},
                }
            ],
            gov={"ticket": "FIN-1"},
            now=self.now,
            ttl=10 * 365 * 86400,
        )
        self.gateway = Gateway.open(self.home, now=clock)
        if synchronous != "FULL":
            self.gateway.store.close()
            self.gateway.store = SQLiteStore(self.home / "state.db", synchronous=synchronous)
        self.request = Request(
            action="payments.transfer", resource="acct:42", runtime="agent-1", args={"amount": 120}
        )

    def submissions(self, n: int, now: int) -> list[dict[str, Any]]:
        return [
            self.runtime.submission(self.request, self.artifact, audience="gw-bench", now=now)
            for _ in range(n)
        ]


def sequential(rig: Rig, n: int) -> tuple[float, float]:
    subs = iter(rig.submissions(n, rig.now))

    def one() -> None:
        d = rig.gateway.decide(next(subs))
        if d.outcome is not Outcome.PROCEED:
            raise SystemExit(f"benchmark decision was {d.outcome}: {d.reasons}")

    return _median_us(one, n)


def decide_concurrently(gateway: Gateway, batches: list[list[dict[str, Any]]]) -> float:
    """Decisions/s with one thread per batch, all started together; every one must proceed."""
    barrier = threading.Barrier(len(batches) + 1)
    bad: list[object] = []

    def worker(batch: list[dict[str, Any]]) -> None:
        barrier.wait()
        for s in batch:
            d = gateway.decide(s)
            if d.outcome is not Outcome.PROCEED:
                bad.append(d.reasons)

    threads = [threading.Thread(target=worker, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if bad:
        raise SystemExit(f"{len(bad)} concurrent decisions did not proceed: {bad[0]}")
    return sum(len(b) for b in batches) / elapsed


def decide_on_a_loop(gateway: Gateway, batches: list[list[dict[str, Any]]]) -> float:
    """Decisions/s with one asyncio task per batch on one event loop (``decide_async``,
    what the HTTP server does); every one must proceed."""

    async def run() -> float:
        async def caller(batch: list[dict[str, Any]]) -> None:
            for s in batch:
                d = await gateway.decide_async(s)
                if d.outcome is not Outcome.PROCEED:
                    raise SystemExit(f"a decision on the loop did not proceed: {d.reasons}")

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(b) for b in batches))
        return sum(len(b) for b in batches) / (time.perf_counter() - t0)

    return asyncio.run(run())


def concurrent(rig: Rig, callers: int, per_caller: int) -> float:
    return decide_concurrently(
        rig.gateway, [rig.submissions(per_caller, rig.now) for _ in range(callers)]
    )


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(root: Path, total: int) -> tuple[float, float, int]:
    """RSS after 10% and after 100% of ``total`` decisions, with the clock moving on."""
    clock = [time.time()]
    rig = Rig(root, lambda: clock[0])
    first = 0.0
    done = 0
    while done < total:
        for s in rig.submissions(1000, int(clock[0])):
            rig.gateway.decide(s)
        done += 1000
        clock[0] += 30  # proofs expire after proof_max_age + leeway and get purged
        if done == total // 10:
            gc.collect()
            first = rss_mb()
    gc.collect()
    last = rss_mb()
    db = sqlite3.connect(rig.home / "state.db")
    rows = db.execute("SELECT COUNT(*) FROM proof_jti").fetchone()[0]
    db.close()
    rig.gateway.close()
    return first, last, int(rows)


def main() -> int:
    n_seq = 300 if QUICK else 3000
    n_mem = 20_000 if QUICK else 200_000
    floor = floor_us(2000 if QUICK else 20000)
    with tempfile.TemporaryDirectory() as tmp:
        fsync = commit_floor_us(Path(tmp), 300 if QUICK else 2000)
        rig = Rig(Path(tmp), time.time)
        sequential(rig, 200)  # warm up
        seq_median, seq_p99 = sequential(rig, n_seq)
        rate = concurrent(rig, 16, 50 if QUICK else 500)
        per_task = 50 if QUICK else 500
        loop_rate = decide_on_a_loop(
            rig.gateway, [rig.submissions(per_task, rig.now) for _ in range(16)]
        )
        rig.gateway.close()
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), time.time, synchronous="OFF")
        sequential(rig, 200)
        cpu_median = sequential(rig, n_seq)[0]
        rig.gateway.close()
    with tempfile.TemporaryDirectory() as tmp:
        first, last, replay_rows = memory(Path(tmp), n_mem)

    target_rate = 0.6 / (floor / 1e6)
    rows = [
        ("floor: 2 verify + 1 sign + SHA-256 (PyNaCl)", f"{floor:.0f} us", "1.00x", ""),
        (
            "decision, sequential median",
            f"{seq_median:.0f} us",
            f"{seq_median / floor:.2f}x floor",
            "<= 2.50x",
        ),
        ("decision, sequential p99", f"{seq_p99:.0f} us", f"{seq_p99 / floor:.2f}x floor", ""),
        (
            "decision, sequential median, no fsync",
            f"{cpu_median:.0f} us",
            f"{cpu_median / floor:.2f}x floor",
            "(not durable)",
        ),
        (
            "durable 1-row commit (SQLite WAL, FULL)",
            f"{fsync:.0f} us",
            f"{fsync / floor:.2f}x floor",
            "",
        ),
        (
            "floor + 1 commit: what any durable decision costs at least",
            f"{floor + fsync:.0f} us",
            f"{(floor + fsync) / floor:.2f}x floor",
            "",
        ),
        ("decision median / (floor + 1 commit)", "", f"{seq_median / (floor + fsync):.2f}x", ""),
        ("decisions/s, 1 caller (1/median)", f"{1e6 / seq_median:.0f}", "", ""),
        (
            "decisions/s, 16 callers",
            f"{rate:.0f}",
            f"{rate / target_rate:.2f}x target",
            f">= {target_rate:.0f}/s",
        ),
        (
            "decisions/s, 16 tasks on one event loop",
            f"{loop_rate:.0f}",
            f"{loop_rate / target_rate:.2f}x target",
            f">= {target_rate:.0f}/s",
        ),
        (
            f"RSS after {n_mem // 10} / {n_mem} decisions",
            f"{first:.0f} / {last:.0f} MB",
            f"{last / first:.2f}x",
            "<= 1.10x",
        ),
        ("replay rows left after purge", str(replay_rows), "", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    verdicts = {
        "sequential median <= 2.5x floor": seq_median <= 2.5 * floor,
        "16 callers >= 0.6/floor": max(rate, loop_rate) >= target_rate,
        "memory flat": last <= 1.10 * first,
    }
    for name, ok in verdicts.items():
        print(f"{'MET ' if ok else 'MISS'}  {name}")
    if not verdicts["sequential median <= 2.5x floor"] and floor + fsync > 2.5 * floor:
        print(
            f"      the sequential target cannot be met on this disk: the floor plus one"
            f" durable commit alone is {(floor + fsync) / floor:.2f}x the floor"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
