"""Policy hot reload of a real ``execgate serve``: SIGHUP to the main process reloads
the policy for every worker (none is restarted), an invalid policy is refused and the
old one keeps serving, and ``execgate policy reload`` does the same over HTTP. One
worker reads the file and logs the reload; every worker's next decision runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatekit import POLICY, Kit, make_kit
from test_server_process import Server, _opened, serve

from execgate._hup import hup_before_handler
from execgate.jose import PrivateKey
from execgate.keyfile import atomic_write
from execgate.server.admin import install_reload_signal

WAIT = 20.0
_EXECGATE = (sys.executable, "-m", "execgate")


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    k.clock.t = time.time()  # the server reads the real clock
    yield k
    k.close()


def _hash(server: Server, kit: Kit) -> str:
    kit.clock.t = time.time()
    # A new connection per decision: the kernel hands each to either worker.
    response = httpx.post(server.url + "/v1/decisions", json=kit.submit(), timeout=10.0)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["outcome"] == "proceed"
    digest: str = body["policy_hash"]
    return digest


def _reloads(kit: Kit) -> list[dict[str, Any]]:
    return [
        r for r in kit.records("admin") if r["code"] in ("policy.reloaded", "policy.reload_refused")
    ]


def _wait_for(server: Server, kit: Kit, count: int) -> list[dict[str, Any]]:
    """The reload records, once there are ``count`` of them (or fail after WAIT)."""
    deadline = time.monotonic() + WAIT
    found = _reloads(kit)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        found = _reloads(kit)
    assert len(found) >= count, f"{found}\n{server.stderr()}"
    return found


def _workers(server: Server, kit: Kit) -> set[int]:
    """The two worker pids, once both have served decisions (so both have loaded the
    policy; the kernel picks which worker accepts, so decisions are sent until then)."""
    pid = server.proc.pid
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        serving = {int(c) for c in children if _opened(c, kit.config.store)}
        if len(serving) >= 2:
            return serving
        _hash(server, kit)
    pytest.fail("the two workers did not both serve")


def _reload_cli(kit: Kit, server: Server) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EXECGATE_HOME"}
    return subprocess.run(
        [
            *_EXECGATE,
            "--home",
            str(kit.home),
            "policy",
            "reload",
            "--url",
            server.url,
            "--admin-key",
            str(kit.home / "keys" / "admin.jwk"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_sighup_reloads_every_worker_and_refuses_an_invalid_policy(kit: Kit) -> None:
    policy = kit.home / "policy.yaml"
    with serve(kit, workers=2) as server:
        workers = _workers(server, kit)
        old = _hash(server, kit)

        policy.write_text(POLICY.replace("refunds are manual", "refunds are never automatic"))
        server.proc.send_signal(signal.SIGHUP)
        [reloaded] = _wait_for(server, kit, 1)
        assert reloaded["worker"] in workers  # one worker read the file; none restarted
        assert (reloaded["via"], reloaded["code"]) == ("signal", "policy.reloaded")
        new = reloaded["policy_hash"]
        assert new != old
        assert reloaded["previous_policy_hash"] == old
        assert {_hash(server, kit) for _ in range(12)} == {new}

        policy.write_text("version: 1\nrules: []\n")
        server.proc.send_signal(signal.SIGHUP)
        [refused] = _wait_for(server, kit, 2)[1:]
        assert (refused["result"], refused["code"]) == ("refused", "policy.reload_refused")
        assert server.proc.poll() is None
        assert {_hash(server, kit) for _ in range(12)} == {new}  # the old one stays
        assert _workers(server, kit) == workers

        # Over HTTP: refused first, then accepted, and then every worker has it.
        answer = _reload_cli(kit, server)
        assert answer.returncode == 1, answer.stderr
        assert "policy.reload_refused" in answer.stderr
        assert new in answer.stderr
        policy.write_text(POLICY.replace("refunds are manual", "ask finance"))
        answer = _reload_cli(kit, server)
        assert answer.returncode == 0, answer.stderr
        assert "workers: all" in answer.stdout
        [latest] = _wait_for(server, kit, 4)[3:]
        assert latest["via"] == "http"
        newest = latest["policy_hash"]
        assert newest != new
        assert f"reloaded: policy {newest} is in force (was {new}; workers: all)" in answer.stdout
        answer = _reload_cli(kit, server)  # the same file again: logged, and said so
        assert answer.returncode == 0, answer.stderr
        assert f"policy {newest} is in force (unchanged; workers: all)" in answer.stdout
        # An edit nobody reloaded stays out of force on every worker (the one that
        # answered, too), whatever signals went around after the reload.
        policy.write_text(POLICY.replace("refunds are manual", "never reloaded"))
        time.sleep(1.0)
        assert {_hash(server, kit) for _ in range(20)} == {newest}
        assert len(_reloads(kit)) == 5
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()


def test_sighup_reloads_a_single_process_server(kit: Kit) -> None:
    with serve(kit, workers=1) as server:
        old = _hash(server, kit)
        (kit.home / "policy.yaml").write_text(
            POLICY.replace("refunds are manual", "refunds stop here")
        )
        server.proc.send_signal(signal.SIGHUP)
        [reloaded] = _wait_for(server, kit, 1)
        assert reloaded["worker"] == server.proc.pid
        assert reloaded["previous_policy_hash"] == old
        assert _hash(server, kit) == reloaded["policy_hash"] != old
        # A token lacking nothing but the right to be replayed: the CLI mints a new one.
        assert (
            json.loads(httpx.post(server.url + "/v1/admin/policy/reload", timeout=10.0).text)[
                "error"
            ]["code"]
            == "admin.unauthenticated"
        )
        assert server.stop() == 0


def _replaced(server: Server, kit: Kit, gone: int) -> set[int]:
    """The two workers, once the supervisor has replaced ``gone`` and both serve."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.stderr()
        workers = _workers(server, kit)
        if gone not in workers:
            return workers
        time.sleep(0.1)
    pytest.fail(f"worker {gone} was not replaced")


def test_a_replaced_worker_runs_the_policy_in_force_not_the_file(kit: Kit) -> None:
    """A worker killed (SIGKILL) is replaced by the supervisor; the new one loads the
    policy the others run, not the file as it is now: neither a broken file (which
    would fail its start, and with it the service) nor an edit never reloaded."""
    policy = kit.home / "policy.yaml"
    with serve(kit, workers=2) as server:
        workers = _workers(server, kit)
        old = _hash(server, kit)

        policy.write_text("version: 1\nrules: []\n")  # broken, and never reloaded
        os.kill(min(workers), signal.SIGKILL)
        workers = _replaced(server, kit, min(workers))
        assert {_hash(server, kit) for _ in range(12)} == {old}

        edited = POLICY.replace("refunds are manual", "refunds wait for finance")
        policy.write_text(edited)  # valid, and never reloaded either
        os.kill(max(workers), signal.SIGKILL)
        workers = _replaced(server, kit, max(workers))
        assert {_hash(server, kit) for _ in range(12)} == {old}
        assert _reloads(kit) == []

        server.proc.send_signal(signal.SIGHUP)  # now it is reloaded, for every worker
        [reloaded] = _wait_for(server, kit, 1)
        assert reloaded["worker"] in workers
        new = reloaded["policy_hash"]
        assert new != old
        assert {_hash(server, kit) for _ in range(12)} == {new}
        assert server.stop() == 0


def test_a_replaced_worker_runs_the_config_and_trust_the_service_started_with(
    kit: Kit,
) -> None:
    """Edits to execgate.toml and trust.toml apply at a restart: a worker started later
    (replacing one killed) reads them as the service's first process did, so it neither
    trusts what the others do not (a grant removed, here) nor fails to start on a file
    broken meanwhile."""
    trust = kit.home / "trust.toml"
    with serve(kit, workers=2) as server:
        workers = _workers(server, kit)
        old = _hash(server, kit)
        trust.write_text(trust.read_text().replace('"payments.*"', '"reports.*"'))
        os.kill(min(workers), signal.SIGKILL)
        workers = _replaced(server, kit, min(workers))
        assert {_hash(server, kit) for _ in range(12)} == {old}  # each one a proceed
        trust.write_text("this is [not toml\n")
        (kit.home / "policy.yaml").chmod(0o666)  # the next reload's to refuse, not a start's
        os.kill(max(workers), signal.SIGKILL)
        _replaced(server, kit, max(workers))
        assert {_hash(server, kit) for _ in range(12)} == {old}
        assert server.stop() == 0
        assert "stopped and were replaced" in server.stderr()  # an operator sees it


def test_a_service_stopped_by_a_worker_that_cannot_start_exits_3(kit: Kit) -> None:
    """A replacement worker that cannot start (the node key replaced on disk: receipts
    and checkpoints are signed by one key for the service's life) stops the whole
    service (uvicorn's rule: it would fail the same way on every restart); the service
    then says so with its exit status, so a process manager restarting on failure
    restarts it, with the new key."""
    with serve(kit, workers=2) as server:
        workers = _workers(server, kit)
        other = json.dumps(PrivateKey.generate().to_jwk(private=True))
        atomic_write(kit.config.node_key, other.encode(), mode=0o600)
        os.kill(min(workers), signal.SIGKILL)
        assert server.proc.wait(timeout=WAIT + 30) == 3, server.stderr()
        assert "failed to start" in server.stderr()
        assert "is not the node key this service started with" in server.stderr()  # why


def test_the_service_keeps_its_private_files_in_the_home_and_removes_them(kit: Kit) -> None:
    """Not in /tmp, where a cleaner of old files could remove them from a service that
    runs for weeks: in the home's run/ (0700), one directory each, gone at the stop."""
    with serve(kit, workers=2) as server:
        _workers(server, kit)
        run = kit.home / "run"
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        [service] = run.glob("execgate-service-*")
        assert service.name.startswith("execgate-service-")
        kept = sorted(p.name for p in service.iterdir() if not p.name.startswith("."))
        [metrics] = [name for name in kept if name.startswith("execgate-metrics-")]
        assert (service / metrics).is_dir()
        assert [name for name in kept if name != metrics] == [
            "execgate.toml",
            "node.jkt",
            "policy.yaml",
            "policy.yaml.lock",
            "service.lock",
            "trust.toml",
        ]
        assert server.stop() == 0
    assert [p.name for p in run.iterdir()] == ["serve.lock"]  # kept: others may wait on it


def test_a_sighup_while_starting_is_remembered_and_acted_on_once_the_handler_is_in(
    kit: Kit,
) -> None:
    """One worker serves in the process ``execgate serve`` started: a SIGHUP before its
    app installed the reload handler is not lost; and once the handler is removed (the
    app stopping), a SIGHUP is ignored, not the end of the process before its last
    appends."""
    gateway = kit.gateway()
    (kit.home / "policy.yaml").write_text(POLICY.replace("refunds are manual", "early"))
    before = signal.signal(signal.SIGHUP, hup_before_handler)
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # handled at once: this is the main thread

        async def start_and_stop() -> None:
            remove = install_reload_signal(gateway)
            deadline = time.monotonic() + WAIT
            while not _reloads(kit) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            remove()

        asyncio.run(start_and_stop())
        [reloaded] = _reloads(kit)
        assert (reloaded["via"], reloaded["code"]) == ("signal", "policy.reloaded")
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_storm_of_sighups_is_one_reload_under_way_and_one_more(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each SIGHUP was a reload of its own (100 signals, 88 identical audit records and
    as many parses in every worker). One queued that has not read the file yet stands
    for every SIGHUP after it."""
    gateway = kit.gateway()
    entered, release = threading.Event(), threading.Event()
    real, runs = gateway.reload_policy, []

    def counted(**kwargs: Any) -> Any:
        runs.append(kwargs)
        if len(runs) == 1:
            entered.set()
            assert release.wait(WAIT)
        return real(**kwargs)

    monkeypatch.setattr(gateway, "reload_policy", counted)
    before = signal.getsignal(signal.SIGHUP)

    async def storm() -> None:
        remove = install_reload_signal(gateway)
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            assert await asyncio.to_thread(entered.wait, WAIT)  # the first is under way
            for _ in range(20):
                os.kill(os.getpid(), signal.SIGHUP)
                await asyncio.sleep(0.01)  # each is handled
            release.set()
            deadline = time.monotonic() + WAIT
            while len(_reloads(kit)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a third, were there one, would be logged by now
        finally:
            release.set()
            remove()

    try:
        asyncio.run(storm())
    finally:
        signal.signal(signal.SIGHUP, before)
    assert len(runs) == 2
    assert len(_reloads(kit)) == 2


def test_a_sighup_whose_reload_could_not_start_does_not_stop_the_next(kit: Kit) -> None:
    gateway = kit.gateway()
    before = signal.getsignal(signal.SIGHUP)

    async def twice() -> None:
        loop = asyncio.get_running_loop()
        remove = install_reload_signal(gateway)
        real = loop.run_in_executor

        def shut_down(*args: Any) -> Any:
            raise RuntimeError("cannot schedule new futures after shutdown")

        try:
            loop.run_in_executor = shut_down  # type: ignore[method-assign,assignment]
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0.2)  # handled, and not started
            loop.run_in_executor = real  # type: ignore[method-assign]
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + WAIT
            while not _reloads(kit) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            loop.run_in_executor = real  # type: ignore[method-assign]
            remove()

    try:
        asyncio.run(twice())
    finally:
        signal.signal(signal.SIGHUP, before)
    assert len(_reloads(kit)) == 1


def test_serve_remembers_a_sighup_from_before_the_cli_is_imported() -> None:
    """The command's entry installs the handler that remembers a SIGHUP before it
    imports the CLI (a tenth of a second or more in which a SIGHUP would otherwise end
    ``execgate serve``): seen from an audit hook at the moment that import starts, in a
    fresh interpreter."""
    probe = (
        "import signal, sys\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event == 'import' and args[0] == 'execgate.cli' and not seen:\n"
        "        seen.append(signal.getsignal(signal.SIGHUP))\n"
        "sys.addaudithook(hook)\n"
        "sys.argv = ['execgate', sys.argv[1], '--help']\n"
        "from execgate._entry import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('default' if seen[0] == signal.SIG_DFL else seen[0].__name__, file=sys.stderr)\n"
    )
    for command, handler in (("serve", "hup_before_handler"), ("decide", "default")):
        done = subprocess.run(
            [sys.executable, "-c", probe, command], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines()[-1] == handler
