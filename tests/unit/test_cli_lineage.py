"""Lineage on the command line: ``delegate``, the chain in ``inspect``, ``revoke
--cascade-report`` / ``--dry-run``, and ``lineage show``, on real gateway homes.

The happy path runs the whole story a user would: the holder of an artifact delegates a
narrower child, the child verifies and is accepted, a second execution names the first
as its parent, ``lineage show`` draws the tree, and revoking the root lists everything
below it and denies the child from then on. Every refusal is one line, exit 2, and
leaves nothing behind: no token file, no decision.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from auditkit import Run, cli
from gatekit import POLICY, make_kit

from execgate.artifacts import ARTIFACT_TYP, issue_artifact
from execgate.audit.query import lineage_tree
from execgate.jose import PrivateKey, encode, parse_unverified
from execgate.keyfile import read_private_key, read_public_key
from execgate.store.base import LogEntry, Store
from execgate.store.sqlite import SQLiteStore

AUTHORITY = "example-authority"
TRANSFER = ("--action", "payments.transfer", "--resource", "acct:**")


def jti(token: Path | str) -> str:
    text = token.read_text().strip() if isinstance(token, Path) else token
    value = parse_unverified(text, max_size=1 << 16).claims["jti"]
    assert isinstance(value, str)
    return value


def log_size(home: Path) -> int:
    store = SQLiteStore(home / "state.db")
    try:
        return store.size()
    finally:
        store.close()


@dataclass(frozen=True)
class World:
    """A gateway home ``gw-test`` (the test policy) and runtime keys agent1..agent3 in
    ``root``; ``root.jwt`` is an artifact for agent-1 (payments.* on acct:**, 1 hour)."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    def run(self, *argv: str | Path) -> Run:
        return cli("--home", self.home, *argv)

    def ok(self, *argv: str | Path) -> Run:
        result = self.run(*argv)
        assert result.code == 0, result
        return result

    def key(self, name: str) -> Path:
        return self.root / f"{name}.jwk"

    def pub(self, name: str) -> Path:
        return self.root / f"{name}.pub.jwk"

    def kid(self, name: str) -> str:
        return read_public_key(self.pub(name)).thumbprint()

    def delegate(
        self, out: str, parent: str, holder: str, sub: str, runtime: str, *grant: str
    ) -> Path:
        result = self.ok(
            "delegate", "--parent", self.root / parent, "--key", self.key(holder),
            "--sub", sub, "--runtime-key", self.pub(runtime), *(grant or TRANSFER),
            "-o", self.root / out,
        )  # fmt: skip
        assert result.out == ""
        assert result.err == f"wrote {self.root / out}\n"
        return self.root / out

    def request(self, name: str, runtime: str, resource: str = "acct:1", **extra: Any) -> Path:
        body = {"action": "payments.transfer", "resource": resource, "args": {"amount": 5}}
        (self.root / name).write_text(json.dumps({**body, "runtime": runtime, **extra}))
        return self.root / name

    def decide(self, request: Path, artifact: str, runtime: str) -> tuple[int, dict[str, Any]]:
        result = self.run(
            "decide", "--request", request, "--artifact", self.root / artifact,
            "--runtime-key", self.key(runtime), "--json",
        )  # fmt: skip
        doc: dict[str, Any] = json.loads(result.out)
        return result.code, doc


def _world(root: Path) -> World:
    make_kit(root).close()  # the home, with the test policy
    world = World(root)
    for name in ("agent1", "agent2", "agent3"):
        assert cli("keygen", world.key(name)).code == 0
    world.ok(
        "issue", "--sub", "agent-1", "--runtime-key", world.pub("agent1"),
        "--action", "payments.*", "--resource", "acct:**", "--ttl", "3600",
        "-o", root / "root.jwt",
    )  # fmt: skip
    return world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return _world(tmp_path)


# -- the whole story --------------------------------------------------------------------


def test_delegate_inspect_decide_lineage_and_revoke_the_tree(world: World) -> None:
    root = jti(world.root / "root.jwt")
    child = jti(
        world.delegate(
            "child.jwt", "root.jwt", "agent1", "agent-2", "agent2",
            *TRANSFER, "--constraint", "amount.max=100",
        )
    )  # fmt: skip
    grand = jti(
        world.delegate(
            "grand.jwt", "child.jwt", "agent2", "agent-3", "agent3",
            *TRANSFER, "--constraint", "amount.max=50",
        )
    )  # fmt: skip

    # inspect: VERIFIED, with the chain root first
    lines = world.ok("inspect", world.root / "child.jwt").out.splitlines()
    assert lines[0] == (
        f"VERIFIED artifact: delegated from trusted authority '{AUTHORITY}', chain depth 1"
    )
    chain_at = lines.index("  chain (depth 1, root first):")
    assert lines[chain_at + 1 : chain_at + 3] == [
        f"    0  iss {AUTHORITY}  sub agent-1  jti {root}",
        f"    1  iss {world.kid('agent1')}  sub agent-2  jti {child}",
    ]
    doc = json.loads(world.ok("inspect", world.root / "grand.jwt", "--json").out)
    assert doc["verified"] is True
    assert doc["depth"] == 2
    assert doc["chain"] == [
        {"iss": AUTHORITY, "sub": "agent-1", "jti": root},
        {"iss": world.kid("agent1"), "sub": "agent-2", "jti": child},
        {"iss": world.kid("agent2"), "sub": "agent-3", "jti": grand},
    ]
    assert doc["claims"]["scope"] == [
        {
            "action": "payments.transfer",
            "resource": "acct:**",
            "constraints": {"amount": {"max": 50}},
        }
    ]

    # decide with the child's runtime key, then a grandchild execution naming it as parent
    code, first = world.decide(world.request("r1.json", "agent-2"), "child.jwt", "agent2")
    assert (code, first["outcome"], first["chain"]) == (0, "proceed", [root, child])
    r2 = world.request("r2.json", "agent-3", "acct:2", parent=first["receipt"])
    code, second = world.decide(r2, "grand.jwt", "agent3")
    assert (code, second["outcome"], second["chain"]) == (0, "proceed", [root, child, grand])
    d1, d2 = first["decision_id"], second["decision_id"]

    # lineage show: the same tree from either end, the asked decision marked
    tree = [
        f"- {d1}  proceed  log index 0  payments.transfer acct:1",
        f"    chain: {root} > {child}",
        f"  - {d2}  proceed  log index 1  payments.transfer acct:2",
        f"      chain: {root} > {child} > {grand}",
    ]
    shown = world.ok("lineage", "show", d1).out.splitlines()
    assert shown[0] == f"lineage of decision {d1} in the audit log of gw-test"
    assert shown[1:] == [tree[0] + "  <= this decision", *tree[1:]]
    assert world.ok("lineage", "show", d2).out.splitlines()[1:] == [
        *tree[:2],
        tree[2] + "  <= this decision",
        tree[3],
    ]
    nodes = json.loads(world.ok("lineage", "show", d2, "--json").out)["nodes"]
    assert [(n["decision_id"], n["depth"], n["parent"], n["index"]) for n in nodes] == [
        (d1, 0, None, 0),
        (d2, 1, d1, 1),
    ]
    assert nodes[1]["chain"] == [root, child, grand]
    assert nodes[1]["gateway"] == "gw-test"

    # a dry run revokes nothing and reports what revoking would reach
    cascade = {
        "artifacts": [root, child, grand],
        "decisions": [
            {"index": 0, "decision_id": d1, "outcome": "proceed"},
            {"index": 1, "decision_id": d2, "outcome": "proceed"},
        ],
    }
    dry = world.ok("revoke", "--jti", root, "--reason", "leaked", "--dry-run", "--json")
    assert json.loads(dry.out) == {
        "kind": "jti",
        "value": root,
        "dry_run": True,
        "revoked": False,
        "already_revoked": False,
        "cascade": cascade,
    }
    assert world.decide(world.request("r3.json", "agent-2"), "child.jwt", "agent2")[0] == 0

    # revoke the root: the report names both decisions (and the one made after the dry
    # run) and every artifact below the root; from now on the child is denied
    report = world.ok("revoke", "--jti", root, "--reason", "leaked", "--cascade-report")
    lines = report.out.splitlines()
    assert lines[:6] == [
        f"revoked jti {root}: every decision from now on denies it (artifact.revoked)",
        f"what the audit log of gw-test has seen descend from jti {root}:",
        "  artifacts (3, each chain root first):",
        f"    {root}",
        f"    {child}",
        f"    {grand}",
    ]
    assert lines[6] == "  decisions (3: log index, outcome, decision id):"
    assert lines[7] == f"         0  proceed      {d1}"
    assert lines[8] == f"         1  proceed      {d2}"
    assert lines[9].startswith("         2  proceed      ")
    code, denied = world.decide(world.request("r4.json", "agent-2"), "child.jwt", "agent2")
    assert (code, denied["outcome"]) == (1, "deny")
    assert [r["code"] for r in denied["reasons"]] == ["artifact.revoked"]

    again = json.loads(
        world.ok("revoke", "--jti", root, "--reason", "x", "--cascade-report", "--json").out
    )
    assert (again["revoked"], again["already_revoked"]) == (False, True)
    assert again["cascade"]["decisions"][-1] == {
        "index": 3,
        "decision_id": denied["decision_id"],
        "outcome": "deny",
    }
    # and nothing new can be delegated below the revoked root here
    refused = world.run(
        "delegate", "--parent", world.root / "child.jwt", "--key", world.key("agent2"),
        "--sub", "agent-3", "--runtime-key", world.pub("agent3"), *TRANSFER,
    ).usage()  # fmt: skip
    assert f"the parent artifact is revoked at gateway 'gw-test' (jti '{root}': leaked)" in refused


def test_revoking_a_key_or_subject_reports_only_what_lies_below_it(world: World) -> None:
    world.delegate("child.jwt", "root.jwt", "agent1", "agent-2", "agent2")
    world.delegate("grand.jwt", "child.jwt", "agent2", "agent-3", "agent3")
    root, child, grand = (jti(world.root / f) for f in ("root.jwt", "child.jwt", "grand.jwt"))
    ids = []
    for name, artifact, runtime, key in (
        ("r1.json", "root.jwt", "agent-1", "agent1"),
        ("r2.json", "child.jwt", "agent-2", "agent2"),
        ("r3.json", "grand.jwt", "agent-3", "agent3"),
    ):
        code, doc = world.decide(world.request(name, runtime), artifact, key)
        assert code == 0, doc
        ids.append(doc["decision_id"])

    def dry_run(*target: str) -> dict[str, Any]:
        result = world.ok("revoke", *target, "--reason", "lost", "--dry-run", "--json")
        cascade: dict[str, Any] = json.loads(result.out)["cascade"]
        return cascade

    # the key agent-2 holds is bound by the child (and signs the grandchild)
    by_key = dry_run("--kid", world.kid("agent2"))
    assert by_key["artifacts"] == [child, grand]
    assert [d["decision_id"] for d in by_key["decisions"]] == ids[1:]
    assert dry_run("--kid", world.kid("agent3"))["artifacts"] == [grand]
    # the authority's key reaches everything
    authority = read_private_key(world.home / "keys" / "authority.jwk").public.thumbprint()
    assert dry_run("--kid", authority)["artifacts"] == [root, child, grand]
    by_sub = dry_run("--sub", "agent-2")
    assert by_sub["artifacts"] == [child, grand]
    assert [d["decision_id"] for d in by_sub["decisions"]] == ids[1:]
    # the artifact file names its jti; text output of a revocation nothing involves
    assert dry_run("--artifact", str(world.root / "grand.jwt"))["artifacts"] == [grand]
    nothing = world.ok("revoke", "--jti", "unused", "--reason", "x", "--cascade-report")
    assert nothing.out.splitlines() == [
        "revoked jti unused: every decision from now on denies it (artifact.revoked)",
        "no decision in the audit log of gw-test involves jti unused",
    ]
    # none of the dry runs revoked anything
    code, doc = world.decide(world.request("r4.json", "agent-3"), "grand.jwt", "agent3")
    assert (code, doc["outcome"]) == (0, "proceed")


def test_delegating_without_a_home_and_inspecting_the_claimed_chain(world: World) -> None:
    nowhere = world.root / "nowhere"
    result = cli(
        "--home", nowhere, "delegate", "--parent", world.root / "root.jwt",
        "--key", world.key("agent1"), "--sub", "agent-2", "--runtime-key", world.pub("agent2"),
        "--scope", '[{"action": "payments.refund", "resource": "acct:7"}]', "--uses", "1",
    )  # fmt: skip
    assert (result.code, result.err) == (0, "")
    token = result.out.strip()
    claims = parse_unverified(token, max_size=1 << 16).claims
    assert claims["uses"] == 1
    assert claims["aud"] == "gw-test"
    assert (
        claims["exp"]
        == parse_unverified((world.root / "root.jwt").read_text().strip(), max_size=1 << 16).claims[
            "exp"
        ]
    )  # no --ttl: the parent's expiry
    verified = world.ok("inspect", token).out.splitlines()
    assert verified[0].startswith("VERIFIED artifact: delegated from trusted authority")
    claimed = cli("--home", nowhere, "inspect", token)
    assert claimed.code == 0
    lines = claimed.out.splitlines()
    assert lines[0] == f"UNVERIFIED: no gateway home at {nowhere} to verify against"
    assert "  chain (depth 1, root first):" in lines
    assert f"    1  iss {world.kid('agent1')}  sub agent-2  jti {jti(token)}" in lines
    doc = json.loads(cli("--home", nowhere, "inspect", token, "--json").out)
    assert (doc["verified"], doc["depth"], doc["chain_complete"]) == (False, 1, True)


def test_inspect_says_when_a_claimed_chain_cannot_be_read(world: World) -> None:
    key = read_private_key(world.key("agent1"))
    claims = {"iss": "someone", "sub": "agent-9", "jti": "j-1", "prf": ["not-a-token"]}
    token = encode({"typ": ARTIFACT_TYP, "jwk": key.public.to_jwk()}, claims, key)
    lines = world.ok("inspect", token).out.splitlines()
    assert lines[0].startswith("UNVERIFIED: artifact.malformed")
    chain_at = lines.index(
        "  chain (depth unknown: the link above the first shown could not be read):"
    )
    assert lines[chain_at + 1] == "    0  iss someone  sub agent-9  jti j-1"
    doc = json.loads(world.ok("inspect", token, "--json").out)
    assert (doc["depth"], doc["chain_complete"]) == (None, False)
    assert doc["chain"] == [{"iss": "someone", "sub": "agent-9", "jti": "j-1"}]


# -- refusals ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> World:
    """One world holding every parent a refusal needs; nothing below may change it."""
    world = _world(tmp_path_factory.mktemp("cli-lineage-refusals"))
    root = world.root
    issue = (
        "issue", "--sub", "agent-1", "--runtime-key", world.pub("agent1"),
        "--action", "payments.*", "--resource", "acct:**",
    )  # fmt: skip
    world.ok(*issue, "--uses", "2", "-o", root / "limited.jwt")
    world.ok(*issue, "--env", "region=eu-west-1", "--gov", "ticket=FIN-1", "-o", root / "gov.jwt")
    world.ok(*issue, "-o", root / "revoked.jwt")
    world.ok("revoke", "--artifact", root / "revoked.jwt", "--reason", "stolen laptop")
    world.delegate(
        "capped.jwt", "root.jwt", "agent1", "agent-2", "agent2",
        *TRANSFER, "--constraint", "amount.max=100",
    )  # fmt: skip
    authority = read_private_key(world.home / "keys" / "authority.jwk")
    runtime = read_public_key(world.pub("agent1"))
    now = int(time.time())
    common: dict[str, Any] = {
        "issuer": AUTHORITY,
        "subject": "agent-1",
        "audience": "gw-test",
        "runtime_key": runtime,
        "scope": [{"action": "payments.*", "resource": "acct:**"}],
    }
    expired = issue_artifact(key=authority, now=now - 7200, ttl=600, **common)
    forged = issue_artifact(key=PrivateKey.generate(), now=now, ttl=600, **common)
    (root / "expired.jwt").write_text(expired + "\n")
    claims = {
        "iss": AUTHORITY, "sub": "agent-1", "aud": "gw-test", "iat": now, "exp": now + 600,
        "jti": "bad-gov", "scope": common["scope"], "cnf": {"jkt": runtime.thumbprint()},
        "gov": "FIN-1",
    }  # fmt: skip
    header = {"typ": ARTIFACT_TYP, "kid": authority.public.thumbprint()}
    (root / "bad-gov.jwt").write_text(encode(header, claims, authority) + "\n")
    (root / "forged.jwt").write_text(forged + "\n")
    assert cli(
        "attest", "--key", world.home / "keys" / "attester.jwk", "--sub", "agent-1",
        "--runtime-key", world.pub("agent1"), "--env", "region=eu-west-1", "-o", root / "att.jwt",
    ).code == 0  # fmt: skip
    (root / "notes.txt").write_text("not a token\n")
    return world


@pytest.fixture
def in_bench(bench: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.chdir(bench.root)
    monkeypatch.delenv("EXECGATE_HOME", raising=False)
    before = sorted(bench.root.rglob("*"))
    size = log_size(bench.home)
    yield bench
    assert sorted(bench.root.rglob("*")) == before  # nothing written
    assert log_size(bench.home) == size  # nothing decided


def _delegate(parent: str, *extra: str, key: str = "agent1.jwk") -> tuple[str, ...]:
    return (
        "--home", "home", "delegate", "--parent", parent, "--key", key,
        "--sub", "agent-2", "--runtime-key", "agent2.pub.jwk", *extra,
    )  # fmt: skip


GRANT = ("--action", "payments.transfer", "--resource", "acct:1")
OUT = ("-o", "out.jwt")
NOT_JSON = "eyJhbGciOiJFZDI1NTE5In0.bm90IGpzb24.AAAA"  # header {"alg":"Ed25519"}, "not json"

REFUSALS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("key is not the holder", _delegate("root.jwt", *GRANT, *OUT, key="agent2.jwk"),
     ("--key agent2.jwk is not the key the parent artifact binds", "cnf.jkt",
      "private key of the runtime the parent was issued to")),
    ("holder key is the public one", _delegate("root.jwt", *GRANT, *OUT, key="agent1.pub.jwk"),
     ("agent1.pub.jwk", "holds a public key")),
    ("wider action and resource", _delegate("root.jwt", "--action", "payments.*",
     "--resource", "**", *OUT), ("cannot delegate: the child would widen its parent",
     "payments.* on **", "not covered", "may only narrow")),
    ("a grant the parent lacks", _delegate("root.jwt", "--scope", json.dumps([
     {"action": "payments.transfer", "resource": "acct:1"},
     {"action": "shell.exec", "resource": "host:db"}]), *OUT), ("shell.exec on host:db",)),
    ("looser constraint", ("--home", "home", "delegate", "--parent", "capped.jwt", "--key",
     "agent2.jwk", "--sub", "agent-3", "--runtime-key", "agent3.pub.jwk", *GRANT,
     "--constraint", "amount.max=500", *OUT), ("widen", "payments.transfer on acct:1")),
    ("ttl beyond the parent", _delegate("root.jwt", *GRANT, "--ttl", "99999", *OUT),
     ("--ttl 99999 would outlive the parent artifact", "leave --ttl out")),
    ("more uses than the parent", _delegate("limited.jwt", *GRANT, "--uses", "5", *OUT),
     ("widen", "uses 5 exceeds the parent's 2")),
    ("empty audience", _delegate("root.jwt", *GRANT, "--aud", "", *OUT),
     ("--aud must not be empty",)),
    ("another audience", _delegate("root.jwt", *GRANT, "--aud", "gw-elsewhere", *OUT),
     ("audience ['gw-elsewhere'] is not in the parent's audience",)),
    ("an environment the parent excludes", _delegate("gov.jwt", *GRANT, "--env",
     "region=eu-west-1|us-east-1", *OUT), ("env condition 'region' accepts ['us-east-1']",)),
    ("governance changed", _delegate("gov.jwt", *GRANT, "--gov", "ticket=FIN-2", *OUT),
     ("governance 'ticket'",)),
    ("empty subject", ("--home", "home", "delegate", "--parent", "root.jwt", "--key",
     "agent1.jwk", "--sub", "", "--runtime-key", "agent2.pub.jwk", *GRANT, *OUT),
     ("claim 'sub' must be a non-empty string",)),
    ("malformed parent", _delegate(NOT_JSON, *GRANT, *OUT),
     ("--parent is not a well-formed artifact",)),
    ("parent with a malformed claim, checked offline", ("--home", "nowhere",
     *_delegate("bad-gov.jwt", *GRANT, *OUT)[2:]),
     ("the parent is not a well-formed artifact: it has a gov that is not an object",)),
    ("parent is not a token", _delegate("notes.txt", *GRANT, *OUT),
     ("--parent file notes.txt does not hold a compact JWS token",)),
    ("parent is an attestation", _delegate("att.jwt", *GRANT, *OUT),
     ("--parent is a 'execgate-env+jwt' token, not an artifact",)),
    ("parent expired", _delegate("expired.jwt", *GRANT, *OUT),
     ("the parent artifact expired at", "ask its issuer")),
    ("parent from an untrusted key", _delegate("forged.jwt", *GRANT, *OUT),
     ("does not verify at gateway 'gw-test'", "artifact.untrusted_issuer")),
    ("parent revoked", _delegate("revoked.jwt", *GRANT, *OUT),
     ("revoked at gateway 'gw-test'", "stolen laptop", "would be denied too")),
    ("no grant", _delegate("root.jwt", *OUT), ("--action and --resource",)),
    ("missing --parent", ("--home", "home", "delegate", "--key", "agent1.jwk", "--sub", "a",
     "--runtime-key", "agent2.pub.jwk", *GRANT), ("required: --parent",)),
    ("missing --key", ("--home", "home", "delegate", "--parent", "root.jwt", "--sub", "a",
     "--runtime-key", "agent2.pub.jwk", *GRANT), ("required: --key",)),
    ("output over a private key", _delegate("root.jwt", *GRANT, "-o", "agent3.jwk"),
     ("agent3.jwk holds a private key", "refusing")),
    ("lineage of an unknown decision", ("--home", "home", "lineage", "show", "no-such-id"),
     ("no decision 'no-such-id' in the audit log of gw-test", "execgate audit tail")),
    ("lineage without a home", ("--home", "nowhere", "lineage", "show", "x"),
     ("no gateway home at nowhere",)),
    ("lineage without an id", ("--home", "home", "lineage", "show"), ("DECISION_ID",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "fragments"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_a_refusal_is_one_line_exit_2_and_writes_nothing(
    in_bench: World, argv: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    message = cli(*argv).usage()
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_refusal_catalogue_has_unique_names() -> None:
    assert len({c[0] for c in REFUSALS}) == len(REFUSALS)


def test_a_chain_that_outgrows_the_size_limit_is_refused(world: World) -> None:
    parent, depth = "root.jwt", 0
    while True:
        result = world.run(
            "delegate", "--parent", world.root / parent, "--key", world.key("agent1"),
            "--sub", f"agent-{depth + 2}", "--runtime-key", world.pub("agent1"), *TRANSFER,
            "-o", world.root / f"link{depth + 1}.jwt",
        )  # fmt: skip
        if result.code != 0:
            break
        parent, depth = f"link{depth + 1}.jwt", depth + 1
    message = result.usage()
    assert "the limit is 16384" in message
    assert "the chain is too long to extend" in message
    assert 3 <= depth < 8  # the size limit comes before the depth limit
    assert not (world.root / f"link{depth + 1}.jwt").exists()
    doc = json.loads(world.ok("inspect", world.root / parent, "--json").out)
    assert (doc["verified"], doc["depth"]) == (True, depth)


def test_the_home_depth_limit_is_checked_before_delegating(world: World) -> None:
    config = world.home / "execgate.toml"
    config.write_text(config.read_text().replace("max_depth = 8", "max_depth = 1"))
    world.delegate("child.jwt", "root.jwt", "agent1", "agent-2", "agent2")
    message = world.run(
        "delegate", "--parent", world.root / "child.jwt", "--key", world.key("agent2"),
        "--sub", "agent-3", "--runtime-key", world.pub("agent3"), *TRANSFER,
    ).usage()  # fmt: skip
    assert "the parent is already at chain depth 1" in message
    assert "at most 1 deep ([limits] max_depth)" in message


# -- the log: a parent elsewhere, a damaged log -------------------------------------------


def _mesh_entry(node_id: str, home: Path) -> str:
    jwk = read_public_key(home / "keys" / "node.pub.jwk").to_jwk()
    fields = ", ".join(f'{k} = "{v}"' for k, v in jwk.items())
    return f'\n[[mesh_node]]\nid = "{node_id}"\nkeys = [{{{fields}}}]\n'


def test_a_parent_decided_on_another_gateway_is_a_stub(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for home, gid in ((a, "gw-a"), (b, "gw-b")):
        assert cli("init", home, "--id", gid).code == 0
        (home / "policy.yaml").write_text(POLICY)
    shutil.copy(a / "trust.toml", b / "trust.toml")  # one authority for both
    with (b / "trust.toml").open("a") as fh:
        fh.write(_mesh_entry("gw-a", a))  # B accepts A's receipts
    assert cli("keygen", tmp_path / "agent.jwk").code == 0
    token = issue_artifact(
        key=read_private_key(a / "keys" / "authority.jwk"),
        issuer=AUTHORITY,
        subject="agent-1",
        audience=["gw-a", "gw-b"],
        runtime_key=read_public_key(tmp_path / "agent.pub.jwk"),
        scope=[{"action": "payments.*", "resource": "acct:**"}],
        now=int(time.time()),
        ttl=600,
    )
    (tmp_path / "art.jwt").write_text(token)
    world = World(tmp_path)

    def decide(home: Path, request: Path) -> dict[str, Any]:
        result = cli(
            "--home", home, "decide", "--request", request, "--artifact", tmp_path / "art.jwt",
            "--runtime-key", tmp_path / "agent.jwk", "--json",
        )  # fmt: skip
        assert result.code == 0, result
        doc: dict[str, Any] = json.loads(result.out)
        return doc

    on_a = decide(a, world.request("r1.json", "agent-1"))
    on_b = decide(b, world.request("r2.json", "agent-1", "acct:2", parent=on_a["receipt"]))
    sibling = decide(b, world.request("r3.json", "agent-1", "acct:3", parent=on_a["receipt"]))
    d_a, d_b = on_a["decision_id"], on_b["decision_id"]
    result = cli("--home", b, "lineage", "show", d_b)
    assert result.code == 0, result
    assert result.out.splitlines() == [
        f"lineage of decision {d_b} in the audit log of gw-b",
        f"- {d_a}  decided on gateway gw-a (not in this log)",
        f"  - {d_b}  proceed  log index 0  payments.transfer acct:2  <= this decision",
        f"      chain: {jti(token)}",
        f"  - {sibling['decision_id']}  proceed  log index 1  payments.transfer acct:3",
        f"      chain: {jti(token)}",
    ]
    nodes = json.loads(cli("--home", b, "lineage", "show", d_b, "--json").out)["nodes"]
    assert nodes[0] == {
        "decision_id": d_a,
        "index": None,
        "gateway": "gw-a",
        "outcome": None,
        "action": None,
        "resource": None,
        "chain": [],
        "depth": 0,
        "parent": None,
    }
    assert [(n["decision_id"], n["parent"], n["depth"]) for n in nodes[1:]] == [
        (d_b, d_a, 1),
        (sibling["decision_id"], d_a, 1),
    ]


class _MemoryLog:
    """Just enough of a store for the log queries: records held in memory."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self._entries = [LogEntry(i, json.dumps(r).encode()) for i, r in enumerate(records)]
        self._by_id = {r["decision_id"]: e for r, e in zip(records, self._entries, strict=True)}

    def size(self) -> int:
        return len(self._entries)

    def entries(self, start: int, end: int) -> list[LogEntry]:
        return self._entries[start:end]

    def find(self, decision_id: str, kind: str) -> LogEntry | None:
        return self._by_id.get(decision_id) if kind == "decision" else None


def test_a_chain_of_executions_deeper_than_the_python_stack() -> None:
    """Each step of a long workflow names the one before: the tree is as deep as the
    workflow is long, and building, walking and flattening it never recurse."""
    depth = 3 * sys.getrecursionlimit()
    log = _MemoryLog(
        [
            {
                "kind": "decision",
                "decision_id": f"d{i}",
                "outcome": "proceed",
                "gateway": "gw-test",
                "parent_decision": f"d{i - 1}" if i else None,
                "request": {"action": "step", "resource": f"r:{i}"},
                "chain": ["root"],
            }
            for i in range(depth)
        ]
    )
    tree = lineage_tree(cast("Store", log), f"d{depth // 2}")
    assert tree is not None
    walked = list(tree.walk())
    assert [(d, n.decision_id) for d, n in walked[:2]] == [(0, "d0"), (1, "d1")]
    assert walked[-1][0] == depth - 1
    doc = tree.to_json()
    for _ in range(depth - 1):
        [doc] = doc["children"]
    assert (doc["decision_id"], doc["children"]) == (f"d{depth - 1}", [])


@pytest.mark.parametrize(
    "record",
    [{"kind": "decision", "parent_decision": "x"}, {"kind": "decision", "decision_id": 7}],
)
def test_a_decision_record_without_an_id_is_a_damaged_log_not_a_traceback(
    world: World, record: dict[str, object]
) -> None:
    code, doc = world.decide(world.request("r1.json", "agent-1"), "root.jwt", "agent1")
    assert code == 0
    conn = sqlite3.connect(world.home / "state.db", isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")  # as an intruder would
        conn.execute("UPDATE audit_log SET entry = ? WHERE idx = 0", (json.dumps(record).encode(),))
    finally:
        conn.close()
    damaged = (
        "the audit log of gw-test is damaged: log entry 0 is a decision record without a"
        " decision id"
    )
    assert damaged in world.run("lineage", "show", doc["decision_id"]).usage()
    root = jti(world.root / "root.jwt")
    assert damaged in world.run("revoke", "--jti", root, "--reason", "x", "--dry-run").usage()


def test_a_damaged_log_is_one_line_and_revokes_nothing(world: World) -> None:
    code, doc = world.decide(world.request("r1.json", "agent-1"), "root.jwt", "agent1")
    assert code == 0
    conn = sqlite3.connect(world.home / "state.db", isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")  # as an intruder would
        conn.execute("UPDATE audit_log SET entry = ? WHERE idx = 0", (b"\x00 not json",))
    finally:
        conn.close()
    damaged = "the audit log of gw-test is damaged: log entry 0 is not a JSON record"
    assert damaged in world.run("lineage", "show", doc["decision_id"]).usage()
    root = jti(world.root / "root.jwt")
    message = world.run("revoke", "--jti", root, "--reason", "x", "--cascade-report").usage()
    assert damaged in message
    assert "nothing was revoked; revoke without --cascade-report" in message
    store = SQLiteStore(world.home / "state.db")
    try:
        assert list(store.revocations()) == []
    finally:
        store.close()
    # without the report the revocation goes through
    assert "revoked jti" in world.ok("revoke", "--jti", root, "--reason", "x").out
