"""Questions asked of the decision log: what descends from a revoked item, and the
lineage of one decision. Both read the log in batches; neither holds more than one batch
of it in memory, beyond what it answers. A log entry that is not a JSON record raises
``EvidenceError`` (the log is damaged: ``audit verify`` finds out how)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from execgate.errors import EvidenceError
from execgate.store.base import REVOCATION_KINDS, LogEntry, Store

__all__ = ["Cascade", "LineageNode", "cascade", "lineage_tree", "records"]

# Entries read at a time: a record holds a request of up to 1 MiB, so a batch holds at
# most about 64 MiB, whatever the log's size.
_BATCH = 64


def records(store: Store, *, kind: str | None = "decision") -> Iterator[tuple[int, dict[str, Any]]]:
    """Every record of the log (of one kind, or all), with its index, oldest first."""
    size = store.size()
    for start in range(0, size, _BATCH):
        for item in store.entries(start, min(size, start + _BATCH)):
            record = _parse(item)
            if kind is None or record.get("kind") == kind:
                yield item.index, record


def _parse(item: LogEntry) -> dict[str, Any]:
    try:
        record = json.loads(item.entry)
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        raise EvidenceError(f"log entry {item.index} is not a JSON record")
    if record.get("kind") == "decision" and not isinstance(record.get("decision_id"), str):
        raise EvidenceError(f"log entry {item.index} is a decision record without a decision id")
    return record


@dataclass(frozen=True, slots=True)
class Cascade:
    """What revoking ``kind``/``value`` reaches: artifacts (by jti) and decisions."""

    kind: str
    value: str
    artifacts: tuple[str, ...]
    decisions: tuple[tuple[int, str, str], ...]  # (log index, decision id, outcome)


def cascade(store: Store, kind: str, value: str) -> Cascade:
    """Every recorded decision whose artifact chain holds the revoked item, or that stood
    on it otherwise (its ``grounds``: an attester's or a parent receipt's key, an
    approver's key or name), and every artifact at or below it on those chains (root
    first).

    Each record lists its chain's links (jti, signing key, subject, bound key), so the
    first link a revocation reaches is known exactly: a jti or subject names its link, and
    an exact token its digest; a key reaches the first link it signed or binds.
    """
    if kind not in REVOCATION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(REVOCATION_KINDS)}")
    artifacts: dict[str, None] = {}
    decisions = []
    for index, record in records(store):
        links = _links(record.get("chain_links"))
        at = next((i for i, link in enumerate(links) if _reaches(link, kind, value)), None)
        if at is not None:
            artifacts.update(dict.fromkeys(link["jti"] for link in links[at:]))
        elif not _grounded(record.get("grounds"), kind, value):
            continue
        decisions.append((index, str(record.get("decision_id")), str(record.get("outcome"))))
    return Cascade(kind, value, tuple(artifacts), tuple(decisions))


def _reaches(link: dict[str, str], kind: str, value: str) -> bool:
    if kind == "kid":
        return value in (link["kid"], link["jkt"])
    if kind == "artifact":
        return link.get("digest") == value
    return link["sub" if kind == "sub" else "jti"] == value


def _grounded(grounds: object, kind: str, value: str) -> bool:
    """Whether a record's ``grounds`` name ``kind``/``value`` (records written before
    they were kept have none)."""
    return isinstance(grounds, list) and any(
        isinstance(g, dict) and g.get("kind") == kind and g.get("value") == value for g in grounds
    )


def _strings(value: object) -> list[str]:
    """A list of strings from a record, or nothing."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return []


def _links(value: object) -> list[dict[str, str]]:
    """The chain links of a record, or nothing (a record of another shape names no
    artifact; ``audit verify`` is what judges the log itself)."""
    if not isinstance(value, list):
        return []
    links = []
    for link in value:
        if not isinstance(link, dict) or not all(
            isinstance(link.get(k), str) for k in ("jti", "kid", "sub", "jkt")
        ):
            return []
        links.append(link)
    return links


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

    def fields(self) -> dict[str, Any]:
        """This node alone, as JSON (``children`` empty)."""
        return {
            "decision_id": self.decision_id,
            "index": self.index,
            "gateway": self.gateway,
            "outcome": self.outcome,
            "action": self.action,
            "resource": self.resource,
            "chain": list(self.chain),
            "children": [],
        }

    def to_json(self) -> dict[str, Any]:
        """The whole tree as nested JSON (built without recursion)."""
        top = self.fields()
        stack = [(self, top)]
        while stack:
            node, doc = stack.pop()
            for child in node.children:
                child_doc = child.fields()
                doc["children"].append(child_doc)
                stack.append((child, child_doc))
        return top

    def walk(self) -> Iterator[tuple[int, LineageNode]]:
        """(depth, node) for every node of the tree, parents before their children, in
        log order (without recursion)."""
        stack: list[tuple[int, LineageNode]] = [(0, self)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, child) for child in reversed(node.children))


def _node(index: int | None, record: dict[str, Any]) -> LineageNode:
    request = record.get("request")
    if not isinstance(request, dict):  # a request refused before it parsed
        request = {}
    return LineageNode(
        decision_id=str(record["decision_id"]),
        index=index,
        gateway=record.get("gateway"),
        outcome=record.get("outcome"),
        action=request.get("action"),
        resource=request.get("resource"),
        chain=_strings(record.get("chain")),
    )


def _lookup(store: Store, decision_id: str) -> tuple[int, dict[str, Any]] | None:
    found = store.find(decision_id, "decision")
    if found is None:
        return None
    return found.index, _parse(found)


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
        if above is None:  # decided on another gateway: a stub over every child it has here
            stub = LineageNode(
                str(parent), None, top[1].get("parent_gateway"), None, None, None, []
            )
            built: set[str] = set()
            for child in children.get(str(parent), []):
                below = _lookup(store, child)
                if child not in built and below is not None:
                    stub.children.append(_build(below, store, children, built))
            return stub
        seen.add(str(parent))
        top = above


def _build(
    found: tuple[int, dict[str, Any]],
    store: Store,
    children: dict[str, list[str]],
    seen: set[str],
) -> LineageNode:
    """The subtree of one decision, without recursion: a chain of executions may be far
    deeper than Python's stack."""
    root = _node(*found)
    seen.add(root.decision_id)
    stack = [root]
    while stack:
        node = stack.pop()
        for child in children.get(node.decision_id, []):
            below = _lookup(store, child)
            if child in seen or below is None:
                continue
            seen.add(child)
            built = _node(*below)
            node.children.append(built)
            stack.append(built)
    return root
