"""Key files: written whole, private ones 0600, never overwritten, the wrong kind refused."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from execgate.errors import ConfigError
from execgate.jose import PrivateKey
from execgate.keyfile import (
    atomic_write,
    path_problem,
    public_path_for,
    read_private_key,
    read_public_key,
    write_keypair,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# -- atomic_write -----------------------------------------------------------------------


def test_atomic_write_writes_the_whole_file_with_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write(target, b"hello\n", mode=0o600)
    assert target.read_bytes() == b"hello\n"
    assert _mode(target) == 0o600
    atomic_write(target, b"replaced\n")
    assert target.read_bytes() == b"replaced\n"
    assert _mode(target) == 0o644
    assert _leftovers(tmp_path) == []


def test_atomic_write_exclusive_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"original")
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        atomic_write(target, b"new", exclusive=True)
    assert target.read_bytes() == b"original"
    assert _leftovers(tmp_path) == []


def test_atomic_write_exclusive_loses_a_race_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file appears between the check and the link: refused, nothing left behind."""
    target = tmp_path / "out.txt"
    real_link = os.link

    def racing_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        Path(dst).write_bytes(b"theirs")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(ConfigError, match="already exists"):
        atomic_write(target, b"mine", exclusive=True)
    assert target.read_bytes() == b"theirs"
    assert _leftovers(tmp_path) == []


def test_atomic_write_names_the_target_not_the_temporary_file(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "out.txt"
    with pytest.raises(ConfigError) as info:
        atomic_write(missing, b"x")
    assert str(info.value) == (f"cannot write {missing}: directory {missing.parent} does not exist")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match=r"cannot write .*dir: Is a directory"):
        atomic_write(tmp_path / "dir", b"x")
    assert _leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_the_previous_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"previous")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ConfigError, match="No space left on device"):
        atomic_write(target, b"new content")
    assert target.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


# -- write_keypair ----------------------------------------------------------------------


def test_write_keypair_writes_0600_private_and_public_halves(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    public = write_keypair(tmp_path / "runtime.jwk", key)
    assert public == tmp_path / "runtime.pub.jwk"
    assert _mode(tmp_path / "runtime.jwk") == 0o600
    private_doc = json.loads((tmp_path / "runtime.jwk").read_text())
    public_doc = json.loads(public.read_text())
    assert set(private_doc) == {"kty", "crv", "x", "d"}
    assert "d" not in public_doc
    assert public_doc["kid"] == key.public.thumbprint()
    assert read_private_key(tmp_path / "runtime.jwk").public == key.public
    assert read_public_key(public) == key.public


def test_write_keypair_never_overwrites_either_half(tmp_path: Path) -> None:
    (tmp_path / "a.pub.jwk").write_text("someone's public key")
    with pytest.raises(ConfigError, match=r"a\.pub\.jwk already exists"):
        write_keypair(tmp_path / "a.jwk", PrivateKey.generate())
    assert not (tmp_path / "a.jwk").exists()  # no private key without its public half
    write_keypair(tmp_path / "b.jwk", PrivateKey.generate())
    before = (tmp_path / "b.jwk").read_bytes()
    with pytest.raises(ConfigError, match=r"b\.jwk already exists"):
        write_keypair(tmp_path / "b.jwk", PrivateKey.generate())
    assert (tmp_path / "b.jwk").read_bytes() == before


def test_write_keypair_removes_the_private_half_if_the_public_half_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import execgate.keyfile

    real = execgate.keyfile.atomic_write

    def fail_public(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
        if path.name.endswith(".pub.jwk"):
            raise ConfigError(f"cannot write {path}: simulated")
        real(path, data, mode=mode, exclusive=exclusive)

    monkeypatch.setattr(execgate.keyfile, "atomic_write", fail_public)
    with pytest.raises(ConfigError, match="simulated"):
        write_keypair(tmp_path / "k.jwk", PrivateKey.generate())
    assert list(tmp_path.iterdir()) == []


def test_write_keypair_refuses_a_public_key_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"name the private key file, e\.g\. k\.jwk"):
        write_keypair(tmp_path / "k.pub.jwk", PrivateKey.generate())


def test_public_path_for() -> None:
    assert public_path_for(Path("d/runtime.jwk")) == Path("d/runtime.pub.jwk")
    assert public_path_for(Path("d/runtime")) == Path("d/runtime.pub.jwk")


# -- reading ----------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, PrivateKey]:
    key = PrivateKey.generate()
    public = write_keypair(tmp_path / "k.jwk", key)
    return tmp_path / "k.jwk", public, key


def test_a_private_key_readable_by_others_is_refused_with_the_chmod_hint(
    pair: tuple[Path, Path, PrivateKey],
) -> None:
    private, _, key = pair
    for mode in (0o644, 0o640, 0o604, 0o660):
        private.chmod(mode)
        with pytest.raises(ConfigError) as info:
            read_private_key(private)
        assert str(info.value) == (
            f"private key {private} is readable by others (mode {mode:04o});"
            f" run: chmod 600 {private}"
        )
    private.chmod(0o400)
    assert read_private_key(private).public == key.public


def test_a_public_key_where_a_private_one_is_needed(pair: tuple[Path, Path, PrivateKey]) -> None:
    _, public, _ = pair
    with pytest.raises(ConfigError, match="holds a public key, but a private key is needed"):
        read_private_key(public)


def test_a_public_key_any_user_may_write_is_refused_with_the_chmod_hint(
    pair: tuple[Path, Path, PrivateKey],
) -> None:
    """The key an artifact is bound to (issue, delegate) or a log is checked against
    (audit verify): a file anyone may rewrite is refused, as a trust store is."""
    _, public, key = pair
    for mode in (0o666, 0o646, 0o602):
        public.chmod(mode)
        with pytest.raises(ConfigError) as info:
            read_public_key(public)
        assert str(info.value) == (
            f"public key file {public} may be written by any user (mode {mode:04o});"
            f" run: chmod o-w {public}"
        )
    public.chmod(0o664)  # a group may write it, as a trust store
    assert read_public_key(public) == key.public


def test_a_private_key_where_a_public_one_is_needed_is_refused_without_echoing_it(
    pair: tuple[Path, Path, PrivateKey],
) -> None:
    private, public, _ = pair
    secret = json.loads(private.read_text())["d"]
    with pytest.raises(ConfigError) as info:
        read_public_key(private)
    message = str(info.value)
    assert "holds a PRIVATE key" in message
    assert str(public) in message
    assert secret not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"not json", "not a JWK key file (not valid JSON)"),
        (b'{"kty": "OKP", "kty": "OKP"}', "not valid JSON"),
        (b"[1, 2]", "must hold one JWK object"),
        (b'"a string"', "must hold one JWK object"),
        (b'{"kty": "RSA", "n": "AQAB", "e": "AQAB"}', "not an OKP Ed25519 key"),
        (b'{"kty": "OKP", "crv": "X25519", "x": "AAAA"}', "not an OKP Ed25519 key"),
        (b'{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}', "x is not 32 base64url"),
        (b'{"kty": "OKP", "crv": "Ed25519"}', "x is not 32 base64url"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_corrupt_public_key_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.pub.jwk"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"public key file .*bad\.pub\.jwk") as info:
        read_public_key(path)
    assert fragment in str(info.value)


def test_corrupt_private_key_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.jwk"
    other = PrivateKey.generate().to_jwk(private=True)
    mine = PrivateKey.generate().to_jwk(private=True)
    for doc, fragment in (
        ({**mine, "x": other["x"]}, "x does not match its private key d"),
        ({**mine, "d": "AAAA"}, "d is not 32 base64url"),
        ({**mine, "kty": "EC"}, "not an OKP Ed25519 key"),
    ):
        path.write_text(json.dumps(doc))
        path.chmod(0o600)
        with pytest.raises(ConfigError, match=r"private key file .*bad\.jwk") as info:
            read_private_key(path)
        assert fragment in str(info.value)
        assert mine["d"] not in str(info.value)
        assert other["d"] not in str(info.value)


def test_missing_directory_and_oversized_key_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; create a key pair with 'execgate"):
        read_public_key(tmp_path / "nope.pub.jwk")
    with pytest.raises(ConfigError, match="does not exist"):
        read_private_key(tmp_path / "nope.jwk")
    with pytest.raises(ConfigError, match="is a directory, not a key file"):
        read_private_key(tmp_path)
    big = tmp_path / "big.jwk"
    big.write_bytes(b" " * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="is larger than 65536 bytes, not a key file"):
        read_public_key(big)


@pytest.mark.skipif(os.name != "posix", reason="FIFOs and /dev/zero are POSIX")
def test_a_fifo_or_a_device_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A FIFO with no writer would block the reader for good, and /dev/zero would fill
    memory: neither is opened blocking or read."""
    fifo = tmp_path / "fifo.jwk"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_private_key(fifo)
    zero = tmp_path / "zero.jwk"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_public_key(zero)


# -- what another user could put at a path -------------------------------------------------


def test_path_problem_follows_links_and_refuses_what_others_could_replace(tmp_path: Path) -> None:
    safe, shared = tmp_path / "safe", tmp_path / "shared"
    safe.mkdir()
    shared.mkdir()
    (safe / "f").write_text("x")
    (shared / "to-f").symlink_to(safe / "f")
    (safe / "rel").symlink_to("../shared/to-f")
    for path in (safe / "f", shared / "to-f", safe / "rel", safe / "missing"):
        assert path_problem(path) is None
    shared.chmod(0o777)
    assert path_problem(safe / "f") is None
    for path in (shared / "to-f", safe / "rel"):  # through the link any user may replace
        assert path_problem(path) == (
            f"directory {shared}, which holds {shared / 'to-f'}, may be written by any user"
            " (mode 0777): anyone may put another to-f there"
        )
    assert path_problem(shared / "new") == (  # a name anyone may create
        f"{shared / 'new'} is missing from directory {shared}, which any user may write"
        " (mode 0777): anyone may create it"
    )
    shared.chmod(0o1777)  # sticky: only an entry's owner replaces it, but anyone creates
    assert path_problem(shared / "to-f") is None
    assert "is missing from directory" in (path_problem(shared / "new") or "")
    (safe / "loop").symlink_to(safe / "loop")
    assert (
        path_problem(safe / "loop") == f"{safe / 'loop'} goes through more than 40 symbolic links"
    )


def test_path_problem_owned_refuses_another_users_directory(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory of another user needs root (CI runs as root)")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "hook").write_text("x")
    os.chown(theirs, 1234, 1234)  # they may rename anything in it, sticky or not
    assert path_problem(theirs / "hook") is None  # a trust store may live there
    assert path_problem(theirs / "hook", owned=True) == (
        f"directory {theirs}, which holds {theirs / 'hook'}, is another user's (owner uid"
        " 1234, mode 0755): they may put another hook there"
    )
