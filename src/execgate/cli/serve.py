"""``execgate serve``: the HTTP service (DESIGN §6) on uvicorn.

The home is checked in this process first (a broken home is a usage error, exit 2,
before any port is bound); then every worker process opens it again from
``$EXECGATE_HOME``. Several workers share the SQLite home safely: the store runs in WAL
mode and every write (decision, outcome, checkpoint) is one ``BEGIN IMMEDIATE``
transaction, so log indexes stay dense across processes. SIGTERM (or SIGINT) stops
accepting connections, lets in-flight decisions (and their audit appends) finish and
closes the store; SIGTERM then exits 0 (uvicorn re-raises the signal it caught once it
has shut down, and the handler installed here makes that a clean exit).

SIGHUP reloads the policy and restarts nothing. uvicorn's own multi-worker supervisor
answers SIGHUP by replacing every worker, which would take the service down if the new
policy file were invalid (a worker that cannot open its home fails to start, and a start
failure stops the supervisor). Here the supervisor (``_Supervisor``) instead passes
SIGHUP on to one worker that has finished starting (its handler is in place), which
reloads the policy as ``execgate policy reload`` does over HTTP
(``execgate.server.admin``): it reads the file, refuses an invalid one (the old policy
stays), and logs and pins a valid one, which every other worker takes before its next
decision.

One policy is in force for the whole service. A worker that dies is replaced by the
supervisor, and the new worker must not run whatever the policy file holds by then (an
edit not yet reloaded, or a broken file, which would fail its start and with it the
whole service): the policy text this process validated at start is pinned in a private
file (``$EXECGATE_POLICY_IN_FORCE``, see ``Gateway.open``) that every worker loads, and
each accepted reload replaces it. The config and the trust store are kept there too, as
this process read them (they apply at a restart), and a worker whose node key is not the
one this process loaded refuses to start.

Metrics add up across workers: before any worker starts, a private directory is made
for prometheus-client's multiprocess files (``execgate.server.metrics.multiprocess_dir``).
Everything private to one service is in one directory in the home's ``run/`` (0700),
not in ``/tmp``, where a cleaner of old files could remove what a service running for
weeks still needs. It is removed when the service stops; one left by a service killed
with SIGKILL is removed by the next ``serve`` on that home (``_service_dir``). Workers
stop once their ``serve`` process is gone (``execgate.server.app.create_app``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from execgate.cli._common import Commands, home_of, note, open_gateway, positive

if TYPE_CHECKING:
    from execgate.home import ServerConfig

__all__ = ["register"]

_log = logging.getLogger("execgate.server")

GRACEFUL_SECONDS = 30
RUN_DIR: Final = "run"  # in the home: the service's private directories while it runs
SERVICE_PREFIX: Final = "execgate-service-"  # one such directory in RUN_DIR per service
SERVICE_LOCK: Final = "service.lock"  # in it: held (shared) by its serve process while it runs
EXIT_FAILED: Final = 3  # uvicorn's STARTUP_FAILURE: the server never started serving


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _workers(text: str) -> int:
    """1 to ``max_workers()``: a mistyped count must not fork until memory runs out."""
    value, most = positive(text), max_workers()
    if value > most:
        raise argparse.ArgumentTypeError(
            f"{value} is more than {most} worker processes (four per CPU core, at least 64)"
        )
    return value


def max_workers() -> int:
    return max(64, 4 * (os.cpu_count() or 1))


def _stopped(sig: int, frame: FrameType | None) -> None:
    """What uvicorn re-raises SIGTERM into after its graceful shutdown: a clean exit."""


def _supervisor_class() -> type[Any]:
    """uvicorn's multi-worker supervisor, with SIGHUP passed on instead of restarting."""
    from uvicorn.supervisors.multiprocess import Multiprocess

    class _Supervisor(Multiprocess):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            from execgate._hup import take_early_hup

            super().__init__(*args, **kwargs)
            self.reload_pending = take_early_hup()  # one that came while starting

        def start_failed(self) -> bool:
            """Whether a worker failed to start (which stops the service)."""
            return any(p.exitcode == EXIT_FAILED for p in self.processes)

        def handle_hup(self) -> None:
            self.reload_pending = True
            self.pass_on_reload()

        def keep_subprocess_alive(self) -> None:
            before = {p.pid for p in self.processes}
            super().keep_subprocess_alive()
            gone = before - {p.pid for p in self.processes}
            if gone:  # uvicorn says so at info level only: an operator must see it
                _log.warning(
                    "worker process(es) %s stopped and were replaced",
                    ", ".join(map(str, sorted(p for p in gone if p is not None))),
                )
            self.pass_on_reload()

        def pass_on_reload(self) -> None:
            """SIGHUP to one worker that has started (its handler is in place); with
            none yet, to the first that has, on a later round."""
            if not self.reload_pending:
                return
            for process in self.processes:
                if process.pid is not None and process.is_ready(timeout=1):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)
                        self.reload_pending = False
                        return

    return _Supervisor


def _serve(args: argparse.Namespace) -> int:
    from execgate._hup import hup_before_handler

    # Until the app's handler is in place, a SIGHUP must not end the process: it is
    # remembered, and the reload made once the service can (one worker: this process;
    # several: the supervisor passes it on). Set before the imports that take time.
    previous_hup = signal.signal(signal.SIGHUP, hup_before_handler)
    try:
        from execgate.home import CONFIG_NAME, load_config, service_copy
        from execgate.policy.loader import pin_lock

        home = home_of(args).resolve()
        load_config(home)  # a missing or empty home is told so before anything is made in it
        with _service_dir(home / RUN_DIR) as pinned:
            # Refuse a broken home before binding; pin the policy (and keep the config
            # and trust store) the workers will run.
            open_gateway(home, fallback=False, policy_in_force=pinned, new_service=True).close()
            with pin_lock(pinned):
                kept = service_copy(
                    pinned.parent, "execgate.toml", home / CONFIG_NAME, "config", new=False
                )
            return _run(args, home, pinned.parent, load_config(home, data=kept).server)
    finally:
        signal.signal(signal.SIGHUP, previous_hup)


@contextlib.contextmanager
def _service_dir(run: Path) -> Iterator[Path]:
    """The file that holds the service's policy in force (``Gateway.open``), in a fresh
    private directory in ``run`` named in ``$EXECGATE_POLICY_IN_FORCE`` for the workers
    started inside; removed at exit.

    This process holds the directory's ``service.lock`` (shared) while it runs; the lock
    goes with the process, however it ends. Directories in ``run`` whose lock nobody
    holds were left by services killed with SIGKILL, and are removed here (their workers
    stop by themselves once their ``serve`` process is gone). ``run``'s own lock is held
    meanwhile, so no other ``serve`` removes a directory between its making and its
    lock. A directory without a lock file is left alone: it is not one this code made."""
    from execgate.server._envdir import private_dir_in_env
    from execgate.server.app import POLICY_IN_FORCE_ENV

    with private_dir_in_env(
        POLICY_IN_FORCE_ENV, prefix=SERVICE_PREFIX, entry="policy.yaml", parent=run
    ) as pinned:
        held = _locked(run, fcntl.LOCK_EX)
        try:
            mine = _locked(pinned.parent / SERVICE_LOCK, fcntl.LOCK_SH, create=True)
            _remove_left_behind(run, keep=pinned.parent.name)
        finally:
            os.close(held)
        try:
            yield pinned
        finally:
            os.close(mine)


def _locked(path: Path, how: int, *, create: bool = False) -> int:
    """A descriptor of ``path`` (a directory, or a lock file made when ``create``)
    holding the ``flock`` ``how``, waited for."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_left_behind(run: Path, *, keep: str) -> None:
    """Remove every service directory in ``run`` but ``keep`` whose lock nobody holds;
    warn of those whose lock is held (another service runs on the home)."""
    removed, running = [], 0
    for entry in sorted(run.iterdir()):
        if entry.name == keep or not entry.name.startswith(SERVICE_PREFIX):
            continue
        try:
            if not stat.S_ISDIR(entry.lstat().st_mode):
                continue
            fd = os.open(entry / SERVICE_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or not made by this code
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running += 1
            continue
        finally:
            os.close(fd)  # the lock, if taken, is of no use once the directory goes
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    if removed:
        _log.warning(
            "removed %d directory(ies) left in %s by a service that did not stop: %s",
            len(removed),
            run,
            ", ".join(removed),
        )
    if running:
        _log.warning(
            "%d other service(s) run on this home: each has its own policy in force, and a"
            " reload (SIGHUP, 'execgate policy reload') reaches only the service it is sent to",
            running,
        )


# Why a socket could not be bound, and what to do about it.
_BIND_HINTS: Final = {
    errno.EADDRINUSE: "another process holds that port: stop it, or choose another with --port",
    errno.EACCES: "ports below 1024 need privileges: choose another with --port",
    errno.EADDRNOTAVAIL: "no interface here has that address: check --host",
}


def _listening(host: str, port: int) -> socket.socket | None:
    """The service's socket, bound before anything says it serves, or None when it
    cannot be (said on stderr). The workers inherit it (with one worker, this process
    serves it): a second service on the same port fails here instead of sharing it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = _BIND_HINTS.get(exc.errno or 0, "check --host and --port")
        note(f"execgate: error: cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}")
        return None
    sock.set_inheritable(True)
    return sock


def _run(args: argparse.Namespace, home: Path, service: Path, server_config: ServerConfig) -> int:
    import uvicorn

    from execgate.server._limits import uvicorn_options
    from execgate.server.app import SUPERVISOR_ENV
    from execgate.server.metrics import multiprocess_dir

    sock = _listening(args.host, args.port)
    if sock is None:
        return EXIT_FAILED
    os.environ["EXECGATE_HOME"] = str(home)
    note(
        f"execgate: serving {home} on http://{args.host}:{args.port} with {args.workers} worker(s)"
    )
    options: dict[str, Any] = {
        "factory": True,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "timeout_graceful_shutdown": GRACEFUL_SECONDS,
        "proxy_headers": False,  # forward-auth decides whom to believe ([server] trusted_proxies)
        "server_header": False,
        "access_log": False,
        "log_level": "warning",
        **uvicorn_options(server_config),
    }
    config = uvicorn.Config("execgate.server:app_from_environment", **options)
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        with sock, multiprocess_dir(service):
            if config.workers > 1:
                # Each worker stops once this process is gone (killed with SIGKILL, say):
                # no worker serves on without the process that replaces the dead.
                os.environ[SUPERVISOR_ENV] = str(os.getpid())
                supervisor = _supervisor_class()(config, sockets=[sock])
                try:
                    supervisor.run()
                finally:
                    os.environ.pop(SUPERVISOR_ENV, None)
                return EXIT_FAILED if supervisor.start_failed() else 0
            server = uvicorn.Server(config)
            server.run(sockets=[sock])
            return 0 if server.started else EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(commands: Commands) -> None:
    p = commands.add("serve", "run the HTTP service (decisions, forward-auth, admin) on uvicorn")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default: 8080)")
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes (default: 1; at most 64, or four per CPU core)",
    )
    p.set_defaults(func=_serve)
