"""The loaded policy and its evaluation: ordered rules, first match wins, deny by default."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from execgate.model import Outcome
from execgate.policy.conditions import ConditionError, Inputs, Reads, merge_reads
from execgate.policy.model import PolicyResult, Rule

__all__ = ["Policy"]

_SHORT = 80
_HASH = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Policy:
    """An immutable, validated policy. Build one with ``load_policy`` or ``parse_policy``.

    ``hash`` is ``"sha256:"`` + the hex SHA-256 of the RFC 8785 canonical JSON of the
    parsed document, so comments and formatting do not change it and any edit does.
    """

    rules: tuple[Rule, ...]
    hash: str
    source: str
    _reads: Reads = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("a policy without rules is a configuration error, not an allow-all")
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        if not _HASH.fullmatch(self.hash):
            raise ValueError("hash must be 'sha256:' and 64 lowercase hex digits")
        reads = merge_reads(rule.condition for rule in self.rules if rule.condition)
        object.__setattr__(self, "_reads", reads)

    def rule(self, name: str) -> Rule:
        """The rule called ``name``; ``KeyError`` if there is none."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def evaluate(
        self,
        *,
        request: Mapping[str, Any],
        artifact: Mapping[str, Any],
        environment: Mapping[str, Any],
        now: int,
    ) -> PolicyResult:
        """Decide one request. Never proceeds unless a proceed rule matched exactly.

        A condition that errors or returns anything but a boolean denies with
        ``policy.denied`` naming the rule; it is never skipped. No match denies with
        ``policy.no_match``.
        """
        if type(now) is not int:
            raise TypeError("now must be an integer number of seconds since the epoch")
        action = request.get("action") if isinstance(request, Mapping) else None
        resource = request.get("resource") if isinstance(request, Mapping) else None
        if not isinstance(action, str) or not isinstance(resource, str):
            return _deny(None, "request has no string action and resource")
        inputs: Inputs | None = None
        for rule in self.rules:
            if not rule.applies_to(action, resource):
                continue
            if rule.condition is not None:
                if inputs is None:
                    inputs = Inputs(
                        self._reads,
                        request=request,
                        artifact=artifact,
                        environment=environment,
                        now=now,
                    )
                try:
                    if not rule.condition.evaluate(inputs):
                        continue
                except ConditionError as exc:
                    return _deny(rule.name, f"rule {rule.name!r}: condition failed: {exc}")
            return rule.result()
        return PolicyResult(
            outcome=Outcome.DENY,
            rule=None,
            code="policy.no_match",
            detail=f"no rule matches action {_clip(action)!r} on resource {_clip(resource)!r}",
        )


def _deny(rule: str | None, detail: str) -> PolicyResult:
    return PolicyResult(outcome=Outcome.DENY, rule=rule, code="policy.denied", detail=detail)


def _clip(text: str) -> str:
    return text if len(text) <= _SHORT else text[: _SHORT - 1] + "…"
