"""Every operation of ``/openapi.json``, fuzzed by schemathesis against a running
``execgate serve``: no 5xx, every status and content type documented, every body valid
against its documented schema, and (unless excluded below, with the reason) schema-valid
input accepted.

One server for the module; each operation gets a fixed number of derandomized examples,
so a failure reproduces. Admin operations are sent without a credential (their 401 path
is what is fuzzed; the authenticated paths have their own tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from gatekit import Kit, make_kit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import positive_data_acceptance
from test_server_process import Server, serve

from execgate.server.openapi import openapi_document

OPERATIONS = sorted(
    (method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item
)
EXAMPLES = 30

# Schema-valid input the server rightly refuses, because JSON Schema cannot say why.
NOT_EXPRESSIBLE: dict[tuple[str, str], tuple[list[CheckFunction], str]] = {
    ("POST", "/v1/decisions"): (
        [positive_data_acceptance],
        "args may hold any JSON, but only what has a canonical form (RFC 8785: integers"
        " within +-(2**53 - 1), nesting <= 32); integer vs. float is lexical in JSON and"
        " JSON Schema cannot tell them apart",
    ),
    ("POST", "/v1/decisions/{decision_id}/outcome"): (
        [positive_data_acceptance],
        "exit_code must be an integer literal: JSON Schema takes -1178.0 for an integer",
    ),
    ("GET", "/v1/audit/entries"): (
        [positive_data_acceptance],
        "end below start is refused (400); the schema cannot relate two parameters",
    ),
    ("GET", "/v1/audit/consistency"): (
        [positive_data_acceptance],
        "first above second is refused (400); the schema cannot relate two parameters",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    kit: Kit = make_kit(tmp_path_factory.mktemp("schema"))
    kit.clock.t = time.time()
    try:
        with serve(kit) as running:
            yield running
    finally:
        kit.close()


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_conforms_to_its_schema(server: Server, method: str, path: str) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operation = schema[path][method]
    # A HEAD is its GET without the body: refused where the GET is.
    excluded, _why = NOT_EXPRESSIBLE.get(("GET" if method == "HEAD" else method, path), ([], ""))
    calls: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def fuzz(data: Any) -> None:
        case = data.draw(operation.as_strategy())
        response = case.call_and_validate(base_url=server.url, excluded_checks=excluded)
        calls.append(response.status_code)

    fuzz()
    assert calls, f"schemathesis sent nothing to {method} {path}"


def test_the_server_serves_the_document_it_describes(server: Server) -> None:
    served = httpx.get(server.url + "/openapi.json", timeout=10.0).json()
    assert served == openapi_document()
