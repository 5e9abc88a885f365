"""Key files: Ed25519 keys as JWK JSON, private ones written 0600 and never printed.

A private key file holds ``{"kty":"OKP","crv":"Ed25519","x":…,"d":…}``; its public
half is written beside it as ``NAME.pub.jwk``. Reading a private key that others can read
is refused, as ssh does, because a key anyone can copy authorizes nothing. A private key
handed where a public one is expected (or the other way round) is refused with a message
naming the right file; no message ever quotes a key file's content.

Every file is written whole or not at all (``atomic_write``): a crash or a full disk
leaves the previous file, or none, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from execgate.errors import ConfigError, JoseError
from execgate.jose import PrivateKey, PublicKey, loads_strict

__all__ = [
    "NotRegular",
    "atomic_file",
    "atomic_write",
    "path_problem",
    "public_path_for",
    "read_private_key",
    "read_public_key",
    "refuse_shared_writes",
    "refuse_unsafe_path",
    "write_keypair",
]

_MAX_KEY_FILE: Final = 64 * 1024
_PUBLIC_SUFFIX: Final = ".pub.jwk"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort (some filesystems refuse to open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(
    path: Path, *, mode: int = 0o644, exclusive: bool = False, text: bool = False
) -> Iterator[IO[Any]]:
    """A file at ``path`` written whole or not at all (temp file, fsync, rename): the
    block writes into the temporary file; it appears at ``path`` only if the block ends.

    With ``exclusive`` an existing ``path`` is never replaced. Failures raise
    ``ConfigError`` naming ``path`` (never the temporary file) and what to check.
    """
    if exclusive and path.exists():
        raise ConfigError(f"{path} already exists; refusing to overwrite it")
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot write {path}: directory {directory} does not exist") from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror or exc} (is {directory} a writable directory?)"
        ) from exc
    tmp = Path(tmp_name)
    try:
        fh: IO[Any]
        with (
            os.fdopen(fd, "w", encoding="utf-8", newline="\n") if text else os.fdopen(fd, "wb")
        ) as fh:
            os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if path appeared meanwhile
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except FileExistsError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{path} already exists; refusing to overwrite it") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` whole or not at all (see ``atomic_file``)."""
    with atomic_file(path, mode=mode, exclusive=exclusive) as fh:
        fh.write(data)


def public_path_for(private_path: Path) -> Path:
    """``NAME.jwk`` -> ``NAME.pub.jwk`` (any other name just gains ``.pub.jwk``)."""
    name = private_path.name
    stem = name[: -len(".jwk")] if name.endswith(".jwk") else name
    return private_path.with_name(f"{stem}{_PUBLIC_SUFFIX}")


def write_keypair(path: Path, key: PrivateKey) -> Path:
    """Write the private key (0600) and its public half; return the latter.

    Never overwrites: if either file exists nothing is written, and if the public half
    cannot be written the private key just created is removed again.
    """
    if path.name.endswith(_PUBLIC_SUFFIX):
        raise ConfigError(
            f"{path} is a public key name; name the private key file, e.g. "
            f"{path.name[: -len(_PUBLIC_SUFFIX)]}.jwk (its public half gets .pub.jwk)"
        )
    public = public_path_for(path)
    for target in (path, public):
        if target.exists() or target.is_symlink():
            raise ConfigError(f"{target} already exists; refusing to overwrite it")
    private = json.dumps(key.to_jwk(private=True), indent=2).encode() + b"\n"
    atomic_write(path, private, mode=0o600, exclusive=True)
    jwk = {**key.public.to_jwk(), "kid": key.public.thumbprint()}
    try:
        atomic_write(public, json.dumps(jwk, indent=2).encode() + b"\n", exclusive=True)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return public


class NotRegular(OSError):
    """A path that names no regular file (a directory, a FIFO, a device) or one too large."""


def read_regular(path: Path, *, limit: int) -> tuple[bytes, int]:
    """The bytes (at most ``limit``) and mode of the regular file at ``path``.

    Opened without blocking and checked on the open descriptor before anything is read:
    a FIFO would hang the reader, ``/dev/zero`` would fill memory, and a file swapped
    between a check by path and the read would be read unchecked. ``OSError`` (among
    them ``NotRegular``) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        data, status = read_open_regular(fd, limit=limit)
        return data, status.st_mode
    finally:
        os.close(fd)


def read_private_file(path: Path, *, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of this user's that no one else may write
    (not followed if a symbolic link): a file a process keeps for itself and its peers.
    ``FileNotFoundError`` as such; ``OSError`` (among them ``NotRegular``) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        check_private(fd)
        return read_open_regular(fd, limit=limit)[0]
    finally:
        os.close(fd)


def check_private(fd: int) -> None:
    """``NotRegular`` unless the file open at ``fd`` is this user's and writable by no
    one else."""
    status = os.fstat(fd)
    if status.st_uid != os.geteuid():
        raise NotRegular("belongs to another user")
    if status.st_mode & 0o022:
        raise NotRegular(f"may be written by others (mode {status.st_mode & 0o777:04o})")


def read_open_regular(fd: int, *, limit: int) -> tuple[bytes, os.stat_result]:
    """``read_regular`` of a descriptor opened (``O_NONBLOCK``) by the caller, who keeps
    it; also returns its status."""
    status = os.fstat(fd)
    if stat.S_ISDIR(status.st_mode):
        raise NotRegular("is a directory")
    if not stat.S_ISREG(status.st_mode):
        raise NotRegular("is not a regular file (a FIFO, a device or a socket)")
    if status.st_size > limit:
        raise NotRegular(f"is larger than {limit} bytes")
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise NotRegular(f"is larger than {limit} bytes")
    return b"".join(chunks), status


def refuse_shared_writes(path: Path, mode: int, what: str) -> None:
    """``ConfigError`` when any local user may write ``path`` (its ``mode``): anyone who
    can rewrite a gateway's trust store, config, policy or home can make it trust their
    own key. A group may write them: a group of the gateway's administrators, or the
    owner's own group, which a umask of 002 gives every new file."""
    if os.name == "posix" and mode & stat.S_IWOTH:
        raise ConfigError(
            f"{what} {path} may be written by any user (mode {stat.S_IMODE(mode):04o});"
            f" run: chmod o-w {path}"
        )


_MAX_LINKS: Final = 40  # symbolic links followed in one path, as the kernel does


def path_problem(path: Path | str, *, owned: bool = False) -> str | None:
    """Why another user could put something else at ``path``, if they could: a directory
    on the way to it (through every symbolic link, and the directories that hold the
    links) that any user may write. One with the sticky bit (``/tmp``) only lets each
    user replace their own entries, so it is safe for an entry root or this user owns;
    a name missing from a directory any user may write, sticky or not, anyone may
    create. With ``owned``, every such directory must also be root's or this user's
    (its owner may rename anything in it): for what this process will run. The file
    itself is the caller's to check (``refuse_shared_writes``)."""
    mine = (0, os.geteuid()) if hasattr(os, "geteuid") else None
    if mine is None:
        return None
    pending = [part for part in os.fspath(Path(path).absolute()).split("/") if part]
    current, links = "/", 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        status: os.stat_result | None
        try:
            holder = os.stat(current)
        except OSError as exc:
            return f"{current} cannot be checked: {exc.strerror or exc}"
        try:
            status = os.lstat(entry)
        except FileNotFoundError:
            status = None
        except OSError as exc:
            return f"{entry} cannot be checked: {exc.strerror or exc}"
        mode = stat.S_IMODE(holder.st_mode)
        if owned and holder.st_uid not in mine:
            return (
                f"directory {current}, which holds {entry}, is another user's (owner uid"
                f" {holder.st_uid}, mode {mode:04o}): they may put another {name} there"
            )
        if holder.st_mode & stat.S_IWOTH:
            if status is None:
                return (
                    f"{entry} is missing from directory {current}, which any user may write"
                    f" (mode {mode:04o}): anyone may create it"
                )
            if not (holder.st_mode & stat.S_ISVTX and status.st_uid in mine):
                return (
                    f"directory {current}, which holds {entry}, may be written by any user"
                    f" (mode {mode:04o}): anyone may put another {name} there"
                )
        if status is None:
            return None  # nothing more to check: what is missing is reported when read
        if stat.S_ISLNK(status.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return f"{path} goes through more than {_MAX_LINKS} symbolic links"
            try:
                target = os.readlink(entry)
            except OSError as exc:
                return f"{entry} cannot be checked: {exc.strerror or exc}"
            pending = [part for part in target.split("/") if part] + pending
            if target.startswith("/"):
                current = "/"
        else:
            current = entry
    return None


def refuse_unsafe_path(path: Path, what: str) -> None:
    """``ConfigError`` naming ``what`` when another user could put another file at
    ``path`` (``path_problem``)."""
    problem = path_problem(path)
    if problem is not None:
        raise ConfigError(f"{what} {path}: {problem}")


def _read_jwk(path: Path, what: str) -> tuple[dict[str, object], int]:
    """The JWK object in the key file at ``path``, and the file's mode."""
    try:
        data, mode = read_regular(path, limit=_MAX_KEY_FILE)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{what} file {path} does not exist; create a key pair with 'execgate keygen FILE'"
        ) from exc
    except NotRegular as exc:
        raise ConfigError(f"{what} file {path} {exc}, not a key file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise ConfigError(f"{what} file {path} is empty; expected an Ed25519 JWK")
    try:
        jwk = loads_strict(data)
    except JoseError as exc:
        # The detail names a position, never the content: a key file's text stays private.
        raise ConfigError(
            f"{what} file {path} is not a JWK key file (not valid JSON); expected the JSON"
            " that 'execgate keygen' writes"
        ) from exc
    if not isinstance(jwk, dict):
        raise ConfigError(f"{what} file {path} must hold one JWK object")
    return jwk, mode


def read_private_key(path: Path) -> PrivateKey:
    """Read a private key, refusing public keys and files that group or others may read."""
    jwk, mode = _read_jwk(path, "private key")
    if "d" not in jwk:
        raise ConfigError(
            f"{path} holds a public key, but a private key is needed here; give the private"
            " key file (keygen writes it as NAME.jwk beside NAME.pub.jwk)"
        )
    # The mode of the file read, not of a path checked again.
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"private key {path} is readable by others (mode {stat.S_IMODE(mode):04o});"
            f" run: chmod 600 {path}"
        )
    try:
        return PrivateKey.from_jwk(jwk)
    except JoseError as exc:
        raise ConfigError(
            f"private key file {path} is not an Ed25519 private JWK: {exc.detail}"
        ) from exc


def read_public_key(path: Path) -> PublicKey:
    """Read a public key file (a private key file is refused: keep those where they are).

    A file any user may write is refused, as a trust store is: what it names is the key
    an artifact is bound to, or the key a log is checked against."""
    jwk, mode = _read_jwk(path, "public key")
    if "d" in jwk:
        raise ConfigError(
            f"{path} holds a PRIVATE key, but a public key is needed here; give its public"
            f" half {public_path_for(path)} and keep the private key file where it is"
        )
    refuse_shared_writes(path, mode, "public key file")
    try:
        return PublicKey.from_jwk(jwk)
    except JoseError as exc:
        raise ConfigError(
            f"public key file {path} is not an Ed25519 public JWK: {exc.detail}"
        ) from exc
