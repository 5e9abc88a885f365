"""What the pipeline needs from a state store, and the values it trades in.

A store keeps five things: revocations, seen proof ``jti``s (replay), artifact use
counts, the append-only decision log with its RFC 9162 Merkle tree (every complete
subtree hash, written with the entry that completes it), and signed checkpoints. Reads
may run concurrently; every write for one
decision — its proof ``jti``, its use, its log record — happens in one atomic commit
(``commit``), so the log never says "proceed" for a decision whose replay state was lost,
and vice versa. Any failure raises ``StoreError`` (``AuditError`` when the log append
itself failed); the pipeline turns both into ``fail_closed``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from execgate.errors import AuditError

__all__ = [
    "ASKER_FORM",
    "REVOCATION_KINDS",
    "ApprovalRow",
    "CommittedHead",
    "Conflict",
    "LogEntry",
    "LoopCommits",
    "ReviewWrite",
    "Revocation",
    "Store",
    "UseClaim",
    "WriteJob",
    "check_head",
    "deny_is_final",
]

# What a revocation names: an artifact id (any link's ``jti``, whoever minted it), a key
# (an authority's, or the key a link binds or was signed with), a subject, or one exact
# artifact token (``artifact``: base64url SHA-256 of the token, the link's digest). A
# delegated link's ``jti`` is chosen by whoever delegates, so it can repeat another
# artifact's; ``artifact`` reaches that token and its descendants only.
REVOCATION_KINDS: Final = ("jti", "kid", "sub", "artifact")

# What every asker (``approvals.asker``) starts with: an approval's holder in any other
# form was kept by an earlier version (none, a key, or a first form of the asker).
ASKER_FORM: Final = "2:"


def deny_is_final(holder: str, asker: str) -> bool:
    """Whether a denied approval kept with ``holder`` is final for the same request asked
    by ``asker``: for the same asker only, and for every one where the holder was kept
    in an earlier form (which names nobody this version can tell) or the asker is not
    known."""
    return not holder.startswith(ASKER_FORM) or not asker or holder == asker


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: str  # one of REVOCATION_KINDS: "jti" | "kid" | "sub" | "artifact"
    value: str
    reason: str
    revoked_at: int


@dataclass(frozen=True, slots=True)
class UseClaim:
    """Consume one use of a ``uses``-limited artifact, atomically with the log append.
    ``expires_at`` is the artifact's own expiry plus ``leeway``, the claiming gateway's:
    a purge mark is compared with the artifact's own, which no configuration moves."""

    jti: str
    limit: int
    expires_at: int
    leeway: int = 0


@dataclass(frozen=True, slots=True)
class LogEntry:
    index: int
    entry: bytes


class Conflict:
    """Why the atomic commit could not record what the pipeline decided."""

    REPLAY = "replay"
    EXHAUSTED = "exhausted"
    APPROVAL_CLOSED = "approval_closed"  # consumed, denied or reviewed meanwhile
    APPROVAL_EXPIRED = "approval_expired"  # the approval to consume expired meanwhile
    # An approval of the same request under the same rule was denied meanwhile: one deny
    # is final, so none is used and none opens (WriteJob.denied says which).
    APPROVAL_DENIED = "approval_denied"
    # Another decision opened an approval for the same request and chain meanwhile.
    APPROVAL_OPEN = "approval_open"
    REVOKED = "revoked"  # a revocation_keys entry is revoked (see WriteJob.revoked)
    # Its replay or use state may already have been purged: a purge ran with a clock
    # reading later than this claim's expiry (the clock has gone back since).
    PURGED = "purged"


# What a PURGED conflict means, for whoever refuses because of one.
PURGED_DETAIL: Final = (
    "the replay state of this time was purged when the clock read later than it does now:"
    " the clock has gone back, and claims from before the latest record purged fail closed"
)


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """A stored approval: its id (the pause decision's), status and JSON body."""

    approval_id: str
    status: str  # pending | denied | consumed
    body: str


@dataclass(frozen=True, slots=True)
class ReviewWrite:
    """One approver's review, stored with its log record; a deny closes the approval."""

    approval_id: str
    approver: str
    verdict: str
    body: str
    # The approver's earlier review of it was signed with a key since removed (it no
    # longer counts): this one takes its place (the earlier stays in the log).
    replaces: bool = False


@dataclass(slots=True, weakref_slot=True)  # finalize may hold it weakly (the pipeline does)
class WriteJob:
    """One decision's writes.

    ``finalize(conflict, index)`` is called inside the transaction with ``None`` or a
    ``Conflict`` value and the log index the record will take; it returns the record bytes
    to append. It may build the receipt, so what the log says and what the caller is told
    come from one place. If ``finalize`` raises, that job's writes (replay, use, record)
    are rolled back and ``commit`` raises the same exception; other jobs are unaffected.
    """

    proof_jti: str | None
    proof_expires_at: int
    use: UseClaim | None
    finalize: Callable[[str | None, int], bytes]
    decision_id: str | None = None  # a lookup key kept beside the entry (also inside it)
    # How far ``proof_expires_at`` lies after the proof's own time (its ``iat``; an admin
    # token's ``exp``): this gateway's window, which its [limits] set. A purge mark is
    # compared with the proof's own time, which no configuration moves.
    proof_window: int = 0
    kind: str = "decision"  # "decision" or "outcome"; one outcome per decision
    chain_uses: tuple[UseClaim, ...] = ()  # uses of limited ancestors, consumed with ``use``
    open_approval: ApprovalRow | None = None  # a pause opens one with its record
    consume_approval: str | None = None  # a resumed decision closes the approval it used
    # Who asks (``approvals.asker``): a deny of the request is final for the same asker
    # only (or for every one, where the denied approval names none).
    asker: str = ""
    # The clock the commit reads for what may expire between the decision and its commit
    # (the approval it consumes): the pipeline's, so both read the same time.
    clock: Callable[[], float] = time.time
    review: ReviewWrite | None = None
    # What revoking would deny the decision's artifact. The commit checks them before
    # anything else, in its transaction, so a revocation that returned before the commit
    # always wins (whatever the pipeline decided, the answer is Conflict.REVOKED)...
    revocation_keys: tuple[tuple[str, str], ...] = ()
    # ...and the store sets the revocation it found here, on Conflict.EXHAUSTED the use
    # claim (of the artifact or of a limited ancestor) that had none left, and on
    # Conflict.APPROVAL_DENIED the approval that was denied.
    revoked: Revocation | None = None
    exhausted: UseClaim | None = None
    denied: str | None = None


_UNTIL: Final = (
    "nothing more is appended or signed until the store that holds them is put back, or"
    " a new home is made (README: The gateway home)"
)


class CommittedHead(NamedTuple):
    """What a store's last commit left beside it: the log's size and root, and how many
    writes besides appends (revocations, purges, checkpoints) the store had committed;
    every other write appends to the log in the same transaction."""

    size: int
    root: bytes
    writes: int


def check_head(
    head: CommittedHead | None,
    size: int,
    root: Callable[[int], bytes],
    writes: int | None = None,
) -> None:
    """Raise ``AuditError`` unless a store whose log has ``size`` entries (``root(n)``:
    the root of its first ``n``) and that committed ``writes`` writes besides appends
    holds what the committed ``head`` names."""
    if head is None:
        return
    if head.size > size:
        raise AuditError(
            f"the log holds {size} entries but {head.size} were committed: entries were"
            f" lost (a removed -wal or -shm file, or an older copy restored); {_UNTIL}"
        )
    if writes is not None and writes < head.writes:
        raise AuditError(
            f"the store holds {writes} of the {head.writes} revocations, purges and"
            " checkpoints that were committed: it is an older copy (revoked artifacts may"
            f" pass again); {_UNTIL}"
        )
    if root(head.size) != head.root:
        raise AuditError(
            f"the log's first {head.size} entries are not the {head.size} that were"
            f" committed; {_UNTIL}"
        )


class LoopCommits(Protocol):
    """What a store offers an event loop besides ``commit`` (``SQLiteStore`` does):
    ``submit`` queues a job without waiting and returns an asyncio future of ``loop``,
    ``lead_now`` commits what is queued if no other writer holds the store (False: try
    again shortly), ``withdraw`` takes back a job no writer has taken yet."""

    def submit(self, job: WriteJob, *, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]: ...

    def lead_now(self) -> bool: ...

    def withdraw(self, future: asyncio.Future[int]) -> bool: ...


class Store(Protocol):
    def revoked(self, keys: Iterable[tuple[str, str]]) -> Revocation | None: ...

    def revoke(self, kind: str, value: str, *, reason: str, now: int) -> bool: ...

    def revocations(self) -> Sequence[Revocation]: ...

    def proof_seen(self, jti: str) -> bool: ...

    def uses_consumed(self, jti: str) -> int: ...

    def commit(self, job: WriteJob) -> int: ...

    def entries(self, start: int, end: int) -> Sequence[LogEntry]: ...

    def find(self, decision_id: str, kind: str) -> LogEntry | None: ...

    def node(self, level: int, index: int) -> bytes: ...

    def add_checkpoint(self, size: int, note: str, *, now: int) -> None: ...

    def checkpoints(self) -> Sequence[tuple[int, str]]: ...

    def recent_checkpoints(self) -> Iterator[tuple[int, str]]: ...

    def newest_checkpoint(self) -> tuple[int, int] | None: ...

    def approval(self, approval_id: str) -> ApprovalRow | None: ...

    def approvals(
        self,
        *,
        request_hash: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Sequence[ApprovalRow]: ...

    def reviews(self, approval_id: str) -> Sequence[str]: ...

    def size(self) -> int: ...

    def committed_head(self) -> CommittedHead | None:
        """What the store's last commit left, kept outside it (``check_head``), or None
        where none is kept yet; ``AuditError`` if it cannot be read, or if this process
        can no longer trust its own view of the store."""
        ...

    def check_writable(self, timeout: float) -> None:
        """Raise ``StoreUnavailable`` unless a write could start within ``timeout``
        seconds (the writers' turn taken, a write transaction opened and rolled back),
        and ``AuditError`` when the store no longer holds what its last commit left:
        what ``/readyz`` asks, so a probe meets what the next append would."""
        ...

    def purge_expired(self, now: int) -> int: ...

    def close(self) -> None: ...

    # -- gauges for /metrics (server.metrics) ------------------------------------------

    def replay_size(self) -> int:
        """Proof ids remembered for replay detection (until they expire and are purged)."""
        ...

    def pending_approvals(self, now: int) -> int:
        """Approvals still waiting for reviews at ``now`` (pending and not expired)."""
        ...
