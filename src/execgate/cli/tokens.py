"""``execgate inspect`` (decode a token, and say whether it verifies against the home),
``execgate proof`` (a runtime's proof of possession) and ``execgate attest``.

For an artifact, ``inspect`` also shows its delegation chain, root first: each link's
``iss``, ``sub`` and ``jti``. Of a verified artifact these are the verified links; of an
unverified one, only what the nested ``prf`` tokens claim.

``proof --http-method M --http-uri U`` signs, instead of one proof for a request file,
the headers of one HTTP call through a forward-auth proxy (``execgate.adapters.http``):
``Name: value`` lines that ``curl -H @FILE`` reads, or a JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from execgate.cli import _flags
from execgate.cli._common import (
    MAX_TOKEN,
    Commands,
    home_of,
    json_text,
    optional_config,
    out,
    read_bytes,
    seconds,
    token_arg,
    write_text,
    write_token,
)
from execgate.cli._records import cell
from execgate.cli._request import load_submission, sign_proof
from execgate.errors import ConfigError, JoseError, UsageError, VerificationError

if TYPE_CHECKING:
    from execgate.artifacts import Artifact
    from execgate.jose import Parsed

__all__ = ["register"]

_MAX_LINKS: Final = 64  # of a claimed chain; the token size limit keeps it far shorter


def _status(parsed: Parsed, token: str, home: Path) -> tuple[bool, str, Artifact | None]:
    """(verified, the status line, the artifact when a verified artifact)."""
    from execgate.artifacts import ARTIFACT_TYP, verify_artifact
    from execgate.attestations import ATTESTATION_TYP, verify_attestation
    from execgate.keyfile import read_private_key
    from execgate.proofs import PROOF_TYP
    from execgate.receipts import RECEIPT_TYP, verify_receipt
    from execgate.trust import TrustStore

    typ = parsed.header.get("typ")
    if typ == PROOF_TYP:
        return False, "UNVERIFIED: a proof is checked only with its request (execgate decide)", None
    if typ not in (ARTIFACT_TYP, ATTESTATION_TYP, RECEIPT_TYP):
        return False, f"UNVERIFIED: unknown token type {typ!r}", None
    config = optional_config(home)
    if config is None:
        return False, f"UNVERIFIED: no gateway home at {home} to verify against", None
    now = int(time.time())
    try:
        if typ == RECEIPT_TYP:
            node = read_private_key(config.node_key).public
            verify_receipt(token, keys={node.thumbprint(): node}, now=now, leeway=config.leeway)
            return True, f"VERIFIED receipt: signed by this gateway ({config.gateway_id})", None
        trust = TrustStore.load(config.trust)
        if typ == ATTESTATION_TYP:
            subject, cnf = parsed.claims.get("sub"), parsed.claims.get("cnf")
            bound = cnf.get("jkt") if isinstance(cnf, dict) else None
            verify_attestation(
                token,
                trust=trust,
                runtime=subject if isinstance(subject, str) else "",
                jkt=bound if isinstance(bound, str) else "",
                now=now,
                leeway=config.leeway,
            )
            owner = trust.attester_for_kid(str(parsed.header.get("kid")))
            who = owner.id if owner else "?"
            return True, f"VERIFIED attestation: by trusted attester {who!r}", None
        artifact = verify_artifact(
            token,
            trust=trust,
            audiences=config.audiences,
            now=now,
            leeway=config.leeway,
            max_depth=config.max_depth,
        )
    except VerificationError as exc:
        return False, f"UNVERIFIED: {exc.code}: {exc.detail}", None
    authority = artifact.authority.id
    if artifact.depth == 0:
        return True, f"VERIFIED artifact: issued by trusted authority {authority!r}", artifact
    status = (
        f"VERIFIED artifact: delegated from trusted authority {authority!r},"
        f" chain depth {artifact.depth}"
    )
    return True, status, artifact


def _chain(parsed: Parsed, artifact: Artifact | None) -> tuple[list[dict[str, Any]], bool]:
    """The links root first, and whether the chain is complete: the verified links, or
    what the nested ``prf`` tokens claim (up to the first one that does not parse)."""
    from execgate.artifacts import embedded_parent
    from execgate.jose import parse_unverified

    if artifact is not None:
        links = [{"iss": a.issuer, "sub": a.subject, "jti": a.jti} for a in artifact.chain]
        return links, True
    claimed: list[dict[str, Any]] = []
    claims, complete = parsed.claims, False
    while len(claimed) < _MAX_LINKS:
        claimed.append({name: claims.get(name) for name in ("iss", "sub", "jti")})
        prf = claims.get("prf")
        if prf is None:
            complete = True
            break
        parent = embedded_parent(claims)
        if parent is None:
            break
        try:
            claims = parse_unverified(parent, max_size=MAX_TOKEN).claims
        except JoseError:
            break
    return claimed[::-1], complete


def _utc(value: object) -> str:
    if type(value) is not int:
        return repr(value)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _inspect(args: argparse.Namespace) -> int:
    from execgate.artifacts import ARTIFACT_TYP
    from execgate.jose import parse_unverified

    token = token_arg(args.token, "TOKEN")
    try:
        parsed = parse_unverified(token, max_size=MAX_TOKEN)
    except JoseError as exc:
        raise UsageError(f"the token is not a well-formed compact JWS: {exc.detail}") from exc
    verified, status, artifact = _status(parsed, token, home_of(args))
    is_artifact = parsed.header.get("typ") == ARTIFACT_TYP
    chain, complete = _chain(parsed, artifact) if is_artifact else ([], True)
    if args.json:
        doc: dict[str, Any] = {
            "verified": verified,
            "status": status,
            "header": parsed.header,
            "claims": parsed.claims,
        }
        if is_artifact:
            depth = len(chain) - 1 if complete else None
            doc.update(depth=depth, chain=chain, chain_complete=complete)
        out(json_text(doc))
        return 0
    out(status)
    if not verified:
        out("  the content below is what the token claims, not what anyone vouched for")
    for name in ("iat", "nbf", "exp"):
        if name in parsed.claims:
            out(f"  {name} {_utc(parsed.claims[name])}")
    if is_artifact:
        if complete:
            out(f"  chain (depth {len(chain) - 1}, root first):")
        else:
            out("  chain (depth unknown: the link above the first shown could not be read):")
        for depth, link in enumerate(chain):
            iss, sub, jti = (cell(link[name]) for name in ("iss", "sub", "jti"))
            out(f"    {depth}  iss {iss}  sub {sub}  jti {jti}")
    out("header: " + json_text(parsed.header))
    out("claims: " + json_text(parsed.claims))
    return 0


def _audience(args: argparse.Namespace) -> str:
    from execgate.home import load_config

    if args.aud:
        audience: str = args.aud
        return audience
    try:
        return load_config(home_of(args)).gateway_id
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or pass --aud GATEWAY_ID") from exc


def _proof(args: argparse.Namespace) -> int:
    http_flags = [
        flag
        for flag, value in (
            ("--http-method", args.http_method),
            ("--http-uri", args.http_uri),
            ("--body-file", args.body_file),
            ("--header-format", args.header_format),
            ("--parent", args.parent),
            ("--attestation", args.attestation),
            ("--runtime", args.runtime),
        )
        if value is not None
    ]
    if args.request is not None and http_flags:
        raise UsageError(
            f"{http_flags[0]} signs the headers of an HTTP call and cannot be combined with"
            " --request; give one or the other"
        )
    if args.request is None and not http_flags:
        raise UsageError(
            "give --request FILE (a decision request), or --http-method and --http-uri"
            " (the headers of an HTTP call through a forward-auth proxy)"
        )
    if args.request is None:
        return _http_proof(args)
    doc = load_submission(args)
    if not isinstance(doc.get("artifact"), str):
        raise UsageError("give the artifact with --artifact FILE (or in the request file)")
    write_token(sign_proof(doc, args.runtime_key, _audience(args)), args.out)
    return 0


def _http_proof(args: argparse.Namespace) -> int:
    """The headers of one HTTP call through a forward-auth proxy (``Name: value`` lines,
    which ``curl -H @FILE`` reads, or a JSON object)."""
    from execgate.adapters.http import forward_auth_headers
    from execgate.artifacts import MAX_ARTIFACT_BYTES
    from execgate.errors import RequestError
    from execgate.jose import parse_unverified
    from execgate.keyfile import read_private_key
    from execgate.proofs import Runtime
    from execgate.submission import MAX_REQUEST_BYTES

    for flag, value in (("--http-method", args.http_method), ("--http-uri", args.http_uri)):
        if value is None:
            raise UsageError(f"give {flag} too: an HTTP call needs a method and a URI")
    if args.artifact is None:
        raise UsageError("give the artifact with --artifact FILE (or the token itself)")
    artifact = token_arg(args.artifact, "--artifact")
    runtime_id = args.runtime
    if runtime_id is None:
        try:
            subject = parse_unverified(artifact, max_size=MAX_ARTIFACT_BYTES).claims.get("sub")
        except JoseError as exc:
            raise UsageError(f"--artifact is not a well-formed artifact: {exc.detail}") from exc
        if not isinstance(subject, str) or not subject:
            raise UsageError("the artifact names no runtime (sub); give --runtime ID")
        runtime_id = subject
    body = None
    if args.body_file is not None:
        body = read_bytes(args.body_file, "--body-file", limit=MAX_REQUEST_BYTES)
    parent = token_arg(args.parent, "--parent") if args.parent is not None else None
    attestation = None
    if args.attestation is not None:
        attestation = token_arg(args.attestation, "--attestation")
    runtime = Runtime(runtime_id, read_private_key(Path(args.runtime_key)))
    try:
        headers = forward_auth_headers(
            runtime,
            artifact=artifact,
            audience=_audience(args),
            method=args.http_method,
            uri=args.http_uri,
            body=body,
            parent=parent,
            attestation=attestation,
        )
    except RequestError as exc:
        raise UsageError(f"cannot sign headers for this call: {exc}") from exc
    if args.header_format == "json":
        text = json.dumps(headers, indent=2) + "\n"
    else:
        text = "".join(f"{name}: {value}\n" for name, value in headers.items())
    write_text(text, args.out, "headers")
    return 0


def _attest(args: argparse.Namespace) -> int:
    from execgate.attestations import issue_attestation
    from execgate.keyfile import read_private_key, read_public_key

    env = _flags.pairs(args.env, "--env", "region=eu-west-1")
    if not env:
        raise UsageError("give at least one --env KEY=VALUE to attest, e.g. --env region=eu-west-1")
    key = read_private_key(Path(args.key))
    runtime_key = read_public_key(Path(args.runtime_key))
    try:
        token = issue_attestation(
            key=key,
            subject=args.sub,
            runtime_key=runtime_key,
            env=env,
            now=int(time.time()),
            ttl=args.ttl,
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

    s = commands.add(
        "proof",
        "sign a proof of possession for a request, or the headers of an HTTP call through"
        " a forward-auth proxy (runtime key)",
    )
    s.add_argument("--request", help="request JSON file ('-' for stdin)")
    s.add_argument("--artifact", help="artifact file or compact JWS")
    s.add_argument("--runtime-key", required=True, help="the runtime's PRIVATE key file")
    s.add_argument("--aud", "--audience", dest="aud", help="audience (default: this gateway's id)")
    s.add_argument("-o", "--out", help="write the proof or headers to this file (default: stdout)")
    http = s.add_argument_group("HTTP call (instead of --request)")
    http.add_argument("--http-method", help="the call's method, e.g. GET")
    http.add_argument("--http-uri", help="the call's path and query, e.g. /api/x?y=1")
    http.add_argument(
        "--body-file", help="the body the proxy forwards (Envoy with_request_body), if any"
    )
    http.add_argument("--runtime", help="the runtime id (default: the artifact's sub)")
    http.add_argument("--parent", help="a parent decision's receipt (file or compact JWS)")
    http.add_argument("--attestation", help="an environment attestation (file or compact JWS)")
    http.add_argument(
        "--header-format",
        choices=["curl", "json"],
        help="curl: 'Name: value' lines for curl -H @FILE (default); json: one object",
    )
    s.set_defaults(func=_proof)

    s = commands.add("attest", "sign an environment attestation (attester key)")
    s.add_argument("--key", required=True, help="attester PRIVATE key file")
    s.add_argument("--sub", required=True, help="runtime id the attestation is about")
    s.add_argument("--runtime-key", required=True, help="that runtime's PUBLIC key file (.pub.jwk)")
    s.add_argument("--env", action="append", help="attested KEY=VALUE, e.g. region=eu-west-1")
    s.add_argument("--ttl", type=seconds, default=300, help="seconds of validity (default 300)")
    s.add_argument("-o", "--out", help="write the attestation to this file (default: stdout)")
    s.set_defaults(func=_attest)
