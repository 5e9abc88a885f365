"""The decision pipeline (DESIGN §3): the only place a decision is made.

``Gateway.decide`` runs the ordered stages; each passes or ends the decision with a
reason. Deny is the default: the outcome is ``proceed`` or ``reroute`` only when every
stage passed and a policy rule said so. Any exception becomes ``fail_closed`` with
``internal.error`` (a store failure: ``store.unavailable``); the decision is then
appended to the log in one atomic, durable commit together with its replay state, and
only after that commit is the caller told anything (write-ahead). A decision that could
not be logged is ``fail_closed`` with ``audit.unavailable``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from execgate.approvals import (
    Pending,
    Review,
    check_review,
    excluded_principals,
    quorum_met,
    tally,
)
from execgate.artifacts import DEFAULT_MAX_DEPTH, Artifact, ArtifactVerifier
from execgate.attestations import check_environment, verify_attestation
from execgate.audit.log import AuditLog
from execgate.errors import ApprovalError, AuditError, RequestError, StoreError, VerificationError
from execgate.home import load_config
from execgate.jose import PrivateKey, canonical_json, sha256_b64url
from execgate.keyfile import read_private_key
from execgate.lineage import ParentExecution, verify_parent
from execgate.model import Decision, Outcome, Reason, Request
from execgate.policy import PauseSpec, Policy, load_policy
from execgate.proofs import Proof, verify_proof
from execgate.receipts import sign_receipt
from execgate.scope import check_scope
from execgate.store.base import (
    ApprovalRow,
    Conflict,
    LogEntry,
    ReviewWrite,
    Store,
    UseClaim,
    WriteJob,
)
from execgate.store.sqlite import SQLiteStore
from execgate.trust import TrustStore

__all__ = ["MAX_REQUEST_BYTES", "Gateway", "Submission"]

MAX_REQUEST_BYTES: Final = 1024 * 1024
RECORD_VERSION: Final = 1
_PURGE_EVERY: Final = 4096
_SUBMISSION_KEYS: Final = frozenset({"request", "artifact", "proof", "attestation"})
_OUTCOME_STATUS: Final = frozenset({"succeeded", "failed"})
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Submission:
    """The wire shape of one decision request (DESIGN §6).

    ``request_hash`` is always computed here from ``request`` (never taken from the
    caller, so a proof can only ever bind the request that is evaluated), and the 1 MiB
    request limit holds for every way in: a request without a canonical form or over the
    limit raises ``RequestError``.
    """

    request: Request
    artifact: object
    proof: object
    attestation: object = None
    request_hash: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.request, Request):
            raise RequestError("the request must be a Request")
        try:
            canonical = canonical_json(self.request.canonical())
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep args
            raise RequestError(f"the request has no canonical JSON form: {exc}") from exc
        if len(canonical) > MAX_REQUEST_BYTES:
            raise RequestError(
                f"the request is {len(canonical)} bytes; the limit is {MAX_REQUEST_BYTES}"
            )
        object.__setattr__(self, "request_hash", sha256_b64url(canonical))
        # Evaluate exactly what was hashed: an independent copy of the arguments, so a
        # caller mutating its dict afterwards cannot change what the proof binds.
        frozen = replace(self.request, args=json.loads(canonical)["args"])
        object.__setattr__(self, "request", frozen)

    @classmethod
    def from_json(cls, obj: object) -> Submission:
        """Parse ``{"request": …, "artifact": …, "proof": …, "attestation": …}``."""
        if not isinstance(obj, Mapping):
            raise RequestError("a decision request must be a JSON object")
        unknown = set(obj) - _SUBMISSION_KEYS
        if unknown:
            raise RequestError(
                f"unknown fields {sorted(map(str, unknown))}; expected {sorted(_SUBMISSION_KEYS)}"
            )
        if "request" not in obj:
            raise RequestError("the 'request' field is required")
        try:
            request = Request.from_json(obj["request"])
        except (ValueError, TypeError) as exc:  # TypeError: e.g. non-string keys from Python
            raise RequestError(str(exc)) from exc
        return cls(request, obj.get("artifact"), obj.get("proof"), obj.get("attestation"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Submission:
        if len(data) > 2 * MAX_REQUEST_BYTES:
            raise RequestError(f"the decision request exceeds {2 * MAX_REQUEST_BYTES} bytes")
        try:
            from execgate.jose import loads_strict

            return cls.from_json(loads_strict(data))
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(f"the decision request is not strict JSON: {exc}") from exc


class _Unsigned(Exception):
    """Raised inside a commit to roll back a decision whose receipt could not be signed."""


@dataclass(slots=True)
class _State:
    decision_id: str
    now: int
    stage: str = "parse"
    request: Request | None = None
    request_hash: str | None = None
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
    approvers: list[str] = field(default_factory=list)

    def stop(self, outcome: Outcome, code: str, detail: str) -> None:
        self.outcome = outcome
        self.reasons = [Reason(code, detail)]
        self.route = None


class Gateway:
    """A gateway node: decides requests against its trust store, policy and store."""

    def __init__(
        self,
        *,
        gateway_id: str,
        audiences: Collection[str],
        node_key: PrivateKey,
        trust: TrustStore,
        policy: Policy,
        store: Store,
        now: Callable[[], float],
        leeway: int = 60,
        proof_max_age: int = 120,
        receipt_ttl: int = 86400,
        checkpoint_every: int = 1000,
        checkpoint_interval: int = 300,
        max_depth: int = DEFAULT_MAX_DEPTH,
        notify: Callable[[dict[str, Any]], None] | None = None,
    ):
        if not 0 <= leeway <= 60:
            raise ValueError("leeway must be within [0, 60] seconds")
        self.gateway_id = gateway_id
        self.audiences = frozenset([gateway_id, *audiences])
        self.node_key = node_key
        self.policy = policy
        self.store = store
        self._now = now
        self._leeway = leeway
        self._max_depth = max_depth
        self._notify_hook = notify
        self.trust = trust
        self._proof_max_age = proof_max_age
        self._receipt_ttl = receipt_ttl
        self._count = 0
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_lock = threading.Lock()
        self._last_checkpoint: tuple[int, int] | None = None  # (size, time)

    @property
    def audit(self) -> AuditLog:
        """The audit log of the current store, signed with this node's key."""
        return AuditLog(self.store, origin=self.gateway_id, key=self.node_key)

    @property
    def trust(self) -> TrustStore:
        return self._artifacts.trust

    @trust.setter
    def trust(self, trust: TrustStore) -> None:
        """Swap the trust store; verified-artifact memory starts afresh with it."""
        self._artifacts = ArtifactVerifier(
            trust=trust, audiences=self.audiences, leeway=self._leeway, max_depth=self._max_depth
        )

    @classmethod
    def open(
        cls, home: Path, *, now: Callable[[], float] = time.time, store: Store | None = None
    ) -> Gateway:
        """Open the gateway described by a home directory (see ``execgate init``).

        ``store`` replaces the home's SQLite store (tests, or a store known to be down).
        The ``[approvals]`` hooks of the config become the ``notify`` hook (a ``Notifier``).
        """
        config = load_config(home)
        node_key = read_private_key(config.node_key)
        trust = TrustStore.load(config.trust)
        policy = load_policy(config.policy, targets=config.targets.keys())
        notifier = None
        if config.notify_command is not None or config.notify_url is not None:
            from execgate.notify import Notifier

            notifier = Notifier(
                command=config.notify_command, url=config.notify_url, timeout=config.notify_timeout
            )
        return cls(
            gateway_id=config.gateway_id,
            audiences=config.audiences,
            node_key=node_key,
            trust=trust,
            policy=policy,
            store=store if store is not None else SQLiteStore(config.store),
            now=now,
            leeway=config.leeway,
            proof_max_age=config.proof_max_age,
            receipt_ttl=config.receipt_ttl,
            checkpoint_every=config.checkpoint_every,
            checkpoint_interval=config.checkpoint_interval,
            max_depth=config.max_depth,
            notify=notifier,
        )

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the pipeline ------------------------------------------------------------------

    def decide(self, submission: Submission | Mapping[str, Any]) -> Decision:
        """Decide one request. Raises only ``RequestError`` for a malformed request."""
        if not isinstance(submission, Submission):
            submission = Submission.from_json(submission)
        state = _State(decision_id=str(uuid.uuid4()), now=0)
        try:
            state.now = int(self._now())
            self._evaluate(submission, state)
        except VerificationError as exc:
            state.stop(Outcome.DENY, exc.code, exc.detail)
        except StoreError as exc:
            state.stop(Outcome.FAIL_CLOSED, "store.unavailable", str(exc))
        except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
            state.stop(
                Outcome.FAIL_CLOSED,
                "internal.error",
                f"{type(exc).__name__} in stage {state.stage}",
            )
        self._count += 1
        if self._count % _PURGE_EVERY == 0:
            self._purge(state.now)
        return self._record(state)

    def _evaluate(self, submission: Submission, state: _State) -> None:
        request = state.request = submission.request
        state.request_hash = submission.request_hash

        state.stage = "artifact"
        artifact = state.artifact = self._artifacts.verify(submission.artifact, now=state.now)

        state.stage = "revocation"
        revoked = self.store.revoked(artifact.revocation_keys())
        if revoked is not None:
            raise VerificationError(
                "artifact.revoked", f"{revoked.kind} {revoked.value} revoked: {revoked.reason}"
            )

        state.stage = "binding"
        if request.runtime != artifact.subject:
            raise VerificationError(
                "identity.mismatch", f"runtime {request.runtime!r} is not the artifact's subject"
            )
        proof = state.proof = verify_proof(
            submission.proof,
            jkt=artifact.jkt,
            request_hash=submission.request_hash,
            artifact=artifact.token,
            audiences=self.audiences,
            now=state.now,
            max_age=self._proof_max_age,
            leeway=self._leeway,
        )

        state.stage = "replay"
        if self.store.proof_seen(proof.jti):
            raise VerificationError("replay.detected", "this proof has been presented before")
        for link in artifact.chain:  # a child's use is also a use of every limited ancestor
            if link.uses is not None and self.store.uses_consumed(link.jti) >= link.uses:
                raise VerificationError(
                    "artifact.exhausted", f"all {link.uses} uses of {link.jti} are spent"
                )

        state.stage = "environment"
        environment: dict[str, str] = {}
        if artifact.env:
            environment = verify_attestation(
                submission.attestation,
                trust=self.trust,
                runtime=request.runtime,
                now=state.now,
                leeway=self._leeway,
            )
            check_environment(artifact.env, environment)

        state.stage = "scope"
        miss = check_scope(artifact.grants, request.action, request.resource, request.args)
        if miss is not None:
            raise VerificationError(miss.code, miss.detail)

        state.stage = "lineage"
        if request.parent is not None:
            state.parent = verify_parent(
                request.parent,
                gateway_id=self.gateway_id,
                node_key=self.node_key.public,
                trust=self.trust,
                child_chain=[link.jti for link in artifact.chain],
                now=state.now,
                leeway=self._leeway,
            )

        state.stage = "policy"
        pinned = artifact.gov.get("policy")
        if pinned is not None and pinned != self.policy.hash:
            raise VerificationError(
                "policy.mismatch", f"artifact pins policy {pinned}, loaded is {self.policy.hash}"
            )
        context = request.canonical()
        if request.parent is None:
            del context["parent"]  # so that `has(request.parent)` means "names a parent"
        result = self.policy.evaluate(
            request=context,
            artifact={"gov": {}, "att": {}, "env": {}, **artifact.claims},
            environment=environment,
            now=state.now,
        )
        state.rule = result.rule
        state.outcome = result.outcome
        state.route = result.target
        if result.code is not None:
            state.reasons = [Reason(result.code, result.detail)]
        if result.outcome is Outcome.PAUSE:
            state.stage = "approval"
            assert result.pause is not None
            assert result.rule is not None
            self._pause_or_resume(state, artifact, result.rule, result.pause)
        state.stage = "audit"

    # -- audit and receipt -------------------------------------------------------------

    def _record_dict(self, state: _State) -> dict[str, Any]:
        artifact, proof = state.artifact, state.proof
        return {
            "v": RECORD_VERSION,
            "kind": "decision",
            "decision_id": state.decision_id,
            "gateway": self.gateway_id,
            "at": state.now,
            "outcome": state.outcome.value,
            "reasons": [r.to_json() for r in state.reasons],
            "rule": state.rule,
            "route": state.route,
            "approval_id": state.approval,
            "approvers": state.approvers,
            "parent_decision": state.parent.decision_id if state.parent else None,
            "parent_gateway": state.parent.gateway if state.parent else None,
            "request": state.request.canonical() if state.request else None,
            "request_hash": state.request_hash,
            "artifact_jti": artifact.jti if artifact else None,
            "chain": [link.jti for link in artifact.chain] if artifact else [],
            # Each link, root first: who signed it (kid), whom it names (sub) and the key
            # it binds (jkt), so a revocation can be traced down the chain exactly.
            "chain_links": [
                {"jti": link.jti, "kid": link.kid, "sub": link.subject, "jkt": link.jkt}
                for link in artifact.chain
            ]
            if artifact
            else [],
            "issuer": artifact.issuer if artifact else None,
            "issuer_kid": artifact.kid if artifact else None,
            "subject": artifact.subject if artifact else None,
            "runtime_jkt": artifact.jkt if artifact else None,
            "proof_jti": proof.jti if proof else None,
            "policy_hash": self.policy.hash,
        }

    def _record(self, state: _State) -> Decision:
        made: list[Decision] = []
        artifact, proof = state.artifact, state.proof
        retry = False

        def finalize(conflict: str | None, index: int) -> bytes:
            if conflict == Conflict.REPLAY:
                state.stop(Outcome.DENY, "replay.detected", "this proof has been presented before")
            elif conflict == Conflict.APPROVAL_CLOSED:
                state.stop(
                    Outcome.DENY,
                    "approval.required",
                    f"approval {state.approval} was used or closed by another decision meanwhile",
                )
            elif conflict == Conflict.EXHAUSTED:
                assert artifact is not None
                state.stop(
                    Outcome.DENY, "artifact.exhausted", f"all {artifact.uses} uses are spent"
                )
            record = self._record_dict(state)
            receipt: str | None
            try:
                receipt = sign_receipt(
                    key=self.node_key,
                    gateway_id=self.gateway_id,
                    record=record,
                    log_index=index,
                    ttl=self._receipt_ttl,
                )
            except Exception as exc:  # an unsigned decision executes nothing
                state.stop(Outcome.FAIL_CLOSED, "internal.error", f"receipt signing failed: {exc}")
                if not retry:
                    # Roll back this job's replay and use claims (nothing executes, so
                    # nothing is consumed); it is logged below as fail_closed without them.
                    raise _Unsigned from exc
                record, receipt = self._record_dict(state), None
            made.append(self._decision(state, index, receipt))
            return canonical_json(record)

        use: UseClaim | None = None
        chain_uses: tuple[UseClaim, ...] = ()
        if state.outcome.executes and artifact is not None:
            claims = tuple(
                UseClaim(link.jti, link.uses, link.expires + self._leeway)
                for link in artifact.chain
                if link.uses is not None
            )
            if claims:
                use, chain_uses = claims[-1], claims[:-1]
        job = WriteJob(
            proof_jti=proof.jti if proof else None,
            proof_expires_at=(proof.issued_at if proof else 0) + self._proof_max_age + self._leeway,
            use=use,
            finalize=finalize,
            decision_id=state.decision_id,
            chain_uses=chain_uses,
            open_approval=(
                ApprovalRow(
                    state.open_approval.approval_id,
                    "pending",
                    json.dumps(state.open_approval.to_json()),
                )
                if state.open_approval is not None and state.outcome is Outcome.PAUSE
                else None
            ),
            consume_approval=state.consume_approval if state.outcome.executes else None,
        )
        try:
            index = self.store.commit(job)
        except AuditError as exc:
            return self._unlogged(state, str(exc))
        except _Unsigned:
            pass  # the state already says fail_closed / internal.error
        except Exception as exc:  # noqa: BLE001 - log the failure instead
            state.stop(
                Outcome.FAIL_CLOSED, "internal.error", f"{type(exc).__name__} in stage audit"
            )
        else:
            # The record is durable: from here on nothing may change the decision.
            self._checkpoint_if_due(index + 1, state.now)
            decision = made[-1]
            if decision.outcome is Outcome.PAUSE and state.open_approval is not None:
                self._notify("opened", state.open_approval, decision)
            elif decision.executes and state.consume_approval is not None:
                self._notify("resumed", None, decision)
            return decision
        made.clear()
        retry = True
        try:
            self.store.commit(WriteJob(None, 0, None, finalize, decision_id=state.decision_id))
            return made[-1]
        except Exception as exc:  # noqa: BLE001
            return self._unlogged(state, f"{type(exc).__name__}: {exc}")

    def _decision(self, state: _State, index: int | None, receipt: str | None) -> Decision:
        artifact = state.artifact
        return Decision(
            decision_id=state.decision_id,
            outcome=state.outcome,
            reasons=tuple(state.reasons),
            request_hash=state.request_hash,
            policy_hash=self.policy.hash,
            decided_at=state.now,
            artifact_jti=artifact.jti if artifact else None,
            chain=tuple(link.jti for link in artifact.chain) if artifact else (),
            rule=state.rule,
            route=state.route,
            log_index=index,
            receipt=receipt,
            approval_id=state.approval,
        )

    def _unlogged(self, state: _State, detail: str) -> Decision:
        """The log could not take the record: nothing may execute, and we say so."""
        kept = [] if state.outcome.executes else state.reasons
        state.stop(Outcome.FAIL_CLOSED, "audit.unavailable", detail)
        state.reasons = [*kept, *state.reasons]
        return self._decision(state, None, None)

    # -- pause, review, resume ----------------------------------------------------------

    def _pause_or_resume(
        self, state: _State, artifact: Artifact, rule: str, spec: PauseSpec
    ) -> None:
        """A pause rule matched: resume if an approval for exactly this request, chain,
        policy and rule has reached its quorum; otherwise wait on it or open one."""
        assert state.request_hash is not None
        assert state.request is not None
        chain = tuple(link.jti for link in artifact.chain)
        live: list[tuple[Pending, list[Review]]] = []
        expired: Pending | None = None
        for row in self.store.approvals(request_hash=state.request_hash):
            pending = Pending.from_json(row.body, row.status)
            if (pending.chain, pending.policy_hash, pending.rule) != (
                chain,
                self.policy.hash,
                rule,
            ) or pending.status == "consumed":
                continue
            status = pending.state(state.now)
            if status == "denied":  # one deny of this exact request is terminal
                state.stop(
                    Outcome.DENY, "approval.denied", f"approval {pending.approval_id} was denied"
                )
                state.approval = pending.approval_id
                return
            if status == "pending":
                reviews = [Review.from_json(b) for b in self.store.reviews(pending.approval_id)]
                live.append((pending, reviews))
            elif expired is None:
                expired = pending
        # Decisions racing on the same request can each open an approval for it: resume
        # with whichever reached its quorum, else wait on the newest.
        for pending, reviews in live:
            if quorum_met(pending, reviews, self.trust):
                state.outcome, state.reasons, state.route = Outcome.PROCEED, [], None
                state.approval = state.consume_approval = pending.approval_id
                state.approvers = sorted({r.approver for r in reviews})
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
        subjects = [link.subject for link in artifact.chain]
        keys = [v for k, v in artifact.revocation_keys() if k == "kid"]
        attributions = [link.claims.get("att") or {} for link in artifact.chain]
        opened = Pending(
            approval_id=state.decision_id,
            request_hash=state.request_hash,
            chain=chain,
            policy_hash=self.policy.hash,
            rule=rule,
            groups=spec.approvers,
            quorum=spec.quorum,
            created_at=state.now,
            expires_at=min(state.now + spec.ttl, artifact.expires),
            excluded=excluded_principals(subjects, keys, attributions),
            request=state.request.canonical(),
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

    def approval(self, approval_id: str) -> tuple[Pending, list[Review]]:
        """One approval and its reviews; ``ApprovalError`` for an unknown id."""
        row = self.store.approval(approval_id)
        if row is None:
            raise ApprovalError(f"no approval {approval_id} at this gateway")
        return (
            Pending.from_json(row.body, row.status),
            [Review.from_json(b) for b in self.store.reviews(approval_id)],
        )

    def approvals(self) -> list[Pending]:
        """Every approval, newest first."""
        return [Pending.from_json(r.body, r.status) for r in self.store.approvals()]

    def review(self, approval_id: str, token: str) -> tuple[int, Pending, list[Review]]:
        """Record one approver's signed review (an audit record); return its log index and
        the approval with every review so far. One deny is terminal."""
        pending, reviews = self.approval(approval_id)
        now = int(self._now())
        review = check_review(
            token, pending=pending, trust=self.trust, now=now, leeway=self._leeway
        )
        if any(r.approver == review.approver for r in reviews):
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
                    approval_id, review.approver, review.verdict, json.dumps(review.to_json())
                ),
            )
        )
        self._checkpoint_if_due(index + 1, now)
        after, all_reviews = self.approval(approval_id)
        if review.verdict == "deny":
            self._notify("denied", after, None)
        elif quorum_met(after, all_reviews, self.trust) and not quorum_met(
            after, [r for r in all_reviews if r.approver != review.approver], self.trust
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

    def _checkpoint_if_due(self, size: int, now: int) -> None:
        """Sign a checkpoint every N entries or T seconds. Never affects the decision: the
        entry is already durable, and a checkpoint can be made later from the same tree."""
        if not self._checkpoint_lock.acquire(blocking=False):
            return  # another caller is checkpointing right now
        try:
            if self._last_checkpoint is None:
                stored = self.store.checkpoints()
                self._last_checkpoint = (stored[-1][0], now) if stored else (0, now)
            last_size, last_time = self._last_checkpoint
            if size - last_size >= self._checkpoint_every or (
                size > last_size and now - last_time >= self._checkpoint_interval
            ):
                self.audit.checkpoint(now=now)
                # A clock that failed (or stepped back) reads early: never move the
                # schedule back with it, or the next decision checkpoints at once.
                self._last_checkpoint = (size, max(now, last_time))
        except Exception:  # noqa: BLE001 - retried at the next decision
            self._last_checkpoint = None
        finally:
            self._checkpoint_lock.release()

    # -- execution outcomes --------------------------------------------------------------

    def report_outcome(
        self,
        decision_id: str,
        *,
        status: str,
        exit_code: int | None = None,
        result_digest: str | None = None,
    ) -> int:
        """Append what happened when a decided request ran; return the record's log index.

        Only a decision that executed (proceed or reroute) has an outcome, and only one.
        Bad input raises ``RequestError``; a log that cannot be written, ``AuditError``.
        """
        if status not in _OUTCOME_STATUS:
            raise RequestError(f"status must be one of {sorted(_OUTCOME_STATUS)}")
        if exit_code is not None and (
            type(exit_code) is not int or not -(2**31) <= exit_code < 2**31
        ):
            raise RequestError("exit_code must be a 32-bit integer")
        if result_digest is not None and (
            not isinstance(result_digest, str) or _DIGEST.fullmatch(result_digest) is None
        ):
            raise RequestError("result_digest must look like sha256:<64 hex digits>")
        found = self.store.find(decision_id, "decision")
        if found is None:
            raise RequestError(f"decision {decision_id} is not in this gateway's log")
        decided = json.loads(found.entry)
        if decided.get("outcome") not in (Outcome.PROCEED.value, Outcome.REROUTE.value):
            raise RequestError(
                f"decision {decision_id} was {decided.get('outcome')}: nothing executed,"
                " so there is no outcome to report"
            )
        earlier = self.store.find(decision_id, "outcome")
        if earlier is not None:
            raise RequestError(
                f"the outcome of decision {decision_id} is already logged at index {earlier.index}"
            )
        now = int(self._now())
        entry = canonical_json(
            {
                "v": RECORD_VERSION,
                "kind": "outcome",
                "decision_id": decision_id,
                "decision_index": found.index,
                "gateway": self.gateway_id,
                "at": now,
                "status": status,
                "exit_code": exit_code,
                "result_digest": result_digest,
            }
        )
        try:
            index = self.store.commit(
                WriteJob(
                    None, 0, None, lambda _c, _i: entry, decision_id=decision_id, kind="outcome"
                )
            )
        except AuditError as exc:
            # A concurrent report for the same decision won the race (the store keeps one
            # outcome per decision); anything else is a log that cannot be written.
            raced = self._logged_outcome(decision_id)
            if raced is not None:
                raise RequestError(
                    f"the outcome of decision {decision_id} is already logged at index"
                    f" {raced.index}"
                ) from exc
            raise
        self._checkpoint_if_due(index + 1, now)
        return index

    def _logged_outcome(self, decision_id: str) -> LogEntry | None:
        with suppress(StoreError):
            return self.store.find(decision_id, "outcome")
        return None

    def _purge(self, now: int) -> None:
        # A failed purge only lets replay state grow until the next one.
        with suppress(StoreError):
            self.store.purge_expired(now)
