"""The audit log through a real gateway on a real SQLite home (DESIGN §3 step 11, §4.6).

What a caller, an auditor or an operator can check: every record is the JCS bytes of
everything the gateway decided, inside the Merkle tree; appends cost O(1) and never read
the log; every index is provable against every checkpoint and checkpoints are mutually
consistent; checkpoints are made by count and by time, signed with the node key; the tree
stays right across restarts and with a second store on the same file; outcomes are linked
to their decisions, one each; a record is durable before ``decide`` returns, and a
decision that could not be logged is ``fail_closed``. Recomputation in these tests uses
``hashlib`` and ``Frontier`` directly, never the store's own nodes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import GATEWAY_ID, NOW, PAYMENTS, Kit, make_kit

import execgate.store.sqlite
from execgate.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from execgate.audit.log import ExportReport, SigningRefused, verify_evidence, verify_export
from execgate.audit.merkle import (
    Frontier,
    consistency_proof,
    leaf_hash,
    root_at,
    verify_consistency,
    verify_inclusion,
)
from execgate.audit.note import Signer, Verifier
from execgate.errors import AuditError, EvidenceError, RequestError, StoreError, VerificationError
from execgate.jose import PrivateKey, PublicKey, canonical_json, loads_strict, sha256_b64url
from execgate.keyfile import public_path_for, read_public_key
from execgate.model import Decision, Outcome
from execgate.pipeline import Gateway
from execgate.receipts import verify_receipt
from execgate.store.base import LogEntry, Store, WriteJob
from execgate.store.sqlite import SQLiteStore

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


# --- helpers ------------------------------------------------------------------------------


def configure(kit: Kit, *, every: int = 1000, interval: int = 300) -> None:
    """Set the home's ``[audit]`` checkpoint_every and checkpoint_interval."""
    path = kit.home / "execgate.toml"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"checkpoint_every = \d+", f"checkpoint_every = {every}", text)
    text = re.sub(r"checkpoint_interval = \d+", f"checkpoint_interval = {interval}", text)
    path.write_text(text, encoding="utf-8")


def node_public(kit: Kit) -> PublicKey:
    """The node's public key, read from the public key file alone."""
    return read_public_key(public_path_for(kit.config.node_key))


def verifier(kit: Kit) -> Verifier:
    return Verifier(GATEWAY_ID, node_public(kit))


def entries(store: Store) -> list[bytes]:
    return [e.entry for e in store.entries(0, store.size())]


def sha256_leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def recomputed_root(log: list[bytes]) -> bytes:
    frontier = Frontier()
    for entry in log:
        frontier.append_hash(sha256_leaf(entry))
    return frontier.root()


def stored_nodes(path: Path) -> set[tuple[int, int, bytes]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT level, idx, hash FROM merkle_nodes").fetchall()
    return {(int(level), int(idx), bytes(h)) for level, idx, h in rows}


def assert_tree_is_right(gw: Gateway, path: Path) -> None:
    """Every stored node is the recomputed one, and the root matches the entries."""
    log = entries(gw.store)
    frontier = Frontier()
    expected: set[tuple[int, int, bytes]] = set()
    for entry in log:
        expected.update(frontier.append_hash(sha256_leaf(entry)))
    assert stored_nodes(path) == expected
    assert root_at(len(log), gw.store.node) == recomputed_root(log)


def export_verified(kit: Kit, gw: Gateway) -> ExportReport:
    out = io.StringIO()
    gw.audit.export(out, now=kit.clock.now)
    report = verify_export(io.StringIO(out.getvalue()), node_public(kit))
    log = entries(gw.store)
    assert report.entries == len(log)
    assert report.root == recomputed_root(log)
    return report


def record_of(gw: Gateway, decision_id: str, kind: str = "decision") -> tuple[int, dict[str, Any]]:
    found = gw.store.find(decision_id, kind)
    assert found is not None, (decision_id, kind)
    record: dict[str, Any] = loads_strict(found.entry)
    return found.index, record


def proceed(kit: Kit, gw: Gateway, **args: Any) -> Decision:
    d = gw.decide(kit.submit(kit.request(amount=args.pop("amount", 100), **args)))
    assert d.outcome is Outcome.PROCEED, d
    return d


def traffic(kit: Kit, gw: Gateway) -> list[Decision]:
    """One decision of every outcome (proceed, reroute, pause, deny twice, fail_closed),
    and an outcome record for each one that executed."""
    shell = kit.artifact([*PAYMENTS, {"action": "shell.exec", "resource": "host:**"}])
    made = [
        gw.decide(kit.submit(kit.request(amount=100, currency="EUR", memo="naïve ✓ \u2028"))),
        gw.decide(
            kit.submission(
                kit.request("shell.exec", "host:db-1", argv=["ls", "-l"], cwd="/"), shell
            )
        ),
        gw.decide(kit.submit(kit.request(amount=5000))),
        gw.decide(kit.submit(kit.request("payments.refund", amount=1))),
        gw.decide(kit.submission(kit.request(amount=1), "not-a-jws")),
    ]
    wire = kit.submit()
    kit.clock.error = RuntimeError("the clock broke")
    made.append(gw.decide(wire))
    kit.clock.error = None
    outcomes = [d.outcome for d in made]
    assert outcomes == [
        Outcome.PROCEED,
        Outcome.REROUTE,
        Outcome.PAUSE,
        Outcome.DENY,
        Outcome.DENY,
        Outcome.FAIL_CLOSED,
    ]
    gw.report_outcome(made[0].decision_id, status="succeeded", exit_code=0, result_digest=DIGEST)
    gw.report_outcome(made[1].decision_id, status="failed", exit_code=-9)
    return made


# --- every field is inside the hash -------------------------------------------------------


def test_every_entry_is_the_jcs_bytes_of_its_record_and_its_leaf_is_stored(kit: Kit) -> None:
    gw = kit.gateway()
    traffic(kit, gw)
    log = entries(gw.store)
    assert len(log) == 8
    for index, entry in enumerate(log):
        record = loads_strict(entry)
        assert canonical_json(record) == entry, index
        assert gw.store.node(0, index) == sha256_leaf(entry) == leaf_hash(entry)
    kinds = [loads_strict(e)["kind"] for e in log]
    assert kinds == ["decision"] * 6 + ["outcome"] * 2


def variants(value: Any) -> Iterator[Any]:
    """Copies of a JSON value that each differ from it in exactly one place: a scalar
    changed, an object member removed, renamed or added, an array item appended."""
    if isinstance(value, dict):
        yield {**value, "~added": None}
        for key in value:
            yield {k: v for k, v in value.items() if k != key}
            yield {(k + "~" if k == key else k): v for k, v in value.items()}
            for changed in variants(value[key]):
                yield {**value, key: changed}
    elif isinstance(value, list):
        yield [*value, None]
        for i, item in enumerate(value):
            for changed in variants(item):
                yield [*value[:i], changed, *value[i + 1 :]]
    elif value is None:
        yield 0
    elif isinstance(value, bool):
        yield not value
    elif isinstance(value, int | float):
        yield value + 1
    else:
        assert isinstance(value, str)
        yield value + "~"
        yield value[:-1] if value else "~"


def test_every_field_of_every_record_is_inside_the_hash(kit: Kit) -> None:
    """Change any one thing in any record and its inclusion proof no longer verifies."""
    gw = kit.gateway()
    traffic(kit, gw)
    cp = open_checkpoint(gw.audit.checkpoint(now=kit.clock.now), verifier(kit))
    changed = 0
    for index, entry in enumerate(entries(gw.store)):
        proof = gw.audit.inclusion_proof(index, cp.size)
        verify_inclusion(sha256_leaf(entry), index, cp.size, proof, cp.root)
        record = loads_strict(entry)
        for variant in variants(record):
            forged = canonical_json(variant)
            assert forged != entry
            with pytest.raises(EvidenceError):
                verify_inclusion(sha256_leaf(forged), index, cp.size, proof, cp.root)
            changed += 1
    assert changed > 8 * 20


def test_the_record_holds_everything_the_caller_is_told(kit: Kit) -> None:
    """Each field of the returned Decision and of its signed receipt is in the record."""
    gw = kit.gateway()
    keys = {kit.node_key.public.thumbprint(): node_public(kit)}
    for d in traffic(kit, gw):
        index, record = record_of(gw, d.decision_id)
        assert d.log_index == index
        told = d.to_json()
        assert told.pop("log_index") == index
        receipt = told.pop("receipt")
        assert told.pop("decided_at") == record["at"]
        assert told == {k: record[k] for k in told}
        claims = verify_receipt(receipt, keys=keys, now=record["at"], leeway=0)
        assert claims["log"] == {"id": GATEWAY_ID, "index": index}
        assert claims["did"] == record["decision_id"]
        assert claims["outcome"] == record["outcome"]
        assert claims["reasons"] == [r["code"] for r in record["reasons"]]
        assert claims["rh"] == record["request_hash"]
        assert claims["jti"] == record["artifact_jti"]
        assert claims["chain"] == record["chain"]
        assert claims["pol"] == record["policy_hash"]
        assert claims["route"] == record["route"]
        assert claims["iat"] == record["at"]
        assert record["gateway"] == GATEWAY_ID
        if record["request"] is not None and not record.get("args_omitted"):
            # the logged request is the one that was hashed
            assert record["request_hash"] == sha256_b64url(canonical_json(record["request"]))


def test_an_outcome_record_holds_every_reported_field(kit: Kit) -> None:
    gw = kit.gateway()
    d = proceed(kit, gw)
    kit.clock.t = NOW + 7
    index = gw.report_outcome(
        d.decision_id, status="failed", exit_code=-(2**31), result_digest=DIGEST
    )
    assert record_of(gw, d.decision_id, "outcome") == (
        index,
        {
            "v": 1,
            "kind": "outcome",
            "decision_id": d.decision_id,
            "decision_index": d.log_index,
            "gateway": GATEWAY_ID,
            "at": NOW + 7,
            "status": "failed",
            "exit_code": -(2**31),
            "result_digest": DIGEST,
        },
    )


# --- appends are O(1) and never read the log ----------------------------------------------


def test_each_append_adds_at_most_two_tree_nodes_on_average(kit: Kit) -> None:
    gw = kit.gateway()
    path = kit.config.store
    for n in range(1, 61):
        d = proceed(kit, gw)
        if n % 3 == 0:
            gw.report_outcome(d.decision_id, status="succeeded")
        size = gw.store.size()
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT COUNT(*) FROM merkle_nodes").fetchone()[0]
        assert rows == 2 * size - size.bit_count()
        assert rows <= 2 * size
    assert_tree_is_right(gw, path)


class TracedStore(SQLiteStore):
    """A real SQLite store that records every SQL statement its connections run."""

    def __init__(self, path: Path) -> None:
        self.statements: list[str] = []
        super().__init__(path)

    def _connect(self, *, opening: bool = False, batches: bool = False) -> sqlite3.Connection:
        conn = super()._connect(opening=opening, batches=batches)
        conn.set_trace_callback(self.statements.append)
        return conn


def reads(statements: list[str], table: str) -> list[str]:
    return [
        s for s in statements if s.lstrip().upper().startswith("SELECT") and f"FROM {table}" in s
    ]


def plan(path: Path, sql: str) -> list[str]:
    with sqlite3.connect(path) as db:
        return [str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def test_appends_never_read_the_log(kit: Kit) -> None:
    """Deciding reads no log entry, searches (never scans) the log's index for the next
    position, and reads no tree node while the leader's frontier is current."""
    configure(kit, every=10**9, interval=86400)
    path = kit.config.store
    store = TracedStore(path)
    gw = kit.gateway(store)
    for _ in range(5):
        proceed(kit, gw)
    store.statements.clear()
    for _ in range(40):
        proceed(kit, gw)
    log_reads = reads(store.statements, "audit_log")
    assert log_reads  # the next index is looked up ...
    for sql in log_reads:
        assert "entry" not in sql.split("FROM")[0]  # ... without reading any entry ...
        assert all(step.startswith("SEARCH") for step in plan(path, sql)), sql  # ... by search
    assert reads(store.statements, "merkle_nodes") == []
    assert not any("audit_log" in s and "SCAN" in s for s in store.statements)


def test_a_reopened_store_reads_one_node_per_frontier_subtree(kit: Kit) -> None:
    configure(kit, every=10**9, interval=86400)
    path = kit.config.store
    gw = kit.gateway()
    for _ in range(23):
        proceed(kit, gw)
    gw.close()
    store = TracedStore(path)
    gw = kit.gateway(store)
    proceed(kit, gw)
    node_reads = reads(store.statements, "merkle_nodes")
    assert len(node_reads) == (23).bit_count()
    for sql in node_reads:
        assert all(step.startswith("SEARCH") for step in plan(path, sql)), sql
    assert_tree_is_right(gw, path)


# --- proofs against every checkpoint ------------------------------------------------------


def checkpointed_log(kit: Kit) -> Gateway:
    configure(kit, every=3)
    gw = kit.gateway()
    for _ in range(3):
        traffic(kit, gw)
    proceed(kit, gw)
    return gw


def test_inclusion_of_every_index_against_every_stored_checkpoint(kit: Kit) -> None:
    gw = checkpointed_log(kit)
    log = entries(gw.store)
    stored = gw.store.checkpoints()
    assert [size for size, _ in stored] == list(range(3, len(log) + 1, 3))
    proofs = 0
    for size, note in stored:
        cp = open_checkpoint(note, verifier(kit))
        assert (cp.origin, cp.size) == (GATEWAY_ID, size)
        assert cp.root == recomputed_root(log[:size])
        for index in range(size):
            proof = gw.audit.inclusion_proof(index, size)
            verify_inclusion(sha256_leaf(log[index]), index, size, proof, cp.root)
            other = log[(index + 1) % size]
            if other != log[index]:
                with pytest.raises(EvidenceError):
                    verify_inclusion(sha256_leaf(other), index, size, proof, cp.root)
            proofs += 1
    assert proofs == sum(size for size, _ in stored)


def test_consistency_between_every_two_stored_checkpoints(kit: Kit) -> None:
    gw = checkpointed_log(kit)
    opened = [open_checkpoint(note, verifier(kit)) for _, note in gw.store.checkpoints()]
    assert len(opened) >= 6
    for old in opened:
        for new in opened:
            if old.size > new.size:
                with pytest.raises(EvidenceError):
                    gw.audit.consistency_proof(old.size, new.size)
                continue
            proof = gw.audit.consistency_proof(old.size, new.size)
            assert proof == consistency_proof(old.size, new.size, gw.store.node)
            verify_consistency(old.size, new.size, proof, old.root, new.root)
            if old.size < new.size:
                with pytest.raises(EvidenceError):
                    verify_consistency(old.size, new.size, proof, new.root, new.root)


def fork_the_tree(kit: Kit, gw: Gateway) -> None:
    """As an intruder with the file (triggers dropped): rebuild the stored tree as if
    entry 1 were a forged record; the entries themselves stay as they are."""
    log = entries(gw.store)
    conn = sqlite3.connect(kit.config.store)
    try:
        for trigger in ("no_update", "no_delete", "no_replace"):
            conn.execute(f"DROP TRIGGER merkle_nodes_{trigger}")
        conn.execute("DELETE FROM merkle_nodes")
        forged = Frontier()
        for entry in [log[0], b'{"forged":true}', *log[2:]]:
            conn.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)", forged.append(entry))
        conn.commit()
    finally:
        conn.close()


def test_a_forked_tree_takes_no_entry_and_is_not_signed(kit: Kit) -> None:
    """The store's committed head names the root the tree had: rewritten nodes are
    refused at the next append and at the next signature."""
    gw = checkpointed_log(kit)
    size = open_checkpoint(gw.audit.checkpoint(now=NOW), verifier(kit)).size
    fork_the_tree(kit, gw)
    gw.close()
    reopened = kit.gateway()
    decision = reopened.decide(kit.submit(kit.request(amount=100)))
    assert decision.outcome is Outcome.FAIL_CLOSED
    assert decision.reasons[0].code == "audit.unavailable"
    assert f"first {size} entries are not the {size} that were committed" in (
        decision.reasons[0].detail
    )
    with pytest.raises(SigningRefused, match=f"not the {size} that were committed"):
        reopened.audit.checkpoint(now=NOW)
    assert reopened.store.size() == size


def test_the_node_never_signs_a_tree_that_forks_what_it_signed(kit: Kit) -> None:
    """Rewritten tree nodes would let an entry's evidence prove a forged record. Even
    when the committed head is made anew for them (so the append goes through), the
    node refuses to sign the next checkpoint instead of a tree head inconsistent with
    its earlier one (and an export still writes what there is, for verify to judge)."""
    gw = checkpointed_log(kit)
    size = open_checkpoint(gw.audit.checkpoint(now=NOW), verifier(kit)).size
    fork_the_tree(kit, gw)
    gw.close()
    Path(f"{kit.config.store}-head").unlink()
    store = SQLiteStore(kit.config.store)
    try:
        store.remake_head()  # as audit reset-head --unverified does
    finally:
        store.close()
    reopened = kit.gateway()
    proceed(kit, reopened)  # appended on the rewritten tree
    with pytest.raises(SigningRefused, match=f"not consistent with checkpoint {size}"):
        reopened.audit.checkpoint(now=NOW)
    assert [s for s, _ in reopened.store.checkpoints()][-1] == size  # nothing new signed
    out = io.StringIO()
    assert reopened.audit.export(out, now=NOW) == size + 1
    with pytest.raises(EvidenceError):
        verify_export(out.getvalue().splitlines(), node_public(kit))


def test_a_checkpoint_signed_meanwhile_by_another_process_is_no_fork(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker appends and signs a newer checkpoint between this one's reads of the
    log: that is the log growing, not a fork, and this one signs its own."""
    one, other = kit.gateway(), kit.gateway()
    proceed(kit, one)
    one.audit.checkpoint(now=NOW)
    size_of = one.store.size

    def size_then_the_other_signs() -> int:
        size = size_of()
        proceed(kit, other)
        other.audit.checkpoint(now=NOW)
        return size

    monkeypatch.setattr(one.store, "size", size_then_the_other_signs)
    note = one.audit.checkpoint(now=NOW)
    assert open_checkpoint(note, verifier(kit)).size == 1
    assert [s for s, _ in one.store.checkpoints()] == [1, 2]


def test_evidence_for_every_index_verifies_offline_with_only_the_public_key(kit: Kit) -> None:
    configure(kit, every=4)
    gw = kit.gateway()
    traffic(kit, gw)
    traffic(kit, gw)
    log = entries(gw.store)
    public = node_public(kit)  # from keys/node.pub.jwk: no store, no private key
    for index, entry in enumerate(log):
        evidence = gw.audit.evidence(index, now=kit.clock.now)
        cp, proven = verify_evidence(evidence, public)
        assert proven == entry
        assert cp.origin == GATEWAY_ID
        assert index < cp.size <= len(log)
        assert cp.root == recomputed_root(log[: cp.size])
        with pytest.raises(EvidenceError):
            verify_evidence(evidence, PrivateKey.generate().public)


def test_evidence_skips_a_checkpoint_another_key_signed(kit: Kit) -> None:
    """A stored checkpoint of another key (the node key before a rotation, a worker
    configured with another) is never the evidence: the node's own one that covers the
    index is, or a fresh one."""
    gw = kit.gateway()
    for _ in range(3):
        proceed(kit, gw)
    own = open_checkpoint(gw.audit.checkpoint(now=kit.clock.now), verifier(kit))
    other = Signer(GATEWAY_ID, PrivateKey.generate())
    foreign = sign_checkpoint(Checkpoint(GATEWAY_ID, 5, b"\x00" * 32), other)
    gw.store.add_checkpoint(5, foreign, now=kit.clock.now)
    for _ in range(3):
        proceed(kit, gw)
    public = node_public(kit)
    cp, _ = verify_evidence(gw.audit.evidence(1, now=kit.clock.now), public)
    assert (cp.size, cp.root) == (own.size, own.root)
    cp, proven = verify_evidence(gw.audit.evidence(4, now=kit.clock.now), public)
    assert (cp.size, proven) == (6, entries(gw.store)[4])  # none of its own covers 4: fresh


def test_checkpoints_are_read_newest_first_a_few_at_a_time(kit: Kit) -> None:
    """Years of checkpoints are millions of rows: signing, evidence, the schedule and
    /readyz read the newest few, never every one."""
    configure(kit, every=1)
    gw = kit.gateway()
    for _ in range(40):
        proceed(kit, gw)
    everything = list(gw.store.checkpoints())
    assert len(everything) == 40
    assert list(gw.store.recent_checkpoints()) == everything[::-1]  # across pages of 16

    def refuse() -> list[tuple[int, str]]:
        raise AssertionError("read every checkpoint")

    gw.store.checkpoints = refuse  # type: ignore[method-assign]
    read = 0
    recent = gw.store.recent_checkpoints

    def counted() -> Iterator[tuple[int, str]]:
        nonlocal read
        for row in recent():
            read += 1
            yield row

    gw.store.recent_checkpoints = counted  # type: ignore[method-assign]
    proceed(kit, gw)  # the schedule signs one more
    gw.audit.evidence(3, now=kit.clock.now)
    assert gw.audit.latest_checkpoint() is not None
    reopened = Gateway.open(kit.home, now=kit.clock, store=gw.store)
    proceed(kit, reopened)  # a new gateway finds where the schedule stands
    assert 0 < read <= 8
    assert next(recent())[0] == gw.store.size() == 42  # and it signed, as every=1 says


def test_an_export_taken_while_decisions_go_on_verifies(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker appends (and signs) after the export's checkpoint: the export
    stops at that checkpoint, so every line it holds is covered by its last one."""
    gw = kit.gateway()
    for _ in range(3):
        proceed(kit, gw)
    checkpoints = gw.store.checkpoints

    def meanwhile() -> Any:
        for _ in range(2):
            proceed(kit, gw)
        gw.audit.checkpoint(now=kit.clock.now)  # signed for the entries the export omits
        proceed(kit, gw)
        return checkpoints()

    monkeypatch.setattr(gw.store, "checkpoints", meanwhile)
    out = io.StringIO()
    assert gw.audit.export(out, now=kit.clock.now) == 3
    report = verify_export(io.StringIO(out.getvalue()), node_public(kit))
    assert report.entries == 3
    assert report.root == recomputed_root(entries(gw.store)[:3])
    assert gw.store.size() == 6


def test_verify_export_reads_any_json_spelling_of_an_entry_line(kit: Kit) -> None:
    """Entry lines exactly as ``export`` writes them take a shortcut past the JSON parser;
    any other spelling of the same line must verify to the same report."""
    gw = kit.gateway()
    traffic(kit, gw)
    traffic(kit, gw)
    out = io.StringIO()
    gw.audit.export(out, now=kit.clock.now)
    lines = out.getvalue().splitlines(keepends=True)
    baseline = verify_export(lines, node_public(kit))
    respelled = []
    for line in lines:
        item = json.loads(line)
        if "entry" in item:
            encoded = item["entry"].replace("/", "\\/").replace("A", "\\u0041", 1)
            line = f'{{ "entry" : "{encoded}" , "index" : {item["index"]} }}\r\n'
        respelled.append(line)
    assert respelled != lines
    assert verify_export(respelled, node_public(kit)) == baseline
    assert verify_export([*lines[:-1], lines[-1].rstrip("\n")], node_public(kit)) == baseline


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("QUJD!", "entry is not base64"),
        ("QUJ", "entry is not base64"),
        ("QUJD\\n", "entry is not base64"),
        ("QUJD\\", "not JSON"),
    ],
)
def test_an_exported_entry_line_with_bad_base64_fails(kit: Kit, encoded: str, message: str) -> None:
    gw = kit.gateway()
    proceed(kit, gw)
    out = io.StringIO()
    gw.audit.export(out, now=kit.clock.now)
    lines = out.getvalue().splitlines(keepends=True)
    assert lines[1].startswith('{"index":0,"entry":"')
    lines[1] = f'{{"index":0,"entry":"{encoded}"}}\n'
    with pytest.raises(EvidenceError, match=message):
        verify_export(lines, node_public(kit))


# --- periodic checkpoints -----------------------------------------------------------------


def checkpoint_times(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT size, created_at FROM checkpoints ORDER BY size").fetchall()
    return [(int(s), int(t)) for s, t in rows]


def assert_signed_by_the_node(kit: Kit, gw: Gateway) -> None:
    log = entries(gw.store)
    for size, note in gw.store.checkpoints():
        cp = open_checkpoint(note, verifier(kit))
        assert cp == Checkpoint(GATEWAY_ID, size, recomputed_root(log[:size]))
        with pytest.raises(EvidenceError):
            open_checkpoint(note, Verifier(GATEWAY_ID, PrivateKey.generate().public))
        with pytest.raises(EvidenceError):
            open_checkpoint(note, Verifier("another-gateway", node_public(kit)))


def test_checkpoints_by_count(kit: Kit) -> None:
    configure(kit, every=4, interval=86400)
    gw = kit.gateway()
    made = [proceed(kit, gw) for _ in range(10)]
    assert [size for size, _ in gw.store.checkpoints()] == [4, 8]
    kit.clock.t = NOW + 5
    gw.report_outcome(made[0].decision_id, status="succeeded")
    gw.report_outcome(made[1].decision_id, status="succeeded")
    assert checkpoint_times(kit.config.store) == [(4, NOW), (8, NOW), (12, NOW + 5)]
    assert_signed_by_the_node(kit, gw)


def test_checkpoints_by_time_on_the_injected_clock(kit: Kit) -> None:
    configure(kit, every=10**6, interval=60)
    gw = kit.gateway()
    path = kit.config.store
    proceed(kit, gw)
    kit.clock.t = NOW + 59
    proceed(kit, gw)
    assert checkpoint_times(path) == []
    kit.clock.t = NOW + 60
    proceed(kit, gw)
    assert checkpoint_times(path) == [(3, NOW + 60)]
    kit.clock.t = NOW + 119
    proceed(kit, gw)
    assert checkpoint_times(path) == [(3, NOW + 60)]
    kit.clock.t = NOW + 120
    proceed(kit, gw)
    assert checkpoint_times(path) == [(3, NOW + 60), (5, NOW + 120)]
    assert_signed_by_the_node(kit, gw)


def test_time_runs_from_the_stored_checkpoint_not_from_the_process_start(kit: Kit) -> None:
    """Short-lived processes (CLI runs, restarted workers) each append a little: the
    interval is counted from the newest stored checkpoint's time, so the tail they
    leave is signed once it is due, not never."""
    configure(kit, every=10**6, interval=60)
    path = kit.config.store
    gw = kit.gateway()
    proceed(kit, gw)
    kit.clock.t = NOW + 60
    proceed(kit, gw)
    assert checkpoint_times(path) == [(2, NOW + 60)]
    gw.close()
    for n in range(1, 4):  # each opens the gateway, decides once and closes it
        kit.clock.t = NOW + 60 + 30 * n
        gw = kit.gateway()
        proceed(kit, gw)
        gw.close()
    assert checkpoint_times(path) == [(2, NOW + 60), (4, NOW + 120)]
    # The clock was ahead when that one was stored, and is set back: the schedule runs
    # from now, not from the stored time, still ahead.
    kit.clock.t = NOW - 3600
    gw = kit.gateway()
    proceed(kit, gw)
    kit.clock.t = NOW - 3600 + 60
    proceed(kit, gw)
    gw.close()
    assert checkpoint_times(path)[-1] == (7, NOW - 3600 + 60)


def test_count_continues_from_the_stored_checkpoint_after_a_restart(kit: Kit) -> None:
    configure(kit, every=4, interval=86400)
    gw = kit.gateway()
    for _ in range(6):
        proceed(kit, gw)
    gw.close()
    gw = kit.gateway()
    proceed(kit, gw)
    assert [size for size, _ in gw.store.checkpoints()] == [4]
    proceed(kit, gw)
    assert [size for size, _ in gw.store.checkpoints()] == [4, 8]
    assert_signed_by_the_node(kit, gw)


class CheckpointFails(SQLiteStore):
    """A real store whose checkpoint write (or read) raises, as a failing disk would."""

    def __init__(self, path: Path, error: Exception | None, where: str) -> None:
        super().__init__(path)
        self.error = error
        self.where = where

    def add_checkpoint(self, size: int, note: str, *, now: int) -> None:
        if self.error is not None and self.where == "add_checkpoint":
            raise self.error
        super().add_checkpoint(size, note, now=now)

    def recent_checkpoints(self) -> Iterator[tuple[int, str]]:
        if self.error is not None and self.where == "recent_checkpoints":
            raise self.error
        return super().recent_checkpoints()


@pytest.mark.parametrize("where", ["add_checkpoint", "recent_checkpoints"])
@pytest.mark.parametrize(
    "error",
    [
        StoreError("disk full"),
        AuditError("disk full"),
        sqlite3.OperationalError("disk I/O error"),
        RuntimeError("bug"),
    ],
    ids=["StoreError", "AuditError", "sqlite3", "RuntimeError"],
)
def test_a_failed_checkpoint_never_changes_the_decision(
    kit: Kit, error: Exception, where: str
) -> None:
    configure(kit, every=1)
    store = CheckpointFails(kit.config.store, error, where)
    gw = kit.gateway(store)
    made = [proceed(kit, gw) for _ in range(3)]
    assert [d.log_index for d in made] == [0, 1, 2]
    assert all(d.receipt is not None for d in made)
    assert gw.report_outcome(made[0].decision_id, status="succeeded") == 3
    denied = gw.decide(kit.submit(kit.request("payments.refund", amount=1)))
    assert (denied.outcome, denied.log_index) == (Outcome.DENY, 4)
    # exactly one record per decision: nothing was logged twice or as fail_closed
    log = [loads_strict(e) for e in entries(gw.store)]
    assert [r["decision_id"] for r in log] == [
        *(d.decision_id for d in made),
        made[0].decision_id,
        denied.decision_id,
    ]
    assert [r.get("outcome") for r in log] == ["proceed"] * 3 + [None, "deny"]
    assert checkpoint_times(kit.config.store) == []
    store.error = None  # the disk recovers: the next decision makes the missed checkpoint
    proceed(kit, gw)
    assert [size for size, _ in gw.store.checkpoints()] == [6]
    assert_signed_by_the_node(kit, gw)


# --- the frontier across restarts and across stores ---------------------------------------


def test_the_tree_stays_right_across_close_and_reopen(kit: Kit) -> None:
    configure(kit, every=5)
    for count in (1, 2, 1, 4, 3, 1, 8, 5):
        gw = kit.gateway()
        for _ in range(count):
            proceed(kit, gw)
        assert_tree_is_right(gw, kit.config.store)
        gw.close()
    gw = kit.gateway()
    assert gw.store.size() == 25
    report = export_verified(kit, gw)
    assert report.entries == 25


def test_two_stores_on_one_file_keep_the_tree_right(kit: Kit) -> None:
    """A second store instance (another process, say) appends between this one's appends."""
    configure(kit, every=5)
    path = kit.config.store
    a, b = kit.gateway(), kit.gateway()
    assert a.store is not b.store
    made: list[Decision] = []
    for who, count in [(a, 1), (b, 1), (a, 2), (b, 3), (a, 1), (a, 1), (b, 2), (a, 5), (b, 1)]:
        made.extend(proceed(kit, who) for _ in range(count))
        size = who.store.size()
        assert [d.log_index for d in made] == list(range(size))
        expected = recomputed_root(entries(a.store))
        assert root_at(size, a.store.node) == root_at(size, b.store.node) == expected
    # outcomes reported through the other store
    b.report_outcome(made[0].decision_id, status="succeeded")
    a.report_outcome(made[1].decision_id, status="failed", exit_code=1)
    assert_tree_is_right(a, path)
    export_verified(kit, a)
    export_verified(kit, b)


def test_two_stores_on_one_file_appending_concurrently(kit: Kit) -> None:
    configure(kit, every=7)
    path = kit.config.store
    a, b = kit.gateway(), kit.gateway()
    wires = {id(gw): [kit.submit() for _ in range(40)] for gw in (a, b)}
    results: list[Decision] = []
    lock = threading.Lock()

    def run(gw: Gateway, start: int) -> None:
        for wire in wires[id(gw)][start::4]:
            d = gw.decide(wire)
            with lock:
                results.append(d)

    threads = [threading.Thread(target=run, args=(gw, i)) for gw in (a, b) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [d.outcome for d in results] == [Outcome.PROCEED] * 80
    assert sorted(d.log_index for d in results if d.log_index is not None) == list(range(80))
    assert_tree_is_right(a, path)
    assert_signed_by_the_node(kit, a)
    assert export_verified(kit, a) == export_verified(kit, b)


# --- outcomes -----------------------------------------------------------------------------


def test_an_outcome_is_linked_to_its_decision(kit: Kit) -> None:
    gw = kit.gateway()
    made = traffic(kit, gw)
    for d in made[:2]:  # the proceed and the reroute
        index, outcome = record_of(gw, d.decision_id, "outcome")
        assert outcome["decision_index"] == d.log_index
        decision_index, decision = record_of(gw, d.decision_id)
        assert decision_index == d.log_index
        assert decision_index < index
        assert decision["outcome"] in ("proceed", "reroute")
    for d in made[2:]:
        assert gw.store.find(d.decision_id, "outcome") is None


@pytest.mark.parametrize("which", [2, 3, 4, 5], ids=["pause", "deny", "deny-early", "fail_closed"])
def test_no_outcome_for_a_decision_that_did_not_execute(kit: Kit, which: int) -> None:
    gw = kit.gateway()
    d = traffic(kit, gw)[which]
    size = gw.store.size()
    with pytest.raises(RequestError, match="nothing executed"):
        gw.report_outcome(d.decision_id, status="succeeded", exit_code=0)
    assert gw.store.size() == size


def test_no_outcome_for_an_unknown_decision(kit: Kit) -> None:
    gw = kit.gateway()
    proceed(kit, gw)
    with pytest.raises(RequestError, match="not in this gateway's log"):
        gw.report_outcome("00000000-0000-4000-8000-000000000000", status="succeeded")
    assert gw.store.size() == 1


def test_an_outcome_proof_is_checked_against_the_decisions_key(kit: Kit) -> None:
    """``report_outcome(proof_required=True)``: what the HTTP route asks of a report."""
    gw = kit.gateway()
    d = proceed(kit, gw)
    report: dict[str, Any] = {"status": "succeeded", "exit_code": 0}
    good = kit.runtime.outcome_proof(d.decision_id, **report, audience=GATEWAY_ID, now=NOW)
    with pytest.raises(VerificationError) as missing:
        gw.report_outcome(d.decision_id, **report, proof_required=True, proof=None)
    assert missing.value.code == "identity.proof_missing"
    statuses: list[Any] = ["done", [], {}]  # unhashable ones too: a RequestError, not a TypeError
    for status in statuses:
        with pytest.raises(RequestError, match="status must be one of"):
            gw.report_outcome(d.decision_id, status=status, proof_required=True, proof=good)
    with pytest.raises(RequestError, match="not in this gateway's log"):
        gw.report_outcome(
            "00000000-0000-4000-8000-000000000000", **report, proof_required=True, proof=good
        )
    denied = traffic(kit, gw)[3]  # nothing ran: report_outcome refuses, not the proof
    with pytest.raises(RequestError, match="nothing executed"):
        gw.report_outcome(denied.decision_id, **report, proof_required=True, proof=None)
    size = gw.store.size()
    assert gw.report_outcome(d.decision_id, **report, proof_required=True, proof=good) == size


def test_an_executed_decision_without_a_runtime_key_refuses_every_report(kit: Kit) -> None:
    """Never written by the pipeline; should a record lack the key, no proof can match
    it, and the report is refused rather than taken unchecked."""
    gw = kit.gateway()
    d = proceed(kit, gw)
    found = gw.store.find(d.decision_id, "decision")
    assert found is not None
    record = json.loads(found.entry)
    del record["runtime_jkt"]

    class Keyless(SQLiteStore):
        def find(self, decision_id: str, kind: str) -> LogEntry | None:
            entry = super().find(decision_id, kind)
            if entry is None or kind != "decision":
                return entry
            return LogEntry(entry.index, json.dumps(record).encode())

    gw.store.close()
    gw.store = Keyless(kit.config.store)
    good = kit.runtime.outcome_proof(d.decision_id, status="failed", audience=GATEWAY_ID, now=NOW)
    with pytest.raises(VerificationError) as refused:
        gw.report_outcome(d.decision_id, status="failed", proof_required=True, proof=good)
    assert refused.value.code == "identity.mismatch"


def test_one_outcome_per_decision(kit: Kit) -> None:
    gw = kit.gateway()
    d = proceed(kit, gw)
    first = gw.report_outcome(d.decision_id, status="succeeded", exit_code=0)
    for status in ("succeeded", "failed"):
        with pytest.raises(RequestError, match=f"already logged at index {first}"):
            gw.report_outcome(d.decision_id, status=status, exit_code=1)
    assert gw.store.size() == 2


class RacingStore(SQLiteStore):
    """Holds the first two "is there an outcome yet?" lookups until both have been made,
    so two reporters both see none and both try to append."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.barrier = threading.Barrier(2, timeout=10)
        self.lookups = 0
        self.lock = threading.Lock()

    def find(self, decision_id: str, kind: str) -> LogEntry | None:
        found = super().find(decision_id, kind)
        if kind == "outcome":
            with self.lock:
                self.lookups += 1
                hold = self.lookups <= 2
            if hold:
                self.barrier.wait()
        return found


def race(reports: list[Callable[[], int]]) -> tuple[list[int], list[Exception]]:
    start = threading.Barrier(len(reports))
    won: list[int] = []
    lost: list[Exception] = []
    lock = threading.Lock()

    def run(report: Callable[[], int]) -> None:
        start.wait()
        try:
            index = report()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            with lock:
                lost.append(exc)
        else:
            with lock:
                won.append(index)

    threads = [threading.Thread(target=run, args=(r,)) for r in reports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


def test_two_racing_reports_past_the_check_exactly_one_wins(kit: Kit) -> None:
    gw = kit.gateway(RacingStore(kit.config.store))
    d = proceed(kit, gw)
    won, lost = race(
        [
            lambda: gw.report_outcome(d.decision_id, status="succeeded", exit_code=0),
            lambda: gw.report_outcome(d.decision_id, status="failed", exit_code=1),
        ]
    )
    assert won == [1]
    assert len(lost) == 1
    assert isinstance(lost[0], RequestError), lost
    assert "already logged at index 1" in str(lost[0])
    assert gw.store.size() == 2
    assert record_of(gw, d.decision_id, "outcome")[0] == 1


def test_racing_reports_from_two_threads_exactly_one_wins_each_time(kit: Kit) -> None:
    gw = kit.gateway()
    made = [proceed(kit, gw) for _ in range(15)]
    for d in made:

        def report(status: str, d: Decision = d) -> Callable[[], int]:
            return lambda: gw.report_outcome(d.decision_id, status=status)

        won, lost = race([report("succeeded"), report("failed")])
        assert len(won) == 1, lost
        assert len(lost) == 1, won
        assert isinstance(lost[0], RequestError), lost
    log = [loads_strict(e) for e in entries(gw.store)]
    outcomes = [r["decision_id"] for r in log if r["kind"] == "outcome"]
    assert sorted(outcomes) == sorted(d.decision_id for d in made)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "ok"},
        {"status": ""},
        {"status": "SUCCEEDED"},
        {"status": None},
        {"status": "succeeded", "exit_code": True},
        {"status": "succeeded", "exit_code": 1.0},
        {"status": "succeeded", "exit_code": "0"},
        {"status": "succeeded", "exit_code": 2**31},
        {"status": "succeeded", "exit_code": -(2**31) - 1},
        {"status": "succeeded", "result_digest": "sha256:" + "AB" * 32},
        {"status": "succeeded", "result_digest": "sha256:" + "ab" * 31},
        {"status": "succeeded", "result_digest": "sha512:" + "ab" * 32},
        {"status": "succeeded", "result_digest": "sha256:" + "ab" * 32 + "\n"},
        {"status": "succeeded", "result_digest": b"sha256:" + b"ab" * 32},
    ],
)
def test_bad_outcome_fields_are_request_errors(kit: Kit, kwargs: dict[str, Any]) -> None:
    gw = kit.gateway()
    d = proceed(kit, gw)
    with pytest.raises(RequestError):
        gw.report_outcome(d.decision_id, **kwargs)
    assert gw.store.size() == 1
    # the decision can still get its one, well-formed outcome
    assert gw.report_outcome(d.decision_id, status="succeeded", exit_code=2**31 - 1) == 1


# --- write-ahead --------------------------------------------------------------------------


def test_a_proceed_is_durable_before_decide_returns(kit: Kit) -> None:
    """Right after ``decide`` returns, a fresh connection finds the record and its leaf,
    from 8 threads at once (so followers of a group commit are checked too)."""
    gw = kit.gateway()
    path = kit.config.store
    wires = [kit.submit() for _ in range(48)]
    problems: list[str] = []

    def run(start: int) -> None:
        for wire in wires[start::8]:
            d = gw.decide(wire)
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                row = db.execute(
                    "SELECT idx, entry FROM audit_log WHERE decision_id = ? AND kind = 'decision'",
                    (d.decision_id,),
                ).fetchone()
                leaf = db.execute(
                    "SELECT hash FROM merkle_nodes WHERE level = 0 AND idx = ?", (d.log_index,)
                ).fetchone()
            if d.outcome is not Outcome.PROCEED:
                problems.append(f"{d.decision_id} was {d.outcome}")
            elif row is None or leaf is None:
                problems.append(f"{d.decision_id} was not in the log when decide returned")
            elif (row[0], json.loads(row[1])["outcome"]) != (d.log_index, "proceed"):
                problems.append(f"{d.decision_id} is logged as {row!r}")
            elif bytes(leaf[0]) != sha256_leaf(bytes(row[1])):
                problems.append(f"{d.decision_id}: the stored leaf is not its entry's")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert gw.store.size() == 48


@pytest.mark.parametrize("table", ["audit_log", "merkle_nodes"])
def test_a_failed_append_fails_closed_and_logs_no_proceed(kit: Kit, table: str) -> None:
    """The append itself fails (a trigger stands in for a full disk): nothing may execute."""
    gw = kit.gateway()
    path = kit.config.store
    proceed(kit, gw)
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER fail_append BEFORE INSERT ON {table}"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    wire = kit.submit()
    d = gw.decide(wire)
    assert d.outcome is Outcome.FAIL_CLOSED
    assert not d.executes
    assert [r.code for r in d.reasons] == ["store.unavailable", "audit.unavailable"]
    assert "disk full" in d.reasons[0].detail
    assert (d.log_index, d.receipt) == (None, None)
    assert gw.store.size() == 1
    assert gw.store.find(d.decision_id, "decision") is None
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER fail_append")
    # the failed append consumed nothing: the same request, judged afresh, proceeds
    again = gw.decide(wire)
    assert (again.outcome, again.log_index) == (Outcome.PROCEED, 1)
    outcomes = [loads_strict(e)["outcome"] for e in entries(gw.store)]
    assert outcomes == ["proceed", "proceed"]
    assert_tree_is_right(gw, path)


def test_an_append_that_gave_up_waiting_is_never_written_later(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision told ``audit.unavailable`` because the writer was busy too long must not
    turn up in the log afterwards as ``proceed``."""
    monkeypatch.setattr(execgate.store.sqlite, "_COMMIT_TIMEOUT", 0.3)
    gw = kit.gateway()
    writing, release = threading.Event(), threading.Event()

    def slow(_conflict: str | None, _index: int) -> bytes:
        writing.set()
        release.wait(10)
        return canonical_json({"kind": "slow"})

    holder = threading.Thread(
        target=gw.store.commit, args=(WriteJob(None, 0, None, slow, decision_id="slow"),)
    )
    holder.start()
    assert writing.wait(10)
    started = time.monotonic()
    d = gw.decide(kit.submit())
    assert time.monotonic() - started >= 0.3
    release.set()
    holder.join()
    assert d.outcome is Outcome.FAIL_CLOSED
    assert [r.code for r in d.reasons] == ["store.unavailable", "audit.unavailable"]
    after = proceed(kit, gw)
    assert after.log_index == 1
    assert gw.store.find(d.decision_id, "decision") is None
    assert gw.store.size() == 2
    assert_tree_is_right(gw, kit.config.store)


def test_a_caller_whose_job_is_being_written_gets_its_result(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that has waited longer than the timeout while a leader is already writing
    its job is told the real result of that write, never a failure for a record that is
    then logged anyway."""
    monkeypatch.setattr(execgate.store.sqlite, "_COMMIT_TIMEOUT", 1.0)
    store = SQLiteStore(kit.config.store)
    first_writing, first_go, batch_go = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, int | Exception] = {}

    def payload(name: str, gate: threading.Event) -> Callable[[str | None, int], bytes]:
        def finalize(_conflict: str | None, _index: int) -> bytes:
            if name == "first":
                first_writing.set()
            gate.wait(10)
            return canonical_json({"name": name})

        return finalize

    def commit(name: str, gate: threading.Event) -> None:
        try:
            results[name] = store.commit(WriteJob(None, 0, None, payload(name, gate)))
        except Exception as exc:  # noqa: BLE001 - asserted on below
            results[name] = exc

    holder = threading.Thread(target=commit, args=("first", first_go))
    holder.start()
    assert first_writing.wait(10)
    # Two callers queue behind the busy writer; whichever leads next writes both jobs in
    # one batch, and that batch outlasts the other caller's 1 s wait.
    waiting = [threading.Thread(target=commit, args=(n, batch_go)) for n in ("b", "c")]
    for t in waiting:
        t.start()
    time.sleep(0.3)  # both are queued long before
    first_go.set()
    time.sleep(1.3)
    batch_go.set()
    for t in [holder, *waiting]:
        t.join()
    assert results["first"] == 0
    assert sorted([results["b"], results["c"]]) == [1, 2], results  # type: ignore[type-var]
    logged = {loads_strict(e.entry)["name"]: e.index for e in store.entries(0, 3)}
    assert logged == results
    assert store.size() == 3
    store.close()
