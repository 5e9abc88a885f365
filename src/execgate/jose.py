"""The strict compact-JWS codec: Ed25519 only, on PyNaCl.

Every signed object execgate reads (artifacts, proofs, attestations, receipts) passes
through :func:`verify`. It is written here by hand rather than taken from joserfc or PyJWT
so that every strictness rule of DESIGN §4 is enforced in one small place that can be
audited line by line:

* the token size is capped before anything is decoded;
* base64url is strict: alphabet ``[A-Za-z0-9_-]`` only, no ``=`` padding, and no non-zero
  unused trailing bits, so each byte string has exactly one accepted encoding;
* JSON is strict: duplicate object members, ``NaN``/``Infinity`` (and overflowing
  numbers), lone surrogates, invalid UTF-8 and nesting deeper than 32 levels are rejected;
* ``alg`` is pinned to ``Ed25519`` (RFC 9864; ``EdDSA`` accepted), ``typ`` is explicit and
  compared exactly, any ``crit`` or ``b64`` member is refused (no extension is understood);
* NumericDates (``iat``, ``nbf``, ``exp``) are integers only;
* a ``kid`` is looked up only in the caller's pinned key set, and header-supplied keys or
  URLs (``jwk``, ``jku``, ``x5u``, ``x5c``) are never used for that lookup; a header ``jwk``
  is read only when the caller asks for it, and must be a public Ed25519 key.

It is also fast: on a typical 470-byte token, decode-and-verify here measured about twice
as fast as joserfc's ``jwt.decode``, with the Ed25519 check taking most of the time. The
codec is cross-tested both ways against joserfc and against the official vectors (RFC 8037,
RFC 7638, Wycheproof).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import nacl.exceptions
import nacl.signing
import orjson
import rfc8785

from execgate.errors import JoseError

__all__ = [
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

_ALGORITHMS: Final = frozenset({"Ed25519", "EdDSA"})
# A proof's or admin token's id: 16 to 128 base64url characters (16 random ones carry 96
# bits). The character set keeps what a replay table is keyed by printable and plain.
JTI: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_B64URL_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Unused low bits of the last character when the length is 2 or 3 (mod 4).
_UNUSED_BITS: Final = {2: 0b1111, 3: 0b11}
_NUMERIC_DATES: Final = ("iat", "nbf", "exp")
_MAX_NUMERIC_DATE: Final = 2**53
# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS: Final = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}


def _malformed(detail: str) -> JoseError:
    return JoseError("malformed", detail)


# --- encodings ---------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode canonical base64url; anything else raises ``JoseError("malformed")``."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise _malformed("not base64url (alphabet [A-Za-z0-9_-], no padding)")
    rem = len(text) % 4
    if rem == 1:
        raise _malformed("base64url length is impossible")
    if rem and _B64URL_ALPHABET.index(text[-1]) & _UNUSED_BITS[rem]:
        raise _malformed("base64url has non-zero unused bits")
    return base64.urlsafe_b64decode(text + "==="[: (4 - rem) % 4])


def sha256_b64url(data: bytes) -> str:
    """Base64url of the SHA-256 of ``data``."""
    return b64url_encode(hashlib.sha256(data).digest())


MAX_SAFE_INT: Final = 2**53 - 1  # RFC 8785 / I-JSON: integers beyond this have no form
_dumps_sorted = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
).encode


def _plain(value: Any) -> bool:
    """True when the stdlib encoder already writes ``value`` exactly as JCS does.

    That holds for dicts, lists, strings, bools, None and safe integers, provided no key
    holds a code point at or above U+D800 (JCS sorts keys by UTF-16 code units, Python by
    code points; the orders differ only there). Floats need ES6 number formatting and
    go to ``rfc8785``, as does anything unusual (subclasses, huge or cyclic structures).
    """
    stack = [value]
    budget = 300_000  # above any request (MAX_REQUEST_VALUES): the rest is rfc8785
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for key in item:
                if type(key) is not str or not (key.isascii() or max(key) < "\ud800"):
                    return False
            children: Any = item.values()
        elif kind is list:
            children = item
        elif kind is str or kind is bool or item is None:
            continue
        elif kind is int:
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                return False
            continue
        else:
            return False
        budget -= len(children)
        if budget < 0:
            return False
        # The scalars are settled here, without a trip through the stack; containers
        # and anything else (a float, a big integer) are looked at when popped.
        for child in children:
            kind = type(child)
            if kind is str or child is None or kind is bool:
                continue
            if kind is int and -MAX_SAFE_INT <= child <= MAX_SAFE_INT:
                continue
            stack.append(child)
    return True


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of ``obj``; ``ValueError`` if it has no canonical form.

    The common case (no floats, no exotic keys) is written by orjson with sorted keys,
    which produces the identical bytes about ten times faster than the stdlib encoder
    (and that in turn about ten times faster than ``rfc8785``); what orjson refuses
    (a lone surrogate, nesting past its depth limit) goes to the stdlib encoder, and
    everything else to the ``rfc8785`` package. The paths are cross-checked by property
    tests.
    """
    try:
        if _plain(obj):
            try:
                return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
            except orjson.JSONEncodeError:
                return _dumps_sorted(obj).encode("utf-8")
        return rfc8785.dumps(obj)
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
        raise ValueError(f"no canonical JSON form: {exc.reason}") from exc
    except RecursionError as exc:
        raise ValueError("no canonical JSON form: nested too deeply") from exc
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"no canonical JSON form: {exc}") from exc


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _malformed("duplicate JSON object member")
    return obj


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to infinity
        raise _malformed(f"JSON number {text[:20]!r} is out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise _malformed(f"JSON constant {name} is not allowed")


def _check_tree(value: Any, max_depth: int, max_values: int | None = None) -> None:
    """Reject nesting deeper than ``max_depth``, more than ``max_values`` values, and
    strings that are not valid Unicode."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    left = max_values
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = ((None, v) for v in node)
        else:
            continue
        if depth > max_depth:
            raise _malformed(f"JSON nesting deeper than {max_depth}")
        if left is not None:
            left -= len(node)
            if left < 0:
                raise _malformed(f"JSON holding more than {max_values} values")
        for key, child in items:
            for text in (key, child):
                if isinstance(text, str) and not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError as exc:
                        raise _malformed("JSON string holds a lone surrogate") from exc
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


_strict_decode: Final = json.JSONDecoder(  # built once: json.loads builds one per call
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
).decode


def loads_strict(data: bytes | str, *, max_depth: int = 32, max_values: int | None = None) -> Any:
    """Parse UTF-8 JSON under the strict rules; violations raise ``JoseError("malformed")``.
    ``max_values`` bounds the values of a document (what walking it costs afterwards)."""
    try:
        if isinstance(data, bytes):
            text = data.decode("utf-8")  # strict: no invalid UTF-8, no encoded surrogates
        else:
            text = data
            if not text.isascii():
                text.encode("utf-8")  # a raw lone surrogate in a str
        value = _strict_decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeError, JSONDecodeError, ...
        raise _malformed(f"invalid JSON: {exc}") from exc
    # Only walk the tree when it could fail: a "\\u" escape may spell a lone surrogate, and
    # the nesting depth is at most the number of opening brackets, and the values below
    # the root at most its commas plus its opening brackets.
    containers = text.count("{") + text.count("[")
    many = max_values is not None and text.count(",") + containers > max_values
    if "\\u" in text or containers > max_depth or many:
        _check_tree(value, max_depth, max_values)
    return value


# --- keys --------------------------------------------------------------------------------


def _thumbprint_input(jwk: Mapping[str, Any]) -> bytes:
    """The RFC 7638 hash input: JCS of the key type's required members."""
    kty = jwk.get("kty") if isinstance(jwk, Mapping) else None
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise _malformed("JWK kty missing or not one of EC, OKP, RSA, oct")
    if not all(isinstance(jwk.get(name), str) for name in members):
        raise _malformed(f"JWK lacks a required member of {', '.join(members)}")
    return canonical_json({name: jwk[name] for name in members})


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC, OKP, RSA or oct key."""
    return sha256_b64url(_thumbprint_input(jwk))


@lru_cache(maxsize=4096)
def _okp_thumbprint(raw: bytes) -> str:
    return jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)})


def _ed25519_member(jwk: Mapping[str, Any], name: str) -> bytes:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise _malformed("JWK is not an OKP Ed25519 key")
    if "alg" in jwk and not (isinstance(jwk["alg"], str) and jwk["alg"] in _ALGORITHMS):
        raise _malformed("JWK alg is not Ed25519")
    if "use" in jwk and jwk["use"] != "sig":
        raise _malformed("JWK use is not sig")
    value = jwk.get(name)
    raw = b64url_decode(value) if isinstance(value, str) else b""
    if len(raw) != 32:
        raise _malformed(f"JWK {name} is not 32 base64url-encoded bytes")
    return raw


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes)."""

    raw: bytes
    _verify_key: nacl.signing.VerifyKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        object.__setattr__(self, "_verify_key", nacl.signing.VerifyKey(self.raw))

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> PublicKey:
        """Import a public OKP/Ed25519 JWK; a private member (``d``) is malformed."""
        if not isinstance(jwk, Mapping):
            raise _malformed("JWK is not a JSON object")
        if "d" in jwk:
            raise _malformed("JWK carries private key material")
        return _public_key(_ed25519_member(jwk, "x"))

    def to_jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(self.raw)}

    def thumbprint(self) -> str:
        """RFC 7638 thumbprint, as bound in ``cnf.jkt`` (computed once per key)."""
        return _okp_thumbprint(self.raw)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is valid over ``message``, else raise ``JoseError``."""
        if len(signature) != 64:
            raise JoseError("signature_invalid", "an Ed25519 signature is 64 bytes")
        try:
            self._verify_key.verify(message, signature)
        except nacl.exceptions.BadSignatureError as exc:
            raise JoseError("signature_invalid", "Ed25519 signature does not verify") from exc


@lru_cache(maxsize=1024)
def _public_key(raw: bytes) -> PublicKey:
    """The key of ``raw`` (immutable, so shared): a proof's embedded key is the same
    runtime key call after call, and building its ``VerifyKey`` costs a few microseconds."""
    return PublicKey(raw)


class PrivateKey:
    """An Ed25519 signing key. Its ``repr`` never shows the seed."""

    __slots__ = ("_signing_key", "public")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public = PublicKey(bytes(self._signing_key.verify_key))

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        return cls(seed)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> PrivateKey:
        """Import a private OKP/Ed25519 JWK; ``x`` must match the key derived from ``d``."""
        if not isinstance(jwk, Mapping):
            raise _malformed("JWK is not a JSON object")
        key = cls(_ed25519_member(jwk, "d"))
        if _ed25519_member(jwk, "x") != key.public.raw:
            raise _malformed("JWK x does not match its private key d")
        return key

    def to_jwk(self, *, private: bool) -> dict[str, str]:
        jwk = self.public.to_jwk()
        if private:
            jwk["d"] = b64url_encode(bytes(self._signing_key))
        return jwk

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public.thumbprint()})"


# --- compact JWS -------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """A structurally valid compact JWS whose signature has NOT been checked."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    token: str


@dataclass(frozen=True)
class Verified:
    """A compact JWS whose signature ``key`` verified."""

    header: dict[str, Any]
    claims: dict[str, Any]
    token: str
    key: PublicKey


def compact_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, members in the given order; ``ValueError`` for NaN or infinity.

    Plain values (see ``_plain``) are written by orjson, which gives the bytes the stdlib
    encoder would, several times faster; anything else (a float: orjson would write NaN
    as null) goes to the stdlib encoder."""
    if _plain(obj):
        with suppress(orjson.JSONEncodeError):
            return orjson.dumps(obj)
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _segment(obj: Mapping[str, Any]) -> str:
    """The base64url segment of a JWS header or claims set, as :func:`compact_json`
    writes it; JSON that :func:`loads_strict` would refuse (a duplicate member from
    keys that are not strings) raises ``JoseError``. A plain dict cannot hold one."""
    if _plain(obj):
        with suppress(orjson.JSONEncodeError):
            return b64url_encode(orjson.dumps(obj))
    data = compact_json(obj)
    loads_strict(data)
    return b64url_encode(data)


_CACHED_HEADER: Final = 512  # characters: an Ed25519 header with its jwk is about 200


def _decode_header(segment: str) -> dict[str, Any]:
    header = loads_strict(b64url_decode(segment))
    if not isinstance(header, dict):
        raise _malformed("JWS header is not a JSON object")
    return header


_cached_header: Final = lru_cache(maxsize=256)(_decode_header)


def _header(segment: str) -> dict[str, Any]:
    """The decoded header segment. Short ones are cached: a signer's headers are the
    same token after token (a runtime's proofs differ in their payload only). Anyone can
    send a token, so only what decodes and is at most ``_CACHED_HEADER`` characters is
    kept (decoded JSON takes about twenty times its text: 256 short headers stay within
    a few megabytes, where 256 of 16 KiB would hold tens)."""
    if len(segment) > _CACHED_HEADER:
        return _decode_header(segment)
    return _cached_header(segment)


def _copy(value: Any) -> Any:
    """A copy of decoded JSON down to its last container (depth is bounded by
    ``loads_strict``): nothing a caller changes in a header reaches the cached one."""
    kind = type(value)
    if kind is dict:
        return {key: _copy(child) for key, child in value.items()}
    if kind is list:
        return [_copy(child) for child in value]
    return value


def _split_compact(token: str, max_size: int) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """Structure only, any ``alg``: (header, payload, signing input, signature)."""
    if not isinstance(token, str):
        raise _malformed("token is not a string")
    if len(token) > max_size:
        raise _malformed(f"token is longer than {max_size} characters")
    if not token.isascii():
        raise _malformed("token is not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise _malformed("compact JWS has three dot-separated parts")
    header = _copy(_header(parts[0]))  # what the cache holds stays as decoded
    payload = b64url_decode(parts[1])
    signature = b64url_decode(parts[2])
    signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
    return header, payload, signing_input, signature


def _check_header(header: Mapping[str, Any]) -> None:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS:
        raise _malformed(f"JWS alg must be one of {sorted(_ALGORITHMS)}")
    if not isinstance(header.get("typ"), str):
        raise _malformed("JWS typ is missing")
    for name in ("crit", "b64"):
        if name in header:
            raise _malformed(f"JWS header {name} is not supported")
    # Parameters of an encrypted or compressed token (RFC 7516, 7518): in a JWS header
    # they mean a token of another kind, read as what it is not.
    jwe = sorted(_JWE_PARAMETERS.intersection(header))
    if jwe:
        raise _malformed(f"JWS header {jwe[0]} belongs to an encrypted token (JWE)")
    if "kid" in header and not (isinstance(header["kid"], str) and header["kid"]):
        raise _malformed("JWS kid is not a non-empty string")


_JWE_PARAMETERS: Final = frozenset(("enc", "zip", "epk", "apu", "apv", "iv", "tag", "p2s", "p2c"))


def _check_claims(claims: Mapping[str, Any]) -> None:
    for name in _NUMERIC_DATES:
        if name in claims:
            value = claims[name]
            if type(value) is not int or not 0 <= value < _MAX_NUMERIC_DATE:
                raise _malformed(f"claim {name} is not an integer NumericDate")


def encode(
    header: Mapping[str, Any], claims: Mapping[str, Any], key: PrivateKey, *, alg: str = "Ed25519"
) -> str:
    """Sign ``claims`` as a compact JWS; ``header`` must carry ``typ``.

    ``ValueError`` for what :func:`parse_unverified` would refuse (the header rules,
    NumericDates, JSON that :func:`loads_strict` refuses), and for a ``jwk`` header that
    is not a public Ed25519 key: a private one would be published in every token. One
    exception: a plain dict's nesting (``_plain``: string keys, safe integers; written by
    orjson, never parsed again, so a receipt signed per decision pays nothing for the
    check) is not bounded here; too deep a token is refused by :func:`verify`.
    """
    if alg not in _ALGORITHMS:
        raise ValueError(f"alg must be one of {sorted(_ALGORITHMS)}")
    if not isinstance(header, Mapping) or not isinstance(claims, Mapping):
        raise ValueError("the JWS header and claims must each be a JSON object (a mapping)")
    protected = {**header, "alg": alg}
    if type(claims) is not dict:
        claims = dict(claims)
    try:
        _check_header(protected)
        _check_claims(claims)
        if "jwk" in protected:
            PublicKey.from_jwk(protected["jwk"])
        signing_input = f"{_segment(protected)}.{_segment(claims)}"
    except JoseError as exc:
        raise ValueError(exc.detail) from exc
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def parse_unverified(token: str, *, max_size: int) -> Parsed:
    """Check structure and header rules WITHOUT checking the signature.

    Never act on the result: use :func:`verify`.
    """
    header, payload, signing_input, signature = _split_compact(token, max_size)
    _check_header(header)
    if len(signature) != 64:
        raise _malformed("an Ed25519 signature is 64 bytes")
    claims = loads_strict(payload)
    if not isinstance(claims, dict):
        raise _malformed("JWS payload is not a JSON object")
    _check_claims(claims)
    return Parsed(header, claims, signing_input, signature, token)


def verify(
    token: str,
    *,
    typ: str,
    max_size: int,
    keys: Mapping[str, PublicKey] | None = None,
    embedded_jwk: bool = False,
) -> Verified:
    """Verify a compact JWS of type ``typ`` with exactly one key source.

    ``keys``: the header ``kid`` is looked up in this pinned set only (any header
    ``jwk``/``jku``/``x5u``/``x5c`` is ignored). ``embedded_jwk=True``: the header ``jwk``
    must be a public Ed25519 key, and the caller must then check its thumbprint against
    the binding it expects. Failures raise ``JoseError``; the signature is checked last.
    """
    if (keys is None) == (not embedded_jwk):
        raise ValueError("pass exactly one of keys=... or embedded_jwk=True")
    if not isinstance(typ, str) or not typ:
        raise ValueError("typ must be a non-empty string")
    parsed = parse_unverified(token, max_size=max_size)
    header = parsed.header
    if header["typ"] != typ:
        raise _malformed(f"JWS typ is not {typ!r}")
    if keys is not None:
        kid = header.get("kid")
        if kid is None:
            raise _malformed("JWS kid is missing")
        key = keys.get(kid)
        if key is None:
            raise JoseError("unknown_key", f"no pinned key for kid {kid!r}")
    else:
        if "jwk" not in header:
            raise _malformed("JWS header jwk is missing")
        key = PublicKey.from_jwk(header["jwk"])
    key.verify(parsed.signing_input, parsed.signature)
    return Verified(header, parsed.claims, token, key)
