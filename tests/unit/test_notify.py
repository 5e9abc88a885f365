"""Approval notifications: real programs and a real local webhook, and none of them can
change a decision.

Each test configures ``[approvals]`` in a real home's ``execgate.toml`` and opens the
gateway with ``Gateway.open``, so the config, the ``Notifier`` and the pipeline's events
are tested together. Hooks that fail, hang, refuse or redirect are reported on the
``execgate.notify`` logger, and the decision is returned at once and is the same as
without a hook.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from gatekit import Kit, make_kit

from execgate import notify
from execgate.approvals import sign_review
from execgate.cli import main
from execgate.errors import ConfigError
from execgate.home import CONFIG_NAME, load_config
from execgate.keyfile import read_private_key
from execgate.model import Decision, Outcome
from execgate.notify import Notifier
from execgate.pipeline import Gateway
from execgate.server.app import POLICY_IN_FORCE_ENV, SUPERVISOR_ENV
from execgate.server.metrics import MULTIPROC_ENV

# A hook that appends "EVENT JSON" to the file named by its argument.
RECORD = (
    "import os, sys; open(sys.argv[1], 'a').write("
    "os.environ['EXECGATE_EVENT'] + ' ' + sys.stdin.read() + '\\n')"
)
SECRET = "s3cret-token-4711"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


@pytest.fixture
def caplog_notify(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="execgate.notify")
    return caplog


def configure(home: Path, **entries: object) -> None:
    """Replace the ``[approvals]`` section init wrote with ``entries`` (as TOML values)."""
    path = home / CONFIG_NAME
    text = path.read_text()
    head, rest = text.split("[approvals]\n")
    tail = rest[rest.index("\n[") :]
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in entries.items())
    path.write_text(f"{head}[approvals]\n{lines}{tail}")


@dataclass
class Hooked:
    """A gateway opened from a home with ``[approvals]`` hooks, and one artifact."""

    kit: Kit
    gw: Gateway
    hook: Notifier
    artifact: str

    def decide(self, amount: int = 5000) -> Decision:
        request = self.kit.request(amount=amount)
        return self.gw.decide(self.kit.submission(request, self.artifact))

    def pause(self, amount: int = 5000) -> str:
        """Decide a transfer that must pause; return its approval id."""
        decision = self.decide(amount)
        assert decision.outcome is Outcome.PAUSE, decision
        assert decision.approval_id == decision.decision_id
        assert decision.approval_id is not None
        return decision.approval_id

    def review(self, approval_id: str, verdict: str, who: str = "alice") -> None:
        key = read_private_key(self.kit.home / "keys" / f"approver-{who}.jwk")
        pending, _ = self.gw.approval(approval_id)
        now = self.kit.clock.now
        token = sign_review(key=key, approver=who, pending=pending, verdict=verdict, now=now)
        self.gw.review(approval_id, token)


def hooked(kit: Kit, **entries: object) -> Hooked:
    configure(kit.home, **entries)
    gw = kit.gateway()
    hook = gw._notify_hook
    assert isinstance(hook, Notifier)
    return Hooked(kit, gw, hook, kit.artifact())


def events(path: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for line in path.read_text().splitlines():
        name, _, body = line.partition(" ")
        found.append((name, json.loads(body)))
    return found


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "execgate.notify"]


def assert_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        message = record.getMessage()
        assert SECRET not in message
        assert "amount" not in message  # never the event itself


# -- config --------------------------------------------------------------------------------


def test_config_reads_the_hooks_and_defaults(kit: Kit) -> None:
    config = load_config(kit.home)  # what init wrote: no hook, the default timeout
    assert (config.notify_command, config.notify_url, config.notify_timeout) == (None, None, 5)
    assert kit.gateway()._notify_hook is None
    configure(
        kit.home,
        notify_command=["/usr/local/bin/page", "--team", "finance"],
        notify_url="https://chat.example:8443/hooks/x?token=y",
        notify_timeout=30,
    )
    config = load_config(kit.home)
    assert config.notify_command == ("/usr/local/bin/page", "--team", "finance")
    assert config.notify_url == "https://chat.example:8443/hooks/x?token=y"
    assert config.notify_timeout == 30
    configure(kit.home)
    assert load_config(kit.home).notify_timeout == 5


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ({"notify_command": "/bin/true"}, "notify_command must be a list of 1-64 non-empty"),
        ({"notify_command": []}, "notify_command must be a list"),
        ({"notify_command": ["/bin/true", ""]}, "notify_command must be a list"),
        ({"notify_command": ["/bin/true", 3]}, "notify_command must be a list"),
        ({"notify_command": ["page-approvers"]}, "notify_command must name the program by its"),
        ({"notify_command": ["/bin/x", "y" * 5000]}, "argument longer than 4096"),
        ({"notify_url": "ftp://127.0.0.1/x"}, "notify_url must be an http:// or https:// URL"),
        ({"notify_url": "file:///etc/passwd"}, "notify_url must be an http://"),
        ({"notify_url": "http://"}, "notify_url must be an http://"),
        ({"notify_url": "http://127.0.0.1:99999/"}, "notify_url must be an http://"),
        ({"notify_url": "http://[::1"}, "notify_url must be an http://"),  # urlsplit raises
        ({"notify_url": "http://127.0.0.1/a b"}, "notify_url must be an http://"),
        ({"notify_url": ["http://x/"]}, "notify_url must be an http://"),
        ({"notify_url": "http://u:pw@127.0.0.1/"}, "must not hold a user name or password"),
        ({"notify_url": "http://127.0.0.1:8080/hooks/\u00e9"}, "must be ASCII: percent-encode"),
        ({"notify_url": "https://b\u00fccher.example/x"}, "its xn-- form"),
        ({"notify_timeout": 0}, "notify_timeout must be whole seconds in [1, 30]"),
        ({"notify_timeout": 31}, "notify_timeout must be whole seconds in [1, 30]"),
        ({"notify_timeout": 2.5}, "notify_timeout must be whole seconds"),
        ({"notify_timeout": True}, "notify_timeout must be whole seconds"),
        ({"notify_timeout": "5"}, "notify_timeout must be whole seconds"),
        ({"notify_cmd": ["/bin/true"]}, "[approvals] may hold only"),
    ],
)
def test_config_refuses_bad_hooks(kit: Kit, entries: dict[str, object], fragment: str) -> None:
    configure(kit.home, **entries)
    with pytest.raises(ConfigError) as info:
        load_config(kit.home)
    message = str(info.value)
    assert message.startswith(f"{kit.home / CONFIG_NAME}: [approvals] ")
    assert fragment in message
    assert ":pw@" not in message


def test_notifier_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="needs a command, a URL, or both"):
        Notifier()
    for timeout in (0, 31, True):
        with pytest.raises(ValueError, match=r"timeout must be whole seconds in \[1, 30\]"):
            Notifier(url="http://127.0.0.1/", timeout=timeout)
    with pytest.raises(ValueError, match="absolute path"):
        Notifier(command=["sh", "-c", "true"])
    hook = Notifier(command=["/bin/x", SECRET], url=f"http://127.0.0.1:1/{SECRET}?t={SECRET}")
    assert repr(hook) == "Notifier(command='/bin/x', url='http://127.0.0.1:1', timeout=5)"


# -- a program -----------------------------------------------------------------------------


def test_the_program_gets_none_of_the_services_own_environment(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metrics directory, the pinned policy and the supervisor's pid of ``execgate
    serve`` are the service's, not a hook's; the rest of the environment is passed on."""
    for name in (MULTIPROC_ENV, POLICY_IN_FORCE_ENV, SUPERVISOR_ENV, "HOOK_SETTING"):
        monkeypatch.setenv(name, str(tmp_path / name))
    log = tmp_path / "env.txt"
    dump = "import os, sys, json; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    h = hooked(kit, notify_command=[sys.executable, "-c", dump, str(log)])
    h.pause()
    assert h.hook.flush(10)
    seen = json.loads(log.read_text())
    assert seen["EXECGATE_EVENT"] == "opened"
    assert seen["HOOK_SETTING"] == str(tmp_path / "HOOK_SETTING")
    assert MULTIPROC_ENV not in seen
    assert POLICY_IN_FORCE_ENV not in seen
    assert SUPERVISOR_ENV not in seen


def test_each_event_reaches_the_program_in_order(kit: Kit, tmp_path: Path) -> None:
    log = tmp_path / "events.txt"
    h = hooked(kit, notify_command=[sys.executable, "-c", RECORD, str(log)])
    paused = h.pause()
    h.review(paused, "approve")
    resumed = h.decide()
    assert resumed.outcome is Outcome.PROCEED
    second = h.pause(amount=7000)
    h.review(second, "deny", who="bob")
    assert h.decide(amount=7000).outcome is Outcome.DENY
    assert h.hook.flush(10)

    seen = events(log)
    assert [name for name, _ in seen] == ["opened", "approved", "resumed", "opened", "denied"]
    assert all(body["event"] == name and body["gateway"] == "gw-test" for name, body in seen)
    opened = seen[0][1]
    assert opened["approval"]["approval_id"] == paused
    assert opened["approval"]["request"]["args"] == {"amount": 5000}
    assert opened["approval"]["groups"] == ["finance"]
    assert opened["decision"]["outcome"] == "pause"
    assert seen[1][1]["approval"]["approval_id"] == paused
    assert seen[2][1]["decision"]["outcome"] == "proceed"
    assert seen[2][1]["decision"]["approval_id"] == paused
    assert seen[4][1]["approval"]["approval_id"] == second


def test_a_failing_program_changes_nothing(
    kit: Kit, caplog_notify: pytest.LogCaptureFixture
) -> None:
    h = hooked(kit, notify_command=[sys.executable, "-c", "import sys; sys.exit(1)", SECRET])
    paused = h.pause()
    h.review(paused, "approve")
    assert h.decide().outcome is Outcome.PROCEED
    assert h.hook.flush(10)
    assert warnings(caplog_notify) == [
        f"approval notification {event!r} of approval {paused}: {sys.executable} exited with"
        " status 1"
        for event in ("opened", "approved", "resumed")
    ]
    assert_no_secret(caplog_notify)


def test_a_program_killed_by_a_signal(kit: Kit, caplog_notify: pytest.LogCaptureFixture) -> None:
    h = hooked(kit, notify_command=["/bin/sh", "-c", "kill -TERM $$"])
    paused = h.pause()
    assert h.hook.flush(10)
    assert warnings(caplog_notify) == [
        f"approval notification 'opened' of approval {paused}: /bin/sh was killed by signal 15"
    ]


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_hanging_program_is_killed_at_the_timeout_with_what_it_started(
    kit: Kit, tmp_path: Path, caplog_notify: pytest.LogCaptureFixture
) -> None:
    pids = tmp_path / "pids"
    script = 'sleep 30 & echo $! > "$1"; wait'
    h = hooked(kit, notify_command=["/bin/sh", "-c", script, "sh", str(pids)], notify_timeout=1)
    started = time.monotonic()
    decision = h.decide()
    assert time.monotonic() - started < 0.8  # the decision does not wait for the hook
    assert decision.outcome is Outcome.PAUSE
    assert h.gw.approvals()[0].approval_id == decision.decision_id
    assert h.hook.flush(10)
    assert time.monotonic() - started >= 1
    assert warnings(caplog_notify) == [
        f"approval notification 'opened' of approval {decision.decision_id}: /bin/sh did not"
        " finish within 1 s and was killed"
    ]
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(child)  # the whole process group was killed


def test_a_program_another_user_may_change_is_never_run(
    kit: Kit, tmp_path: Path, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """The hook runs as the gateway, which reads the node key: before each run (the
    program may change after the start), one any user may write, or reached through a
    directory or link any user may change, is not run and the delivery is logged as
    refused. It is checked where it runs, so no other command is refused for it."""
    shared, safe = tmp_path / "shared", tmp_path / "safe"
    shared.mkdir()
    safe.mkdir()
    program = safe / "page.sh"
    ran = tmp_path / "ran"
    program.write_text(f"#!/bin/sh\ncat > /dev/null\necho ran >> {ran}\n")
    program.chmod(0o755)
    hook = shared / "hook"
    hook.symlink_to(program)
    h = hooked(kit, notify_command=[str(hook)])
    cases = (
        (program, f"program {hook} may be changed by another user"),
        (shared, f"directory {shared}, which holds {hook}, may be written by any user"),
        (safe, f"directory {safe}, which holds {program}, may be written by any user"),
    )
    for n, (target, fragment) in enumerate(cases):
        mode = stat.S_IMODE(target.stat().st_mode)
        target.chmod(mode | stat.S_IWOTH)
        assert load_config(kit.home).notify_command == (str(hook),)  # it still loads
        paused = h.pause(5000 + n)  # a new request: a new approval, a new event
        assert h.hook.flush(10)
        [warning] = warnings(caplog_notify)
        assert warning.startswith(
            f"approval notification 'opened' of approval {paused} not delivered: "
        )
        assert fragment in warning
        caplog_notify.clear()
        target.chmod(mode)
    assert not ran.exists()
    h.pause(6000)
    assert h.hook.flush(10)
    assert warnings(caplog_notify) == []
    assert ran.read_text() == "ran\n"


def test_a_program_that_cannot_start(kit: Kit, caplog_notify: pytest.LogCaptureFixture) -> None:
    h = hooked(kit, notify_command=["/nonexistent/page-approvers", SECRET])
    paused = h.pause()
    assert h.hook.flush(10)
    assert warnings(caplog_notify) == [
        f"approval notification 'opened' of approval {paused} not delivered: cannot run"
        " /nonexistent/page-approvers: No such file or directory"
    ]


# -- a webhook -----------------------------------------------------------------------------


class _Server(http.server.HTTPServer):
    status = 204
    received: list[tuple[str, dict[str, str], bytes]]


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server = cast(_Server, self.server)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.received.append((self.path, dict(self.headers), body))
        self.send_response(server.status)
        if 300 <= server.status < 400:
            self.send_header("Location", f"{self.path}-elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Hook)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def url_of(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/hooks/{SECRET}?token={SECRET}"


def test_the_webhook_receives_each_event_and_the_program_too(
    kit: Kit, tmp_path: Path, webhook: _Server
) -> None:
    log = tmp_path / "events.txt"
    h = hooked(
        kit,
        notify_url=url_of(webhook),
        notify_command=[sys.executable, "-c", RECORD, str(log)],
    )
    paused = h.pause()
    h.review(paused, "approve")
    assert h.hook.flush(10)
    assert [name for name, _ in events(log)] == ["opened", "approved"]
    assert [path for path, _, _ in webhook.received] == [f"/hooks/{SECRET}?token={SECRET}"] * 2
    _, headers, body = webhook.received[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Execgate-Event"] == "opened"
    doc = json.loads(body)
    assert doc["event"] == "opened"
    assert doc["approval"]["approval_id"] == paused
    assert json.loads(webhook.received[1][2])["event"] == "approved"


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("500", "answered HTTP 500"),
        ("302", "answered HTTP 302 (redirects are not followed)"),
        ("refused", "not delivered to http://127.0.0.1:{port}: Connection refused"),
        ("hangs", "not delivered to http://127.0.0.1:{port}: timed out"),
    ],
)
def test_a_webhook_that_fails_refuses_or_hangs_changes_nothing(
    kit: Kit,
    webhook: _Server,
    caplog_notify: pytest.LogCaptureFixture,
    kind: str,
    expected: str,
) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        if kind == "refused":
            port = _refused_port()
        elif kind == "hangs":
            port = silent.getsockname()[1]
        else:
            webhook.status = int(kind)
            port = webhook.server_address[1]
        url = f"http://127.0.0.1:{port}/hooks/{SECRET}?token={SECRET}"
        h = hooked(kit, notify_url=url, notify_timeout=1)
        started = time.monotonic()
        paused = h.pause()
        assert time.monotonic() - started < 0.8  # the decision does not wait for the hook
        h.review(paused, "approve")
        assert h.decide().outcome is Outcome.PROCEED
        assert h.hook.flush(10)
    messages = warnings(caplog_notify)
    assert len(messages) == 3
    for event, message in zip(("opened", "approved", "resumed"), messages, strict=True):
        # Which approval (the id of the decision that paused): whose approvers were not told.
        assert message.startswith(f"approval notification {event!r} of approval {paused}")
        assert message.endswith(expected.format(port=port))
    assert_no_secret(caplog_notify)
    if kind == "302":  # the redirect was not followed
        assert [p for p, _, _ in webhook.received] == [f"/hooks/{SECRET}?token={SECRET}"] * 3


def test_a_webhook_that_drips_its_answer_is_cut_at_the_timeout(
    kit: Kit, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """Each byte of the answer comes within the timeout, the whole never does: the
    delivery is cut at the timeout, not once per byte, and the next event goes out."""
    stop = threading.Event()

    def drip(listener: socket.socket) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                with suppress(OSError):
                    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 1000:
                        if stop.wait(0.2):
                            break
                        conn.sendall(bytes([byte]))

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        thread = threading.Thread(target=drip, args=(listener,), daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        h = hooked(kit, notify_url=f"http://127.0.0.1:{port}/hooks/{SECRET}", notify_timeout=1)
        started = time.monotonic()
        paused = h.pause()
        h.review(paused, "approve")
        assert h.hook.flush(20)
        elapsed = time.monotonic() - started
        stop.set()
    thread.join(5)
    # Two events, each cut at 1 s: well under the 200 s a byte-by-byte answer would take.
    assert elapsed < 10
    messages = warnings(caplog_notify)
    cut = f"not delivered to http://127.0.0.1:{port}: timed out"
    assert [m.endswith(cut) for m in messages] == [True, True]
    assert_no_secret(caplog_notify)


def test_a_resolver_that_hangs_is_cut_at_the_timeout(
    monkeypatch: pytest.MonkeyPatch, webhook: _Server, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """Name resolution counts within the timeout: a resolver that never answers costs a
    delivery the timeout, not the queue; while it still hangs, later events fail at once
    (one lookup at a time, not a thread more per event), and once it answers, deliveries
    resume. The system resolver cannot be made to hang here, so getaddrinfo is replaced
    for two made-up names: one hangs (then fails), the other is the webhook's address,
    and the Host header still names the URL's host."""
    stuck = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "resolver-hangs.test":
            stuck.wait(30)  # what a resolver with no reachable name server does
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host == "webhook.test":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    port = webhook.server_address[1]
    hook = Notifier(url=f"http://resolver-hangs.test:{port}/hooks/{SECRET}", timeout=1)
    started = time.monotonic()
    hook({"event": "opened"})
    hook({"event": "approved"})
    assert hook.flush(10)
    elapsed = time.monotonic() - started
    stuck.set()
    assert 1 <= elapsed < 1.9  # the first cut at its 1 s, the second at once
    origin = f"http://resolver-hangs.test:{port}"
    assert warnings(caplog_notify) == [
        f"approval notification 'opened' not delivered to {origin}: name resolution timed out",
        f"approval notification 'approved' not delivered to {origin}: the resolver has not"
        " answered an earlier lookup yet",
    ]
    deadline = time.monotonic() + 10
    while not hook._lookup.done.is_set() and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    hook({"event": "resumed"})
    assert hook.flush(10)
    assert warnings(caplog_notify)[-1] == (
        f"approval notification 'resumed' not delivered to {origin}: cannot resolve the"
        " host: Name or service not known"
    )
    fine = Notifier(url=f"http://webhook.test:{port}/hooks/{SECRET}", timeout=1)
    fine({"event": "opened"})
    assert fine.flush(10)
    [(path, headers, _)] = webhook.received
    assert path == f"/hooks/{SECRET}"
    assert headers["Host"] == f"webhook.test:{port}"
    assert_no_secret(caplog_notify)


def test_connecting_counts_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """A host with several addresses that all take connections and never complete them
    (a listener whose queue is full: the kernel drops each new handshake) costs the
    delivery its timeout in all, not the timeout once per address."""
    real = socket.getaddrinfo
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue
            monkeypatch.setattr(
                socket,
                "getaddrinfo",
                lambda host, *args, **kwargs: real("127.0.0.1", *args, **kwargs) * 3,
            )
            hook = Notifier(url=f"http://three-addresses.test:{port}/hooks", timeout=1)
            started = time.monotonic()
            hook({"event": "opened"})
            assert hook.flush(10)
            elapsed = time.monotonic() - started
    assert elapsed < 2  # three addresses, each given the whole second, took over 3 s
    assert warnings(caplog_notify) == [
        f"approval notification 'opened' not delivered to http://three-addresses.test:{port}:"
        " timed out"
    ]


def test_a_name_that_cannot_be_resolved_is_reported(
    caplog_notify: pytest.LogCaptureFixture,
) -> None:
    """A name no resolver can be asked for (an empty label) is refused before any query:
    the same on every machine, whatever its name servers."""
    hook = Notifier(url="http://hooks..example:8080/hooks", timeout=5)
    hook({"event": "opened"})
    assert hook.flush(10)
    assert warnings(caplog_notify) == [
        "approval notification 'opened' not delivered to http://hooks..example:8080:"
        " cannot resolve the host: UnicodeError"
    ]


# -- the notifier itself -------------------------------------------------------------------


def test_a_full_queue_drops_events_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog_notify: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(notify, "MAX_QUEUED", 2)
    log = tmp_path / "events.txt"
    slow = f"import time; time.sleep(0.2); exec({RECORD!r})"
    hook = Notifier(command=[sys.executable, "-c", slow, str(log)])
    hook({"event": "e0"})
    deadline = time.monotonic() + 5
    while hook.pending() and time.monotonic() < deadline:  # e0 is being delivered
        time.sleep(0.005)
    for i in range(1, 6):
        hook({"event": f"e{i}"})
    assert hook.flush(10)
    assert [name for name, _ in events(log)] == ["e0", "e1", "e2"]
    assert [m for m in warnings(caplog_notify) if "dropped" in m] == [
        f"approval notification 'e{i}' dropped: 2 earlier notifications are still waiting"
        " for the hook"
        for i in (3, 4, 5)
    ]


def test_a_large_event_goes_without_the_arguments(
    tmp_path: Path, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """What waits in the queue stays small: a pause of a 1 MiB request notifies without
    its arguments (the hash binds them), and an event still too large is dropped, said."""
    log = tmp_path / "events.txt"
    hook = Notifier(command=[sys.executable, "-c", RECORD, str(log)])
    request = {"action": "a", "resource": "r", "runtime": "x", "args": {"blob": "b" * 2**20}}
    hook({"event": "opened", "approval": {"approval_id": "p1", "request": request}})
    hook({"event": "opened", "approval": {"approval_id": "p2", "rule": "r" * 2**17}})
    hook({"event": "opened", "approval": {"approval_id": "p3", "request": {"args": {"n": 1}}}})
    assert hook.flush(10)
    delivered = events(log)
    assert [body["approval"]["approval_id"] for _, body in delivered] == ["p1", "p3"]
    first = delivered[0][1]["approval"]
    assert first["args_omitted"] is True
    assert first["request"] == {"action": "a", "resource": "r", "runtime": "x"}
    assert delivered[1][1]["approval"]["request"] == {"args": {"n": 1}}  # small: whole
    assert [m for m in warnings(caplog_notify) if "dropped" in m] == [
        "approval notification 'opened' dropped: larger than 65536 bytes even without the"
        " request's arguments"
    ]


def test_an_event_that_is_not_json_is_reported_not_raised(
    caplog_notify: pytest.LogCaptureFixture,
) -> None:
    hook = Notifier(url="http://127.0.0.1:1/")
    hook({"event": "opened", "approval": object()})
    assert hook.flush(1)
    assert warnings(caplog_notify) == [
        "approval notification 'opened' not delivered: it is not JSON (TypeError)"
    ]


def test_drain_waits_for_notifications_in_flight(tmp_path: Path) -> None:
    log = tmp_path / "events.txt"
    hook = Notifier(command=[sys.executable, "-c", RECORD, str(log)])
    hook({"event": "opened"})
    notify.drain()
    assert hook.pending() == 0
    assert [name for name, _ in events(log)] == ["opened"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_drain_that_waited_long_enough_drops_the_rest_and_kills_the_hook_running(
    tmp_path: Path, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """A hook in a session of its own outlives the process unless killed: the drain
    kills the one running when it stops waiting, drops what waits, says so once, and a
    later drain (at exit) has nothing left to wait for. (Timeout 2 s: the drain gives up
    at 3 s, a second away from when the first hook is killed and the third would start.)"""
    pids = tmp_path / "pids"
    script = 'sleep 60 & echo $! >> "$1"; wait'
    hook = Notifier(command=["/bin/sh", "-c", script, "sh", str(pids)], timeout=2)
    for _ in range(3):
        hook({"event": "opened"})
    notify.drain(hook)  # the first is killed at its timeout, the second when the drain stops
    children = [int(pid) for pid in pids.read_text().split()]
    assert len(children) == 2
    deadline = time.monotonic() + 5
    while any(map(_running, children)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(map(_running, children))
    assert hook.pending() == 0
    said = [w for w in warnings(caplog_notify) if w.startswith("exiting")]
    assert said == [
        "exiting with approval notifications undelivered: 1 dropped, and the one in delivery"
        " given up on"
    ]
    notify.drain(hook)
    assert [w for w in warnings(caplog_notify) if w.startswith("exiting")] == said


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_hook_started_while_the_drain_gives_up_is_dead_when_the_drain_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """The give-up comes while the delivery thread is still starting the hook (none is
    running yet to kill): the thread kills it as soon as it has it, and the drain
    returns only after that, since a served worker ends the moment it returns."""
    pids = tmp_path / "pids"
    script = 'sleep 60 & echo $! >> "$1"; wait'
    hook = Notifier(command=["/bin/sh", "-c", script, "sh", str(pids)], timeout=1)
    gave_up = threading.Event()
    give_up = hook.give_up

    def giving_up() -> tuple[int, bool]:
        given = give_up()
        gave_up.set()
        return given

    popen = subprocess.Popen
    started: list[subprocess.Popen[bytes]] = []

    def started_after_the_give_up(*args: Any, **kwargs: Any) -> Any:
        assert gave_up.wait(10)  # the drain gave up while this hook was being started
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(hook, "give_up", giving_up)
    monkeypatch.setattr(subprocess, "Popen", started_after_the_give_up)
    hook({"event": "opened"})
    notify.drain(hook)
    [proc] = started
    assert proc.returncode is not None  # killed and reaped before the drain returned
    monkeypatch.undo()
    # Killed before the drain returned (a killed process takes a moment to be gone).
    children = [int(pid) for pid in pids.read_text().split()] if pids.exists() else []
    deadline = time.monotonic() + 5
    while any(map(_running, children)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(map(_running, children))
    assert sorted(warnings(caplog_notify)) == [  # two threads: in either order
        "approval notification 'opened' not delivered: the process is stopping",
        "exiting with approval notifications undelivered: 0 dropped, and the one in delivery"
        " given up on",
    ]
    log = tmp_path / "events.txt"  # what is queued after a give-up is delivered again
    later = Notifier(command=[sys.executable, "-c", RECORD, str(log)])
    later.give_up()
    later({"event": "opened"})
    assert later.flush(10)
    assert [name for name, _ in events(log)] == ["opened"]


def test_a_post_given_up_on_is_not_waited_for_again(
    caplog_notify: pytest.LogCaptureFixture,
) -> None:
    """Events are being posted to a URL that never answers (each cut at the timeout)
    when the drain stops waiting: the rest are dropped, and a later drain (at exit)
    neither waits for what was given up on nor warns again."""
    with closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections complete; nothing is ever answered
        port = silent.getsockname()[1]
        hook = Notifier(url=f"http://127.0.0.1:{port}/hook", timeout=1)
        for _ in range(4):
            hook({"event": "opened"})
        notify.drain(hook)  # gives up after 2 s, as a post ends and the next begins
        said = [w for w in warnings(caplog_notify) if w.startswith("exiting")]
        assert len(said) == 1
        assert re.fullmatch(
            r"exiting with approval notifications undelivered: [0-3] dropped"
            r"(, and the one in delivery given up on)?",
            said[0],
        )
        notify.drain(hook)
        assert [w for w in warnings(caplog_notify) if w.startswith("exiting")] == said
        assert hook.flush(5)


def _listening() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_a_give_up_cuts_the_post_under_way(caplog_notify: pytest.LogCaptureFixture) -> None:
    """The request has arrived and its answer is awaited (for up to 30 s): the give-up
    cuts it at once."""
    with closing(_listening()) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        hook = Notifier(url=url + "/hook", timeout=30)
        hook({"event": "opened"})
        listener.settimeout(10)
        conn, _ = listener.accept()
        with closing(conn):
            conn.settimeout(10)
            received = b""
            while b"\r\n\r\n" not in received:  # the request has arrived
                received += conn.recv(65536)
            assert hook.give_up() == (0, True)
            assert hook.flush(5)  # not the 30 s the answer was given
    assert warnings(caplog_notify) == [
        f"approval notification 'opened' not delivered to {url}: the process is stopping"
    ]


def test_a_give_up_while_the_post_connects_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog_notify: pytest.LogCaptureFixture
) -> None:
    """A connect under way has no socket to cut yet: once connected, the post sees the
    give-up and sends nothing."""
    gave_up = threading.Event()
    connect = notify._connect

    def connecting_until_the_give_up(*args: Any, **kwargs: Any) -> socket.socket:
        assert gave_up.wait(10)
        return connect(*args, **kwargs)

    monkeypatch.setattr(notify, "_connect", connecting_until_the_give_up)
    with closing(_listening()) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        hook = Notifier(url=url + "/hook", timeout=30)
        hook({"event": "opened"})
        deadline = time.monotonic() + 10
        while hook._posting is None and time.monotonic() < deadline:  # connecting
            time.sleep(0.01)
        assert hook.give_up() == (0, True)
        gave_up.set()
        assert hook.flush(10)
        listener.settimeout(10)
        conn, _ = listener.accept()  # it did connect...
        with closing(conn):
            conn.settimeout(10)
            assert conn.recv(65536) == b""  # ...and closed without sending a byte
    assert warnings(caplog_notify) == [
        f"approval notification 'opened' not delivered to {url}: the process is stopping"
    ]


def test_cutting_a_tls_post_keeps_its_tls_state() -> None:
    """``SSLSocket.shutdown`` drops the TLS state before it shuts the socket: a send in
    the delivery thread in that moment went out as plain text. The cut shuts the plain
    socket under it, and a send after it fails instead."""
    left, right = socket.socketpair()
    with closing(right):
        context = ssl.create_default_context()
        tls = context.wrap_socket(left, server_hostname="x", do_handshake_on_connect=False)
        conn = http.client.HTTPSConnection("x")
        conn.sock = tls
        with closing(tls):
            assert tls._sslobj is not None  # type: ignore[attr-defined]
            notify._cut(conn, threading.Event())
            assert tls._sslobj is not None  # type: ignore[attr-defined]
            with pytest.raises(ssl.SSLError):  # through TLS, which finds the socket shut
                tls.sendall(b"secret")
        right.settimeout(1)
        assert b"secret" not in right.recv(65536)


def test_waiting_for_the_hooks_given_up_on_does_not_wait_for_a_later_ones(
    tmp_path: Path,
) -> None:
    """An event queued after a give-up is delivered as usual, and a drain's wait for the
    hooks it killed does not wait for that one's hook too."""
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    hook = Notifier(command=hang, timeout=30)
    try:
        hook({"event": "opened"})
        deadline = time.monotonic() + 10
        while hook._running is None and time.monotonic() < deadline:  # the first runs
            time.sleep(0.01)
        assert hook.give_up() == (0, True)
        hook({"event": "resumed"})  # queued after the give-up: delivered as usual
        assert hook.wait_hooks(5)  # the killed one is reaped; the later one not waited for
        assert hook.wait_current(0) is False  # the later one is being delivered
    finally:
        hook.give_up()
        assert hook.flush(10)


def test_a_gateway_drains_its_own_notifications_and_no_others(kit: Kit, tmp_path: Path) -> None:
    """What a served app's shutdown runs: this gateway's hooks are waited for; another
    notifier of the process (another app's) is neither waited for nor given up on."""
    log = tmp_path / "events.txt"
    h = hooked(kit, notify_command=[sys.executable, "-c", RECORD, str(log)])
    other = Notifier(command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout=30)
    try:
        other({"event": "opened"})
        h.pause()
        h.gw.drain_notifications()
        assert [name for name, _ in events(log)] == ["opened"]
        assert not other.flush(0)  # still delivering: not given up on
    finally:
        other.give_up()
        assert other.flush(10)


# -- the command line ----------------------------------------------------------------------


def test_the_cli_delivers_before_it_exits_and_warns_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "events.txt"
    assert main(["init", "home", "--id", "gw-cli"]) == 0
    assert main(["keygen", "runtime.jwk"]) == 0
    assert main([
        "--home", "home", "issue", "--sub", "agent-1", "--runtime-key", "runtime.pub.jwk",
        "--action", "payments.*", "--resource", "acct:**", "-o", "art.jwt",
    ]) == 0  # fmt: skip
    request = {"action": "payments.transfer", "resource": "acct:1", "args": {"amount": 5000}}
    (tmp_path / "big.json").write_text(json.dumps({**request, "runtime": "agent-1"}))

    def decide(name: str) -> list[str]:
        return [
            "--home", "home", "decide", "--request", name, "--artifact", "art.jwt",
            "--runtime-key", "runtime.jwk",
        ]  # fmt: skip

    configure(tmp_path / "home", notify_command=[sys.executable, "-c", RECORD, str(log)])
    capsys.readouterr()
    assert main(decide("big.json")) == 3
    assert [name for name, _ in events(log)] == ["opened"]  # delivered before main returned
    assert capsys.readouterr().err == ""

    configure(tmp_path / "home", notify_command=["/bin/sh", "-c", "exit 7", SECRET])
    assert main(decide("big.json")) == 3  # the same request, still paused: no new event
    assert capsys.readouterr().err == ""
    other = {**request, "resource": "acct:2", "runtime": "agent-1"}
    (tmp_path / "big2.json").write_text(json.dumps(other))
    assert main(decide("big2.json")) == 3
    said = capsys.readouterr()
    [paused] = re.findall(r"  approval (\S+): execgate approvals show", said.out)
    assert said.err == (
        f"execgate: warning: approval notification 'opened' of approval {paused}: /bin/sh"
        " exited with status 7\n"
    )
