"""Key files: Ed25519 keys as JWK JSON, private ones written 0600 and never printed.

A private key file holds ``{"kty":"OKP","crv":"Ed25519","x":…,"d":…}``; its public
half is written beside it as ``NAME.pub.jwk``. Reading a private key that others can read
is refused, as ssh does, because a key anyone can copy authorizes nothing.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from execgate.errors import ConfigError, JoseError
from execgate.jose import PrivateKey, PublicKey, loads_strict

__all__ = [
    "atomic_write",
    "public_path_for",
    "read_private_key",
    "read_public_key",
    "write_keypair",
]

_MAX_KEY_FILE = 64 * 1024


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` whole or not at all (temp file, fsync, rename)."""
    if exclusive and path.exists():
        raise ConfigError(f"{path} already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if exclusive:
            os.link(tmp, path)  # fails if path appeared meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def public_path_for(private_path: Path) -> Path:
    name = private_path.name
    stem = name[: -len(".jwk")] if name.endswith(".jwk") else name
    return private_path.with_name(f"{stem}.pub.jwk")


def write_keypair(path: Path, key: PrivateKey) -> Path:
    """Write the private key (0600, never overwriting) and its public half; return the latter."""
    private = json.dumps(key.to_jwk(private=True), indent=2).encode() + b"\n"
    atomic_write(path, private, mode=0o600, exclusive=True)
    public = public_path_for(path)
    jwk = {**key.public.to_jwk(), "kid": key.public.thumbprint()}
    atomic_write(public, json.dumps(jwk, indent=2).encode() + b"\n", exclusive=True)
    return public


def _read_jwk(path: Path, what: str) -> dict[str, object]:
    try:
        if path.stat().st_size > _MAX_KEY_FILE:
            raise ConfigError(f"{what} file {path} is too large to be a key")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{what} file {path} does not exist; create one with 'execgate keygen'"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    try:
        jwk = loads_strict(data)
    except JoseError as exc:
        raise ConfigError(f"{what} file {path} is not valid JSON: {exc.detail}") from exc
    if not isinstance(jwk, dict):
        raise ConfigError(f"{what} file {path} must hold one JWK object")
    return jwk


def read_private_key(path: Path) -> PrivateKey:
    """Read a private key, refusing files that group or others may read."""
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"private key {path} is accessible by others; run: chmod 600 {path}")
    jwk = _read_jwk(path, "private key")
    try:
        return PrivateKey.from_jwk(jwk)
    except JoseError as exc:
        raise ConfigError(
            f"private key file {path} is not an Ed25519 private JWK: {exc.detail}"
        ) from exc


def read_public_key(path: Path) -> PublicKey:
    """Read a public key file (a private key file is refused: keep those where they are)."""
    jwk = _read_jwk(path, "public key")
    try:
        return PublicKey.from_jwk(jwk)
    except JoseError as exc:
        raise ConfigError(
            f"public key file {path} is not an Ed25519 public JWK: {exc.detail}"
        ) from exc
