"""Tampering with the audit log is caught offline, and the report names where.

One real gateway home (``auditkit.make_log``: 48 records, denials and outcomes included,
a signed checkpoint every 5 entries) is exported with ``execgate audit export``; each
test damages the log, in the SQLite file itself (append-only triggers dropped first, as
an intruder with the file would) or in the export, and runs ``execgate audit verify``
with only the node's public key. Every damage must exit 1 with one NOT VERIFIED line
naming the damaged index or a range, at most one checkpoint interval wide, holding it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from auditkit import Log, Run, cli, make_log

from execgate.audit.checkpoint import Checkpoint, sign_checkpoint
from execgate.audit.merkle import Frontier
from execgate.audit.note import Signer, parse_unverified
from execgate.jose import PrivateKey, canonical_json

EVERY = 5
_TABLES = ("audit_log", "merkle_nodes", "checkpoints")  # [audit] checkpoint_every of the home
_SPAN = re.compile(r"(\d+)\.\.(\d+)|entry (\d+)|index (\d+)")


@dataclass(frozen=True)
class Built:
    log: Log
    lines: tuple[str, ...]  # the untouched export, one JSON object a line (with "\n")
    live: Path  # a checkpoint of the whole log, as `audit checkpoint` printed it
    size: int

    def at(self, index: int) -> int:
        """The position in ``lines`` of entry ``index``."""
        return next(
            i for i, line in enumerate(self.lines) if json.loads(line).get("index") == index
        )

    def checkpoint_at(self, size: int) -> int:
        """The position in ``lines`` of the checkpoint of ``size``."""
        for i, line in enumerate(self.lines):
            item = json.loads(line)
            if "checkpoint" in item and _size(item["checkpoint"]) == size:
                return i
        raise AssertionError(f"no checkpoint of size {size}")


def _size(note: str) -> int:
    return Checkpoint.parse(parse_unverified(note).text).size


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("tamper")
    log = make_log(base, checkpoint_every=EVERY)
    assert cli("--home", log.home, "audit", "export", base / "good.jsonl").code == 0
    assert cli("--home", log.home, "audit", "checkpoint", "-o", base / "live.note").code == 0
    lines = tuple((base / "good.jsonl").read_text().splitlines(keepends=True))
    size = sum(1 for line in lines if "index" in json.loads(line))
    assert size == 48
    return Built(log, lines, base / "live.note", size)


@pytest.fixture
def verify(built: Built, tmp_path: Path) -> Callable[..., Run]:
    """``verify(lines, *flags)``: write an export and run `execgate audit verify` on it."""

    def run(lines: list[str] | tuple[str, ...], *flags: str | Path) -> Run:
        path = tmp_path / "export.jsonl"
        path.write_text("".join(lines))
        return cli("audit", "verify", path, "--key", built.log.pub, *flags)

    return run


def spans(reason: str) -> list[tuple[int, int]]:
    found = []
    for match in _SPAN.finditer(reason):
        numbers = [int(g) for g in match.groups() if g is not None]
        found.append((numbers[0], numbers[-1]))
    return found


def assert_names(reason: str, index: int) -> None:
    """The reason names ``index``, or a range holding it about one interval wide."""
    assert any(a <= index <= b and b - a <= EVERY for a, b in spans(reason)), (index, reason)


def _tampered(value: Any) -> Any:
    if value is None:
        return "x"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    assert isinstance(value, dict)
    return {**value, "x": 1}


def _edits(built: Built) -> Iterator[tuple[int, str, bytes]]:
    """(index, field, edited entry): every field of a decision and of an outcome record,
    each in a different place in the log, and one nested field."""
    records = [json.loads(_entry(built.lines[built.at(i)])) for i in range(built.size)]
    decisions = [i for i, r in enumerate(records) if r["kind"] == "decision"]
    outcomes = [i for i, r in enumerate(records) if r["kind"] == "outcome"]
    for n, name in enumerate(sorted(records[decisions[0]])):
        index = decisions[n * 7 % len(decisions)]
        edited = {**records[index], name: _tampered(records[index][name])}
        yield index, name, canonical_json(edited)
    for n, name in enumerate(sorted(records[outcomes[0]])):
        index = outcomes[n % len(outcomes)]
        edited = {**records[index], name: _tampered(records[index][name])}
        yield index, name, canonical_json(edited)
    record = records[decisions[3]]
    nested = {**record, "request": {**record["request"], "args": {"amount": 10**6}}}
    yield decisions[3], "request.args.amount", canonical_json(nested)


def _entry(line: str) -> bytes:
    return base64.b64decode(json.loads(line)["entry"])


def _line(index: int, entry: bytes) -> str:
    return json.dumps({"index": index, "entry": base64.b64encode(entry).decode()}) + "\n"


def _db(home: Path) -> sqlite3.Connection:
    """The store, opened as an intruder would: the append-only triggers dropped (opening
    the store re-creates them, so this is done again before every change)."""
    conn = sqlite3.connect(home / "state.db", isolation_level=None)
    for table, change in itertools.product(_TABLES, ("update", "delete")):
        conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_{change}")
    return conn


def _export(home: Path, path: Path) -> list[str]:
    assert cli("--home", home, "audit", "export", path).code == 0
    return path.read_text().splitlines(keepends=True)


@pytest.fixture
def home(built: Built, tmp_path: Path) -> Path:
    """A copy of the built home, to damage."""
    copy = tmp_path / "home"
    shutil.copytree(built.log.home, copy)
    return copy


# -- the baseline -------------------------------------------------------------------------


def test_an_untouched_export_verifies(built: Built, verify: Callable[..., Run]) -> None:
    result = verify(built.lines)
    assert result.code == 0, result
    assert result.out.startswith("VERIFIED: log gw-test, 48 entries, 10 signed checkpoints")
    result = verify(built.lines, "--checkpoint", built.live)
    assert result.code == 0, result
    assert f"holds the log of --checkpoint {built.live} (size 48) unchanged" in result.out


def test_a_re_export_of_the_untouched_store_verifies(
    home: Path, tmp_path: Path, verify: Callable[..., Run]
) -> None:
    assert verify(_export(home, tmp_path / "again.jsonl")).code == 0


# -- editing a stored record ----------------------------------------------------------------


def test_editing_any_field_in_the_sqlite_file_is_caught(
    built: Built, home: Path, tmp_path: Path, verify: Callable[..., Run]
) -> None:
    seen = set()
    for index, name, edited in _edits(built):
        with contextlib.closing(_db(home)) as conn:
            (original,) = conn.execute("SELECT entry FROM audit_log WHERE idx = ?", (index,))
            conn.execute("UPDATE audit_log SET entry = ? WHERE idx = ?", (edited, index))
        reason = verify(_export(home, tmp_path / "x.jsonl")).not_verified()
        assert_names(reason, index)
        assert "do not match the signed checkpoint" in reason, (name, reason)
        with contextlib.closing(_db(home)) as conn:
            conn.execute("UPDATE audit_log SET entry = ? WHERE idx = ?", (original[0], index))
        seen.add(name)
    assert {"decision_id", "outcome", "reasons", "request", "status", "exit_code"} <= seen
    assert verify(_export(home, tmp_path / "x.jsonl")).code == 0  # restored: verifies again


def test_editing_any_field_in_an_export_line_is_caught(
    built: Built, verify: Callable[..., Run]
) -> None:
    for index, name, edited in _edits(built):
        lines = list(built.lines)
        lines[built.at(index)] = _line(index, edited)
        reason = verify(lines).not_verified()
        assert_names(reason, index)
        assert f"first bad index is at or after {index - index % EVERY}" in reason, (name, reason)


def test_an_entry_that_is_not_base64_or_not_json_is_caught(
    built: Built, verify: Callable[..., Run]
) -> None:
    for broken in ('{"index": 12, "entry": "not base64!"}\n', '{"index": 12, "entry": ', "[]\n"):
        lines = list(built.lines)
        lines[built.at(12)] = broken
        reason = verify(lines).not_verified()
        assert f"line {built.at(12) + 1}" in reason, reason


# -- deleting, reordering ----------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 17, 46])
def test_deleting_a_record_is_caught(
    built: Built, home: Path, tmp_path: Path, verify: Callable[..., Run], index: int
) -> None:
    # from the export: the gap itself
    lines = list(built.lines)
    del lines[built.at(index)]
    reason = verify(lines).not_verified()
    assert f"index {index + 1} where index {index} was expected" in reason
    # from the export, with every later index renumbered to close the gap
    renumbered = [
        _line(item["index"] - 1, base64.b64decode(item["entry"]))
        if "index" in (item := json.loads(line)) and item["index"] > index
        else line
        for line in lines
    ]
    assert_names(verify(renumbered).not_verified(), index)
    # from the SQLite file
    conn = _db(home)
    conn.execute("DELETE FROM audit_log WHERE idx = ?", (index,))
    conn.close()
    assert_names(verify(_export(home, tmp_path / "x.jsonl")).not_verified(), index)


@pytest.mark.parametrize(("i", "j"), [(3, 4), (12, 13), (8, 31)])
def test_reordering_two_records_is_caught(
    built: Built, home: Path, tmp_path: Path, verify: Callable[..., Run], i: int, j: int
) -> None:
    lines = list(built.lines)
    lines[built.at(i)], lines[built.at(j)] = lines[built.at(j)], lines[built.at(i)]
    assert f"index {j} where index {i} was expected" in verify(lines).not_verified()
    # the entries swapped, the index numbers left in order
    lines = list(built.lines)
    lines[built.at(i)] = _line(i, _entry(built.lines[built.at(j)]))
    lines[built.at(j)] = _line(j, _entry(built.lines[built.at(i)]))
    assert_names(verify(lines).not_verified(), i)
    # in the SQLite file
    conn = _db(home)
    a, b = (
        conn.execute("SELECT entry FROM audit_log WHERE idx = ?", (k,)).fetchone()[0]
        for k in (i, j)
    )
    conn.execute("UPDATE audit_log SET entry = ? WHERE idx = ?", (b, i))
    conn.execute("UPDATE audit_log SET entry = ? WHERE idx = ?", (a, j))
    conn.close()
    assert_names(verify(_export(home, tmp_path / "x.jsonl")).not_verified(), i)


# -- truncation -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 23, 47])
def test_truncating_the_export_is_caught(
    built: Built, verify: Callable[..., Run], cut: int
) -> None:
    # without the trailing checkpoint: the last entries are covered by no signature
    lines = list(built.lines[: built.at(cut)])
    reason = verify(lines).not_verified()
    assert f"entries {cut - cut % EVERY}..{cut - 1}" in reason or f"entry {cut - 1}" in reason
    assert "not covered by a signed checkpoint" in reason
    # keeping the trailing checkpoint line: it sits after too few entries
    reason = verify([*lines, built.lines[-1]]).not_verified()
    assert f"checkpoint of size {built.size} sits after {cut} entries" in reason
    assert_names(reason, cut)
    # cut in the middle of a line
    reason = verify([*lines, built.lines[built.at(cut)][:40]]).not_verified()
    assert f"not JSON (index {cut})" in reason


def test_truncating_at_an_earlier_checkpoint_is_caught_only_with_a_kept_checkpoint(
    built: Built, verify: Callable[..., Run]
) -> None:
    lines = built.lines[: built.checkpoint_at(20) + 1]
    # A shorter log is still a log: without a checkpoint from elsewhere nothing tells.
    assert verify(lines).out.startswith("VERIFIED: log gw-test, 20 entries")
    reason = verify(lines, "--checkpoint", built.live).not_verified()
    assert f"the log had {built.size}: the export is truncated at index 20" in reason


def test_deleting_the_last_records_in_the_sqlite_file_is_caught(
    built: Built, home: Path, tmp_path: Path, verify: Callable[..., Run]
) -> None:
    conn = _db(home)
    conn.execute("DELETE FROM audit_log WHERE idx >= 45")
    conn.close()
    lines = _export(home, tmp_path / "x.jsonl")
    reason = verify(lines).not_verified()  # the stored checkpoint of size 48 is exported
    assert f"checkpoint of size {built.size} sits after 45 entries" in reason
    assert_names(reason, 45)
    # ... and when the intruder deletes the checkpoints too, a kept one still tells
    conn = _db(home)
    conn.execute("DELETE FROM checkpoints WHERE size > 45")
    conn.close()
    lines = _export(home, tmp_path / "x.jsonl")
    assert verify(lines).code == 0
    reason = verify(lines, "--checkpoint", built.live).not_verified()
    assert "truncated at index 45" in reason


def test_a_rewritten_history_signed_by_the_node_is_caught_by_a_kept_checkpoint(
    built: Built, home: Path, tmp_path: Path, verify: Callable[..., Run]
) -> None:
    """An intruder rewrites entry 12 and the whole tree in the store, and deletes the
    checkpoints. The store's committed head names the old root, so the gateway signs
    nothing; with the head removed too, still nothing (a store that holds entries and
    no head is refused). With a head made anew for the forged store (``audit
    reset-head --unverified``, or one written by hand: the home's owner can), it signs
    the forged history, and only a checkpoint kept from before (say, by a monitor)
    tells that it is not the log that was; ``reset-head`` with that checkpoint refuses."""
    forged = {**json.loads(_entry(built.lines[built.at(12)])), "outcome": "deny"}
    conn = _db(home)
    conn.execute("UPDATE audit_log SET entry = ? WHERE idx = 12", (canonical_json(forged),))
    conn.execute("DELETE FROM merkle_nodes")
    conn.execute("DELETE FROM checkpoints")
    frontier = Frontier()
    for (entry,) in conn.execute("SELECT entry FROM audit_log ORDER BY idx").fetchall():
        conn.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)", frontier.append(entry))
    conn.close()
    lines = _export(home, tmp_path / "x.jsonl")
    assert "not covered by a signed checkpoint" in verify(lines).not_verified()
    (home / "state.db-head").unlink()
    lines = _export(home, tmp_path / "x.jsonl")
    assert "not covered by a signed checkpoint" in verify(lines).not_verified()
    pub = home / "keys" / "node.pub.jwk"
    refused = cli("--home", home, "audit", "reset-head", "--key", pub, "--checkpoint", built.live)
    assert refused.code == 1
    assert "NOT VERIFIED" in refused.err
    assert not (home / "state.db-head").exists()
    assert cli("--home", home, "audit", "reset-head", "--unverified").code == 0
    lines = _export(home, tmp_path / "x.jsonl")
    assert verify(lines).code == 0  # internally consistent, and signed by the node key
    reason = verify(lines, "--checkpoint", built.live).not_verified()
    assert "the given checkpoint of size 48 does not match entries" in reason
    assert_names_wide(reason, 12)


def assert_names_wide(reason: str, index: int) -> None:
    assert any(a <= index <= b for a, b in spans(reason)), (index, reason)


# -- checkpoints ----------------------------------------------------------------------------------


def _resigned(note: str, signer: Signer) -> str:
    """The same checkpoint text with one signature line, by ``signer``."""
    return sign_checkpoint(Checkpoint.parse(parse_unverified(note).text), signer)


def _with_checkpoint(built: Built, size: int, note: str) -> list[str]:
    lines = list(built.lines)
    lines[built.checkpoint_at(size)] = json.dumps({"checkpoint": note}) + "\n"
    return lines


def _note(built: Built, size: int) -> str:
    note: str = json.loads(built.lines[built.checkpoint_at(size)])["checkpoint"]
    return note


@pytest.mark.parametrize("size", [5, 25, 48])
def test_a_checkpoint_signed_by_another_key_is_caught(
    built: Built, verify: Callable[..., Run], size: int
) -> None:
    other = Signer("gw-test", PrivateKey.generate())
    reason = verify(_with_checkpoint(built, size, _resigned(_note(built, size), other)))
    text = reason.not_verified()
    assert "no verifiable signatures from a trusted key" in text
    assert_names(text, size - 1)


@pytest.mark.parametrize("bit", [0, 9, 100, 511])
def test_a_flipped_bit_in_a_checkpoint_signature_is_caught(
    built: Built, verify: Callable[..., Run], bit: int
) -> None:
    note = _note(built, 15)
    text, _, line = note.rpartition("\n\n")
    prefix, _, sig64 = line.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(sig64))
    raw[4 + bit // 8] ^= 1 << (bit % 8)  # past the 4-byte key id: the signature itself
    flipped = f"{text}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"
    reason = verify(_with_checkpoint(built, 15, flipped)).not_verified()
    assert "invalid signature" in reason
    assert_names(reason, 14)


def test_signatures_swapped_between_two_checkpoints_are_caught(
    built: Built, verify: Callable[..., Run]
) -> None:
    (text10, _, sig10), (text15, _, sig15) = (_note(built, n).rpartition("\n\n") for n in (10, 15))
    lines = _with_checkpoint(built, 10, f"{text10}\n\n{sig15}")
    lines[built.checkpoint_at(15)] = json.dumps({"checkpoint": f"{text15}\n\n{sig10}"}) + "\n"
    reason = verify(lines).not_verified()
    assert "invalid signature for key gw-test+" in reason
    assert_names(reason, 9)


def test_a_checkpoint_with_another_root_is_caught(built: Built, verify: Callable[..., Run]) -> None:
    note = _note(built, 30)
    lines = note.split("\n")
    lines[2] = base64.b64encode(bytes(32)).decode()
    reason = verify(_with_checkpoint(built, 30, "\n".join(lines))).not_verified()
    assert "does not verify" in reason
    assert_names(reason, 29)


@pytest.mark.parametrize(("size", "after"), [(10, 14), (10, 7), (45, 47), (48, 20)])
def test_a_checkpoint_moved_elsewhere_is_caught(
    built: Built, verify: Callable[..., Run], size: int, after: int
) -> None:
    lines = list(built.lines)
    moved = lines.pop(built.checkpoint_at(size))
    lines.insert(lines.index(built.lines[built.at(after)]) + 1, moved)
    reason = verify(lines).not_verified()
    assert f"checkpoint of size {size} sits after {after + 1} entries" in reason
    assert_names(reason, min(size, after + 1))


def test_an_export_header_with_another_origin_is_caught(
    built: Built, verify: Callable[..., Run], tmp_path: Path
) -> None:
    header = json.dumps({"format": "execgate-audit-export/1", "origin": "gw-other"}) + "\n"
    lines = [header, *built.lines[1:]]
    reason = verify(lines).not_verified()  # --key is the public JWK: no name of its own
    assert "it is of log 'gw-test', but the export header (line 1) names 'gw-other'" in reason
    assert_names(reason, 0)
    # with the node's vkey, which names its log
    vkey = cli("--home", built.log.home, "audit", "checkpoint").err.split("(vkey): ")[1].split()[0]
    path = tmp_path / "other.jsonl"
    path.write_text("".join(lines))
    reason = cli("audit", "verify", path, "--key", vkey).not_verified()
    assert reason == "line 1: the export is of log 'gw-other', but the key is for log 'gw-test'"


def test_another_nodes_key_verifies_nothing(built: Built, tmp_path: Path) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text("".join(built.lines))
    assert cli("keygen", tmp_path / "other.jwk").code == 0
    reason = cli("audit", "verify", path, "--key", tmp_path / "other.pub.jwk").not_verified()
    assert "no verifiable signatures from a trusted key" in reason
    assert_names(reason, 0)


def test_evidence_for_an_edited_entry_does_not_verify(
    built: Built, home: Path, tmp_path: Path
) -> None:
    forged = {**json.loads(_entry(built.lines[built.at(12)])), "outcome": "deny"}
    with contextlib.closing(_db(home)) as conn:
        conn.execute("UPDATE audit_log SET entry = ? WHERE idx = 12", (canonical_json(forged),))
    assert cli("--home", home, "audit", "prove", "12", "-o", tmp_path / "ev.txt").code == 0
    reason = cli("audit", "verify-proof", tmp_path / "ev.txt", "--key", built.log.pub)
    assert "inclusion proof for leaf 12 does not lead to the root" in reason.not_verified()
