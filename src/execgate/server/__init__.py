"""The HTTP service (DESIGN §6, HTTP): an ASGI app over ``Gateway``.

Dependency choice: Starlette on uvicorn. Starlette is a small, typed, widely reviewed
ASGI toolkit (routing with path convertors, 404/405 with ``Allow``, a lifespan hook and
an in-process ``TestClient``); the parts that matter for a fail-closed gateway (body size
limits enforced while streaming, strict JSON, typed error bodies, what runs in which
thread) are written here on purpose rather than taken from a framework, so a hand-written
ASGI router would only add code to review. FastAPI was not chosen: its request-model
validation would be a second parser beside ``Submission.from_json``, and the wire
shapes must have exactly one. uvicorn is the production server (several worker processes,
graceful shutdown that lets in-flight requests finish before the lifespan closes the
store).

``create_app`` builds the app around a function that opens a ``Gateway``;
``app_from_environment`` is the factory ``execgate serve`` gives uvicorn (the home is
``$EXECGATE_HOME``, so every worker process opens the same SQLite home).
"""

from __future__ import annotations

from execgate.server.app import app_from_environment, create_app

__all__ = ["app_from_environment", "create_app"]
