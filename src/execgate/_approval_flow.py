"""Reviewing paused requests, and resuming them (the ``Gateway`` side of ``approvals``).

Mixed into ``Gateway``: a pause rule that matched either resumes an approved request,
waits on an open approval, or opens one; approvers' signed reviews are recorded as
audit records; a hook hears when approvals open and resolve.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from execgate._state import RECORD_VERSION, DecisionState
from execgate._timing import clock_seconds
from execgate.approvals import (
    Pending,
    Review,
    asker,
    check_review,
    excluded_principals,
    quorum_met,
    reviewer_keys,
    standing_approvers,
    tally,
)
from execgate.artifacts import Artifact
from execgate.errors import ApprovalError
from execgate.jose import canonical_json
from execgate.model import Decision, Outcome, Reason
from execgate.policy import PauseSpec, Policy
from execgate.store.base import Conflict, ReviewWrite, Store, WriteJob
from execgate.trust import TrustStore

__all__ = ["ApprovalFlow"]


class ApprovalFlow:
    gateway_id: str
    policy: Policy
    store: Store
    trust: TrustStore
    _now: Callable[[], float]
    _leeway: int
    _notify_hook: Callable[[dict[str, Any]], None] | None
    _checkpoint_if_due: Callable[[int, int], None]  # from OutcomeLog

    def _pause_or_resume(
        self, state: DecisionState, artifact: Artifact, rule: str, spec: PauseSpec
    ) -> None:
        """A pause rule matched: resume if an approval for exactly this request, chain,
        policy and rule has reached its quorum; otherwise wait on it or open one."""
        assert state.request_hash is not None
        assert state.request is not None
        chain = tuple(link.jti for link in artifact.chain)
        links = tuple(link.digest for link in artifact.chain)
        holder = state.asker = asker(artifact.chain)
        live: list[tuple[Pending, list[Review]]] = []
        expired: Pending | None = None
        for row in self.store.approvals(request_hash=state.request_hash):
            pending = Pending.from_json(row.body, row.status)
            if pending.rule != rule or pending.status in ("consumed", "closed"):
                continue
            status = pending.state(state.now)
            if status == "denied" and pending.denies(holder):
                # One deny of this request under this rule is final, whatever artifact
                # the runtime asks again with (a fresh one, bound to any key, or a link
                # it delegated to itself) and whatever else a policy reload changed: no
                # new approval opens for other approvers to grant. Another runtime's deny
                # is not this one's, whatever subject it named (see approvals.asker).
                state.stop(
                    Outcome.DENY, "approval.denied", f"approval {pending.approval_id} was denied"
                )
                state.approval = pending.approval_id
                return
            if (
                status == "denied"
                or pending.policy_hash != state.policy_hash
                or pending.links != links
            ):
                continue  # an approval is for one policy and one exact chain
            if status == "pending":
                reviews = [Review.from_json(b) for b in self.store.reviews(pending.approval_id)]
                live.append((pending, self.standing(reviews)))
            elif expired is None:
                expired = pending
        # Only one approval for a request and chain is open at a time (the store refuses
        # a second: Conflict.APPROVAL_OPEN); resume with one that reached its quorum.
        for pending, reviews in live:
            if quorum_met(pending, reviews, self.trust):
                state.outcome, state.reasons, state.route = Outcome.PROCEED, [], None
                state.approval = state.consume_approval = pending.approval_id
                state.approvers = standing_approvers(pending, reviews, self.trust)
                state.grounds += [
                    (key, "approval.required", f"an approver of approval {pending.approval_id}")
                    for r in reviews
                    if r.verdict == "approve"
                    for key in reviewer_keys(r)
                ]
                return
        if live:
            pending, reviews = live[0]
            state.approval = pending.approval_id
            counts = ", ".join(
                f"{g} {n}/{pending.quorum}" for g, n in tally(pending, reviews, self.trust).items()
            )
            state.reasons = [
                Reason(
                    "approval.required",
                    f"approval {pending.approval_id} is waiting for reviews ({counts})",
                )
            ]
            return
        earlier = (
            []
            if expired is None
            else [
                Reason(
                    "approval.expired",
                    f"approval {expired.approval_id} expired at {expired.expires_at}",
                )
            ]
        )
        expires_at = min(state.now + spec.ttl, artifact.expires)
        if expires_at <= state.now:
            # An artifact accepted within the leeway past its exp: an approval opened now
            # could take no review, yet would page the approvers on every retry.
            state.stop(
                Outcome.DENY,
                "approval.expired",
                f"the artifact expired at {artifact.expires}: no approval can be given for it",
            )
            return
        subjects = [link.subject for link in artifact.chain]
        keys = [v for k, v in artifact.revocation_keys() if k == "kid"]
        attributions = [link.claims.get("att") or {} for link in artifact.chain]
        opened = Pending(
            approval_id=state.decision_id,
            request_hash=state.request_hash,
            chain=chain,
            links=links,
            policy_hash=state.policy_hash,
            rule=rule,
            groups=spec.approvers,
            quorum=spec.quorum,
            created_at=state.now,
            expires_at=expires_at,
            excluded=excluded_principals(subjects, keys, attributions),
            request=state.request.canonical(),
            holder=holder,
        )
        state.open_approval, state.approval = opened, opened.approval_id
        groups = ", ".join(spec.approvers)
        state.reasons = [
            *earlier,
            Reason(
                "approval.required",
                f"approval {opened.approval_id} opened: {spec.quorum} approver(s) from each of"
                f" {groups}, until {opened.expires_at}",
            ),
        ]

    def standing(self, reviews: Sequence[Review]) -> list[Review]:
        """The reviews that count now: every deny, and every approval but those whose key
        or approver has been revoked (``kid`` or ``sub``, see ``reviewer_keys``) since:
        a revoked key approves nothing more, as it signs nothing more anywhere here."""
        return [
            r
            for r in reviews
            if r.verdict != "approve" or self.store.revoked(reviewer_keys(r)) is None
        ]

    def approval_status(
        self, pending: Pending, reviews: Sequence[Review], now: int
    ) -> dict[str, Any]:
        """State (``approved`` once a pending one has its quorum), per-group tally and
        whether the quorum is met, counting only the reviews that stand (``standing``)."""
        counted = self.standing(reviews)
        met = quorum_met(pending, counted, self.trust)
        state = pending.state(now)
        if state == "pending" and met:
            state = "approved"
        return {"state": state, "tally": tally(pending, counted, self.trust), "quorum_met": met}

    def approval(self, approval_id: str) -> tuple[Pending, list[Review]]:
        """One approval and its reviews; ``ApprovalError`` for an unknown id."""
        row = self.store.approval(approval_id)
        if row is None:
            raise ApprovalError(f"no approval {approval_id} at this gateway")
        return (
            Pending.from_json(row.body, row.status),
            [Review.from_json(b) for b in self.store.reviews(approval_id)],
        )

    def approvals(self, *, limit: int | None = None, after: str | None = None) -> list[Pending]:
        """Approvals, newest first: at most ``limit`` of them, and with ``after`` those
        listed after that approval (see ``Store.approvals``)."""
        rows = self.store.approvals(limit=limit, after=after)
        return [Pending.from_json(r.body, r.status) for r in rows]

    def review(self, approval_id: str, token: str) -> tuple[int, Pending, list[Review]]:
        """Record one approver's signed review (an audit record); return its log index and
        the approval with every review so far. One deny is terminal."""
        pending, reviews = self.approval(approval_id)
        now = clock_seconds(self._now)
        review = check_review(
            token, pending=pending, trust=self.trust, now=now, leeway=self._leeway
        )
        earlier = [r for r in reviews if r.approver == review.approver]
        keys = self.trust.approvers[review.approver].keys  # check_review found the approver
        if any(r.kid in keys for r in earlier):
            raise ApprovalError(f"{review.approver} has already reviewed approval {approval_id}")
        entry = canonical_json(
            {
                "v": RECORD_VERSION,
                "kind": "review",
                "decision_id": approval_id,
                "gateway": self.gateway_id,
                "at": now,
                "approver": review.approver,
                "approver_kid": review.kid,
                "verdict": review.verdict,
                "comment": review.comment,
                "review": review.token,
            }
        )

        def finalize(conflict: str | None, _index: int) -> bytes:
            if conflict == Conflict.REVOKED:
                raise ApprovalError(
                    f"the key {review.kid} of approver {review.approver} (or the approver)"
                    " is revoked: it reviews nothing"
                )
            if conflict is not None:
                raise ApprovalError(f"approval {approval_id} closed or was reviewed meanwhile")
            return entry

        index = self.store.commit(
            WriteJob(
                None,
                0,
                None,
                finalize,
                decision_id=approval_id,
                kind="review",
                review=ReviewWrite(
                    approval_id,
                    review.approver,
                    review.verdict,
                    json.dumps(review.to_json()),
                    replaces=bool(earlier),
                ),
                # Checked in the commit: a revocation that returned before it wins.
                revocation_keys=reviewer_keys(review),
            )
        )
        self._checkpoint_if_due(index + 1, now)
        after, all_reviews = self.approval(approval_id)
        counted = self.standing(all_reviews)
        if review.verdict == "deny":
            self._notify("denied", after, None)
        elif quorum_met(after, counted, self.trust) and not quorum_met(
            after, [r for r in counted if r.approver != review.approver], self.trust
        ):
            self._notify("approved", after, None)
        return index, after, all_reviews

    def _notify(self, event: str, pending: Pending | None, decision: Decision | None) -> None:
        """Tell the configured hook that an approval opened or was resolved. Whatever the
        hook does (fails, hangs until its timeout) changes no decision."""
        if self._notify_hook is None:
            return
        message: dict[str, Any] = {"event": event, "gateway": self.gateway_id}
        if pending is not None:
            message["approval"] = pending.to_json()
        if decision is not None:
            message["decision"] = decision.to_json()
        with suppress(Exception):
            self._notify_hook(message)
