"""Admin routes: approvals, revocations, policy reload, audit export and consistency proofs."""

from __future__ import annotations

from typing import Any, Final

from starlette.routing import BaseRoute

__all__ = ["COMPONENTS", "ERROR_CODES", "PATHS", "ROUTES", "SCHEMAS"]

ROUTES: Final[list[BaseRoute]] = []
PATHS: Final[dict[str, Any]] = {}
SCHEMAS: Final[dict[str, Any]] = {}
ERROR_CODES: Final[list[str]] = []
COMPONENTS: Final[dict[str, Any]] = {}
