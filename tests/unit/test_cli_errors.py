"""User mistakes: each is exit 2 and ONE line ``execgate: error: ...`` naming the problem.

Never a traceback, never a decision, never a half-written file. The table below is the
catalogue of mistakes the command is expected to explain; each row names the fragments a
user needs to see (the file, what is wrong, what to do).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gatekit import NOW

from execgate.cli import main
from execgate.errors import ConfigError, StoreError
from execgate.home import load_config
from execgate.jose import PrivateKey
from execgate.store.sqlite import SQLiteStore

REQUEST = {
    "action": "payments.transfer",
    "resource": "acct:1",
    "args": {"amount": 5},
    "runtime": "a",
}


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def _write(root: Path, name: str, text: str, mode: int = 0o644) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory with a good home, a good artifact and every broken file a user makes."""
    root = tmp_path_factory.mktemp("cli-errors")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert main(["init", "home", "--id", "gw-err"]) == 0
        assert main(["keygen", "runtime.jwk"]) == 0
        assert main([
            "--home", "home", "issue", "--sub", "a", "--runtime-key", "runtime.pub.jwk",
            "--action", "payments.*", "--resource", "acct:**", "-o", "art.jwt",
        ]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    runtime = json.loads((root / "runtime.jwk").read_text())
    other = PrivateKey.generate().to_jwk(private=True)
    # key files
    _write(root, "garbage.jwk", "this is not json\n", 0o600)
    _write(root, "array.jwk", "[1, 2]\n", 0o600)
    _write(root, "empty.jwk", "", 0o600)
    _write(root, "rsa.pub.jwk", json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB"}))
    _write(root, "short.pub.jwk", json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}))
    _write(root, "mismatch.jwk", json.dumps({**runtime, "x": other["x"]}), 0o600)
    _write(root, "loose.jwk", json.dumps(runtime), 0o644)
    (root / "dir.jwk").mkdir()
    # request files
    _write(root, "req.json", json.dumps(REQUEST))
    _write(root, "notjson.json", "{action: payments}")
    _write(root, "dup.json", '{"action": "a", "action": "b", "resource": "r", "runtime": "x"}')
    _write(root, "array.json", "[1, 2, 3]")
    _write(root, "missing.json", json.dumps({"action": "payments.transfer"}))
    _write(root, "types.json", json.dumps({**REQUEST, "action": 7}))
    _write(root, "bigint.json", json.dumps({**REQUEST, "args": {"amount": 2**53 + 1}}))
    _write(root, "args.json", json.dumps({**REQUEST, "args": ["--force"]}))
    _write(root, "unknown.json", json.dumps({**REQUEST, "user": "bob"}))
    _write(root, "artfield.json", json.dumps({"request": REQUEST, "artifact": 5}))
    _write(root, "withart.json", json.dumps({"request": REQUEST, "artifact": "a.b.c"}))
    _write(root, "withproof.json", json.dumps({"request": REQUEST, "proof": "a.b.c"}))
    _write(root, "binary.json", "")
    (root / "binary.json").write_bytes(b"\xff\xfe\x00")
    # homes, each broken in one way
    for name in (
        "h-toml", "h-section", "h-id", "h-trust", "h-trust-single", "h-trust-private",
        "h-trust-missing", "h-policy", "h-node",
    ):  # fmt: skip
        shutil.copytree(root / "home", root / name)
    _write(root, "h-toml/execgate.toml", "[gateway\nid = 'x'\n")
    with (root / "h-section/execgate.toml").open("a") as fh:
        fh.write("\n[mesh]\npeers = []\n")
    text = (root / "h-id/execgate.toml").read_text().replace('id = "gw-err"', "id = 7", 1)
    _write(root, "h-id/execgate.toml", text)
    _write(root, "h-trust/trust.toml", "[[authority]\n")
    trust = (root / "home/trust.toml").read_text()
    _write(root, "h-trust-single/trust.toml", trust.replace("[[authority]]", "[authority]"))
    private_line = (
        f'keys = [{{kty = "OKP", crv = "Ed25519", x = "{other["x"]}", d = "{other["d"]}"}}]'
    )
    lines = trust.splitlines()
    lines[lines.index(next(line for line in lines if line.startswith("keys")))] = private_line
    _write(root, "h-trust-private/trust.toml", "\n".join(lines) + "\n")
    (root / "h-trust-missing/trust.toml").unlink()
    with (root / "h-policy/policy.yaml").open("a") as fh:
        fh.write("  - name: broken\n    match: {action: x}\n    effect: allow\n")
    (root / "h-node/keys/node.jwk").chmod(0o644)
    (root / "not-a-home").mkdir()
    # policy files
    _write(root, "bad-policy.yaml", "version: 1\nrules:\n  - name: r\n    effect: proceed\n")
    _write(
        root,
        "unapprovable.yaml",
        "version: 1\nrules:\n  - name: big\n    match: {action: a}\n    effect: pause\n"
        "    approvers: [legal]\n    quorum: 1\n    ttl: 60\n",
    )
    _write(root, "bad-cases.yaml", "cases:\n  - name: c\n    expect: proceed\n")
    return root


@pytest.fixture
def cli(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Path]:
    monkeypatch.delenv("EXECGATE_HOME", raising=False)
    monkeypatch.chdir(workdir)
    yield workdir
    capsys.readouterr()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def assert_one_line_error(result: Run, *fragments: str, code: int = 2) -> str:
    assert result.code == code, result
    assert result.out == ""
    assert "Traceback" not in result.err
    assert result.err.endswith("\n")
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("execgate: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


ISSUE = ("--home", "home", "issue", "--sub", "a", "--runtime-key", "runtime.pub.jwk")
GRANT = ("--action", "payments.transfer", "--resource", "acct:1")
DECIDE = ("--home", "home", "decide", "--request", "req.json")

CASES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    # key files: missing, corrupt, not JSON, the wrong kind, loose permissions
    ("key missing", (*ISSUE[:-1], "nope.pub.jwk", *GRANT),
     ("nope.pub.jwk", "does not exist", "execgate keygen")),
    ("key not json", (*ISSUE[:-1], "garbage.jwk", *GRANT), ("garbage.jwk", "not valid JSON")),
    ("key not an object", (*ISSUE[:-1], "array.jwk", *GRANT), ("array.jwk", "one JWK object")),
    ("key empty", (*ISSUE[:-1], "empty.jwk", *GRANT), ("empty.jwk", "is empty")),
    ("key is a directory", (*ISSUE[:-1], "dir.jwk", *GRANT), ("dir.jwk", "is a directory")),
    ("key not ed25519", (*ISSUE[:-1], "rsa.pub.jwk", *GRANT), ("rsa.pub.jwk", "Ed25519")),
    ("key too short", (*ISSUE[:-1], "short.pub.jwk", *GRANT), ("short.pub.jwk", "32")),
    ("private key where a public one is expected", (*ISSUE[:-1], "runtime.jwk", *GRANT),
     ("runtime.jwk", "PRIVATE key", "runtime.pub.jwk")),
    ("public key where a private one is expected", (*ISSUE, *GRANT, "--key", "runtime.pub.jwk"),
     ("runtime.pub.jwk", "holds a public key", "private key")),
    ("private key readable by others", (*ISSUE, *GRANT, "--key", "loose.jwk"),
     ("loose.jwk", "0644", "chmod 600 loose.jwk")),
    ("private key x does not match d", (*ISSUE, *GRANT, "--key", "mismatch.jwk"),
     ("mismatch.jwk", "does not match")),
    ("proof key is public", ("--home", "home", "proof", "--request", "req.json", "--artifact",
     "art.jwt", "--runtime-key", "runtime.pub.jwk"), ("runtime.pub.jwk", "holds a public key")),
    ("attester key missing", ("attest", "--key", "nope.jwk", "--sub", "a",
      "--runtime-key", "runtime.pub.jwk", "--env", "a=b"),
     ("nope.jwk", "does not exist")),
    ("decide runtime key loose", (*DECIDE, "--artifact", "art.jwt", "--runtime-key",
     "loose.jwk"), ("chmod 600 loose.jwk",)),
    # homes
    ("no home", ("--home", "nowhere", "decide", "--request", "req.json"),
     ("no gateway home at nowhere", "execgate init nowhere", "--home")),
    ("not a home", ("--home", "not-a-home", "revoke", "--jti", "x", "--reason", "y"),
     ("not-a-home", "execgate.toml", "execgate init")),
    ("corrupt execgate.toml", ("--home", "h-toml", "decide", "--request", "req.json"),
     ("h-toml/execgate.toml", "not valid TOML", "line 1")),
    ("unknown config section", ("--home", "h-section", "decide", "--request", "req.json"),
     ("h-section/execgate.toml", "unknown sections", "mesh")),
    ("config id not a string", ("--home", "h-id", "decide", "--request", "req.json"),
     ("h-id/execgate.toml", "gateway id")),
    ("corrupt trust.toml", ("--home", "h-trust", "decide", "--request", "req.json"),
     ("h-trust/trust.toml", "not valid TOML")),
    ("trust authority not an array", ("--home", "h-trust-single", "decide", "--request",
     "req.json"), ("h-trust-single/trust.toml", "[[authority]]")),
    ("private key in trust.toml", ("--home", "h-trust-private", "decide", "--request",
     "req.json"), ("h-trust-private/trust.toml", "authority[0]", "PRIVATE", "rotate")),
    ("trust.toml missing", ("--home", "h-trust-missing", "decide", "--request", "req.json"),
     ("h-trust-missing/trust.toml", "does not exist", "restore")),
    ("invalid policy in the home", ("--home", "h-policy", "decide", "--request", "req.json"),
     ("h-policy/policy.yaml", "rule 'broken'", "line 31", "allow")),
    ("node key readable by others", ("--home", "h-node", "decide", "--request", "req.json"),
     ("h-node/keys/node.jwk", "chmod 600")),
    ("issue with no home", ("--home", "nowhere", *ISSUE[2:], *GRANT), ("no gateway home",)),
    # policy files
    ("policy check invalid", ("--home", "home", "policy", "check", "bad-policy.yaml"),
     ("bad-policy.yaml", "rule 'r'", "line 3", "'match'")),
    ("policy check a pause nobody can approve", ("--home", "home", "policy", "check",
     "unapprovable.yaml"), ("unapprovable.yaml", "rule 'big'", "line 3", "legal: 0",
     "trust.toml")),
    ("policy file missing", ("--home", "home", "policy", "hash", "nope.yaml"),
     ("nope.yaml", "No such file")),
    ("policy cases invalid", ("--home", "home", "policy", "test", "home/policy.yaml",
     "bad-cases.yaml"), ("bad-cases.yaml", "line 2", "'request'")),
    ("reroute target without a home", ("--home", "nowhere", "policy", "check",
     "home/policy.yaml"), ("home/policy.yaml", "sandbox", "--target")),
    # request files
    ("request missing", ("--home", "home", "decide", "--request", "nope.json"),
     ("request file nope.json does not exist",)),
    ("request not json", ("--home", "home", "decide", "--request", "notjson.json"),
     ("notjson.json", "not valid JSON")),
    ("request duplicate keys", ("--home", "home", "decide", "--request", "dup.json"),
     ("dup.json", "duplicate")),
    ("request not an object", ("--home", "home", "decide", "--request", "array.json"),
     ("array.json", "JSON object", "{action, resource, args, runtime, parent} or")),
    ("request missing fields", ("--home", "home", "decide", "--request", "missing.json"),
     ("missing.json", "missing", "resource", "runtime")),
    ("request wrong type", ("--home", "home", "decide", "--request", "types.json"),
     ("types.json", "request.action")),
    ("request args not an object", ("--home", "home", "decide", "--request", "args.json"),
     ("args.json", "request.args")),
    ("request unknown field", ("--home", "home", "decide", "--request", "unknown.json"),
     ("unknown.json", "user")),
    ("request artifact not a string", ("--home", "home", "decide", "--request",
     "artfield.json"), ("artfield.json", "'artifact'", "string")),
    ("request not utf-8", ("--home", "home", "decide", "--request", "binary.json"),
     ("binary.json", "not valid JSON")),
    ("request is a directory", ("--home", "home", "decide", "--request", "home"),
     ("home", "is a directory")),
    ("serve with too many workers", ("--home", "home", "serve", "--workers", "100000"),
     ("--workers", "worker processes (four per CPU core")),
    ("request integer beyond 2**53", ("--home", "home", "decide", "--request", "bigint.json"),
     ("bigint.json", "no canonical JSON form", "as strings")),
    ("request integer beyond 2**53, proof signed", ("--home", "home", "decide", "--request",
     "bigint.json", "--artifact", "art.jwt", "--runtime-key", "runtime.jwk"),
     ("bigint.json", "no canonical JSON form", "as strings")),
    ("proof of an integer beyond 2**53", ("--home", "home", "proof", "--request",
     "bigint.json", "--runtime-key", "runtime.jwk", "--artifact", "art.jwt"),
     ("bigint.json", "as strings")),
    ("proof request not json", ("--home", "home", "proof", "--request", "notjson.json",
     "--runtime-key", "runtime.jwk", "--artifact", "art.jwt"), ("notjson.json",)),
    # --constraint / --env / --gov / --att / --scope syntax
    ("constraint without =", (*ISSUE, *GRANT, "--constraint", "amount.max"),
     ("--constraint", "ARG.BOUND=VALUE")),
    ("constraint without bound", (*ISSUE, *GRANT, "--constraint", "amount=5"),
     ("--constraint", "ARG.BOUND=VALUE", "amount.max=100")),
    ("constraint unknown bound", (*ISSUE, *GRANT, "--constraint", "amount.most=5"),
     ("unknown bound 'most'", "max, min, enum, pattern, prefix")),
    ("constraint not a number", (*ISSUE, *GRANT, "--constraint", "amount.max=lots"),
     ("'lots' is not a finite number",)),
    ("constraint nan", (*ISSUE, *GRANT, "--constraint", "amount.max=nan"),
     ("not a finite number",)),
    ("constraint twice", (*ISSUE, *GRANT, "--constraint", "amount.max=5", "--constraint",
     "amount.max=6"), ("amount.max is given twice",)),
    ("constraint bad regex", (*ISSUE, *GRANT, "--constraint", "iban.pattern=(DE"),
     ("pattern", "not a regex")),
    ("constraint empty enum item", (*ISSUE, *GRANT, "--constraint", "c.enum=EUR,,USD"),
     ("enum",)),
    ("constraint with --scope", (*ISSUE, "--scope", '[{"action": "a", "resource": "b"}]',
     "--constraint", "a.max=1"), ("--scope", "not both")),
    ("env without =", (*ISSUE, *GRANT, "--env", "region"),
     ("--env 'region' must look like KEY=VALUE", "region=")),
    ("env empty value", (*ISSUE, *GRANT, "--env", "region="), ("KEY=VALUE",)),
    ("env twice", (*ISSUE, *GRANT, "--env", "region=a", "--env", "region=b"),
     ("--env region is given twice",)),
    ("env empty alternative", (*ISSUE, *GRANT, "--env", "region=a||b"), ("A|B",)),
    ("gov without =", (*ISSUE, *GRANT, "--gov", "ticket"), ("--gov", "KEY=VALUE")),
    ("gov unknown key", (*ISSUE, *GRANT, "--gov", "owner=bob"),
     ("unknown key 'owner'", "classification, policy, purpose, ticket")),
    ("att unknown key", (*ISSUE, *GRANT, "--att", "by=bob"), ("--att", "on_behalf_of")),
    ("attest env without =", ("attest", "--key", "runtime.jwk", "--sub", "a",
      "--runtime-key", "runtime.pub.jwk", "--env", "x"),
     ("--env", "KEY=VALUE")),
    ("attest without env", ("attest", "--key", "runtime.jwk", "--sub", "a",
      "--runtime-key", "runtime.pub.jwk"),
     ("at least one --env",)),
    ("scope not json", (*ISSUE, "--scope", "[{action: a}]"), ("--scope", "not valid JSON")),
    ("scope not a list", (*ISSUE, "--scope", '{"action": "a"}'), ("list of grants",)),
    ("scope empty", (*ISSUE, "--scope", "[]"), ("invalid grant", "non-empty")),
    ("scope file missing", (*ISSUE, "--scope", "@nope.json"), ("nope.json", "does not exist")),
    ("no grant", ISSUE, ("--action and --resource",)),
    ("grant beyond the authority", (*ISSUE, "--action", "users.delete", "--resource", "u:1"),
     ("may not grant users.delete", "home/trust.toml")),
    ("iss not the key owner", (*ISSUE, *GRANT, "--iss", "someone-else"),
     ("--iss 'someone-else'", "example-authority")),
    ("nbf after expiry", (*ISSUE, *GRANT, "--nbf", "99999999999"), ("--nbf", "--ttl")),
    # output paths
    ("output directory missing", (*ISSUE, *GRANT, "-o", "no/such/dir/art.jwt"),
     ("cannot write no/such/dir/art.jwt", "does not exist")),
    ("output is a directory", (*ISSUE, *GRANT, "-o", "home"), ("cannot write home",)),
    ("output would overwrite a private key", (*ISSUE, *GRANT, "-o", "runtime.jwk"),
     ("runtime.jwk holds a private key", "refusing")),
    # revoke
    ("revoke nothing", ("--home", "home", "revoke", "--reason", "x"),
     ("exactly one of --jti, --kid, --sub or --artifact", "got none")),
    ("revoke two things", ("--home", "home", "revoke", "--jti", "a", "--sub", "b", "--reason",
     "x"), ("exactly one", "got --jti and --sub")),
    ("revoke a malformed kid", ("--home", "home", "revoke", "--kid", "abc", "--reason", "x"),
     ("--kid 'abc'", "thumbprint")),
    ("revoke with an empty reason", ("--home", "home", "revoke", "--jti", "a", "--reason", " "),
     ("--reason",)),
    ("revoke a non-token", ("--home", "home", "revoke", "--artifact", "req.json", "--reason",
     "x"), ("--artifact file req.json", "compact JWS")),
    # decide arguments
    ("runtime key without an artifact", (*DECIDE, "--runtime-key", "runtime.jwk"),
     ("--runtime-key", "--artifact")),
    ("artifact neither file nor token", (*DECIDE, "--artifact", "art.jtw"),
     ("--artifact 'art.jtw' is neither a file nor a compact JWS token",)),
    ("artifact a dotted non-token", (*DECIDE, "--artifact", "a.b.c"),
     ("neither a file nor a compact JWS token",)),
    ("artifact file holds no token", (*DECIDE, "--artifact", "req.json"),
     ("--artifact file req.json does not hold a compact JWS token",)),
    ("attestation neither file nor token", (*DECIDE, "--artifact", "art.jwt", "--attestation",
     "att.jwt"), ("--attestation 'att.jwt' is neither a file nor a compact JWS token",)),
    ("artifact given twice", ("--home", "home", "decide", "--request", "withart.json",
     "--artifact", "art.jwt"), ("withart.json already holds 'artifact'", "--artifact")),
    ("inspect garbage", ("inspect", "hello"), ("'hello' is neither a file nor",)),
    ("inspect with a broken home", ("--home", "h-toml", "inspect", "art.jwt"),
     ("h-toml/execgate.toml", "not valid TOML")),
    ("proof given twice", ("--home", "home", "decide", "--request", "withproof.json",
     "--artifact", "art.jwt", "--runtime-key", "runtime.jwk"),
     ("already holds a proof", "--runtime-key")),
    ("proof without a home or --aud", ("--home", "nowhere", "proof", "--request", "req.json",
     "--artifact", "art.jwt", "--runtime-key", "runtime.jwk"),
     ("no gateway home at nowhere", "--aud GATEWAY_ID")),
    # init and keygen never overwrite
    ("init an existing home", ("init", "home"), ("home is already a gateway home",)),
    ("init a non-empty directory", ("init", "h-toml/keys"), ("not empty",)),
    ("init a bad id", ("init", "fresh", "--id", "has space"), ("gateway id",)),
    ("keygen over a key", ("keygen", "runtime.jwk"), ("runtime.jwk already exists",)),
    ("keygen a public name", ("keygen", "x.pub.jwk"), ("x.jwk",)),
    ("keygen no name", ("keygen", ""), ("names no file", "runtime.jwk")),
    ("init an empty id", ("init", "fresh", "--id", ""), ("--id", "gateway id")),
    # a running gateway's URL
    ("--url unparsable", ("approvals", "list", "--url", "http://[::1", "--admin-key", "k"),
     ("--url", "not an http:// or https:// URL")),
    ("--url port out of range", ("policy", "reload", "--url", "http://127.0.0.1:99999",
     "--admin-key", "k"), ("--url", "valid port")),
    ("--url with a password", ("policy", "reload", "--url", "http://u:s3cret@127.0.0.1:1",
     "--admin-key", "k"), ("--url", "user name or password")),
    ("audit index past any log", ("--home", "home", "audit", "show", "9223372036854775807"),
     ("not a log index",)),
    # argparse
    ("missing command", (), ("required: COMMAND",)),
    ("unknown command", ("frobnicate",), ("invalid choice", "frobnicate")),
    ("missing --request", ("decide",), ("--request", "execgate decide --help")),
    ("bad --ttl", (*ISSUE, *GRANT, "--ttl", "soon"), ("--ttl", "positive integer")),
    ("zero --uses", (*ISSUE, *GRANT, "--uses", "0"), ("--uses", "positive integer")),
    ("negative --nbf", (*ISSUE, *GRANT, "--nbf", "-3"), ("--nbf",)),
    ("huge --ttl", (*ISSUE, *GRANT, "--ttl", "99999999999999999999"), ("--ttl", "100 years")),
    ("missing policy subcommand", ("policy",), ("required",)),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_clear_line_and_exit_2(
    cli: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    assert_one_line_error(run(capsys, *argv), *fragments)


def test_a_password_in_url_is_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://admin:s3cret@[::1"  # unparsable as well: still not echoed
    for argv in (("policy", "reload"), ("approvals", "list")):
        result = run(capsys, *argv, "--url", url, "--admin-key", "k")
        assert_one_line_error(result, "--url")
        assert "s3cret" not in result.err


def test_an_error_quoting_a_file_prints_no_terminal_control(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request file's unknown key is quoted in the error: an escape sequence there
    would retitle the window and clear the screen; it is shown escaped."""
    key = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mevil\u202e\x9b"
    (cli / "evil.json").write_text(json.dumps({**REQUEST, key: 1}), encoding="utf-8")
    argv = ["--home", "home", "decide", "--request", "evil.json", "--artifact", "art.jwt"]
    line = assert_one_line_error(run(capsys, *argv, "--runtime-key", "runtime.jwk"), "evil")
    assert "\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31mevil\\u202e\\x9b" in line
    assert not [c for c in line if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


def test_the_catalogue_has_unique_names() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


def test_mistakes_leave_no_files_and_no_decisions(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.relative_to(cli) for p in cli.rglob("*"))
    for _, argv, _ in CASES:
        if argv[:1] in (("init",), ("keygen",)):
            continue
        main(list(argv))
    capsys.readouterr()
    after = sorted(p.relative_to(cli) for p in cli.rglob("*"))
    # The only new files any of them may create are the (empty) state stores they opened.
    assert [p for p in after if p not in before and p.name.split("-")[0] != "state.db"] == []
    if (cli / "home" / "state.db").exists():
        store = SQLiteStore(cli / "home" / "state.db")
        try:
            assert store.size() == 0
        finally:
            store.close()


def test_init_failure_leaves_an_empty_directory_empty(
    cli: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import execgate.home

    def broken(staging: Path) -> None:
        raise ConfigError("simulated failure while checking the new home")

    monkeypatch.setattr(execgate.home, "_check", broken)
    (cli / "empty").mkdir()
    assert_one_line_error(run(capsys, "init", "empty"), "simulated failure")
    assert list((cli / "empty").iterdir()) == []
    assert_one_line_error(run(capsys, "init", "brand-new"), "simulated failure")
    assert not (cli / "brand-new").exists()
    assert not [p for p in cli.iterdir() if p.name.startswith(".execgate-init-")]


def test_revoke_with_a_store_that_cannot_be_opened_exits_5(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(cli / "home", cli / "h-store")
    (cli / "h-store" / "state.db").write_bytes(b"not a database" * 64)
    try:
        result = run(capsys, "--home", "h-store", "revoke", "--jti", "x", "--reason", "y")
        line = assert_one_line_error(result, "h-store/state.db", code=5)
        assert "store is unavailable (fail closed)" in line
    finally:
        shutil.rmtree(cli / "h-store")


@pytest.mark.parametrize("flag", ["--sub", "--jti", "--reason"])
def test_revoke_refuses_text_that_is_not_utf8(
    cli: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """A command line holding bytes that are not UTF-8 (Python keeps them as lone
    surrogates): no claim could hold such a value, and nothing is revoked."""
    given = {"--sub": "agent-1", "--reason": "lost"} if flag != "--jti" else {"--reason": "x"}
    given[flag] = "agent\udcff"
    argv = [item for pair in given.items() for item in pair]
    line = assert_one_line_error(run(capsys, "--home", "home", "revoke", *argv), flag, code=2)
    assert f"{flag} is not UTF-8 text" in line
    assert "nothing was revoked" in line
    store = SQLiteStore(load_config(cli / "home").store)
    try:
        assert store.revoked([("sub", "agent-1")]) is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("command", "rest"),
    [(["approvals", "show"], []), (["lineage", "show"], []), (["outcome"], ["--status", "failed"])],
)
@pytest.mark.parametrize("given", ["a\udcff", "../x", "a b", "x" * 129])
def test_an_id_no_record_could_have_is_a_usage_error_before_any_lookup(
    cli: Path, capsys: pytest.CaptureFixture[str], command: list[str], rest: list[str], given: str
) -> None:
    result = run(capsys, "--home", "home", *command, given, *rest)
    line = assert_one_line_error(result, "is not a decision or approval id", code=2)
    assert "store" not in line


def test_store_lookups_of_unbindable_text_are_a_store_error(cli: Path) -> None:
    store = SQLiteStore(load_config(cli / "home").store)
    try:
        with pytest.raises(StoreError, match="store read failed"):
            store.revoked([("sub", "agent\udcff")])
        with pytest.raises(StoreError, match="cannot"):
            store.revoke("sub", "agent\udcff", reason="x", now=NOW)
    finally:
        store.close()


def test_help_is_not_an_error(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "decide", "--help")
    assert result.code == 0
    assert "--runtime-key" in result.out
    assert "fail_closed" in result.out
