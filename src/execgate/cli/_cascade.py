"""What a revocation reaches, from the audit log: the report of ``execgate revoke
--cascade-report`` (and ``--dry-run``), in text or JSON.

The log knows only what was presented to this gateway: a descendant minted but never
presented here is denied all the same (revocation checks every link of a chain), but no
record names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from execgate.cli._common import out
from execgate.cli._records import cell
from execgate.errors import EvidenceError

if TYPE_CHECKING:
    from execgate.audit.query import Cascade
    from execgate.store.base import Store


@contextlib.contextmanager
def damaged_log(gateway_id: str) -> Iterator[None]:
    """A log entry that is not a record ends the command with one line, not a traceback."""
    try:
        yield
    except EvidenceError as exc:
        raise EvidenceError(
            f"the audit log of {gateway_id} is damaged: {exc}; run 'execgate audit export'"
            " and 'execgate audit verify' to find out how"
        ) from exc


def report(store: Store, gateway_id: str, kind: str, value: str) -> Cascade:
    from execgate.audit.query import cascade

    with damaged_log(gateway_id):
        return cascade(store, kind, value)


def to_json(found: Cascade) -> dict[str, Any]:
    return {
        "artifacts": list(found.artifacts),
        "decisions": [
            {"index": index, "decision_id": decision_id, "outcome": outcome}
            for index, decision_id, outcome in found.decisions
        ],
    }


def show(found: Cascade, gateway_id: str) -> None:
    what = f"{found.kind} {cell(found.value)}"
    if not found.decisions:
        out(f"no decision in the audit log of {gateway_id} involves {what}")
        return
    out(f"what the audit log of {gateway_id} has seen descend from {what}:")
    out(f"  artifacts ({len(found.artifacts)}, each chain root first):")
    for jti in found.artifacts:
        out(f"    {cell(jti)}")
    out(f"  decisions ({len(found.decisions)}: log index, outcome, decision id):")
    for index, decision_id, outcome in found.decisions:
        out(f"    {index:>6}  {cell(outcome):<11}  {cell(decision_id)}")
