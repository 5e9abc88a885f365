"""Immutable values: the request, the outcome, the reasons and the decision."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from execgate.errors import REASON_CODES
from execgate.receipts import MAX_RECEIPT_BYTES

__all__ = ["ID_TEXT", "MAX_ID", "Decision", "Outcome", "Reason", "Request"]

# A decision's or an approval's id as a caller names it (a path, a query, a command
# line): what this gateway makes (UUIDs) and little more; anything else is no such id,
# never a store lookup or an echo.
MAX_ID: Final = 128
ID_TEXT: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")


class Outcome(enum.StrEnum):
    """The five outcomes. Only ``PROCEED`` and ``REROUTE`` let anything execute."""

    PROCEED = "proceed"
    PAUSE = "pause"
    REROUTE = "reroute"
    DENY = "deny"
    FAIL_CLOSED = "fail_closed"

    @property
    def executes(self) -> bool:
        return self in (Outcome.PROCEED, Outcome.REROUTE)


@dataclass(frozen=True, slots=True)
class Reason:
    """One stable, dotted reason code and a human-readable detail."""

    code: str
    detail: str

    def __post_init__(self) -> None:
        if self.code not in REASON_CODES:
            raise ValueError(f"unknown reason code {self.code!r}")

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


_REQUEST_KEYS = frozenset({"action", "resource", "args", "runtime", "parent"})
# What separates the segments of a path in a resource: "files:../x" and C:\a\..\b climb
# as "/a/../b" does.
_SEGMENTS = re.compile(r"[/:\\]")
_PATH_SEGMENTS = re.compile(r"[/\\]")


@dataclass(frozen=True, slots=True)
class Request:
    """One execution request. ``args`` is a JSON object; ``parent`` a parent receipt or None.

    Build one with ``Request.from_json``; it checks every field's type so the rest of the
    pipeline never meets a malformed request.
    """

    action: str
    resource: str
    runtime: str
    args: Mapping[str, Any] = field(default_factory=dict)
    parent: str | None = None

    def __post_init__(self) -> None:
        for name in ("action", "resource", "runtime"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > 1024:
                raise ValueError(f"request.{name} must be a non-empty string of ≤ 1024 chars")
            # Globs match any character, so 'payments.refund\n' or 'payments.refund' with
            # a zero-width space would slip past a rule on 'payments.refund' and reach an
            # executor that may trim or ignore what made it different.
            if not value.isprintable():
                raise ValueError(
                    f"request.{name} must be printable: no control, format or separator"
                    " characters other than the space"
                )
            if value != value.strip():  # 'payments.refund ' is no rule's payments.refund
                raise ValueError(f"request.{name} may not begin or end with a space")
        # A path resolved later ('/srv/data/../../etc') may name what no grant or rule
        # that matched it meant: a glob compares text, not where the path leads.
        if any(segment in (".", "..") for segment in _SEGMENTS.split(self.resource)):
            raise ValueError(
                "request.resource may not hold '.' or '..' path segments: resolve the path"
                " before asking"
            )
        # A path: '/srv//secret' is '/srv/secret' to the file system and to most web
        # frameworks, but a rule on /srv/secret/** does not match it. (A trailing '/'
        # is kept: '/srv/' is a directory's own spelling.)
        if self.resource.startswith(("/", "\\")):
            segments = _PATH_SEGMENTS.split(self.resource)[1:]
            if any(not segment for segment in segments[:-1]):
                raise ValueError(
                    "request.resource may not hold empty path segments ('//'): normalise"
                    " the path before asking"
                )
        if not isinstance(self.args, Mapping):
            raise ValueError("request.args must be a JSON object")
        if self.parent is not None and (
            not isinstance(self.parent, str)
            or len(self.parent) > MAX_RECEIPT_BYTES
            or not self.parent.isascii()
        ):
            # Longer (or other than ASCII, as a compact JWS is) is no receipt, and would
            # be kept whole in the log: a request without a proof (anyone's) loses its
            # arguments there, never its parent.
            raise ValueError(
                "request.parent must be a parent receipt (ASCII text of at most"
                f" {MAX_RECEIPT_BYTES} characters) or null"
            )

    @classmethod
    def from_json(cls, obj: object) -> Request:
        """Parse the wire shape ``{action, resource, args, runtime, parent}``."""
        if not isinstance(obj, Mapping):
            raise ValueError("request must be a JSON object")
        unknown = set(obj) - _REQUEST_KEYS
        if unknown:
            raise ValueError(f"request has unknown fields: {', '.join(sorted(unknown))}")
        missing = {"action", "resource", "runtime"} - set(obj)
        if missing:
            raise ValueError(f"request is missing: {', '.join(sorted(missing))}")
        return cls(
            action=obj["action"],
            resource=obj["resource"],
            runtime=obj["runtime"],
            args=obj.get("args", {}) if obj.get("args") is not None else {},
            parent=obj.get("parent"),
        )

    def canonical(self) -> dict[str, Any]:
        """The canonical request of DESIGN §4.3, hashed with JCS into the proof's ``rh``."""
        return {
            "action": self.action,
            "resource": self.resource,
            "args": dict(self.args),
            "runtime": self.runtime,
            "parent": self.parent,
        }

    def for_conditions(self) -> dict[str, Any]:
        """The ``request`` a policy condition sees: the canonical request, without
        ``parent`` when it names none, so that ``has(request.parent)`` means it does."""
        view = self.canonical()
        if self.parent is None:
            del view["parent"]
        return view


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request, with the evidence the gateway produced for it."""

    decision_id: str
    outcome: Outcome
    reasons: tuple[Reason, ...]
    request_hash: str | None
    policy_hash: str
    decided_at: int
    artifact_jti: str | None = None
    chain: tuple[str, ...] = ()
    rule: str | None = None
    route: str | None = None
    log_index: int | None = None
    receipt: str | None = None
    approval_id: str | None = None  # the approval a pause opened or waits on, or a resume used

    def __post_init__(self) -> None:
        # A reroute executes (elsewhere): it names its target instead of a reason code.
        if not self.outcome.executes and not self.reasons:
            raise ValueError("every decision that does not execute carries at least one reason")
        if self.outcome is Outcome.REROUTE and not self.route:
            raise ValueError("a reroute names its target")

    @property
    def executes(self) -> bool:
        return self.outcome.executes

    def to_json(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "outcome": self.outcome.value,
            "reasons": [r.to_json() for r in self.reasons],
            "request_hash": self.request_hash,
            "policy_hash": self.policy_hash,
            "decided_at": self.decided_at,
            "artifact_jti": self.artifact_jti,
            "chain": list(self.chain),
            "rule": self.rule,
            "route": self.route,
            "log_index": self.log_index,
            "receipt": self.receipt,
            "approval_id": self.approval_id,
        }
