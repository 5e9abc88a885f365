"""A store that is down: every call fails, as a crashed or unreachable database would.

The CLI decides against it when the real store cannot be opened, so the caller gets a
real ``fail_closed`` decision rather than a bare error; the demo uses it to show that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn

from execgate.errors import StoreError, StoreUnavailable
from execgate.store.base import ApprovalRow, CommittedHead, LogEntry, Revocation, WriteJob

__all__ = ["UnavailableStore"]


class UnavailableStore:
    def __init__(self, detail: str):
        self.detail = detail

    def _down(self) -> NoReturn:
        raise StoreError(self.detail)

    def revoked(self, keys: Iterable[tuple[str, str]]) -> Revocation | None:
        self._down()

    def revoke(self, kind: str, value: str, *, reason: str, now: int) -> bool:
        self._down()

    def revocations(self) -> Sequence[Revocation]:
        self._down()

    def proof_seen(self, jti: str) -> bool:
        self._down()

    def uses_consumed(self, jti: str) -> int:
        self._down()

    def commit(self, job: WriteJob) -> int:
        raise StoreUnavailable(self.detail)

    def entries(self, start: int, end: int) -> Sequence[LogEntry]:
        self._down()

    def find(self, decision_id: str, kind: str) -> LogEntry | None:
        self._down()

    def node(self, level: int, index: int) -> bytes:
        self._down()

    def add_checkpoint(self, size: int, note: str, *, now: int) -> None:
        self._down()

    def checkpoints(self) -> Sequence[tuple[int, str]]:
        self._down()

    def recent_checkpoints(self) -> Iterator[tuple[int, str]]:
        self._down()

    def newest_checkpoint(self) -> tuple[int, int] | None:
        self._down()

    def approval(self, approval_id: str) -> ApprovalRow | None:
        self._down()

    def approvals(
        self,
        *,
        request_hash: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Sequence[ApprovalRow]:
        self._down()

    def reviews(self, approval_id: str) -> Sequence[str]:
        self._down()

    def size(self) -> int:
        self._down()

    def committed_head(self) -> CommittedHead | None:
        self._down()

    def check_writable(self, timeout: float) -> None:
        raise StoreUnavailable(self.detail)

    def purge_expired(self, now: int) -> int:
        self._down()

    def close(self) -> None:
        pass

    # -- gauges for /metrics (server.metrics) ------------------------------------------

    def replay_size(self) -> int:
        self._down()

    def pending_approvals(self, now: int) -> int:
        self._down()
