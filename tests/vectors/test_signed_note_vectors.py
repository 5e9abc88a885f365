"""C2SP signed-note vectors: golang/mod sumdb/note tests and the C2SP spec examples.

Go's error strings are matched as substrings of execgate's messages, so an "ok/error"
match also shows the note failed for the reason Go gives.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Final

import pytest
from conftest import load_vector

from execgate.audit.checkpoint import Checkpoint, open_checkpoint
from execgate.audit.note import (
    NoteSignature,
    Signer,
    Verifier,
    format_vkey,
    open_note,
    parse_unverified,
    sign_note,
)
from execgate.errors import EvidenceError
from execgate.jose import PrivateKey

_GO: Final[dict[str, Any]] = load_vector("signed-note/go-note.json")
_C2SP: Final[dict[str, Any]] = load_vector("signed-note/c2sp-examples.json")
_PETER_TEXT: Final = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)


def _key(name: str) -> dict[str, Any]:
    (key,) = [key for key in _GO["keys"] if key["name"] == name]
    assert isinstance(key, dict)
    return key


def _verifier(name: str) -> Verifier:
    return Verifier.from_vkey(_key(name)["vkey"])


def _signer(name: str) -> Signer:
    return Signer.from_skey(_key(name)["skey"])


def _listed(sigs: tuple[NoteSignature, ...]) -> list[dict[str, str]]:
    """Signatures in the vector file's shape (Go's note.Signature)."""
    return [
        {
            "name": sig.name,
            "key_id_hex": f"{sig.key_id:08x}",
            "base64": base64.b64encode(sig.key_id.to_bytes(4, "big") + sig.signature).decode(),
        }
        for sig in sigs
    ]


def _line(name: str, key_id_hex: str, signature: bytes) -> str:
    encoded = base64.b64encode(bytes.fromhex(key_id_hex) + signature).decode()
    return f"\u2014 {name} {encoded}\n"


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["PeterNeumann", "EnochRoot"])
def test_key_pair(name: str) -> None:
    key = _key(name)
    verifier, signer = _verifier(name), _signer(name)
    assert (verifier.name, f"{verifier.key_id:08x}") == (name, key["key_id_hex"])
    assert verifier.public_key.raw.hex() == key["public_key_hex"]
    assert verifier.vkey() == format_vkey(name, verifier.public_key) == key["vkey"]
    assert signer.verifier == verifier
    assert signer.key_id == verifier.key_id


@pytest.mark.parametrize(
    "case", _GO["bad_vkeys"], ids=lambda case: str(case["why"]).split(" (")[0].replace(" ", "-")
)
def test_bad_vkey(case: dict[str, Any]) -> None:
    assert case["expect"] == "error"
    with pytest.raises(ValueError, match="malformed verifier key"):
        Verifier.from_vkey(case["vkey"])


def _mangled(key: str) -> list[str]:
    """Every proper substring and every single-character +1 mutation of ``key``."""
    substrings = {key[i:j] for i in range(len(key)) for j in range(i, len(key) + 1)}
    substrings.discard(key)
    bumped = {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    return sorted(substrings | bumped)


def test_key_mangling_rules_are_the_ones_implemented() -> None:
    assert len(_GO["key_mangling_rules"]) == 3


def test_every_mangled_vkey_is_rejected() -> None:
    vkey = _key("PeterNeumann")["vkey"]
    for mangled in _mangled(vkey):
        with pytest.raises(ValueError, match="malformed verifier key"):
            Verifier.from_vkey(mangled)


def test_every_mangled_skey_is_rejected() -> None:
    skey = _key("PeterNeumann")["skey"]
    for mangled in _mangled(skey):
        with pytest.raises(ValueError, match="malformed signer key"):
            Signer.from_skey(mangled)


# --- lookup ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", _GO["lookup_cases"], ids=lambda case: "-".join(case["lookup"]) + f"-{case['expect']}"
)
def test_lookup(case: dict[str, Any]) -> None:
    """A signature line naming the looked-up key, next to Peter's valid signature."""
    verifiers = [_verifier(name) for name in case["verifiers"]]
    name, key_id_hex = case["lookup"]
    peter = sign_note(_PETER_TEXT, [_signer("PeterNeumann")])
    owner = "EnochRoot" if name == "EnochRoot" else "PeterNeumann"
    signature = _signer(owner).sign(_PETER_TEXT.encode())
    line = _line(name, key_id_hex, signature)
    note = peter if line in peter else peter + line
    if case["expect"] == "ok":
        opened = open_note(note, verifiers)
        assert [sig.name for sig in opened.verified] == [case["result"]]
    elif case["error"].startswith("unknown key"):
        opened = open_note(note, verifiers)
        assert [(sig.name, f"{sig.key_id:08x}") for sig in opened.unverified] == [
            (name, key_id_hex)
        ]
    else:
        with pytest.raises(EvidenceError, match=case["error"].replace("+", r"\+")):
            open_note(note, verifiers)


# --- sign --------------------------------------------------------------------------------

# Go's Sign takes a Note struct whose signatures carry a declared key ID next to the base64;
# execgate takes the existing signed note, where the key ID is inside the base64. Each
# existing signature is written as a line here, as described per case.
_EXISTING_LINES: Final = {
    # Same (name, key ID) as the signer, garbage signature bytes: the signer replaces it.
    "sign-replaces-existing": _line("PeterNeumann", "c74f20a3", b"BADSIGN"),
    # An invalid key name in an existing signature line.
    "sign-existing-bad-name": _line("a+b", "00000000", b"ABCD"),
    # The declared-vs-embedded key ID mismatch cannot be written in a note; the nearest
    # line is Go's base64 taken verbatim, which is also not canonical base64.
    "sign-existing-bad-hash": "\u2014 PeterNeumann BADHASH=\n",
}


@pytest.mark.parametrize("case", _GO["sign_cases"], ids=lambda case: case["id"])
def test_sign(case: dict[str, Any]) -> None:
    case_id = case["id"]
    if case_id == "sign-invalid-signer-name":
        with pytest.raises(ValueError, match="invalid signer"):
            Signer("bad name", PrivateKey.from_seed(bytes(32)))
        return
    signer = _signer(case["signer"] or "PeterNeumann")  # Go may sign with no signer at all
    if case_id == "sign-add-enoch":
        opened = open_note(
            case["input_signed_note"], [_verifier(name) for name in case["open_with"]]
        )
        assert (
            sign_note(opened.text, [signer], existing=case["input_signed_note"])
            == case["signed_note"]
        )
        return
    existing = None
    if "existing_sigs" in case:
        existing = case["text"] + "\n" + _EXISTING_LINES[case_id]
    if case["expect"] == "ok":
        assert sign_note(case["text"], [signer], existing=existing) == case["signed_note"]
        return
    assert case["error"] == "malformed note"
    expected: type[Exception] = ValueError if existing is None else EvidenceError
    with pytest.raises(expected, match="malformed note"):
        sign_note(case["text"], [signer], existing=existing)


# --- open --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _GO["open_cases"], ids=lambda case: case["id"])
def test_open(case: dict[str, Any]) -> None:
    verifiers = [_verifier(name) for name in case["verifiers"]]
    note = base64.b64decode(case["signed_note_b64"], validate=True)
    inputs: list[bytes | str] = [note]
    if case["signed_note"] is not None:
        assert note == case["signed_note"].encode()
        inputs.append(case["signed_note"])
    for given in inputs:
        if case["expect"] == "ok":
            opened = open_note(given, verifiers)
            assert opened.text == case["text"]
            assert _listed(opened.verified) == case["verified_sigs"]
            assert _listed(opened.unverified) == case["unverified_sigs"]
        else:
            with pytest.raises(EvidenceError) as info:
                open_note(given, verifiers)
            assert case["error"] in str(info.value)


# --- the C2SP spec examples ----------------------------------------------------------------


def test_c2sp_verifiable_example() -> None:
    (case,) = [c for c in _C2SP["signed_note_examples"] if c["expect"] == "ok"]
    verifier = Verifier.from_vkey(case["vkey"])
    assert f"{verifier.key_id:08x}" == case["key_id_hex"]
    assert verifier.public_key.raw.hex() == case["public_key_hex"]
    opened = open_note(case["signed_note"], [verifier])
    assert opened.text == case["text"]
    assert [sig.name for sig in opened.verified] == case["verified_sigs"]
    assert opened.unverified == ()


def test_c2sp_intro_note_splits_at_the_last_blank_line() -> None:
    (case,) = [c for c in _C2SP["signed_note_examples"] if c["id"] == "c2sp-signed-note-intro"]
    parsed = parse_unverified(case["signed_note"])
    assert parsed.text == case["text"]
    assert "\n\n" in parsed.text
    (sig,) = parsed.signatures
    assert (sig.name, f"{sig.key_id:08x}", len(sig.signature)) == (
        case["name"],
        case["signature_key_id_hex"],
        case["signature_len"],
    )
    with pytest.raises(EvidenceError, match="no verifiable signatures"):
        open_note(case["signed_note"], [])
    # A key with the same name but another key ID is not the signer: ignored, not failed.
    stranger = Verifier(case["name"], PrivateKey.from_seed(bytes(32)).public)
    with pytest.raises(EvidenceError, match="no verifiable signatures"):
        open_note(case["signed_note"], [stranger])


def test_c2sp_checkpoint_example_parses() -> None:
    (case,) = _C2SP["checkpoint_examples"]
    parsed = parse_unverified(case["signed_note"])
    assert parsed.text == case["text"]
    checkpoint = Checkpoint.parse(parsed.text)
    assert checkpoint == Checkpoint(
        case["origin"], case["tree_size"], bytes.fromhex(case["root_hash_hex"]), ()
    )
    assert base64.b64encode(checkpoint.root).decode() == case["root_hash_b64"]
    assert checkpoint.to_text() == case["text"]
    (sig,) = parsed.signatures
    assert (f"{sig.key_id:08x}", len(sig.signature)) == (
        case["signature_key_id_hex"],
        case["signature_len"],
    )
    # No key is published for this log: a key of the same name cannot open it.
    stranger = Verifier(case["origin"], PrivateKey.from_seed(bytes(32)).public)
    with pytest.raises(EvidenceError, match="no verifiable signatures"):
        open_checkpoint(case["signed_note"], stranger)


def test_vector_files_are_the_expected_ones(vectors_dir: Path) -> None:
    data = json.loads((vectors_dir / "signed-note/go-note.json").read_text("utf-8"))
    assert len(data["open_cases"]) == 18
    assert len(data["sign_cases"]) == 7
