"""Fail closed: when the gateway cannot decide, nothing executes, and it says why.

Stores here are real SQLite stores with one method made to fail, or real files that are
corrupt or cannot be created; policy, clock and receipt signing are made to raise.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import NOW, Kit, make_kit

from execgate.errors import AuditError, ConfigError, StoreError, StoreUnavailable
from execgate.home import init_home
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.model import Decision, Outcome
from execgate.pipeline import Gateway
from execgate.policy import Policy, PolicyResult
from execgate.receipts import sign_receipt
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


class FlakyStore(SQLiteStore):
    """A real SQLite store whose named operations raise, as a failing database would."""

    def __init__(
        self, path: Path, *, fail: Iterable[str] = (), commit_error: Exception | None = None
    ):
        super().__init__(path)
        self.fail = set(fail)
        self.commit_error = commit_error
        self.commit_failures = 1_000_000  # how many commits raise commit_error

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise StoreError(f"{name}: connection refused")

    def uses_consumed(self, jti: str) -> int:
        self._check("uses_consumed")
        return super().uses_consumed(jti)

    def commit(self, job: WriteJob) -> int:
        if self.commit_error is not None and self.commit_failures > 0:
            self.commit_failures -= 1
            raise self.commit_error
        return super().commit(job)


def codes(decision: Decision) -> list[str]:
    return [r.code for r in decision.reasons]


def records(gw: Gateway) -> list[dict[str, Any]]:
    return [json.loads(e.entry) for e in gw.store.entries(0, gw.store.size())]


def assert_failed_closed(d: Decision, *expected: str) -> None:
    assert d.outcome is Outcome.FAIL_CLOSED, d
    assert not d.executes
    assert codes(d) == list(expected), d.reasons


# --- the store fails ------------------------------------------------------------------


def test_store_read_failure_fails_closed(kit: Kit) -> None:
    """The read of a limited artifact's uses (revocation and replay are checked in the
    commit, below) fails: fail_closed, and that decision is still logged."""
    store = FlakyStore(kit.config.store, fail=["uses_consumed"])
    gw = kit.gateway(store)
    d = gw.decide(kit.submit(uses=5))
    assert_failed_closed(d, "store.unavailable")
    assert "connection refused" in d.reasons[0].detail
    [record] = records(gw)
    assert record["outcome"] == "fail_closed"
    assert record["reasons"][0]["code"] == "store.unavailable"
    assert d.log_index == 0
    assert d.receipt is not None  # logged, so it is receipted: a signed fail_closed


def test_store_read_failure_does_not_consume_a_use(kit: Kit) -> None:
    store = FlakyStore(kit.config.store, fail=["uses_consumed"])
    gw = kit.gateway(store)
    token = kit.artifact(uses=1)
    assert_failed_closed(
        gw.decide(kit.submission(kit.request(amount=1), token)), "store.unavailable"
    )
    store.fail.clear()
    assert gw.decide(kit.submission(kit.request(amount=1), token)).outcome is Outcome.PROCEED


def test_audit_append_failure_fails_closed_without_receipt_or_index(kit: Kit) -> None:
    store = FlakyStore(kit.config.store, commit_error=AuditError("disk full"))
    gw = kit.gateway(store)
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "audit.unavailable")
    assert "disk full" in d.reasons[0].detail
    assert d.log_index is None
    assert d.receipt is None
    assert gw.store.size() == 0


def test_audit_failure_keeps_the_denial_reason(kit: Kit) -> None:
    store = FlakyStore(kit.config.store, commit_error=AuditError("disk full"))
    gw = kit.gateway(store)
    d = gw.decide(kit.submit(kit.request("payments.refund", amount=1)))
    assert_failed_closed(d, "policy.denied", "audit.unavailable")


def test_an_unlogged_decision_consumes_nothing(kit: Kit) -> None:
    """A decision that could not be logged consumed nothing; the next one is judged afresh."""
    store = FlakyStore(kit.config.store, commit_error=AuditError("disk full"))
    store.commit_failures = 1
    gw = kit.gateway(store)
    wire = kit.submit()
    assert_failed_closed(gw.decide(wire), "audit.unavailable")
    assert gw.decide(wire).outcome is Outcome.PROCEED
    assert [r["outcome"] for r in records(gw)] == ["proceed"]
    assert gw.decide(wire).reasons[0].code == "replay.detected"


@pytest.mark.parametrize("uses", [None, 5])
def test_whole_store_down(kit: Kit, uses: int | None) -> None:
    """Down for reads and the commit: a decision that reads it first (a limited
    artifact's uses) and one that meets it only in the commit say the same."""
    store = FlakyStore(
        kit.config.store,
        fail=["uses_consumed"],
        commit_error=StoreUnavailable("connection refused"),
    )
    gw = kit.gateway(store)
    d = gw.decide(kit.submit(uses=uses))
    assert_failed_closed(d, "store.unavailable", "audit.unavailable")
    assert "connection refused" in d.reasons[0].detail
    assert d.receipt is None
    assert d.log_index is None


def test_a_store_file_that_is_not_a_database_fails_closed(kit: Kit) -> None:
    """The writer's own failure (here: the file was overwritten with garbage, once all
    of the log was copied into it from the write-ahead log) is the store's."""
    gw = kit.gateway()
    copier = sqlite3.connect(kit.config.store)
    copier.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copier.close()
    Path(kit.config.store).write_bytes(b"this is not an SQLite database" * 200)
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "store.unavailable", "audit.unavailable")
    assert "not a database" in d.reasons[0].detail


def test_closed_store_fails_closed(kit: Kit) -> None:
    gw = kit.gateway()
    gw.store.close()
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "store.unavailable", "audit.unavailable")


def test_unexpected_commit_error_is_logged_as_internal_error(kit: Kit) -> None:
    store = FlakyStore(kit.config.store, commit_error=RuntimeError("driver bug"))
    store.commit_failures = 1
    gw = kit.gateway(store)
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "internal.error")
    assert d.log_index == 0
    assert [r["outcome"] for r in records(gw)] == ["fail_closed"]


# --- the policy, the clock, the signer fail -------------------------------------------


def test_policy_that_raises_fails_closed(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Policy, **_: Any) -> PolicyResult:
        raise RuntimeError("engine crashed")

    monkeypatch.setattr(Policy, "evaluate", boom)
    gw = kit.gateway()
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "internal.error")
    assert "policy" in d.reasons[0].detail
    [record] = records(gw)
    assert record["outcome"] == "fail_closed"
    assert record["reasons"] == [r.to_json() for r in d.reasons]


@pytest.mark.parametrize("failure", ["raises", "nan", "inf"])
def test_clock_failure_fails_closed(kit: Kit, failure: str) -> None:
    if failure == "raises":
        kit.clock.error = OSError("clock source unavailable")
    else:
        kit.clock.t = float(failure)
    gw = kit.gateway()
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "internal.error")
    assert [r["outcome"] for r in records(gw)] == ["fail_closed"]


@pytest.mark.parametrize("failure", ["raises", "nan", "inf"])
def test_a_failing_clock_records_no_outcome_and_no_reload(kit: Kit, failure: str) -> None:
    """Outside a decision a failing clock is a typed AuditError (what the HTTP API
    answers as audit.unavailable), and nothing is appended."""
    gw = kit.gateway()
    d = gw.decide(kit.submit())
    assert d.outcome is Outcome.PROCEED
    if failure == "raises":
        kit.clock.error = OSError("clock source unavailable")
    else:
        kit.clock.t = float(failure)
    size = gw.store.size()
    for call in (
        lambda: gw.report_outcome(d.decision_id, status="succeeded"),
        gw.reload_policy,
    ):
        with pytest.raises(
            AuditError,
            match=r"clock cannot be read \((OSError|its reading is outside 1970\.\.9999 \("
            + failure
            + r"\))\): nothing was",
        ):
            call()
    assert gw.store.size() == size
    kit.clock.error, kit.clock.t = None, NOW
    assert gw.report_outcome(d.decision_id, status="succeeded") == size  # control


def test_a_condition_engine_that_breaks_fails_closed_not_a_policy_deny(kit: Kit) -> None:
    """An error of the data (a wrong type, a bad argument to a function) is the policy
    saying no (policy.denied); the binding itself failing is the gateway unable to
    decide (internal.error), and is never read as the policy's answer."""
    gw = kit.gateway()
    [condition] = [r.condition for r in gw.policy.rules if r.name == "charges-over-ten"]
    assert condition is not None

    class Broken:
        def execute(self, context: object) -> bool:
            raise SystemError("the binding crashed")

    object.__setattr__(condition, "_program", Broken())
    submission = kit.submit(kit.request("payments.charge", "acct:1", amount=50))
    d = gw.decide(submission)
    assert_failed_closed(d, "internal.error")
    assert "SystemError" in d.reasons[0].detail


def test_receipt_signing_failure_fails_closed_and_is_logged(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: Any) -> str:
        raise RuntimeError("HSM unreachable")

    monkeypatch.setattr("execgate.pipeline.sign_receipt", broken)
    gw = kit.gateway()
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "internal.error")
    assert "receipt" in d.reasons[0].detail
    assert d.receipt is None
    assert d.log_index == 0
    [record] = records(gw)
    assert record["outcome"] == "fail_closed"
    assert [r["code"] for r in record["reasons"]] == ["internal.error"]


def test_receipt_signing_failure_consumes_no_use(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def flaky(**kw: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("HSM unreachable")
        return sign_receipt(**kw)

    monkeypatch.setattr("execgate.pipeline.sign_receipt", flaky)
    gw = kit.gateway()
    token = kit.artifact(uses=1)
    first = gw.decide(kit.submission(kit.request(amount=1), token))
    assert_failed_closed(first, "internal.error")
    second = gw.decide(kit.submission(kit.request(amount=1), token))
    assert second.outcome is Outcome.PROCEED, second.reasons
    assert [r["outcome"] for r in records(gw)] == ["fail_closed", "proceed"]


def test_a_pause_whose_receipt_failed_names_no_approval(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval the pause was opening is rolled back with it: the fail_closed that is
    logged instead, and the answer, name no approval that does not exist."""

    def broken(**_: Any) -> str:
        raise RuntimeError("HSM unreachable")

    monkeypatch.setattr("execgate.pipeline.sign_receipt", broken)
    gw = kit.gateway()
    d = gw.decide(kit.submit(kit.request(amount=5000)))  # the policy pauses this
    assert_failed_closed(d, "internal.error")
    assert d.approval_id is None
    [record] = records(gw)
    assert (record["outcome"], record["approval_id"]) == ("fail_closed", None)
    assert gw.store.approvals() == []


def test_a_store_down_on_the_retry_after_a_signing_failure_says_so(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receipt signing fails (the decision is to be logged as fail_closed), and then the
    store goes down for that second write too: the answer names both failures."""

    def broken(**_: Any) -> str:
        raise RuntimeError("HSM unreachable")

    monkeypatch.setattr("execgate.pipeline.sign_receipt", broken)
    gw = kit.gateway()
    real_commit = gw.store.commit

    def commit(job: WriteJob) -> int:
        if job.proof_jti is None:  # the retry, which logs the fail_closed
            raise StoreUnavailable("disk gone")
        return real_commit(job)

    monkeypatch.setattr(gw.store, "commit", commit)
    d = gw.decide(kit.submit())
    assert_failed_closed(d, "internal.error", "store.unavailable", "audit.unavailable")
    assert (d.log_index, d.receipt) == (None, None)
    assert records(gw) == []


def test_an_unlogged_pause_does_not_say_it_opened_an_approval(kit: Kit) -> None:
    store = FlakyStore(kit.config.store, commit_error=StoreUnavailable("disk gone"))
    gw = kit.gateway(store)
    d = gw.decide(kit.submit(kit.request(amount=5000)))  # the policy pauses this
    assert_failed_closed(d, "store.unavailable", "audit.unavailable")
    assert d.approval_id is None
    store.commit_failures = 0
    assert gw.store.approvals() == []
    paused = gw.decide(kit.submit(kit.request(amount=5000)))
    assert paused.outcome is Outcome.PAUSE  # the next one opens it, for real
    assert [a.approval_id for a in gw.store.approvals()] == [paused.approval_id]


# --- the database file ----------------------------------------------------------------


def test_garbage_database_file_refuses_to_open(kit: Kit) -> None:
    kit.config.store.write_bytes(b"this is not a database, just garbage " * 200)
    with pytest.raises(StoreError, match=r"cannot open store .*not a database"):
        SQLiteStore(kit.config.store)
    with pytest.raises(StoreError, match="not a database"):
        Gateway.open(kit.home, now=kit.clock)


def test_database_with_a_clobbered_header_refuses_to_open(kit: Kit) -> None:
    gw = kit.gateway()
    assert gw.decide(kit.submit()).outcome is Outcome.PROCEED
    kit.close()
    path = kit.config.store
    data = bytearray(path.read_bytes())
    data[:100] = os.urandom(100)
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreError):
        SQLiteStore(path)


def test_database_of_another_schema_version_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(path)


def test_missing_directory_refuses_to_open(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        SQLiteStore(tmp_path / "no" / "such" / "dir" / "state.db")


def test_directory_path_that_is_a_file_refuses_to_open(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot open store"):
        SQLiteStore(tmp_path / "afile" / "state.db")


def test_gateway_with_store_in_a_missing_directory_refuses_to_open(kit: Kit) -> None:
    config = kit.home / "execgate.toml"
    text = config.read_text().replace('store = "state.db"', 'store = "missing/state.db"')
    config.write_text(text)
    with pytest.raises(StoreError):
        Gateway.open(kit.home, now=kit.clock)


def test_never_proceeds_when_anything_fails(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same valid request under each failure: not one of them executes."""
    outcomes = []
    gw = kit.gateway(FlakyStore(kit.config.store, fail=["uses_consumed"]))
    outcomes.append(gw.decide(kit.submit(uses=5)).outcome)
    gw = kit.gateway(FlakyStore(kit.config.store, commit_error=AuditError("x")))
    outcomes.append(gw.decide(kit.submit()).outcome)
    kit.clock.error = OSError("no clock")
    outcomes.append(kit.gateway().decide(kit.submit()).outcome)
    kit.clock.error = None
    assert outcomes == [Outcome.FAIL_CLOSED] * 3
    assert kit.gateway().decide(kit.submit()).outcome is Outcome.PROCEED  # control


def test_a_node_key_that_a_trust_entry_also_holds_refuses_to_open(tmp_path: Path) -> None:
    """The node key signs receipts and checkpoints; listed as an authority, its holder
    could also mint artifacts (an approver: count toward a quorum; a mesh node: vouch
    for receipts)."""
    init_home(tmp_path / "home")
    home = tmp_path / "home"
    node = read_private_key(home / "keys" / "node.jwk").public.to_jwk()
    entry = "{" + ", ".join(f'{k} = "{v}"' for k, v in node.items()) + "}"
    trust = (home / "trust.toml").read_text()
    (home / "trust.toml").write_text(
        trust + f'\n[[mesh_node]]\nid = "gw-other"\nkeys = [{entry}]\n'
    )
    with pytest.raises(ConfigError, match="mesh_node 'gw-other' holds this gateway's node key"):
        Gateway.open(home)


def test_a_mesh_node_with_this_gateways_id_refuses_to_open(tmp_path: Path) -> None:
    init_home(tmp_path / "home", gateway_id="gw-self")
    home = tmp_path / "home"
    other = PrivateKey.generate().public.to_jwk()
    entry = "{" + ", ".join(f'{k} = "{v}"' for k, v in other.items()) + "}"
    with (home / "trust.toml").open("a") as fh:
        fh.write(f'\n[[mesh_node]]\nid = "gw-self"\nkeys = [{entry}]\n')
    with pytest.raises(ConfigError, match="mesh_node 'gw-self' has this gateway's own id"):
        Gateway.open(home)


@pytest.mark.parametrize("path", ["", "keys", "execgate.toml", "policy.yaml", "state.db"])
def test_a_home_others_may_write_refuses_to_open(tmp_path: Path, path: str) -> None:
    """Whoever may rewrite the home, its config, its policy or its key directory can make
    the gateway trust their own key, and whoever may rewrite its store can take back a
    revocation: refused, with the chmod that fixes it."""
    init_home(tmp_path / "home")
    Gateway.open(tmp_path / "home").close()  # the store made
    target = tmp_path / "home" / path
    target.chmod(stat.S_IMODE(target.stat().st_mode) | stat.S_IWOTH)
    with pytest.raises(ConfigError, match=r"may be written by any user .*run: chmod o-w"):
        Gateway.open(tmp_path / "home")
    target.chmod(stat.S_IMODE(target.stat().st_mode) & ~stat.S_IWOTH | stat.S_IWGRP)
    Gateway.open(tmp_path / "home").close()  # a group may write: an administrators' group


@pytest.mark.parametrize("name", ["trust", "policy"])
def test_a_trust_store_or_policy_in_a_directory_others_may_write_refuses_to_open(
    tmp_path: Path, name: str
) -> None:
    """Kept outside the home, in a directory any user may write: anyone may put their
    own file in its place (its own mode is no help), so the gateway refuses to open. So
    too when the path goes through a link any user may replace, or a link leads there."""
    home = tmp_path / "home"
    init_home(home)
    shared, safe = tmp_path / "shared", tmp_path / "safe"
    shared.mkdir()
    safe.mkdir()
    file = {"trust": "trust.toml", "policy": "policy.yaml"}[name]
    what = "policy" if name == "policy" else "trust store"
    config = home / "execgate.toml"
    text = config.read_text()

    def configured(value: str) -> None:
        config.write_text(text.replace(f'{name} = "{file}"', f'{name} = "{value}"'))

    def refused(entry: Path, holder: Path) -> None:
        with pytest.raises(ConfigError) as info:
            Gateway.open(home)
        assert str(info.value).startswith(f"{what} ")
        assert str(info.value).endswith(
            f"directory {holder}, which holds {entry}, may be written by any user (mode 0777):"
            f" anyone may put another {entry.name} there"
        )

    (home / file).rename(shared / file)
    configured(str(shared / file))
    Gateway.open(home).close()
    shared.chmod(0o777)
    refused(shared / file, shared)
    shared.chmod(0o1777)  # sticky, like /tmp: only the owner of an entry replaces it
    Gateway.open(home).close()
    shared.chmod(0o755)
    # A link in the home to a link in a shared directory to the file in a safe one.
    (shared / file).rename(safe / file)
    (shared / "link").symlink_to(safe / file)
    (home / "link").symlink_to(shared / "link")
    configured("link")
    Gateway.open(home).close()
    shared.chmod(0o777)  # the link in it may be replaced by anyone
    refused(shared / "link", shared)
    shared.chmod(0o755)
    safe.chmod(0o777)  # the file it leads to, likewise
    refused(safe / file, safe)
    safe.chmod(0o755)
    Gateway.open(home).close()
