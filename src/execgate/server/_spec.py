"""Pieces of the OpenAPI document that every server module shares.

Each route module (``forward_auth``, ``admin``, ``metrics``) exports ``ROUTES`` and the
``PATHS``, ``SCHEMAS`` and ``ERROR_CODES`` of the document that describe them;
``openapi.py`` assembles the whole document, and a test checks that every route of the
app is in it with its methods, and nothing else is.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from execgate.server._http import REASON_HEADER

__all__ = [
    "BODY_ERRORS",
    "COMMON_ERRORS",
    "PROTOCOL_ERRORS",
    "error",
    "header",
    "json_body",
    "ref",
    "with_head",
]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def header(description: str, *, required: bool = False) -> dict[str, Any]:
    """A string response header."""
    spec: dict[str, Any] = {"description": description, "schema": {"type": "string"}}
    return {**spec, "required": True} if required else spec


def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A typed error response: the Error body and ``Execgate-Reason``, and ``headers``."""
    body = json_body(ref("Error"), description)
    reason = header("the error's code, as in the body", required=True)
    return {**body, "headers": {REASON_HEADER: reason, **(headers or {})}}


# What the server answers on any route, before the route's handler sees the request
# (server._limits, the router): malformed HTTP, a wrong method, a client too slow, too
# many headers, too many requests in flight.
PROTOCOL_ERRORS: Final = {
    "400": error("malformed HTTP (request.malformed), refused before any route"),
    "405": error("wrong method", {"Allow": header("the methods this route takes", required=True)}),
    "408": error(
        "the client took too long to send its headers or body",
        {"Connection": header("close: the connection is closed after this answer")},
    ),
    "431": error("the request line and headers exceed [server] header_limit"),
    "500": error("internal error; nothing was decided or executed"),
    "503": error("the server is overloaded (server.overloaded)"),
}
COMMON_ERRORS: Final = {
    **PROTOCOL_ERRORS,
    "404": error("unknown route or object"),
    "503": error("the store or the audit log is unavailable, or the server is overloaded"),
}
BODY_ERRORS: Final = {
    "400": error("malformed JSON, an invalid body, or malformed HTTP"),
    "413": error("the body exceeds the limit (refused before it is read whole)"),
    "415": error("the body is not application/json, or has a Content-Encoding"),
}


def with_head(paths: dict[str, Any], *, without: Collection[str] = ()) -> dict[str, Any]:
    """``paths`` with a HEAD operation beside each GET but at the paths ``without``: the
    server answers HEAD where it answers GET (forward-auth decides it as a call of its
    own, ``http.head``), with the GET's status and headers and no body."""
    out: dict[str, Any] = {}
    for path, item in paths.items():
        out[path] = dict(item)
        get = item.get("get")
        if get is None or "head" in item or path in without:
            continue
        head = {key: value for key, value in get.items() if key not in ("responses", "operationId")}
        head["operationId"] = get["operationId"] + "Head"
        head["responses"] = {
            status: {key: value for key, value in response.items() if key != "content"}
            for status, response in get["responses"].items()
        }
        out[path]["head"] = head
    return out
