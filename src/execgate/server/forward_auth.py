"""Forward-auth for nginx auth_request, Envoy ext_authz (HTTP) and Traefik ForwardAuth."""

from __future__ import annotations

from typing import Any, Final

from starlette.routing import BaseRoute

__all__ = ["ERROR_CODES", "PATHS", "ROUTES", "SCHEMAS"]

ROUTES: Final[list[BaseRoute]] = []
PATHS: Final[dict[str, Any]] = {}
SCHEMAS: Final[dict[str, Any]] = {}
ERROR_CODES: Final[list[str]] = []
