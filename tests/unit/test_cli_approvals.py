"""``execgate approvals`` end to end: a real home, real keys, real pauses and reviews.

Every test drives ``execgate.cli.main`` as a shell would. The story: a large transfer
pauses (exit 3) and opens an approval; the sample approvers alice and bob (both in
``finance``, which the sample policy needs 2 of) review it with their own key files; the
runtime re-submits the same request and it proceeds (exit 0), once. A review the
gateway refuses exits 1; a mistake in the command or its setup exits 2.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from execgate.cli import EXIT_USAGE, main
from execgate.cli._common import json_text
from execgate.cli._records import cell
from execgate.cli.approvals import EXIT_REFUSED
from execgate.home import load_config
from execgate.keyfile import read_private_key, read_public_key
from execgate.trust import TrustStore

GATEWAY_ID = "gw-appr"
ALICE = "home/keys/approver-alice.jwk"
BOB = "home/keys/approver-bob.jwk"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass(frozen=True)
class World:
    """A directory with a gateway home ``home``, a runtime key and an artifact."""

    root: Path
    capsys: pytest.CaptureFixture[str]
    runs: list[Run]

    @property
    def home(self) -> Path:
        return self.root / "home"

    def run(self, *argv: str) -> Run:
        code = main(["--home", "home", *argv])
        captured = self.capsys.readouterr()
        result = Run(code, captured.out, captured.err)
        self.runs.append(result)
        return result

    def ok(self, *argv: str) -> Run:
        result = self.run(*argv)
        assert result.code == 0, result
        return result

    def refused(self, code: int, *argv: str) -> str:
        """The one error line of a command that had to fail with ``code``."""
        result = self.run(*argv)
        assert result.code == code, result
        assert result.out == ""
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("execgate: error: ")
        return lines[0]

    def artifact(self, name: str, *att: str) -> str:
        extra = [a for item in att for a in ("--att", item)]
        self.ok(
            "issue", "--sub", "agent-1", "--runtime-key", "runtime.pub.jwk",
            "--action", "payments.*", "--resource", "acct:**", "-o", name, *extra,
        )  # fmt: skip
        return name

    def decide(
        self, artifact: str, amount: int = 5000, resource: str = "acct:1", **args: Any
    ) -> Run:
        body = {
            "action": "payments.transfer",
            "resource": resource,
            "args": {"amount": amount, **args},
            "runtime": "agent-1",
        }
        (self.root / "request.json").write_text(json.dumps(body))
        return self.run(
            "decide", "--request", "request.json", "--artifact", artifact,
            "--runtime-key", "runtime.jwk", "--json",
        )  # fmt: skip

    def pause(self, artifact: str, **kw: Any) -> str:
        """Decide a large transfer: it must pause; return the approval id."""
        result = self.decide(artifact, **kw)
        assert result.code == 3, result
        doc = result.json()
        assert doc["outcome"] == "pause"
        assert [r["code"] for r in doc["reasons"]] == ["approval.required"]
        approval_id: str = doc["approval_id"]
        assert approval_id == doc["decision_id"]
        return approval_id


@pytest.fixture
def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[World]:
    monkeypatch.delenv("EXECGATE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    w = World(tmp_path, capsys, [])
    assert main(["init", "home", "--id", GATEWAY_ID]) == 0
    assert main(["keygen", "runtime.jwk"]) == 0
    w.runs.append(Run(0, *capsys.readouterr()))
    yield w
    # Whatever a test ran, no private key material ever reached stdout or stderr.
    secrets = [doc["d"] for p in tmp_path.rglob("*.jwk") if "d" in (doc := _jwk(p))]
    assert len(secrets) >= 6
    for result in w.runs:
        for secret in secrets:
            assert secret not in result.out
            assert secret not in result.err


def _jwk(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return {}  # the broken key files some tests write
    return doc if isinstance(doc, dict) else {}


# -- init writes approvers ----------------------------------------------------------------


def test_init_writes_two_sample_approvers_in_finance(world: World) -> None:
    trust = TrustStore.load(load_config(world.home).trust)
    assert {a.id: a.groups for a in trust.approvers.values()} == {
        "alice": ("finance",),
        "bob": ("finance",),
    }
    for name in ("alice", "bob"):
        private = world.home / "keys" / f"approver-{name}.jwk"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        key = read_private_key(private)
        assert read_public_key(world.home / "keys" / f"approver-{name}.pub.jwk") == key.public
        approver = trust.approver_for_kid(key.public.thumbprint())
        assert approver is not None
        assert approver.id == name
        assert f"home/keys/approver-{name}.jwk" in world.runs[0].out
    # approvers are no authority: their keys cannot issue artifacts
    assert not set(trust.approver_keys) & set(trust.authority_keys)


# -- the whole story ----------------------------------------------------------------------


def test_pause_two_approvals_then_the_request_proceeds_once(world: World) -> None:
    artifact = world.artifact("art.jwt", "requested_by=carol")
    approval = world.pause(artifact)

    listed = world.ok("approvals", "list")
    [line] = listed.out.splitlines()
    assert line.startswith(f"{approval}  pending   finance 0/2  expires ")
    assert line.endswith("  large-transfers-need-approval  payments.transfer acct:1")
    [doc] = world.ok("approvals", "list", "--json").json()
    assert doc["approval_id"] == approval
    assert (doc["state"], doc["tally"], doc["quorum_met"]) == ("pending", {"finance": 0}, False)
    assert (doc["groups"], doc["quorum"], doc["rule"]) == (
        ["finance"],
        2,
        "large-transfers-need-approval",
    )
    assert doc["request"]["args"] == {"amount": 5000}
    assert doc["expires_at"] > doc["created_at"]

    shown = world.ok("approvals", "show", approval).out
    assert shown.splitlines()[0] == f"approval {approval}: pending"
    assert "  request       payments.transfer acct:1" in shown
    assert '  arguments     {"amount": 5000}' in shown
    assert "carol" in shown  # the requester may not review it
    assert "reviews: none yet" in shown

    # alice approves: one of two
    first = world.ok("approvals", "approve", approval, "--key", ALICE, "--comment", "checked")
    assert first.out.splitlines()[0] == (
        "approved by alice: finance 1/2; waiting for more approvals (2 from each of: finance)"
    )
    # the runtime re-submits too early: still paused, on the same approval
    early = world.decide(artifact)
    assert early.code == 3
    assert early.json()["approval_id"] == approval
    assert "finance 1/2" in early.json()["reasons"][0]["detail"]
    assert len(world.ok("approvals", "list", "--json").json()) == 1

    # bob approves: quorum met
    second = world.ok("approvals", "approve", approval, "--key", BOB)
    assert second.out.splitlines()[0] == (
        "approved by bob: finance 2/2; the runtime may now re-submit the request (it proceeds once)"
    )
    assert "logged at index" in second.out
    doc = world.ok("approvals", "show", approval, "--json").json()
    assert (doc["state"], doc["quorum_met"], doc["tally"]) == ("approved", True, {"finance": 2})
    assert [(r["approver"], r["verdict"], r["comment"]) for r in doc["reviews"]] == [
        ("alice", "approve", "checked"),
        ("bob", "approve", None),
    ]
    assert all(r["token"].count(".") == 2 for r in doc["reviews"])

    # the re-submitted request proceeds, once
    resumed = world.decide(artifact)
    assert resumed.code == 0, resumed
    assert resumed.json()["outcome"] == "proceed"
    assert resumed.json()["approval_id"] == approval
    assert world.ok("approvals", "show", approval, "--json").json()["state"] == "consumed"
    again = world.pause(artifact)
    assert again != approval

    # list shows open approvals; --all every one
    assert [d["approval_id"] for d in world.ok("approvals", "list", "--json").json()] == [again]
    every = world.ok("approvals", "list", "--all", "--json").json()
    assert {d["approval_id"]: d["state"] for d in every} == {
        approval: "consumed",
        again: "pending",
    }
    # the reviews are audit records
    tail = world.ok("audit", "tail", "-n", "20").out
    assert tail.count("  review  ") == 2


def test_the_requester_cannot_approve_their_own_request(world: World) -> None:
    artifact = world.artifact("mine.jwt", "requested_by=alice")
    approval = world.pause(artifact)
    line = world.refused(EXIT_REFUSED, "approvals", "approve", approval, "--key", ALICE)
    assert line == (
        "execgate: error: review refused: alice is a principal of this request (runtime,"
        " delegator, requester or beneficiary) and cannot review it"
    )
    doc = world.ok("approvals", "show", approval, "--json").json()
    assert doc["reviews"] == []
    assert "alice" in doc["excluded"]
    # bob alone is not enough: the request stays paused
    world.ok("approvals", "approve", approval, "--key", BOB)
    assert world.decide(artifact).code == 3


def test_a_deny_is_final(world: World) -> None:
    artifact = world.artifact("art.jwt")
    approval = world.pause(artifact)
    world.ok("approvals", "approve", approval, "--key", ALICE)
    denied = world.ok(
        "approvals", "deny", approval, "--key", BOB, "--reason", "not before the audit"
    )
    assert denied.out.splitlines()[0] == (
        f"denied by bob: approval {approval} is closed; re-submitting the request is denied"
        " (approval.denied)"
    )
    result = world.decide(artifact)
    assert result.code == 1
    assert result.json()["outcome"] == "deny"
    assert [r["code"] for r in result.json()["reasons"]] == ["approval.denied"]
    line = world.refused(EXIT_REFUSED, "approvals", "approve", approval, "--key", ALICE)
    assert f"approval {approval} is denied; it takes no more reviews" in line
    doc = world.ok("approvals", "show", approval, "--json").json()
    assert doc["state"] == "denied"
    assert [(r["approver"], r["verdict"], r["comment"]) for r in doc["reviews"]] == [
        ("alice", "approve", None),
        ("bob", "deny", "not before the audit"),
    ]
    assert world.ok("approvals", "show", approval).out.splitlines()[-1] == (
        "denied: re-submitting the request is denied (approval.denied)"
    )
    empty = world.ok("approvals", "list")
    assert empty.out == ""
    assert empty.err == f"no open approvals at gateway {GATEWAY_ID} (--all lists closed ones too)\n"
    assert f"{approval}  denied  " in world.ok("approvals", "list", "--all").out


def test_an_approver_reviews_once(world: World) -> None:
    approval = world.pause(world.artifact("art.jwt"))
    world.ok("approvals", "approve", approval, "--key", ALICE)
    line = world.refused(EXIT_REFUSED, "approvals", "approve", approval, "--key", ALICE)
    assert line.endswith(f"alice has already reviewed approval {approval}")
    line = world.refused(
        EXIT_REFUSED, "approvals", "deny", approval, "--key", ALICE, "--reason", "x"
    )
    assert "already reviewed" in line


def test_an_approver_outside_the_required_groups_is_refused(world: World) -> None:
    world.ok("keygen", "carol.jwk")
    carol = json.loads((world.root / "carol.pub.jwk").read_text())
    with (world.home / "trust.toml").open("a") as fh:
        fh.write(
            f'\n[[approver]]\nid = "carol"\ngroups = ["security"]\n'
            f'keys = [{{kty = "OKP", crv = "Ed25519", x = "{carol["x"]}"}}]\n'
        )
    approval = world.pause(world.artifact("art.jwt"))
    line = world.refused(EXIT_REFUSED, "approvals", "approve", approval, "--key", "carol.jwk")
    assert "carol is in none of the groups this approval needs: ['finance']" in line


def test_an_expired_approval_takes_no_reviews(world: World) -> None:
    # the approval lasts no longer than the artifact it was opened under (3 s: one of 1 s
    # had expired before its decision on a busy machine now and then)
    world.ok(
        "issue", "--sub", "agent-1", "--runtime-key", "runtime.pub.jwk", "--action",
        "payments.*", "--resource", "acct:**", "-o", "brief.jwt", "--ttl", "3",
    )  # fmt: skip
    approval = world.pause("brief.jwt")
    expires = world.ok("approvals", "show", approval, "--json").json()["expires_at"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    line = world.refused(EXIT_REFUSED, "approvals", "approve", approval, "--key", ALICE)
    assert f"approval {approval} is expired; it takes no more reviews" in line
    assert world.ok("approvals", "list").out == ""
    assert f"{approval}  expired  " in world.ok("approvals", "list", "--all").out


# -- mistakes: exit 2, nothing reviewed ------------------------------------------------------


def test_an_unknown_approval_id(world: World) -> None:
    for argv in (
        ("approvals", "show", "no-such-approval"),
        ("approvals", "approve", "no-such-approval", "--key", ALICE),
        ("approvals", "deny", "no-such-approval", "--key", ALICE, "--reason", "x"),
    ):
        line = world.refused(EXIT_USAGE, *argv)
        assert line == (
            f"execgate: error: no approval 'no-such-approval' at gateway {GATEWAY_ID};"
            " 'execgate approvals list --all' lists them"
        )


def test_a_key_that_is_no_approvers(world: World) -> None:
    approval = world.pause(world.artifact("art.jwt"))
    world.ok("keygen", "mallory.jwk")
    mallory = read_private_key(world.root / "mallory.jwk").public.thumbprint()
    line = world.refused(EXIT_USAGE, "approvals", "approve", approval, "--key", "mallory.jwk")
    assert f"the key mallory.jwk (key id {mallory}) is no approver's in the trust store" in line
    assert "home/trust.toml" in line
    assert "mallory.pub.jwk" in line
    # a key the trust store lists for another role is no approver's either
    line = world.refused(
        EXIT_USAGE, "approvals", "approve", approval, "--key", "home/keys/authority.jwk"
    )
    assert "is no approver's in the trust store" in line
    assert world.ok("approvals", "show", approval, "--json").json()["reviews"] == []


def test_a_malformed_or_wrong_key_file(world: World) -> None:
    approval = world.pause(world.artifact("art.jwt"))
    (world.root / "garbage.jwk").write_text("{not json")
    (world.root / "garbage.jwk").chmod(0o600)
    line = world.refused(EXIT_USAGE, "approvals", "approve", approval, "--key", "garbage.jwk")
    assert "private key file garbage.jwk is not a JWK key file (not valid JSON)" in line
    public = "home/keys/approver-alice.pub.jwk"
    line = world.refused(EXIT_USAGE, "approvals", "approve", approval, "--key", public)
    assert "holds a public key, but a private key is needed here" in line
    (world.home / "keys" / "approver-bob.jwk").chmod(0o644)
    line = world.refused(EXIT_USAGE, "approvals", "deny", approval, "--key", BOB, "--reason", "x")
    assert "is readable by others (mode 0644); run: chmod 600" in line
    line = world.refused(EXIT_USAGE, "approvals", "approve", approval, "--key", "missing.jwk")
    assert "missing.jwk does not exist" in line
    assert world.ok("approvals", "show", approval, "--json").json()["reviews"] == []


def test_a_deny_says_why_and_comments_are_bounded(world: World) -> None:
    approval = world.pause(world.artifact("art.jwt"))
    line = world.refused(EXIT_USAGE, "approvals", "deny", approval, "--key", BOB, "--reason", " ")
    assert "--reason must say why" in line
    line = world.refused(EXIT_USAGE, "approvals", "deny", approval, "--key", BOB)
    assert "--reason" in line
    line = world.refused(
        EXIT_USAGE, "approvals", "approve", approval, "--key", BOB, "--comment", "x" * 1025
    )
    assert "--comment is 1025 characters; at most 1024 fit" in line
    assert world.ok("approvals", "show", approval, "--json").json()["reviews"] == []


def test_refused_and_usage_exit_codes_differ(world: World) -> None:
    assert (EXIT_REFUSED, EXIT_USAGE) == (1, 2)
    help_text = world.ok("approvals", "approve", "--help").out
    assert "--key" in help_text
    assert "exit 1 if it is refused" in help_text
    assert world.run("approvals").code == EXIT_USAGE


# -- output a terminal can trust -------------------------------------------------------------


def test_request_fields_are_printed_with_control_characters_escaped(world: World) -> None:
    """An action or resource cannot hold one (refused before it is decided); arguments
    can, and are printed escaped."""
    refused = world.decide(world.artifact("art.jwt"), resource="acct:1\x1b[2J")
    assert refused.code == 2
    marks = "\u202e\u061c\U000e0041"  # direction marks; a tag character, invisible
    approval = world.pause(world.artifact("art.jwt"), memo="m\x1b[2J", note=marks)
    shown = world.ok("approvals", "show", approval).out
    assert "\x1b" not in shown
    assert not set(marks) & set(shown)  # it would show the approver the line reversed
    assert '"memo": "m\\u001b[2J"' in shown
    assert '"note": "\\u202e\\u061c\\U000e0041"' in shown
    printed = world.ok("approvals", "show", approval, "--json").out
    assert not set(marks) & set(printed)
    doc = json.loads(printed)  # escaped as JSON: read back the same
    assert doc["request"]["args"]["memo"] == "m\x1b[2J"
    assert doc["request"]["args"]["note"] == marks


def test_show_shortens_long_arguments_and_decide_names_the_approval(world: World) -> None:
    artifact = world.artifact("art.jwt")
    text = world.decide(artifact, memo="m" * 500)
    assert text.code == 3
    approval = text.json()["approval_id"]
    shown = world.ok("approvals", "show", approval).out
    [line] = [x for x in shown.splitlines() if x.startswith("  arguments")]
    assert line.endswith("... (show --json prints them all)")
    assert len(line) < 300
    assert world.ok("approvals", "show", approval, "--json").json()["request"]["args"]["memo"] == (
        "m" * 500
    )
    body = json.loads((world.root / "request.json").read_text())
    (world.root / "other.json").write_text(json.dumps({**body, "resource": "acct:9"}))
    printed = world.run(
        "decide", "--request", "other.json", "--artifact", artifact, "--runtime-key", "runtime.jwk"
    )
    assert printed.code == 3
    last = printed.out.splitlines()[-1]
    assert last.startswith("  approval ")
    assert last.endswith(f": execgate approvals show {last.split()[1][:-1]}")


def test_json_review_output(world: World) -> None:
    approval = world.pause(world.artifact("art.jwt"))
    doc = world.ok("approvals", "approve", approval, "--key", ALICE, "--json").json()
    assert doc["approval_id"] == approval
    assert (doc["approver"], doc["verdict"], doc["state"]) == ("alice", "approve", "pending")
    assert (doc["tally"], doc["quorum"], doc["quorum_met"]) == ({"finance": 1}, 2, False)
    assert isinstance(doc["log_index"], int)
    doc = world.ok("approvals", "deny", approval, "--key", BOB, "--reason", "no", "--json").json()
    assert (doc["verdict"], doc["state"], doc["quorum_met"]) == ("deny", "denied", False)


def test_what_shows_as_nothing_is_escaped_too() -> None:
    """Printable to Python, yet invisible: the variation selectors past U+E0100 carry a
    byte each (here "rm"), hidden in what an approver reads."""
    hidden = "\u034f\u115f\u3164\ufe0f" + "".join(chr(0xE0100 + b) for b in b"rm")
    assert cell(f"ls{hidden}") == "ls\\u034f\\u115f\\u3164\\ufe0f\\U000e0172\\U000e016d"
    printed = json_text({"a": f"ls{hidden}"})
    assert not set(hidden) & set(printed)
    assert json.loads(printed) == {"a": f"ls{hidden}"}
