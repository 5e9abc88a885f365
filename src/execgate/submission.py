"""The wire shape of one decision request (DESIGN §6), parsed and bounded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from execgate.errors import RequestError
from execgate.jose import MAX_SAFE_INT, canonical_json, loads_strict, sha256_b64url
from execgate.model import Request

__all__ = ["MAX_REQUEST_BYTES", "MAX_REQUEST_VALUES", "Submission"]

MAX_REQUEST_BYTES: Final = 1024 * 1024
# JSON values in a request (and in a whole decision body): each costs a few microseconds
# of Python wherever the request is walked (hashed, logged, read by conditions), and a
# megabyte of nested empty lists holds half a million of them.
MAX_REQUEST_VALUES: Final = 100_000
_SUBMISSION_KEYS: Final = frozenset({"request", "artifact", "proof", "attestation"})


def _safe_int(text: str) -> int:
    """An integer of the canonical request. JCS writes a float such as 1e20 as the integer
    100000000000000000000, which has no canonical form itself: the record that would
    hold it could not be written, and the decision would go unlogged."""
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise RequestError(
            f"the number {text} in the request is, written canonically (RFC 8785), an"
            " integer beyond +-(2**53 - 1): send it as a string"
        )
    return value


_decode_canonical: Final = json.JSONDecoder(parse_int=_safe_int).decode  # built once


@dataclass(frozen=True, slots=True)
class Submission:
    """The wire shape of one decision request (DESIGN §6).

    ``request_hash`` is always computed here from ``request`` (never taken from the
    caller, so a proof can only ever bind the request that is evaluated), and the 1 MiB
    and ``MAX_REQUEST_VALUES`` request limits hold for every way in: a request without a
    canonical form or over a limit raises ``RequestError``.
    """

    request: Request
    artifact: object
    proof: object
    attestation: object = None
    request_hash: str = field(init=False)
    request_size: int = field(init=False)  # bytes of the canonical request

    def __post_init__(self) -> None:
        if not isinstance(self.request, Request):
            raise RequestError("the request must be a Request")
        if _more_values(self.request.args, MAX_REQUEST_VALUES):
            raise RequestError(
                f"the request holds more than {MAX_REQUEST_VALUES} JSON values in its args"
            )
        try:
            canonical = canonical_json(self.request.canonical())
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep args
            detail = str(exc).removeprefix("no canonical JSON form: ")
            if "integer" in detail:
                detail += "; send integers beyond +-(2**53 - 1) as strings"
            raise RequestError(
                f"the request has no canonical JSON form (RFC 8785): {detail}"
            ) from exc
        if len(canonical) > MAX_REQUEST_BYTES:
            raise RequestError(
                f"the request is {len(canonical)} bytes; the limit is {MAX_REQUEST_BYTES}"
            )
        object.__setattr__(self, "request_hash", sha256_b64url(canonical))
        object.__setattr__(self, "request_size", len(canonical))
        # Evaluate exactly what was hashed: an independent copy of the arguments, so a
        # caller mutating its dict afterwards cannot change what the proof binds.
        frozen = replace(self.request, args=_decode_canonical(canonical.decode("utf-8"))["args"])
        object.__setattr__(self, "request", frozen)

    @classmethod
    def from_json(cls, obj: object) -> Submission:
        """Parse ``{"request": …, "artifact": …, "proof": …, "attestation": …}``."""
        if not isinstance(obj, Mapping):
            raise RequestError("a decision request must be a JSON object")
        unknown = set(obj) - _SUBMISSION_KEYS
        if unknown:
            raise RequestError(
                f"unknown fields {sorted(map(str, unknown))}; expected {sorted(_SUBMISSION_KEYS)}"
            )
        if "request" not in obj:
            raise RequestError("the 'request' field is required")
        try:
            request = Request.from_json(obj["request"])
        except (ValueError, TypeError) as exc:  # TypeError: e.g. non-string keys from Python
            raise RequestError(str(exc)) from exc
        return cls(request, obj.get("artifact"), obj.get("proof"), obj.get("attestation"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Submission:
        if len(data) > 2 * MAX_REQUEST_BYTES:
            raise RequestError(f"the decision request exceeds {2 * MAX_REQUEST_BYTES} bytes")
        try:
            return cls.from_json(loads_strict(data, max_values=MAX_REQUEST_VALUES))
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(f"the decision request is not strict JSON: {exc}") from exc


def _more_values(value: object, limit: int) -> bool:
    """Whether ``value`` holds more than ``limit`` values below it (counted up to there)."""
    stack, left = [value], limit
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        left -= len(children)
        if left < 0:
            return True
        stack.extend(children)
    return False
