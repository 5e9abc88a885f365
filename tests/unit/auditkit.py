"""A gateway home with a real audit log, and ``execgate`` run in-process, for the audit
CLI and tamper tests.

``make_log`` builds a home (gatekit) with a small ``[audit] checkpoint_every``, so signed
checkpoints are close together, and fills its log with every kind of record: proceed,
deny (a policy rule, a scope miss, a replay), pause, reroute, and execution outcomes.
``cli`` runs ``execgate.cli.main`` with stdout and stderr captured.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatekit import Kit, make_kit

from execgate.cli import main
from execgate.model import Decision, Outcome

__all__ = ["Log", "Run", "cli", "make_log"]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def error(self) -> str:
        """The one stderr line of a failed command (and nothing on stdout)."""
        assert self.code != 0, self
        assert self.out == "", self
        assert "Traceback" not in self.err, self.err
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        return lines[0]

    def not_verified(self) -> str:
        """The reason of a NOT VERIFIED (exit 1), never anything that reads as verified."""
        line = self.error()
        assert self.code == 1, self
        assert line.startswith("execgate: NOT VERIFIED: "), line
        return line.removeprefix("execgate: NOT VERIFIED: ")

    def usage(self) -> str:
        """The message of a usage error (exit 2)."""
        line = self.error()
        assert self.code == 2, self
        assert line.startswith("execgate: error: "), line
        return line.removeprefix("execgate: error: ")


def cli(*argv: str | Path) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Run(code, out.getvalue(), err.getvalue())


@dataclass
class Log:
    kit: Kit
    decisions: list[Decision] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # decision id -> outcome index

    @property
    def home(self) -> Path:
        return self.kit.home

    @property
    def pub(self) -> Path:
        return self.kit.home / "keys" / "node.pub.jwk"

    def with_outcome(self, outcome: Outcome) -> list[Decision]:
        return [d for d in self.decisions if d.outcome is outcome]

    def unreported(self, outcome: Outcome, nth: int = 0) -> Decision:
        """The ``nth`` decision with ``outcome`` that has no outcome logged yet."""
        return [d for d in self.with_outcome(outcome) if d.decision_id not in self.outcomes][nth]

    def records(self) -> list[dict[str, Any]]:
        gw = self.kit.gateway()
        try:
            return [json.loads(e.entry) for e in gw.store.entries(0, gw.store.size())]
        finally:
            self.kit.close()


def make_log(base: Path, *, checkpoint_every: int = 5, rounds: int = 4) -> Log:
    """A home whose log holds ``11 * rounds`` decisions and ``rounds`` outcomes."""
    kit = make_kit(base)
    config = kit.home / "execgate.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("checkpoint_every = 1000", f"checkpoint_every = {checkpoint_every}"),
        encoding="utf-8",
    )
    log = Log(kit)
    gw = kit.gateway()
    shell = ({"action": "shell.exec", "resource": "host:**"},)
    for r in range(rounds):
        replayed = kit.submit(kit.request(amount=7 + r))
        for submission in (
            kit.submit(kit.request(amount=100 + r)),
            kit.submit(kit.request("payments.charge", amount=50 + r)),
            kit.submit(kit.request("payments.refund", amount=5)),
            kit.submit(kit.request(amount=5000 + r)),
            kit.submission(kit.request("shell.exec", "host:db", argv=["ls"]), kit.artifact(shell)),
            kit.submit(kit.request("reports.read", "report:q1")),
            replayed,
            replayed,
            kit.submit(kit.request(amount=200 + r)),
            kit.submit(kit.request("payments.transfer", "acct:9", amount=300 + r)),
            kit.submit(kit.request("payments.charge", amount=1)),
        ):
            log.decisions.append(gw.decide(submission))
        executed = [d for d in log.decisions[-11:] if d.executes]
        done = executed[r % len(executed)]
        status = "succeeded" if r % 2 == 0 else "failed"
        digest = "sha256:" + f"{r:02x}" * 32 if r % 2 == 0 else None
        log.outcomes[done.decision_id] = gw.report_outcome(
            done.decision_id, status=status, exit_code=r, result_digest=digest
        )
    kit.close()
    return log
