"""Strict YAML for policy and cases files: one document, JSON types only, lines kept.

PyYAML's safe loader is used only to compose the node tree; the policy and cases
readers walk the nodes themselves so that every error can name its 1-based line. The
composer refuses what a reviewed configuration file has no use for: anchors and aliases
(which also rule out "billion laughs" expansion), nesting deeper than ``MAX_DEPTH``,
duplicate mapping keys, non-string keys, and scalars that are not JSON (dates, binary,
NaN, infinities, and the YAML 1.1 readings of numbers and booleans a reader would not
expect: ``010`` as 8, ``1:00:00`` as 3600, ``yes`` as true).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Final, NamedTuple

import yaml
from yaml.constructor import SafeConstructor

from execgate.errors import PolicyError
from execgate.keyfile import NotRegular, read_regular

# A number as JSON writes it: what a plain YAML number must look like to be taken as one.
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")

MAX_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32


class Invalid(Exception):
    """A document or one of its values is refused; the caller adds the rule or case."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class Entry(NamedTuple):
    """One mapping member: the line of its key and its value node."""

    line: int
    node: yaml.Node


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Composer(yaml.SafeLoader):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise Invalid("YAML anchors and aliases are not allowed", event.start_mark.line + 1)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise Invalid(f"nested deeper than {MAX_DEPTH} levels", event.start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_text(path: str | Path) -> str:
    """Read a UTF-8 file of at most ``MAX_BYTES``; raise ``PolicyError`` otherwise."""
    try:
        data = read_regular(Path(path), limit=MAX_BYTES)[0]
    except NotRegular as exc:
        raise PolicyError(f"cannot read {str(path)!r}: it {exc}") from exc
    except OSError as exc:
        raise PolicyError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{str(path)!r} is not UTF-8 text") from exc


def compose(text: str) -> yaml.Node:
    """Compose exactly one YAML document into its node tree."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise Invalid(f"the document is larger than {MAX_BYTES} bytes", None)
    loader = None
    try:
        loader = _Composer(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise Invalid(f"not valid YAML: {detail}", line) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise Invalid(
            f"not valid YAML: character #x{exc.character:04x} is not allowed", line
        ) from exc
    except yaml.YAMLError as exc:
        raise Invalid(f"not valid YAML: {exc}", None) from exc
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise Invalid("the document is empty", 1)
    return node


def mapping(node: yaml.Node, what: str) -> dict[str, Entry]:
    """The members of a mapping node, refusing duplicate and non-string keys."""
    if not isinstance(node, yaml.MappingNode):
        raise Invalid(f"{what} must be a mapping", line_of(node))
    out: dict[str, Entry] = {}
    for key_node, value_node in node.value:
        key = scalar(key_node)
        if not isinstance(key, str):
            raise Invalid(f"{what} has a non-string key {key!r}", line_of(key_node))
        if key in out:
            raise Invalid(
                f"duplicate key {key!r} in {what} (first on line {out[key].line})",
                line_of(key_node),
            )
        out[key] = Entry(line_of(key_node), value_node)
    return out


def peek_name(node: yaml.Node) -> str | None:
    """The raw ``name`` of a mapping node, unvalidated: only for labelling an error."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == "name" and isinstance(value_node.value, str):
                return value_node.value
    return None


def check_keys(entries: dict[str, Entry], allowed: frozenset[str], what: str) -> None:
    for key, entry in entries.items():
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise Invalid(f"unknown key {key!r} in {what} (expected: {expected})", entry.line)


def scalar(node: yaml.Node) -> str | int | float | bool | None:
    """A scalar node as a JSON scalar; anything else is refused."""
    if not isinstance(node, yaml.ScalarNode):
        raise Invalid("expected a single value, not a mapping or a list", line_of(node))
    if node.tag == "tag:yaml.org,2002:merge":
        raise Invalid("YAML merge keys ('<<') are not allowed: write the keys out", line_of(node))
    try:
        value = SafeConstructor().construct_object(node)
    except yaml.YAMLError as exc:
        raise Invalid(f"unusable value: {getattr(exc, 'problem', exc)}", line_of(node)) from exc
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        # what the constructor's conversions raise: a date 2001-13-45, '!!int abc',
        # '!!bool maybe'
        raise Invalid(
            f"unusable value {node.value!r} ({type(exc).__name__}: {exc}): quote it to make it"
            " a string",
            line_of(node),
        ) from exc
    if isinstance(value, bool) and node.value not in ("true", "false"):
        raise Invalid(
            f"{node.value!r} is a YAML 1.1 boolean: write true or false, or quote it",
            line_of(node),
        )
    finite = type(value) is int or (type(value) is float and math.isfinite(value))
    if finite and not _JSON_NUMBER.match(node.value):
        # YAML 1.1 reads 010 as 8, 0x10 as 16, 1_000 as 1000 and 1:00:00 as 3600
        raise Invalid(
            f"{node.value!r} is read as {value!r} (YAML 1.1): write the number in plain"
            " decimal, or quote it to make it a string",
            line_of(node),
        )
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise Invalid(
        f"{node.value!r} is not a JSON value (quote it to make it a string)", line_of(node)
    )


def to_json(node: yaml.Node) -> Any:
    """A whole node tree as plain JSON values (dict, list, str, int, float, bool, None)."""
    if isinstance(node, yaml.MappingNode):
        return {key: to_json(entry.node) for key, entry in mapping(node, "a mapping").items()}
    if isinstance(node, yaml.SequenceNode):
        return [to_json(item) for item in node.value]
    return scalar(node)


def string(node: yaml.Node, what: str, *, max_len: int = 4096) -> str:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not value:
        raise Invalid(f"{what} must be a non-empty string", line_of(node))
    if len(value) > max_len:
        raise Invalid(f"{what} must be at most {max_len} characters", line_of(node))
    return value


def integer(node: yaml.Node, what: str, *, low: int, high: int) -> int:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if type(value) is not int or not low <= value <= high:
        raise Invalid(f"{what} must be an integer from {low} to {high}", line_of(node))
    return value


def sequence(node: yaml.Node, what: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise Invalid(f"{what} must be a list", line_of(node))
    return list(node.value)
