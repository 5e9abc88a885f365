"""C2SP signed notes (c2sp.org/signed-note), Ed25519 only.

A signed note is a UTF-8 text ending in a newline, a blank line, then one or more lines
``— <key name> base64(key ID || signature)``. :func:`open_note` follows Go's
``golang.org/x/mod/sumdb/note.Open``: the text is split off at the last blank line, a
signature from an unknown (name, key ID) is listed as unverified, a signature from a known
key must verify, and at least one must. It is stricter than Go in two places: base64 must
be canonical, and every distinct signature line of a known key is verified (Go checks only
the first per key).

Keys are written as in Go: a verifier key is ``name+hex8+base64(0x01 || public key)`` and
a signer key ``PRIVATE+KEY+name+hex8+base64(0x01 || seed)``; the key ID is
``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` read big-endian.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from execgate.errors import EvidenceError, JoseError
from execgate.jose import PrivateKey, PublicKey

__all__ = [
    "MAX_SIGNATURES",
    "NoteSignature",
    "OpenedNote",
    "Signer",
    "UnverifiedNote",
    "Verifier",
    "format_vkey",
    "open_note",
    "parse_unverified",
    "sign_note",
]

MAX_SIGNATURES: Final = 100  # Go's limit; the spec asks verifiers to accept at least 16
_ALG_ED25519: Final = b"\x01"
_SIG_PREFIX: Final = "\u2014 "  # EM DASH, space
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than newline
_KEY_ID_HEX: Final = re.compile(r"[0-9a-f]{8}")


def _b64decode(text: str) -> bytes:
    """Strict standard base64: alphabet, padding, and the one canonical encoding only."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not standard base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _is_valid_name(name: str) -> bool:
    """Non-empty, no "+", no Unicode space, no control character (so no newline either)."""
    return (
        isinstance(name, str)
        and name != ""
        and "+" not in name
        and not any(c.isspace() for c in name)
        and _CONTROL.search(name) is None
    )


def _key_id(name: str, public_key: PublicKey) -> int:
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + _ALG_ED25519 + public_key.raw)
    return int.from_bytes(digest.digest()[:4], "big")


def format_vkey(name: str, public_key: PublicKey) -> str:
    """The verifier key ``name+hex8+base64(0x01 || public key)``."""
    if not _is_valid_name(name):
        raise ValueError(f"invalid key name {name!r}")
    encoded = _b64encode(_ALG_ED25519 + public_key.raw)
    return f"{name}+{_key_id(name, public_key):08x}+{encoded}"


def _decode_key(name: str, key_id_hex: str, key64: str, what: str) -> tuple[int, bytes]:
    """Check the shared fields of a vkey or skey; return (declared key ID, 32 key bytes)."""
    if not _is_valid_name(name):
        raise ValueError(f"malformed {what}: invalid key name")
    if _KEY_ID_HEX.fullmatch(key_id_hex) is None:
        raise ValueError(f"malformed {what}: key ID is not 8 lowercase hex digits")
    try:
        key = _b64decode(key64)
    except ValueError as exc:
        raise ValueError(f"malformed {what}: key is {exc}") from exc
    if key[:1] != _ALG_ED25519:
        raise ValueError(f"malformed {what}: unknown algorithm (only 0x01, Ed25519)")
    if len(key) != 33:
        raise ValueError(f"malformed {what}: an Ed25519 key is 32 bytes")
    return int(key_id_hex, 16), key[1:]


@dataclass(frozen=True, slots=True)
class Verifier:
    """A trusted note key: a name and an Ed25519 public key (the key ID is derived)."""

    name: str
    public_key: PublicKey
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        if not _is_valid_name(self.name):
            raise ValueError(f"invalid key name {self.name!r}")
        if not isinstance(self.public_key, PublicKey):
            raise TypeError("public_key is not a PublicKey")
        object.__setattr__(self, "key_id", _key_id(self.name, self.public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``name+hex8+base64(0x01 || key)``; anything off raises ValueError."""
        parts = vkey.split("+", 2) if isinstance(vkey, str) else []
        if len(parts) != 3:
            raise ValueError("malformed verifier key: expected name+keyid+key")
        declared, raw = _decode_key(parts[0], parts[1], parts[2], "verifier key")
        verifier = cls(parts[0], PublicKey(raw))
        if verifier.key_id != declared:
            raise ValueError("malformed verifier key: key ID does not match name and key")
        return verifier

    def vkey(self) -> str:
        return format_vkey(self.name, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is this key's over ``message``, else raise EvidenceError."""
        try:
            self.public_key.verify(message, signature)
        except JoseError as exc:
            raise EvidenceError(f"invalid signature for key {self.name}+{self.key_id:08x}") from exc


class Signer:
    """A note signing key: a name and an Ed25519 private key. ``repr`` hides the seed."""

    __slots__ = ("_key", "key_id", "name")

    def __init__(self, name: str, key: PrivateKey) -> None:
        if not _is_valid_name(name):
            raise ValueError(f"invalid signer: bad key name {name!r}")
        if not isinstance(key, PrivateKey):
            raise TypeError("key is not a PrivateKey")
        self.name = name
        self._key = key
        self.key_id = _key_id(name, key.public)

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+name+hex8+base64(0x01 || seed)``; raises ValueError."""
        parts = skey.split("+", 4) if isinstance(skey, str) else []
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ValueError("malformed signer key: expected PRIVATE+KEY+name+keyid+seed")
        declared, seed = _decode_key(parts[2], parts[3], parts[4], "signer key")
        signer = cls(parts[2], PrivateKey.from_seed(seed))
        if signer.key_id != declared:
            raise ValueError("malformed signer key: key ID does not match name and key")
        return signer

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self._key.public)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Signer({self.name}+{self.key_id:08x})"


class NoteSignature(NamedTuple):
    """One signature line: key name, key ID and the signature bytes after the key ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        encoded = _b64encode(self.key_id.to_bytes(4, "big") + self.signature)
        return f"{_SIG_PREFIX}{self.name} {encoded}\n"


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A note with at least one signature verified by a trusted key."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


@dataclass(frozen=True, slots=True)
class UnverifiedNote:
    """A well-formed note whose signatures have NOT been checked. Never trust its text."""

    text: str
    signatures: tuple[NoteSignature, ...]


def _malformed(detail: str) -> EvidenceError:
    return EvidenceError(f"malformed note: {detail}")


def _check_text(text: str) -> None:
    """Note rules for a text: UTF-8, no ASCII controls but newline (raises ValueError)."""
    if not isinstance(text, str):
        raise TypeError("a note text is a str")
    if _CONTROL.search(text) is not None:
        raise ValueError("note text holds an ASCII control character other than newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("note text is not valid Unicode (lone surrogate)") from exc


def _split(note: bytes | str) -> tuple[str, list[str]]:
    """Decode and split a note into (text, signature lines), checking the layout only."""
    if isinstance(note, str):
        decoded = note
        try:
            note.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _malformed("not valid Unicode (lone surrogate)") from exc
    elif isinstance(note, bytes):
        try:
            decoded = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _malformed("not valid UTF-8") from exc
    else:
        raise _malformed("a note is bytes or str")
    if _CONTROL.search(decoded) is not None:
        raise _malformed("an ASCII control character other than newline")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise _malformed("no blank line before the signatures")
    block = decoded[split + 2 :]
    if not block.endswith("\n"):
        raise _malformed("the signature block does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"more than {MAX_SIGNATURES} signatures")
    return decoded[: split + 1], lines


def _parse_line(line: str) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX):
        raise _malformed("a signature line does not start with an em dash and a space")
    name, _, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    if not _is_valid_name(name):
        raise _malformed(f"invalid key name {name!r} in a signature line")
    if not encoded:
        raise _malformed(f"the signature line of {name} has no signature")
    try:
        raw = _b64decode(encoded)
    except ValueError as exc:
        raise _malformed(f"signature of {name} is {exc}") from exc
    if len(raw) < 5:
        raise _malformed(f"signature of {name} is shorter than a key ID and one byte")
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def parse_unverified(note: bytes | str) -> UnverifiedNote:
    """Parse a note's layout and signature lines WITHOUT checking any signature."""
    text, lines = _split(note)
    return UnverifiedNote(text, tuple(_parse_line(line) for line in lines))


def open_note(note: bytes | str, verifiers: Sequence[Verifier]) -> OpenedNote:
    """Verify ``note`` against the trusted ``verifiers``; raise EvidenceError unless it holds.

    Unknown keys are listed, not trusted. Two trusted verifiers with the same (name, key
    ID) are ambiguous, which is an error as soon as a signature names them.
    """
    known: dict[tuple[str, int], list[Verifier]] = {}
    for verifier in verifiers:
        if not isinstance(verifier, Verifier):
            raise TypeError("verifiers holds something that is not a Verifier")
        known.setdefault((verifier.name, verifier.key_id), []).append(verifier)
    parsed = parse_unverified(note)
    message = parsed.text.encode("utf-8")
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    checked: set[NoteSignature] = set()
    verified_keys: set[tuple[str, int]] = set()
    for sig in parsed.signatures:
        if sig in checked:
            continue  # the same line twice
        checked.add(sig)
        candidates = known.get((sig.name, sig.key_id))
        if candidates is None:
            unverified.append(sig)
            continue
        if len(candidates) > 1:
            raise EvidenceError(f"ambiguous key {sig.name}+{sig.key_id:08x}")
        candidates[0].verify(message, sig.signature)
        if (sig.name, sig.key_id) not in verified_keys:  # one entry per key, as in Go
            verified_keys.add((sig.name, sig.key_id))
            verified.append(sig)
    if not verified:
        raise EvidenceError("note has no verifiable signatures from a trusted key")
    return OpenedNote(parsed.text, tuple(verified), tuple(unverified))


def sign_note(text: str, signers: Sequence[Signer], *, existing: str | None = None) -> str:
    """Sign ``text`` with every signer and return the signed note.

    With ``existing`` (a signed note of the same text), its signatures are kept, first,
    except those from a key that signs again. Invalid input raises ValueError; a malformed
    ``existing`` raises EvidenceError.
    """
    _check_text(text)
    if not text.endswith("\n"):
        raise ValueError("malformed note: text does not end with a newline")
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    keys = {(signer.name, signer.key_id) for signer in signers}
    if len(keys) != len(signers):
        raise ValueError("two signers share a key name and key ID")
    kept: list[str] = []
    if existing is not None:
        previous = parse_unverified(existing)
        if previous.text != text:
            raise ValueError("existing note has a different text")
        kept = [sig.line() for sig in previous.signatures if (sig.name, sig.key_id) not in keys]
    message = text.encode("utf-8")
    new = [
        NoteSignature(signer.name, signer.key_id, signer.sign(message)).line() for signer in signers
    ]
    if len(kept) + len(new) > MAX_SIGNATURES:
        raise ValueError(f"a note carries at most {MAX_SIGNATURES} signatures")
    return "".join([text, "\n", *kept, *new])
