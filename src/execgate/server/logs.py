"""Structured logs: one JSON object per line, with the decision id when there is one.

Every line carries ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, and
then only fields from a fixed allow-list (``FIELDS``): decision id, outcome, reason
codes, method, route template, status, durations. What a request carries is never
logged: no artifact, proof, attestation, receipt, bearer token, ``Authorization``
header, request arguments, query string or raw path (the route template is logged, not
the path, so an id or a token placed in a URL stays out of the log too). Three more
guards sit in the formatter because a log line is easy to get wrong later:

- a field that is not on the allow-list is dropped, whatever a caller passes as ``extra``;
- the message is scrubbed of anything shaped like a compact JWS and of ``Bearer``
  credentials, then capped in length;
- an exception is logged as its type and its frames (file, line, function), never its
  message: a parser's message may quote the input it refused. A message that is itself
  a formatted traceback (uvicorn logs a failed startup that way) is cut to its
  exception's type for the same reason.

``log_config`` is the ``logging.config.dictConfig`` document ``execgate serve`` hands to
uvicorn, so uvicorn's own lines (startup, shutdown, protocol errors) are JSON as well,
and so are warnings and errors of any other logger (``asyncio``'s, say), which would
otherwise reach Python's last-resort handler as plain text, message and all.
uvicorn's access log stays off: ``access`` (called by the metrics middleware) writes one
line per request with the route template and, when the request made a decision, its id,
outcome and reason codes; uvicorn's line (raw path and query string) cannot have those
and must not carry what it has. A decision made outside a request (no access line to
carry it) gets its own ``execgate.decision`` line, with the time spent in each stage.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = [
    "ACCESS_LOGGER",
    "DECISION_LOGGER",
    "FIELDS",
    "JsonFormatter",
    "about",
    "access",
    "decision",
    "lean_records",
    "log_config",
    "request_fields",
]

ACCESS_LOGGER: Final = "execgate.access"
DECISION_LOGGER: Final = "execgate.decision"
FIELDS: Final = (
    "decision_id",
    "outcome",
    "reasons",
    "method",
    "route",
    "status",
    "duration_ms",
    "stages_ms",
)
_MAX_MESSAGE: Final = 1000
_JWS: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")  # '{"…' header
_BEARER: Final = re.compile(r"(?i)\b(bearer|basic)\s+\S+")
_RECORD_DEFAULTS: Final = frozenset(vars(logging.makeLogRecord({})))
_slow_encode: Final = json.JSONEncoder(ensure_ascii=False, default=str).encode

# The fields of the request being served, shared by reference with the threads it runs
# decisions in (anyio copies the context into the worker thread; the dict is the same).
_request: ContextVar[dict[str, Any] | None] = ContextVar("execgate_request", default=None)


def _encode(line: dict[str, Any]) -> str:
    """One JSON line: orjson (about ten times faster; a line per request is a few per
    cent of a forward-auth call), or the stdlib for what orjson refuses (a lone
    surrogate in a message, an integer past 64 bits)."""
    try:
        return orjson.dumps(line, default=str).decode()
    except orjson.JSONEncodeError:
        return _slow_encode(line)


_TRACEBACK: Final = "Traceback (most recent call last):"
_GROUP_TRACEBACK: Final = "Exception Group Traceback (most recent call last):"
_EXCEPTION_TYPE: Final = re.compile(r"[A-Za-z_][\w.]*")


def _exception_class(name: str) -> bool:
    """Whether ``name`` (``ValueError``, ``execgate.errors.ConfigError``) names an
    exception class this process has loaded. Looked up in the module's namespace, never
    with ``getattr``: a module's ``__getattr__`` runs code, and the name is a log's text."""
    if not _EXCEPTION_TYPE.fullmatch(name):
        return False
    module, _, attr = name.rpartition(".")
    try:  # whatever sits there, without running its code (a lazy module would load)
        namespace = object.__getattribute__(sys.modules.get(module or "builtins"), "__dict__")
    except (AttributeError, TypeError):
        return False
    found = namespace.get(attr) if isinstance(namespace, dict) else None
    return isinstance(found, type) and issubclass(found, BaseException)


def _exception_type(traceback_text: str) -> str | None:
    """The type of the last exception a formatted traceback names: its last line that is
    not indented and begins with the name of an exception class this process has
    loaded, up to a colon. Any other line may be a message's, or quoted source (a
    syntax error's text, with line ends of its own): the first or the last such line is
    no type, and logging it would log what the message said."""
    found = None
    for line in traceback_text.split("\n"):  # not splitlines: U+2028 is no line end here
        if line and not line[0].isspace():
            name = line.partition(":")[0]
            if _exception_class(name):
                found = name
    return found


def _scrub(text: str) -> str:
    # A traceback anywhere in it (one whose first exception was never raised begins
    # with that exception's line, not the header): the type only, never the text.
    if _TRACEBACK in text or _GROUP_TRACEBACK in text:
        name = _exception_type(text)
        if name is not None:
            return f"traceback: {name}"
        return "traceback: an exception group" if _GROUP_TRACEBACK in text else "traceback"
    text = _BEARER.sub(lambda m: f"{m.group(1)} [redacted]", text)
    text = _JWS.sub("[redacted-jws]", text)
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "…"
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, allow-listed fields only (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _scrub(record.getMessage()),
            "pid": record.process,
        }
        for name in FIELDS:
            if name in record.__dict__ and name not in _RECORD_DEFAULTS:
                line[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            frames = traceback.extract_tb(record.exc_info[2])
            line["exc_frames"] = [f"{f.filename}:{f.lineno} in {f.name}" for f in frames]
        return _encode(line)


def request_fields() -> dict[str, Any]:
    """Start collecting fields for the request being served (its access-log line)."""
    fields: dict[str, Any] = {}
    _request.set(fields)
    return fields


def decision(
    decision_id: str, outcome: str, reasons: list[str], stages: Mapping[str, float]
) -> None:
    """Record one decision (codes only, never details or inputs). Made while serving a
    request, it goes on that request's access-log line (one line per request: a line
    costs about a tenth of a decision); otherwise it gets its own line."""
    fields = _request.get()
    if fields is not None:
        fields["decision_id"] = decision_id
        fields["outcome"] = outcome
        fields["reasons"] = reasons
        return
    logging.getLogger(DECISION_LOGGER).info(
        "decision",
        extra={
            "decision_id": decision_id,
            "outcome": outcome,
            "reasons": reasons,
            "duration_ms": round(sum(stages.values()) * 1000, 3),
            "stages_ms": {k: round(v * 1000, 3) for k, v in stages.items()},
        },
    )


def about(decision_id: str) -> None:
    """Name, on the access-log line of the request being served, the decision it is
    about without deciding anything (an outcome report for a decision in the log)."""
    fields = _request.get()
    if fields is not None:
        fields["decision_id"] = decision_id


def access(
    *, method: str, route: str, status: int, seconds: float, fields: Mapping[str, Any]
) -> None:
    """The one access-log line of a request. Its record is made and handed to the
    handlers directly: ``Logger.info`` would also look up the calling frame, which no
    line shows (a few microseconds of every request)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.isEnabledFor(logging.INFO):
        return
    extra = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        **{k: fields[k] for k in ("decision_id", "outcome", "reasons") if k in fields},
    }
    logger.handle(
        logger.makeRecord(logger.name, logging.INFO, __file__, 0, "request", (), None, extra=extra)
    )


def lean_records() -> None:
    """For a process that logs only through ``JsonFormatter`` (a served worker): log
    records skip the thread and process names no line shows (process-wide)."""
    logging.logThreads = False
    logging.logMultiprocessing = False


def log_config(level: str = "INFO") -> dict[str, Any]:
    """The ``dictConfig`` document: JSON lines on stderr for execgate and uvicorn."""
    handler = {"handlers": ["json"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "execgate": dict(handler),
            "uvicorn": dict(handler),
            "uvicorn.error": {"level": level},
            # Replaced by execgate.access (route templates, decision ids, no raw paths).
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
        "root": {"handlers": ["json"], "level": "WARNING"},
    }
