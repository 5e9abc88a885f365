"""``execgate delegate``: the holder of an artifact mints a narrower child (DESIGN §4.2).

The child is signed with the holder's runtime key, the key the parent binds
(``cnf.jkt``); it embeds the parent and may only narrow it: grants, constraints,
audience, validity, environment, governance and uses. Anything wider is refused here,
with the reason, instead of being minted and denied later. When the home is among the
parent's audiences, the parent must also verify there, not be revoked there, and leave
room below the home's ``max_depth``: a child of a parent this gateway refuses would be
refused too. Without such a home the child is checked against the parent's claims only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from execgate.cli import _flags
from execgate.cli._common import (
    Commands,
    home_of,
    optional_config,
    positive,
    seconds,
    shown,
    token_arg,
    write_token,
)
from execgate.cli._records import cell
from execgate.errors import JoseError, UsageError, VerificationError

if TYPE_CHECKING:
    from execgate.jose import PrivateKey

__all__ = ["register"]


def _utc(value: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _parent(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from execgate.artifacts import ARTIFACT_TYP, MAX_ARTIFACT_BYTES
    from execgate.jose import parse_unverified

    token = token_arg(args.parent, "--parent")
    try:
        parsed = parse_unverified(token, max_size=MAX_ARTIFACT_BYTES)
    except JoseError as exc:
        raise UsageError(f"--parent is not a well-formed artifact: {exc.detail}") from exc
    if parsed.header.get("typ") != ARTIFACT_TYP:
        raise UsageError(
            f"--parent is a {parsed.header.get('typ')!r} token, not an artifact;"
            " give the artifact you hold (as 'execgate issue' or 'execgate delegate' wrote it)"
        )
    return token, dict(parsed.claims)


def _holder_key(args: argparse.Namespace, claims: dict[str, Any]) -> PrivateKey:
    from execgate.keyfile import read_private_key

    key = read_private_key(Path(args.key))
    holder = key.public.thumbprint()
    cnf = claims.get("cnf")
    bound = cnf.get("jkt") if isinstance(cnf, dict) else None
    if bound != holder:
        raise UsageError(
            f"--key {args.key} is not the key the parent artifact binds (its cnf.jkt is"
            f" {shown(str(bound))}, this key's id is {holder}); sign with the private key"
            " of the runtime the parent was issued to"
        )
    return key


def _check_ttl(ttl: int | None, claims: dict[str, Any], now: int) -> None:
    exp = claims.get("exp")
    if type(exp) is not int:
        return  # delegate_artifact names what is wrong with the parent
    if exp <= now:
        raise UsageError(
            f"the parent artifact expired at {_utc(exp)}; a child cannot outlive it"
            " (ask its issuer for a new one)"
        )
    if ttl is not None and now + ttl > exp:
        raise UsageError(
            f"--ttl {ttl} would outlive the parent artifact, which expires at {_utc(exp)}"
            f" (in {exp - now} s); give --ttl {exp - now} or less, or leave --ttl out to"
            " inherit the parent's expiry"
        )


def _check_at_home(args: argparse.Namespace, token: str, claims: dict[str, Any]) -> None:
    """When this home is one of the parent's audiences, the parent must verify here and
    not be revoked (a store that cannot answer fails closed: exit 5)."""
    from execgate.artifacts import verify_artifact
    from execgate.store.sqlite import SQLiteStore
    from execgate.trust import TrustStore

    home = home_of(args)
    config = optional_config(home)
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if config is None or not config.audiences.intersection(a for a in audiences if type(a) is str):
        return
    try:
        parent = verify_artifact(
            token,
            trust=TrustStore.load(config.trust),
            audiences=config.audiences,
            now=int(time.time()),
            leeway=config.leeway,
            max_depth=config.max_depth,
        )
    except VerificationError as exc:
        raise UsageError(
            f"the parent artifact does not verify at gateway {config.gateway_id!r}"
            f" ({exc.code}: {exc.detail}); a child of it would be refused too"
        ) from exc
    if parent.depth + 1 > config.max_depth:
        raise UsageError(
            f"the parent is already at chain depth {parent.depth}; gateway"
            f" {config.gateway_id!r} accepts chains at most {config.max_depth} deep"
            " ([limits] max_depth)"
        )
    store = SQLiteStore(config.store)
    try:
        revoked = store.revoked(parent.revocation_keys())
    finally:
        store.close()
    if revoked is not None:
        raise UsageError(
            f"the parent artifact is revoked at gateway {config.gateway_id!r}"
            f" ({revoked.kind} {shown(revoked.value)}: {cell(revoked.reason)});"
            " a child of it would be denied too"
        )


def _delegate(args: argparse.Namespace) -> int:
    from execgate.delegation import delegate_artifact
    from execgate.keyfile import read_public_key

    scope = _flags.scope(args)
    env = _flags.env(args.env)
    gov = _flags.pairs(args.gov, "--gov", "ticket=FIN-1042", _flags.GOV_KEYS)
    att = _flags.pairs(args.att, "--att", "on_behalf_of=alice@example.com", _flags.ATT_KEYS)
    if args.aud is not None and not all(args.aud):
        raise UsageError("--aud must not be empty; give a gateway or mesh id")
    token, claims = _parent(args)
    holder = _holder_key(args, claims)
    runtime_key = read_public_key(Path(args.runtime_key))
    now = int(time.time())
    _check_ttl(args.ttl, claims, now)
    _check_at_home(args, token, claims)
    try:
        child = delegate_artifact(
            parent=token,
            holder_key=holder,
            subject=args.sub,
            runtime_key=runtime_key,
            scope=scope,
            now=now,
            ttl=args.ttl,
            audience=args.aud[0] if args.aud and len(args.aud) == 1 else args.aud,
            env=env or None,
            gov=gov or None,
            att=att or None,
            uses=args.uses,
        )
    except ValueError as exc:
        reason = str(exc).removeprefix("cannot delegate: ")
        hint = ""
        if "widen" in reason:
            hint = "; a child may only narrow its parent ('execgate inspect PARENT' shows it)"
        elif "the limit is" in reason:
            hint = "; the chain is too long to extend: delegate from a link nearer its root"
        raise UsageError(f"cannot delegate: {reason}{hint}") from exc
    write_token(child, args.out)
    return 0


def register(commands: Commands) -> None:
    s = commands.add("delegate", "mint a narrower child of an artifact you hold (holder key)")
    s.add_argument("--parent", required=True, help="the artifact you hold (file or compact JWS)")
    s.add_argument(
        "--key", required=True, help="the holder's PRIVATE runtime key (the parent's cnf.jkt)"
    )
    s.add_argument("--sub", required=True, help="runtime id allowed to execute with the child")
    s.add_argument(
        "--runtime-key", required=True, help="the child runtime's PUBLIC key file (.pub.jwk)"
    )
    s.add_argument("--action", help="action glob, within a parent grant")
    s.add_argument("--resource", help="resource glob, within a parent grant")
    s.add_argument(
        "--constraint",
        action="append",
        help="ARG.BOUND=VALUE, at least as tight as the parent's (max, min, enum, pattern, prefix)",
    )
    s.add_argument("--scope", help="the whole scope as a JSON list of grants, or @FILE")
    s.add_argument(
        "--ttl", type=seconds, help="seconds of validity (default: until the parent expires)"
    )
    s.add_argument(
        "--uses", type=positive, help="maximum executions (default and maximum: the parent's)"
    )
    s.add_argument("--env", action="append", help="an added or narrowed condition KEY=A|B")
    s.add_argument("--gov", action="append", help="added governance KEY=VALUE")
    s.add_argument("--att", action="append", help="attribution KEY=VALUE")
    s.add_argument(
        "--aud", action="append", help="audience, repeatable (default: the parent's audience)"
    )
    s.add_argument("-o", "--out", help="write the child artifact to this file (default: stdout)")
    s.set_defaults(func=_delegate)
