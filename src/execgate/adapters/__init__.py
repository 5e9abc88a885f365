"""Adapters: what puts the gateway in front of real execution.

Each adapter turns one kind of execution into a decision request, runs the execution
only when the decision is ``proceed`` or ``reroute``, and reports its outcome to the
audit log. Today there is one:

    guard.py    ``Guard``: a decorator (``@guard.protect(...)``) and a context manager
                (``with guard.execution(...)``) for Python callables

The command adapter (``exec.py``, ``execgate exec -- CMD``), the HTTP adapters
(forward-auth for nginx, Envoy and Traefik) and the MCP proxy (``mcp.py``) do not exist yet.
"""

from execgate.adapters.guard import Execution, ExecutionPaused, ExecutionRefused, Guard

__all__ = ["Execution", "ExecutionPaused", "ExecutionRefused", "Guard"]
