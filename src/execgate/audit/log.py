"""The gateway's audit log as evidence: checkpoints, proofs, offline export and verify.

Entries and the Merkle tree live in the store (written together, in the commit that
decides). ``AuditLog`` signs C2SP checkpoints with the node key (the note key name is
the log origin, the gateway id), builds RFC 9162 inclusion and consistency proofs from
the stored complete subtrees, writes C2SP tlog-proof evidence for one entry (the entry
itself rides in the proof's ``extra`` line, so the evidence stands alone), and exports
the whole log as JSON lines that ``verify_export`` checks with only the public key.

Export format, one JSON object per line:

    {"format": "execgate-audit-export/1", "origin": "<gateway id>"}
    {"index": 0, "entry": "<base64 of the entry bytes>"}
    ...
    {"checkpoint": "<signed note>"}     after the entry that completes its size
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import IO, Final

from execgate.audit.checkpoint import (
    Checkpoint,
    format_tlog_proof,
    open_checkpoint,
    parse_tlog_proof,
    sign_checkpoint,
    unverified_checkpoint,
    verify_tlog_proof,
)
from execgate.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    root_at,
    verify_consistency,
)
from execgate.audit.note import Signer, Verifier
from execgate.errors import AuditError, EvidenceError
from execgate.jose import PrivateKey, PublicKey
from execgate.store.base import Store, check_head

__all__ = [
    "EXPORT_FORMAT",
    "AuditLog",
    "ExportReport",
    "NotCheckpointed",
    "SigningRefused",
    "verify_evidence",
    "verify_export",
]

EXPORT_FORMAT: Final = "execgate-audit-export/1"


class SigningRefused(EvidenceError):
    """The node will not sign a checkpoint: the stored tree forks what it signed before."""


class NotCheckpointed(EvidenceError):
    """No checkpoint covers the entry yet, and the caller may not have one signed now."""


class AuditLog:
    """Checkpoints, proofs and export over one store's log, signed by one node key."""

    def __init__(self, store: Store, *, origin: str, key: PrivateKey):
        self.store = store
        self.signer = Signer(origin, key)
        self.verifier = self.signer.verifier
        self.origin = origin

    def size(self) -> int:
        return self.store.size()

    def root(self, size: int) -> bytes:
        return EMPTY_ROOT if size == 0 else root_at(size, self.store.node)

    def entry(self, index: int) -> bytes:
        found = self.store.entries(index, index + 1) if index >= 0 else []
        if not found:
            raise EvidenceError(f"index {index} is not in the log (size {self.size()})")
        return found[0].entry

    def checkpoint(self, *, now: int) -> str:
        """A signed checkpoint of the log as it is now (reusing one for the same size).

        Before signing, the tree is checked to extend the newest stored checkpoint this
        key signed (an RFC 9162 consistency proof from the stored nodes): the node never
        signs a tree head that forks its own history, even if the store's nodes were
        rewritten behind its back. ``SigningRefused`` says so instead, as it does when
        the log no longer holds what its last commit left (the store's committed head):
        a log that lost entries, stored checkpoints included, must not be signed again.
        """
        # The head and the checkpoints first, then the size: another process may append
        # and sign between the reads, and neither is of a size the log has not reached.
        try:
            head = self.store.committed_head()
        except AuditError as exc:
            raise SigningRefused(str(exc)) from exc
        stored = self.store.recent_checkpoints()
        newest = next(stored, None)
        size = self.size()
        try:
            check_head(head, size, self.root)
        except AuditError as exc:
            raise SigningRefused(str(exc)) from exc
        if newest is not None and newest[0] == size and self.signed_here(newest[1]) is not None:
            return newest[1]
        try:
            root = self.root(size)
        except AuditError as exc:  # a node missing: the store is damaged, nothing is signed
            raise SigningRefused(str(exc)) from exc
        self._check_extends(itertools.chain([newest] if newest else [], stored), size, root)
        note = sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)
        self.store.add_checkpoint(size, note, now=now)
        return note

    def signed_here(self, note: str) -> Checkpoint | None:
        """The checkpoint ``note`` signs, if this node's key signed it; else None."""
        try:
            return open_checkpoint(note, self.verifier)
        except EvidenceError:
            return None  # another key's (before a key change), or not a checkpoint at all

    def _check_extends(self, stored: Iterable[tuple[int, str]], size: int, root: bytes) -> None:
        """``stored`` newest first: the first this key signed is the one to extend."""
        for _, note in stored:
            earlier = self.signed_here(note)
            if earlier is None:
                continue
            if earlier.size > size or (earlier.size == size and earlier.root != root):
                raise SigningRefused(
                    f"the log no longer extends checkpoint {earlier.size} that this node"
                    " signed: refusing to sign another"
                )
            if 0 < earlier.size < size:
                proof = consistency_proof(earlier.size, size, self.store.node)
                try:
                    verify_consistency(earlier.size, size, proof, earlier.root, root)
                except EvidenceError as exc:
                    raise SigningRefused(
                        f"the log's tree is not consistent with checkpoint {earlier.size}"
                        f" that this node signed ({exc}): refusing to sign size {size}"
                    ) from exc
            return

    def latest_checkpoint(self) -> str | None:
        newest = next(self.store.recent_checkpoints(), None)
        return newest[1] if newest else None

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_range(index, size)
        return inclusion_proof(index, size, self.store.node)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        if not 0 < size1 <= size2 <= self.size():
            raise EvidenceError(
                f"no consistency proof from size {size1} to {size2} (log size {self.size()})"
            )
        return consistency_proof(size1, size2, self.store.node)

    def evidence(self, index: int, *, now: int, checkpoint: Callable[[], str] | None = None) -> str:
        """C2SP tlog-proof for one entry against the newest checkpoint this node signed
        that covers it; where none does, against the one ``checkpoint`` gives (by
        default one signed now), or ``NotCheckpointed`` when that one does not cover it
        either (a checkpoint a server keeps for a moment, signed before the entry)."""
        self._check_range(index, self.size())
        note = None
        for size, stored in self.store.recent_checkpoints():
            if size <= index:
                break
            if self.signed_here(stored) is not None:  # not another key's (before a change)
                note = stored
                break
        if note is None and checkpoint is not None:
            note = checkpoint()
            if unverified_checkpoint(note).size <= index:
                raise NotCheckpointed(f"no checkpoint covers entry {index} yet")
        if note is None:
            note = self.checkpoint(now=now)
        size = unverified_checkpoint(note).size
        proof = inclusion_proof(index, size, self.store.node)
        return format_tlog_proof(index, proof, note, extra=self.entry(index))

    def export(self, out: IO[str], *, now: int, batch: int = 64) -> int:
        """Write every entry and checkpoint up to a fresh checkpoint, and end with it;
        return the number of entries written (the checkpoint's size, unless entries were
        deleted). Entries another process appends meanwhile are left out with the
        checkpoints signed for them: every line written is covered by the last one.
        Entries are read ``batch`` at a time (one holds up to about 1 MiB).

        Every stored checkpoint up to it is written, even one that no entry line
        reaches: a log whose last entries were deleted from the store then fails
        ``verify_export`` instead of passing as a shorter log. A log whose tree the node
        refuses to sign (see ``checkpoint``) is exported all the same, whole, without a
        fresh checkpoint: ``verify_export`` then says what is wrong with it.
        """
        signed: int | None = None
        with suppress(EvidenceError):
            signed = unverified_checkpoint(self.checkpoint(now=now)).size
        checkpoints = dict(self.store.checkpoints())
        if signed is None:
            size = max(max(checkpoints, default=0), self.size())
        else:
            size = signed
            checkpoints = {n: note for n, note in checkpoints.items() if n <= signed}
        written = 0
        out.write(json.dumps({"format": EXPORT_FORMAT, "origin": self.origin}) + "\n")
        if 0 in checkpoints:
            out.write(json.dumps({"checkpoint": checkpoints.pop(0)}) + "\n")
        for start in range(0, size, batch):
            for item in self.store.entries(start, min(size, start + batch)):
                encoded = base64.b64encode(item.entry).decode("ascii")
                out.write(f'{{"index":{item.index},"entry":"{encoded}"}}\n')
                written += 1
                if item.index + 1 in checkpoints:
                    out.write(json.dumps({"checkpoint": checkpoints.pop(item.index + 1)}) + "\n")
        for left in sorted(checkpoints):  # entries are missing from the store
            out.write(json.dumps({"checkpoint": checkpoints[left]}) + "\n")
        return written

    def _check_range(self, index: int, size: int) -> None:
        if not 0 <= index < size <= self.size():
            raise EvidenceError(f"index {index} is not in a log of size {size}")


@dataclass(frozen=True, slots=True)
class ExportReport:
    entries: int
    checkpoints: int
    root: bytes


def _verifier(key: PublicKey | Verifier, origin: str, what: str) -> Verifier:
    if isinstance(key, Verifier):
        if key.name != origin:
            raise EvidenceError(f"{what} is of log {origin!r}, but the key is for log {key.name!r}")
        return key
    try:
        return Verifier(origin, key)
    except ValueError as exc:
        raise EvidenceError(f"{what}'s origin {origin!r} is not a valid log name") from exc


def _entries(start: int, end: int) -> str:
    """Entries ``[start, end)`` in words, for messages."""
    if end <= start:
        return "no entries"
    return f"entry {start}" if end - start == 1 else f"entries {start}..{end - 1}"


def _claimed_origin(note: str) -> str | None:
    """The origin a checkpoint note claims, before any signature is checked."""
    try:
        return unverified_checkpoint(note).origin
    except EvidenceError:
        return None


def _json(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise EvidenceError(f"{where}: {exc}") from exc


def _exported_entry(line: str, index: int) -> bytes | None:
    """The entry of ``line`` if it is exactly what ``export`` writes for ``index``, in
    strict base64; otherwise None, and the general parse decides. A shortcut only: for
    every line it accepts, the general parse gives the same entry."""
    prefix = f'{{"index":{index},"entry":"'
    if not line.startswith(prefix):
        return None
    if line.endswith('"}\n'):
        encoded = line[len(prefix) : -3]
    elif line.endswith('"}'):
        encoded = line[len(prefix) : -2]
    else:
        return None
    try:
        return binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return None


def _check_outer(frontier: Frontier, outer: Checkpoint, checked: int, lineno: int) -> None:
    """At the given checkpoint's size, the entries so far must have its root."""
    if frontier.root() != outer.root:
        raise EvidenceError(
            f"line {lineno}: the given checkpoint of size {outer.size} does not match"
            f" {_entries(checked, outer.size)}: first bad index is at or after {checked}"
        )


def verify_export(
    lines: Iterable[str], key: PublicKey | Verifier, *, checkpoint: str | None = None
) -> ExportReport:
    """Recompute every root and check every checkpoint of an export; raise on the first
    problem, naming the line and the index (or the range of indexes) that is wrong.

    ``checkpoint``, a signed note obtained elsewhere (say, from the live gateway), must
    also match: the export may not be truncated below it, nor differ from the log it
    signed.
    """
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise EvidenceError("the export is empty") from None
    header = _json(first, "line 1: not JSON")
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise EvidenceError(f"line 1: not an {EXPORT_FORMAT} header")
    origin = header.get("origin")
    if not isinstance(origin, str):
        raise EvidenceError("line 1: the header has no origin")
    verifier = _verifier(key, origin, "line 1: the export")
    outer = None
    if checkpoint is not None:
        try:
            outer = open_checkpoint(checkpoint, verifier)
        except EvidenceError as exc:
            raise EvidenceError(f"the given checkpoint does not verify: {exc}") from exc
    frontier = Frontier()
    checked = 0  # the size covered by the last good checkpoint
    count = 0
    for lineno, line in enumerate(it, start=2):
        exported = _exported_entry(line, frontier.size)
        if exported is not None:  # the common case, without a JSON parse
            frontier.append(exported)
            if outer is not None and frontier.size == outer.size:
                _check_outer(frontier, outer, checked, lineno)
            continue
        item = _json(line, f"line {lineno}: not JSON (index {frontier.size})")
        if not isinstance(item, dict):
            raise EvidenceError(f"line {lineno}: not a JSON object")
        if "checkpoint" in item:
            note = item["checkpoint"]
            if not isinstance(note, str):
                raise EvidenceError(f"line {lineno}: checkpoint is not a string")
            unproven = _entries(checked, frontier.size)
            claimed = _claimed_origin(note)
            if claimed is not None and claimed != origin:
                raise EvidenceError(
                    f"line {lineno}: checkpoint does not verify: it is of log {claimed!r},"
                    f" but the export header (line 1) names {origin!r}, leaving {unproven}"
                    " unproven"
                )
            try:
                cp = open_checkpoint(note, verifier)
            except EvidenceError as exc:
                raise EvidenceError(
                    f"line {lineno}: checkpoint does not verify: {exc}; this leaves {unproven}"
                    f" (before line {lineno}) unproven"
                ) from exc
            if cp.size != frontier.size:
                # Entries before ``checked`` are proven, so the first wrong one is at most
                # the first index where the counts part: min(cp.size, frontier.size).
                what = (
                    "entries are missing" if cp.size > frontier.size else "there are extra entries"
                )
                raise EvidenceError(
                    f"line {lineno}: checkpoint of size {cp.size} sits after {frontier.size}"
                    f" entries: {what} (the first bad index is in"
                    f" {checked}..{min(cp.size, frontier.size)}), or the checkpoint was moved"
                )
            if cp.root != frontier.root():
                raise EvidenceError(
                    f"line {lineno}: entries {checked}..{cp.size - 1} do not match the signed"
                    f" checkpoint of size {cp.size}: first bad index is at or after {checked}"
                )
            checked = cp.size
            count += 1
            continue
        index, encoded = item.get("index"), item.get("entry")
        if type(index) is not int or index != frontier.size:
            raise EvidenceError(
                f"line {lineno}: index {index!r} where index {frontier.size} was expected"
                " (an entry is missing, duplicated or reordered)"
            )
        if not isinstance(encoded, str):
            raise EvidenceError(f"line {lineno}: index {index}: entry is not base64 text")
        try:
            entry = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EvidenceError(f"line {lineno}: index {index}: entry is not base64") from exc
        frontier.append(entry)
        if outer is not None and frontier.size == outer.size:
            _check_outer(frontier, outer, checked, lineno)
    if count == 0 or checked != frontier.size:
        raise EvidenceError(
            f"entries {checked}..{frontier.size - 1} are not covered by a signed checkpoint:"
            " the export is truncated or was cut after its last checkpoint"
            if frontier.size > checked
            else "the export has no signed checkpoint"
        )
    if outer is not None and outer.size > frontier.size:
        raise EvidenceError(
            f"the export holds {frontier.size} entries but the log had {outer.size}:"
            f" the export is truncated at index {frontier.size}"
        )
    return ExportReport(entries=frontier.size, checkpoints=count, root=frontier.root())


def verify_evidence(text: str | bytes, key: PublicKey | Verifier) -> tuple[Checkpoint, bytes]:
    """Verify tlog-proof evidence offline; return the checkpoint and the proven entry."""
    proof = parse_tlog_proof(text)
    if proof.extra is None:
        raise EvidenceError("the evidence does not carry its entry (no extra line)")
    origin = unverified_checkpoint(proof.checkpoint_note).origin
    verifier = _verifier(key, origin, "the evidence's checkpoint")
    checkpoint = verify_tlog_proof(text, proof.extra, verifier)
    return checkpoint, proof.extra
