"""Audit log records for one line of terminal output.

A record's strings come from requests, so every field is printed with control characters
escaped: a log entry can never move the cursor or rewrite what the terminal shows.
"""

from __future__ import annotations

import json
import re
from typing import Final

# Controls, and the marks that reorder or hide text (a U+202E in a request's argument
# would show an approver its line reversed).
_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def parse_record(entry: bytes) -> object:
    """The record as JSON, or None when the entry is not JSON at all."""
    try:
        return json.loads(entry)
    except (ValueError, RecursionError):
        return None


def cell(value: object) -> str:
    """One record field as printable text (``-`` for null)."""
    text = "-" if value is None else str(value)
    return _UNPRINTABLE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def summary(record: object) -> tuple[str, str, str, str]:
    """(kind, outcome or status, decision id, what) of one log record."""
    if not isinstance(record, dict):
        return "?", "?", "-", "(not a JSON record)"
    kind = record.get("kind")
    if kind == "outcome":
        status, what = record.get("status"), f"of index {cell(record.get('decision_index'))}"
        if record.get("exit_code") is not None:
            what += f", exit code {cell(record['exit_code'])}"
    else:
        status, what = record.get("outcome"), "-"
        request = record.get("request")
        if isinstance(request, dict):
            what = f"{cell(request.get('action'))} {cell(request.get('resource'))}"
        if record.get("route"):
            what += f" -> {cell(record['route'])}"
    return cell(kind), cell(status), cell(record.get("decision_id")), what
