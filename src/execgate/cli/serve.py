"""``execgate serve``: the HTTP decision API (first slice of issue 6) on uvicorn.

The home is checked in this process first (a broken home is a usage error, exit 2,
before any port is bound); then every worker process opens it again from
``$EXECGATE_HOME``. Several workers share the SQLite home safely: the store runs in WAL
mode and every write (decision, outcome, checkpoint) is one ``BEGIN IMMEDIATE``
transaction, so log indexes stay dense across processes. SIGTERM (or SIGINT) stops
accepting connections, lets in-flight decisions (and their audit appends) finish and
closes the store; SIGTERM then exits 0 (uvicorn re-raises the signal it caught once it
has shut down, and the handler installed here makes that a clean exit).
"""

from __future__ import annotations

import argparse
import os
import signal
from types import FrameType

from execgate.cli._common import Commands, home_of, note, open_gateway, positive

__all__ = ["register"]

GRACEFUL_SECONDS = 30


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _stopped(sig: int, frame: FrameType | None) -> None:
    """What uvicorn re-raises SIGTERM into after its graceful shutdown: a clean exit."""


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    home = home_of(args).resolve()
    open_gateway(home, fallback=False).close()  # refuse a broken home before binding
    os.environ["EXECGATE_HOME"] = str(home)
    note(
        f"execgate: serving {home} on http://{args.host}:{args.port} with {args.workers} worker(s)"
    )
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.run(
            "execgate.server:app_from_environment",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            proxy_headers=False,  # forwarded headers are not trusted in this slice
            server_header=False,
            access_log=False,
            log_level="warning",
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def register(commands: Commands) -> None:
    p = commands.add("serve", "run the HTTP decision API (first slice) on uvicorn")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default: 8080)")
    p.add_argument("--workers", type=positive, default=1, help="worker processes (default: 1)")
    p.set_defaults(func=_serve)
