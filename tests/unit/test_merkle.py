"""Merkle algebra: proofs from stored nodes verify against an independent RFC 9162 MTH.

One log of 3000 leaves is built once per module through ``Frontier`` into a dict-backed
node store; hypothesis then samples indices and sizes of its prefixes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execgate.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_at,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from execgate.errors import EvidenceError

N: Final = 3000
ENTRIES: Final = [f"entry {i}".encode() for i in range(N)]
LEAVES: Final = [hashlib.sha256(b"\x00" + entry).digest() for entry in ENTRIES]


@cache
def mth(start: int, end: int) -> bytes:
    """RFC 9162 §2.1.1 MTH(D[start:end]), written out independently of the module."""
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return LEAVES[start]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(start, start + k) + mth(start + k, end)).digest()


def _build() -> tuple[dict[tuple[int, int], bytes], list[list[tuple[int, int, bytes]]]]:
    frontier = Frontier()
    store: dict[tuple[int, int], bytes] = {}
    emitted = []
    for entry in ENTRIES:
        nodes = frontier.append(entry)
        emitted.append(nodes)
        for level, index, value in nodes:
            assert (level, index) not in store, "a node was emitted twice"
            store[level, index] = value
    return store, emitted


STORE, EMITTED = _build()


def reader(size: int, calls: list[int] | None = None) -> Callable[[int, int], bytes]:
    """A node callback over the first ``size`` leaves that refuses incomplete subtrees."""

    def node(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, f"node ({level}, {index}) is not complete"
        if calls is not None:
            calls.append(1)
        return STORE[level, index]

    return node


def flip(value: bytes, bit: int) -> bytes:
    data = bytearray(value)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


sizes = st.integers(min_value=1, max_value=N)
bits = st.integers(min_value=0, max_value=255)


@st.composite
def index_and_size(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes)
    return draw(st.integers(min_value=0, max_value=size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    size2 = draw(sizes)
    return draw(st.integers(min_value=1, max_value=size2)), size2


# --- hashing and the frontier ------------------------------------------------------------


def test_hashers_follow_rfc_9162() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"l" * 32, b"r" * 32) == hashlib.sha256(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    )
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


def test_frontier_emits_every_complete_node_once_and_right() -> None:
    complete = {(level, i) for level in range(12) for i in range(N >> level)}
    assert set(STORE) == complete
    assert sum(len(nodes) for nodes in EMITTED) == len(complete) == 2 * N - N.bit_count()
    for (level, index), value in STORE.items():
        assert value == mth(index << level, (index + 1) << level)


def test_frontier_append_is_amortised_constant() -> None:
    for count in range(1, N + 1):
        assert sum(len(nodes) for nodes in EMITTED[:count]) <= 2 * count
    for size, nodes in enumerate(EMITTED):
        # The new leaf, then one merge per trailing 1 bit of the old size.
        assert len(nodes) == 1 + (size ^ (size + 1)).bit_length() - 1
        assert nodes[0] == (0, size, LEAVES[size])


def test_frontier_root_and_state_at_every_size() -> None:
    frontier = Frontier()
    assert (frontier.size, frontier.root(), frontier.hashes) == (0, EMPTY_ROOT, ())
    for size, entry in enumerate(ENTRIES[:600], start=1):
        frontier.append(entry)
        assert frontier.root() == mth(0, size)
        assert frontier.size == size
        assert len(frontier.hashes) == size.bit_count()


def test_frontier_json_round_trip_continues_the_same_log() -> None:
    frontier = Frontier()
    for entry in ENTRIES[:777]:
        frontier.append(entry)
    restored = Frontier.from_json(frontier.to_json())
    assert restored.to_json() == frontier.to_json()
    for entry in ENTRIES[777:1000]:
        assert restored.append(entry) == frontier.append(entry)
    assert restored.root() == frontier.root() == mth(0, 1000)


@pytest.mark.parametrize(
    "data",
    [
        {"size": 3, "hashes": ["00" * 32]},
        {"size": -1, "hashes": []},
        {"size": True, "hashes": ["00" * 32]},
        {"size": 1, "hashes": ["00" * 31]},
        {"size": 1, "hashes": ["AA" * 32]},
        {"size": 1, "hashes": ["zz" * 32]},
        {"size": 0, "hashes": [], "extra": 1},
        {"hashes": []},
    ],
)
def test_frontier_from_json_rejects_inconsistent_state(data: dict[str, object]) -> None:
    with pytest.raises(EvidenceError, match="frontier"):
        Frontier.from_json(data)


def test_frontier_rejects_a_leaf_hash_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Frontier().append_hash(b"\x00" * 31)


@given(size=st.integers(min_value=0, max_value=N))
def test_root_at_matches_the_independent_mth(size: int) -> None:
    calls: list[int] = []
    assert root_at(size, reader(size, calls)) == mth(0, size)
    assert len(calls) == size.bit_count()


# --- inclusion ---------------------------------------------------------------------------


@given(index_and_size())
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    index, size = case
    calls: list[int] = []
    proof = inclusion_proof(index, size, reader(size, calls))
    verify_inclusion(LEAVES[index], index, size, proof, mth(0, size))
    assert root_from_inclusion(LEAVES[index], index, size, proof) == mth(0, size)
    assert len(calls) <= size.bit_length() ** 2


@given(index_and_size(), st.data())
def test_any_bit_flip_breaks_an_inclusion_proof(case: tuple[int, int], data: st.DataObject) -> None:
    index, size = case
    proof = inclusion_proof(index, size, reader(size))
    leaf, root = LEAVES[index], mth(0, size)
    target = data.draw(st.integers(min_value=-2, max_value=len(proof) - 1), label="target")
    bit = data.draw(bits, label="bit")
    if target == -2:
        leaf = flip(leaf, bit)
    elif target == -1:
        root = flip(root, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(EvidenceError):
        verify_inclusion(leaf, index, size, proof, root)


@given(index_and_size())
def test_truncated_or_extended_inclusion_proofs_fail(case: tuple[int, int]) -> None:
    index, size = case
    proof = inclusion_proof(index, size, reader(size))
    root = mth(0, size)
    if proof:
        with pytest.raises(EvidenceError, match="hashes, expected"):
            verify_inclusion(LEAVES[index], index, size, proof[:-1], root)
    with pytest.raises(EvidenceError, match="hashes, expected"):
        verify_inclusion(LEAVES[index], index, size, [*proof, proof[0] if proof else root], root)


def test_every_bit_of_one_inclusion_proof_matters() -> None:
    index, size = 1234, 2999
    proof = inclusion_proof(index, size, reader(size))
    root = mth(0, size)
    verify_inclusion(LEAVES[index], index, size, proof, root)
    for position in range(len(proof)):
        for bit in range(256):
            broken = list(proof)
            broken[position] = flip(proof[position], bit)
            with pytest.raises(EvidenceError, match="does not lead to the root"):
                verify_inclusion(LEAVES[index], index, size, broken, root)


@pytest.mark.parametrize(
    ("index", "size", "message"),
    [(5, 5, "not below tree size"), (0, 0, "not below tree size"), (-1, 5, "non-negative")],
)
def test_inclusion_index_out_of_range(index: int, size: int, message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        verify_inclusion(LEAVES[0], index, size, [], EMPTY_ROOT)


def test_inclusion_rejects_hashes_of_the_wrong_size() -> None:
    proof = inclusion_proof(3, 8, reader(8))
    with pytest.raises(EvidenceError, match="leaf hash is 33 bytes"):
        verify_inclusion(LEAVES[3] + b"\x00", 3, 8, proof, mth(0, 8))
    with pytest.raises(EvidenceError, match="root is 31 bytes"):
        verify_inclusion(LEAVES[3], 3, 8, proof, mth(0, 8)[:31])
    with pytest.raises(EvidenceError, match="inclusion proof hash 1 is 0 bytes"):
        verify_inclusion(LEAVES[3], 3, 8, [proof[0], b"", proof[2]], mth(0, 8))


def test_proof_generation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_proof(8, 8, reader(8))
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(0, 8, reader(8))
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(9, 8, reader(8))


# --- consistency -------------------------------------------------------------------------


@given(two_sizes())
def test_every_consistency_proof_verifies(case: tuple[int, int]) -> None:
    size1, size2 = case
    calls: list[int] = []
    proof = consistency_proof(size1, size2, reader(size2, calls))
    verify_consistency(size1, size2, proof, mth(0, size1), mth(0, size2))
    assert len(calls) <= size2.bit_length() ** 2
    if size1 == size2:
        assert proof == []


@given(two_sizes(), st.data())
def test_any_bit_flip_breaks_a_consistency_proof(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size1, size2 = case
    proof = consistency_proof(size1, size2, reader(size2))
    root1, root2 = mth(0, size1), mth(0, size2)
    target = data.draw(st.integers(min_value=-2, max_value=len(proof) - 1), label="target")
    bit = data.draw(bits, label="bit")
    if target == -2:
        root1 = flip(root1, bit)
    elif target == -1:
        root2 = flip(root2, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(EvidenceError):
        verify_consistency(size1, size2, proof, root1, root2)


@given(two_sizes())
def test_truncated_or_extended_consistency_proofs_fail(case: tuple[int, int]) -> None:
    size1, size2 = case
    proof = consistency_proof(size1, size2, reader(size2))
    root1, root2 = mth(0, size1), mth(0, size2)
    if proof:
        with pytest.raises(EvidenceError, match="hashes, expected"):
            verify_consistency(size1, size2, proof[:-1], root1, root2)
    with pytest.raises(EvidenceError, match="hashes, expected"):
        verify_consistency(size1, size2, [*proof, root1], root1, root2)


@settings(max_examples=50)
@given(two_sizes())
def test_a_proof_between_other_sizes_fails(case: tuple[int, int]) -> None:
    size1, size2 = case
    if size1 == size2 or size2 == size1 + 1:
        return
    proof = consistency_proof(size1 + 1, size2, reader(size2))
    with pytest.raises(EvidenceError):
        verify_consistency(size1, size2, proof, mth(0, size1), mth(0, size2))


@pytest.mark.parametrize(
    ("size1", "size2", "message"),
    [
        (0, 5, "from the empty tree is meaningless"),
        (0, 0, "from the empty tree is meaningless"),
        (6, 5, "larger than size2"),
    ],
)
def test_consistency_size_errors(size1: int, size2: int, message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        verify_consistency(size1, size2, [], EMPTY_ROOT, EMPTY_ROOT)


def test_consistency_between_equal_sizes() -> None:
    root = mth(0, 7)
    verify_consistency(7, 7, [], root, root)
    with pytest.raises(EvidenceError, match="two different roots"):
        verify_consistency(7, 7, [], root, mth(0, 6))
    with pytest.raises(EvidenceError, match="has 1 hashes, expected 0"):
        verify_consistency(7, 7, [root], root, root)
    with pytest.raises(EvidenceError, match="root1 is 12 bytes"):
        verify_consistency(1, 1, [], b"don't care 2", b"don't care 2")
    with pytest.raises(EvidenceError, match="root2 is 31 bytes"):
        verify_consistency(1, 1, [], LEAVES[0], LEAVES[0][:31])
