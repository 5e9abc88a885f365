"""The HTTP call → execution request mapping (``execgate.adapters.http``) and the client
headers: the same function builds the request on both sides, so these pin what it maps
and what it refuses."""

from __future__ import annotations

import hashlib
from base64 import urlsafe_b64encode

import pytest

from execgate.adapters.http import (
    PROOF_HEADER,
    RUNTIME_HEADER,
    body_sha256,
    forward_auth_headers,
    http_request,
)
from execgate.errors import RequestError, VerificationError
from execgate.jose import PrivateKey
from execgate.proofs import Runtime, artifact_hash, request_hash, verify_proof

NOW = 1_700_000_000
ARTIFACT = "eyJhbGciOiJFZDI1NTE5In0.e30.c2ln"  # only hashed into ath here


def test_a_call_maps_to_action_resource_and_args() -> None:
    request = http_request(method="GET", uri="/api/payments/42?x=1&y=%20", runtime="agent-1")
    assert request.canonical() == {
        "action": "http.get",
        "resource": "/api/payments/42",
        "args": {"method": "GET", "uri": "/api/payments/42?x=1&y=%20"},
        "runtime": "agent-1",
        "parent": None,
    }


def test_the_path_is_taken_as_sent_without_percent_decoding() -> None:
    request = http_request(method="DELETE", uri="/files/a%20b", runtime="r")
    assert request.action == "http.delete"
    assert request.resource == "/files/a%20b"


def test_a_body_hash_and_a_parent_are_part_of_the_request() -> None:
    digest = body_sha256(b'{"amount": 5}')
    expected = urlsafe_b64encode(hashlib.sha256(b'{"amount": 5}').digest()).rstrip(b"=")
    assert digest == expected.decode()
    request = http_request(
        method="POST", uri="/api/pay", runtime="r", body_hash=digest, parent="a.b.c"
    )
    assert request.args == {"method": "POST", "uri": "/api/pay", "body_sha256": digest}
    assert request.parent == "a.b.c"


@pytest.mark.parametrize("body", [None, b""])
def test_no_body_and_an_empty_body_have_no_hash(body: bytes | None) -> None:
    assert body_sha256(body) is None


def test_method_and_uri_change_the_request_hash() -> None:
    base = request_hash(http_request(method="GET", uri="/a", runtime="r"))
    for method, uri in (("GET", "/b"), ("POST", "/a"), ("GET", "/a?x=1"), ("get", "/a")):
        assert request_hash(http_request(method=method, uri=uri, runtime="r")) != base


@pytest.mark.parametrize(
    "method",
    ["", "G T", "GET\r\n", "GÉT", "GET/1", "(GET)", "A" * 33],
)
def test_a_method_that_is_not_a_token_is_refused(method: str) -> None:
    with pytest.raises(RequestError, match="RFC 9110 token"):
        http_request(method=method, uri="/a", runtime="r")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "starting with '/'"),
        ("api/x", "starting with '/'"),
        ("http://example.com/api", "starting with '/'"),
        ("*", "starting with '/'"),
        ("/a b", "visible ASCII"),
        ("/caf\u00e9", "visible ASCII"),
        ("/a\r\nX-Injected: 1", "visible ASCII"),
        ("/a#frag", "no fragment"),
        ("/api/../admin", "'..' segments"),
        ("/api/./x", "'..' segments"),
        ("/api/%2e%2E/admin", "encode letters|'..' segments"),
        ("/api/.%2e", "encode letters|'..' segments"),
        ("/api/..;/admin/users", "path parameters"),
        ("/api/admin;x=1/users", "path parameters"),
        ("/api//admin/users", "empty segments"),
        ("//api/admin", "empty segments"),
        ("/api/%61dmin/users", "encode letters"),
        ("/api/%41", "encode letters"),
        ("/api/a%7Eb", "encode letters"),
        ("/api/a%2db", "encode letters"),
        ("/api/orders/42%3Acancel", "encode letters, digits, '-._~' or what a path"),
        ("/api/users/%40me/x", "encode letters"),
        ("/api/a%2Cb", "encode letters"),
        ("/api/a%3db", "encode letters"),
        *((f"/api/a%{hex_}b", "encode letters") for hex_ in ("21", "24", "26", "27", "28")),
        *((f"/api/a%{hex_}b", "encode letters") for hex_ in ("29", "2A", "2B", "3D", "40")),
        ("/api/%c3%a9t%c3%a9/x", "upper-case hex"),
        ("/api/%C3%a9/x", "upper-case hex"),
        ("/api/a%3cb", "upper-case hex"),
        ("/api/..", "'..' segments"),
        ("/api/a%2Fb", "encoded"),
        ("/api/a%5cb", "encoded"),
        ("/api/..%3B/admin/users", "encoded"),
        ("/api/a%3bx=1/users", "encoded"),
        ("/api\\admin", "backslash"),
        ("/api/%u0061dmin/x", "two hex digits"),
        ("/api/admin%", "two hex digits"),
        ("/api/%zz", "two hex digits"),
        ("/api/%2", "two hex digits"),
        ("/api/%2561dmin/x", "two hex digits"),
        ("/api/admin%00/x", "control"),
        ("/api/a%1fb", "control"),
        ("/api/a%7Fb", "control"),
        ("/api/%c0%ae%c0%ae/admin", "not valid UTF-8"),
        ("/api/%C3", "not valid UTF-8"),
        ("/api/%ED%A0%80", "not valid UTF-8"),  # an encoded surrogate
        ("/api/{internal}/purge", "must percent-encode"),
        *((f"/api/a{c}b", "must percent-encode") for c in '"<>[]^`{|}'),
        ("/api/admin./x", "ending in '.'"),
        ("/api/x.", "ending in '.'"),
        ("/api/admin%20/x", "ending in '.' or '%20'"),
        ("/" + "a" * 8200, "longer than"),
    ],
)
def test_a_uri_a_service_could_read_differently_is_refused(uri: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        http_request(method="GET", uri=uri, runtime="r")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/faz;%%~%2F", "backslash or an encoded"),
        ("//E%2Fx", "backslash or an encoded"),
        ("/a;b//c", "path parameters"),
        ("/a//%41", "empty segments"),
        ("/%41/../x", "encode letters"),
        ("/../%zz", "'..' segments"),
        ("/%zz/x.", "two hex digits"),
    ],
)
def test_a_uri_breaking_several_rules_is_refused_for_the_first(uri: str, message: str) -> None:
    """The checks run in one order whatever the path holds, so the message is stable."""
    with pytest.raises(RequestError, match=message):
        http_request(method="GET", uri=uri, runtime="r")


def test_dots_and_encodings_inside_a_segment_and_in_the_query_are_fine() -> None:
    uri = "/api/v1.2/...x/%20%C3%A9/a%20b/100%3F?p=../x;y//%26%3d%25%0A%C0%AE%2F&q=%2561%7e"
    request = http_request(method="GET", uri=uri, runtime="r")
    assert request.resource == "/api/v1.2/...x/%20%C3%A9/a%20b/100%3F"
    assert request.args["uri"] == uri


def test_what_a_path_must_encode_stays_encoded_and_is_fine() -> None:
    # Gen-delims and characters outside pchar have no other spelling in a path.
    path = "/api/%3C%3E%22%5B%5D%7B%7D%60%5E%7C%23%3F/%E2%82%AC"
    assert http_request(method="GET", uri=path, runtime="r").resource == path
    # In the query they may stay as sent (a rule there reads the URI as sent).
    uri = '/api?filter[name]={a|b}&q="<x>"^`'
    assert http_request(method="GET", uri=uri, runtime="r").args["uri"] == uri


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("export=%72aw", "query may not percent-encode letters"),
        ("%65xport=raw", "query may not percent-encode letters"),
        ("n=%31", "query may not percent-encode letters"),
        ("a=%2D%2E%5F", "query may not percent-encode letters"),
        ("q=%u0061", "two hex digits"),
        ("q=50%", "two hex digits"),
        ("q=%zz", "two hex digits"),
    ],
)
def test_a_query_a_rule_could_read_differently_is_refused(query: str, message: str) -> None:
    """A rule testing the query (``request.args.uri``) sees it as sent: an escape a
    service decodes to a plain character would hide it from that rule."""
    with pytest.raises(RequestError, match=message):
        http_request(method="GET", uri=f"/reports?{query}", runtime="r")


def test_a_path_over_the_request_field_limit_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="1024"):
        http_request(method="GET", uri="/" + "a" * 1100, runtime="r")


def test_forward_auth_headers_carry_a_proof_for_exactly_this_call() -> None:
    key = PrivateKey.generate()
    runtime = Runtime("agent-1", key)
    body = b"hello"
    headers = forward_auth_headers(
        runtime,
        artifact=ARTIFACT,
        audience="gw",
        method="POST",
        uri="/api/x?q=1",
        body=body,
        parent="p.q.r",
        attestation="s.t.u",
        now=NOW,
    )
    assert headers["Authorization"] == f"Bearer {ARTIFACT}"
    assert headers[RUNTIME_HEADER] == "agent-1"
    assert headers["Execgate-Parent"] == "p.q.r"
    assert headers["Execgate-Attestation"] == "s.t.u"
    expected = http_request(
        method="POST",
        uri="/api/x?q=1",
        runtime="agent-1",
        body_hash=body_sha256(body),
        parent="p.q.r",
    )

    def check(rh: str) -> None:
        verify_proof(
            headers[PROOF_HEADER],
            jkt=key.public.thumbprint(),
            request_hash=rh,
            ath=artifact_hash(ARTIFACT),
            audiences=frozenset({"gw"}),
            now=NOW,
            max_age=60,
            leeway=0,
        )

    check(request_hash(expected))
    without_body = http_request(method="POST", uri="/api/x?q=1", runtime="agent-1", parent="p.q.r")
    with pytest.raises(VerificationError, match="rh does not match"):
        check(request_hash(without_body))


def test_optional_headers_are_left_out_and_each_proof_is_fresh() -> None:
    runtime = Runtime("agent-1", PrivateKey.generate())
    one = forward_auth_headers(runtime, artifact=ARTIFACT, audience="gw", method="GET", uri="/")
    two = forward_auth_headers(runtime, artifact=ARTIFACT, audience="gw", method="GET", uri="/")
    assert set(one) == {"Authorization", PROOF_HEADER, RUNTIME_HEADER}
    assert one[PROOF_HEADER] != two[PROOF_HEADER]


@pytest.mark.parametrize(
    ("runtime_id", "artifact", "parent"),
    [
        ("agent 1", ARTIFACT, None),
        ("agent-\u00e9", ARTIFACT, None),
        ("agent-1", ARTIFACT + "\r\nX: y", None),
        ("agent-1", ARTIFACT, "a.b.c\n"),
    ],
)
def test_values_that_cannot_be_header_values_are_refused(
    runtime_id: str, artifact: str, parent: str | None
) -> None:
    runtime = Runtime(runtime_id, PrivateKey.generate())
    with pytest.raises(RequestError, match="visible ASCII"):
        forward_auth_headers(
            runtime, artifact=artifact, audience="gw", method="GET", uri="/", parent=parent
        )


def test_an_invalid_call_is_refused_before_anything_is_signed() -> None:
    runtime = Runtime("agent-1", PrivateKey.generate())
    with pytest.raises(RequestError):
        forward_auth_headers(runtime, artifact=ARTIFACT, audience="gw", method="GET", uri="/../x")
