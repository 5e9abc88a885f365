"""What ``execgate serve`` enforces below the app: header size and client timeouts."""

from __future__ import annotations

from typing import Any

from execgate.home import ServerConfig

__all__ = ["uvicorn_options"]


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that enforce ``server``'s limits."""
    return {}
