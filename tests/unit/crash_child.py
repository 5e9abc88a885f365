"""The process test_crash_safety.py kills: decides in a loop on a real gateway home.

Not a test module (pytest collects only ``test_*.py``). Run as::

    python crash_child.py HOME SPEC LIMIT

SPEC is a JSON file with the runtime id, its private JWK, the artifact and the audience.
Several threads decide requests of every outcome (so group commits form batches) and
report an outcome for some decisions that executed. Each line is written and flushed the
moment the call it reports has returned, so whatever the parent reads was already
acknowledged to the caller::

    ready                                   the gateway is open
    decision <decision id> <outcome> <log index>
    outcome <decision id> <log index>

LIMIT is the number of decisions to make before exiting 0; 0 means until killed.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from execgate.jose import PrivateKey
from execgate.model import Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime

THREADS = 4
_out = threading.Lock()


def emit(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def requests(runtime: str) -> list[Request]:
    """One request per outcome the test policy gives: proceed, deny, reroute, pause."""
    return [
        Request("payments.transfer", "acct:1", runtime, {"amount": 100}),
        Request("payments.refund", "acct:1", runtime, {"amount": 1}),
        Request("shell.exec", "host:db-1", runtime, {"argv": ["true"], "cwd": "/"}),
        Request("payments.transfer", "acct:1", runtime, {"amount": 5000}),
    ]


def main(argv: list[str]) -> int:
    home, spec_path, limit = Path(argv[1]), Path(argv[2]), int(argv[3])
    spec: dict[str, Any] = json.loads(spec_path.read_text(encoding="utf-8"))
    runtime = Runtime(spec["runtime"], PrivateKey.from_jwk(spec["runtime_key"]))
    artifact, audience = str(spec["artifact"]), str(spec["audience"])
    kinds = requests(runtime.runtime_id)
    counter = itertools.count()  # next() on it is atomic: each decision number once
    failures: list[str] = []
    gateway = Gateway.open(home)
    emit("ready")

    def work() -> None:
        try:
            for n in counter:
                if limit and n >= limit:
                    return
                request = kinds[n % len(kinds)]
                wire = runtime.submission(
                    request, artifact, audience=audience, now=int(time.time())
                )
                d = gateway.decide(wire)
                emit(f"decision {d.decision_id} {d.outcome.value} {d.log_index}")
                if d.executes and n % 3 == 0:
                    index = gateway.report_outcome(d.decision_id, status="succeeded", exit_code=0)
                    emit(f"outcome {d.decision_id} {index}")
        except Exception:  # noqa: BLE001 - reported on stderr, fails the exit code
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gateway.close()
    for failure in failures:
        sys.stderr.write(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
