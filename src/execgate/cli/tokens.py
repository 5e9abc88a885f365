"""``execgate inspect`` (decode a token, and say whether it verifies against the home),
``execgate proof`` (a runtime's proof of possession) and ``execgate attest``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from execgate.cli import _flags
from execgate.cli._common import (
    MAX_TOKEN,
    Commands,
    home_of,
    optional_config,
    out,
    positive,
    token_arg,
    write_token,
)
from execgate.cli._request import load_submission, sign_proof
from execgate.errors import ConfigError, JoseError, UsageError, VerificationError

if TYPE_CHECKING:
    from execgate.jose import Parsed

__all__ = ["register"]


def _status(parsed: Parsed, token: str, home: Path) -> tuple[bool, str]:
    from execgate.artifacts import ARTIFACT_TYP, verify_artifact
    from execgate.attestations import ATTESTATION_TYP, verify_attestation
    from execgate.keyfile import read_private_key
    from execgate.proofs import PROOF_TYP
    from execgate.receipts import RECEIPT_TYP, verify_receipt
    from execgate.trust import TrustStore

    typ = parsed.header.get("typ")
    if typ == PROOF_TYP:
        return False, "UNVERIFIED: a proof is checked only with its request (execgate decide)"
    if typ not in (ARTIFACT_TYP, ATTESTATION_TYP, RECEIPT_TYP):
        return False, f"UNVERIFIED: unknown token type {typ!r}"
    config = optional_config(home)
    if config is None:
        return False, f"UNVERIFIED: no gateway home at {home} to verify against"
    now = int(time.time())
    try:
        if typ == RECEIPT_TYP:
            node = read_private_key(config.node_key).public
            verify_receipt(token, keys={node.thumbprint(): node}, now=now, leeway=config.leeway)
            return True, f"VERIFIED receipt: signed by this gateway ({config.gateway_id})"
        trust = TrustStore.load(config.trust)
        if typ == ATTESTATION_TYP:
            subject = parsed.claims.get("sub")
            verify_attestation(
                token,
                trust=trust,
                runtime=subject if isinstance(subject, str) else "",
                now=now,
                leeway=config.leeway,
            )
            owner = trust.attester_for_kid(str(parsed.header.get("kid")))
            who = owner.id if owner else "?"
            return True, f"VERIFIED attestation: by trusted attester {who!r}"
        artifact = verify_artifact(
            token, trust=trust, audiences=config.audiences, now=now, leeway=config.leeway
        )
    except VerificationError as exc:
        return False, f"UNVERIFIED: {exc.code}: {exc.detail}"
    return True, f"VERIFIED artifact: issued by trusted authority {artifact.authority.id!r}"


def _utc(value: object) -> str:
    if type(value) is not int:
        return repr(value)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _inspect(args: argparse.Namespace) -> int:
    from execgate.jose import parse_unverified

    token = token_arg(args.token, "TOKEN")
    try:
        parsed = parse_unverified(token, max_size=MAX_TOKEN)
    except JoseError as exc:
        raise UsageError(f"the token is not a well-formed compact JWS: {exc.detail}") from exc
    verified, status = _status(parsed, token, home_of(args))
    if args.json:
        doc = {
            "verified": verified,
            "status": status,
            "header": parsed.header,
            "claims": parsed.claims,
        }
        out(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    out(status)
    if not verified:
        out("  the content below is what the token claims, not what anyone vouched for")
    for name in ("iat", "nbf", "exp"):
        if name in parsed.claims:
            out(f"  {name} {_utc(parsed.claims[name])}")
    out("header: " + json.dumps(parsed.header, indent=2, ensure_ascii=False))
    out("claims: " + json.dumps(parsed.claims, indent=2, ensure_ascii=False))
    return 0


def _proof(args: argparse.Namespace) -> int:
    from execgate.home import load_config

    doc = load_submission(args)
    if not isinstance(doc.get("artifact"), str):
        raise UsageError("give the artifact with --artifact FILE (or in the request file)")
    if args.aud:
        audience = args.aud
    else:
        try:
            audience = load_config(home_of(args)).gateway_id
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or pass --aud GATEWAY_ID") from exc
    write_token(sign_proof(doc, args.runtime_key, audience), args.out)
    return 0


def _attest(args: argparse.Namespace) -> int:
    from execgate.attestations import issue_attestation
    from execgate.keyfile import read_private_key

    env = _flags.pairs(args.env, "--env", "region=eu-west-1")
    if not env:
        raise UsageError("give at least one --env KEY=VALUE to attest, e.g. --env region=eu-west-1")
    key = read_private_key(Path(args.key))
    try:
        token = issue_attestation(
            key=key, subject=args.sub, env=env, now=int(time.time()), ttl=args.ttl
        )
    except ValueError as exc:
        raise UsageError(f"cannot sign this attestation: {exc}") from exc
    write_token(token, args.out)
    return 0


def register(commands: Commands) -> None:
    s = commands.add(
        "inspect", "show a token decoded; UNVERIFIED unless it verifies against the home"
    )
    s.add_argument("token", help="artifact (or attestation, receipt) file or compact JWS")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_inspect)

    s = commands.add("proof", "sign a proof of possession for a request (runtime key)")
    s.add_argument("--request", required=True, help="request JSON file ('-' for stdin)")
    s.add_argument("--artifact", help="artifact file or compact JWS")
    s.add_argument("--runtime-key", required=True, help="the runtime's PRIVATE key file")
    s.add_argument("--aud", help="audience (default: this gateway's id)")
    s.add_argument("-o", "--out", help="write the proof to this file (default: stdout)")
    s.set_defaults(func=_proof)

    s = commands.add("attest", "sign an environment attestation (attester key)")
    s.add_argument("--key", required=True, help="attester PRIVATE key file")
    s.add_argument("--sub", required=True, help="runtime id the attestation is about")
    s.add_argument("--env", action="append", help="attested KEY=VALUE, e.g. region=eu-west-1")
    s.add_argument("--ttl", type=positive, default=300, help="seconds of validity (default 300)")
    s.add_argument("-o", "--out", help="write the attestation to this file (default: stdout)")
    s.set_defaults(func=_attest)
