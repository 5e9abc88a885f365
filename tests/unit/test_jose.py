"""The strict compact-JWS codec: round trips, one failing case per strictness rule,
advisory regressions, interop with joserfc, and properties of the encodings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import string
import time
from types import MappingProxyType
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st
from joserfc import errors as joserfc_errors
from joserfc import jws as joserfc_jws
from joserfc import jwt as joserfc_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

from execgate import jose
from execgate.errors import JoseError
from execgate.jose import (
    PrivateKey,
    PublicKey,
    b64url_decode,
    b64url_encode,
    canonical_json,
    encode,
    jwk_thumbprint,
    loads_strict,
    parse_unverified,
    sha256_b64url,
    verify,
)

TYP = "execgate-artifact+jwt"
MAX = 8192
KEY = PrivateKey.from_seed(bytes(range(32)))
OTHER = PrivateKey.from_seed(bytes(range(1, 33)))
KEYS = {"trusted": KEY.public}
CLAIMS: dict[str, Any] = {
    "iss": "authority",
    "sub": "runtime",
    "iat": 1_700_000_000,
    "exp": 1_700_003_600,
}


def _b64(text: str) -> str:
    return b64url_encode(text.encode())


def forge(head: str | dict[str, Any], payload: str | dict[str, Any], key: PrivateKey = KEY) -> str:
    """Sign raw header/payload JSON text as given, bypassing encode()'s checks."""
    h = head if isinstance(head, str) else json.dumps(head)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{_b64(h)}.{_b64(p)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


def header(**extra: Any) -> dict[str, Any]:
    return {"alg": "Ed25519", "typ": TYP, "kid": "trusted", **extra}


def check(token: str, **options: Any) -> jose.Verified:
    options.setdefault("keys", KEYS)
    return verify(token, typ=TYP, max_size=MAX, **options)


def kind_of(token: str, **options: Any) -> str:
    with pytest.raises(JoseError) as info:
        check(token, **options)
    return info.value.kind


def test_exported_names() -> None:
    assert jose.__all__ == [
        "JTI",
        "Parsed",
        "PrivateKey",
        "PublicKey",
        "Verified",
        "b64url_decode",
        "b64url_encode",
        "canonical_json",
        "compact_json",
        "encode",
        "jwk_thumbprint",
        "loads_strict",
        "parse_unverified",
        "sha256_b64url",
        "verify",
    ]


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_round_trip_with_pinned_kid(alg: str) -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY, alg=alg)
    verified = check(token)
    assert verified.claims == CLAIMS
    assert verified.header == {"typ": TYP, "kid": "trusted", "alg": alg}
    assert verified.key == KEY.public
    assert verified.token == token


def test_round_trip_with_embedded_jwk() -> None:
    token = encode({"typ": TYP, "jwk": OTHER.public.to_jwk()}, CLAIMS, OTHER)
    verified = check(token, keys=None, embedded_jwk=True)
    assert verified.key == OTHER.public
    assert verified.key.thumbprint() == OTHER.public.thumbprint()


def test_round_trip_keeps_unicode() -> None:
    claims = {"reason": "paiement — été ✓", "exp": 1}
    assert check(encode({"typ": TYP, "kid": "trusted"}, claims, KEY)).claims == claims


def test_parse_unverified_exposes_the_pieces() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    parsed = parse_unverified(token, max_size=MAX)
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()
    assert len(parsed.signature) == 64
    assert parsed.claims == CLAIMS
    KEY.public.verify(parsed.signing_input, parsed.signature)  # raises if wrong


def test_a_cached_header_is_handed_out_as_a_copy() -> None:
    """Headers are decoded once per segment: what a caller does with its header must not
    reach the next token with the same one."""
    head = {"typ": TYP, "kid": "trusted", "x-ext": {"list": [1, {"a": "b"}]}}
    token = encode(head, CLAIMS, KEY)
    first = check(token)
    first.header["kid"] = "changed"
    del first.header["typ"]
    first.header["x-ext"]["list"][1]["a"] = "changed"
    first.header["x-ext"]["list"].append(2)
    assert check(token).header == {**head, "alg": "Ed25519"}


def test_only_short_headers_are_kept() -> None:
    """Anyone may send a token: a long header is decoded for its token and not kept."""
    short = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    long = encode({"typ": TYP, "kid": "trusted", "pad": [{}] * 200}, CLAIMS, KEY)
    assert len(short.split(".")[0]) <= jose._CACHED_HEADER < len(long.split(".")[0])
    jose._cached_header.cache_clear()
    check(long)
    assert jose._cached_header.cache_info().currsize == 0
    check(short)
    check(short)
    info = jose._cached_header.cache_info()
    assert (info.currsize, info.hits) == (1, 1)


def test_a_refused_header_is_refused_every_time() -> None:
    """Only headers that decode are kept: the same bad one fails on every token."""
    raw = f'{{"alg":"Ed25519","typ":"{TYP}","kid":"trusted","kid":"other"}}'
    for _ in range(3):
        assert kind_of(forge(raw, CLAIMS)) == "malformed"
    assert kind_of(forge("[1]", CLAIMS)) == kind_of(forge("[1]", CLAIMS)) == "malformed"


# --- base64url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "AA==",  # padding
        "AA=",
        "AB",  # non-zero unused bits (canonical is "AA")
        "AAB",  # non-zero unused bits (canonical is "AAA")
        "A",  # impossible length
        "AAAAA",
        "A+",  # standard alphabet, not url-safe
        "A/",
        "A A",
        "AA\n",
        "ÀA",
    ],
)
def test_b64url_decode_rejects(text: str) -> None:
    with pytest.raises(JoseError) as info:
        b64url_decode(text)
    assert info.value.kind == "malformed"


def test_b64url_known_values() -> None:
    assert b64url_decode("") == b""
    assert b64url_decode("AA") == b"\x00"
    assert b64url_decode("_-8") == b"\xff\xef"
    assert b64url_encode(b"\xfb\xff") == "-_8"


@pytest.mark.parametrize("part", [0, 1, 2])
def test_token_part_with_padding_or_stray_bits_is_malformed(part: int) -> None:
    pieces = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY).split(".")
    for bad in (pieces[part] + "=", pieces[part] + "A"):  # padding; length 1 (mod 4) or bits
        mutated = list(pieces)
        mutated[part] = bad
        assert kind_of(".".join(mutated)) == "malformed"


def test_stray_bits_in_the_signature_are_malformed() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    # 64 bytes encode to 86 chars; the last carries 4 unused bits, which must be zero.
    last = token[-1]
    flipped = jose._B64URL_ALPHABET[jose._B64URL_ALPHABET.index(last) ^ 1]
    assert kind_of(token[:-1] + flipped) == "malformed"


# --- strict JSON -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}',
        '{"a":{"b":1,"b":1}}',
        '[{"x":1,"y":2,"x":3}]',
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":-Infinity}',
        '{"a":1e400}',
        '{"a":"\\ud800"}',
        '{"\\udc00":1}',
        '{"a":1} x',
        "",
        "{'a':1}",
    ],
)
def test_loads_strict_rejects(text: str) -> None:
    with pytest.raises(JoseError) as info:
        loads_strict(text)
    assert info.value.kind == "malformed"


def test_loads_strict_rejects_invalid_utf8_and_raw_surrogates() -> None:
    for data in (b'"\xff"', b'"\xed\xa0\x80"', '"\ud800"'):
        with pytest.raises(JoseError):
            loads_strict(data)


def test_loads_strict_accepts_a_surrogate_pair_escape() -> None:
    assert loads_strict(b'{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}


@pytest.mark.parametrize(("opening", "closing"), [("[", "]"), ('{"a":', "}")])
def test_loads_strict_depth_limit(opening: str, closing: str) -> None:
    assert loads_strict(opening * 32 + "1" + closing * 32) is not None
    with pytest.raises(JoseError, match="nesting"):
        loads_strict(opening * 33 + "1" + closing * 33)
    with pytest.raises(JoseError, match="nesting"):
        loads_strict(opening * 3 + "1" + closing * 3, max_depth=2)


def test_loads_strict_depth_limit_with_siblings() -> None:
    # Many shallow containers are fine; only depth counts.
    assert loads_strict("[" + ",".join(["[]"] * 100) + "]") == [[]] * 100


def test_duplicate_member_in_header_is_malformed() -> None:
    raw = f'{{"alg":"Ed25519","typ":"{TYP}","kid":"trusted","kid":"other"}}'
    assert kind_of(forge(raw, CLAIMS)) == "malformed"


def test_duplicate_member_in_payload_is_malformed() -> None:
    assert kind_of(forge(header(), '{"exp":1,"exp":99999999999}')) == "malformed"


def test_nan_in_payload_is_malformed() -> None:
    assert kind_of(forge(header(), '{"exp":1,"amount":NaN}')) == "malformed"


def test_depth_33_payload_is_malformed() -> None:
    assert kind_of(forge(header(), '{"a":' * 33 + "1" + "}" * 33)) == "malformed"


@pytest.mark.parametrize("payload", ['["not", "an", "object"]', '"text"', "1", "null"])
def test_payload_must_be_an_object(payload: str) -> None:
    assert kind_of(forge(header(), payload)) == "malformed"


# --- structure and size ------------------------------------------------------------------


def test_wrong_number_of_parts_is_malformed() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    h, p, s = token.split(".")
    for bad in (f"{h}.{p}", f"{h}.{p}.{s}.{s}", f"{h}.{p}.{s}.", token + ".."):
        assert kind_of(bad) == "malformed"


def test_empty_signature_is_malformed() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    assert kind_of(token.rsplit(".", 1)[0] + ".") == "malformed"


def test_63_byte_signature_is_malformed() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    signing_input, sig = token.rsplit(".", 1)
    assert kind_of(f"{signing_input}.{b64url_encode(b64url_decode(sig)[:63])}") == "malformed"


def test_public_key_verify_checks_signature_length_first() -> None:
    message = b"message"
    signature = KEY.sign(message)
    for bad in (signature[:63], signature + b"\x00", b""):
        with pytest.raises(JoseError) as info:
            KEY.public.verify(message, bad)
        assert info.value.kind == "signature_invalid"


def test_non_ascii_and_non_string_tokens_are_malformed() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    with pytest.raises(JoseError, match="ASCII"):
        check(token[:-1] + "é")
    with pytest.raises(JoseError, match="not a string"):
        parse_unverified(token.encode(), max_size=MAX)  # type: ignore[arg-type]


def test_oversize_token_is_rejected_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(text: str) -> bytes:
        raise AssertionError("decoded an oversize token")

    monkeypatch.setattr(jose, "b64url_decode", must_not_decode)
    monkeypatch.setattr(jose, "loads_strict", must_not_decode)
    huge = "eyJ" + "A" * 10_000_000 + ".e30.AA"
    started = time.perf_counter()
    with pytest.raises(JoseError, match="longer than") as info:
        check(huge)
    assert info.value.kind == "malformed"
    assert time.perf_counter() - started < 0.5


def test_token_at_exactly_max_size_is_accepted() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    assert verify(token, typ=TYP, max_size=len(token), keys=KEYS).claims == CLAIMS
    with pytest.raises(JoseError, match="longer than"):
        verify(token, typ=TYP, max_size=len(token) - 1, keys=KEYS)


# --- header rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"alg": "none"},
        {"alg": "HS256"},
        {"alg": "ES256"},
        {"alg": "ed25519"},
        {"alg": ["Ed25519"]},
        {"alg": None},
        {"crit": ["exp"]},
        {"crit": []},
        {"b64": False},
        {"b64": True},
        # what an encrypted or compressed token (JWE) carries (joserfc: see below)
        {"enc": "A128GCM"},
        {"zip": "DEF"},
        {"epk": {}},
        {"iv": "AA"},
        {"tag": "AA"},
        {"p2s": "AA"},
        {"p2c": 1000},
        {"apu": "AA"},
        {"apv": "AA"},
        {"kid": ""},
        {"kid": 7},
        {"typ": None},
        {"typ": ["execgate-artifact+jwt"]},
    ],
)
def test_header_rule_violations_are_malformed(bad: dict[str, Any]) -> None:
    assert kind_of(forge(header(**bad), CLAIMS)) == "malformed"


def test_missing_alg_is_malformed() -> None:
    assert kind_of(forge({"typ": TYP, "kid": "trusted"}, CLAIMS)) == "malformed"


def test_missing_typ_is_malformed() -> None:
    assert kind_of(forge({"alg": "Ed25519", "kid": "trusted"}, CLAIMS)) == "malformed"


@pytest.mark.parametrize("typ", ["execgate-proof+jwt", "JWT", "EXECGATE-ARTIFACT+JWT", ""])
def test_wrong_typ_is_malformed(typ: str) -> None:
    assert kind_of(forge(header(typ=typ), CLAIMS)) == "malformed"


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": 1.0},
        {"iat": 1_700_000_000.5},
        {"nbf": "1700000000"},
        {"exp": True},
        {"exp": False},
        {"exp": -1},
        {"exp": 2**53},
        {"exp": None},
    ],
)
def test_numeric_dates_must_be_sane_integers(claims: dict[str, Any]) -> None:
    assert kind_of(forge(header(), claims)) == "malformed"


def test_numeric_date_bounds_are_accepted() -> None:
    assert check(forge(header(), {"iat": 0, "exp": 2**53 - 1})).claims["exp"] == 2**53 - 1


# --- key selection -----------------------------------------------------------------------


def test_missing_kid_is_malformed_in_kid_mode() -> None:
    assert kind_of(forge({"alg": "Ed25519", "typ": TYP}, CLAIMS)) == "malformed"


def test_unknown_kid_is_unknown_key() -> None:
    assert kind_of(forge(header(kid="nobody"), CLAIMS)) == "unknown_key"


def test_kid_is_looked_up_only_in_the_pinned_set() -> None:
    # The kid names a key that exists but is not pinned: not found, not fetched.
    token = forge(header(kid="attacker"), CLAIMS, OTHER)
    assert kind_of(token, keys={"trusted": KEY.public}) == "unknown_key"


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_header_key_material_is_ignored_in_kid_mode(member: str) -> None:
    supplied: Any = {
        "jwk": OTHER.public.to_jwk(),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
    }[member]
    # Attacker signs with its own key and ships it in the header: pinned kid -> bad signature.
    assert kind_of(forge(header(**{member: supplied}), CLAIMS, OTHER)) == "signature_invalid"
    # The same with a kid that is not pinned: unknown, never the header's key.
    assert kind_of(forge(header(kid="x", **{member: supplied}), CLAIMS, OTHER)) == "unknown_key"
    # A genuine token carrying the same junk still verifies with the pinned key only.
    assert check(forge(header(**{member: supplied}), CLAIMS, KEY)).key == KEY.public


def test_embedded_jwk_with_private_member_is_malformed() -> None:
    token = forge(header(jwk=OTHER.to_jwk(private=True)), CLAIMS, OTHER)
    with pytest.raises(JoseError, match="private") as info:
        check(token, keys=None, embedded_jwk=True)
    assert info.value.kind == "malformed"


@pytest.mark.parametrize(
    "jwk",
    [
        None,
        "eyJ...",
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "X25519", "x": b64url_encode(bytes(32))},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(bytes(31))},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "oct", "k": b64url_encode(bytes(32))},
    ],
)
def test_embedded_jwk_must_be_a_public_ed25519_key(jwk: Any) -> None:
    token = forge(header(jwk=jwk), CLAIMS, OTHER)
    assert kind_of(token, keys=None, embedded_jwk=True) == "malformed"


def test_embedded_jwk_missing_is_malformed() -> None:
    assert kind_of(forge(header(), CLAIMS), keys=None, embedded_jwk=True) == "malformed"


def test_embedded_jwk_of_another_key_is_signature_invalid() -> None:
    token = forge(header(jwk=KEY.public.to_jwk()), CLAIMS, OTHER)
    assert kind_of(token, keys=None, embedded_jwk=True) == "signature_invalid"


@pytest.mark.parametrize(
    "options",
    [{"keys": None, "embedded_jwk": False}, {"keys": KEYS, "embedded_jwk": True}],
)
def test_exactly_one_key_mode_is_required(options: dict[str, Any]) -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    with pytest.raises(ValueError, match="exactly one"):
        verify(token, typ=TYP, max_size=MAX, **options)


@pytest.mark.parametrize("typ", ["", None])
def test_expected_typ_is_required(typ: Any) -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    with pytest.raises(ValueError, match="typ"):
        verify(token, typ=typ, max_size=MAX, keys=KEYS)


# --- signatures --------------------------------------------------------------------------


def test_tampered_payload_is_signature_invalid() -> None:
    h, _, s = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY).split(".")
    tampered = f"{h}.{_b64(json.dumps({**CLAIMS, 'sub': 'evil'}))}.{s}"
    assert kind_of(tampered) == "signature_invalid"


def test_signature_by_another_key_is_signature_invalid() -> None:
    assert kind_of(forge(header(), CLAIMS, OTHER)) == "signature_invalid"


def test_cve_2022_29217_key_confusion() -> None:
    # PyJWT GHSA-ffqj-6fqr-9h24: a verifier that lets the header pick the algorithm can be
    # made to use the public key bytes as an HMAC secret. Forge exactly that token.
    signing_input = f"{_b64(json.dumps(header(alg='HS256')))}.{_b64(json.dumps(CLAIMS))}"
    public_jwk = json.dumps(KEY.public.to_jwk())
    for secret in (KEY.public.raw, b64url_encode(KEY.public.raw).encode(), public_jwk.encode()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64url_encode(mac)}"
        assert kind_of(token) == "malformed"
        assert kind_of(token, keys=None, embedded_jwk=True) == "malformed"


def test_alg_none_with_empty_signature_is_malformed() -> None:
    token = f"{_b64(json.dumps(header(alg='none')))}.{_b64(json.dumps(CLAIMS))}."
    assert kind_of(token) == "malformed"


# --- keys --------------------------------------------------------------------------------


def test_public_key_jwk_import_rules() -> None:
    x = b64url_encode(KEY.public.raw)
    ok = {"kty": "OKP", "crv": "Ed25519", "x": x}
    for extra in ({}, {"kid": "k"}, {"alg": "Ed25519"}, {"alg": "EdDSA"}, {"use": "sig"}):
        assert PublicKey.from_jwk({**ok, **extra}) == KEY.public
    for bad in (
        {**ok, "d": b64url_encode(bytes(32))},
        {**ok, "alg": "HS256"},
        {**ok, "alg": ["EdDSA"]},
        {**ok, "use": "enc"},
        {**ok, "kty": "EC"},
        {**ok, "crv": "Ed448"},
        {**ok, "x": x + "="},
        {**ok, "x": x[:-1]},
        {**ok, "x": 5},
        {"kty": "OKP", "crv": "Ed25519"},
    ):
        with pytest.raises(JoseError) as info:
            PublicKey.from_jwk(bad)
        assert info.value.kind == "malformed"
    with pytest.raises(JoseError):
        PublicKey.from_jwk(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_public_key_requires_32_bytes() -> None:
    for raw in (bytes(31), bytes(33), "x" * 32):
        with pytest.raises(ValueError, match="32 bytes"):
            PublicKey(raw)  # type: ignore[arg-type]


def test_private_key_jwk_round_trip_and_rules() -> None:
    jwk = KEY.to_jwk(private=True)
    assert PrivateKey.from_jwk(jwk).public == KEY.public
    assert "d" not in KEY.to_jwk(private=False)
    assert KEY.to_jwk(private=False) == KEY.public.to_jwk()
    for bad in (
        {k: v for k, v in jwk.items() if k != "d"},
        {k: v for k, v in jwk.items() if k != "x"},
        {**jwk, "x": OTHER.public.to_jwk()["x"]},  # x does not match d
        {**jwk, "d": b64url_encode(bytes(31))},
        {**jwk, "crv": "X25519"},
    ):
        with pytest.raises(JoseError) as info:
            PrivateKey.from_jwk(bad)
        assert info.value.kind == "malformed"


def test_private_key_repr_never_shows_the_seed() -> None:
    seed = bytes(range(32))
    rendered = repr(KEY) + str(KEY)
    for form in (seed.hex(), b64url_encode(seed), repr(seed), base64.b64encode(seed).decode()):
        assert form not in rendered
    assert KEY.public.thumbprint() in rendered


def test_generated_keys_differ_and_sign() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert a.public != b.public
    a.public.verify(b"m", a.sign(b"m"))  # raises if wrong
    with pytest.raises(ValueError, match="32 bytes"):
        PrivateKey.from_seed(bytes(16))


def test_jwk_thumbprint_rules() -> None:
    assert jwk_thumbprint(KEY.public.to_jwk()) == KEY.public.thumbprint()
    ec = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AQ"}
    expected = sha256_b64url(b'{"crv":"P-256","kty":"EC","x":"AA","y":"AQ"}')
    assert jwk_thumbprint({**ec, "kid": "ignored", "d": "ignored"}) == expected
    assert jwk_thumbprint({"kty": "oct", "k": "AA"}) == sha256_b64url(b'{"k":"AA","kty":"oct"}')
    incomplete: list[dict[str, Any]] = [
        {"kty": "EC", "crv": "P-256", "x": "AA"},
        {"kty": "RSA", "n": "AA"},
        {"kty": "oct"},
        {"kty": "oct", "k": 5},
        {"kty": "XYZ"},
        {"kty": ["OKP"]},
        {"x": "AA"},
    ]
    for bad in incomplete:
        with pytest.raises(JoseError) as info:
            jwk_thumbprint(bad)
        assert info.value.kind == "malformed"


# --- helpers -----------------------------------------------------------------------------


def test_sha256_b64url_known_value() -> None:
    assert sha256_b64url(b"") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def test_canonical_json_is_jcs() -> None:
    assert canonical_json({"b": 1, "a": [1.0, "é", None]}) == '{"a":[1,"é",null],"b":1}'.encode()


@pytest.mark.parametrize(
    "value", [{"a": float("nan")}, {1: "int key"}, {"a": 2**60}, {"a": object()}]
)
def test_canonical_json_errors_are_plain_value_errors(value: Any) -> None:
    with pytest.raises(ValueError, match="canonical") as info:
        canonical_json(value)
    assert not isinstance(info.value, rfc8785.CanonicalizationError)


@pytest.mark.parametrize(
    ("head", "claims", "alg"),
    [
        ({"kid": "trusted"}, CLAIMS, "Ed25519"),  # no typ
        ({"typ": TYP, "crit": ["x"]}, CLAIMS, "Ed25519"),
        ({"typ": TYP}, CLAIMS, "HS256"),
        ({"typ": TYP}, {"exp": 1.5}, "Ed25519"),
        ({"typ": TYP}, {"a": float("nan")}, "Ed25519"),
    ],
)
def test_encode_refuses_what_verify_would_refuse(
    head: dict[str, Any], claims: dict[str, Any], alg: str
) -> None:
    with pytest.raises(ValueError, match=r"typ|crit|alg|NumericDate|JSON compliant"):
        encode(head, claims, KEY, alg=alg)


def test_encode_never_publishes_a_private_key_in_the_jwk_header() -> None:
    private = KEY.to_jwk(private=True)
    with pytest.raises(ValueError, match="private key material") as info:
        encode({"typ": TYP, "jwk": private}, CLAIMS, KEY)
    assert private["d"] not in str(info.value)
    with pytest.raises(ValueError, match="base64url"):
        encode({"typ": TYP, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "short"}}, CLAIMS, KEY)
    token = encode({"typ": TYP, "jwk": KEY.public.to_jwk()}, CLAIMS, KEY)
    assert parse_unverified(token, max_size=4096).header["jwk"] == KEY.public.to_jwk()


@pytest.mark.parametrize(
    "claims",
    [
        {True: 1, "true": 2},  # one member twice once written
        {1: "a", "1": "b"},
        {"a": {None: 1, "null": 2}},
    ],
)
def test_encode_refuses_claims_that_would_be_written_with_a_duplicate_member(
    claims: dict[Any, Any],
) -> None:
    with pytest.raises(ValueError, match="duplicate JSON object member"):
        encode({"typ": TYP, "kid": "trusted"}, claims, KEY)


@pytest.mark.parametrize("claims", [["iat"], "claims", None, 7])
def test_encode_refuses_claims_that_are_not_an_object(claims: Any) -> None:
    with pytest.raises(ValueError, match="JSON object"):
        encode({"typ": TYP, "kid": "trusted"}, claims, KEY)


def test_encode_takes_any_mapping_of_claims() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, MappingProxyType(CLAIMS), KEY)
    assert check(token).claims == CLAIMS


def test_encode_sets_alg_over_the_callers_header() -> None:
    token = encode({"typ": TYP, "kid": "trusted", "alg": "none"}, CLAIMS, KEY)
    assert check(token).header["alg"] == "Ed25519"


# --- interop with joserfc ----------------------------------------------------------------


def _joserfc_key(jwk: dict[str, str]) -> OKPKey:
    params: dict[str, str | list[str]] = {**jwk}
    return OKPKey.import_key(params)


@pytest.mark.parametrize("name", ["enc", "zip", "epk", "iv", "tag", "p2s", "p2c", "apu", "apv"])
def test_jwe_header_parameters_are_refused_here_and_by_joserfc(name: str) -> None:
    token = forge(header(**{name: "AA"}), CLAIMS)
    assert kind_of(token) == "malformed"
    with pytest.raises(joserfc_errors.UnsupportedHeaderError):
        joserfc_jws.deserialize_compact(
            token, _joserfc_key(KEY.public.to_jwk()), algorithms=["Ed25519"]
        )


def test_our_token_verifies_in_joserfc() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY)
    key = _joserfc_key(KEY.public.to_jwk())
    decoded = joserfc_jwt.decode(token, key, algorithms=["Ed25519"])
    assert decoded.claims == CLAIMS
    assert decoded.header == {"typ": TYP, "kid": "trusted", "alg": "Ed25519"}


def test_our_eddsa_token_verifies_in_joserfc() -> None:
    token = encode({"typ": TYP, "kid": "trusted"}, CLAIMS, KEY, alg="EdDSA")
    key = _joserfc_key(KEY.public.to_jwk())
    with pytest.warns(SecurityWarning, match="RFC 9864"):
        signature = joserfc_jws.deserialize_compact(token, key, algorithms=["EdDSA"])
    assert json.loads(signature.payload) == CLAIMS


def test_joserfc_tokens_verify_here() -> None:
    key = _joserfc_key(KEY.to_jwk(private=True))
    head = {"typ": TYP, "kid": "trusted"}
    token = joserfc_jwt.encode({**head, "alg": "Ed25519"}, CLAIMS, key, algorithms=["Ed25519"])
    assert check(token).claims == CLAIMS
    with pytest.warns(SecurityWarning, match="RFC 9864"):
        legacy = joserfc_jwt.encode({**head, "alg": "EdDSA"}, CLAIMS, key, algorithms=["EdDSA"])
    assert check(legacy).header["alg"] == "EdDSA"


def test_joserfc_thumbprint_agrees() -> None:
    assert _joserfc_key(KEY.public.to_jwk()).thumbprint() == KEY.public.thumbprint()


# --- properties --------------------------------------------------------------------------

_ALPHABET = string.ascii_letters + string.digits + "-_"


@given(st.binary(max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_b64url_accepts_only_canonical_encodings(text: str) -> None:
    try:
        data = b64url_decode(text)
    except JoseError:
        # Rejected only for an impossible length or a non-canonical encoding (one that a
        # lenient decoder reads but that does not re-encode to itself).
        if len(text) % 4 != 1:
            lenient = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            assert b64url_encode(lenient) != text
    else:
        assert b64url_encode(data) == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_encode_then_verify_round_trips(claims: dict[str, Any]) -> None:
    for name in ("iat", "nbf", "exp"):
        claims.pop(name, None)
    token = encode({"typ": TYP, "kid": "trusted"}, claims, KEY)
    assert check(token).claims == claims


@given(json_values)
def test_loads_strict_reads_what_json_writes(value: Any) -> None:
    assert loads_strict(json.dumps(value).encode()) == value
    assert loads_strict(json.dumps(value, ensure_ascii=False)) == value
