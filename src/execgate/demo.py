"""``execgate demo``: one gateway, one request for every outcome and denial family.

Everything runs in a temporary gateway home on the embedded SQLite store, through the
same ``Gateway.decide`` a caller uses. The only simulated failure is the last row, where
the store is swapped for one that is down, to show fail-closed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from execgate.artifacts import issue_artifact
from execgate.attestations import issue_attestation
from execgate.home import init_home
from execgate.jose import PrivateKey, parse_unverified
from execgate.keyfile import read_private_key
from execgate.model import Decision, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.store.unavailable import UnavailableStore

__all__ = ["run_demo"]


def run_demo(out: Callable[[str], None]) -> int:
    with tempfile.TemporaryDirectory(prefix="execgate-demo-") as tmp:
        home = Path(tmp) / "home"
        config = init_home(home, gateway_id="gw-demo")
        authority = read_private_key(home / "keys" / "authority.jwk")
        attester = read_private_key(home / "keys" / "attester.jwk")
        agent = Runtime("agent-7", PrivateKey.generate())
        intruder = PrivateKey.generate()
        now = int(time.time())
        aud = config.gateway_id

        def artifact(scope: list[dict[str, Any]], *, issued: int = now, **extra: Any) -> str:
            return issue_artifact(
                key=authority,
                issuer="example-authority",
                subject=agent.runtime_id,
                audience=aud,
                runtime_key=agent.key.public,
                scope=scope,
                now=issued,
                ttl=600,
                **extra,
            )

        payments = artifact(
            [
                {
                    "action": "payments.*",
                    "resource": "acct:**",
                    "constraints": {"amount": {"max": 5000}},
                }
            ],
            gov={"ticket": "FIN-1042", "purpose": "vendor settlement"},
            att={"on_behalf_of": "alice@example.com"},
        )
        expired = artifact([{"action": "payments.*", "resource": "acct:**"}], issued=now - 7200)
        in_eu = artifact(
            [{"action": "reports.read", "resource": "**"}], env={"region": "eu-west-1"}
        )
        no_ticket = artifact([{"action": "payments.refund", "resource": "acct:**"}])
        shell = artifact([{"action": "shell.exec", "resource": "host:**"}])
        doomed = artifact([{"action": "payments.*", "resource": "acct:**"}])

        def req(action: str, resource: str, **args: Any) -> Request:
            return Request(action=action, resource=resource, runtime=agent.runtime_id, args=args)

        def sub(
            request: Request, art: str, *, signer: PrivateKey | None = None, att: str | None = None
        ) -> dict[str, Any]:
            runtime = agent if signer is None else Runtime(agent.runtime_id, signer)
            return runtime.submission(request, art, audience=aud, now=now, attestation=att)

        us_east = issue_attestation(
            key=attester, subject=agent.runtime_id, env={"region": "us-east-1"}, now=now, ttl=300
        )
        transfer = sub(req("payments.transfer", "acct:1001", amount=250, currency="EUR"), payments)
        rows: list[tuple[str, Decision]] = []
        with Gateway.open(home) as gw:
            rows.append(("transfer 250 EUR, all checks pass", gw.decide(transfer)))
            rows.append(("the same request replayed", gw.decide(transfer)))
            rows.append(
                (
                    "artifact expired an hour ago",
                    gw.decide(sub(req("payments.transfer", "acct:1", amount=5), expired)),
                )
            )
            rows.append(
                (
                    "proof signed with the wrong key",
                    gw.decide(
                        sub(req("payments.transfer", "acct:1", amount=5), payments, signer=intruder)
                    ),
                )
            )
            doomed_jti = parse_unverified(doomed, max_size=16384).claims["jti"]
            gw.store.revoke("jti", doomed_jti, reason="compromised runtime", now=now)
            rows.append(
                (
                    "artifact revoked by its jti",
                    gw.decide(sub(req("payments.transfer", "acct:2", amount=5), doomed)),
                )
            )
            rows.append(
                (
                    "action outside the granted scope",
                    gw.decide(sub(req("users.delete", "acct:1"), payments)),
                )
            )
            rows.append(
                (
                    "amount above the granted max",
                    gw.decide(sub(req("payments.transfer", "acct:1", amount=9000), payments)),
                )
            )
            rows.append(
                (
                    "runtime attested in us-east-1",
                    gw.decide(sub(req("reports.read", "report:q3"), in_eu, att=us_east)),
                )
            )
            rows.append(
                (
                    "refund without a ticket (policy)",
                    gw.decide(sub(req("payments.refund", "acct:1", amount=5), no_ticket)),
                )
            )
            rows.append(
                (
                    "transfer above 1000 (policy)",
                    gw.decide(sub(req("payments.transfer", "acct:1", amount=2500), payments)),
                )
            )
            rows.append(
                (
                    "shell command (policy)",
                    gw.decide(
                        sub(req("shell.exec", "host:build-1", argv=["make"], cwd="/src"), shell)
                    ),
                )
            )
            gw.store.close()
            gw.store = UnavailableStore("connection refused (simulated outage)")
            rows.append(
                (
                    "state store down",
                    gw.decide(sub(req("payments.transfer", "acct:1", amount=5), payments)),
                )
            )
        _table(out, rows, config.gateway_id)
    return 0


def _table(out: Callable[[str], None], rows: list[tuple[str, Decision]], gateway_id: str) -> None:
    out(f"execgate demo - gateway {gateway_id}, embedded SQLite store, every decision audited\n")
    header = ("scenario", "outcome", "reason", "detail", "log")
    body = []
    for label, d in rows:
        codes = ", ".join(r.code for r in d.reasons) or (f"rule {d.rule}" if d.rule else "")
        detail = d.reasons[0].detail if d.reasons else ""
        detail = detail if len(detail) <= 48 else detail[:45] + "..."
        outcome = d.outcome.value + (f" -> {d.route}" if d.route else "")
        log = "-" if d.log_index is None else f"#{d.log_index}"
        body.append((label, outcome, codes, detail, log))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *body]:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    out("\nproceed and reroute execute; pause waits for approval; deny and fail_closed never run.")
