"""RFC 9162 Merkle trees: hashing, a growing log's frontier, proofs and their verification.

Pure functions, no I/O. A store appends entries through :class:`Frontier`, which hands back
every complete subtree it finishes as ``(level, index, hash)``; persisting those nodes is
enough to answer every proof later through a ``node(level, index)`` callback, where node
``(level, i)`` is the hash of the complete subtree over leaves ``[i * 2**level,
(i + 1) * 2**level)``. Hashes of incomplete right-edge subtrees are folded from complete
ones, so no node ever has to be rewritten.

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency). The
expected proof length is derived from the sizes and checked before any hashing, every hash
must be exactly 32 bytes, and every failure raises :class:`EvidenceError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from execgate.errors import EvidenceError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "NodeReader",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_at",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

# Hashers pre-fed with the domain-separation byte: copying one is cheaper than hashing a
# freshly concatenated 65-byte string (hashlib copies are thread-safe).
_LEAF_PREFIX: Final = hashlib.sha256(b"\x00")
_NODE_PREFIX: Final = hashlib.sha256(b"\x01")

NodeReader = Callable[[int, int], bytes]
"""``node(level, index)``: the stored hash of one complete subtree."""


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry)."""
    hasher = _LEAF_PREFIX.copy()
    hasher.update(entry)
    return hasher.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    hasher = _NODE_PREFIX.copy()
    hasher.update(left)
    hasher.update(right)
    return hasher.digest()


# --- the frontier of a growing log ---------------------------------------------------------


class Frontier:
    """The compact range of a log: one hash per maximal complete subtree, left to right.

    There are ``popcount(size)`` of them, the largest first; the whole tree is never held.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The subtree hashes, largest (leftmost) first."""
        return tuple(self._hashes)

    def append(self, entry: bytes) -> list[tuple[int, int, bytes]]:
        """Add the leaf for ``entry``; return the nodes this completes, leaf first.

        Each item is ``(level, index, hash)``; level 0 is the new leaf itself. A log of
        ``n`` entries emits ``2n - popcount(n)`` nodes in all, so O(1) per append amortised.
        """
        return self.append_hash(leaf_hash(entry))

    def append_hash(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Like :meth:`append`, for an already computed leaf hash."""
        if not isinstance(leaf, bytes) or len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        index, level, current = self._size, 0, leaf
        completed = [(0, index, leaf)]
        # Each trailing 1 bit of the old size is a complete subtree that the new leaf's
        # subtree now pairs with; pop it, merge, and move one level up.
        while index & 1:
            current = node_hash(self._hashes.pop(), current)
            index >>= 1
            level += 1
            completed.append((level, index, current))
        self._hashes.append(current)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """The RFC 9162 root of the log at its current size."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        root = hashes[-1]
        for i in range(len(hashes) - 2, -1, -1):
            root = node_hash(hashes[i], root)
        return root

    def to_json(self) -> dict[str, Any]:
        """``{"size": n, "hashes": [hex, ...]}``, for the store to persist."""
        return {"size": self._size, "hashes": [h.hex() for h in self._hashes]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Frontier:
        """Restore :meth:`to_json` output; anything inconsistent raises EvidenceError."""
        if not isinstance(data, Mapping) or set(data) != {"size", "hashes"}:
            raise EvidenceError("frontier: expected an object with exactly size and hashes")
        size, hexes = data["size"], data["hashes"]
        if type(size) is not int or size < 0:
            raise EvidenceError("frontier: size is not a non-negative integer")
        if not isinstance(hexes, list) or len(hexes) != size.bit_count():
            raise EvidenceError(f"frontier: a log of size {size} has {size.bit_count()} hashes")
        hashes = []
        for value in hexes:
            if not isinstance(value, str) or len(value) != 2 * HASH_SIZE or value != value.lower():
                raise EvidenceError("frontier: a hash is not 64 lowercase hex digits")
            try:
                hashes.append(bytes.fromhex(value))
            except ValueError as exc:
                raise EvidenceError("frontier: a hash is not 64 lowercase hex digits") from exc
        frontier = cls()
        frontier._size, frontier._hashes = size, hashes
        return frontier


# --- proofs from stored complete-subtree nodes ----------------------------------------------


def _split(n: int) -> int:
    """The largest power of two below ``n`` (for ``n >= 2``): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(start: int, end: int, node: NodeReader) -> bytes:
    """MTH of leaves ``[start, end)``, a subtree of RFC 9162's recursion.

    Such a range starts on a multiple of a power of two at least its width, so it splits
    into complete subtrees by the bits of its width, largest first; they fold from the right.
    """
    width = end - start
    pieces = []
    position = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            pieces.append(node(level, position >> level))
            position += 1 << level
    result = pieces[-1]
    for i in range(len(pieces) - 2, -1, -1):
        result = node_hash(pieces[i], result)
    return result


def root_at(size: int, node: NodeReader) -> bytes:
    """The root of the tree of the first ``size`` leaves, read from stored nodes."""
    if size < 0:
        raise ValueError("tree size is negative")
    return EMPTY_ROOT if size == 0 else _range_hash(0, size, node)


def inclusion_proof(index: int, size: int, node: NodeReader) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[size]), from the leaf's sibling up to the root's child."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    path = []
    start, end = 0, size
    while end - start > 1:
        middle = start + _split(end - start)
        if index < middle:
            path.append(_range_hash(middle, end, node))
            end = middle
        else:
            path.append(_range_hash(start, middle, node))
            start = middle
    path.reverse()
    return path


def consistency_proof(size1: int, size2: int, node: NodeReader) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(size1, D[size2]); empty when the sizes are equal."""
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    path = []
    start, end, m, complete = 0, size2, size1, True  # SUBPROOF(m, D[start:end], complete)
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            path.append(_range_hash(start + k, end, node))
            end = start + k
        else:
            path.append(_range_hash(start, start + k, node))
            start += k
            m -= k
            complete = False
    if not complete:
        path.append(_range_hash(start, end, node))
    path.reverse()
    return path


# --- verification ----------------------------------------------------------------------------


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise EvidenceError(f"{what} is not bytes")
    if len(value) != HASH_SIZE:
        raise EvidenceError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof(proof: Sequence[bytes], expected: int, what: str) -> None:
    if len(proof) != expected:
        raise EvidenceError(f"{what} has {len(proof)} hashes, expected {expected}")
    for i, value in enumerate(proof):
        _check_hash(value, f"{what} hash {i}")


def _check_int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise EvidenceError(f"{what} is not a non-negative integer")
    return value


def _decompose(index: int, size: int) -> tuple[int, int]:
    """(inner, border): a proof for ``index`` in ``size`` has ``inner + border`` hashes.

    The first ``inner`` hashes sit where the paths to ``index`` and to the last leaf part;
    the ``border`` ones are left siblings on the tree's right edge, one per set bit above.
    """
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (sizes and lengths checked, root not compared)."""
    index = _check_int(index, "leaf index")
    size = _check_int(size, "tree size")
    if index >= size:
        raise EvidenceError(f"leaf index {index} is not below tree size {size}")
    _check_hash(leaf_hash, "leaf hash")
    inner, border = _decompose(index, size)
    _check_proof(proof, inner + border, "inclusion proof")
    result = leaf_hash
    for i in range(inner):
        sibling = proof[i]
        result = node_hash(sibling, result) if index >> i & 1 else node_hash(result, sibling)
    for i in range(inner, inner + border):
        result = node_hash(proof[i], result)
    return result


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Return if ``proof`` shows leaf ``index`` of the tree ``(size, root)`` is ``leaf_hash``."""
    _check_hash(root, "root")
    if root_from_inclusion(leaf_hash, index, size, proof) != root:
        raise EvidenceError(
            f"inclusion proof for leaf {index} does not lead to the root of tree size {size}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Return if ``proof`` shows the tree ``(size1, root1)`` is a prefix of ``(size2, root2)``."""
    size1 = _check_int(size1, "size1")
    size2 = _check_int(size2, "size2")
    if size1 == 0:
        raise EvidenceError("a consistency proof from the empty tree is meaningless")
    if size1 > size2:
        raise EvidenceError(f"size1 {size1} is larger than size2 {size2}")
    _check_hash(root1, "root1")
    _check_hash(root2, "root2")
    if size1 == size2:
        _check_proof(proof, 0, "consistency proof between equal sizes")
        if root1 != root2:
            raise EvidenceError(f"two different roots for tree size {size1}")
        return
    # The last complete subtree of the old tree (2**shift leaves ending at leaf size1 - 1)
    # is a node of both trees; the proof is its hash (omitted when it is root1 itself)
    # followed by its inclusion path in the new tree.
    shift = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> shift
    inner, border = _decompose(index, ((size2 - 1) >> shift) + 1)
    seeded = size1 == 1 << shift
    _check_proof(proof, inner + border + (0 if seeded else 1), "consistency proof")
    offset = 0 if seeded else 1
    seed = root1 if seeded else proof[0]
    old, new = seed, seed
    for i in range(inner):
        sibling = proof[offset + i]
        if index >> i & 1:
            old = node_hash(sibling, old)
            new = node_hash(sibling, new)
        else:
            new = node_hash(new, sibling)
    for i in range(offset + inner, offset + inner + border):
        old = node_hash(proof[i], old)
        new = node_hash(proof[i], new)
    if old != root1:
        raise EvidenceError(f"consistency proof does not lead to root1 of tree size {size1}")
    if new != root2:
        raise EvidenceError(f"consistency proof does not lead to root2 of tree size {size2}")
