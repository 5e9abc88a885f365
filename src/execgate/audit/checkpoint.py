"""C2SP tlog-checkpoint and tlog-proof: signed tree heads and offline inclusion evidence.

A checkpoint is the note text ``origin\\nsize\\nbase64(root)\\n[extension lines]``, signed
by the log's key, whose name is the origin (c2sp.org/tlog-checkpoint). A tlog-proof
(c2sp.org/tlog-proof) is::

    c2sp.org/tlog-proof@v1
    extra <base64>          (optional, unauthenticated)
    index <decimal>
    <base64 proof hash>     (zero or more, leaf's sibling first)
    <empty line>
    <the signed checkpoint, verbatim>

:func:`verify_tlog_proof` is the one call a holder of the log's public key needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from execgate.audit.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from execgate.audit.note import (
    Signer,
    Verifier,
    _b64decode,
    _b64encode,
    open_note,
    parse_unverified,
    sign_note,
)
from execgate.errors import EvidenceError

__all__ = [
    "TLOG_PROOF_HEADER",
    "Checkpoint",
    "TlogProof",
    "format_tlog_proof",
    "open_checkpoint",
    "parse_tlog_proof",
    "sign_checkpoint",
    "unverified_checkpoint",
    "verify_tlog_proof",
]

TLOG_PROOF_HEADER: Final = "c2sp.org/tlog-proof@v1"
_MAX_SIZE: Final = 2**64 - 1  # sizes and indices are uint64 in every tlog implementation
_MAX_PROOF: Final = 64  # an inclusion proof in a tree of < 2**64 leaves
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")
_CONTROL: Final = re.compile(r"[\x00-\x1f]")


def _decimal(text: str, what: str) -> int:
    if _DECIMAL.fullmatch(text) is None:
        raise EvidenceError(f"{what} {text!r} is not a decimal without leading zeros")
    value = int(text)
    if value > _MAX_SIZE:
        raise EvidenceError(f"{what} {text} does not fit in 64 bits")
    return value


def _hash(text: str, what: str) -> bytes:
    try:
        raw = _b64decode(text)
    except ValueError as exc:
        raise EvidenceError(f"{what} is {exc}") from exc
    if len(raw) != HASH_SIZE:
        raise EvidenceError(f"{what} is {len(raw)} bytes, not {HASH_SIZE}")
    return raw


def _check_line(line: object, what: str) -> None:
    if not isinstance(line, str) or not line or _CONTROL.search(line) is not None:
        raise ValueError(f"{what} must be a non-empty line without control characters")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, size and RFC 9162 root, plus opaque extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if type(self.size) is not int or not 0 <= self.size <= _MAX_SIZE:
            raise ValueError("size must be an integer in [0, 2**64)")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise ValueError("root must be 32 bytes")
        if not isinstance(self.extensions, tuple):
            raise ValueError("extensions must be a tuple of lines")
        for line in self.extensions:
            _check_line(line, "an extension line")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), _b64encode(self.root), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint text strictly. This checks no signature: see open_checkpoint."""
        if not isinstance(text, str) or not text.endswith("\n"):
            raise EvidenceError("checkpoint text does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise EvidenceError("checkpoint has fewer than three lines")
        origin, size, root, *extensions = lines
        try:
            return cls(
                origin, _decimal(size, "tree size"), _hash(root, "root hash"), tuple(extensions)
            )
        except ValueError as exc:
            raise EvidenceError(f"checkpoint: {exc}") from exc


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    """The checkpoint as a signed note; the signer's key name must be the origin."""
    if signer.name != checkpoint.origin:
        raise ValueError(f"key name {signer.name!r} is not the origin {checkpoint.origin!r}")
    return sign_note(checkpoint.to_text(), [signer])


def open_checkpoint(note: bytes | str, verifier: Verifier) -> Checkpoint:
    """Verify a signed checkpoint with the log's key; other signatures are ignored."""
    opened = open_note(note, [verifier])
    checkpoint = Checkpoint.parse(opened.text)
    if checkpoint.origin != verifier.name:
        raise EvidenceError(
            f"checkpoint origin {checkpoint.origin!r} is not the log key name {verifier.name!r}"
        )
    return checkpoint


def unverified_checkpoint(note: str) -> Checkpoint:
    """The checkpoint a signed note carries, its layout checked strictly and NO signature
    checked: for a note this node has just signed or verified, or to learn from the
    origin it claims which key to verify it with."""
    return Checkpoint.parse(parse_unverified(note).text)


# --- tlog-proof ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlogProof:
    """A parsed tlog-proof; nothing in it is verified (use :func:`verify_tlog_proof`)."""

    index: int
    proof: tuple[bytes, ...]
    checkpoint_note: str
    extra: bytes | None = None


def format_tlog_proof(
    index: int,
    proof_hashes: Sequence[bytes],
    signed_checkpoint: str,
    extra: bytes | None = None,
) -> str:
    """Assemble a tlog-proof; arguments that would not parse back raise ValueError."""
    if type(index) is not int or not 0 <= index <= _MAX_SIZE:
        raise ValueError("index must be an integer in [0, 2**64)")
    if len(proof_hashes) > _MAX_PROOF:
        raise ValueError(f"an inclusion proof has at most {_MAX_PROOF} hashes")
    if any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in proof_hashes):
        raise ValueError("every proof hash must be 32 bytes")
    if extra is not None and (not isinstance(extra, bytes) or not extra):
        raise ValueError("extra must be None or non-empty bytes")
    try:
        unverified_checkpoint(signed_checkpoint)
    except EvidenceError as exc:
        raise ValueError(f"signed_checkpoint is not a checkpoint note: {exc}") from exc
    lines = [TLOG_PROOF_HEADER]
    if extra is not None:
        lines.append(f"extra {_b64encode(extra)}")
    lines.append(f"index {index}")
    lines.extend(_b64encode(h) for h in proof_hashes)
    return "\n".join(lines) + "\n\n" + signed_checkpoint


def parse_tlog_proof(text: bytes | str) -> TlogProof:
    """Parse a tlog-proof strictly, checking the checkpoint's layout but NOT its signature."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EvidenceError("tlog-proof is not valid UTF-8") from exc
    if not isinstance(text, str):
        raise EvidenceError("tlog-proof is not bytes or str")
    head, blank, note = text.partition("\n\n")
    if not blank:
        raise EvidenceError("tlog-proof has no empty line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != TLOG_PROOF_HEADER:
        raise EvidenceError(f"tlog-proof does not start with {TLOG_PROOF_HEADER}")
    position, extra = 1, None
    if position < len(lines) and lines[position].startswith("extra "):
        try:
            extra = _b64decode(lines[position][len("extra ") :])
        except ValueError as exc:
            raise EvidenceError(f"tlog-proof extra data is {exc}") from exc
        if not extra:
            raise EvidenceError("tlog-proof extra line is empty")
        position += 1
    if position >= len(lines) or not lines[position].startswith("index "):
        raise EvidenceError("tlog-proof has no index line")
    index = _decimal(lines[position][len("index ") :], "tlog-proof index")
    hashes = lines[position + 1 :]
    if len(hashes) > _MAX_PROOF:
        raise EvidenceError(f"tlog-proof has more than {_MAX_PROOF} proof hashes")
    proof = tuple(_hash(line, f"tlog-proof hash {i}") for i, line in enumerate(hashes))
    unverified_checkpoint(note)
    return TlogProof(index, proof, note, extra)


def verify_tlog_proof(text: bytes | str, entry: bytes, verifier: Verifier) -> Checkpoint:
    """Verify that ``entry`` is in the log of ``verifier`` and return the checkpoint."""
    proof = parse_tlog_proof(text)
    checkpoint = open_checkpoint(proof.checkpoint_note, verifier)
    if proof.index >= checkpoint.size:
        raise EvidenceError(
            f"tlog-proof index {proof.index} is not below checkpoint size {checkpoint.size}"
        )
    verify_inclusion(leaf_hash(entry), proof.index, checkpoint.size, proof.proof, checkpoint.root)
    return checkpoint
