"""The ``execgate`` command end to end: a real home, real keys, real decisions.

Every test drives ``execgate.cli.main`` the way a shell would (argv in, exit code and
stdout/stderr out); a few run the installed console script in a subprocess. The exit code
contract is 0 proceed, 1 deny, 2 usage error, 3 pause, 4 reroute, 5 fail_closed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from execgate.artifacts import issue_artifact, verify_artifact
from execgate.cli import EXIT_CODES, main
from execgate.home import load_config
from execgate.jose import parse_unverified, sha256_b64url
from execgate.keyfile import read_private_key, read_public_key
from execgate.model import Outcome
from execgate.policy import load_policy
from execgate.receipts import verify_receipt
from execgate.trust import TrustStore

GATEWAY_ID = "gw-test"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class World:
    """A directory holding a gateway home ``home`` and a runtime key pair ``runtime.jwk``."""

    root: Path
    capsys: pytest.CaptureFixture[str]
    runs: list[Run]

    @property
    def home(self) -> Path:
        return self.root / "home"

    def run(self, *argv: str) -> Run:
        code = main(list(argv))
        captured = self.capsys.readouterr()
        result = Run(code, captured.out, captured.err)
        self.runs.append(result)
        return result

    def ok(self, *argv: str) -> Run:
        result = self.run(*argv)
        assert result.code == 0, result
        return result

    def request(self, name: str, action: str, resource: str, **args: Any) -> str:
        body = {"action": action, "resource": resource, "args": args, "runtime": "agent-1"}
        (self.root / name).write_text(json.dumps(body))
        return name

    def issue(self, out: str, *extra: str, action: str = "payments.*") -> str:
        self.ok(
            "--home", "home", "issue", "--sub", "agent-1", "--runtime-key", "runtime.pub.jwk",
            "--action", action, "--resource", _resource(action), "-o", out, *extra,
        )  # fmt: skip
        return out

    def decide(self, request: str, artifact: str, *extra: str) -> Run:
        return self.run(
            "--home", "home", "decide", "--request", request, "--artifact", artifact,
            "--runtime-key", "runtime.jwk", *extra,
        )  # fmt: skip


def _resource(action: str) -> str:
    return {"shell.exec": "host:**", "reports.read": "**"}.get(action, "acct:**")


@pytest.fixture
def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[World]:
    monkeypatch.delenv("EXECGATE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    w = World(tmp_path, capsys, [])
    w.ok("init", "home", "--id", GATEWAY_ID)
    w.ok("keygen", "runtime.jwk")
    yield w
    # Whatever a test ran, no private key material ever reached stdout or stderr.
    secrets = _private_values(tmp_path)
    assert secrets
    for result in w.runs:
        for secret in secrets:
            assert secret not in result.out
            assert secret not in result.err


def _private_values(root: Path) -> list[str]:
    values = []
    for path in root.rglob("*.jwk"):
        doc = json.loads(path.read_text())
        if "d" in doc:
            values.append(doc["d"])
    return values


# -- init and keygen --------------------------------------------------------------------


def test_init_creates_a_complete_home(world: World) -> None:
    home = world.home
    keys = home / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("node", "authority", "attester"):
        assert stat.S_IMODE((keys / f"{name}.jwk").stat().st_mode) == 0o600
        private = read_private_key(keys / f"{name}.jwk")
        assert read_public_key(keys / f"{name}.pub.jwk") == private.public
    config = load_config(home)
    assert config.gateway_id == GATEWAY_ID
    assert GATEWAY_ID in config.audiences
    text = (home / "execgate.toml").read_text(encoding="utf-8")
    assert "/v1/decisions/{id}" in text  # the comment's placeholder, not a Python repr
    assert "<built-in" not in text
    trust = TrustStore.load(config.trust)
    authority = read_private_key(keys / "authority.jwk").public
    owner = trust.authority_for_kid(authority.thumbprint())
    assert owner is not None
    assert owner.id == "example-authority"
    assert {(g.action, g.resource) for g in owner.scope} >= {("payments.*", "acct:**")}
    attester = read_private_key(keys / "attester.jwk").public
    assert trust.attester_for_kid(attester.thumbprint()) is not None
    policy = load_policy(config.policy, targets=config.targets.keys())
    assert {r.effect for r in policy.rules} == {
        Outcome.PROCEED,
        Outcome.DENY,
        Outcome.PAUSE,
        Outcome.REROUTE,
    }
    # the node key is not a trusted authority: receipts and artifacts use separate keys
    node = read_private_key(config.node_key).public
    assert trust.authority_for_kid(node.thumbprint()) is None
    printed = world.runs[0].out
    assert GATEWAY_ID in printed
    assert "0600" in printed


def test_init_refuses_an_existing_home_and_changes_nothing(world: World) -> None:
    before = {p: p.read_bytes() for p in world.home.rglob("*") if p.is_file()}
    result = world.run("init", "home")
    assert result.code == 2
    assert "already a gateway home" in result.err
    after = {p: p.read_bytes() for p in world.home.rglob("*") if p.is_file()}
    assert after == before


def test_init_uses_the_home_flag_and_environment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.ok("--home", "h2", "init")
    assert (world.root / "h2" / "execgate.toml").is_file()
    world.ok("init", "--home", "h3")
    assert (world.root / "h3" / "execgate.toml").is_file()
    monkeypatch.setenv("EXECGATE_HOME", str(world.root / "h4"))
    world.ok("init")
    assert (world.root / "h4" / "execgate.toml").is_file()


def test_keygen_writes_a_private_and_a_public_key_and_never_overwrites(world: World) -> None:
    result = world.ok("keygen", "k.jwk")
    private = world.root / "k.jwk"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = read_private_key(private)
    assert read_public_key(world.root / "k.pub.jwk") == key.public
    assert key.public.thumbprint() in result.out
    before = private.read_bytes()
    again = world.run("keygen", "k.jwk")
    assert again.code == 2
    assert "already exists" in again.err
    assert private.read_bytes() == before


# -- issue and inspect ------------------------------------------------------------------


def test_issue_mints_an_artifact_with_every_claim(world: World) -> None:
    before = int(time.time())
    world.issue(
        "art.jwt",
        "--constraint", "amount.max=500", "--constraint", "amount.min=1",
        "--constraint", "currency.enum=EUR,USD", "--constraint", "iban.prefix=DE",
        "--env", "region=eu-west-1|eu-central-1", "--env", "image=sha256:abc",
        "--gov", "ticket=FIN-1", "--gov", "purpose=settlement",
        "--att", "on_behalf_of=alice@example.com", "--att", "reason=monthly run",
        "--uses", "3", "--ttl", "600", "--nbf", str(before),
    )  # fmt: skip
    token = (world.root / "art.jwt").read_text().strip()
    claims = parse_unverified(token, max_size=16384).claims
    runtime = read_public_key(world.root / "runtime.pub.jwk")
    assert set(claims) == {
        "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "cnf", "env", "gov", "att",
        "uses",
    }  # fmt: skip
    assert claims["iss"] == "example-authority"
    assert claims["sub"] == "agent-1"
    assert claims["aud"] == GATEWAY_ID
    assert before <= claims["iat"] <= int(time.time())
    assert claims["nbf"] == before
    assert claims["exp"] == claims["iat"] + 600
    assert len(claims["jti"]) >= 16
    assert claims["scope"] == [
        {
            "action": "payments.*",
            "resource": "acct:**",
            "constraints": {
                "amount": {"max": 500, "min": 1},
                "currency": {"enum": ["EUR", "USD"]},
                "iban": {"prefix": "DE"},
            },
        }
    ]
    assert claims["cnf"] == {"jkt": runtime.thumbprint()}
    assert claims["env"] == {"region": ["eu-west-1", "eu-central-1"], "image": "sha256:abc"}
    assert claims["gov"] == {"ticket": "FIN-1", "purpose": "settlement"}
    assert claims["att"] == {"on_behalf_of": "alice@example.com", "reason": "monthly run"}
    assert claims["uses"] == 3
    config = load_config(world.home)
    artifact = verify_artifact(
        token,
        trust=TrustStore.load(config.trust),
        audiences=config.audiences,
        now=int(time.time()),
        leeway=0,
    )
    assert artifact.uses == 3


def test_issue_prints_the_token_on_stdout_without_o(world: World) -> None:
    result = world.ok(
        "--home", "home", "issue", "--sub", "agent-1", "--runtime-key", "runtime.pub.jwk",
        "--scope", '[{"action": "reports.read", "resource": "**"}]',
    )  # fmt: skip
    token = result.out.strip()
    assert token.count(".") == 2
    assert parse_unverified(token, max_size=16384).claims["scope"] == [
        {"action": "reports.read", "resource": "**"}
    ]
    assert result.err == ""


def test_inspect_marks_a_verified_artifact(world: World) -> None:
    world.issue("art.jwt")
    result = world.ok("--home", "home", "inspect", "art.jwt")
    first = result.out.splitlines()[0]
    assert first.startswith("VERIFIED artifact")
    assert "example-authority" in first
    assert '"sub": "agent-1"' in result.out
    as_json = json.loads(world.ok("--home", "home", "inspect", "art.jwt", "--json").out)
    assert as_json["verified"] is True
    assert as_json["claims"]["sub"] == "agent-1"
    assert as_json["header"]["typ"] == "execgate-artifact+jwt"


def test_inspect_marks_unverified_without_a_home_or_with_another_one(world: World) -> None:
    world.issue("art.jwt")
    token = (world.root / "art.jwt").read_text().strip()
    nowhere = world.ok("--home", "nowhere", "inspect", token)
    assert nowhere.out.startswith("UNVERIFIED")
    assert "no gateway home" in nowhere.out
    assert '"sub": "agent-1"' in nowhere.out
    world.ok("init", "other")
    other = world.ok("--home", "other", "inspect", "art.jwt", "--json")
    doc = json.loads(other.out)
    assert doc["verified"] is False
    assert doc["status"].startswith("UNVERIFIED: artifact.")
    assert doc["claims"]["iss"] == "example-authority"


def test_inspect_marks_an_expired_artifact_unverified(world: World) -> None:
    token = _artifact(world, issued=int(time.time()) - 7200, ttl=600)
    result = world.ok("--home", "home", "inspect", token)
    assert result.out.startswith("UNVERIFIED: artifact.expired")


def _artifact(world: World, *, issued: int, ttl: int) -> str:
    """An artifact minted through the library, for what the CLI cannot mint (the past)."""
    return issue_artifact(
        key=read_private_key(world.home / "keys" / "authority.jwk"),
        issuer="example-authority",
        subject="agent-1",
        audience=GATEWAY_ID,
        runtime_key=read_public_key(world.root / "runtime.pub.jwk"),
        scope=[{"action": "payments.*", "resource": "acct:**"}],
        now=issued,
        ttl=ttl,
    )


# -- decide: every exit code from a real decision ---------------------------------------


def test_decide_exit_codes_follow_the_outcome(world: World) -> None:
    payments = world.issue("payments.jwt")
    shell = world.issue("shell.jwt", action="shell.exec")
    cases = [
        (world.request("small.json", "payments.transfer", "acct:1", amount=100), payments, 0),
        (world.request("other.json", "users.delete", "acct:1"), payments, 1),
        (world.request("big.json", "payments.transfer", "acct:1", amount=5000), payments, 3),
        (world.request("sh.json", "shell.exec", "host:build", argv=["make"]), shell, 4),
    ]
    for request, artifact, code in cases:
        result = world.decide(request, artifact)
        assert result.code == code, result
        assert result.err == ""
    assert EXIT_CODES == {
        Outcome.PROCEED: 0,
        Outcome.DENY: 1,
        Outcome.PAUSE: 3,
        Outcome.REROUTE: 4,
        Outcome.FAIL_CLOSED: 5,
    }


def test_a_decision_whose_output_cannot_be_written_says_it_stands(world: World) -> None:
    """Standard output on a full disk: the decision was made and logged before it was
    printed, and the error says so (exit 2), in a real process writing to /dev/full."""
    payments = world.issue("payments.jwt")
    request = world.request("small.json", "payments.transfer", "acct:1", amount=100)
    argv = ["--home", "home", "decide", "--request", request, "--artifact", payments]
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        done = subprocess.run(
            [sys.executable, "-m", "execgate", *argv, "--runtime-key", "runtime.jwk"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=world.root,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert "cannot write to standard output: No space left on device" in done.stderr
    assert "what the command did stands" in done.stderr
    tail = world.ok("--home", "home", "audit", "tail").out
    assert "proceed" in tail


def test_an_output_of_dash_is_standard_output(world: World) -> None:
    issued = world.ok(
        "--home", "home", "issue", "--sub", "agent-1", "--runtime-key", "runtime.pub.jwk",
        "--action", "payments.*", "--resource", "acct:**", "-o", "-",
    )  # fmt: skip
    assert issued.out.count(".") == 2  # the compact JWS, printed
    assert not (world.root / "-").exists()


def test_decide_prints_the_outcome_reason_and_log_index(world: World) -> None:
    payments = world.issue("payments.jwt")
    request = world.request("big.json", "payments.transfer", "acct:1", amount=5000)
    lines = world.decide(request, payments).out.splitlines()
    assert lines[0] == "PAUSE  (rule large-transfers-need-approval)"
    assert lines[1].startswith("  approval.required: ")
    assert "log index 0" in lines[2]
    shell = world.issue("shell.jwt", action="shell.exec")
    request = world.request("sh.json", "shell.exec", "host:build", argv=["make"])
    assert world.decide(request, shell).out.startswith("REROUTE -> sandbox")


def test_decide_json_is_the_decision_object_with_a_verifiable_receipt(world: World) -> None:
    payments = world.issue("payments.jwt")
    request = world.request("small.json", "payments.transfer", "acct:1", amount=100)
    result = world.decide(request, payments, "--json")
    assert result.code == 0
    doc = json.loads(result.out)
    assert doc["outcome"] == "proceed"
    assert doc["reasons"] == []
    assert doc["rule"] == "payments"
    assert isinstance(doc["decision_id"], str)
    assert doc["decision_id"]
    assert doc["log_index"] == 0
    node = read_private_key(world.home / "keys" / "node.jwk").public
    claims = verify_receipt(
        doc["receipt"], keys={node.thumbprint(): node}, now=int(time.time()), leeway=0
    )
    assert claims["did"] == doc["decision_id"]
    assert claims["outcome"] == "proceed"
    assert claims["pol"] == doc["policy_hash"]
    inspected = world.ok("--home", "home", "inspect", doc["receipt"]).out
    assert inspected.startswith(f"VERIFIED receipt: signed by this gateway ({GATEWAY_ID})")
    elsewhere = world.ok("--home", "nowhere", "inspect", doc["receipt"]).out
    assert elsewhere.startswith("UNVERIFIED")

    denied = world.decide(world.request("x.json", "users.delete", "acct:1"), payments, "--json")
    assert denied.code == 1
    doc = json.loads(denied.out)
    assert doc["outcome"] == "deny"
    assert doc["reasons"][0]["code"] == "scope.not_granted"
    assert doc["reasons"][0]["detail"]
    assert doc["receipt"]


def test_decide_fails_closed_with_exit_5_when_the_store_cannot_be_opened(world: World) -> None:
    payments = world.issue("payments.jwt")
    request = world.request("small.json", "payments.transfer", "acct:1", amount=100)
    (world.home / "state.db").write_bytes(b"this is not an SQLite database" * 100)
    result = world.decide(request, payments)
    assert result.code == 5, result
    lines = result.out.splitlines()
    assert lines[0].split()[0] == "FAIL_CLOSED"
    assert any(line.startswith("  store.unavailable: ") for line in lines)
    assert "NOT logged, no receipt" in result.out
    doc = json.loads(world.decide(request, payments, "--json").out)
    assert doc["outcome"] == "fail_closed"
    assert {r["code"] for r in doc["reasons"]} == {"store.unavailable", "audit.unavailable"}
    assert doc["receipt"] is None
    assert doc["log_index"] is None
    assert doc["decision_id"]


def test_decide_denies_each_family_with_exit_1(world: World) -> None:
    payments = world.issue("payments.jwt", "--gov", "ticket=FIN-1")
    small = world.request("small.json", "payments.transfer", "acct:1", amount=5)

    # wrong key: the proof is signed by a key the artifact does not bind
    world.ok("keygen", "intruder.jwk")
    wrong = world.run(
        "--home", "home", "decide", "--request", small, "--artifact", payments,
        "--runtime-key", "intruder.jwk",
    )  # fmt: skip
    assert (wrong.code, wrong.out.splitlines()[1].split(":")[0]) == (1, "  identity.mismatch")

    # replay: the same decision request, proof included, presented twice
    proof = world.ok(
        "--home", "home", "proof", "--request", small, "--artifact", payments,
        "--runtime-key", "runtime.jwk",
    ).out.strip()  # fmt: skip
    submission = {
        "request": json.loads((world.root / small).read_text()),
        "artifact": (world.root / payments).read_text().strip(),
        "proof": proof,
    }
    (world.root / "submission.json").write_text(json.dumps(submission))
    first = world.run("--home", "home", "decide", "--request", "submission.json")
    assert first.code == 0, first
    again = world.run("--home", "home", "decide", "--request", "submission.json", "--json")
    assert again.code == 1
    assert json.loads(again.out)["reasons"][0]["code"] == "replay.detected"
    assert first.out.splitlines()[0] == "PROCEED  (rule payments)"
    # Denied for a replay, not by the rule that matched: the rule is not named.
    text = world.run("--home", "home", "decide", "--request", "submission.json")
    assert text.out.splitlines()[:2] == [
        "DENY",
        "  replay.detected: this proof has been presented before",
    ]

    # expired
    expired = _artifact(world, issued=int(time.time()) - 7200, ttl=600)
    assert _code(world.decide(small, expired, "--json")) == (1, "artifact.expired")

    # out of scope, and a constraint violated
    constrained = world.issue("c.jwt", "--constraint", "amount.max=10")
    big = world.request("big.json", "payments.transfer", "acct:1", amount=50)
    assert _code(world.decide(big, constrained, "--json")) == (1, "scope.constraint_violated")

    # policy deny: refunds need a ticket, and this artifact has none
    bare = world.issue("bare.jwt")
    refund = world.request("refund.json", "payments.refund", "acct:1", amount=5)
    assert _code(world.decide(refund, bare, "--json")) == (1, "policy.denied")

    # a pinned policy hash that is not the loaded policy
    pinned = world.issue("pinned.jwt", "--gov", "policy=sha256:" + "0" * 64)
    assert _code(world.decide(small, pinned, "--json")) == (1, "policy.mismatch")

    # revoked, by the artifact file: that exact token (its SHA-256), not every artifact
    # that carries its jti
    said = world.ok("--home", "home", "revoke", "--artifact", payments, "--reason", "compromised")
    token = (world.root / payments).read_text().strip()
    assert said.out.startswith(f"revoked artifact {sha256_b64url(token.encode())}: ")
    assert _code(world.decide(small, payments, "--json")) == (1, "artifact.revoked")
    # a token of another kind (the proof above) would be revoked to no effect: refused
    refused = world.run("--home", "home", "revoke", "--artifact", proof, "--reason", "x")
    assert refused.code == 2
    assert "token, not an artifact (execgate-artifact+jwt)" in refused.err


def _code(result: Run) -> tuple[int, str]:
    doc = json.loads(result.out)
    return result.code, doc["reasons"][0]["code"]


def test_decide_checks_the_environment_with_an_attestation(world: World) -> None:
    artifact = world.issue("eu.jwt", "--env", "region=eu-west-1", action="reports.read")
    request = world.request("report.json", "reports.read", "report:q3")
    for region, name in (("eu-west-1", "eu.att"), ("us-east-1", "us.att")):
        world.ok(
            "attest", "--key", "home/keys/attester.jwk", "--sub", "agent-1",
            "--runtime-key", "runtime.pub.jwk", "--env", f"region={region}", "-o", name,
        )  # fmt: skip
    assert _code(world.decide(request, artifact, "--json")) == (1, "environment.untrusted")
    assert _code(world.decide(request, artifact, "--attestation", "us.att", "--json")) == (
        1,
        "environment.mismatch",
    )
    assert world.decide(request, artifact, "--attestation", "eu.att").code == 0


def test_revoke_by_kid_and_sub(world: World) -> None:
    payments = world.issue("payments.jwt")
    small = world.request("small.json", "payments.transfer", "acct:1", amount=5)
    runtime_kid = read_public_key(world.root / "runtime.pub.jwk").thumbprint()
    result = world.ok("--home", "home", "revoke", "--kid", runtime_kid, "--reason", "lost laptop")
    assert f"revoked kid {runtime_kid}: every decision from now on that stands on it" in result.out
    again = world.ok("--home", "home", "revoke", "--kid", runtime_kid, "--reason", "lost laptop")
    assert "already revoked" in again.out
    assert _code(world.decide(small, payments, "--json")) == (1, "artifact.revoked")
    world.ok("--home", "home", "revoke", "--sub", "agent-2", "--reason", "retired")
    odd = world.ok("--home", "home", "revoke", "--jti", "a\nb", "--reason", "odd")
    assert odd.out.splitlines() == [
        "revoked jti 'a\\nb': every decision from now on denies it (artifact.revoked)"
    ]


# -- policy -----------------------------------------------------------------------------

CASES = """\
cases:
  - name: small transfer proceeds
    request: {action: payments.transfer, resource: "acct:1", args: {amount: 5}, runtime: a}
    expect: proceed
    rule: payments
  - name: big transfer pauses
    request: {action: payments.transfer, resource: "acct:1", args: {amount: 5000}, runtime: a}
    expect: pause
    code: approval.required
"""


def test_policy_check_hash_and_test(world: World) -> None:
    policy = str(world.home / "policy.yaml")
    expected = load_policy(policy, targets=["sandbox", "dry-run"]).hash
    check = world.ok("--home", "home", "policy", "check", policy)
    assert check.out.startswith(f"ok: {policy}: 6 rules, {expected}")
    assert world.ok("--home", "home", "policy", "hash", policy).out == expected + "\n"
    # without a home, reroute targets come from --target
    assert world.ok("--home", "x", "policy", "hash", policy, "--target", "sandbox").out.strip() == (
        expected
    )

    (world.root / "cases.yaml").write_text(CASES)
    passed = world.run("--home", "home", "policy", "test", policy, "cases.yaml")
    assert passed.code == 0
    assert passed.out.splitlines() == [
        "PASS  small transfer proceeds",
        "PASS  big transfer pauses",
        "2 passed, 0 failed",
    ]
    (world.root / "bad.yaml").write_text(CASES.replace("expect: pause", "expect: proceed"))
    failed = world.run("--home", "home", "policy", "test", policy, "bad.yaml")
    assert failed.code == 1
    lines = failed.out.splitlines()
    assert lines[0] == "PASS  small transfer proceeds"
    assert lines[1].startswith("FAIL  big transfer pauses: expected proceed")
    assert "got pause" in lines[1]
    assert lines[2] == "1 passed, 1 failed"


# -- demo -------------------------------------------------------------------------------


def test_demo_shows_every_outcome_and_denial_family(world: World) -> None:
    result = world.ok("demo")
    out = result.out
    for outcome in ("proceed", "deny", "pause", "reroute -> sandbox", "fail_closed"):
        assert f"  {outcome}  " in out or f"  {outcome} " in out, outcome
    for code in (
        "artifact.expired",  # expired
        "identity.mismatch",  # wrong key
        "replay.detected",  # replay
        "artifact.revoked",  # revoked
        "scope.not_granted",  # out of scope
        "environment.mismatch",  # environment mismatch
        "policy.denied",  # policy deny
        "approval.required",  # pause
        "rule shell-to-sandbox",  # reroute
        "store.unavailable",  # fail_closed
    ):
        assert code in out, code
    rows = [line for line in out.splitlines() if line and line[0].isalpha()]
    assert len(rows) >= 12


# -- the installed command, in a subprocess ---------------------------------------------


def _command() -> list[str]:
    script = Path(sys.executable).parent / "execgate"
    found = str(script) if script.is_file() else shutil.which("execgate")
    return [found] if found else [sys.executable, "-m", "execgate"]


def test_the_installed_command_exits_with_the_decision(world: World) -> None:
    payments = world.issue("payments.jwt")
    shell = world.issue("shell.jwt", action="shell.exec")
    cases = [
        (world.request("small.json", "payments.transfer", "acct:1", amount=100), payments, 0),
        (world.request("other.json", "users.delete", "acct:1"), payments, 1),
        (world.request("big.json", "payments.transfer", "acct:1", amount=5000), payments, 3),
        (world.request("sh.json", "shell.exec", "host:build", argv=["make"]), shell, 4),
    ]
    env = {k: v for k, v in os.environ.items() if k != "EXECGATE_HOME"}
    env["EXECGATE_HOME"] = str(world.home)
    base = [*_command(), "decide", "--runtime-key", "runtime.jwk", "--json"]
    for request, artifact, code in cases:
        proc = subprocess.run(
            [*base, "--request", request, "--artifact", artifact],
            cwd=world.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == code, proc.stderr
        assert json.loads(proc.stdout)["outcome"] in {"proceed", "deny", "pause", "reroute"}
    usage = subprocess.run(
        [*base, "--request", "missing.json"],
        cwd=world.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2
    assert usage.stdout == ""
    assert usage.stderr == "execgate: error: request file missing.json does not exist\n"
    (world.home / "state.db").write_bytes(b"garbage" * 100)
    down = subprocess.run(
        [*base, "--request", "small.json", "--artifact", payments],
        cwd=world.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 5
    assert json.loads(down.stdout)["outcome"] == "fail_closed"


def test_python_dash_m_execgate_is_the_same_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "execgate", "--home", str(tmp_path / "nowhere"), "revoke"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("execgate: error: the following arguments are required")
    assert proc.stderr.count("\n") == 1


# -- private keys stay private ----------------------------------------------------------


def test_private_key_material_is_never_printed(world: World) -> None:
    """The fixture checks every run; this test makes the runs most likely to leak."""
    keys = "home/keys"
    world.issue("art.jwt")
    request = world.request("r.json", "payments.transfer", "acct:1", amount=1)
    loose = world.root / "loose.jwk"
    shutil.copy(world.root / "runtime.jwk", loose)
    loose.chmod(0o644)
    attempts = [
        ("--home", "home", "inspect", f"{keys}/node.jwk"),
        ("--home", "home", "inspect", f"{keys}/node.jwk", "--json"),
        ("--home", "home", "decide", "--request", f"{keys}/authority.jwk"),
        ("--home", "home", "decide", "--request", request, "--artifact", "runtime.jwk"),
        ("--home", "home", "decide", "--request", request, "--attestation", "runtime.jwk"),
        ("--home", "home", "policy", "check", f"{keys}/authority.jwk"),
        ("--home", "home", "policy", "test", "home/policy.yaml", f"{keys}/authority.jwk"),
        ("--home", "home", "issue", "--sub", "a", "--runtime-key", "runtime.jwk",
         "--action", "payments.x", "--resource", "acct:1"),
        ("--home", "home", "issue", "--sub", "a", "--runtime-key", "runtime.pub.jwk",
         "--scope", f"@{keys}/authority.jwk"),
        ("--home", "home", "issue", "--sub", "a", "--runtime-key", "runtime.pub.jwk",
         "--action", "payments.x", "--resource", "acct:1", "--key", "loose.jwk"),
        ("--home", "home", "revoke", "--artifact", f"{keys}/node.jwk", "--reason", "x"),
        ("--home", "home", "decide", "--request", request, "--artifact", "art.jwt",
         "--runtime-key", "loose.jwk"),
        ("attest", "--key", "loose.jwk", "--sub", "a", "--runtime-key", "runtime.pub.jwk",
         "--env", "a=b"),
    ]  # fmt: skip
    for argv in attempts:
        result = world.run(*argv)
        assert result.code == 2, (argv, result)
        assert result.err.startswith("execgate: error: ")
    # And the commands that handle private keys on the happy path.
    world.ok("--home", "home", "decide", "--request", request, "--artifact", "art.jwt",
             "--runtime-key", "runtime.jwk", "--json")  # fmt: skip
    world.ok("--home", "home", "proof", "--request", request, "--artifact", "art.jwt",
             "--runtime-key", "runtime.jwk")  # fmt: skip
    world.ok("attest", "--key", f"{keys}/attester.jwk", "--sub", "a",
             "--runtime-key", "runtime.pub.jwk", "--env", "a=b")  # fmt: skip
