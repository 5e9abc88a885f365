"""Policy: ordered rules, first match wins, no match denies (DESIGN §3 stage 10).

A policy file is YAML::

    version: 1
    rules:
      - name: small-payments                 # required, unique, [a-z0-9][a-z0-9._-]*
        match: {action: "payments.*", resource: "acct:**"}  # action required; resource "**"
        when: "request.args.amount <= 100"   # optional CEL, compiled once at load
        effect: proceed                      # proceed | deny | pause | reroute
        reason: "small amounts are routine"  # optional, any rule; goes into the detail
      - name: big-payments
        match: {action: payments.transfer}
        effect: pause
        approvers: [finance, security]       # pause only: distinct group names
        quorum: 2                            # pause only: approvals needed from each group
        ttl: 3600                            # pause only: seconds
      - name: shell-to-sandbox
        match: {action: "shell.*"}
        effect: reroute
        target: sandbox                      # reroute only: a configured target

A rule matches when its globs (``execgate._glob``) match the request's action and
resource and its condition, if any, is exactly ``true``. A condition that errors (a
missing field, a wrong type) or yields anything but a boolean denies with
``policy.denied``; it is never skipped. Conditions see ``request``, ``artifact``,
``environment`` and ``now`` (a UTC timestamp). What ``artifact`` holds for a delegated
artifact (the claims its authority signed, ``chain`` for each link's own) is
``execgate.pipeline.policy_view``.

Anything the loader does not understand is refused with a ``PolicyError`` naming the rule
and line: unknown keys, duplicate keys, wrong types, anchors and aliases, an empty rule
list, a file over 1 MiB.
"""

from execgate.policy.cases import (
    DEFAULT_NOW,
    Case,
    CaseResult,
    Verdict,
    load_cases,
    parse_cases,
    run_cases,
)
from execgate.policy.engine import Policy
from execgate.policy.loader import load_policy, parse_policy
from execgate.policy.model import PauseSpec, PolicyResult, Rule

__all__ = [
    "DEFAULT_NOW",
    "Case",
    "CaseResult",
    "PauseSpec",
    "Policy",
    "PolicyResult",
    "Rule",
    "Verdict",
    "load_cases",
    "load_policy",
    "parse_cases",
    "parse_policy",
    "run_cases",
]
