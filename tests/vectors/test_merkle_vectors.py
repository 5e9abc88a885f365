"""transparency-dev/merkle proof probes and RFC 6962 reference roots (../shared/vectors/merkle).

Every probe file is one case: ``wantErr: false`` must verify, ``wantErr: true`` must raise
EvidenceError. One probe is overridden on purpose, see ``_STRICTER_THAN_UPSTREAM``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Final

import pytest
from conftest import find_vectors_dir

from execgate.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    leaf_hash,
    node_hash,
    root_at,
    verify_consistency,
    verify_inclusion,
)
from execgate.errors import EvidenceError

# Upstream accepts two equal 12-byte "roots" for size1 == size2 == 1. A root is a SHA-256
# hash, so execgate rejects any hash that is not 32 bytes, even here (fail closed).
_STRICTER_THAN_UPSTREAM: Final = {
    "consistency/additional/sizes-are-equal-one-and-proof-is-empty",
}


def _probes(kind: str) -> list[str]:
    root = find_vectors_dir() / "merkle"
    return sorted(
        path.relative_to(root).with_suffix("").as_posix() for path in (root / kind).rglob("*.json")
    )


_INCLUSION: Final = _probes("inclusion")
_CONSISTENCY: Final = _probes("consistency")


def _load(vectors_dir: Path, probe: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "merkle" / f"{probe}.json").read_text())
    return data


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(data: dict[str, Any]) -> list[bytes]:
    return [_b64(item) for item in data["proof"] or []]


def _want_error(probe: str, data: dict[str, Any]) -> bool:
    return bool(data["wantErr"]) or probe in _STRICTER_THAN_UPSTREAM


def test_probe_counts() -> None:
    assert (len(_INCLUSION), len(_CONSISTENCY)) == (98, 98)


@pytest.mark.parametrize("probe", _INCLUSION)
def test_inclusion_probe(vectors_dir: Path, probe: str) -> None:
    data = _load(vectors_dir, probe)
    args = (
        _b64(data["leafHash"]),
        data["leafIdx"],
        data["treeSize"],
        _proof(data),
        _b64(data["root"]),
    )
    if _want_error(probe, data):
        with pytest.raises(EvidenceError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("probe", _CONSISTENCY)
def test_consistency_probe(vectors_dir: Path, probe: str) -> None:
    data = _load(vectors_dir, probe)
    args = (
        data["size1"],
        data["size2"],
        _proof(data),
        _b64(data["root1"]),
        _b64(data["root2"]),
    )
    if _want_error(probe, data):
        with pytest.raises(EvidenceError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_the_override_is_still_needed(vectors_dir: Path) -> None:
    for probe in _STRICTER_THAN_UPSTREAM:
        data = _load(vectors_dir, probe)
        assert data["wantErr"] is False
        assert len(_b64(data["root1"])) != 32


# --- reference.json ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "merkle/reference.json").read_text())
    return data


def test_reference_hashers(reference: dict[str, Any]) -> None:
    leaves = [bytes.fromhex(x) for x in reference["leaf_inputs_hex"]]
    levels = [
        [bytes.fromhex(x) for x in level]
        for level in reference["node_hashes_by_level_hex"]["levels"]
    ]
    assert [leaf_hash(leaf) for leaf in leaves] == levels[0]
    for level in range(1, len(levels)):
        below = levels[level - 1]
        assert levels[level] == [
            node_hash(below[2 * i], below[2 * i + 1]) for i in range(len(levels[level]))
        ]
    assert reference["root_hashes_by_tree_size_hex"]["0"] == EMPTY_ROOT.hex()


@pytest.mark.parametrize("size", range(9), ids=lambda size: f"size{size}")
def test_reference_root_via_frontier(reference: dict[str, Any], size: int) -> None:
    frontier = Frontier()
    for leaf in reference["leaf_inputs_hex"][:size]:
        frontier.append(bytes.fromhex(leaf))
    assert frontier.root().hex() == reference["root_hashes_by_tree_size_hex"][str(size)]


@pytest.mark.parametrize("size", range(9), ids=lambda size: f"size{size}")
def test_reference_root_via_stored_nodes(reference: dict[str, Any], size: int) -> None:
    levels = reference["node_hashes_by_level_hex"]["levels"]

    def node(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, "read a subtree that is not complete"
        return bytes.fromhex(levels[level][index])

    assert root_at(size, node).hex() == reference["root_hashes_by_tree_size_hex"][str(size)]
