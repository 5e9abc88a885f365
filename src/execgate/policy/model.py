"""Policy values: a rule, the approval a pause asks for, and the result of an evaluation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from execgate._glob import glob_match, validate_glob
from execgate.errors import REASON_CODES
from execgate.model import Outcome, Reason
from execgate.policy.conditions import Condition

__all__ = ["EFFECTS", "NAME_PATTERN", "PauseSpec", "PolicyResult", "Rule"]

EFFECTS: Final = frozenset({Outcome.PROCEED, Outcome.DENY, Outcome.PAUSE, Outcome.REROUTE})
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
MAX_QUORUM: Final = 100
MAX_TTL: Final = 366 * 24 * 3600


@dataclass(frozen=True, slots=True)
class PauseSpec:
    """Who must approve a paused request: ``quorum`` approvers from each group, within ``ttl`` s."""

    approvers: tuple[str, ...]
    quorum: int
    ttl: int

    def __post_init__(self) -> None:
        if not self.approvers or len(set(self.approvers)) != len(self.approvers):
            raise ValueError("approvers must be a non-empty list of distinct group names")
        if not all(isinstance(group, str) and group for group in self.approvers):
            raise ValueError("approver groups must be non-empty strings")
        for name, value, high in (("quorum", self.quorum, MAX_QUORUM), ("ttl", self.ttl, MAX_TTL)):
            if type(value) is not int or not 1 <= value <= high:
                raise ValueError(f"{name} must be an integer from 1 to {high}")


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule. It matches when both globs match and ``condition`` is exactly true."""

    name: str
    action: str
    effect: Outcome
    resource: str = "**"
    condition: Condition | None = None
    reason: str | None = None
    target: str | None = None
    pause: PauseSpec | None = None
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"rule name {self.name!r} must match {NAME_PATTERN.pattern}")
        validate_glob(self.action)
        validate_glob(self.resource)
        if not isinstance(self.effect, Outcome) or self.effect not in EFFECTS:
            raise ValueError(f"effect must be one of {', '.join(sorted(EFFECTS))}")
        if (self.effect is Outcome.REROUTE) != bool(self.target):
            raise ValueError("a reroute rule, and only a reroute rule, names a target")
        if (self.effect is Outcome.PAUSE) != (self.pause is not None):
            raise ValueError("a pause rule, and only a pause rule, has a pause spec")

    @property
    def when(self) -> str | None:
        """The condition's CEL source, if the rule has one."""
        return None if self.condition is None else self.condition.source

    def applies_to(self, action: str, resource: str) -> bool:
        """True when the rule's globs match; the condition is not consulted."""
        return glob_match(self.action, action) and glob_match(self.resource, resource)

    def result(self) -> PolicyResult:
        """The result of this rule matching."""
        suffix = f": {self.reason}" if self.reason else ""
        if self.effect is Outcome.PROCEED:
            detail, code = f"rule {self.name!r} allows the request", None
        elif self.effect is Outcome.REROUTE:
            detail, code = f"rule {self.name!r} reroutes to {self.target!r}", None
        elif self.effect is Outcome.PAUSE:
            assert self.pause is not None
            groups = ", ".join(self.pause.approvers)
            detail = (
                f"rule {self.name!r} requires {self.pause.quorum} approval(s) from each of "
                f"{groups} within {self.pause.ttl}s"
            )
            code = "approval.required"
        else:
            detail, code = f"rule {self.name!r} denies the request", "policy.denied"
        return PolicyResult(
            outcome=self.effect,
            rule=self.name,
            code=code,
            detail=detail + suffix,
            target=self.target,
            pause=self.pause,
        )


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """The policy stage's answer. ``code`` is set exactly when the outcome is not executing."""

    outcome: Outcome
    rule: str | None
    code: str | None
    detail: str
    target: str | None = None
    pause: PauseSpec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.outcome, Outcome) or self.outcome not in EFFECTS:
            raise ValueError(f"a policy cannot decide {self.outcome!r}")
        if self.outcome.executes != (self.code is None):
            raise ValueError("deny and pause carry a reason code; proceed and reroute do not")
        if self.code is not None and self.code not in REASON_CODES:
            raise ValueError(f"unknown reason code {self.code!r}")
        if (self.outcome is Outcome.REROUTE) != (self.target is not None):
            raise ValueError("a reroute, and only a reroute, names a target")
        if (self.outcome is Outcome.PAUSE) != (self.pause is not None):
            raise ValueError("a pause, and only a pause, carries a pause spec")

    @property
    def reason(self) -> Reason | None:
        """The reason to put in the decision, or None for proceed and reroute."""
        return None if self.code is None else Reason(self.code, self.detail)
