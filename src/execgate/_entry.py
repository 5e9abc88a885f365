"""The ``execgate`` command (console script and ``python -m execgate``).

``execgate serve`` must not be ended by a SIGHUP that comes while it starts (see
``execgate._hup``): the handler that remembers one is installed here, before the CLI's
imports, which take a tenth of a second or more. Only the interpreter's own start comes
before it."""

from __future__ import annotations

import signal
import sys


def main() -> int:
    if "serve" in sys.argv[1:]:
        from execgate._hup import hup_before_handler

        signal.signal(signal.SIGHUP, hup_before_handler)
    from execgate.cli import main as cli_main

    return cli_main()
