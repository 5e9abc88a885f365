"""Signed notes: keys, signing, and the strict opening rules a user can observe."""

from __future__ import annotations

import base64
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from execgate.audit.note import (
    MAX_SIGNATURES,
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

LOG: Final = Signer("log.example/a", PrivateKey.from_seed(b"\x01" * 32))
WITNESS: Final = Signer("witness.example", PrivateKey.from_seed(b"\x02" * 32))
TEXT: Final = "line one\n\nline three after a blank line\n"


def _line(name: str, key_id: int, signature: bytes) -> str:
    return NoteSignature(name, key_id, signature).line()


# --- keys --------------------------------------------------------------------------------


def test_vkey_round_trip_and_key_id() -> None:
    vkey = format_vkey(LOG.name, LOG.verifier.public_key)
    name, key_id, key64 = vkey.split("+", 2)
    assert (name, int(key_id, 16)) == (LOG.name, LOG.key_id)
    assert base64.b64decode(key64) == b"\x01" + LOG.verifier.public_key.raw
    assert Verifier.from_vkey(vkey) == LOG.verifier
    assert LOG.verifier.vkey() == vkey


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("", "expected name\\+keyid\\+key"),
        ("name+abcd", "expected name\\+keyid\\+key"),
        ("bad name+00000000+" + "A" * 44, "invalid key name"),
        ("name+0000000+" + "A" * 44, "8 lowercase hex"),
        ("name+ABCDEF01+" + "A" * 44, "8 lowercase hex"),
        ("name+00000000+AQ", "not standard base64"),
        ("name+00000000+AR==", "not canonical base64"),
        ("name+00000000+" + base64.b64encode(b"\x02" + bytes(32)).decode(), "unknown algorithm"),
        ("name+00000000+" + base64.b64encode(b"\x01" + bytes(31)).decode(), "32 bytes"),
        ("name+00000000+" + base64.b64encode(b"\x01" + bytes(32)).decode(), "key ID does not"),
    ],
)
def test_malformed_vkeys(vkey: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Verifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "name", ["", "a+b", "a b", "a\tb", "a\u00a0b", "a\u2028b", "a\nb", "a\x01b"]
)
def test_invalid_key_names(name: str) -> None:
    key = PrivateKey.from_seed(bytes(32))
    with pytest.raises(ValueError, match="invalid"):
        Verifier(name, key.public)
    with pytest.raises(ValueError, match="invalid signer"):
        Signer(name, key)
    with pytest.raises(ValueError, match="invalid key name"):
        format_vkey(name, key.public)


def test_signer_repr_hides_the_seed() -> None:
    seed = bytes(range(32))
    signer = Signer("n", PrivateKey.from_seed(seed))
    shown = repr(signer)
    assert shown == f"Signer(n+{signer.key_id:08x})"
    for encoding in (seed.hex(), base64.b64encode(seed).decode()):
        assert encoding not in shown


def test_verifier_verify_raises_evidence_error() -> None:
    signature = LOG.sign(b"m")
    LOG.verifier.verify(b"m", signature)
    with pytest.raises(
        EvidenceError, match=f"invalid signature for key log.example/a\\+{LOG.key_id:08x}"
    ):
        LOG.verifier.verify(b"n", signature)


# --- sign and open -----------------------------------------------------------------------


def test_sign_and_open_round_trip() -> None:
    note = sign_note(TEXT, [LOG, WITNESS])
    assert note.startswith(TEXT + "\n\u2014 log.example/a ")
    for given_note in (note, note.encode()):
        opened = open_note(given_note, [WITNESS.verifier, LOG.verifier])
        assert opened.text == TEXT
        assert [(s.name, s.key_id) for s in opened.verified] == [
            (LOG.name, LOG.key_id),
            (WITNESS.name, WITNESS.key_id),
        ]
        assert opened.unverified == ()
    only_log = open_note(note, [LOG.verifier])
    assert [s.name for s in only_log.verified] == [LOG.name]
    assert [s.name for s in only_log.unverified] == [WITNESS.name]


@given(
    st.text(
        alphabet=st.characters(
            codec="utf-8",
            exclude_characters=[chr(c) for c in range(32) if c != 10],
        ),
        max_size=200,
    )
)
def test_any_valid_text_round_trips(body: str) -> None:
    text = body + "\n"
    opened = open_note(sign_note(text, [LOG]), [LOG.verifier])
    assert opened.text == text


def test_existing_signatures_are_kept_first_and_replaced_by_the_same_key() -> None:
    first = sign_note(TEXT, [WITNESS])
    stale = first + _line(LOG.name, LOG.key_id, b"old signature")
    again = sign_note(TEXT, [LOG], existing=stale)
    assert again == first + _line(LOG.name, LOG.key_id, LOG.sign(TEXT.encode()))
    assert len(open_note(again, [LOG.verifier, WITNESS.verifier]).verified) == 2


@pytest.mark.parametrize(
    ("text", "signers", "message"),
    [
        ("no newline", [LOG], "does not end with a newline"),
        ("", [LOG], "does not end with a newline"),
        ("tab\there\n", [LOG], "control character"),
        ("cr\r\n", [LOG], "control character"),
        ("lone \ud800 surrogate\n", [LOG], "lone surrogate"),
        (TEXT, [], "at least one signer"),
        (TEXT, [LOG, LOG], "share a key name and key ID"),
    ],
)
def test_sign_note_refuses_bad_input(text: str, signers: list[Signer], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sign_note(text, signers)


def test_sign_note_refuses_an_existing_note_of_another_text() -> None:
    with pytest.raises(ValueError, match="different text"):
        sign_note(TEXT, [LOG], existing=sign_note("other\n", [WITNESS]))
    with pytest.raises(EvidenceError, match="malformed note"):
        sign_note(TEXT, [LOG], existing=TEXT)


def test_identical_signature_lines_are_listed_once() -> None:
    note = sign_note(TEXT, [LOG, WITNESS])
    lines = note[len(TEXT) + 1 :]
    opened = open_note(note + lines + lines, [LOG.verifier])
    assert [s.name for s in opened.verified] == [LOG.name]
    assert [s.name for s in opened.unverified] == [WITNESS.name]


def test_a_second_bad_signature_from_a_known_key_rejects_the_note() -> None:
    """Stricter than Go, which checks only the first signature of each key."""
    note = sign_note(TEXT, [LOG]) + _line(LOG.name, LOG.key_id, bytes(64))
    with pytest.raises(EvidenceError, match=r"invalid signature for key log\.example/a"):
        open_note(note, [LOG.verifier])


def test_a_known_key_with_a_wrong_length_signature_fails() -> None:
    note = TEXT + "\n" + _line(LOG.name, LOG.key_id, LOG.sign(TEXT.encode())[:63])
    with pytest.raises(EvidenceError, match="invalid signature"):
        open_note(note, [LOG.verifier])


def test_keys_sharing_only_a_name_or_only_an_id_are_unknown() -> None:
    signature = LOG.sign(TEXT.encode())
    note = (
        sign_note(TEXT, [WITNESS])
        + _line(LOG.name, LOG.key_id ^ 1, signature)
        + _line(LOG.name + "x", LOG.key_id, signature)
    )
    opened = open_note(note, [LOG.verifier, WITNESS.verifier])
    assert [(s.name, s.key_id) for s in opened.unverified] == [
        (LOG.name, LOG.key_id ^ 1),
        (LOG.name + "x", LOG.key_id),
    ]


def test_no_trusted_signature_is_an_error() -> None:
    note = sign_note(TEXT, [WITNESS])
    for verifiers in ([], [LOG.verifier]):
        with pytest.raises(EvidenceError, match="no verifiable signatures"):
            open_note(note, verifiers)


def test_ambiguous_verifiers_fail_only_when_used() -> None:
    note = sign_note(TEXT, [LOG])
    open_note(note, [LOG.verifier, WITNESS.verifier, WITNESS.verifier])
    with pytest.raises(EvidenceError, match="ambiguous key"):
        open_note(note, [LOG.verifier, LOG.verifier])


def test_signature_count_limit() -> None:
    signers = [Signer(f"k{i}", PrivateKey.from_seed(i.to_bytes(32, "big"))) for i in range(101)]
    lines = [s.line() for s in parse_unverified(sign_note(TEXT, signers[:100])).signatures]
    full = TEXT + "\n" + "".join(lines)
    assert len(open_note(full, [signers[0].verifier]).unverified) == MAX_SIGNATURES - 1
    extra = _line("k100", signers[100].key_id, signers[100].sign(TEXT.encode()))
    with pytest.raises(EvidenceError, match="more than 100 signatures"):
        open_note(full + extra, [signers[0].verifier])
    with pytest.raises(ValueError, match="at most 100"):
        sign_note(TEXT, [signers[100]], existing=full)


def test_delete_is_not_a_control_character() -> None:
    text = "del \x7f is allowed\n"
    assert open_note(sign_note(text, [LOG]), [LOG.verifier]).text == text


_PLAIN: Final = "plain text\n"
_GOOD: Final = sign_note(_PLAIN, [LOG])
_SIG64: Final = _GOOD.rsplit(" ", 1)[1].rstrip("\n")
_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The last data character of the signature, with one of its unused low bits set.
_SLOPPY: Final = _SIG64[:-2] + _ALPHABET[_ALPHABET.index(_SIG64[-2]) ^ 1] + "="


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (b"", "no blank line"),
        (_PLAIN.encode(), "no blank line"),
        ((_PLAIN + "\n").encode(), "does not end with a newline"),
        (_GOOD[:-1], "does not end with a newline"),
        (b"\xff" + _GOOD.encode(), "not valid UTF-8"),
        ("\ud800" + _GOOD, "lone surrogate"),
        ("\x00" + _GOOD, "control character"),
        (_GOOD.replace("plain text", "plain\ttext"), "control character"),
        (_GOOD.replace("\n\u2014", "\r\n\u2014"), "control character"),
        (_GOOD + "trailing text\n", "em dash"),
        (_GOOD.replace("\u2014 ", "- "), "em dash"),
        (_GOOD.replace("\u2014 ", "\u2014"), "em dash"),
        (_GOOD.replace("\u2014 ", "\u2014  "), "invalid key name"),
        (_GOOD.replace("log.example/a", "log+example"), "invalid key name"),
        (_GOOD.replace("log.example/a", "log\u00a0example"), "invalid key name"),
        (_GOOD.replace(" " + _SIG64, ""), "has no signature"),
        (_GOOD.replace(" " + _SIG64, " "), "has no signature"),
        (_GOOD.replace(_SIG64, _SIG64 + " "), "not standard base64"),
        (_GOOD.replace(_SIG64, _SIG64.rstrip("=")), "not standard base64"),
        (_GOOD.replace(_SIG64, _SLOPPY), "not canonical base64"),
        (
            _PLAIN + "\n\u2014 n " + base64.b64encode(b"abcd").decode() + "\n",
            "shorter than a key ID",
        ),
    ],
)
def test_malformed_notes(note: bytes | str, message: str) -> None:
    with pytest.raises(EvidenceError, match=f"malformed note: .*{message}"):
        open_note(note, [LOG.verifier])


def test_verifiers_must_be_verifiers() -> None:
    with pytest.raises(TypeError):
        open_note(_GOOD, [LOG])  # type: ignore[list-item]
