"""The policy in force for a service (``Gateway.open(policy_in_force=...)``): pinned at
the first open, loaded by every later one whatever the file on disk holds, replaced only
by an accepted reload (once logged), left alone by a refused or failed one, and taken by
every process of the service before its next decision."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from gatekit import POLICY, Kit, make_kit

import execgate.policy.loader as loader
from execgate import _admin_log, pipeline
from execgate.errors import AuditError, ConfigError, PolicyError
from execgate.jose import PrivateKey
from execgate.keyfile import atomic_write
from execgate.model import Decision
from execgate.pipeline import Gateway
from execgate.policy.loader import pin_policy
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore

EDITED = POLICY.replace("refunds are manual", "refunds need a ticket")


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


@pytest.fixture
def pinned(tmp_path: Path) -> Path:
    directory = tmp_path / "service"
    directory.mkdir(mode=0o700)
    return directory / "policy.yaml"


class _LogDown(SQLiteStore):
    """A store whose log cannot be appended to: every commit fails (after ``first``)."""

    def __init__(self, path: Path, first: Callable[[], None]) -> None:
        super().__init__(path)
        self.first = first

    def commit(self, job: WriteJob) -> int:
        self.first()
        raise AuditError("the log is down")


def _log_down(gateway: Gateway, kit: Kit, *, first: Callable[[], None] = lambda: None) -> None:
    gateway.store.close()
    gateway.store = _LogDown(kit.config.store, first)


def _open(kit: Kit, pinned: Path) -> Gateway:
    gateway = Gateway.open(
        kit.home, now=kit.clock, policy_in_force=pinned, new_service=not pinned.exists()
    )
    kit._gateways.append(gateway)
    return gateway


def test_the_first_open_pins_the_policy_it_loaded(kit: Kit, pinned: Path) -> None:
    gateway = _open(kit, pinned)
    assert pinned.read_text(encoding="utf-8") == (kit.home / "policy.yaml").read_text()
    assert stat.S_IMODE(pinned.stat().st_mode) == 0o600
    assert gateway.policy.hash == kit.gateway().policy.hash


def test_a_later_open_runs_the_pinned_policy_not_the_edited_file(kit: Kit, pinned: Path) -> None:
    first = _open(kit, pinned)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    assert _open(kit, pinned).policy.hash == first.policy.hash
    assert kit.gateway().policy.hash != first.policy.hash  # unpinned: the file as it is


def test_a_later_open_starts_even_when_the_file_is_broken(kit: Kit, pinned: Path) -> None:
    first = _open(kit, pinned)
    (kit.home / "policy.yaml").write_text("version: 1\nrules: []\n", encoding="utf-8")
    with pytest.raises(PolicyError):
        kit.gateway()
    assert _open(kit, pinned).policy.hash == first.policy.hash


def test_a_later_open_reads_the_config_and_trust_store_the_first_one_read(
    kit: Kit, pinned: Path
) -> None:
    """Edited or broken since, execgate.toml and trust.toml are read as they were when
    the service started: kept private beside the pin, byte for byte."""
    first = _open(kit, pinned)
    trust, config = kit.home / "trust.toml", kit.home / "execgate.toml"
    kept = {p.name: p.read_bytes() for p in (trust, config)}
    trust.write_text(trust.read_text().replace('"payments.*"', '"reports.*"'))
    config.write_text(config.read_text().replace("leeway = 60", "leeway = 5"))
    later = _open(kit, pinned)
    assert later.decide(kit.submit()).outcome.value == "proceed"
    assert later._leeway == first._leeway == 60
    assert kit.gateway().decide(kit.submit()).reasons[0].code == "artifact.untrusted_issuer"
    trust.write_text("not [toml\n")
    config.write_text("not [toml either\n")
    assert _open(kit, pinned).decide(kit.submit()).outcome.value == "proceed"
    for name, data in kept.items():
        assert (pinned.parent / name).read_bytes() == data
        assert stat.S_IMODE((pinned.parent / name).stat().st_mode) == 0o600


def test_a_later_open_with_another_node_key_refuses_to_start(kit: Kit, pinned: Path) -> None:
    _open(kit, pinned)
    other = json.dumps(PrivateKey.generate().to_jwk(private=True)).encode()
    atomic_write(kit.config.node_key, other, mode=0o600)
    with pytest.raises(ConfigError, match="not the node key this service started with"):
        _open(kit, pinned)


def test_a_first_open_refuses_a_trust_store_others_may_write(kit: Kit, pinned: Path) -> None:
    """What is kept for the service is checked as the home's own files are at open."""
    (kit.home / "trust.toml").chmod(0o666)
    with pytest.raises(ConfigError, match="may be written by any user"):
        _open(kit, pinned)
    assert not (pinned.parent / "trust.toml").exists()


def test_an_accepted_reload_replaces_the_pin(kit: Kit, pinned: Path) -> None:
    gateway = _open(kit, pinned)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    done = gateway.reload_policy(via="signal")
    assert done.reloaded
    assert pinned.read_text(encoding="utf-8") == EDITED
    assert _open(kit, pinned).policy.hash == done.policy_hash == gateway.policy.hash


def test_a_refused_reload_leaves_the_pin(kit: Kit, pinned: Path) -> None:
    gateway = _open(kit, pinned)
    before = pinned.read_bytes()
    (kit.home / "policy.yaml").write_text("version: 1\nrules: []\n", encoding="utf-8")
    done = gateway.reload_policy(via="signal")
    assert not done.reloaded
    assert pinned.read_bytes() == before
    assert _open(kit, pinned).policy.hash == gateway.policy.hash == done.policy_hash


def test_a_reload_of_a_policy_others_may_write_is_refused(kit: Kit, pinned: Path) -> None:
    """As at open: whoever may rewrite the policy file would choose what runs next."""
    gateway = _open(kit, pinned)
    old = gateway.policy.hash
    policy = kit.home / "policy.yaml"
    policy.write_text(EDITED, encoding="utf-8")
    policy.chmod(0o666)
    done = gateway.reload_policy(via="signal")
    assert not done.reloaded
    assert done.error is not None
    assert "may be written by any user (mode 0666)" in done.error
    assert gateway.policy.hash == old
    policy.chmod(0o644)
    assert gateway.reload_policy(via="signal").reloaded


def test_a_reload_of_a_policy_in_a_directory_others_may_write_is_refused(
    kit: Kit, pinned: Path, tmp_path: Path
) -> None:
    """The policy file linked from a shared directory: anyone may put another in its
    place, whatever the file's own mode."""
    gateway = _open(kit, pinned)
    old = gateway.policy.hash
    shared = tmp_path / "shared"
    shared.mkdir()
    policy = kit.home / "policy.yaml"
    (shared / "policy.yaml").write_text(EDITED, encoding="utf-8")
    policy.unlink()
    policy.symlink_to(shared / "policy.yaml")
    shared.chmod(0o777)
    done = gateway.reload_policy(via="signal")
    assert not done.reloaded
    assert done.error is not None
    assert done.error.endswith(
        f"directory {shared}, which holds {shared / 'policy.yaml'}, may be written by any"
        " user (mode 0777): anyone may put another policy.yaml there"
    )
    assert gateway.policy.hash == old
    shared.chmod(0o755)
    assert gateway.reload_policy(via="signal").reloaded


def test_a_reload_that_cannot_write_the_pin_is_refused(kit: Kit, pinned: Path) -> None:
    gateway = _open(kit, pinned)
    old = gateway.policy.hash
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    shutil.rmtree(pinned.parent)  # nowhere to write it: other workers could not follow
    done = gateway.reload_policy(via="signal")
    assert not done.reloaded
    assert done.error is not None
    assert "cannot write" in done.error
    assert gateway.policy.hash == old


def test_a_reload_whose_record_fails_leaves_the_pin(kit: Kit, pinned: Path) -> None:
    """The record is what makes a reload happen: when it cannot be appended, the policy
    stays, and so does the pin (a worker started later must not run what never was)."""
    gateway = _open(kit, pinned)
    before = pinned.read_bytes()
    other = _open(kit, pinned)

    _log_down(gateway, kit, first=lambda: _pinned_now_is(pinned, before))
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    with pytest.raises(AuditError):
        gateway.reload_policy(via="signal")
    assert pinned.read_bytes() == before
    assert not [p.name for p in pinned.parent.iterdir() if p.name.startswith(".")]  # no temp
    assert _open(kit, pinned).policy.hash == gateway.policy.hash == other.current_policy().hash


def _pinned_now_is(pinned: Path, text: bytes) -> None:
    """While the reload's record is being written, the new version is not in place yet."""
    assert pinned.read_bytes() == text


def test_a_failed_reload_leaves_no_pin_where_there_was_none(kit: Kit, pinned: Path) -> None:
    gateway = _open(kit, pinned)
    pinned.unlink()  # whatever removed it, a failed reload must not put one there

    _log_down(gateway, kit)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    with pytest.raises(AuditError):
        gateway.reload_policy(via="signal")
    assert not pinned.exists()


def test_every_process_takes_a_reload_before_its_next_decision(kit: Kit, pinned: Path) -> None:
    """One process reads the file, logs and pins v2; the other takes the pinned v2 before
    its next decision, without reading the file, which by then is broken and then v3:
    neither refused (staying on v1) nor read again. One record per reload."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    v1 = a.policy.hash
    assert b.decide(kit.submit()).policy_hash == v1
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    v2 = a.reload_policy(via="http").policy_hash
    assert v2 != v1
    (kit.home / "policy.yaml").write_text("version: 1\nrules: []\n", encoding="utf-8")
    assert b.policy.hash == v1  # not yet taken: b has decided nothing since
    decision = b.decide(kit.submit())
    assert (decision.outcome.value, decision.policy_hash) == ("proceed", v2)
    assert b.policy.hash == v2

    refused = b.reload_policy(via="signal")  # the broken file: refused, v2 stays everywhere
    assert (refused.reloaded, refused.policy_hash) == (False, v2)
    v3_text = EDITED.replace("refunds need a ticket", "refunds need two tickets")
    (kit.home / "policy.yaml").write_text(v3_text, encoding="utf-8")
    v3 = b.reload_policy(via="signal").policy_hash
    assert v3 not in (v1, v2)
    assert a.decide(kit.submit()).policy_hash == v3
    assert a.policy.hash == b.policy.hash == _open(kit, pinned).policy.hash == v3
    done = [r for r in kit.records("admin") if r["result"] == "done"]
    assert [(r["previous_policy_hash"], r["policy_hash"]) for r in done] == [(v1, v2), (v2, v3)]


def test_a_reload_ending_after_another_never_puts_the_older_policy_back(
    kit: Kit, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's reload of v2 lets go of the pin's lock; before it returns, B reloads v3 and
    A's next decision takes v3. A's reload must not then put v2 back in A (where the pin
    would no longer look moved, leaving A on v2 for good)."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    v3_text = POLICY.replace("refunds are manual", "v3")
    real, armed = loader.Pin.lock, [True]

    @contextmanager
    def then_b_reloads(pin: loader.Pin) -> Iterator[None]:
        with real(pin):
            yield
        if armed.pop() if armed else False:
            (kit.home / "policy.yaml").write_text(v3_text, encoding="utf-8")
            assert b.reload_policy(via="signal").reloaded
            a.current_policy()  # a decision of A's, meanwhile

    monkeypatch.setattr(loader.Pin, "lock", then_b_reloads)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    assert a.reload_policy(via="http").reloaded
    v3 = b.policy.hash
    assert not armed
    assert a.decide(kit.submit()).policy_hash == v3
    assert a.current_policy().hash == v3


def test_reloads_of_two_processes_run_one_after_the_other(kit: Kit, pinned: Path) -> None:
    """While B's reload holds the pin's lock (its record being written), A's waits; the
    last record logged is the version pinned."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    b_logging, b_may_go = threading.Event(), threading.Event()
    real_append = _admin_log.append_admin_record

    def slow_for_b(gateway: Gateway, record: dict[str, object]) -> int:
        if gateway is b:
            b_logging.set()
            assert b_may_go.wait(10)
        return real_append(gateway, record)

    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_admin_log, "append_admin_record", slow_for_b)
        b_thread = threading.Thread(target=lambda: b.reload_policy(via="signal"))
        b_thread.start()
        assert b_logging.wait(10)
        done: list[object] = []
        a_thread = threading.Thread(target=lambda: done.append(a.reload_policy(via="http")))
        a_thread.start()
        a_thread.join(timeout=0.5)
        assert a_thread.is_alive()  # waiting for B's reload to end
        assert not done
        b_may_go.set()
        b_thread.join(timeout=10)
        a_thread.join(timeout=10)
    assert done
    last = [r for r in kit.records("admin") if r["result"] == "done"][-1]
    assert last["worker"] == os.getpid()
    assert last["policy_hash"] == _open(kit, pinned).policy.hash == a.current_policy().hash


def test_a_later_open_finding_the_pin_gone_refuses_to_start(kit: Kit, pinned: Path) -> None:
    """Were it to pin the home's file anew, an edit nobody reloaded would go into force
    for every worker, unlogged; so would a copy of the config or trust store read anew."""
    _open(kit, pinned)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    for kept in ("policy.yaml", "trust.toml", "execgate.toml", "node.jkt"):
        saved = (pinned.parent / kept).read_bytes()
        (pinned.parent / kept).unlink()
        with pytest.raises(ConfigError, match="gone; restart the service"):
            Gateway.open(kit.home, now=kit.clock, policy_in_force=pinned)
        atomic_write(pinned.parent / kept, saved, mode=0o600)
    assert not [r for r in kit.records("admin") if r["result"] == "done"]


def test_a_pin_others_could_write_is_not_taken(kit: Kit, pinned: Path) -> None:
    """Whoever else may write the pin (or its directory) would choose the policy every
    worker takes, unlogged: a pin writable by others fails decisions closed, and a
    directory others may use is refused at open."""
    a = _open(kit, pinned)
    pin_policy(pinned, EDITED)
    pinned.chmod(0o622)
    decision = a.decide(kit.submit())
    assert (decision.outcome.value, decision.reasons[0].code) == ("fail_closed", "internal.error")
    pinned.chmod(0o600)
    assert a.decide(kit.submit()).outcome.value == "proceed"
    pinned.parent.chmod(0o770)
    with pytest.raises(ConfigError, match="may be used by others"):
        _open(kit, pinned)


def test_a_process_follows_its_service_directory_not_its_name(kit: Kit, pinned: Path) -> None:
    """Another directory put in the place of the service's (by whoever may rename
    entries of a home its group may write) is not read: each process follows the
    directory it opened."""
    a = _open(kit, pinned)
    v1 = a.policy.hash
    moved = pinned.parent.rename(pinned.parent.with_name("moved"))
    pinned.parent.mkdir(mode=0o700)
    pin_policy(pinned, EDITED)
    assert a.decide(kit.submit()).policy_hash == v1
    pin_policy(moved / pinned.name, EDITED)  # the service's own directory: taken
    assert a.decide(kit.submit()).policy_hash != v1


def test_a_reload_pins_in_the_directory_the_processes_follow(kit: Kit, pinned: Path) -> None:
    """With another directory in the place of the service's, a reload written by name
    went there: logged and answered as in force while every process ran the old
    policy. It is written where the processes look."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    v1 = a.policy.hash
    moved = pinned.parent.rename(pinned.parent.with_name("moved"))
    pinned.parent.mkdir(mode=0o700)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    done = b.reload_policy(via="http")
    assert done.reloaded
    assert done.policy_hash != v1
    assert a.decide(kit.submit()).policy_hash == done.policy_hash
    assert b.decide(kit.submit()).policy_hash == done.policy_hash
    assert (moved / pinned.name).read_text(encoding="utf-8") == EDITED
    assert list(pinned.parent.iterdir()) == []  # nothing written by name
    assert sorted(p.name for p in moved.iterdir() if p.name.startswith(".")) == []  # no temp


def test_a_directory_that_cannot_be_synced_fails_no_reload_once_the_pin_is_in_place(
    kit: Kit, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once renamed into place the new version is what every process reads: a failing
    sync of the directory after that is no failed reload (it was answered and logged as
    one, the new policy in force all the same). A file system without directory sync
    starts a service too."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    pin = a._pin
    assert pin is not None
    real_fsync = os.fsync

    def no_directory_sync(fd: int) -> None:
        if fd == pin._dir:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_directory_sync)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    done = a.reload_policy(via="http")
    assert done.reloaded, done.error
    assert a.decide(kit.submit()).policy_hash == done.policy_hash
    assert b.decide(kit.submit()).policy_hash == done.policy_hash
    assert [r["result"] for r in kit.records("admin")] == ["done"]  # no "failed" after it


def test_the_pin_is_private_whatever_the_umask(kit: Kit, pinned: Path) -> None:
    a = _open(kit, pinned)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    old = os.umask(0o477)
    try:
        assert a.reload_policy(via="http").reloaded
    finally:
        os.umask(old)
    assert stat.S_IMODE(pinned.stat().st_mode) == 0o600


def _decided_on_a_loop(
    kit: Kit, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Thread, Decision, list[threading.Thread]]:
    """A decision of ``gateway``'s made with ``decide_async``: the loop's thread, the
    decision, and the threads each pinned version was read in."""
    taken_in: list[threading.Thread] = []
    real = pipeline._pinned

    def recorded(*args: Any, **kwargs: Any) -> Any:
        taken_in.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_pinned", recorded)

    async def decide() -> tuple[threading.Thread, Decision]:
        return threading.current_thread(), await gateway.decide_async(kit.submit())

    loop_thread, decision = asyncio.run(decide())
    return loop_thread, decision, taken_in


def test_an_event_loop_takes_a_new_version_beside_it(
    kit: Kit, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking a new version reads and compiles the whole policy (seconds for a large
    one): ``decide_async`` does that in the loop's executor, so the loop serves every
    other request meanwhile, and the decision runs the new version."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    v1 = a.policy.hash
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    assert b.reload_policy(via="http").reloaded
    loop_thread, decision, taken_in = _decided_on_a_loop(kit, a, monkeypatch)
    assert decision.policy_hash == b.policy.hash != v1
    assert len(taken_in) == 1
    assert taken_in[0] is not loop_thread


def test_an_event_loop_takes_a_version_it_cannot_take_once_beside_it(
    kit: Kit, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pin that cannot be taken fails the decision closed: read once, in a thread (it
    was read again on the loop, the very stall taking it beside the loop avoids)."""
    a = _open(kit, pinned)
    pin_policy(pinned, "version: 1\nrules: []\n")
    loop_thread, decision, taken_in = _decided_on_a_loop(kit, a, monkeypatch)
    assert (decision.outcome.value, decision.reasons[0].code) == ("fail_closed", "internal.error")
    assert len(taken_in) == 1
    assert taken_in[0] is not loop_thread


def test_a_pin_that_cannot_be_looked_at_fails_an_async_decision_closed(
    kit: Kit, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _open(kit, pinned)

    def unreadable(self: loader.Pin) -> bool:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(loader.Pin, "moved", unreadable)
    decision = asyncio.run(a.decide_async(kit.submit()))
    assert (decision.outcome.value, decision.reasons[0].code) == ("fail_closed", "internal.error")


def test_an_async_decision_looks_at_the_pin_once(
    kit: Kit, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decide_async`` looks whether the pin moved before the stages; when it has not,
    the stages run the policy held without a second look (one ``stat`` a decision)."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    looks: list[bool] = []
    real = loader.Pin.moved

    def counted(self: loader.Pin) -> bool:
        looks.append(real(self))
        return looks[-1]

    monkeypatch.setattr(loader.Pin, "moved", counted)
    decision = asyncio.run(a.decide_async(kit.submit()))
    assert decision.outcome.value == "proceed"
    assert looks == [False]
    # A move is still seen, and its version taken, with no more looks than it needs.
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    assert b.reload_policy(via="http").reloaded
    looks.clear()
    decision = asyncio.run(a.decide_async(kit.submit()))
    assert decision.policy_hash == b.policy.hash
    assert looks[0] is True
    looks.clear()
    assert asyncio.run(a.decide_async(kit.submit())).policy_hash == b.policy.hash
    assert looks == [False]


def test_a_take_under_way_when_the_gateway_closes_holds_nothing_after(
    kit: Kit, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision cancelled (a server's shutdown) while its take runs in a thread: the
    close waits for the take, then lets go of what it took; it was held, open, after."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    assert b.reload_policy(via="http").reloaded
    entered, release = threading.Event(), threading.Event()
    real = pipeline._pinned

    def slow(*args: Any, **kwargs: Any) -> Any:
        read = real(*args, **kwargs)  # the version read, not yet held
        entered.set()
        assert release.wait(10)
        return read

    monkeypatch.setattr(pipeline, "_pinned", slow)

    async def cancelled() -> None:
        task = asyncio.ensure_future(a.decide_async(kit.submit()))
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop = asyncio.new_event_loop()  # not asyncio.run: that would wait for the take
    try:
        loop.run_until_complete(cancelled())
        closing = threading.Thread(target=a.close)
        closing.start()
        time.sleep(0.2)  # the close waits for the take
        release.set()
        closing.join(10)
        assert not closing.is_alive()
    finally:
        release.set()
        loop.close()
    pin = a._pin
    assert pin is not None
    assert (pin._fd, pin._dir) == (None, -1)


def test_a_reload_repairs_a_pin_this_process_cannot_take(kit: Kit, pinned: Path) -> None:
    """The pin cannot be taken (every decision fails closed); a reload of a valid file
    is not refused for that: it logs the new policy, saying what was wrong, and pins it."""
    a = _open(kit, pinned)
    pin_policy(pinned, "version: 1\nrules: []\n")
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    done = a.reload_policy(via="http")
    assert done.reloaded
    assert a.decide(kit.submit()).policy_hash == done.policy_hash
    record = kit.records("admin")[-1]
    assert "the pinned policy could not be taken here" in record["detail"]


def test_a_pinned_version_that_cannot_be_taken_fails_decisions_closed(
    kit: Kit, pinned: Path
) -> None:
    """A process that cannot take the service's new policy (here a pin no reload could
    have written) decides nothing under the old one: each decision fails closed, and it
    takes the next version that it can."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    pin_policy(pinned, "version: 1\nrules: []\n")
    decision = b.decide(kit.submit())
    assert (decision.outcome.value, decision.reasons[0].code) == ("fail_closed", "internal.error")
    assert "policy in force changed and cannot be taken here (PolicyError)" in (
        decision.reasons[0].detail
    )
    assert str(pinned) not in decision.reasons[0].detail
    with pytest.raises(PolicyError):
        b.current_policy()
    pin_policy(pinned, EDITED)
    decision = b.decide(kit.submit())
    assert decision.outcome.value == "proceed"
    assert (
        decision.policy_hash
        == b.policy.hash
        == a.current_policy().hash
        != kit.gateway().policy.hash
    )


def test_a_removed_pin_leaves_the_version_taken_in_force(kit: Kit, pinned: Path) -> None:
    """A cleaner of temporary files may remove the pin: nothing was reloaded, so the
    version each process took stays in force, and the next reload pins again."""
    a, b = _open(kit, pinned), _open(kit, pinned)
    v1 = a.policy.hash
    pinned.unlink()
    assert b.decide(kit.submit()).policy_hash == v1
    (kit.home / "policy.yaml").write_text(EDITED, encoding="utf-8")
    v2 = a.reload_policy(via="signal").policy_hash
    assert b.decide(kit.submit()).policy_hash == v2 != v1


def test_a_reload_record_drops_only_the_homes_own_paths(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record names the policy file without its directory (see the server's tests),
    and changes nothing else the refusal says: the home's directory quoted in a
    condition stays, and with a home given as a relative path, a refusal quoting
    `../etc/` is logged exactly as answered."""
    quoted = f"'{kit.home}/notes/../etc/'"
    broken = POLICY.replace("request.args.amount > 10", f"request.args.p == {quoted} +")
    assert broken != POLICY
    absolute = kit.gateway()
    monkeypatch.chdir(kit.home.parent)
    relative = Gateway.open(Path(kit.home.name), now=kit.clock)
    (kit.home / "policy.yaml").write_text(broken, encoding="utf-8")
    refused = absolute.reload_policy(via="signal")
    assert refused.error is not None
    assert quoted in refused.error
    assert kit.records("admin")[-1]["detail"] == refused.error
    try:
        again = relative.reload_policy(via="signal")
    finally:
        relative.close()
    assert again.error is not None
    assert quoted in again.error
    assert kit.records("admin")[-1]["detail"] == again.error
