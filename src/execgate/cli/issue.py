"""``execgate issue``: mint an authorization artifact from flags, checked against the home.

When the signing key is one of the home's trusted authorities, the issuer and the grants
are checked against that authority's entry in the trust store first, so an artifact that
this gateway would never accept is refused here with a reason instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from execgate.cli import _flags
from execgate.cli._common import (
    Commands,
    home_of,
    optional_config,
    positive,
    seconds,
    timestamp,
    write_token,
)
from execgate.errors import UsageError

__all__ = ["register"]


def _issue(args: argparse.Namespace) -> int:
    from execgate.artifacts import issue_artifact
    from execgate.home import load_config
    from execgate.keyfile import read_private_key, read_public_key
    from execgate.scope import parse_grants
    from execgate.trust import TrustStore

    scope = _flags.scope(args)
    env = _flags.env(args.env)
    gov = _flags.pairs(args.gov, "--gov", "ticket=FIN-1042", _flags.GOV_KEYS)
    att = _flags.pairs(args.att, "--att", "on_behalf_of=alice@example.com", _flags.ATT_KEYS)
    home = home_of(args)
    needs_home = args.key is None or args.iss is None or args.aud is None
    config = load_config(home) if needs_home else optional_config(home)
    key_path = Path(args.key) if args.key else home / "keys" / "authority.jwk"
    key = read_private_key(key_path)
    runtime_key = read_public_key(Path(args.runtime_key))
    issuer: str | None = args.iss
    if config is not None:
        trust = TrustStore.load(config.trust)
        owner = trust.authority_for_kid(key.public.thumbprint())
        if owner is None and issuer is None:
            raise UsageError(
                f"signing key {key_path} is not an authority in {config.trust}; add it there,"
                " or pass --iss AUTHORITY_ID to issue for another gateway"
            )
        if owner is not None:
            if issuer is not None and issuer != owner.id:
                raise UsageError(
                    f"--iss {issuer!r} does not own signing key {key_path};"
                    f" {config.trust} lists it for {owner.id!r}"
                )
            issuer = owner.id
            for grant in parse_grants(scope):
                if not any(grant.within(allowed) for allowed in owner.scope):
                    raise UsageError(
                        f"authority {owner.id!r} may not grant {grant.action} on"
                        f" {grant.resource} with these constraints (see its scope in"
                        f" {config.trust}); the artifact would never verify"
                    )
    assert issuer is not None
    audience = args.aud or (config.gateway_id if config else None)
    assert audience is not None
    now = int(time.time())
    if args.nbf is not None and args.nbf >= now + args.ttl:
        raise UsageError("--nbf is at or after the expiry (now + --ttl); raise --ttl")
    try:
        token = issue_artifact(
            key=key,
            issuer=issuer,
            subject=args.sub,
            audience=audience,
            runtime_key=runtime_key,
            scope=scope,
            now=now,
            ttl=args.ttl,
            not_before=args.nbf,
            env=env or None,
            gov=gov or None,
            att=att or None,
            uses=args.uses,
        )
    except ValueError as exc:
        raise UsageError(f"cannot issue this artifact: {exc}") from exc
    write_token(token, args.out)
    return 0


def register(commands: Commands) -> None:
    s = commands.add("issue", "mint an authorization artifact")
    s.add_argument("--sub", required=True, help="runtime id allowed to execute")
    s.add_argument("--runtime-key", required=True, help="the runtime's PUBLIC key file (.pub.jwk)")
    s.add_argument("--action", help="action glob, e.g. 'payments.*'")
    s.add_argument("--resource", help="resource glob, e.g. 'acct:**'")
    s.add_argument(
        "--constraint",
        action="append",
        help="ARG.BOUND=VALUE; BOUND is max, min, enum (A,B: strings), pattern or prefix",
    )
    s.add_argument("--scope", help="the whole scope as a JSON list of grants, or @FILE")
    s.add_argument("--ttl", type=seconds, default=900, help="seconds of validity (default 900)")
    s.add_argument("--nbf", type=timestamp, help="not-before (Unix seconds; default now)")
    s.add_argument("--uses", type=positive, help="maximum executions (default unlimited)")
    s.add_argument("--env", action="append", help="required environment KEY=VALUE or KEY=A|B")
    s.add_argument(
        "--gov",
        action="append",
        help="governance KEY=VALUE (policy, ticket, purpose, classification)",
    )
    s.add_argument(
        "--att", action="append", help="attribution KEY=VALUE (on_behalf_of, requested_by, reason)"
    )
    s.add_argument("--aud", help="audience (default: this gateway's id)")
    s.add_argument("--iss", help="issuer id (default: the trust store's owner of --key)")
    s.add_argument("--key", help="authority PRIVATE key (default: HOME/keys/authority.jwk)")
    s.add_argument("-o", "--out", help="write the artifact to this file (default: stdout)")
    s.set_defaults(func=_issue)
