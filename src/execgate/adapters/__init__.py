"""Adapters: what puts the gateway in front of real execution.

Each adapter turns one kind of execution into a decision request, runs the execution
only when the decision is ``proceed`` or ``reroute``, and reports its outcome to the
audit log. Today there are two:

    guard.py    ``Guard``: a decorator (``@guard.protect(...)``) and a context manager
                (``with guard.execution(...)``) for Python callables
    http.py     the HTTP request mapping of forward-auth (``/v1/forward-auth`` behind
                nginx, Envoy or Traefik) and the headers a runtime sends through a proxy

The command adapter (``exec.py``, ``execgate exec -- CMD``) and the MCP proxy (``mcp.py``)
do not exist yet.
"""

from execgate.adapters.guard import Execution, ExecutionPaused, ExecutionRefused, Guard

__all__ = ["Execution", "ExecutionPaused", "ExecutionRefused", "Guard"]
