"""An HTTP call as an execution request: the mapping both sides of forward-auth share.

A runtime calling an HTTP service through a proxy (nginx ``auth_request``, Envoy
``ext_authz``, Traefik ForwardAuth) proves possession over the same canonical request
(DESIGN §4.3) that the gateway rebuilds from what the proxy forwards. Both sides call
``http_request``, so the two cannot drift apart: a proof for ``GET /a`` cannot be used for
``GET /b`` or ``POST /a``, because a different method or URI is a different request hash.

    action    "http." + the method in lower case        (http.get, http.post, ...)
    resource  the URI's path, exactly as sent (no percent-decoding, no query string)
    args      {"method": the method as sent, "uri": the whole URI with its query,
               "body_sha256": base64url(SHA-256(body)) only for a non-empty body}
    runtime   the runtime id (sent as ``Execgate-Runtime``)
    parent    a parent receipt, or None

The path is taken as sent because the gateway cannot know how the service behind the
proxy will decode it. Anything that decodes to a different path than it reads is refused
rather than guessed at: dot segments (``/api/../admin`` matches the grant ``/api/**``
but a service may serve ``/admin``), their percent-encoded forms, encoded slashes and
backslashes (``%2F``, ``%5C``, ``\\``), path parameters (``;``: Tomcat and Spring read
``/api/..;/admin`` as ``/admin``), empty segments (``//``: many frameworks merge them),
characters a path cannot hold unencoded (``{`` is ``%7B`` to a service that decodes,
but not to a rule on ``/api/{internal}/**``: only the escapes of ``" < > [ ] ^ ` { | }``
are a spelling), percent-encoded characters that need no encoding in a path (``%61dmin``
is ``admin`` to a service that decodes once, but no deny rule on ``/api/admin/**``
matches it; the same for ``:@!$&'()*+,=``, which a path holds as is), escapes in lower
case (``%c3%a9`` is ``%C3%A9`` decoded, but not to a rule), escapes that are not ``%``
and two hex digits (IIS reads ``%u0061`` as ``a``), an encoded ``%`` (``%2561``
is ``a`` after two decodings), encoded control characters, encoded bytes that are not
UTF-8 (``%C0%AE`` is an overlong ``.``), segments ending in ``.`` or ``%20`` (Windows
drops them), and every character outside visible ASCII. So a grant on ``/api/**``
covers exactly what a service reading the path literally or decoding it would route to
``/api`` or below it.

The query stays as sent too, in ``args.uri`` for rules and constraints to test, and the
same two escapes are refused there: an encoded letter, digit or ``-._`` (a rule denying
``export=raw`` would not see ``export=%72aw``, which a service reads as the same), and a
``%`` that does not start two hex digits. ``%7E`` is let through: browsers' forms and
Java's ``URLEncoder`` send every ``~`` so. Other escapes mean something else decoded
(``%26`` is a ``&`` inside a value, ``%25`` a ``%``, ``%0A`` a newline from a form) and
are kept.

``forward_auth_headers`` is the client side: the headers a runtime adds to its call.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Final
from urllib.parse import unquote_to_bytes

from execgate.errors import RequestError
from execgate.jose import b64url_encode
from execgate.model import Request
from execgate.proofs import Runtime

__all__ = [
    "ARTIFACT_HEADER",
    "ATTESTATION_HEADER",
    "MAX_METHOD",
    "MAX_URI",
    "PARENT_HEADER",
    "PROOF_HEADER",
    "RUNTIME_HEADER",
    "body_sha256",
    "forward_auth_headers",
    "http_request",
]

ARTIFACT_HEADER: Final = "Execgate-Artifact"  # or Authorization: Bearer
PROOF_HEADER: Final = "Execgate-Proof"
ATTESTATION_HEADER: Final = "Execgate-Attestation"
RUNTIME_HEADER: Final = "Execgate-Runtime"
PARENT_HEADER: Final = "Execgate-Parent"

MAX_METHOD: Final = 32
MAX_URI: Final = 8192
# RFC 9110 §5.6.2 token characters.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VISIBLE_ASCII: Final = re.compile(r"[!-~]+")
# A path segment that some service would read as "." or "..", percent-encoded or not.
_DOT_SEGMENT: Final = re.compile(r"(?:\.|%2e){1,2}", re.IGNORECASE)
# '/', '\' and ';' percent-encoded: a service that decodes the path before splitting it
# (or before stripping path parameters) would read other segments than were decided.
_ENCODED_SEPARATOR: Final = re.compile(r"%(?:2f|5c|3b)", re.IGNORECASE)
# RFC 3986 unreserved characters but '~', as the hex of their escapes.
_UNRESERVED_BUT_TILDE: Final = r"[46][1-9a-f]|[57][0-9a]|3[0-9]|2d|2e|5f"
# What a path segment holds as is (RFC 3986 pchar), percent-encoded: the unreserved
# characters, the sub-delims but ';' (refused as a separator above) and ':' '@'. A
# service decodes them to a path that differs from the one the grants and rules were
# matched against (a deny rule on `/api/orders/*:cancel` does not see `42%3Acancel`).
_ENCODED_PCHAR: Final = re.compile(
    rf"%(?:{_UNRESERVED_BUT_TILDE}|7e|2[146-9a-c]|3[ad]|40)", re.IGNORECASE
)
# What a path cannot hold as is (RFC 3986 §3.3: outside pchar, not a delimiter): only
# its escape is a spelling, so that a service decoding `%7B` and one reading `{` see one
# path, and so do the rules (a deny on `/api/{internal}/**` never sees `%7Binternal%7D`).
_MUST_ENCODE: Final = re.compile(r'["<>\[\]^`{|}]')
# An escape in lower case: `%c3%a9` and `%C3%A9` are one path to a service that decodes
# it, two texts to a rule; RFC 3986 §2.1 asks for upper case, so a path has one spelling.
_LOWER_ESCAPE: Final = re.compile(r"%(?:[a-f][0-9a-fA-F]|[0-9A-F][a-f])")
# The same in a query, but for '~' (%7E), which browsers' forms and Java's URLEncoder
# encode in every query they build.
_ENCODED_UNRESERVED_BUT_TILDE: Final = re.compile(rf"%(?:{_UNRESERVED_BUT_TILDE})", re.I)
# A '%' that does not start an escape of two hex digits (IIS reads `%u0061` as `a`; other
# services pass it on or guess).
_NO_ESCAPE: Final = r"%(?![0-9a-f]{2})"
_NOT_AN_ESCAPE: Final = re.compile(_NO_ESCAPE, re.IGNORECASE)
# In a path, also an encoded '%' (`%2561` is `a` to a service that decodes twice) and
# encoded control characters (`%00` ends the path for some).
_BAD_ESCAPE: Final = re.compile(rf"{_NO_ESCAPE}|%(?:25|[01][0-9a-f]|7f)", re.IGNORECASE)


def body_sha256(body: bytes | None) -> str | None:
    """base64url (no padding) SHA-256 of a non-empty body; None for no or an empty body."""
    if not body:
        return None
    return b64url_encode(hashlib.sha256(body).digest())


def _check_method(method: str) -> None:
    if not 0 < len(method) <= MAX_METHOD or not _TOKEN.fullmatch(method):
        raise RequestError(
            f"the HTTP method must be an RFC 9110 token of at most {MAX_METHOD} characters"
            " (GET, POST, ...)"
        )


def _check_uri(uri: str) -> str:
    """The path of ``uri`` (before any query), or ``RequestError``. The checks that look
    for an escape run only on a path (or query) holding a '%', those on segments only on
    a path holding a '%' or a '.' (the common path has neither); their order, and so
    which message a path breaking several rules gets, is the same either way."""
    if not uri.startswith("/"):
        raise RequestError("the URI must be an origin-form request target starting with '/'")
    if len(uri) > MAX_URI:
        raise RequestError(f"the URI is longer than {MAX_URI} characters")
    if not _VISIBLE_ASCII.fullmatch(uri) or "#" in uri:
        raise RequestError(
            "the URI may hold only visible ASCII characters (percent-encode the rest)"
            " and no fragment"
        )
    path = uri.split("?", 1)[0]
    escaped = "%" in path
    if "\\" in path or (escaped and _ENCODED_SEPARATOR.search(path)):
        raise RequestError("the URI path may not hold a backslash or an encoded '/', '\\' or ';'")
    if ";" in path:
        raise RequestError("the URI path may not hold path parameters (';')")
    if "//" in path:
        raise RequestError("the URI path may not hold empty segments ('//')")
    if _MUST_ENCODE.search(path):
        raise RequestError(
            "the URI path must percent-encode what a path cannot hold as is"
            ' (RFC 3986): " < > [ ] ^ ` { | } as %22 %3C %3E %5B %5D %5E %60 %7B %7C %7D'
        )
    if escaped and _ENCODED_PCHAR.search(path):
        raise RequestError(
            "the URI path may not percent-encode letters, digits, '-._~' or what a path"
            " holds as is (:@!$&'()*+,=): send them as is"
        )
    segments = path.split("/") if escaped or "." in path else []
    if any(_DOT_SEGMENT.fullmatch(segment) for segment in segments):
        raise RequestError("the URI path may not hold '.' or '..' segments (encoded or not)")
    if escaped:
        if _BAD_ESCAPE.search(path):
            raise RequestError(
                "the URI path may percent-encode only bytes other than '%' and control"
                " characters, each as '%' and two hex digits"
            )
        try:
            unquote_to_bytes(path).decode("utf-8")  # strict: no overlong forms (%C0%AE is '.')
        except UnicodeDecodeError as exc:
            raise RequestError("the URI path's percent-encoded bytes are not valid UTF-8") from exc
        if _LOWER_ESCAPE.search(path):
            raise RequestError(
                "the URI path's escapes must use upper-case hex digits (%C3%A9, not %c3%a9)"
            )
    if any(segment.endswith((".", "%20")) for segment in segments):
        raise RequestError(
            "the URI path may not hold a segment ending in '.' or '%20' (Windows services"
            " drop them: 'admin.' is 'admin' there)"
        )
    query = uri[len(path) + 1 :]
    if "%" in query:
        if _ENCODED_UNRESERVED_BUT_TILDE.search(query):
            raise RequestError(
                "the URI query may not percent-encode letters, digits or '-._' (send them as is)"
            )
        if _NOT_AN_ESCAPE.search(query):
            raise RequestError(
                "the URI query may hold '%' only as '%' and two hex digits (send '%' as '%25')"
            )
    return path


def http_request(
    *,
    method: str,
    uri: str,
    runtime: str,
    body_hash: str | None = None,
    parent: str | None = None,
) -> Request:
    """The execution request for one HTTP call, or ``RequestError`` when the method is
    not a token or the URI is not a plain origin-form target (see the module docstring).

    ``body_hash`` is what ``body_sha256`` returns for the call's body (None: no body).
    """
    _check_method(method)
    path = _check_uri(uri)
    args: dict[str, str] = {"method": method, "uri": uri}
    if body_hash is not None:
        args["body_sha256"] = body_hash
    try:
        return Request(
            action="http." + method.lower(),
            resource=path,
            runtime=runtime,
            args=args,
            parent=parent,
        )
    except ValueError as exc:  # e.g. a path or runtime id over 1024 characters
        raise RequestError(str(exc)) from exc


def forward_auth_headers(
    runtime: Runtime,
    *,
    artifact: str,
    audience: str,
    method: str,
    uri: str,
    body: bytes | None = None,
    parent: str | None = None,
    attestation: str | None = None,
    now: int | None = None,
) -> dict[str, str]:
    """The headers a runtime sends with its HTTP call through a forward-auth proxy:
    ``Authorization: Bearer`` (the artifact), ``Execgate-Proof`` (fresh, bound to this
    method, URI, body, runtime and parent), ``Execgate-Runtime``, and ``Execgate-Parent``
    / ``Execgate-Attestation`` when given. Each proof is good for one call.

    ``body`` must be exactly the bytes the proxy forwards to the gateway (Envoy
    ``with_request_body``, Traefik ``forwardBody``); leave it None when the proxy
    forwards no body (nginx ``auth_request``, Traefik by default), or the request hashes
    will differ and the call is denied.
    Raises ``RequestError`` for a method, URI or value that cannot be sent as a header.
    """
    for name, value in (
        ("runtime id", runtime.runtime_id),
        ("artifact", artifact),
        ("parent receipt", parent),
        ("attestation", attestation),
    ):
        if value is not None and not _VISIBLE_ASCII.fullmatch(value):
            raise RequestError(f"the {name} must be visible ASCII to be sent as a header")
    request = http_request(
        method=method,
        uri=uri,
        runtime=runtime.runtime_id,
        body_hash=body_sha256(body),
        parent=parent,
    )
    proof = runtime.proof(
        request, artifact, audience=audience, now=int(time.time()) if now is None else now
    )
    headers = {
        "Authorization": f"Bearer {artifact}",
        PROOF_HEADER: proof,
        RUNTIME_HEADER: runtime.runtime_id,
    }
    if parent is not None:
        headers[PARENT_HEADER] = parent
    if attestation is not None:
        headers[ATTESTATION_HEADER] = attestation
    return headers
