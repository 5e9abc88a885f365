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
with SIGKILL is removed by the next ``serve`` on that home once its last worker has
stopped (``_service_dir``). Workers stop once their ``serve`` process is gone
(``execgate.server.app.create_app``).
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
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from execgate.cli._common import Commands, home_of, note, open_gateway, positive
from execgate.errors import ConfigError

if TYPE_CHECKING:
    from execgate.home import ServerConfig

__all__ = ["register"]

_log = logging.getLogger("execgate.server")

GRACEFUL_SECONDS = 30
RUN_DIR: Final = "run"  # in the home: the service's private directories while it runs
SERVICE_PREFIX: Final = "execgate-service-"  # one such directory in RUN_DIR per service
RETIRED_PREFIX: Final = ".stopped-"  # a stopped service's directory, while it is removed
RUN_LOCK: Final = "serve.lock"  # in RUN_DIR: held while a serve makes its directory
RUN_LOCK_WAIT: Final = 10.0  # seconds a serve waits for another one's start on the home
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


class _Stop:
    """SIGTERM in this process while uvicorn's own handler is not in place: before uvicorn
    has put it there, and after its graceful shutdown, which raises the signal again
    here (a clean exit). One that comes before uvicorn listens is a stop all the same:
    it is kept (``asked``) and given to the server once there is one, where it stops the
    server at once if it is running (``server``)."""

    def __init__(self) -> None:
        self.asked = False
        self.server: Any = None  # a uvicorn.Server, once made

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        self.asked = True
        if self.server is not None:
            self.server.should_exit = True


def _supervisor_class() -> type[Any]:
    """uvicorn's multi-worker supervisor, with SIGHUP passed on instead of restarting."""
    from uvicorn.supervisors.multiprocess import Multiprocess

    class _Supervisor(Multiprocess):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            from execgate._hup import take_early_hup

            super().__init__(*args, **kwargs)
            self.reload_pending = take_early_hup()  # one that came while starting

        def terminate_all(self) -> None:
            """Stop the workers, having closed this process's copies of the sockets: once
            the workers have closed theirs (at once, as they start to drain), a new
            connection is refused instead of waiting where no worker will take it."""
            for sock in self.sockets:
                sock.close()
            super().terminate_all()

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
    # several: the supervisor passes it on). The command's entry (execgate._entry) set
    # it before the CLI's imports already; here for a caller of ``main`` itself.
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

    This process holds the directory's ``service.lock`` (shared) while it runs, and so
    does each of its workers (``app_from_environment``): the lock goes with the last of
    them, however they end. A service directory whose lock nobody holds was left by a
    service killed with SIGKILL, and is removed here. The directory is made and locked
    while ``run/serve.lock`` is held, as it is for that clean-up, so none is ever seen
    unlocked between the two: one without a lock file is also left over (its ``serve``
    died between them) and removed. Anything else in ``run`` is left alone."""
    from execgate.server._envdir import LOCK_FLAGS, SERVICE_LOCK, private_dir_in_env
    from execgate.server.app import POLICY_IN_FORCE_ENV

    _private_run_dir(run)
    held = _run_lock(run / RUN_LOCK)
    mine = -1
    try:
        with private_dir_in_env(
            POLICY_IN_FORCE_ENV, prefix=SERVICE_PREFIX, entry="policy.yaml", parent=run
        ) as pinned:
            try:
                lock = pinned.parent / SERVICE_LOCK
                mine = os.open(lock, LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
                fcntl.flock(mine, fcntl.LOCK_SH)
                _remove_left_behind(run, keep=pinned.parent.name)
            finally:
                os.close(held)
                held = -1
            try:
                yield pinned
            finally:
                _retire(pinned.parent)
    finally:
        for fd in (held, mine):
            if fd >= 0:
                os.close(fd)


def _retire(service: Path) -> None:
    """Remove the service's directory at its stop, first renamed out of the names a
    starting ``serve`` looks at: met while half removed, it would pass for one left by a
    killed service. A directory only renamed (this process killed meanwhile) is removed
    by the next ``serve``."""
    retired = service.with_name(RETIRED_PREFIX + service.name)
    try:
        os.rename(service, retired)
    except OSError:
        return  # removed where it is (private_dir_in_env)
    shutil.rmtree(retired, ignore_errors=True)


def _private_run_dir(run: Path) -> None:
    """``run`` made (0700) if missing, and refused unless a directory of this user's that
    no one else may use: whoever may write there could plant what a service reads."""
    with contextlib.suppress(FileExistsError):
        run.mkdir(mode=0o700)
    try:
        status = run.lstat()
    except OSError as exc:
        raise ConfigError(f"cannot use {run}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(status.st_mode):
        raise ConfigError(f"{run} is not a directory; remove it")
    if status.st_uid != os.geteuid():
        raise ConfigError(
            f"{run} belongs to uid {status.st_uid}, not to this user (uid {os.geteuid()}):"
            f" run 'execgate serve' as uid {status.st_uid}, or remove {run} (it holds"
            " nothing a stopped service needs)"
        )
    if status.st_mode & 0o077:
        raise ConfigError(
            f"{run} may be used by others (mode {stat.S_IMODE(status.st_mode):04o}): it holds"
            f" the service's policy in force; run: chmod 700 {run}"
        )


def _run_lock(path: Path) -> int:
    """``run/serve.lock`` held exclusively (waited for up to ``RUN_LOCK_WAIT`` seconds:
    another ``serve`` on the home holds it only while it makes its directory)."""
    from execgate.server._envdir import LOCK_FLAGS

    try:
        fd = os.open(path, LOCK_FLAGS | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror or exc}") from exc
    deadline = time.monotonic() + RUN_LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ConfigError(
                    f"another 'execgate serve' on this home has held {path} for over"
                    f" {RUN_LOCK_WAIT:.0f} s (stopped or stuck while starting): find it with"
                    f" 'fuser {path}', then try again"
                ) from None
            time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise


def _remove_left_behind(run: Path, *, keep: str) -> None:
    """Remove every service directory in ``run`` but ``keep`` whose lock nobody holds
    (or that has none); warn of those whose lock is held (another service runs on the
    home, or one whose ``serve`` is gone still finishes its last requests)."""
    from execgate.server._envdir import LOCK_FLAGS, SERVICE_LOCK

    removed, running = [], 0
    for entry in sorted(run.iterdir()):
        if entry.name.startswith(RETIRED_PREFIX + SERVICE_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)  # its service stopped
            continue
        if entry.name == keep or not entry.name.startswith(SERVICE_PREFIX):
            continue
        try:
            if not stat.S_ISDIR(entry.lstat().st_mode):
                continue
            fd = os.open(entry / SERVICE_LOCK, LOCK_FLAGS)
        except FileNotFoundError:
            fd = -1  # its serve died before locking it
        except OSError:
            continue  # not one this code made: left alone
        if fd >= 0:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
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


def _listening(host: str, port: int, backlog: int) -> list[socket.socket] | None:
    """The service's sockets, one per address ``host`` names (``""``: every address),
    bound and listening before anything says it serves, or None when they cannot be
    (said on stderr). Listening at once, not when the workers start, makes a second
    service on the same port fail here: a bound socket that is not yet listening would
    let it bind too. The workers inherit them (with one worker, this process serves
    them).

    Of a name with several addresses, one this machine cannot have (an IPv6 address
    where IPv6 is off) is skipped, with a warning, as long as another listens. Where the
    name gives addresses of both families, the IPv6 socket takes IPv6 only (the IPv4
    one has the rest); an IPv6 address alone (``::``) is left to the system's default,
    which on Linux also takes IPv4."""
    made: list[socket.socket] = []
    try:
        found = list(
            dict.fromkeys(
                socket.getaddrinfo(
                    host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
                )
            )
        )
    except OSError as exc:
        note(
            f"execgate: error: cannot listen on {_where(host, port)}: {exc.strerror or exc};"
            " check --host"
        )
        return None
    both = {socket.AF_INET, socket.AF_INET6} <= {info[0] for info in found}
    for family, kind, proto, _, address in found:
        where = _where(str(address[0]), port)
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT and len(found) > 1:
                note(f"execgate: warning: not listening on {where}: {exc.strerror or exc}")
                continue
            _closed(made, where, exc)
            return None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
            if family == socket.AF_INET6 and both:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.set_inheritable(True)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL and len(found) > 1:
                note(f"execgate: warning: not listening on {where}: {exc.strerror or exc}")
                continue
            _closed(made, where, exc)
            return None
        made.append(sock)
    if not made:
        note(f"execgate: error: cannot listen on any address of {host!r}; check --host")
        return None
    return made


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _closed(made: list[socket.socket], where: str, exc: OSError) -> None:
    """Close what was made, and say why ``where`` cannot be listened on."""
    for sock in made:
        sock.close()
    hint = _BIND_HINTS.get(exc.errno or 0, "check --host and --port")
    note(f"execgate: error: cannot listen on {where}: {exc.strerror or exc}; {hint}")


def _run(args: argparse.Namespace, home: Path, service: Path, server_config: ServerConfig) -> int:
    import uvicorn

    from execgate.server._limits import uvicorn_options
    from execgate.server.app import SUPERVISOR_ENV
    from execgate.server.metrics import multiprocess_dir

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
    sockets = _listening(args.host, args.port, config.backlog)
    if sockets is None:
        return EXIT_FAILED
    os.environ["EXECGATE_HOME"] = str(home)
    # In place before "serving" is said: a stop that follows it is never the default
    # action's (killed, with nothing cleaned up) nor lost.
    stop = _Stop()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        urls = ", ".join(f"http://{_where(*sock.getsockname()[:2])}" for sock in sockets)
        note(f"execgate: serving {home} on {urls} with {args.workers} worker(s)")
        everyone = [str(n) for n in server_config.trusted_proxies if n.prefixlen == 0]
        if everyone:
            note(
                f"execgate: warning: [server] trusted_proxies holds {', '.join(everyone)}:"
                " any client may name the call forward-auth decides (X-Original-* /"
                " X-Forwarded-*); list only your proxies' addresses"
            )
        with contextlib.ExitStack() as stack, multiprocess_dir(service):
            for sock in sockets:
                stack.enter_context(sock)
            # Each worker stops once this process is gone (killed with SIGKILL, say): no
            # worker serves on without the process that replaces the dead. One worker is
            # this process, which has no supervisor, whatever its environment says.
            os.environ.pop(SUPERVISOR_ENV, None)
            if config.workers > 1:
                os.environ[SUPERVISOR_ENV] = str(os.getpid())
                supervisor = _supervisor_class()(config, sockets=sockets)
                if stop.asked:  # before the supervisor's handlers were in place
                    return 0
                supervisor.run()
                return EXIT_FAILED if supervisor.start_failed() else 0
            server = uvicorn.Server(config)
            stop.server = server
            if stop.asked:  # it starts, and stops at once (the gateway opened and closed)
                server.should_exit = True
            server.run(sockets=sockets)
            return 0 if server.started else EXIT_FAILED
    finally:
        os.environ.pop(SUPERVISOR_ENV, None)
        signal.signal(signal.SIGTERM, previous)


def register(commands: Commands) -> None:
    p = commands.add("serve", "run the HTTP service (decisions, forward-auth, admin) on uvicorn")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address or name to listen on (default: 127.0.0.1; '' for every address)",
    )
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default: 8080)")
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes (default: 1; at most 64, or four per CPU core)",
    )
    p.set_defaults(func=_serve)
