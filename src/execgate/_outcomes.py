"""Execution outcomes and periodic checkpoints (the ``Gateway`` side of the audit log).

Mixed into ``Gateway``: after a decided request runs, its outcome is appended to the
log linked to the decision; every N entries or T seconds the log is checkpointed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

from execgate._state import RECORD_VERSION
from execgate._timing import clock_seconds
from execgate.audit.log import AuditLog
from execgate.errors import AuditError, RequestError, StoreError, VerificationError
from execgate.jose import canonical_json
from execgate.model import Outcome
from execgate.proofs import outcome_hash, verify_outcome_proof
from execgate.store.base import Conflict, LogEntry, Store, WriteJob

_log = logging.getLogger("execgate.audit")

__all__ = ["OutcomeLog"]

_OUTCOME_STATUS: Final = frozenset({"succeeded", "failed"})
_EXECUTED: Final = frozenset({Outcome.PROCEED.value, Outcome.REROUTE.value})
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")


def check_report(status: object, exit_code: object, result_digest: object) -> None:
    """An outcome report's fields, or ``RequestError`` naming the first one that is wrong."""
    if not isinstance(status, str) or status not in _OUTCOME_STATUS:
        raise RequestError(f"status must be one of {sorted(_OUTCOME_STATUS)}")
    if exit_code is not None and (type(exit_code) is not int or not -(2**31) <= exit_code < 2**31):
        raise RequestError("exit_code must be a 32-bit integer")
    if result_digest is not None and (
        not isinstance(result_digest, str) or _DIGEST.fullmatch(result_digest) is None
    ):
        raise RequestError("result_digest must look like sha256:<64 hex digits>")


class OutcomeLog:
    gateway_id: str
    audiences: frozenset[str]
    store: Store
    _now: Callable[[], float]
    _proof_max_age: int
    _leeway: int
    _checkpoint_every: int
    _checkpoint_interval: int
    _checkpoint_lock: threading.Lock
    _last_checkpoint: tuple[int, int] | None

    @property
    def audit(self) -> AuditLog:
        raise NotImplementedError

    def _check_outcome_proof(
        self, decision_id: str, decided: dict[str, Any], proof: object, report_hash: str
    ) -> None:
        """Refuse a report not signed by the runtime the decision let through (over HTTP
        anyone can name a decision id: they are in the log and in answers)."""
        jkt = decided.get("runtime_jkt")
        if not isinstance(jkt, str):  # never for a decision that executed; refuse anyway
            raise VerificationError(
                "identity.mismatch", f"decision {decision_id} names no key a report could match"
            )
        verify_outcome_proof(
            proof,
            jkt=jkt,
            decision_id=decision_id,
            report_hash=report_hash,
            audiences=self.audiences,
            now=clock_seconds(self._now),
            max_age=self._proof_max_age,
            leeway=self._leeway,
        )

    def _checkpoint_due(self, size: int, now: int) -> bool:
        """Whether a log of ``size`` entries is due for a checkpoint at ``now``, from what
        this process knows (no I/O: a schedule not yet read from the store is due, and
        ``_checkpoint_if_due`` reads it)."""
        if self._last_checkpoint is None:
            return True
        last_size, last_time = self._last_checkpoint
        return size - last_size >= self._checkpoint_every or (
            size > last_size and now - last_time >= self._checkpoint_interval
        )

    def _checkpoint_if_due(self, size: int, now: int) -> None:
        """Sign a checkpoint every N entries or T seconds. Never affects the decision: the
        entry is already durable, and a checkpoint can be made later from the same tree."""
        if not self._checkpoint_lock.acquire(blocking=False):
            return  # another caller is checkpointing right now
        try:
            if self._last_checkpoint is None:
                # The schedule runs from the newest stored checkpoint, whoever signed it:
                # not from this process's start, or a tail appended by short-lived
                # processes (CLI runs, restarted workers) would never be signed. (From
                # now at the latest: one stored when the clock ran ahead does not hold
                # the schedule back once it is set right.)
                newest = self.store.newest_checkpoint()
                self._last_checkpoint = (
                    (0, now) if newest is None else (newest[0], min(newest[1], now))
                )
            last_time = self._last_checkpoint[1]
            if self._checkpoint_due(size, now):
                self.audit.checkpoint(now=now)
                # A clock that failed (or stepped back) reads early: never move the
                # schedule back with it, or the next decision checkpoints at once.
                self._last_checkpoint = (size, max(now, last_time))
        except Exception as exc:  # noqa: BLE001 - never the decision's concern
            # Tried again once as many entries, or as much time, have passed: a tree the
            # node refuses to sign (EvidenceError) refuses every time, and each try reads.
            # (Never back: a chore may run after a later one has moved the schedule on.)
            last = self._last_checkpoint or (size, now)
            self._last_checkpoint = (max(size, last[0]), max(now, last[1]))
            _log.warning("checkpoint at size %d not signed: %s: %s", size, type(exc).__name__, exc)
        finally:
            self._checkpoint_lock.release()

    def report_outcome(
        self,
        decision_id: str,
        *,
        status: str,
        exit_code: int | None = None,
        result_digest: str | None = None,
        proof_required: bool = False,
        proof: object = None,
    ) -> int:
        """Append what happened when a decided request ran; return the record's log index.

        Only a decision that executed (proceed or reroute) has an outcome, and only one.
        With ``proof_required`` (a report over HTTP), ``proof`` must be the outcome proof
        of the runtime the decision let through (``Runtime.outcome_proof``), else
        ``VerificationError`` says why. Bad input raises ``RequestError``; a log that
        cannot be written, ``AuditError``.
        """
        check_report(status, exit_code, result_digest)
        found = self.store.find(decision_id, "decision")
        if found is None:
            raise RequestError(f"decision {decision_id} is not in this gateway's log")
        decided = json.loads(found.entry)
        if decided.get("outcome") not in _EXECUTED:
            raise RequestError(
                f"decision {decision_id} was {decided.get('outcome')}: nothing executed,"
                " so there is no outcome to report"
            )
        # Who signs a report over HTTP: the runtime key the decision bound, and the
        # runtime. Either revoked (a stolen key, say), it reports nothing more: checked
        # here, and again in the commit, so a revocation that returned first wins.
        reporter: tuple[tuple[str, str], ...] = ()
        if proof_required:
            report_hash = outcome_hash(
                decision_id, status=status, exit_code=exit_code, result_digest=result_digest
            )
            self._check_outcome_proof(decision_id, decided, proof, report_hash)
            reporter = tuple(
                (kind, value)
                for kind, value in (
                    ("kid", decided.get("runtime_jkt")),
                    ("sub", decided.get("subject")),
                )
                if isinstance(value, str)
            )
            revoked = self.store.revoked(reporter)
            if revoked is not None:
                raise _revoked_reporter(decision_id, revoked.kind)
        earlier = self.store.find(decision_id, "outcome")
        if earlier is not None:
            raise RequestError(
                f"the outcome of decision {decision_id} is already logged at index {earlier.index}"
            )
        now = clock_seconds(self._now)
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
        jobs: list[WriteJob] = []  # the job below, for the revocation its commit found

        def finalize(conflict: str | None, _index: int) -> bytes:
            if conflict == Conflict.REVOKED:  # revoked since the check above: nothing written
                revoked = jobs[0].revoked
                raise _revoked_reporter(decision_id, revoked.kind if revoked else "kid")
            return entry

        jobs.append(
            WriteJob(
                None,
                0,
                None,
                finalize,
                decision_id=decision_id,
                kind="outcome",
                revocation_keys=reporter,
            )
        )
        try:
            index = self.store.commit(jobs[0])
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


def _revoked_reporter(decision_id: str, kind: str) -> VerificationError:
    whose = "runtime" if kind == "sub" else "runtime key"
    return VerificationError(
        "artifact.revoked",
        f"the {whose} decision {decision_id} bound is revoked: it reports no outcome",
    )
