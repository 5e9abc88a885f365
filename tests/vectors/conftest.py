"""Locate the shared test vectors and turn Wycheproof files into parametrized cases.

The vectors live outside the repository (``../shared/vectors``) or wherever
``EXECGATE_VECTORS`` points. A missing folder fails the run: vector tests that silently
skip would let a broken checkout look green.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# Fixture name -> Wycheproof file. A test that asks for the fixture runs once per case.
_WYCHEPROOF_CASES = {
    "ed25519_case": "wycheproof/ed25519_test.json",
    "jws_case": "wycheproof/json_web_signature_test.json",
    "jwk_case": "wycheproof/json_web_key_test.json",
}


def find_vectors_dir() -> Path:
    configured = os.environ.get("EXECGATE_VECTORS")
    repo = Path(__file__).resolve().parents[2]
    path = Path(configured) if configured else repo.parent / "shared" / "vectors"
    if not path.is_dir():
        pytest.fail(
            f"test vectors not found at {path}; set EXECGATE_VECTORS to the vectors folder",
            pytrace=False,
        )
    return path


def load_vector(relative: str) -> Any:
    return json.loads((find_vectors_dir() / relative).read_text(encoding="utf-8"))


def wycheproof_cases(relative: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (group, test) pair of a Wycheproof file, checked against its declared count."""
    data = load_vector(relative)
    cases = [(group, test) for group in data["testGroups"] for test in group["tests"]]
    if len(cases) != data["numberOfTests"]:
        pytest.fail(f"{relative}: {len(cases)} cases, header says {data['numberOfTests']}")
    return cases


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return find_vectors_dir()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, relative in _WYCHEPROOF_CASES.items():
        if name in metafunc.fixturenames:
            cases = wycheproof_cases(relative)
            ids = [f"tcId{test['tcId']}" for _, test in cases]
            metafunc.parametrize(name, cases, ids=ids)
