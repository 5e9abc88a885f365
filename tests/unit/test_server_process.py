"""``execgate serve`` as a real process on a loopback port: real HTTP requests, several
workers sharing one SQLite home, and a graceful stop on SIGTERM.

Each server is started by its own pid in its own session, on a port found free just
before (uvicorn's command line cannot report a port 0 binding), and stopped by that pid.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatekit import GATEWAY_ID, Kit, make_kit
from prometheus_client.parser import text_string_to_metric_families
from test_notify import configure

from execgate.admin import issue_admin_token
from execgate.cli import serve as serve_cli
from execgate.cli.serve import _listening
from execgate.errors import ConfigError
from execgate.keyfile import read_private_key
from execgate.store.sqlite import SQLiteStore

START_TIMEOUT = 10.0
_EXECGATE = (sys.executable, "-m", "execgate")


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    k.clock.t = time.time()  # the server reads the real clock
    yield k
    k.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def stop(self) -> int:
        """SIGTERM, then the exit code (a clean stop is 0)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def serve(kit: Kit, *, workers: int = 1) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if k != "EXECGATE_HOME"}
    for attempt in range(3):
        port = _free_port()
        argv = [*_EXECGATE, "--home", str(kit.home), "serve", "--port", str(port)]
        log = kit.home.parent / f"serve-{port}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [*argv, "--workers", str(workers)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        server = Server(proc, port, log)
        deadline = time.monotonic() + START_TIMEOUT
        ready = False  # one successful probe only: it is the only request served before
        while not ready and proc.poll() is None and time.monotonic() < deadline:
            ready = _ready(server.url)
            time.sleep(0 if ready else 0.05)
        if ready:
            break
        _kill(proc)
        if attempt == 2:
            pytest.fail(f"execgate serve did not start: {server.stderr()}")
    try:
        yield server
    finally:
        _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Whatever a test left running of this one server: its own process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _admin(kit: Kit, method: str, path: str) -> dict[str, str]:
    """An admin token (the home's sample admin, every role) for one call, ``path`` with
    its query if it has one."""
    path, _, query = path.partition("?")
    value = issue_admin_token(
        key=read_private_key(kit.home / "keys" / "admin.jwk"),
        admin="admin",
        audience=GATEWAY_ID,
        method=method,
        path=path,
        query=query,
        now=int(time.time()),
        ttl=60,
    )
    return {"Authorization": f"Bearer {value}"}


def _decide(url: str, submission: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(url + "/v1/decisions", json=submission, timeout=10.0)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_serve_decides_over_http_and_stops_cleanly(kit: Kit) -> None:
    with serve(kit) as server:
        submission = kit.submit()
        proceed = _decide(server.url, submission)
        assert proceed["outcome"] == "proceed"
        assert proceed["receipt"]
        replay = _decide(server.url, submission)
        assert [r["code"] for r in replay["reasons"]] == ["replay.detected"]
        deny = _decide(server.url, kit.submit(kit.request("payments.refund", amount=1)))
        assert [r["code"] for r in deny["reasons"]] == ["policy.denied"]
        logged = httpx.get(f"{server.url}/v1/decisions/{proceed['decision_id']}").json()
        assert logged["decision"]["index"] == proceed["log_index"]
        missing = httpx.get(server.url + "/nope")
        assert missing.json()["error"]["code"] == "route.not_found"
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()
    with closing(SQLiteStore(kit.config.store)) as store:
        assert store.size() == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sigterm_as_soon_as_it_serves_stops_it(kit: Kit, workers: int) -> None:
    """A SIGTERM that comes before uvicorn's handlers are in place (a deploy that stops
    what it just started) stops the service as any other does; it was swallowed, and
    the service served on."""
    env = {k: v for k, v in os.environ.items() if k != "EXECGATE_HOME"}
    argv = [*_EXECGATE, "--home", str(kit.home), "serve", "--port", str(_free_port())]
    proc = subprocess.Popen(
        [*argv, "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        said = proc.stderr.readline()
        assert said.startswith(b"execgate: serving "), said
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        _kill(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def test_serve_warns_when_any_address_may_name_the_call(kit: Kit) -> None:
    """Trusting every address for X-Original-* / X-Forwarded-* lets any client choose
    what forward-auth decides: allowed (behind a proxy that strips them, it may be
    meant), but said at start."""
    config = kit.home / "execgate.toml"
    text = config.read_text(encoding="utf-8")
    old = 'trusted_proxies = ["127.0.0.0/8", "::1/128"]'
    assert old in text
    config.write_text(text.replace(old, 'trusted_proxies = ["0.0.0.0/0", "::1/128"]'))
    with serve(kit) as server:
        assert server.stop() == 0
        warning = (
            "execgate: warning: [server] trusted_proxies holds 0.0.0.0/0: any client may name"
            " the call forward-auth decides"
        )
        assert warning in server.stderr()
    config.write_text(text)
    with serve(kit) as server:
        assert server.stop() == 0
        assert "trusted_proxies holds" not in server.stderr()


def _opened(pid: str, path: Path) -> bool:
    """Whether process ``pid`` has the file open (the SQLite store opens its connection
    on first use, so a worker has the home's store open once it has served a request
    that touches it)."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_two_workers_share_the_home_with_dense_log_indexes(kit: Kit) -> None:
    """Concurrent decisions through two worker processes sharing the one SQLite home: the
    log indexes stay dense. Only one worker has served anything before the batches (the
    readiness probe that answered); the kernel picks which worker accepts, so batches are
    sent until the other has opened the store too, i.e. served decisions."""
    batch = 12
    with serve(kit, workers=2) as server:
        pid = server.proc.pid
        # The readiness probe answered from one worker; the other may still be starting.
        deadline = time.monotonic() + 20
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        while len(children) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) >= 2  # the uvicorn workers (and multiprocessing's helper)
        decided: list[dict[str, Any]] = []
        writers: list[str] = []
        while time.monotonic() < deadline:
            submissions = [kit.submit() for _ in range(batch)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                decided += pool.map(lambda s: _decide(server.url, s), submissions)
            writers = [c for c in children if _opened(c, kit.config.store)]
            if len(writers) >= 2:
                break
        assert len(writers) >= 2, "only one worker served the requests"
        count = len(decided)
        assert {d["outcome"] for d in decided} == {"proceed"}
        assert sorted(d["log_index"] for d in decided) == list(range(count))
        entries, proof = "/v1/audit/entries", f"/v1/audit/proofs/{count - 1}"
        assert httpx.get(server.url + entries).status_code == 401  # entries need `audit`
        read = f"{entries}?end={count}"
        page = httpx.get(server.url + read, headers=_admin(kit, "GET", read)).json()
        assert page["size"] == count + 2  # the refused read and this one are audited
        by_index = {e["index"]: e["record"]["decision_id"] for e in page["entries"]}
        assert by_index == {d["log_index"]: d["decision_id"] for d in decided}
        evidence = httpx.get(server.url + proof, headers=_admin(kit, "GET", proof)).json()
        assert evidence["format"] == "c2sp-tlog-proof"
        assert server.stop() == 0


def _in_flight(port: int, body: bytes) -> socket.socket:
    """A connection whose ``POST /v1/decisions`` has its head and the first ten bytes
    of ``body`` sent: a decision in flight until the rest arrives (``_finished``)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=20)
    head = (
        "POST /v1/decisions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    conn.sendall(head.encode() + body[:10])
    return conn


def _finished(conn: socket.socket, body: bytes) -> dict[str, Any]:
    """The rest of ``body`` sent on an ``_in_flight`` connection: the decision in its
    200 answer (the connection is read until the server closes it)."""
    conn.sendall(body[10:])
    response = b""
    while chunk := conn.recv(65536):
        response += chunk
    status, _, rest = response.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK"
    decision: dict[str, Any] = json.loads(rest.partition(b"\r\n\r\n")[2])
    return decision


def test_sigterm_lets_an_in_flight_decision_finish(kit: Kit) -> None:
    """A decision whose body is still arriving when SIGTERM comes is decided, logged and
    answered before the process exits."""
    body = json.dumps(kit.submit()).encode()
    with serve(kit) as server:
        with _in_flight(server.port, body) as conn:
            time.sleep(0.3)  # the server has the request; its decision is in flight
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert server.proc.poll() is None  # still finishing the request
            assert _finished(conn, body)["outcome"] == "proceed"
        assert server.proc.wait(timeout=15) == 0
    with closing(SQLiteStore(kit.config.store)) as store:
        assert store.size() == 1


def test_a_stopping_worker_delivers_the_approval_notifications_it_still_holds(
    kit: Kit,
) -> None:
    """uvicorn ends a stopped worker by raising SIGTERM again, so nothing at exit runs
    there: the app's shutdown delivers what is still queued (each run at most
    notify_timeout), and a hook that hangs is not left running after the service."""
    delivered = kit.home.parent / "delivered"
    hook = "import sys, time; time.sleep(1); open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"
    configure(kit.home, notify_command=[sys.executable, "-c", hook, str(delivered)])
    with serve(kit, workers=2) as server:
        with httpx.Client(timeout=10.0) as client:  # one connection: one worker's queue
            for n in range(3):
                paused = client.post(
                    server.url + "/v1/decisions", json=kit.submit(kit.request(amount=5000 + n))
                )
                assert paused.json()["outcome"] == "pause", paused.text
        assert server.stop() == 0
    assert delivered.read_text(encoding="utf-8").count("\n") == 3


def _running_with(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hook_that_hangs_does_not_outlive_a_stopped_worker(kit: Kit, workers: int) -> None:
    """Four events for a hook that hangs (8 s of hooks at notify_timeout = 2): the stop
    comes within the first two, and the shutdown gives up 3 s later, killing the hook
    running then and dropping the rest; it is said once (a later drain, at exit, finds
    nothing) and no hook is left running."""
    marker = f"execgate-hung-hook-{os.getpid()}-{time.monotonic_ns()}"
    hook = "import time; time.sleep(120)"
    configure(kit.home, notify_command=[sys.executable, "-c", hook, marker], notify_timeout=2)
    try:
        with serve(kit, workers=workers) as server:
            with httpx.Client(timeout=10.0) as client:  # one connection: one worker's queue
                for n in range(4):
                    paused = client.post(
                        server.url + "/v1/decisions", json=kit.submit(kit.request(amount=5000 + n))
                    )
                    assert paused.json()["outcome"] == "pause", paused.text
            deadline = time.monotonic() + 5
            while not _running_with(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _running_with(marker)  # the hook runs, and hangs
            assert server.stop() == 0
            said = server.stderr().count("exiting with approval notifications undelivered")
        assert _running_with(marker) == []
        assert said == 1
    finally:
        for pid in _running_with(marker):
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("home", "said"),
    [("none", "no gateway home at"), ("empty", "is not a gateway home")],
)
def test_serve_refuses_a_broken_home_before_binding(tmp_path: Path, home: str, said: str) -> None:
    """Told what is wrong and what to do, and nothing is made in it (an empty directory
    stays one that ``execgate init`` takes)."""
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [*_EXECGATE, "--home", str(tmp_path / home), "serve", "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("execgate: error:")
    assert said in result.stderr
    assert "execgate init" in result.stderr
    assert list((tmp_path / "empty").iterdir()) == []


def _services(kit: Kit) -> list[Path]:
    """The service directories in the home's run/ (beside them: serve.lock)."""
    return sorted((kit.home / "run").glob("execgate-service-*"))


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_a_port_in_use_says_which_and_exits_3(kit: Kit, workers: int) -> None:
    """The address is named, with what to do, and nothing claims to be serving."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        argv = ["--home", str(kit.home), "serve", "--port", str(port), "--workers", str(workers)]
        result = subprocess.run(
            [*_EXECGATE, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 3
    assert f"execgate: error: cannot listen on 127.0.0.1:{port}:" in result.stderr
    assert "choose another with --port" in result.stderr
    assert "serving" not in result.stderr
    assert _services(kit) == []  # the service's directory is gone


def test_the_sockets_listen_before_serve_says_it_serves() -> None:
    """Bound and listening at once: another socket (reusing addresses, as a second
    service's would) cannot bind the port in a window before the workers listen."""
    made = _listening("127.0.0.1", 0, 16)
    assert made is not None
    [sock] = made
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        port = sock.getsockname()[1]
        assert _listening("127.0.0.1", port, 16) is None
        with socket.socket() as late:
            late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="in use"):
                late.bind(("127.0.0.1", port))


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_every_address_of_both_families_and_ipv6_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """``''`` is every address: an IPv4 socket and an IPv6 one that takes IPv6 only
    (the IPv4 one has the rest). ``::`` alone is left to the system's default, which on
    Linux also takes IPv4. An IPv6 address is shown in brackets."""
    if not _ipv6():
        pytest.skip("IPv6 cannot be bound on this machine: the IPv6 cases are not checked")
    every = _listening("", 0, 16)
    assert every is not None
    assert sorted(s.family for s in every) == [socket.AF_INET, socket.AF_INET6]
    for s in every:
        with s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    made = _listening("::", 0, 16)
    assert made is not None
    [any6] = made
    with any6:
        default = int(Path("/proc/sys/net/ipv6/bindv6only").read_text())
        assert any6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == default
    made = _listening("::1", 0, 16)
    assert made is not None
    with made[0]:
        port = made[0].getsockname()[1]
        capsys.readouterr()
        assert _listening("::1", port, 16) is None
        assert f"cannot listen on [::1]:{port}: " in capsys.readouterr().err


def test_an_address_this_machine_lacks_is_skipped_if_another_listens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name whose addresses include one no interface here has (``::1`` where IPv6 is
    off; here an address of the documentation range) listens on the rest, and says
    which it skipped; with none left, it is an error naming the address."""
    real = socket.getaddrinfo
    names = {
        "both.test": [("127.0.0.1", socket.AF_INET), ("192.0.2.1", socket.AF_INET)],
        "absent.test": [("192.0.2.1", socket.AF_INET)],
    }

    def resolve(host: str | None, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in names:
            return real(host, port, *args, **kwargs)
        return [(f, socket.SOCK_STREAM, 6, "", (a, port)) for a, f in names[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    made = _listening("both.test", 0, 16)
    assert made is not None
    [sock] = made
    with sock:
        assert sock.getsockname()[0] == "127.0.0.1"
    assert "execgate: warning: not listening on 192.0.2.1:0: " in capsys.readouterr().err
    assert _listening("absent.test", 0, 16) is None
    err = capsys.readouterr().err
    assert "execgate: error: cannot listen on 192.0.2.1:0: " in err
    assert "no interface here has that address: check --host" in err


def _workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes ``pid`` started (not multiprocessing's helper)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def _both_workers(server: Server) -> list[int]:
    """The two workers of ``serve --workers 2``, once both have started."""
    deadline = time.monotonic() + 20
    workers = _workers_of(server.proc.pid)
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        workers = _workers_of(server.proc.pid)
    assert len(workers) == 2
    return workers


def _alive(pid: int) -> bool:
    """Running (a zombie, not yet reaped by whoever adopted it, has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _start_once(kit: Kit) -> subprocess.CompletedProcess[str]:
    """``serve`` on a port already taken: it makes its directory (cleaning up run/ on
    the way) and stops with exit 3; what it said on stderr."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        argv = ["--home", str(kit.home), "serve", "--port", str(held.getsockname()[1])]
        return subprocess.run(
            [*_EXECGATE, *argv], capture_output=True, text=True, timeout=30, check=False
        )


def test_workers_stop_when_the_supervisor_is_killed(kit: Kit) -> None:
    """A worker whose ``serve`` process is gone stops instead of serving on with no one
    to replace a dead worker or pass on SIGHUP, as on SIGTERM: a decision in flight is
    finished and answered first. Until then the service's directory is kept (the worker
    holds its lock); once it has stopped, the next ``serve`` removes it."""
    body = json.dumps(kit.submit()).encode()
    with serve(kit, workers=2) as server:
        workers = _both_workers(server)
        [left] = _services(kit)
        with _in_flight(server.port, body) as conn:
            time.sleep(0.3)
            server.proc.kill()
            server.proc.wait(timeout=10)
            time.sleep(2.0)  # each worker has seen its supervisor gone
            assert sum(map(_alive, workers)) == 1  # the other had nothing in flight
            stopping = _start_once(kit)
            assert left.exists()  # its worker still holds it
            assert "1 other service(s) run on this home" in stopping.stderr
            assert _finished(conn, body)["outcome"] == "proceed"
        deadline = time.monotonic() + 15
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers))
        assert "the serve process (pid" in server.stderr()
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/healthz", timeout=2.0)
    after = _start_once(kit)
    assert f"removed 1 directory(ies) left in {kit.home / 'run'}" in after.stderr
    assert not left.exists()
    with closing(SQLiteStore(kit.config.store)) as store:
        assert store.size() == 1


def _healthz_counted(url: str) -> float:
    """GET /healthz answers with 200, summed over every worker, from a scrape."""
    text = httpx.get(url + "/metrics", timeout=10.0).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "execgate_http_requests_total" and sample.labels == {
                "method": "GET",
                "route": "/healthz",
                "status": "200",
            }:
                return sample.value
    return 0.0


def test_a_killed_worker_is_replaced_and_its_replacement_keeps_its_metrics(kit: Kit) -> None:
    """uvicorn replaces a worker killed with SIGKILL; the replacement takes the dead
    worker's metrics slot, so the counts stay and the service's metrics files do not
    grow with each restart."""
    with serve(kit, workers=2) as server:
        workers = _both_workers(server)
        for _ in range(20):
            assert httpx.get(server.url + "/healthz").status_code == 200
        before = _healthz_counted(server.url)
        assert before >= 20
        [service] = _services(kit)
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = _workers_of(server.proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.05)
        assert workers[0] not in now, now
        assert len(now) == 2, now
        served = 0
        while served < 20 and time.monotonic() < deadline:
            with httpx.Client() as client:  # a new connection each: either worker answers
                served += client.get(server.url + "/healthz").status_code == 200
        assert served == 20
        # A worker renders its metrics at most once a second: a scrape sooner after the
        # one above, answered by the same worker, is that one's text again.
        scraped = time.monotonic() + 5
        after = _healthz_counted(server.url)
        while after < before + 20 and time.monotonic() < scraped:
            time.sleep(0.2)
            after = _healthz_counted(server.url)
        assert after >= before + 20  # what the dead worker counted is still counted
        files = {p.name for p in service.rglob("*.db")}
        assert "counter_slot0.db" in files
        assert files <= {f"{kind}_slot{n}.db" for kind in ("counter", "histogram") for n in (0, 1)}
        assert server.stop() == 0


def test_serve_removes_what_a_killed_service_left_and_nothing_else(kit: Kit) -> None:
    """The next ``serve`` on the home removes the directory of a service killed with
    SIGKILL (its lock is free) and one whose ``serve`` died before locking it (no lock
    file), never one of a service still running, nor anything not named as its own, nor
    one whose lock is not a file (it would not wait on a FIFO)."""
    run = kit.home / "run"
    with serve(kit) as killed:
        [left] = _services(kit)
        killed.proc.kill()
        killed.proc.wait(timeout=10)
    unlocked = run / "execgate-service-unlocked"
    unlocked.mkdir()
    foreign = run / "by-hand"
    foreign.mkdir()
    fifo = run / "execgate-service-fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "service.lock")
    with serve(kit) as running:
        [mine] = set(_services(kit)) - {fifo}
        assert not left.exists()
        assert not unlocked.exists()
        assert "removed 2 directory(ies) left in" in running.stderr()
        assert left.name in running.stderr()
        assert "other service(s)" not in running.stderr()
        with serve(kit) as second:
            assert mine.exists()
            assert "removed" not in second.stderr()
            assert "1 other service(s) run on this home" in second.stderr()
            assert _decide(running.url, kit.submit())["outcome"] == "proceed"
            assert second.stop() == 0
        assert running.stop() == 0
    assert sorted(p.name for p in run.iterdir()) == [
        "by-hand",
        "execgate-service-fifo",
        "serve.lock",
    ]


def test_serve_refuses_a_run_directory_others_may_use(kit: Kit) -> None:
    """Whoever may write in run/ could plant what a service reads, or make it wait."""
    run = kit.home / "run"
    run.mkdir(mode=0o700)
    run.chmod(0o770)
    result = _start_once(kit)
    assert result.returncode == 2
    assert f"{run} may be used by others (mode 0770" in result.stderr
    assert f"chmod 700 {run}" in result.stderr
    assert _services(kit) == []


def test_one_worker_has_no_supervisor_whatever_the_environment_says(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one worker the serve process serves: a supervisor pid left in its
    environment (by a wrapper, or a shell that ran a service before) is not its own."""
    monkeypatch.setenv("EXECGATE_SUPERVISOR_PID", "1")
    with serve(kit) as server:
        assert _decide(server.url, kit.submit())["outcome"] == "proceed"
        assert server.stop() == 0


def test_serve_refuses_a_run_directory_of_another_user(kit: Kit) -> None:
    """Not told to chmod what already has the right mode: told whose it is."""
    if os.geteuid() != 0:
        pytest.skip("only root can give run/ to another user here: the owner check is not run")
    run = kit.home / "run"
    run.mkdir(mode=0o700)
    os.chown(run, 1, 1)
    result = _start_once(kit)
    assert result.returncode == 2
    assert f"{run} belongs to uid 1, not to this user (uid 0)" in result.stderr
    assert "chmod" not in result.stderr
    assert _services(kit) == []


def test_a_serve_waits_for_another_starting_then_says_who_to_look_for(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run/serve.lock`` is held while a serve makes its directory; one held too long
    (a serve stopped while starting) is an error naming the file, not a silent hang."""
    monkeypatch.setattr(serve_cli, "RUN_LOCK_WAIT", 0.3)
    run = kit.home / "run"
    run.mkdir(mode=0o700)
    with (run / "serve.lock").open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"has held .*serve\.lock for over 0 s") as refused:
            serve_cli._run_lock(run / "serve.lock")
        assert time.monotonic() - started >= 0.3
        assert "fuser" in str(refused.value)
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(serve_cli._run_lock(run / "serve.lock"))


def test_a_new_connection_is_refused_while_the_workers_drain(kit: Kit) -> None:
    """After SIGTERM the workers finish what is in flight; meanwhile a new connection
    is refused at once, not left waiting where no worker will take it."""
    body = json.dumps(kit.submit()).encode()
    with serve(kit, workers=2) as server:
        with _in_flight(server.port, body) as conn:
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            refused = False
            while not refused and time.monotonic() < deadline:
                time.sleep(0.1)
                try:
                    socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                except ConnectionRefusedError:
                    refused = True
            assert refused
            assert server.proc.poll() is None  # still draining
            assert _finished(conn, body)["outcome"] == "proceed"
        assert server.proc.wait(timeout=15) == 0
    with closing(SQLiteStore(kit.config.store)) as store:
        assert store.size() == 1


def test_a_retired_directory_left_half_removed_goes_at_the_next_start(kit: Kit) -> None:
    """A stopping service renames its directory out of the service names before it
    removes it (a start meeting it half removed would take it for a killed service's);
    one only renamed (its serve killed meanwhile) is removed by the next start, quietly."""
    run = kit.home / "run"
    run.mkdir(mode=0o700)
    retired = run / ".stopped-execgate-service-abc"
    retired.mkdir()
    (retired / "policy.yaml").write_text("version: 1\n")
    result = _start_once(kit)
    assert not retired.exists()
    assert "removed" not in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["serve.lock"]
