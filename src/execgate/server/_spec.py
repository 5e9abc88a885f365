"""Pieces of the OpenAPI document that every server module shares.

Each route module (``forward_auth``, ``admin``, ``metrics``) exports ``ROUTES`` and the
``PATHS``, ``SCHEMAS`` and ``ERROR_CODES`` of the document that describe them;
``openapi.py`` assembles the whole document, and a test checks that every route of the
app is in it with its methods, and nothing else is.
"""

from __future__ import annotations

from typing import Any, Final

from execgate.server._http import REASON_HEADER

__all__ = ["BODY_ERRORS", "COMMON_ERRORS", "error", "json_body", "ref"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REASON_HEADER: Final = {
    REASON_HEADER: {
        "description": "the error's code, as in the body",
        "required": True,
        "schema": {"type": "string"},
    }
}


def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A typed error response: the Error body and ``Execgate-Reason``, and ``headers``."""
    body = json_body(ref("Error"), description)
    return {**body, "headers": {**_REASON_HEADER, **(headers or {})}}


COMMON_ERRORS: Final = {
    "404": error("unknown route or object"),
    "405": error("wrong method"),
    "408": error("the client took too long to send its headers or body"),
    "431": error("the request line and headers exceed [server] header_limit"),
    "500": error("internal error; nothing was decided or executed"),
    "503": error("the store or the audit log is unavailable"),
}
BODY_ERRORS: Final = {
    "400": error("malformed JSON or an invalid body"),
    "413": error("the body exceeds the limit (refused before it is read whole)"),
    "415": error("the body is not application/json, or has a Content-Encoding"),
}
