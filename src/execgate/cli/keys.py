"""``execgate init`` (a new gateway home) and ``execgate keygen`` (an Ed25519 key pair)."""

from __future__ import annotations

import argparse
from pathlib import Path

from execgate.cli._common import Commands, home_of, out, shown
from execgate.errors import UsageError

__all__ = ["register"]


def _init(args: argparse.Namespace) -> int:
    from execgate.home import SAMPLE_APPROVERS, init_home

    target = Path(args.dir) if args.dir is not None else home_of(args)
    config = init_home(target, gateway_id=args.id)
    keys = config.home / "keys"
    out(f"created gateway home {config.home}")
    out(f"  gateway id   {config.gateway_id} (the audience artifacts and proofs must name)")
    out(f"  config       {config.home / 'execgate.toml'}")
    out(f"  trust store  {config.trust} (authorities and their scope, attesters, approvers)")
    out(f"  policy       {config.policy}")
    out(f"  node key     {config.node_key} (private, 0600: signs receipts)")
    out(f"  authority    {keys / 'authority.jwk'} (private, 0600: a sample issuer)")
    out(f"  attester     {keys / 'attester.jwk'} (private, 0600: a sample attester)")
    for name, groups in SAMPLE_APPROVERS:
        path = keys / f"approver-{name}.jwk"
        out(f"  approver     {path} (private, 0600: sample approver {name}, {', '.join(groups)})")
    out("private keys are never printed; each has a .pub.jwk beside it")
    out("a transfer over 1000 pauses for 2 finance approvers: execgate approvals --help")
    out("next: execgate keygen runtime.jwk, then execgate issue --help")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from execgate.jose import PrivateKey
    from execgate.keyfile import write_keypair

    if not Path(args.out).name:
        raise UsageError(f"{shown(args.out)} names no file: give one, e.g. runtime.jwk")
    key = PrivateKey.generate()
    public = write_keypair(Path(args.out), key)
    out(f"wrote private key {args.out} (0600) and public key {public}")
    out(f"key id (RFC 7638 thumbprint): {key.public.thumbprint()}")
    return 0


def register(commands: Commands) -> None:
    s = commands.add("init", "create a gateway home (refuses an existing or non-empty directory)")
    s.add_argument("dir", nargs="?", default=None, help="directory (default: the home)")
    s.add_argument("--id", help="gateway id, the audience artifacts name (default: random)")
    s.set_defaults(func=_init)

    s = commands.add("keygen", "create an Ed25519 key pair: OUT (0600) and OUT's .pub.jwk")
    s.add_argument("out", help="private key file to create, e.g. runtime.jwk")
    s.set_defaults(func=_keygen)
