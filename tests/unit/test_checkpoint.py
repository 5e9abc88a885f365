"""Checkpoints and tlog-proofs: round trips, and every malformation is an EvidenceError."""

from __future__ import annotations

import base64
from typing import Final

import pytest

from execgate.audit.checkpoint import (
    TLOG_PROOF_HEADER,
    Checkpoint,
    TlogProof,
    format_tlog_proof,
    open_checkpoint,
    parse_tlog_proof,
    sign_checkpoint,
    verify_tlog_proof,
)
from execgate.audit.merkle import Frontier, inclusion_proof
from execgate.audit.note import Signer, sign_note
from execgate.errors import EvidenceError
from execgate.jose import PrivateKey

ORIGIN: Final = "execgate.example/node-1"
LOG: Final = Signer(ORIGIN, PrivateKey.from_seed(b"\x11" * 32))
IMPOSTOR: Final = Signer(ORIGIN, PrivateKey.from_seed(b"\x22" * 32))
WITNESS: Final = Signer("witness.example", PrivateKey.from_seed(b"\x33" * 32))
ENTRIES: Final = [f'{{"decision":{i}}}'.encode() for i in range(20)]
SIZE: Final = 13


def _build() -> tuple[dict[tuple[int, int], bytes], Checkpoint]:
    frontier, store = Frontier(), {}
    for entry in ENTRIES[:SIZE]:
        for level, index, value in frontier.append(entry):
            store[level, index] = value
    return store, Checkpoint(ORIGIN, SIZE, frontier.root())


STORE, CHECKPOINT = _build()
SIGNED: Final = sign_checkpoint(CHECKPOINT, LOG)
ROOT64: Final = base64.b64encode(CHECKPOINT.root).decode()


def _proof_hashes(index: int) -> list[bytes]:
    return inclusion_proof(index, SIZE, lambda level, i: STORE[level, i])


def _evidence(index: int, extra: bytes | None = None) -> str:
    return format_tlog_proof(index, _proof_hashes(index), SIGNED, extra)


# --- checkpoints -------------------------------------------------------------------------


def test_checkpoint_text_round_trip() -> None:
    text = CHECKPOINT.to_text()
    assert text == f"{ORIGIN}\n13\n{ROOT64}\n"
    assert Checkpoint.parse(text) == CHECKPOINT
    with_extensions = Checkpoint(ORIGIN, 0, bytes(32), ("ext one", "ext — two"))
    assert with_extensions.to_text().endswith("\next one\next — two\n")
    assert Checkpoint.parse(with_extensions.to_text()) == with_extensions


def test_sign_and_open_checkpoint() -> None:
    assert open_checkpoint(SIGNED, LOG.verifier) == CHECKPOINT
    assert open_checkpoint(SIGNED.encode(), LOG.verifier) == CHECKPOINT
    cosigned = sign_note(CHECKPOINT.to_text(), [WITNESS], existing=SIGNED)
    assert open_checkpoint(cosigned, LOG.verifier) == CHECKPOINT


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{ORIGIN}\n013\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n00\n{ROOT64}\n", "leading zeros"),
        (f"{ORIGIN}\n-1\n{ROOT64}\n", "not a decimal"),
        (f"{ORIGIN}\n+1\n{ROOT64}\n", "not a decimal"),
        (f"{ORIGIN}\n 1\n{ROOT64}\n", "not a decimal"),
        (f"{ORIGIN}\n1_0\n{ROOT64}\n", "not a decimal"),
        (f"{ORIGIN}\n\u0661\n{ROOT64}\n", "not a decimal"),
        (f"{ORIGIN}\n\n{ROOT64}\n", "not a decimal"),
        (f"{ORIGIN}\n{2**64}\n{ROOT64}\n", "does not fit in 64 bits"),
        (f"{ORIGIN}\n13\n{base64.b64encode(bytes(31)).decode()}\n", "31 bytes, not 32"),
        (f"{ORIGIN}\n13\n{base64.b64encode(bytes(33)).decode()}\n", "33 bytes, not 32"),
        (f"{ORIGIN}\n13\n{ROOT64.rstrip('=')}\n", "not standard base64"),
        (f"{ORIGIN}\n13\n{ROOT64[:-2]}B=\n", "not canonical base64"),
        (f"{ORIGIN}\n13\n{ROOT64}", "does not end with a newline"),
        (f"{ORIGIN}\n13\n", "fewer than three lines"),
        (f"\n13\n{ROOT64}\n", "origin must be a non-empty line"),
        (f"{ORIGIN}\n13\n{ROOT64}\n\n", "extension line must be a non-empty line"),
        (f"{ORIGIN}\n13\n{ROOT64}\next\n\n", "extension line must be a non-empty line"),
    ],
)
def test_malformed_checkpoints(text: str, message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        Checkpoint.parse(text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("", 1, bytes(32)), "origin"),
        (("a\nb", 1, bytes(32)), "origin"),
        (("o", -1, bytes(32)), "size"),
        (("o", 2**64, bytes(32)), "size"),
        (("o", 1, bytes(31)), "root"),
    ],
)
def test_checkpoint_constructor_checks_invariants(
    fields: tuple[str, int, bytes], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Checkpoint(*fields)


def test_open_checkpoint_with_the_wrong_key() -> None:
    with pytest.raises(EvidenceError, match="no verifiable signatures"):
        open_checkpoint(SIGNED, IMPOSTOR.verifier)
    with pytest.raises(EvidenceError, match="no verifiable signatures"):
        open_checkpoint(sign_checkpoint(CHECKPOINT, IMPOSTOR), LOG.verifier)


def test_open_checkpoint_whose_origin_is_not_the_key_name() -> None:
    other = Checkpoint("execgate.example/node-2", SIZE, CHECKPOINT.root)
    note = sign_note(other.to_text(), [LOG])
    with pytest.raises(
        EvidenceError, match=r"origin 'execgate\.example/node-2' is not the log key"
    ):
        open_checkpoint(note, LOG.verifier)
    with pytest.raises(ValueError, match="is not the origin"):
        sign_checkpoint(other, LOG)


def test_open_checkpoint_with_a_flipped_signature_bit() -> None:
    body, _, signature = SIGNED.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(signature))
    raw[10] ^= 0x04  # inside the Ed25519 signature, after the 4-byte key ID
    flipped = f"{body} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(EvidenceError, match="invalid signature for key"):
        open_checkpoint(flipped, LOG.verifier)


def test_open_checkpoint_that_is_not_a_checkpoint() -> None:
    with pytest.raises(EvidenceError, match="fewer than three lines"):
        open_checkpoint(sign_note("just text\n", [LOG]), LOG.verifier)


# --- tlog-proof --------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(SIZE))
def test_tlog_proof_for_every_entry(index: int) -> None:
    evidence = _evidence(index)
    assert evidence.startswith(f"{TLOG_PROOF_HEADER}\nindex {index}\n")
    assert evidence.endswith("\n\n" + SIGNED)
    assert verify_tlog_proof(evidence, ENTRIES[index], LOG.verifier) == CHECKPOINT
    assert verify_tlog_proof(evidence.encode(), ENTRIES[index], LOG.verifier) == CHECKPOINT
    assert parse_tlog_proof(evidence) == TlogProof(index, tuple(_proof_hashes(index)), SIGNED, None)


def test_tlog_proof_with_extra_data() -> None:
    evidence = _evidence(5, extra=b"vrf proof bytes")
    extra_line = f"extra {base64.b64encode(b'vrf proof bytes').decode()}"
    assert evidence.split("\n")[:3] == [TLOG_PROOF_HEADER, extra_line, "index 5"]
    assert parse_tlog_proof(evidence).extra == b"vrf proof bytes"
    assert verify_tlog_proof(evidence, ENTRIES[5], LOG.verifier) == CHECKPOINT


def test_tlog_proof_for_a_single_entry_log_has_no_hashes() -> None:
    frontier = Frontier()
    frontier.append(b"only")
    signed = sign_checkpoint(Checkpoint(ORIGIN, 1, frontier.root()), LOG)
    evidence = format_tlog_proof(0, [], signed)
    assert evidence == f"{TLOG_PROOF_HEADER}\nindex 0\n\n{signed}"
    assert verify_tlog_proof(evidence, b"only", LOG.verifier).size == 1


def _lines(index: int = 6) -> list[str]:
    head, _, _ = _evidence(index).partition("\n\n")
    return head.split("\n")


def _join(lines: list[str], note: str = SIGNED) -> str:
    return "\n".join(lines) + "\n\n" + note


@pytest.mark.parametrize(
    ("evidence", "message"),
    [
        (_join(["c2sp.org/tlog-proof@v2", *_lines()[1:]]), "does not start with"),
        (_join(_lines()[1:]), "does not start with"),
        (_join([TLOG_PROOF_HEADER]), "no index line"),
        (_join([TLOG_PROOF_HEADER, "index 06", *_lines()[2:]]), "leading zeros"),
        (_join([TLOG_PROOF_HEADER, "index -6", *_lines()[2:]]), "not a decimal"),
        (_join([TLOG_PROOF_HEADER, "index  6", *_lines()[2:]]), "not a decimal"),
        (_join([TLOG_PROOF_HEADER, "Index 6", *_lines()[2:]]), "no index line"),
        (_join([*_lines()[:2], "extra AAAA", *_lines()[2:]]), "not standard base64"),
        (_join([_lines()[0], "extra ", *_lines()[1:]]), "extra line is empty"),
        (_join([_lines()[0], "extra AB==", *_lines()[1:]]), "not canonical base64"),
        (_join([*_lines(), "AAAA"]), "hash 4 is 3 bytes"),
        (_join([*_lines()[:-1], _lines()[-1].rstrip("=")]), "not standard base64"),
        (_join([*_lines(), *[_lines()[-1]] * 62]), "more than 64 proof hashes"),
        (_evidence(6).replace("\n\n", "\n", 1), "hash 4 is not standard base64"),
        (f"{TLOG_PROOF_HEADER}\nindex 0\n", "no empty line"),
        (_join(_lines(), SIGNED.replace(f"\n{ROOT64}", "\nroot")), "root hash is"),
        (_join(_lines(), CHECKPOINT.to_text()), "malformed note"),
    ],
)
def test_malformed_tlog_proofs(evidence: str, message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        parse_tlog_proof(evidence)
    with pytest.raises(EvidenceError, match=message):
        verify_tlog_proof(evidence, ENTRIES[6], LOG.verifier)


def test_tlog_proof_that_is_not_utf8() -> None:
    with pytest.raises(EvidenceError, match="not valid UTF-8"):
        parse_tlog_proof(b"\xff" + _evidence(0).encode())


def test_tlog_proof_index_at_or_beyond_the_checkpoint_size() -> None:
    for index in (SIZE, SIZE + 100):
        evidence = _join([TLOG_PROOF_HEADER, f"index {index}", *_lines()[2:]])
        with pytest.raises(EvidenceError, match=f"index {index} is not below checkpoint size 13"):
            verify_tlog_proof(evidence, ENTRIES[6], LOG.verifier)


def test_tlog_proof_that_does_not_prove_the_entry() -> None:
    lines = _lines()
    with pytest.raises(EvidenceError, match="has 3 hashes, expected 4"):
        verify_tlog_proof(_join(lines[:-1]), ENTRIES[6], LOG.verifier)
    with pytest.raises(EvidenceError, match="has 5 hashes, expected 4"):
        verify_tlog_proof(_join([*lines, lines[-1]]), ENTRIES[6], LOG.verifier)
    with pytest.raises(EvidenceError, match="does not lead to the root"):
        verify_tlog_proof(_join(lines), ENTRIES[7], LOG.verifier)
    with pytest.raises(EvidenceError, match="does not lead to the root"):
        verify_tlog_proof(_join([lines[0], "index 7", *lines[2:]]), ENTRIES[6], LOG.verifier)
    raw = bytearray(base64.b64decode(lines[3]))
    raw[0] ^= 0x80
    flipped = [*lines[:3], base64.b64encode(bytes(raw)).decode(), *lines[4:]]
    with pytest.raises(EvidenceError, match="does not lead to the root"):
        verify_tlog_proof(_join(flipped), ENTRIES[6], LOG.verifier)


def test_tlog_proof_under_the_wrong_key() -> None:
    with pytest.raises(EvidenceError, match="no verifiable signatures"):
        verify_tlog_proof(_evidence(6), ENTRIES[6], IMPOSTOR.verifier)
    forged = _join(_lines(), sign_checkpoint(CHECKPOINT, IMPOSTOR))
    with pytest.raises(EvidenceError, match="no verifiable signatures"):
        verify_tlog_proof(forged, ENTRIES[6], LOG.verifier)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, [], SIGNED), "index"),
        ((2**64, [], SIGNED), "index"),
        ((0, [bytes(31)], SIGNED), "32 bytes"),
        ((0, [bytes(32)] * 65, SIGNED), "at most 64"),
        ((0, [], CHECKPOINT.to_text()), "not a checkpoint note"),
        ((0, [], sign_note("text\n", [LOG])), "not a checkpoint note"),
    ],
)
def test_format_tlog_proof_refuses_what_would_not_parse(
    args: tuple[int, list[bytes], str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        format_tlog_proof(*args)
    with pytest.raises(ValueError, match="extra"):
        format_tlog_proof(0, [], SIGNED, b"")
