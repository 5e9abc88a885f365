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
for prometheus-client's multiprocess files (``execgate.server.metrics.multiprocess_dir``)
and removed when the service stops. Both directories are made in the home's ``run/``
(0700), not in ``/tmp``, where a cleaner of old files could remove what a service running
for weeks still needs; one left by a service killed with SIGKILL may be removed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
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
        with _policy_in_force(home / RUN_DIR) as pinned:
            # Refuse a broken home before binding; pin the policy (and keep the config
            # and trust store) the workers will run.
            open_gateway(home, fallback=False, policy_in_force=pinned, new_service=True).close()
            with pin_lock(pinned):
                kept = service_copy(
                    pinned.parent, "execgate.toml", home / CONFIG_NAME, "config", new=False
                )
            return _run(args, home, load_config(home, data=kept).server)
    finally:
        signal.signal(signal.SIGHUP, previous_hup)


def _policy_in_force(parent: Path) -> contextlib.AbstractContextManager[Path]:
    """The file that holds the service's policy in force (``Gateway.open``), in a fresh
    private directory in ``parent`` named in ``$EXECGATE_POLICY_IN_FORCE`` for the
    workers started inside; removed at exit."""
    from execgate.server._envdir import private_dir_in_env
    from execgate.server.app import POLICY_IN_FORCE_ENV

    return private_dir_in_env(
        POLICY_IN_FORCE_ENV, prefix="execgate-policy-", entry="policy.yaml", parent=parent
    )


def _run(args: argparse.Namespace, home: Path, server_config: ServerConfig) -> int:
    import uvicorn

    from execgate.server._limits import uvicorn_options
    from execgate.server.metrics import multiprocess_dir

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
        with multiprocess_dir(home / RUN_DIR):
            if config.workers > 1:
                sock = config.bind_socket()
                supervisor = _supervisor_class()(config, sockets=[sock])
                try:
                    supervisor.run()
                finally:
                    sock.close()
                return EXIT_FAILED if supervisor.start_failed() else 0
            server = uvicorn.Server(config)
            server.run()
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
