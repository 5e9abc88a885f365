"""The OpenAPI 3.1 document of the decision API, written by hand.

Hand-written so that it describes the wire shapes exactly (the same ones
``Submission.from_json`` and ``Decision.to_json`` define) rather than what a framework
infers; ``tests/unit/test_server_api.py`` checks that every route of the app is here with
its methods, and nothing else is.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from execgate.model import ID_TEXT, MAX_ID
from execgate.server import admin, forward_auth, metrics
from execgate.server._spec import BODY_ERRORS as _BODY_ERRORS
from execgate.server._spec import COMMON_ERRORS as _COMMON_ERRORS
from execgate.server._spec import PROTOCOL_ERRORS, with_head
from execgate.server._spec import error as _error
from execgate.server._spec import json_body as _json
from execgate.server._spec import ref as _ref

__all__ = ["openapi_document"]

_ERROR_CODES: Final = [
    "request.invalid",
    "request.invalid_query",
    "request.malformed_json",
    "request.bad_content_length",
    "request.too_large",
    "request.unsupported_media_type",
    "route.not_found",
    "method.not_allowed",
    "decision.not_found",
    "outcome.conflict",
    "identity.proof_missing",
    "identity.proof_invalid",
    "identity.mismatch",
    "artifact.revoked",
    "audit.index_not_found",
    "store.unavailable",
    "audit.unavailable",
    "audit.not_checkpointed",
    "internal.error",
    "not_ready",
]


_DECISION_ID: Final = {
    "name": "decision_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": MAX_ID, "pattern": f"^{ID_TEXT.pattern}$"},
}
_NULLABLE_STRING: Final = {"type": ["string", "null"]}

_SCHEMAS: Final[dict[str, Any]] = {
    "Request": {
        "type": "object",
        "additionalProperties": False,
        "required": ["action", "resource", "runtime"],
        "properties": {
            "action": {"type": "string", "minLength": 1, "maxLength": 1024},
            "resource": {"type": "string", "minLength": 1, "maxLength": 1024},
            "runtime": {"type": "string", "minLength": 1, "maxLength": 1024},
            "args": {"type": ["object", "null"]},
            "parent": _NULLABLE_STRING,
        },
    },
    "Submission": {
        "description": "The one wire shape of a decision request (DESIGN §6).",
        "type": "object",
        "additionalProperties": False,
        "required": ["request"],
        "properties": {
            "request": _ref("Request"),
            "artifact": {"type": "string", "description": "compact JWS"},
            "proof": {"type": "string", "description": "compact JWS"},
            "attestation": {"type": ["string", "null"], "description": "compact JWS"},
        },
    },
    "Reason": {
        "type": "object",
        "required": ["code", "detail"],
        "properties": {"code": {"type": "string"}, "detail": {"type": "string"}},
    },
    "Decision": {
        "type": "object",
        "required": ["decision_id", "outcome", "reasons", "policy_hash", "decided_at"],
        "properties": {
            "decision_id": {"type": "string"},
            "outcome": {
                "type": "string",
                "enum": ["proceed", "pause", "reroute", "deny", "fail_closed"],
            },
            "reasons": {"type": "array", "items": _ref("Reason")},
            "request_hash": _NULLABLE_STRING,
            "policy_hash": {"type": "string"},
            "decided_at": {"type": "integer"},
            "artifact_jti": _NULLABLE_STRING,
            "chain": {"type": "array", "items": {"type": "string"}},
            "rule": _NULLABLE_STRING,
            "route": _NULLABLE_STRING,
            "log_index": {"type": ["integer", "null"]},
            "receipt": {"type": ["string", "null"], "description": "compact JWS receipt"},
            "approval_id": _NULLABLE_STRING,
        },
    },
    "OutcomeReport": {
        "type": "object",
        "additionalProperties": False,
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["succeeded", "failed"]},
            "exit_code": {
                "type": ["integer", "null"],
                "minimum": -(2**31),
                "maximum": 2**31 - 1,
            },
            "result_digest": {"type": ["string", "null"], "pattern": "^sha256:[0-9a-f]{64}$"},
        },
    },
    "LoggedRecord": {
        "type": "object",
        "required": ["index", "record"],
        "properties": {"index": {"type": "integer"}, "record": {"type": ["object", "null"]}},
    },
}

# Entry contents (request arguments) are guarded like the export, unless made public.
_AUDIT_READER: Final = {
    "description": (
        "Needs an admin token whose admin holds the role `audit`, unless the gateway sets"
        " `[server] public_audit`: entries hold request arguments."
    ),
    "security": [{"adminToken": []}, {}],
}

_PATHS: Final[dict[str, Any]] = {
    "/v1/decisions": {
        "post": {
            "summary": "Decide one request; 200 for every outcome (the outcome is in the body)",
            "operationId": "decide",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Submission")}},
            },
            "responses": {
                "200": _json(_ref("Decision"), "the decision, with its signed receipt"),
                **_COMMON_ERRORS,
                **_BODY_ERRORS,
            },
        }
    },
    "/v1/decisions/{decision_id}": {
        "get": {
            "summary": "The logged decision record and its outcome record, if any",
            "description": (
                "Without credentials, the decision record shows only what its receipt"
                " signs (view: receipt). The whole record (view: whole) needs an admin"
                " token whose admin holds `audit`, unless the gateway sets"
                " `[server] public_audit` (then no credential is read); otherwise an"
                " Authorization header is always checked, and audited."
            ),
            "security": [{"adminToken": []}, {}],
            "operationId": "getDecision",
            "parameters": [_DECISION_ID],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "decision_id": {"type": "string"},
                            "view": {"enum": ["receipt", "whole"]},
                            "decision": _ref("LoggedRecord"),
                            "outcome": {"oneOf": [_ref("LoggedRecord"), {"type": "null"}]},
                        },
                    },
                    "the logged records",
                ),
                **admin.AUTH_ERRORS,
                **_COMMON_ERRORS,
            },
        }
    },
    "/v1/decisions/{decision_id}/outcome": {
        "post": {
            "summary": "Report what happened when a proceed/reroute decision ran",
            "description": (
                "Signed by the runtime the decision let through: Execgate-Proof is a JWS"
                " (typ execgate-outcome+jwt) by the key the decision bound, naming the"
                " decision (did) and the SHA-256 of the JCS of {decision_id, status,"
                " exit_code, result_digest} (oh); see Runtime.outcome_proof."
            ),
            "operationId": "reportOutcome",
            "parameters": [
                _DECISION_ID,
                {
                    "name": "Execgate-Proof",
                    "in": "header",
                    "required": False,
                    "description": "the runtime's outcome proof (required for a decision"
                    " that executed)",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("OutcomeReport")}},
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "decision_id": {"type": "string"},
                            "log_index": {"type": "integer"},
                        },
                    },
                    "the outcome record's log index",
                ),
                "403": _error(
                    "no proof, or one not signed by the key the decision bound, or not for"
                    " this decision and report; or that key or its runtime is revoked"
                    " (artifact.revoked)"
                ),
                "409": _error("nothing executed, or the outcome is already logged"),
                **_COMMON_ERRORS,
                **_BODY_ERRORS,
            },
        }
    },
    "/v1/audit/checkpoint": {
        "get": {
            "summary": "A signed C2SP checkpoint of the log, at most a second old",
            "description": (
                "One checkpoint answers every call of the second after it was signed;"
                " for a log index it does not cover yet (size <= index), ask again a"
                " second later."
            ),
            "operationId": "getCheckpoint",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "origin": {"type": "string"},
                            "size": {"type": "integer"},
                            "checkpoint": {"type": "string"},
                        },
                    },
                    "the signed note",
                ),
                **_COMMON_ERRORS,
            },
        }
    },
    "/v1/audit/entries": {
        "get": {
            "summary": "A page of log entries [start, end): at most 1000, or 4 MiB of them",
            "operationId": "getEntries",
            **_AUDIT_READER,
            "parameters": [
                {"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "end", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "start": {"type": "integer"},
                            "end": {"type": "integer"},
                            "size": {"type": "integer"},
                            "next": {"type": ["integer", "null"]},
                            "entries": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "index": {"type": "integer"},
                                        "record": {"type": ["object", "null"]},
                                        "entry": {
                                            "type": "string",
                                            "description": "base64 of the exact logged bytes",
                                        },
                                    },
                                },
                            },
                        },
                    },
                    "the entries",
                ),
                **_COMMON_ERRORS,
                "400": _error(
                    "start or end is not a non-negative integer, or end < start; or"
                    " malformed HTTP (request.malformed)"
                ),
                **admin.AUTH_ERRORS,
            },
        }
    },
    "/v1/audit/proofs/{index}": {
        "get": {
            "summary": "C2SP tlog-proof evidence for one entry (checkpoint + inclusion path)",
            "operationId": "getProof",
            **_AUDIT_READER,
            "parameters": [
                {
                    "name": "index",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10**19 - 1},  # 19 digits
                }
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "index": {"type": "integer"},
                            "format": {"const": "c2sp-tlog-proof"},
                            "evidence": {"type": "string"},
                        },
                    },
                    "the evidence, verifiable offline with the node's public key",
                ),
                **admin.AUTH_ERRORS,
                **_COMMON_ERRORS,
                "503": _error(
                    "audit.not_checkpointed (under [server] public_audit): the entry was"
                    " appended after the checkpoint signed in the last second; ask again"
                    " after Retry-After. Else the store or the audit log is unavailable",
                    {
                        "Retry-After": {
                            "description": "with audit.not_checkpointed: seconds to wait",
                            "schema": {"type": "integer"},
                        }
                    },
                ),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "The process is alive",
            "operationId": "healthz",
            "responses": {
                **PROTOCOL_ERRORS,
                "200": _json(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"const": "alive"}},
                    },
                    "alive",
                ),
            },
        }
    },
    "/readyz": {
        "get": {
            "summary": "Keys and policy loaded, store and audit log reachable",
            "operationId": "readyz",
            "responses": {
                **PROTOCOL_ERRORS,
                "200": _json(
                    {
                        "type": "object",
                        "required": [
                            "status",
                            "gateway",
                            "log_size",
                            "checkpoint_size",
                            "policy_hash",
                        ],
                        "properties": {
                            "status": {"const": "ready"},
                            "gateway": {"type": "string"},
                            "log_size": {"type": "integer", "minimum": 0},
                            "checkpoint_size": {"type": "integer", "minimum": 0},
                            "policy_hash": {"type": "string"},
                        },
                    },
                    "ready",
                ),
                "503": _error("not ready, or the server is overloaded (server.overloaded)"),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                **PROTOCOL_ERRORS,
                "200": _json({"type": "object"}, "the OpenAPI 3.1 document"),
            },
        }
    },
}


def _error_schema() -> dict[str, Any]:
    codes = [*_ERROR_CODES, *forward_auth.ERROR_CODES, *admin.ERROR_CODES, *metrics.ERROR_CODES]
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": sorted(set(codes))},
                    "message": {"type": "string"},
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not change the shared one)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "execgate decision API",
                "version": "1",
                "description": "DESIGN §6 (HTTP): decisions, outcomes, forward-auth, admin, audit.",
            },
            "paths": with_head(
                {**_PATHS, **forward_auth.PATHS, **admin.PATHS, **metrics.PATHS},
                without=admin.NO_HEAD,
            ),
            "components": {
                "schemas": {
                    **_SCHEMAS,
                    **forward_auth.SCHEMAS,
                    **admin.SCHEMAS,
                    **metrics.SCHEMAS,
                    "Error": _error_schema(),
                },
                **admin.COMPONENTS,
            },
        }
    )
