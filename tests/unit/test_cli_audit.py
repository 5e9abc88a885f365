"""``execgate audit ...`` and ``execgate outcome`` end to end, on a real gateway home.

The audit commands read the home's log (``checkpoint``, ``prove``, ``export``, ``tail``,
``show``) or verify offline with nothing but the node's public key (``verify``,
``verify-proof``). Verification exits 0 (VERIFIED) or 1 with one ``execgate: NOT
VERIFIED: ...`` line; a usage mistake is exit 2 with one ``execgate: error: ...`` line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from auditkit import Log, cli, make_log
from gatekit import NOW

from execgate.audit.checkpoint import open_checkpoint, parse_tlog_proof
from execgate.audit.log import AuditLog
from execgate.audit.note import Verifier
from execgate.keyfile import read_public_key
from execgate.model import Outcome
from execgate.store.base import WriteJob
from execgate.store.sqlite import SQLiteStore

SIZE = 24  # make_log(rounds=2): 22 decisions and 2 outcomes
HEADER = b'{"format": "execgate-audit-export/1", "origin": "gw-test"}\n'
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """A home with a log of 24 records; tests that write to it use ``fresh`` instead."""
    return make_log(tmp_path_factory.mktemp("audit-cli"), rounds=2)


@pytest.fixture
def fresh(built: Log, tmp_path: Path) -> Path:
    """A copy of the built home, for tests that append to the log."""
    shutil.copytree(built.home, tmp_path / "home")
    return tmp_path / "home"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory with no gateway home anywhere in reach."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    monkeypatch.chdir(path)
    monkeypatch.setenv("EXECGATE_HOME", str(tmp_path / "no-such-home"))
    return path


def _vkey(home: Path) -> str:
    err = cli("--home", home, "audit", "checkpoint").err
    return err.split("(vkey): ", 1)[1].split()[0]


def _size(home: Path) -> int:
    store = SQLiteStore(home / "state.db")
    try:
        return store.size()
    finally:
        store.close()


# -- audit checkpoint ----------------------------------------------------------------------


def test_checkpoint_prints_a_signed_checkpoint_and_the_vkey(built: Log, tmp_path: Path) -> None:
    result = cli("--home", built.home, "audit", "checkpoint")
    assert result.code == 0, result
    verifier = Verifier("gw-test", read_public_key(built.pub))
    checkpoint = open_checkpoint(result.out, verifier)
    assert (checkpoint.origin, checkpoint.size) == ("gw-test", SIZE)
    assert f"node key (vkey): {verifier.vkey()}" in result.err
    assert Verifier.from_vkey(_vkey(built.home)) == verifier
    # the same size gives the same checkpoint; -o writes it to a file
    again = cli("--home", built.home, "audit", "checkpoint", "-o", tmp_path / "cp.note")
    assert again.code == 0
    assert again.out == ""
    assert (tmp_path / "cp.note").read_text() == result.out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("k.pub.jwk", "holds a public key; refusing to overwrite it"),
        ("home/trust.toml", "is a gateway home's trust.toml; refusing to overwrite it"),
        ("home/execgate.toml", "is a gateway home's execgate.toml; refusing to overwrite it"),
        ("home/state.db", "is a SQLite database; refusing to overwrite it"),
        ("home/policy.yaml", "is the policy of the gateway home"),
        ("home/state.db-head", "is a file of the state store of the gateway home"),
        ("home/state.db-writer.lock", "is a file of the state store of the gateway"),
        ("home/keys/node.pub.jwk", "holds a public key"),
        ("elsewhere/log.db-wal", "belongs to the SQLite store log.db; refusing"),
        ("elsewhere/log.db-head", "belongs to the SQLite store log.db; refusing"),
    ],
)
def test_an_output_never_replaces_a_key_a_home_file_or_a_store(
    built: Log, tmp_path: Path, target: str, message: str
) -> None:
    """A typo in -o would lose a public key, a home's config or trust store, or the log."""
    assert cli("keygen", tmp_path / "k.jwk").code == 0
    home_file = target.removeprefix("home/")
    path = built.home / home_file if home_file != target else tmp_path / target
    if target.startswith("elsewhere/"):  # a store outside any home, and a file beside it
        path.parent.mkdir()
        SQLiteStore(path.parent / "log.db").close()
        path.write_bytes(b"beside the store")
    before = path.read_bytes()
    refused = cli("--home", built.home, "audit", "checkpoint", "-o", path).usage()
    assert message in refused
    assert path.read_bytes() == before


def test_checkpoint_of_an_empty_log(tmp_path: Path) -> None:
    assert cli("init", tmp_path / "home", "--id", "gw-empty").code == 0
    result = cli("--home", tmp_path / "home", "audit", "checkpoint")
    assert result.code == 0, result
    assert result.out.startswith("gw-empty\n0\n")


def test_checkpoint_refuses_to_overwrite_a_private_key(built: Log, tmp_path: Path) -> None:
    assert cli("keygen", tmp_path / "k.jwk").code == 0
    before = (tmp_path / "k.jwk").read_bytes()
    message = cli("--home", built.home, "audit", "checkpoint", "-o", tmp_path / "k.jwk").usage()
    assert "holds a private key; refusing to overwrite it" in message
    assert (tmp_path / "k.jwk").read_bytes() == before


# -- audit prove and verify-proof ----------------------------------------------------------


def _prove(built: Log, index: int, target: Path) -> Path:
    result = cli("--home", built.home, "audit", "prove", str(index), "-o", target)
    assert result.code == 0, result
    return target


@pytest.mark.parametrize("kind", ["proceed", "deny", "outcome", "last"])
def test_prove_output_verifies_offline_with_only_the_public_key(
    built: Log, elsewhere: Path, kind: str
) -> None:
    if kind == "outcome":
        index = next(iter(built.outcomes.values()))
    elif kind == "last":
        index = SIZE - 1
    else:
        decision = built.with_outcome(Outcome(kind))[1]
        assert decision.log_index is not None
        index = decision.log_index
    _prove(built, index, elsewhere / "evidence.txt")
    shutil.copy(built.pub, elsewhere / "node.pub.jwk")
    before = sorted(elsewhere.iterdir())
    result = cli("audit", "verify-proof", "evidence.txt", "--key", "node.pub.jwk")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0] == f"VERIFIED: entry {index} is in log gw-test"
    assert lines[1].startswith(f"  checkpoint   size {SIZE}, root ")
    record = built.records()[index]
    assert f"  kind         {record['kind']}" in lines
    assert f"  decision id  {record['decision_id']}" in lines
    if record["kind"] == "decision":
        assert f"  outcome      {record['outcome']}" in lines
    else:
        assert f"  status       {record['status']}" in lines
    assert sorted(elsewhere.iterdir()) == before  # no home, no store was made
    # the vkey instead of the key file
    vkey = _vkey(built.home)
    assert cli("audit", "verify-proof", "evidence.txt", "--key", vkey).code == 0


def test_prove_writes_to_stdout_and_uses_a_covering_checkpoint(built: Log) -> None:
    result = cli("--home", built.home, "audit", "prove", "3")
    assert result.code == 0, result
    proof = parse_tlog_proof(result.out)
    assert proof.index == 3
    assert proof.extra is not None
    assert json.loads(proof.extra)["decision_id"] == built.decisions[3].decision_id


def test_flipping_any_character_of_the_evidence_fails(built: Log, tmp_path: Path) -> None:
    evidence = _prove(built, 5, tmp_path / "ev.txt").read_text()
    assert len(evidence) > 500
    for position in range(0, len(evidence), max(1, len(evidence) // 60)):
        flipped = evidence[:position] + chr(ord(evidence[position]) ^ 1) + evidence[position + 1 :]
        (tmp_path / "bad.txt").write_text(flipped)
        result = cli("audit", "verify-proof", tmp_path / "bad.txt", "--key", built.pub)
        assert result.not_verified(), (position, result)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "no empty line before the checkpoint"),
        ("hello\n\nworld\n", "does not start with c2sp.org/tlog-proof@v1"),
        ("c2sp.org/tlog-proof@v1\nindex 1\n\n", "malformed note"),
        ("c2sp.org/tlog-proof@v1\nindex x\n\ngw-test\n1\nAAAA\n\n", "index"),
    ],
)
def test_malformed_evidence_is_not_verified(
    built: Log, tmp_path: Path, content: str, fragment: str
) -> None:
    (tmp_path / "ev.txt").write_text(content)
    reason = cli("audit", "verify-proof", tmp_path / "ev.txt", "--key", built.pub).not_verified()
    assert fragment in reason


def test_evidence_cut_short_or_binary_is_not_verified(built: Log, tmp_path: Path) -> None:
    evidence = _prove(built, 7, tmp_path / "ev.txt").read_bytes()
    for broken in (evidence[: len(evidence) // 2], evidence[:-2], b"\xff" + evidence):
        (tmp_path / "bad.txt").write_bytes(broken)
        assert cli("audit", "verify-proof", tmp_path / "bad.txt", "--key", built.pub).not_verified()


def test_evidence_checked_with_another_key_is_not_verified(built: Log, tmp_path: Path) -> None:
    _prove(built, 2, tmp_path / "ev.txt")
    assert cli("keygen", tmp_path / "other.jwk").code == 0
    reason = cli(
        "audit", "verify-proof", tmp_path / "ev.txt", "--key", tmp_path / "other.pub.jwk"
    ).not_verified()
    assert "no verifiable signatures from a trusted key" in reason
    other = Verifier("gw-other", read_public_key(built.pub)).vkey()
    reason = cli("audit", "verify-proof", tmp_path / "ev.txt", "--key", other).not_verified()
    assert (
        reason == "the evidence's checkpoint is of log 'gw-test', but the key is for log 'gw-other'"
    )


def test_evidence_without_its_entry_is_not_verified(built: Log, tmp_path: Path) -> None:
    evidence = _prove(built, 2, tmp_path / "ev.txt").read_text()
    lines = evidence.split("\n")
    assert lines[1].startswith("extra ")
    (tmp_path / "bare.txt").write_text("\n".join([lines[0], *lines[2:]]))
    reason = cli("audit", "verify-proof", tmp_path / "bare.txt", "--key", built.pub).not_verified()
    assert "does not carry its entry" in reason


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("prove", "24"), "index 24 is not in the log of gw-test (size 24)"),
        (("prove", "99999999999999999999"), "'99999999999999999999' is not a log index"),
        (("prove", "two"), "'two' is not a log index"),
        (("prove", "-1"), "'-1' is not a log index"),
        (("prove", "1.5"), "'1.5' is not a log index"),
        (("show", "24"), "index 24 is not in the log of gw-test (size 24)"),
        (("show", "x"), "'x' is not a log index"),
        (("tail", "-n", "0"), "'0' is not a positive integer"),
        (("prove",), "the following arguments are required: INDEX"),
        (("verify-proof", "nope.txt", "--key", "KEY"), "evidence file nope.txt does not exist"),
        (("verify", "nope.jsonl", "--key", "KEY"), "export file nope.jsonl does not exist"),
        (("verify", "EXPORT"), "the following arguments are required: --key"),
        (("verify", "EXPORT", "--key", "nope.pub.jwk"), "--key file 'nope.pub.jwk' does not"),
        (
            ("verify", "EXPORT", "--key", "gw-test+zz+AAAA"),
            "--key 'gw-test+zz+AAAA' is not a verifier",
        ),
        (("verify", "EXPORT", "--key", "PRIVATE"), "holds a PRIVATE key"),
        (("verify", "EXPORT", "--key", "EXPORT"), "is not a JWK key file"),
        (("verify", "EXPORT", "--key", "NOTE"), "holds neither a public JWK nor a verifier key"),
        (("verify", "EXPORT", "--key", "."), "is a directory"),
        (("verify", "EXPORT", "--key", "x" * 5000), "--key file (the value given) does not exist"),
        (("verify", "EXPORT", "--key", '{"d": "secret"}'), "--key file (the value given)"),
        (("verify", "EXPORT", "--key", "KEY", "--checkpoint", "nope"), "--checkpoint file nope"),
        (("export", "no/such/dir/x.jsonl"), "cannot write no/such/dir/x.jsonl"),
        (("export", "."), "is a directory"),
        (("frobnicate",), "invalid choice"),
        ((), "the following arguments are required: SUBCOMMAND"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(
    built: Log,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("--home", built.home, "audit", "export", "EXPORT").code == 0
    assert cli("--home", built.home, "audit", "checkpoint", "-o", "NOTE").code == 0
    names = {"KEY": str(built.pub), "PRIVATE": str(built.home / "keys" / "node.jwk")}
    argv = tuple(names.get(a, a) for a in argv)
    before = sorted(tmp_path.iterdir())
    message = cli("--home", built.home, "audit", *argv).usage()
    assert fragment in message
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "command", [("checkpoint",), ("prove", "0"), ("export", "x"), ("tail",), ("show", "0")]
)
def test_live_log_commands_need_a_home(elsewhere: Path, command: tuple[str, ...]) -> None:
    message = cli("audit", *command).usage()
    assert "no gateway home at" in message
    assert list(elsewhere.iterdir()) == []


def test_a_store_that_cannot_be_opened_is_exit_5(fresh: Path) -> None:
    (fresh / "state.db").write_bytes(b"not a database" * 64)
    for argv in (
        ("audit", "export", "-"),
        ("audit", "tail"),
        ("outcome", "x", "--status", "failed"),
    ):
        result = cli("--home", fresh, *argv)
        assert result.code == 5, result
        assert "the state store is unavailable (fail closed)" in result.error()
        assert "restored from a backup" in result.error()  # and what to do about it


# -- audit export and verify ---------------------------------------------------------------


def test_export_writes_a_file_that_verifies_offline(
    built: Log, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli("--home", built.home, "audit", "export", "log.jsonl")
    assert result.code == 0, result
    assert (
        result.err == f"wrote log.jsonl: {SIZE} entries and 5 signed checkpoints of log gw-test\n"
    )
    lines = (elsewhere / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "execgate-audit-export/1", "origin": "gw-test"}
    assert sum(1 for line in lines if "index" in json.loads(line)) == SIZE
    shutil.copy(built.pub, "node.pub.jwk")
    result = cli("audit", "verify", "log.jsonl", "--key", "node.pub.jwk")
    assert result.code == 0, result
    assert (
        result.out.splitlines()[0] == f"VERIFIED: log gw-test, {SIZE} entries, 5 signed checkpoints"
    )
    assert result.err == ""
    assert sorted(p.name for p in elsewhere.iterdir()) == ["log.jsonl", "node.pub.jwk"]


def test_export_to_stdout_and_verify_from_stdin(
    built: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli("--home", built.home, "audit", "export", "-")
    assert result.code == 0, result
    assert len(result.out.splitlines()) == 1 + SIZE + 5
    assert result.err == f"{SIZE} entries and 5 signed checkpoints of log gw-test\n"
    stdin = io.TextIOWrapper(io.BytesIO(result.out.encode()))
    monkeypatch.setattr("sys.stdin", stdin)
    verified = cli("audit", "verify", "-", "--key", built.pub)
    assert verified.code == 0, verified
    assert verified.out.startswith(f"VERIFIED: log gw-test, {SIZE} entries")


def test_export_refuses_to_overwrite_a_private_key(built: Log) -> None:
    node = built.home / "keys" / "node.jwk"
    before = node.read_bytes()
    message = cli("--home", built.home, "audit", "export", node).usage()
    assert "holds a private key; refusing to overwrite it with an export" in message
    assert node.read_bytes() == before


def test_verify_accepts_the_vkey_and_a_kept_checkpoint(built: Log, tmp_path: Path) -> None:
    assert cli("--home", built.home, "audit", "checkpoint", "-o", tmp_path / "cp.note").code == 0
    assert cli("--home", built.home, "audit", "export", tmp_path / "x.jsonl").code == 0
    vkey = _vkey(built.home)
    (tmp_path / "vkey.txt").write_text(vkey + "\n")
    for key in (vkey, str(tmp_path / "vkey.txt")):
        result = cli(
            "audit",
            "verify",
            tmp_path / "x.jsonl",
            "--key",
            key,
            "--checkpoint",
            tmp_path / "cp.note",
        )
        assert result.code == 0, result
        assert f"(size {SIZE}) unchanged" in result.out


def test_verify_refuses_a_key_file_any_user_may_rewrite_or_that_is_not_a_file(
    built: Log, tmp_path: Path
) -> None:
    """The key a log is checked against: a vkey file is held to what a .pub.jwk is."""
    assert cli("--home", built.home, "audit", "export", tmp_path / "x.jsonl").code == 0
    vkey = tmp_path / "vkey.txt"
    vkey.write_text(_vkey(built.home) + "\n")
    for key in (vkey, built.pub):
        key.chmod(0o666)
        message = cli("audit", "verify", tmp_path / "x.jsonl", "--key", key).usage()
        assert f"{key} may be written by any user (mode 0666); run: chmod o-w {key}" in message
        key.chmod(0o644)
        assert cli("audit", "verify", tmp_path / "x.jsonl", "--key", key).code == 0
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)  # read as a file, it would hang the command
    message = cli("audit", "verify", tmp_path / "x.jsonl", "--key", fifo).usage()
    assert f"--key file {fifo} is not a regular file" in message


def test_verify_inputs_over_their_limit_do_not_verify(built: Log, tmp_path: Path) -> None:
    """However malformed, what is being verified is exit 1 NOT VERIFIED (as the module
    says); only a missing file or a bad flag is a usage error."""
    assert cli("--home", built.home, "audit", "export", tmp_path / "x.jsonl").code == 0
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (5 * 1024 * 1024))
    runs = (
        ("audit", "verify", tmp_path / "x.jsonl", "--key", built.pub, "--checkpoint", big),
        ("audit", "verify-proof", big, "--key", built.pub),
    )
    for argv in runs:
        result = cli(*argv)
        assert result.code == 1, result
        assert result.err.startswith("execgate: NOT VERIFIED: ")
        assert f"{big} is larger than" in result.err
    missing = cli("audit", "verify-proof", tmp_path / "none.txt", "--key", built.pub)
    assert missing.code == 2


def test_verify_a_checkpoint_from_another_key_or_garbage_is_not_verified(
    built: Log, tmp_path: Path
) -> None:
    assert cli("--home", built.home, "audit", "export", tmp_path / "x.jsonl").code == 0
    other = tmp_path / "other"
    assert cli("init", other, "--id", "gw-test").code == 0
    assert cli("--home", other, "audit", "checkpoint", "-o", tmp_path / "other.note").code == 0
    (tmp_path / "garbage.note").write_bytes(b"\xff\xfe garbage")
    (tmp_path / "text.note").write_text("gw-test\n3\n")
    verify = ("audit", "verify", tmp_path / "x.jsonl", "--key", built.pub, "--checkpoint")
    reason = cli(*verify, tmp_path / "other.note").not_verified()
    assert reason == (
        "the given checkpoint does not verify: note has no verifiable signatures from a trusted key"
    )
    assert "not UTF-8" in cli(*verify, tmp_path / "garbage.note").not_verified()
    assert "malformed note" in cli(*verify, tmp_path / "text.note").not_verified()
    # another gateway's whole export, checked with this node's key
    assert cli("--home", other, "audit", "export", tmp_path / "o.jsonl").code == 0
    reason = cli("audit", "verify", tmp_path / "o.jsonl", "--key", built.pub).not_verified()
    assert "no verifiable signatures from a trusted key" in reason


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "the export is empty"),
        (b"\n", "line 1: not JSON"),
        (b"[" * 100_000 + b"\n", "line 1: not JSON"),
        (b'{"format": "something-else/1"}\n', "line 1: not an execgate-audit-export/1 header"),
        (b'{"format": "execgate-audit-export/1"}\n', "line 1: the header has no origin"),
        (HEADER, "the export has no signed checkpoint"),
        (b"\xff\xfe\n", "line 1 is not UTF-8 text"),
        (HEADER + b'{"index": true, "entry": ""}\n', "line 2: index True where index 0 was"),
        (HEADER + b'{"checkpoint": 5}\n', "line 2: checkpoint is not a string"),
        (HEADER + b'{"checkpoint": "x"}\n', "line 2: checkpoint does not verify: malformed note"),
        (HEADER + b'{"index": 0, "entry": "***"}\n', "line 2: index 0: entry is not base64"),
        (HEADER + b'{"index": 0, "entry": 7}\n', "line 2: index 0: entry is not base64 text"),
        (HEADER + b"7\n", "line 2: not a JSON object"),
    ],
)  # fmt: skip
def test_a_corrupt_export_is_not_verified(
    built: Log, tmp_path: Path, content: bytes, fragment: str
) -> None:
    (tmp_path / "x.jsonl").write_bytes(content)
    reason = cli("audit", "verify", tmp_path / "x.jsonl", "--key", built.pub).not_verified()
    assert fragment in reason


def test_a_truncated_export_is_not_verified(built: Log, tmp_path: Path) -> None:
    assert cli("--home", built.home, "audit", "export", tmp_path / "x.jsonl").code == 0
    data = (tmp_path / "x.jsonl").read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.jsonl").write_bytes(data[:cut])
        result = cli("audit", "verify", tmp_path / "cut.jsonl", "--key", built.pub)
        assert result.not_verified()


# -- audit tail and show ---------------------------------------------------------------------


def test_tail_prints_one_line_per_record(built: Log) -> None:
    result = cli("--home", built.home, "audit", "tail")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert len(lines) == 10
    assert [int(line.split()[0]) for line in lines] == list(range(SIZE - 10, SIZE))
    records = built.records()
    for line in lines:
        index, kind, status, decision_id, *what = line.split()
        record = records[int(index)]
        assert (kind, decision_id) == (record["kind"], record["decision_id"])
        assert status == record.get("outcome", record.get("status"))
        if kind == "decision":
            assert what[:2] == [record["request"]["action"], record["request"]["resource"]]
    assert "outcome   failed" in result.out
    everything = cli("--home", built.home, "audit", "tail", "-n", "1000").out.splitlines()
    assert len(everything) == SIZE
    assert sum(" deny " in line for line in everything) == 6
    assert cli("--home", built.home, "audit", "tail", "-n", "1").out.splitlines() == lines[-1:]


def test_tail_of_an_empty_log(tmp_path: Path) -> None:
    assert cli("init", tmp_path / "home", "--id", "gw-empty").code == 0
    result = cli("--home", tmp_path / "home", "audit", "tail")
    assert (result.code, result.out) == (0, "")
    assert result.err == "the audit log of gw-empty is empty\n"


def test_tail_escapes_control_characters_from_requests(fresh: Path, tmp_path: Path) -> None:
    """Such a request is refused before it is decided; a record that holds one anyway (an
    older gateway's, or a hand-written log) is still printed escaped."""
    request = {"action": "payments.x\x1b[2J", "resource": "acct:\x07\n", "runtime": "r"}
    (tmp_path / "req.json").write_text(json.dumps(request))
    refused = cli("--home", fresh, "decide", "--request", tmp_path / "req.json")
    assert refused.code == 2
    assert "must be printable" in refused.err
    store = SQLiteStore(fresh / "state.db")
    try:
        decided = [json.loads(e.entry) for e in store.entries(0, store.size())]
        last = next(r for r in reversed(decided) if r["kind"] == "decision")
        record = {**last, "request": {**request, "args": {}, "parent": None}}
        store.commit(WriteJob(None, 0, None, lambda _c, _i: json.dumps(record).encode()))
    finally:
        store.close()
    line = cli("--home", fresh, "audit", "tail", "-n", "1").out
    assert "payments.x\\x1b[2J acct:\\x07\\x0a" in line
    assert "\x1b" not in line
    assert line.count("\n") == 1


def test_show_prints_one_record_as_json(built: Log) -> None:
    records = built.records()
    for index in (0, 2, *built.outcomes.values(), SIZE - 1):
        result = cli("--home", built.home, "audit", "show", str(index))
        assert result.code == 0, result
        assert json.loads(result.out) == records[index]
        assert result.out.startswith("{\n  ")


def test_show_escapes_what_a_terminal_would_act_on_and_reads_back_the_same(
    fresh: Path, tmp_path: Path
) -> None:
    """Arguments are anyone's text: the C1 controls (CSI, OSC, ST: json.dumps escapes
    only C0) and the direction-changing marks are printed as JSON escapes."""
    note = "\u009b2J\u009d0;pwned\u009c \x1b[2J \u202eevil\u2069 \u00e9t\u00e9"
    request = {"action": "payments.transfer", "resource": "acct:1", "args": {"note": note}}
    (tmp_path / "req.json").write_text(json.dumps({**request, "runtime": "agent-1"}))
    cli("--home", fresh, "decide", "--request", tmp_path / "req.json")
    store = SQLiteStore(fresh / "state.db")
    try:
        index = store.size() - 1
    finally:
        store.close()
    shown = cli("--home", fresh, "audit", "show", str(index)).out
    for raw in ("\u009b", "\u009d", "\u009c", "\x1b", "\u202e", "\u2069"):
        assert raw not in shown
    assert "\\u009b2J" in shown
    assert "\u00e9t\u00e9" in shown  # printable text stays as it is
    assert json.loads(shown)["request"]["args"]["note"] == note


# -- audit reset-head ------------------------------------------------------------------------


def _append(home: Path, n: int) -> None:
    store = SQLiteStore(home / "state.db")
    try:
        for _ in range(n):
            store.commit(WriteJob(None, 0, None, lambda _c, i: b'{"index": %d}' % i))
    finally:
        store.close()


def test_reset_head_makes_the_head_anew_once_the_log_holds_a_kept_checkpoint(
    built: Log, fresh: Path, tmp_path: Path
) -> None:
    """A removed head stops the store (the node signs nothing, nothing is appended);
    reset-head verifies every entry up to the newest stored checkpoint and the kept
    checkpoint in them, then makes the head from the store as it is."""
    kept = tmp_path / "kept.note"
    assert cli("--home", fresh, "audit", "checkpoint", "-o", kept).code == 0  # size 24
    _append(fresh, 2)  # after the newest checkpoint: covered by none
    (fresh / "state.db-head").unlink()
    refused = cli("--home", fresh, "audit", "checkpoint")
    assert refused.code != 0
    assert "state.db-head) is missing" in refused.err
    assert "'execgate audit reset-head'" in refused.err
    result = cli("--home", fresh, "audit", "reset-head", "--key", built.pub, "--checkpoint", kept)
    assert result.code == 0, result
    assert f"VERIFIED: log gw-test, {SIZE} entries" in result.err
    assert f"made the committed tree head anew: {SIZE + 2} entries" in result.err
    assert "(2 entries after the newest checkpoint, unchecked)" in result.err
    assert "revocations and purges are not in the log" in result.err
    signed = cli("--home", fresh, "audit", "checkpoint")
    assert signed.code == 0, signed
    verifier = Verifier("gw-test", read_public_key(built.pub))
    assert open_checkpoint(signed.out, verifier).size == SIZE + 2


def test_reset_head_refuses_an_older_copy_put_back_without_its_head(
    built: Log, fresh: Path, tmp_path: Path
) -> None:
    """The copy holds fewer entries than a checkpoint kept from the store it replaced:
    NOT VERIFIED, and no head is made (every write stays refused)."""
    older = sqlite3.connect(tmp_path / "older.db")
    with sqlite3.connect(fresh / "state.db") as source:
        source.backup(older)
    older.close()
    _append(fresh, 3)
    kept = tmp_path / "kept.note"
    assert cli("--home", fresh, "audit", "checkpoint", "-o", kept).code == 0  # size 27
    for suffix in ("", "-wal", "-shm", "-head"):
        (fresh / f"state.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "older.db", fresh / "state.db")
    (fresh / "state.db").chmod(0o600)
    result = cli("--home", fresh, "audit", "reset-head", "--key", built.pub, "--checkpoint", kept)
    assert result.code == 1, result
    assert "execgate: NOT VERIFIED:" in result.err
    assert f"the log had {SIZE + 3}" in result.err
    assert not (fresh / "state.db-head").exists()
    assert _size(fresh) == SIZE
    assert cli("--home", fresh, "audit", "checkpoint").code != 0


def test_reset_head_replaces_a_damaged_head(built: Log, fresh: Path, tmp_path: Path) -> None:
    kept = tmp_path / "kept.note"
    assert cli("--home", fresh, "audit", "checkpoint", "-o", kept).code == 0
    (fresh / "state.db-head").write_bytes(b"")
    assert "head is damaged" in cli("--home", fresh, "audit", "checkpoint").err
    result = cli("--home", fresh, "audit", "reset-head", "--key", built.pub, "--checkpoint", kept)
    assert result.code == 0, result
    assert cli("--home", fresh, "audit", "checkpoint").code == 0


def test_reset_head_unverified_takes_the_store_as_it_is(fresh: Path) -> None:
    (fresh / "state.db-head").unlink()
    result = cli("--home", fresh, "audit", "reset-head", "--unverified")
    assert result.code == 0, result
    assert "VERIFIED" not in result.err
    assert f"made the committed tree head anew: {SIZE} entries" in result.err
    assert cli("--home", fresh, "audit", "checkpoint").code == 0


def test_reset_head_of_a_store_with_no_checkpoint_says_only_unverified_can(
    built: Log, fresh: Path, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.note"
    assert cli("--home", fresh, "audit", "checkpoint", "-o", kept).code == 0
    conn = sqlite3.connect(fresh / "state.db")
    with conn:  # a store whose log holds no signed checkpoint
        conn.execute("DROP TRIGGER IF EXISTS checkpoints_no_delete")
        conn.execute("DELETE FROM checkpoints")
    conn.close()
    (fresh / "state.db-head").unlink()
    result = cli("--home", fresh, "audit", "reset-head", "--key", built.pub, "--checkpoint", kept)
    assert result.code == 1
    assert "holds no signed checkpoint to check its log against" in result.err
    assert "only --unverified makes its head" in result.err
    assert not (fresh / "state.db-head").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ((), "give --key PUB and --checkpoint FILE (both kept outside the home), or --unverified"),
        (("--unverified", "--key", "k"), "or --unverified to take the store as it is"),
        (("--key", "k"), "give both --key PUB and --checkpoint FILE"),
        (("--checkpoint", "c"), "give both --key PUB and --checkpoint FILE"),
    ],
)
def test_reset_head_says_what_it_needs(fresh: Path, flags: tuple[str, ...], message: str) -> None:
    (fresh / "state.db-head").unlink()
    result = cli("--home", fresh, "audit", "reset-head", *flags)
    assert result.code == 2
    assert message in result.err
    assert not (fresh / "state.db-head").exists()


# -- outcome ---------------------------------------------------------------------------------


def test_outcome_is_logged_after_its_decision(built: Log, fresh: Path) -> None:
    decision = built.unreported(Outcome.PROCEED)
    result = cli(
        "--home", fresh, "outcome", decision.decision_id, "--status", "succeeded",
        "--exit-code", "0", "--digest", DIGEST,
    )  # fmt: skip
    assert result.code == 0, result
    assert result.out == (
        f"logged outcome succeeded of decision {decision.decision_id} at log index {SIZE}\n"
    )
    record = json.loads(cli("--home", fresh, "audit", "show", str(SIZE)).out)
    assert record["kind"] == "outcome"
    assert record["decision_index"] == decision.log_index
    assert (record["status"], record["exit_code"], record["result_digest"]) == (
        "succeeded",
        0,
        DIGEST,
    )
    # a reroute's outcome, without the optional fields
    reroute = built.unreported(Outcome.REROUTE)
    result = cli("--home", fresh, "outcome", reroute.decision_id, "--status", "failed")
    assert result.code == 0, result
    record = json.loads(cli("--home", fresh, "audit", "show", str(SIZE + 1)).out)
    assert (record["status"], record["exit_code"], record["result_digest"]) == (
        "failed",
        None,
        None,
    )


def test_outcome_mistakes_are_one_line_and_log_nothing(built: Log, fresh: Path) -> None:
    denied = built.with_outcome(Outcome.DENY)[0].decision_id
    paused = built.with_outcome(Outcome.PAUSE)[0].decision_id
    reported = next(iter(built.outcomes))
    proceed = built.unreported(Outcome.PROCEED).decision_id
    cases: list[tuple[tuple[str, ...], str]] = [
        (("no-such-decision", "--status", "succeeded"), "is not in this gateway's log"),
        ((denied, "--status", "succeeded"), f"decision {denied} was deny: nothing executed"),
        ((paused, "--status", "failed"), "was pause: nothing executed"),
        ((reported, "--status", "failed"), f"outcome of decision {reported} is already logged"),
        ((proceed, "--status", "done"), "argument --status: invalid choice: 'done'"),
        ((proceed,), "the following arguments are required: --status"),
        ((proceed, "--status", "failed", "--exit-code", "x"), "--exit-code: 'x' is not an integer"),
        ((proceed, "--status", "failed", "--exit-code", str(2**31)), "is not a 32-bit exit code"),
        ((proceed, "--status", "failed", "--digest", "sha256:" + "AB" * 32), "--digest"),
        ((proceed, "--status", "failed", "--digest", "ab" * 32), "sha256:<64 lowercase hex"),
        ((proceed, "--status", "failed", "--digest", "sha256:abc"), "is not sha256:"),
    ]  # fmt: skip
    for argv, fragment in cases:
        message = cli("--home", fresh, "outcome", *argv).usage()
        assert fragment in message, (argv, message)
    assert _size(fresh) == SIZE


def test_outcome_needs_a_home(elsewhere: Path) -> None:
    assert "no gateway home at" in cli("outcome", "x", "--status", "failed").usage()


def test_help_lists_the_audit_commands() -> None:
    result = cli("audit", "--help")
    assert result.code == 0
    for name in ("checkpoint", "prove", "export", "verify", "verify-proof", "tail", "show"):
        assert name in result.out


def test_tail_and_show_name_a_damaged_entry(fresh: Path) -> None:
    conn = sqlite3.connect(fresh / "state.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET entry = ? WHERE idx = 3", (b"\x00 not json",))
    conn.close()
    lines = cli("--home", fresh, "audit", "tail", "-n", str(SIZE - 3)).out.splitlines()
    assert lines[0].split() == ["3", "?", "?", "-", "(not", "a", "JSON", "record)"]
    message = cli("--home", fresh, "audit", "show", "3").usage()
    assert message.startswith("log entry 3 is not a JSON record; the log is damaged")


def test_a_proven_entry_that_is_not_a_record_is_still_shown_verified(
    built: Log, tmp_path: Path
) -> None:
    """verify-proof proves bytes are in the log; it describes them only if they are a record."""
    store = SQLiteStore(tmp_path / "other.db")
    try:
        store.commit(WriteJob(None, 0, None, lambda _c, _i: b"\x01raw bytes"))
        log = AuditLog(store, origin="gw-test", key=built.kit.node_key)
        (tmp_path / "ev.txt").write_text(log.evidence(0, now=NOW))
    finally:
        store.close()
    result = cli("audit", "verify-proof", tmp_path / "ev.txt", "--key", built.pub)
    assert result.code == 0, result
    assert result.out.splitlines()[2] == "  entry        10 bytes, not a JSON record"


def test_an_export_line_too_long_is_not_verified(built: Log, tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_bytes(HEADER + b'{"index": 0, "entry": "' + b"A" * 5_000_000)
    reason = cli("audit", "verify", tmp_path / "x.jsonl", "--key", built.pub).not_verified()
    assert reason == "line 2 is longer than 4194304 bytes"


def test_a_store_missing_a_merkle_node_is_exported_all_the_same(fresh: Path) -> None:
    """The node signs no tree it cannot read whole, but every entry is exported for
    offline checking, which then finds the log whole (its entries hash to the signed
    roots) or says what is wrong."""
    assert cli("--home", fresh, "audit", "checkpoint").code == 0
    conn = sqlite3.connect(fresh / "state.db", isolation_level=None)
    conn.execute("DROP TRIGGER merkle_nodes_no_delete")
    # 24 leaves: the root is made of the subtrees of leaves 0-15 and 16-23; the second
    conn.execute("DELETE FROM merkle_nodes WHERE level = 3 AND idx = 2")
    conn.close()
    out = fresh.parent / "export.jsonl"
    exported = cli("--home", fresh, "audit", "export", out)
    assert exported.code == 0, exported
    assert f"{SIZE} entries" in exported.err
    checked = cli("audit", "verify", out, "--key", fresh / "keys" / "node.pub.jwk")
    assert checked.code == 0, checked
    assert f"{SIZE} entries" in checked.out


def test_outputs_of_ones_own_in_a_home_are_replaced_its_files_never(fresh: Path) -> None:
    """Inside a home, what the home's config names (here a policy moved to a folder of
    its own) is never written over; a file of the user's own there is, like anywhere."""
    (fresh / "policies").mkdir()
    (fresh / "policy.yaml").rename(fresh / "policies" / "main.yaml")
    (fresh / "trust.toml").rename(fresh / "authorities.toml")
    config = fresh / "execgate.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace('policy = "policy.yaml"', 'policy = "policies/main.yaml"')
    config.write_text(text.replace('trust = "trust.toml"', 'trust = "authorities.toml"'))
    trust = fresh / "authorities.toml"
    refused = cli("--home", fresh, "audit", "checkpoint", "-o", trust).usage()
    assert f"is the trust store of the gateway home {fresh.resolve()}" in refused
    policy = fresh / "policies" / "main.yaml"
    before = policy.read_bytes()
    refused = cli("--home", fresh, "audit", "checkpoint", "-o", policy).usage()
    assert f"is the policy of the gateway home {fresh.resolve()}" in refused
    assert policy.read_bytes() == before
    mine = fresh / "checkpoint.txt"
    for _ in range(2):  # written, then written again
        assert cli("--home", fresh, "audit", "checkpoint", "-o", mine).code == 0
    assert mine.read_text(encoding="utf-8").startswith("gw-test\n")
