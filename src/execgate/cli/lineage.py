"""``execgate lineage show``: the tree of executions around one decision.

It reads the home's audit log only (no policy, no trust store, no keys): up through the
decision's recorded parents, then down through every recorded child, each with its
artifact chain root first. A parent decided on another gateway is a stub line naming that
gateway. Every field comes from a log record, which holds what requests and tokens said,
so each is printed with control characters escaped (``_records.cell``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from execgate.cli._cascade import damaged_log
from execgate.cli._common import Commands, home_of, json_text, out, record_id, shown
from execgate.cli._records import cell
from execgate.errors import UsageError

if TYPE_CHECKING:
    from execgate.audit.query import LineageNode
    from execgate.home import GatewayConfig

__all__ = ["register"]


def _node_line(node: LineageNode, asked: str) -> str:
    if node.index is None:
        where = cell(node.gateway) if node.gateway else "another gateway"
        line = f"- {cell(node.decision_id)}  decided on gateway {where} (not in this log)"
    else:
        line = (
            f"- {cell(node.decision_id)}  {cell(node.outcome)}  log index {node.index}"
            f"  {cell(node.action)} {cell(node.resource)}"
        )
    return line + ("  <= this decision" if node.decision_id == asked else "")


def _flat(tree: LineageNode) -> list[dict[str, Any]]:
    """The tree as a list, parents before children, each naming its parent and depth
    (no nesting, so a chain of any depth prints)."""
    nodes: list[dict[str, Any]] = []
    parents: list[str] = []
    for depth, node in tree.walk():
        del parents[depth:]
        doc = node.fields()
        del doc["children"]
        nodes.append({**doc, "depth": depth, "parent": parents[-1] if parents else None})
        parents.append(node.decision_id)
    return nodes


def _show(args: argparse.Namespace) -> int:
    from execgate.audit.query import lineage_tree
    from execgate.home import load_config
    from execgate.store.sqlite import SQLiteStore

    config: GatewayConfig = load_config(home_of(args))
    store = SQLiteStore(config.store)
    try:
        with damaged_log(config.gateway_id):
            tree = lineage_tree(store, args.decision_id)
    finally:
        store.close()
    if tree is None:
        raise UsageError(
            f"no decision {shown(args.decision_id)} in the audit log of {config.gateway_id};"
            " 'execgate audit tail' lists recent decisions"
        )
    if args.json:
        doc = {"decision_id": args.decision_id, "log": config.gateway_id, "nodes": _flat(tree)}
        out(json_text(doc))
        return 0
    out(f"lineage of decision {cell(args.decision_id)} in the audit log of {config.gateway_id}")
    for depth, node in tree.walk():
        pad = "  " * depth
        out(pad + _node_line(node, args.decision_id))
        if node.index is not None:
            chain = " > ".join(cell(jti) for jti in node.chain) or "(no artifact)"
            out(f"{pad}    chain: {chain}")
    return 0


def register(commands: Commands) -> None:
    s = commands.add("lineage", "executions and their parents, from the audit log")
    group = Commands(
        s.add_subparsers(dest="lineage_command", required=True, metavar="SUBCOMMAND"),
        commands.common,
    )
    q = group.add(
        "show",
        "the tree of decisions around one: its parents, their children, each artifact chain",
    )
    q.add_argument(
        "decision_id", metavar="DECISION_ID", type=record_id, help="as decide printed it"
    )
    q.add_argument("--json", action="store_true", help="print the tree as JSON (a flat list)")
    q.set_defaults(func=_show)
