"""Loading the trust store: every refusal is a ConfigError naming the file and the entry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from execgate.errors import ConfigError
from execgate.jose import PrivateKey
from execgate.trust import Approver, Authority, TrustStore


def _jwk(key: PrivateKey, *, private: bool = False) -> str:
    jwk = key.to_jwk(private=private)
    return "{" + ", ".join(f'{k} = "{v}"' for k, v in jwk.items()) + "}"


A = PrivateKey.generate()
B = PrivateKey.generate()

GOOD = f"""
[[authority]]
id = "root"
keys = [{_jwk(A)}]
scope = [{{action = "payments.*", resource = "acct:**", constraints = {{amount = {{max = 500}}}}}}]

[[attester]]
id = "attester"
keys = [{_jwk(B)}]
"""


def _load(tmp_path: Path, text: str) -> TrustStore:
    path = tmp_path / "trust.toml"
    path.write_text(text)
    return TrustStore.load(path)


def test_a_good_trust_store_loads(tmp_path: Path) -> None:
    trust = _load(tmp_path, GOOD)
    authority = trust.authority_for_kid(A.public.thumbprint())
    assert authority is not None
    assert authority.id == "root"
    assert authority.scope[0].constraints["amount"].max == 500
    assert trust.attester_for_kid(B.public.thumbprint()) is not None
    assert trust.authority_for_kid(B.public.thumbprint()) is None
    assert trust.authority_keys == {A.public.thumbprint(): A.public}


AUTHORITY = f"""[[authority]]
id = "root"
keys = [{_jwk(A)}]
scope = [{{action = "a", resource = "b"}}]
"""

CASES = [
    ("not toml", "[[authority]\n", "is not valid TOML"),
    ("empty", "", "no [[authority]] is trusted"),
    ("only attesters", f'[[attester]]\nid = "x"\nkeys = [{_jwk(B)}]\n', "no [[authority]]"),
    ("unknown section", AUTHORITY + "[mesh]\nnodes = 1\n", "unknown sections ['mesh']"),
    ("single table", AUTHORITY.replace("[[authority]]", "[authority]"), "[[authority]]"),
    ("scalar section", "authority = 5\n", "'authority' must be an array of tables"),
    ("string section", 'authority = "root"\n', "'authority' must be an array of tables"),
    ("attester single table", AUTHORITY + f'[attester]\nid = "x"\nkeys = [{_jwk(B)}]\n',
     "[[attester]]"),
    ("entry not a table", "authority = [1]\n", "authority[0]: must be a table with id, keys"),
    ("unknown key", AUTHORITY + 'kid = "x"\n', "authority[0]: unknown keys ['kid']"),
    ("missing id", AUTHORITY.replace('id = "root"\n', ""), "authority[0]: 'id' must be"),
    ("empty id", AUTHORITY.replace('"root"', '""'), "authority[0]: 'id' must be"),
    ("zero-width id", AUTHORITY.replace('"root"', '"ro\u200bot"'), "printable ASCII"),
    ("id with a space", AUTHORITY.replace('"root"', '" root"'), "without spaces"),
    ("id with a control", AUTHORITY.replace('"root"', '"ro\\u001bot"'), "printable ASCII"),
    ("group name with a space", AUTHORITY + f'[[approver]]\nid = "x"\ngroups = [" finance"]\n'
     f"keys = [{_jwk(B)}]\n", "'groups' must be a non-empty list of group names, each 1-256"),
    ("key with an unknown member", AUTHORITY.replace(_jwk(A), _jwk(A)[:-1] + ', y = "z"}'),
     "keys[0] has unknown members ['y']"),
    ("key with a wrong kid", AUTHORITY.replace(_jwk(A), _jwk(A)[:-1] + f', kid = "{"A" * 43}"}}'),
     "keys[0] has a kid that is not the key's RFC 7638 thumbprint"),
    ("missing keys", AUTHORITY.replace(f"keys = [{_jwk(A)}]\n", ""), "'keys' must be a non-empty"),
    ("empty keys", AUTHORITY.replace(f"[{_jwk(A)}]", "[]"), "'keys' must be a non-empty"),
    ("key not a table", AUTHORITY.replace(f"[{_jwk(A)}]", '["abc"]'), "keys[0] must be a JWK"),
    ("key not ed25519", AUTHORITY.replace(f"[{_jwk(A)}]", '[{kty = "RSA", n = "x", e = "y"}]'),
     "keys[0] is not an Ed25519 public JWK"),
    ("private key", AUTHORITY.replace(_jwk(A), _jwk(A, private=True)),
     "keys[0] holds PRIVATE key material ('d'); list only the public key"),
    ("same key twice", AUTHORITY.replace(f"[{_jwk(A)}]", f"[{_jwk(A)}, {_jwk(A)}]"),
     "keys[1] lists the same key twice"),
    ("missing scope", AUTHORITY.replace('scope = [{action = "a", resource = "b"}]\n', ""),
     "authority[0]: scope: scope must be a non-empty list"),
    ("bad grant", AUTHORITY.replace('resource = "b"', 'resource = "b", x = 1'),
     "authority[0]: scope: a grant has unknown keys"),
    ("bad constraint", AUTHORITY.replace('resource = "b"', 'resource = "b", constraints = 1'),
     "grant constraints must be an object"),
    ("duplicate authority", AUTHORITY + AUTHORITY.replace(_jwk(A), _jwk(B)),
     "authority[1]: duplicate authority id 'root'"),
    ("ids that differ only in case",
     f'[[approver]]\nid = "ana"\ngroups = ["g"]\nkeys = [{_jwk(A)}]\n'
     f'[[approver]]\nid = "ANA"\ngroups = ["g"]\nkeys = [{_jwk(B)}]\n',
     "approver[1]: duplicate approver id 'ANA' (after 'ana': ids must differ in more than case)"),
    ("key shared by two principals", AUTHORITY + f'[[attester]]\nid = "x"\nkeys = [{_jwk(A)}]\n',
     "is listed for both authority 'root' and attester 'x'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_trust_store_errors_name_the_file_and_the_problem(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "trust.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        TrustStore.load(path)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message
    assert "\n" not in message


def test_a_private_key_in_the_trust_store_is_not_echoed(tmp_path: Path) -> None:
    secret = A.to_jwk(private=True)["d"]
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, AUTHORITY.replace(_jwk(A), _jwk(A, private=True)))
    assert secret not in str(info.value)


def test_unreadable_trust_stores(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; restore it"):
        TrustStore.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory; restore it"):
        TrustStore.load(tmp_path)
    os.mkfifo(tmp_path / "fifo.toml")  # no writer: a blocking open would never return
    with pytest.raises(ConfigError, match="is not a regular file"):
        TrustStore.load(tmp_path / "fifo.toml")
    shared = tmp_path / "shared.toml"
    shared.write_text(AUTHORITY)
    shared.chmod(0o666)
    with pytest.raises(ConfigError, match=r"written by any user \(mode 0666\); run: chmod o-w"):
        TrustStore.load(shared)
    shared.chmod(0o664)  # a group may write it (umask 002 gives every new file that)
    assert "root" in TrustStore.load(shared).authorities
    (tmp_path / "latin1.toml").write_bytes(b'[[authority]]\nid = "\xe9"\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        TrustStore.load(tmp_path / "latin1.toml")


def test_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^trust store: no \[\[authority\]\]"):
        TrustStore.from_dict({})
    with pytest.raises(ConfigError, match=r"^inline: 'authority' must be an array"):
        TrustStore.from_dict({"authority": {"id": "x"}}, source="inline")


def test_a_trust_store_built_in_code_lists_each_key_under_its_thumbprint() -> None:
    """The constructor holds the file's rule: a key listed under another id would let one
    key be an authority's under one name and an approver's under its thumbprint, and a
    revocation of either name would miss the other."""
    key = PrivateKey.generate().public
    with pytest.raises(ConfigError) as info:
        TrustStore(
            {"auth": Authority("auth", {"k-auth": key}, ())},
            {},
            approvers={"alice": Approver("alice", ("g",), {key.thumbprint(): key})},
        )
    assert str(info.value) == (
        f"authority 'auth' lists a key under the id 'k-auth', not its RFC 7638 thumbprint"
        f" {key.thumbprint()}: list each key under its thumbprint"
    )
    with pytest.raises(ConfigError, match="listed for both authority 'auth' and approver"):
        TrustStore(
            {"auth": Authority("auth", {key.thumbprint(): key}, ())},
            {},
            approvers={"alice": Approver("alice", ("g",), {key.thumbprint(): key})},
        )


def test_a_trust_store_built_in_code_refuses_ids_that_differ_only_in_case() -> None:
    """'ANA' and 'ana' would count as two people toward a quorum."""
    a, b = PrivateKey.generate().public, PrivateKey.generate().public
    approvers = {n: Approver(n, ("g",), {k.thumbprint(): k}) for n, k in (("ana", a), ("ANA", b))}
    with pytest.raises(ConfigError, match="approver ids 'ana' and 'ANA' differ only in case"):
        TrustStore({}, {}, approvers=approvers)
