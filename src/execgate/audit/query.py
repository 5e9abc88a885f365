"""Questions asked of the decision log: what descends from a revoked item, and the
lineage of one decision. Both read the log in batches; neither needs more than one
batch in memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from execgate.store.base import Store

__all__ = ["Cascade", "LineageNode", "cascade", "lineage_tree", "records"]

_BATCH = 4096


def records(store: Store, *, kind: str | None = "decision") -> Iterator[tuple[int, dict[str, Any]]]:
    """Every record of the log (of one kind, or all), with its index, oldest first."""
    size = store.size()
    for start in range(0, size, _BATCH):
        for item in store.entries(start, min(size, start + _BATCH)):
            record = json.loads(item.entry)
            if kind is None or record.get("kind") == kind:
                yield item.index, record


@dataclass(frozen=True, slots=True)
class Cascade:
    """What revoking ``kind``/``value`` reaches: artifacts (by jti) and decisions."""

    kind: str
    value: str
    artifacts: tuple[str, ...]
    decisions: tuple[tuple[int, str, str], ...]  # (log index, decision id, outcome)


def cascade(store: Store, kind: str, value: str) -> Cascade:
    """Every recorded decision whose artifact chain holds the revoked item, and every
    artifact at or below it on those chains."""
    if kind not in ("jti", "kid", "sub"):
        raise ValueError("kind must be jti, kid or sub")
    artifacts: dict[str, None] = {}
    decisions = []
    for index, record in records(store):
        chain = record.get("chain") or []
        if kind == "jti":
            hit = chain.index(value) if value in chain else None
        elif kind == "sub":
            subjects = record.get("chain_subjects") or []
            hit = subjects.index(value) if value in subjects else None
        else:
            hit = 0 if value in (record.get("chain_keys") or []) else None
        if hit is None:
            continue
        for jti in chain[hit:]:
            artifacts[jti] = None
        decisions.append((index, str(record["decision_id"]), str(record["outcome"])))
    return Cascade(kind, value, tuple(artifacts), tuple(decisions))


@dataclass
class LineageNode:
    decision_id: str
    index: int | None  # None: decided on another gateway (only its id is known here)
    gateway: str | None
    outcome: str | None
    action: str | None
    resource: str | None
    chain: list[str]
    children: list[LineageNode] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "index": self.index,
            "gateway": self.gateway,
            "outcome": self.outcome,
            "action": self.action,
            "resource": self.resource,
            "chain": self.chain,
            "children": [c.to_json() for c in self.children],
        }


def _node(index: int | None, record: dict[str, Any]) -> LineageNode:
    request = record.get("request") or {}
    return LineageNode(
        decision_id=str(record["decision_id"]),
        index=index,
        gateway=record.get("gateway"),
        outcome=record.get("outcome"),
        action=request.get("action"),
        resource=request.get("resource"),
        chain=list(record.get("chain") or []),
    )


def _lookup(store: Store, decision_id: str) -> tuple[int, dict[str, Any]] | None:
    found = store.find(decision_id, "decision")
    if found is None:
        return None
    record: dict[str, Any] = json.loads(found.entry)
    return found.index, record


def lineage_tree(store: Store, decision_id: str) -> LineageNode | None:
    """The tree of decisions around ``decision_id``: up through its recorded parents to
    the oldest ancestor this log knows, then down through every recorded child.

    One pass over the log collects parent links (only records that name a parent are
    kept); decisions themselves are looked up by id.
    """
    start = _lookup(store, decision_id)
    if start is None:
        return None
    children: dict[str, list[str]] = {}
    for _, record in records(store):
        parent = record.get("parent_decision")
        if parent:
            children.setdefault(str(parent), []).append(str(record["decision_id"]))
    top, seen = start, {decision_id}
    while True:
        parent = top[1].get("parent_decision")
        if not parent or parent in seen:
            return _build(top, store, children, set())
        above = _lookup(store, str(parent))
        if above is None:  # decided on another gateway: show it as a stub
            stub = LineageNode(
                str(parent), None, top[1].get("parent_gateway"), None, None, None, []
            )
            stub.children.append(_build(top, store, children, set()))
            return stub
        seen.add(str(parent))
        top = above


def _build(
    found: tuple[int, dict[str, Any]],
    store: Store,
    children: dict[str, list[str]],
    seen: set[str],
) -> LineageNode:
    index, record = found
    node = _node(index, record)
    seen.add(node.decision_id)
    for child in children.get(node.decision_id, []):
        below = _lookup(store, child)
        if child not in seen and below is not None:
            node.children.append(_build(below, store, children, seen))
    return node
