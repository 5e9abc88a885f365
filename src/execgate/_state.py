"""What one decision accumulates as it passes the stages (internal)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from execgate.approvals import Pending
from execgate.artifacts import Artifact
from execgate.lineage import ParentExecution
from execgate.model import Outcome, Reason, Request
from execgate.policy import Policy
from execgate.proofs import Proof

__all__ = ["RECORD_VERSION", "DecisionState"]

RECORD_VERSION: Final = 1


@dataclass(slots=True)
class DecisionState:
    decision_id: str
    now: int
    stage: str = "parse"
    request: Request | None = None
    request_hash: str | None = None
    request_size: int = 0  # bytes of the request's canonical form (what request_hash hashes)
    artifact: Artifact | None = None
    proof: Proof | None = None
    outcome: Outcome = Outcome.DENY
    reasons: list[Reason] = field(default_factory=list)
    rule: str | None = None
    route: str | None = None
    parent: ParentExecution | None = None
    approval: str | None = None  # the approval opened, waited on, or used
    open_approval: Pending | None = None
    consume_approval: str | None = None
    # Who asks (``approvals.asker``), once a pause rule matched: the commit that opens or
    # uses an approval checks for a deny of the request by the same asker.
    asker: str = ""
    approvers: list[str] = field(default_factory=list)
    # What the decision stands on beside its artifact, as (revocation key, reason code,
    # what it is): the attester's key, the parent receipt's signing key, the keys and ids
    # of the approvers a resumed decision counts. The commit checks them with the
    # artifact's, so a revocation that returned before it takes that ground away.
    grounds: list[tuple[tuple[str, str], str, str]] = field(default_factory=list)
    # The policy this decision is made under, taken once when it starts: a reload that
    # lands meanwhile cannot mix two policies (or their hashes) into one decision.
    policy: Policy | None = None

    @property
    def policy_hash(self) -> str:
        assert self.policy is not None, "a decision's policy is set when it starts"
        return self.policy.hash

    def stop(self, outcome: Outcome, code: str, detail: str) -> None:
        self.outcome = outcome
        self.reasons = [Reason(code, detail)]
        self.route = None
