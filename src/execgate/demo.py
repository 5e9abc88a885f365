"""``execgate demo``: one gateway, one request for every outcome and denial family, then
a pause approved by two approvers and resumed, and a reroute through the Python guard.

Everything runs in a temporary gateway home on the embedded SQLite store, through the
same ``Gateway.decide`` a caller uses. The only simulated failure is the last row of the
table, where the store is swapped for one that is down, to show fail-closed. The
approvers are the sample ones ``execgate init`` writes (alice and bob, in ``finance``),
plus carol, added to the home's trust store for the demo, who asked for the transfer
and so may not approve it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from execgate.adapters import Guard
from execgate.approvals import sign_review, tally
from execgate.artifacts import issue_artifact
from execgate.attestations import issue_attestation
from execgate.errors import ApprovalError
from execgate.home import init_home
from execgate.jose import PrivateKey, parse_unverified
from execgate.keyfile import read_private_key, write_keypair
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
            key=attester,
            subject=agent.runtime_id,
            runtime_key=agent.key.public,
            env={"region": "us-east-1"},
            now=now,
            ttl=300,
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
        requested = artifact(
            [{"action": "payments.*", "resource": "acct:**"}],
            gov={"ticket": "FIN-1043"},
            att={"requested_by": "carol", "reason": "quarterly supplier payment"},
        )
        approvers = {name: _approver_key(home, name) for name in ("alice", "bob", "carol")}
        with Gateway.open(home) as gw:
            _pause_and_resume(out, gw, approvers, agent, requested, now)
            _guarded_reroute(out, gw, Guard(gw, runtime=agent, artifact=shell, audience=aud))
    return 0


def _approver_key(home: Path, name: str) -> PrivateKey:
    """``name``'s key: the sample one ``execgate init`` wrote, else a new one that is
    added to the home's trust store as a ``finance`` approver."""
    path = home / "keys" / f"approver-{name}.jwk"
    if path.exists():
        return read_private_key(path)
    key = PrivateKey.generate()
    write_keypair(path, key)
    jwk = ", ".join(f"{k} = {json.dumps(v)}" for k, v in key.public.to_jwk().items())
    with (home / "trust.toml").open("a", encoding="utf-8") as trust:
        trust.write(f'\n[[approver]]\nid = "{name}"\ngroups = ["finance"]\nkeys = [{{{jwk}}}]\n')
    return key


def _pause_and_resume(
    out: Callable[[str], None],
    gw: Gateway,
    keys: dict[str, PrivateKey],
    agent: Runtime,
    artifact: str,
    now: int,
) -> None:
    request = Request(
        action="payments.transfer",
        resource="acct:1001",
        runtime=agent.runtime_id,
        args={"amount": 2500, "currency": "EUR"},
    )
    rows: list[tuple[str, str, str, str]] = []

    def ask(label: str) -> Decision:
        d = gw.decide(agent.submission(request, artifact, audience=gw.gateway_id, now=now))
        approval = (d.approval_id or "")[:8]
        if d.executes:
            record = gw.store.find(d.decision_id, "decision")
            names = json.loads(record.entry)["approvers"] if record is not None else []
            detail = f"approval {approval} used, approved by {', '.join(names)}"
        elif d.approval_id == d.decision_id:
            detail = f"approval {approval} opened"
        else:
            detail = f"waiting on approval {approval}: {_counts(gw, d.approval_id or '')}"
        rows.append((label, d.outcome.value, detail, f"#{d.log_index}"))
        return d

    def review(label: str, name: str) -> None:
        pending, _ = gw.approval(approval)
        token = sign_review(
            key=keys[name], approver=name, pending=pending, verdict="approve", now=now
        )
        try:
            index, _, _ = gw.review(approval, token)
        except ApprovalError as exc:
            why = str(exc).replace(" (runtime, delegator, requester or beneficiary)", "")
            rows.append((label, "refused", why, "-"))
        else:
            rows.append((label, "approved", f"review logged; {_counts(gw, approval)}", f"#{index}"))

    out("\nPause, approve, resume: a transfer above 1000 needs 2 approvers from finance\n")
    approval = ask("agent-7 asks to transfer 2500 EUR").approval_id or ""
    review("carol approves (she requested it)", "carol")
    review("alice approves", "alice")
    ask("agent-7 asks again")
    review("bob approves", "bob")
    ask("agent-7 asks again")
    ask("agent-7 asks once more")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        out("  " + "  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0], strict=True)).rstrip())
    out("\nAn approval is used by one execution: the next identical request needs a new one.")


def _counts(gw: Gateway, approval_id: str) -> str:
    pending, reviews = gw.approval(approval_id)
    return ", ".join(
        f"{group} {n}/{pending.quorum}" for group, n in tally(pending, reviews, gw.trust).items()
    )


def _guarded_reroute(out: Callable[[str], None], gw: Gateway, guard: Guard) -> None:
    ran: list[str] = []

    def sandbox_build(host: str, argv: list[str], cwd: str) -> dict[str, Any]:
        ran.append("sandbox_build")
        return {"exit": 0, "sandbox": True}

    @guard.protect(
        action="shell.exec",
        resource=lambda host, **_: f"host:{host}",
        reroute={"sandbox": sandbox_build},
    )
    def run_build(host: str, argv: list[str], cwd: str) -> dict[str, Any]:
        ran.append("run_build")
        return {"exit": 0, "sandbox": False}

    out("\nThe Python guard: run_build is protected, with sandbox_build registered for 'sandbox'\n")
    result = run_build("build-1", ["make", "release"], cwd="/src")
    size = gw.store.size()
    decision, outcome = (json.loads(e.entry) for e in gw.store.entries(size - 2, size))
    out("  run_build('build-1', ['make', 'release'], cwd='/src')")
    verdict = f"{decision['outcome']} -> {decision['route']} (rule {decision['rule']})"
    out(f"  decision   {verdict}, log #{size - 2}")
    out(f"  ran        {', '.join(ran)} (not run_build), returned {result}")
    out(f"  outcome    {outcome['status']}, {outcome['result_digest'][:23]}..., log #{size - 1}")


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
