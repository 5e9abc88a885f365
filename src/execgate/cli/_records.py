"""Audit log records for one line of terminal output.

A record's strings come from requests, so every field is printed with control characters
escaped: a log entry can never move the cursor or rewrite what the terminal shows.
"""

from __future__ import annotations

import json
import re
from typing import Final


def terminal_safe(text: str, *, as_json: bool = False) -> str:
    """``text`` with every character Python does not count printable escaped: controls
    (an escape sequence would move the cursor, retitle the window, clear the screen),
    format characters (direction marks such as U+202E and U+061C show a line reversed;
    zero-width and tag characters hide text), line and paragraph separators, and spaces
    other than the plain one. ``as_json``: JSON text, whose line ends are its own (its
    strings hold none) and stay; the rest is escaped as JSON reads it back (\\uXXXX, a
    surrogate pair past U+FFFF)."""
    if text.isprintable() and not _HIDDEN.search(text):
        return text
    escape, keep = (_json_escape, "\n") if as_json else (_escape, "")
    return "".join(
        c if (c.isprintable() and not _HIDDEN.match(c)) or c in keep else escape(ord(c))
        for c in text
    )


# Printable to Python, yet shown as nothing: the combining grapheme joiner, the Hangul
# fillers, the variation selectors (those past U+E0100 can carry a byte each, hidden).
_HIDDEN: Final = re.compile(
    "[\u034f\u115f\u1160\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def parse_record(entry: bytes) -> object:
    """The record as JSON, or None when the entry is not JSON at all."""
    try:
        return json.loads(entry)
    except (ValueError, RecursionError):
        return None


def cell(value: object) -> str:
    """One record field as printable text (``-`` for null)."""
    return terminal_safe("-" if value is None else str(value))


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
