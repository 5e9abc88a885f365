"""Delegation chains: what a deeper chain costs, first seen and seen again.

Targets, in one run:
    first sight: a depth-3 chain costs at most 1 extra signature verification per link
                 over depth 1 (counted, not timed)
    repeated:    a full decision on a depth-3 chain seen before costs <= 1.2x the same
                 decision on a depth-1 artifact (verified links are remembered by token;
                 revocation is still checked every time)

Run: make bench   (EXECGATE_BENCH_QUICK=1 for a short smoke run)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from execgate import jose
from execgate.artifacts import ArtifactVerifier, issue_artifact
from execgate.delegation import delegate_artifact
from execgate.home import init_home
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.model import Outcome, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.trust import TrustStore

QUICK = os.environ.get("EXECGATE_BENCH_QUICK") == "1"
SCOPE = [{"action": "payments.*", "resource": "acct:**"}]


def chain(root: str, holder: Runtime, depth: int, now: int) -> tuple[str, Runtime]:
    token, runtime = root, holder
    for i in range(depth):
        nxt = Runtime(f"agent-{i + 2}", PrivateKey.generate())
        token = delegate_artifact(
            parent=token,
            holder_key=runtime.key,
            subject=nxt.runtime_id,
            runtime_key=nxt.key.public,
            scope=SCOPE,
            now=now,
        )
        runtime = nxt
    return token, runtime


def count_verifies(trust: TrustStore, token: str, now: int) -> int:
    calls = 0
    original = jose.PublicKey.verify

    def counting(self: jose.PublicKey, message: bytes, signature: bytes) -> None:
        nonlocal calls
        calls += 1
        original(self, message, signature)

    jose.PublicKey.verify = counting  # type: ignore[method-assign]
    try:
        ArtifactVerifier(trust=trust, audiences=frozenset({"gw-bench"}), leeway=60).verify(
            token, now=now
        )
    finally:
        jose.PublicKey.verify = original  # type: ignore[method-assign]
    return calls


def decision_median_us(gw: Gateway, runtime: Runtime, token: str, now: int, n: int) -> float:
    request = Request(action="payments.transfer", resource="acct:1", runtime=runtime.runtime_id)
    subs: list[dict[str, Any]] = [
        runtime.submission(request, token, audience="gw-bench", now=now) for _ in range(n)
    ]
    samples = []
    for s in subs:
        t0 = time.perf_counter_ns()
        d = gw.decide(s)
        samples.append(time.perf_counter_ns() - t0)
        if d.outcome is not Outcome.PROCEED:
            raise SystemExit(f"benchmark decision was {d.outcome}: {d.reasons}")
    return statistics.median(samples) / 1000


def main() -> int:
    n = 300 if QUICK else 3000
    now = int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        init_home(home, gateway_id="gw-bench")
        (home / "policy.yaml").write_text(
            "version: 1\nrules:\n  - name: all\n    match: {action: 'payments.*'}\n"
            "    effect: proceed\n"
        )
        authority = read_private_key(home / "keys" / "authority.jwk")
        holder = Runtime("agent-1", PrivateKey.generate())
        root = issue_artifact(
            key=authority,
            issuer="example-authority",
            subject="agent-1",
            audience="gw-bench",
            runtime_key=holder.key.public,
            scope=SCOPE,
            now=now,
            ttl=86400,
        )
        depth1, runtime1 = chain(root, holder, 1, now)
        depth3, runtime3 = chain(root, holder, 3, now)
        trust = TrustStore.load(home / "trust.toml")
        v1, v3 = count_verifies(trust, depth1, now), count_verifies(trust, depth3, now)
        with Gateway.open(home) as gw:
            decision_median_us(gw, runtime1, depth1, now, 200)  # warm up, and seen once
            decision_median_us(gw, runtime3, depth3, now, 200)
            t1 = decision_median_us(gw, runtime1, depth1, now, n)
            t3 = decision_median_us(gw, runtime3, depth3, now, n)
    extra_per_link = (v3 - v1) / 2
    rows = [
        ("artifact signature checks, first sight: depth 1 / depth 3", f"{v1} / {v3}"),
        ("extra checks per extra link", f"{extra_per_link:.1f}"),
        ("decision median, chain seen before: depth 1", f"{t1:.0f} us"),
        ("decision median, chain seen before: depth 3", f"{t3:.0f} us  ({t3 / t1:.2f}x)"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
    print(f"{'MET ' if extra_per_link <= 1 else 'MISS'}  <= 1 extra signature check per link")
    print(f"{'MET ' if t3 <= 1.2 * t1 else 'MISS'}  repeated depth 3 <= 1.2x depth 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
