"""A SIGHUP that comes while ``execgate serve`` starts: remembered, not the end.

Until the app's reload handler is in place (``execgate.server.admin``), SIGHUP's default
action would end the process, and ignoring it would lose the reload asked for. This
module is small and imports nothing of the server, so ``serve`` installs the handler
before its heavy imports."""

from __future__ import annotations

import threading

__all__ = ["hup_before_handler", "take_early_hup"]

_early_hup = threading.Event()


def hup_before_handler(signum: int, frame: object) -> None:
    """SIGHUP's handler while a process starts: the reload is remembered, and made once
    the gateway is open and the real handler is in place, not lost."""
    _early_hup.set()


def take_early_hup() -> bool:
    """Whether a SIGHUP came before any handler acted on it (and forget it)."""
    came = _early_hup.is_set()
    _early_hup.clear()
    return came
