"""Approval notifications: tell people when a pause opens an approval and how it ends.

``[approvals]`` in ``execgate.toml`` names a program, a URL, or both::

    [approvals]
    notify_command = ["/usr/local/bin/page-approvers", "--team", "finance"]
    notify_url = "https://chat.example/hooks/execgate"
    notify_timeout = 5

and ``Gateway.open`` hands a ``Notifier`` to the gateway. Events are JSON objects:
``{"event": "opened" | "approved" | "denied" | "resumed", "gateway": ID, "approval": {…},
"decision": {…}}`` (a pause opened an approval; its quorum was reached; it was denied;
the approved request executed). An event over ``MAX_EVENT_BYTES`` leaves out the
request's arguments (``"args_omitted": true`` in the approval; the request hash binds
them, and ``execgate approvals show`` prints them).

The program is run without a shell (``command[0]`` is an absolute path: no ``PATH``
lookup) with the event on stdin and ``EXECGATE_EVENT`` set to its name; its stdout and
stderr are discarded, and it is killed with its whole process group at the timeout. The
URL (http or https) receives the event as a ``POST`` of ``application/json``: directly
(proxy environment variables are not used), without following redirects; a 2xx answer
is success. Each delivery as a whole is bounded by the timeout, name resolution and
connecting included (the system resolver has no time limit of its own, so it runs in a
helper thread, one at a time, and the connection goes to the addresses it found).

A notification never changes a decision and never raises into the pipeline: events are
queued and delivered in order by a background thread, so ``decide`` returns at once. A
failure (a program that exits non-zero, hangs or cannot start; a URL that refuses,
answers non-2xx or hangs) is logged on the ``execgate.notify`` logger at WARNING, naming
the event, the program path or the URL's scheme, host and port, and what went wrong;
never the arguments, the URL's path or query (they often hold a token), or the event.
Before the process exits (``drain``) it waits up to the timeout, plus a second, for
notifications still in flight, so a one-shot ``execgate decide`` still delivers its event;
then it drops what waits and kills the hook still running (and waits a few seconds more
for that to be reaped), since a hook in a session of its own would outlive the process.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import json
import logging
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any, Final
from urllib.parse import urlsplit

from execgate.keyfile import path_problem

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_EVENT_BYTES",
    "MAX_QUEUED",
    "MAX_TIMEOUT",
    "MIN_TIMEOUT",
    "Notifier",
    "check_command",
    "check_url",
    "drain",
    "program_problem",
]

MIN_TIMEOUT: Final = 1
MAX_TIMEOUT: Final = 30
DEFAULT_TIMEOUT: Final = 5
MAX_QUEUED: Final = 256  # events waiting for delivery; more are dropped (and logged)
# An event larger than this goes without the request's arguments (``args_omitted``;
# ``execgate approvals show`` has them): the queue holds at most MAX_QUEUED of these.
MAX_EVENT_BYTES: Final = 64 * 1024
# What ``execgate serve`` names for its own processes (execgate.server.metrics and .app):
# a hook gets none of it. One that used prometheus-client would write its own files into the
# service's metrics directory, which /metrics adds up.
_SERVICE_ENV: Final = (
    "PROMETHEUS_MULTIPROC_DIR",
    "EXECGATE_POLICY_IN_FORCE",
    "EXECGATE_SUPERVISOR_PID",
)
_MAX_ARGS: Final = 64
_MAX_ARG_CHARS: Final = 4096
_MAX_URL_CHARS: Final = 2048
_COMMAND_EXAMPLE: Final = '["/usr/local/bin/page-approvers", "--team", "finance"]'
_URL_EXAMPLE: Final = '"http://127.0.0.1:8080/execgate"'

_log = logging.getLogger("execgate.notify")


def check_command(value: object) -> tuple[str, ...]:
    """A notify command as an argv tuple, or ``ValueError`` saying what is wrong."""
    if (
        not isinstance(value, list | tuple)
        or not value
        or len(value) > _MAX_ARGS
        or not all(isinstance(a, str) and a and "\0" not in a for a in value)
    ):
        raise ValueError(
            f"must be a list of 1-{_MAX_ARGS} non-empty strings, the program then its"
            f" arguments, e.g. {_COMMAND_EXAMPLE}"
        )
    if any(len(a) > _MAX_ARG_CHARS for a in value):
        raise ValueError(f"has an argument longer than {_MAX_ARG_CHARS} characters")
    if not os.path.isabs(value[0]):
        raise ValueError(
            "must name the program by its absolute path (it is run without a shell and"
            f" without a PATH lookup), e.g. {_COMMAND_EXAMPLE}"
        )
    return tuple(value)


def program_problem(program: str) -> str | None:
    """Why another local user could change what ``program`` runs, if they could: the
    hook runs as this process, which can read the node key. Every directory on the way to
    it (through any link) must be root's or this user's, and one no other user may put a
    file in (``keyfile.path_problem``), and the program a regular file of root's or this
    user's that no other user may write. Checked before each run (it may change after the
    start), as the user the hook would run as."""
    if not hasattr(os, "geteuid"):
        return None
    problem = path_problem(program, owned=True)
    if problem is not None:
        return f"program {program}: {problem}"
    try:
        status = os.stat(program)
    except OSError:
        return None  # the run says why it cannot start
    if not stat.S_ISREG(status.st_mode):
        return f"program {program} is not a regular file"
    if status.st_uid not in (0, os.geteuid()) or status.st_mode & stat.S_IWOTH:
        return (
            f"program {program} may be changed by another user (owner uid {status.st_uid},"
            f" mode {stat.S_IMODE(status.st_mode):04o}): it must be root's or the gateway"
            " user's, and not writable by any user"
        )
    return None


def check_url(value: object) -> str:
    """A notify URL (http or https, with a host, no credentials), or ``ValueError``."""
    usage = f"must be an http:// or https:// URL with a host, e.g. {_URL_EXAMPLE}"
    if (
        not isinstance(value, str)
        or len(value) > _MAX_URL_CHARS
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise ValueError(usage)
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:  # '[::1' (an open bracket), a port past 65535
        raise ValueError(usage) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(usage)
    if not value.isascii():  # what the request line and Host header can carry
        raise ValueError(
            "must be ASCII: percent-encode the rest of the path and query (é is %C3%A9),"
            " and write an international domain name in its xn-- form"
        )
    if "@" in parts.netloc:
        raise ValueError(
            "must not hold a user name or password; let the receiver authenticate the"
            " gateway by a token in the URL's path"
        )
    return value


def _origin(url: str) -> str:
    """What a log line may say about the URL: scheme, host and port, never path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _why(exc: BaseException) -> str:
    """An error as a short phrase that cannot quote the URL, the event or a secret."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


_APPROVAL_ID: Final = re.compile(r"[0-9a-f-]{36}")  # what the gateway makes (a UUID)


def _label(event: Mapping[str, Any]) -> str:
    """How the log names an event: ``'opened'``, and the approval it is about (the id of
    the decision that paused), so an operator can tell whose approvers were not told."""
    name = repr(str(event.get("event", "?"))[:32])
    about = event.get("approval", event.get("decision"))  # "resumed" carries the decision
    approval_id = about.get("approval_id") if isinstance(about, Mapping) else None
    if isinstance(approval_id, str) and _APPROVAL_ID.fullmatch(approval_id):
        return f"{name} of approval {approval_id}"
    return name


class Notifier:
    """Delivers approval events to a program and/or a URL, in order, in the background.

    Calling it queues one event and returns at once; it never raises and never blocks
    the caller. ``flush`` waits for everything queued so far (tests, shutdown).
    """

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        url: str | None = None,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        if command is None and url is None:
            raise ValueError("a Notifier needs a command, a URL, or both")
        if (
            not isinstance(timeout, int)
            or isinstance(timeout, bool)
            or not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT
        ):
            raise ValueError(f"timeout must be whole seconds in [{MIN_TIMEOUT}, {MAX_TIMEOUT}]")
        self.command = None if command is None else check_command(command)
        self.url = None if url is None else check_url(url)
        self.timeout = timeout
        self._cond = threading.Condition()
        # Each event queued: how the log names it, its own name, its body.
        self._queue: deque[tuple[str, str, bytes]] = deque()
        self._busy = False  # a delivery thread is running
        # Each give_up starts a generation: an event taken off the queue in an earlier
        # one is abandoned (its hook killed, or killed as it starts; its POST cut, or not
        # begun).
        self._generation = 0
        self._delivering: int | None = None  # the generation of the event in delivery
        self._hook_of: int | None = None  # ...and of its hook, while started or run
        self._running: subprocess.Popen[bytes] | None = None  # the hook being run now
        # The POST under way: its connection, its deadline's cut, and give_up's.
        self._posting: tuple[http.client.HTTPConnection, threading.Event, threading.Event] | None
        self._posting = None
        self._lookup: _Lookup | None = None  # the last name resolution (see _post)
        _LIVE.add(self)

    def __repr__(self) -> str:
        hooks = []
        if self.command is not None:
            hooks.append(f"command={self.command[0]!r}")
        if self.url is not None:
            hooks.append(f"url={_origin(self.url)!r}")
        return f"Notifier({', '.join(hooks)}, timeout={self.timeout})"

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Queue one event for delivery; return at once. Never raises."""
        name = "'?'"
        try:
            name = _label(event)
            body = _encoded(event)
            if len(body) > MAX_EVENT_BYTES:
                body = _encoded(_without_args(event))
            if len(body) > MAX_EVENT_BYTES:
                _log.warning(
                    "approval notification %s dropped: larger than %d bytes even without the"
                    " request's arguments",
                    name,
                    MAX_EVENT_BYTES,
                )
                return
        except Exception as exc:  # noqa: BLE001 - a notification must never raise
            _log.warning(
                "approval notification %s not delivered: it is not JSON (%s)",
                name,
                type(exc).__name__,
            )
            return
        with self._cond:
            if len(self._queue) >= MAX_QUEUED:
                _log.warning(
                    "approval notification %s dropped: %d earlier notifications are still"
                    " waiting for the hook",
                    name,
                    len(self._queue),
                )
                return
            self._queue.append((name, str(event.get("event", "?"))[:32], body))
            if self._busy:
                return
            self._busy = True
        try:
            threading.Thread(target=self._run, name="execgate-notify", daemon=True).start()
        except Exception as exc:  # noqa: BLE001 - e.g. no more threads, interpreter exiting
            with self._cond:
                lost = len(self._queue)
                self._queue.clear()
                self._busy = False
                self._cond.notify_all()
            _log.warning(
                "%d approval notification(s) dropped: cannot start a delivery thread (%s)",
                lost,
                type(exc).__name__,
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far was delivered or given up on; False if
        ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def pending(self) -> int:
        """How many events are waiting (not counting one being delivered)."""
        with self._cond:
            return len(self._queue)

    def _settled(self) -> bool:
        """Nothing of the current generation waits or is in delivery (under the lock)."""
        return not self._queue and self._delivering != self._generation

    def wait_current(self, timeout: float) -> bool:
        """Wait until every event queued since the last ``give_up`` was delivered or
        failed; False if ``timeout`` seconds passed first. Unlike ``flush``, it does not
        wait for what a ``give_up`` abandoned (a POST left to its own timeout)."""
        with self._cond:
            return self._cond.wait_for(self._settled, timeout)

    def give_up(self) -> tuple[int, bool]:
        """Drop what is waiting and abandon the event in delivery: its hook is killed,
        with what it started (a hook runs in a session of its own, which nothing else
        would end once this process is gone), or killed as it starts; its POST is cut,
        or not begun (a name lookup or a connect under way ends within the timeout).
        For a shutdown that waited long enough; then ``wait_hooks``. Returns how many
        events were dropped and whether one was in delivery. What is queued afterwards
        is delivered as usual."""
        with self._cond:
            dropped = len(self._queue)
            self._queue.clear()
            abandoned = self._delivering == self._generation
            self._generation += 1
            running = self._running
            # Killed while not yet reaped, under the lock _running is cleared under (a
            # reaped hook's group id could be another's by now; the moment between a
            # reap and its returncode being set is far too short for that).
            if running is not None and running.returncode is None:
                if os.name == "posix":
                    with suppress(OSError):
                        os.killpg(running.pid, signal.SIGKILL)
                with suppress(OSError):
                    running.kill()
            if self._posting is not None:
                conn, cut, stopped = self._posting
                stopped.set()
                _cut(conn, cut)
            self._cond.notify_all()
        return dropped, abandoned

    def wait_hooks(self, timeout: float) -> bool:
        """Wait until no hook of an event given up on is being started or run (killed
        by ``give_up``, or as it started: reaped); False if ``timeout`` seconds passed
        first. A hook of an event queued since is not waited for."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._hook_of is None or self._hook_of == self._generation, timeout
            )

    # -- delivery (on the background thread) ---------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    return
                name, event, body = self._queue.popleft()
                generation = self._delivering = self._generation
                self._hook_of = generation if self.command is not None else None
            try:
                if self.command is not None:
                    self._run_command(self.command, name, event, body, generation)
                if self.url is not None and self._current(generation):
                    self._post(self.url, name, event, body, generation)
            except Exception as exc:  # noqa: BLE001 - never let the thread die silently
                _log.warning("approval notification %s not delivered: %s", name, type(exc).__name__)
            finally:
                with self._cond:
                    self._delivering = None
                    self._cond.notify_all()

    def _current(self, generation: int) -> bool:
        with self._cond:
            return generation == self._generation

    def _run_command(
        self, command: tuple[str, ...], name: str, event: str, body: bytes, generation: int
    ) -> None:
        """Run the hook on ``body``; ``name`` is how the log names the event, ``event``
        the event's own name (the hook's ``EXECGATE_EVENT``)."""
        proc = self._start(command, name, event, generation)
        if proc is None:
            return
        try:
            proc.communicate(body, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            _log.warning(
                "approval notification %s: %s did not finish within %d s and was killed",
                name,
                command[0],
                self.timeout,
            )
            return
        except BaseException:
            _kill(proc)
            raise
        finally:
            with self._cond:
                self._running = None
                self._hook_of = None
                self._cond.notify_all()
        if proc.returncode < 0:
            _log.warning(
                "approval notification %s: %s was killed by signal %d",
                name,
                command[0],
                -proc.returncode,
            )
        elif proc.returncode != 0:
            _log.warning(
                "approval notification %s: %s exited with status %d",
                name,
                command[0],
                proc.returncode,
            )

    def _start(
        self, command: tuple[str, ...], name: str, event: str, generation: int
    ) -> subprocess.Popen[bytes] | None:
        """The hook, started and in ``_running``; None when it was not started, or was
        abandoned (``give_up``) while it started: then it is killed and reaped here,
        before ``wait_hooks`` can see no hook starting."""
        proc = None
        try:
            proc = self._started(command, name, event, generation)
            return proc
        finally:
            if proc is None:
                with self._cond:
                    self._hook_of = None
                    self._cond.notify_all()

    def _started(
        self, command: tuple[str, ...], name: str, event: str, generation: int
    ) -> subprocess.Popen[bytes] | None:
        program = command[0]
        problem = program_problem(program)  # again: it may have changed since the start
        if problem is not None:
            _log.warning("approval notification %s not delivered: %s", name, problem)
            return None
        if not self._current(generation):
            return None
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=os.name == "posix",  # so the timeout kills its children too
                env={
                    **{k: v for k, v in os.environ.items() if k not in _SERVICE_ENV},
                    "EXECGATE_EVENT": event,
                },
            )
        except OSError as exc:
            _log.warning(
                "approval notification %s not delivered: cannot run %s: %s",
                name,
                program,
                _why(exc),
            )
            return None
        with self._cond:
            abandoned = generation != self._generation
            if not abandoned:
                self._running = proc  # for give_up
        if abandoned:  # given up on while it started
            _kill(proc)
            _log.warning("approval notification %s not delivered: the process is stopping", name)
            return None
        return proc

    def _post(self, url: str, name: str, event: str, body: bytes, generation: int) -> None:
        """One POST with ``http.client``: no proxy, no redirect followed. The host name is
        resolved (``_Lookup``) and connected to (``_connect``) within the timeout, one
        lookup at a time; the socket timeout bounds each read; a timer bounds the whole
        delivery, so a receiver that drips its answer a byte at a time cannot hold the
        queue. The Host header and TLS's server name and certificate check are the URL's
        host, as without the resolution."""
        parts = urlsplit(url)  # check_url let only http(s) with a host and a port in
        https = parts.scheme == "https"
        host, port = parts.hostname or "", parts.port or (443 if https else 80)
        until = time.monotonic() + self.timeout
        if self._lookup is not None and not self._lookup.done.is_set():
            # One lookup at a time: a resolver that hangs holds one thread, not one more
            # per event for as long as it hangs.
            _log.warning(
                "approval notification %s not delivered to %s: the resolver has not"
                " answered an earlier lookup yet",
                name,
                _origin(url),
            )
            return
        self._lookup = _Lookup(host, port)
        try:
            addresses = self._lookup.wait(self.timeout)
        except (OSError, ValueError) as exc:
            _log.warning(
                "approval notification %s not delivered to %s: cannot resolve the host: %s",
                name,
                _origin(url),
                _why(exc),
            )
            return
        left = until - time.monotonic()
        if addresses is None or left <= 0:
            _log.warning(
                "approval notification %s not delivered to %s: name resolution timed out",
                name,
                _origin(url),
            )
            return
        conn = (
            http.client.HTTPSConnection(
                host, port, timeout=left, context=ssl.create_default_context()
            )
            if https
            else http.client.HTTPConnection(host, port, timeout=left)
        )
        conn._create_connection = functools.partial(_connect, addresses, until)  # type: ignore[attr-defined]
        cut, stopped = threading.Event(), threading.Event()
        with self._cond:
            if generation != self._generation:  # given up on: no POST is begun
                conn.close()
                return
            self._posting = (conn, cut, stopped)  # for give_up to cut
        deadline = threading.Timer(left, _cut, args=(conn, cut))
        deadline.daemon = True
        try:
            deadline.start()
            conn.connect()
            # A give-up while connecting found no socket to cut: it is seen here (it sets
            # ``stopped`` before it reads ``conn.sock``, which is set by now).
            if stopped.is_set():
                _log.warning(
                    "approval notification %s not delivered to %s: the process is stopping",
                    name,
                    _origin(url),
                )
                return
            conn.request(
                "POST",
                (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "execgate-notify/1",
                    "X-Execgate-Event": event,
                },
            )
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # refused, unreachable, TLS, timeouts, cut at the deadline or by give_up
            why = (
                "the process is stopping"
                if stopped.is_set()
                else "timed out"
                if cut.is_set()
                else _why(exc)
            )
            _log.warning(
                "approval notification %s not delivered to %s: %s", name, _origin(url), why
            )
            return
        finally:
            with self._cond:
                self._posting = None
            deadline.cancel()
            conn.close()
        if not 200 <= status < 300:
            extra = " (redirects are not followed)" if 300 <= status < 400 else ""
            _log.warning(
                "approval notification %s: %s answered HTTP %d%s",
                name,
                _origin(url),
                status,
                extra,
            )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a hook and everything it started, and reap it."""
    if os.name == "posix":
        with suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    with suppress(OSError):
        proc.kill()
    with suppress(Exception):
        proc.communicate(timeout=5)


def _encoded(event: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(event), ensure_ascii=False, separators=(",", ":")).encode()


def _without_args(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event with the approval's request arguments left out (and said so)."""
    trimmed = dict(event)
    approval = trimmed.get("approval")
    if isinstance(approval, Mapping) and isinstance(approval.get("request"), Mapping):
        request = {k: v for k, v in approval["request"].items() if k != "args"}
        trimmed["approval"] = {**approval, "request": request, "args_omitted": True}
    return trimmed


_Address = tuple[int, int, int, str, Any]  # what getaddrinfo gives for one address


class _Lookup:
    """One name resolution in a helper thread (the system resolver has no time limit
    of its own): ``wait`` gives its addresses, or None while it has not answered;
    ``OSError`` when it answered that there are none, ``ValueError`` (``UnicodeError``)
    for a name that cannot be asked for (``a..b``)."""

    def __init__(self, host: str, port: int) -> None:
        self._found: list[_Address] = []
        self._failed: list[OSError | ValueError] = []
        self.done = threading.Event()
        threading.Thread(
            target=self._run, args=(host, port), name="execgate-notify-resolve", daemon=True
        ).start()

    def _run(self, host: str, port: int) -> None:
        try:
            self._found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, ValueError) as exc:
            self._failed.append(exc)
        except Exception as exc:  # noqa: BLE001 - reported by the delivery, never lost
            self._failed.append(OSError(0, type(exc).__name__))
        finally:
            if not (self._found or self._failed):
                self._failed.append(OSError(0, "no address found"))
            self.done.set()

    def wait(self, timeout: float) -> list[_Address] | None:
        if not self.done.wait(timeout):
            return None
        if self._failed:
            raise self._failed[0]
        return self._found


def _connect(
    addresses: list[_Address],
    deadline: float,
    _address: tuple[str, int],
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """``socket.create_connection`` to ``addresses`` (resolved already), in order, all of
    them within the delivery's ``deadline`` (``time.monotonic``): the whole-delivery timer
    cannot cut a connect, which has no socket to shut yet."""
    error: OSError = OSError(0, "no address found")
    for family, kind, proto, _, sockaddr in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(left if timeout is None else min(timeout, left))
            if source_address is not None:
                sock.bind(source_address)
            sock.connect(sockaddr)
        except OSError as exc:
            if sock is not None:
                sock.close()
            error = exc
            continue
        sock.settimeout(timeout)
        return sock
    raise error


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """The delivery's time is up: shut its socket, so the read waiting on it ends.

    The plain socket's shutdown, also under TLS: ``SSLSocket.shutdown`` drops the TLS
    state before it shuts the socket, and a send in the other thread in that moment
    would go out unencrypted (the event, with the request's arguments)."""
    cut.set()
    sock = conn.sock
    if sock is not None:
        with suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_KILLED_WAIT: Final = 5.0  # seconds for a delivery thread to reap a hook give_up killed
# Every live notifier: ``drain`` waits for them before the process exits.
_LIVE: weakref.WeakSet[Notifier] = weakref.WeakSet()


def drain(notifier: Notifier | None = None) -> None:
    """Wait for the notifications still in flight in this process (of ``notifier`` only,
    if given), each notifier at most its timeout plus a second; then what is left is
    dropped and the hook still running killed (both logged), so a later drain (at exit,
    after an app's shutdown drained its own) finds nothing to wait for. Runs at exit; a
    one-shot command calls it once its output is written, a served app's gateway at its
    shutdown."""
    for each in list(_LIVE) if notifier is None else [notifier]:
        if not each.wait_current(each.timeout + 1):
            dropped, abandoned = each.give_up()
            _log.warning(
                "exiting with approval notifications undelivered: %d dropped%s",
                dropped,
                ", and the one in delivery given up on" if abandoned else "",
            )
        # A hook killed, or being started when the give-up came, is reaped before the
        # process may end (a served worker ends by SIGTERM right after this).
        each.wait_hooks(_KILLED_WAIT)


atexit.register(drain)
