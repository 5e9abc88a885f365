"""The ``execgate`` command.

Exit codes:

    0  proceed (and every other command that did what was asked)
    1  deny (``decide``), or a failing case (``policy test``)
    2  usage or configuration error: a bad flag, a missing or corrupt file, a home that
       does not load. Nothing was decided and nothing was written.
    3  pause        4  reroute
    5  fail_closed: the gateway could not decide

``inspect`` exits 0 whether or not the token verified: its first line (``verified`` in
``--json``) says VERIFIED or UNVERIFIED and why.

Errors are one line on stderr, ``execgate: error: WHAT; WHAT TO DO``; a traceback means a
bug in execgate. No message ever quotes a key file's content, and private keys are never
printed: only their paths and public thumbprints.

When the state store cannot be opened, ``decide`` does not stop at an error line: it runs
the pipeline against a store that answers "unavailable", so the caller sees the same
``fail_closed`` decision (``store.unavailable``, ``audit.unavailable``; not logged, no
receipt) that a running gateway would give, with exit code 5. Other commands that need the
store (``revoke``) print one error line and also exit 5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from execgate.errors import (
    ConfigError,
    ExecgateError,
    JoseError,
    PolicyError,
    RequestError,
    StoreError,
    UsageError,
    VerificationError,
)
from execgate.model import Decision, Outcome

if TYPE_CHECKING:
    from execgate.home import GatewayConfig
    from execgate.jose import Parsed
    from execgate.pipeline import Gateway

__all__ = ["EXIT_CODES", "EXIT_USAGE", "main"]

EXIT_CODES: Final = {
    Outcome.PROCEED: 0,
    Outcome.DENY: 1,
    Outcome.PAUSE: 3,
    Outcome.REROUTE: 4,
    Outcome.FAIL_CLOSED: 5,
}
EXIT_USAGE: Final = 2

_MAX_INPUT: Final = 2 * 1024 * 1024  # a decision request file; the pipeline allows 1 MiB
_MAX_TOKEN: Final = 64 * 1024
_JWS_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_THUMBPRINT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_BOUNDS: Final = ("max", "min", "enum", "pattern", "prefix")
# Hints only: issue_artifact is the authority on which keys these claims accept.
_GOV_KEYS: Final = frozenset({"policy", "ticket", "purpose", "classification"})
_ATT_KEYS: Final = frozenset({"on_behalf_of", "requested_by", "reason"})


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")


def _shown(value: str) -> str:
    """A user-supplied value safe to echo: short, one line, never something key-shaped."""
    if len(value) <= 80 and "{" not in value and "\n" not in value:
        return repr(value)
    return "(the value given)"


# -- reading inputs ---------------------------------------------------------------------


def _read_bytes(path: str, what: str, *, limit: int = _MAX_INPUT) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise UsageError(f"{what} file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{what} file {path} is a directory, not a file") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise UsageError(f"{what} file {path} is larger than {limit} bytes")
    return data


def _looks_like_jws(text: str) -> bool:
    if len(text) > _MAX_TOKEN or not _JWS_SHAPE.fullmatch(text):
        return False
    from execgate.jose import b64url_decode

    try:
        header = b64url_decode(text.split(".", 1)[0])
    except JoseError:
        return False
    return header.lstrip().startswith(b"{")


def _token_arg(value: str, flag: str) -> str:
    """A compact JWS given inline, or the path of a file holding one (nothing else)."""
    path = Path(value)
    try:
        is_file, exists = path.is_file(), path.exists()
    except OSError:  # e.g. a long token is too long to be a file name
        is_file = exists = False
    if value and is_file:
        raw = _read_bytes(value, flag, limit=_MAX_TOKEN)
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = ""
        if not _looks_like_jws(text):
            raise UsageError(
                f"{flag} file {value} does not hold a compact JWS token"
                " (three base64url parts joined by dots, as 'execgate issue -o FILE' writes)"
            )
        return text
    if _looks_like_jws(value.strip()):
        return value.strip()
    if value and exists:
        raise UsageError(f"{flag} {value} is not a regular file; give a token file or a token")
    raise UsageError(
        f"{flag} {_shown(value)} is neither a file nor a compact JWS token;"
        " give the path of a token file or the token itself"
    )


def _pairs(
    items: Sequence[str] | None,
    flag: str,
    example: str,
    allowed: frozenset[str] | None = None,
) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value:
            raise UsageError(f"{flag} {item!r} must look like KEY=VALUE, e.g. {flag} {example}")
        if key != key.strip():
            raise UsageError(f"{flag} {item!r}: the key has surrounding spaces")
        if allowed is not None and key not in allowed:
            raise UsageError(
                f"{flag} {item!r}: unknown key {key!r}; use one of {', '.join(sorted(allowed))}"
            )
        if key in out:
            raise UsageError(f"{flag} {key} is given twice; give each key once")
        out[key] = value
    return out


def _number(item: str, text: str) -> int | float:
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"--constraint {item!r}: {text!r} is not a finite number")
    return value


def _constraints(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        target, sep, value = item.partition("=")
        arg, dot, bound = target.rpartition(".")
        if not sep or not dot or not arg or not value:
            raise UsageError(
                f"--constraint {item!r} must look like ARG.BOUND=VALUE,"
                " e.g. amount.max=100 or currency.enum=EUR,USD"
            )
        if bound not in _BOUNDS:
            raise UsageError(
                f"--constraint {item!r}: unknown bound {bound!r}; use one of {', '.join(_BOUNDS)}"
            )
        bounds = out.setdefault(arg, {})
        if bound in bounds:
            raise UsageError(f"--constraint {arg}.{bound} is given twice; give each bound once")
        if bound in ("max", "min"):
            bounds[bound] = _number(item, value)
        elif bound == "enum":
            options = value.split(",")
            if not all(options):
                raise UsageError(f"--constraint {item!r}: an enum lists values like A,B,C")
            bounds[bound] = options
        else:
            bounds[bound] = value
    return out


def _scope(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The grants to issue, checked with the same parser verification uses."""
    from execgate.scope import parse_grants

    if args.scope is not None:
        if args.action or args.resource or args.constraint:
            raise UsageError(
                "give the grant either with --scope or with --action/--resource/--constraint,"
                " not both"
            )
        if args.scope.startswith("@"):
            source = f"--scope file {args.scope[1:]}"
            data = _read_bytes(args.scope[1:], "--scope")
        else:
            source, data = "--scope", args.scope.encode()
        from execgate.jose import loads_strict

        try:
            scope = loads_strict(data)
        except JoseError as exc:
            detail = exc.detail.removeprefix("invalid JSON: ")
            raise UsageError(f"{source} is not valid JSON ({detail})") from exc
        if not isinstance(scope, list) or not all(isinstance(g, dict) for g in scope):
            raise UsageError(
                f"{source} must be a JSON list of grants, e.g."
                ' [{"action": "payments.*", "resource": "acct:**"}]'
            )
    elif args.action and args.resource:
        grant: dict[str, Any] = {"action": args.action, "resource": args.resource}
        constraints = _constraints(args.constraint)
        if constraints:
            grant["constraints"] = constraints
        scope = [grant]
    else:
        raise UsageError(
            "give the grant with --action and --resource (and any --constraint), or --scope JSON"
        )
    try:
        parse_grants(scope)
    except ValueError as exc:
        raise UsageError(f"invalid grant: {exc}") from exc
    return scope


def _env(items: Sequence[str] | None) -> dict[str, str | list[str]]:
    pairs = _pairs(items, "--env", "region=eu-west-1|eu-central-1")
    out: dict[str, str | list[str]] = {}
    for key, value in pairs.items():
        options = value.split("|")
        if not all(options):
            raise UsageError(f"--env {key}={value}: list accepted values like A|B")
        out[key] = options if len(options) > 1 else value
    return out


def _home(args: argparse.Namespace) -> Path:
    from execgate.home import default_home

    home: str | None = getattr(args, "home", None)
    return Path(home) if home else default_home()


def _optional_config(home: Path) -> GatewayConfig | None:
    """The home's config, or None when there is no home; a broken home is an error."""
    from execgate.home import CONFIG_NAME, load_config

    if not (home / CONFIG_NAME).exists():
        return None
    return load_config(home)


def _policy_error(path: Path | str, exc: PolicyError, hint: str = "") -> ConfigError:
    message = str(exc)
    if str(path) not in message:
        message = f"{path}: {message}"
    return ConfigError(message + hint)


def _write_token(token: str, out: str | None) -> None:
    if not out:
        _out(token)
        return
    from execgate.jose import loads_strict
    from execgate.keyfile import atomic_write

    target = Path(out)
    if target.is_file():
        try:
            existing = loads_strict(target.read_bytes()[:_MAX_TOKEN])
        except (OSError, JoseError):
            existing = None
        if isinstance(existing, dict) and "d" in existing:
            raise UsageError(f"{out} holds a private key; refusing to overwrite it with a token")
    atomic_write(target, token.encode() + b"\n")
    _note(f"wrote {out}")


# -- commands ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from execgate.home import init_home

    config = init_home(Path(args.dir), gateway_id=args.id)
    keys = config.home / "keys"
    _out(f"created gateway home {config.home}")
    _out(f"  gateway id   {config.gateway_id} (the audience artifacts and proofs must name)")
    _out(f"  config       {config.home / 'execgate.toml'}")
    _out(f"  trust store  {config.trust} (authorities, the scope each may grant, attesters)")
    _out(f"  policy       {config.policy}")
    _out(f"  node key     {config.node_key} (private, 0600: signs receipts)")
    _out(f"  authority    {keys / 'authority.jwk'} (private, 0600: a sample issuer)")
    _out(f"  attester     {keys / 'attester.jwk'} (private, 0600: a sample attester)")
    _out("private keys are never printed; each has a .pub.jwk beside it")
    _out("next: execgate keygen runtime.jwk, then execgate issue --help")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from execgate.jose import PrivateKey
    from execgate.keyfile import write_keypair

    key = PrivateKey.generate()
    public = write_keypair(Path(args.out), key)
    _out(f"wrote private key {args.out} (0600) and public key {public}")
    _out(f"key id (RFC 7638 thumbprint): {key.public.thumbprint()}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from execgate.artifacts import issue_artifact
    from execgate.home import load_config
    from execgate.keyfile import read_private_key, read_public_key
    from execgate.scope import parse_grants
    from execgate.trust import TrustStore

    scope = _scope(args)
    env = _env(args.env)
    gov = _pairs(args.gov, "--gov", "ticket=FIN-1042", _GOV_KEYS)
    att = _pairs(args.att, "--att", "on_behalf_of=alice@example.com", _ATT_KEYS)
    home = _home(args)
    needs_home = args.key is None or args.iss is None or args.aud is None
    config = load_config(home) if needs_home else _optional_config(home)
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
    _write_token(token, args.out)
    return 0


def _inspect_status(parsed: Parsed, token: str, home: Path) -> tuple[bool, str]:
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
    config = _optional_config(home)
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


def cmd_inspect(args: argparse.Namespace) -> int:
    from execgate.jose import parse_unverified

    token = _token_arg(args.token, "TOKEN")
    try:
        parsed = parse_unverified(token, max_size=_MAX_TOKEN)
    except JoseError as exc:
        raise UsageError(f"the token is not a well-formed compact JWS: {exc.detail}") from exc
    verified, status = _inspect_status(parsed, token, _home(args))
    if args.json:
        doc = {
            "verified": verified,
            "status": status,
            "header": parsed.header,
            "claims": parsed.claims,
        }
        _out(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    _out(status)
    if not verified:
        _out("  the content below is what the token claims, not what anyone vouched for")
    for name in ("iat", "nbf", "exp"):
        if name in parsed.claims:
            _out(f"  {name} {_utc(parsed.claims[name])}")
    _out("header: " + json.dumps(parsed.header, indent=2, ensure_ascii=False))
    _out("claims: " + json.dumps(parsed.claims, indent=2, ensure_ascii=False))
    return 0


def _load_submission(args: argparse.Namespace) -> dict[str, Any]:
    """The decision request: a file with the wire shape, or a bare request, plus flags."""
    from execgate.jose import loads_strict
    from execgate.model import Request

    where = "stdin" if args.request == "-" else f"request file {args.request}"
    data = _read_bytes(args.request, "request")
    try:
        doc = loads_strict(data)
    except JoseError as exc:
        detail = exc.detail.removeprefix("invalid JSON: ")
        raise UsageError(f"{where} is not valid JSON ({detail})") from exc
    if not isinstance(doc, dict):
        raise UsageError(
            f"{where} must hold a JSON object: a request {{action, resource, args, runtime,"
            " parent} or a decision request {request, artifact, proof, attestation}"
        )
    if "request" not in doc:  # a bare request: {action, resource, args, runtime, parent}
        doc = {"request": doc}
    try:
        Request.from_json(doc["request"])
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from exc
    for name in ("artifact", "proof", "attestation"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise UsageError(f"{where}: '{name}' must be a compact JWS string or null")
    for name in ("artifact", "attestation"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if doc.get(name) is not None:
            raise UsageError(f"{where} already holds '{name}'; drop it there or drop --{name}")
        doc[name] = _token_arg(value, f"--{name}")
    return doc


def _sign_proof(doc: dict[str, Any], key_file: str, audience: str) -> str:
    from execgate.keyfile import read_private_key
    from execgate.model import Request
    from execgate.proofs import Runtime

    request = Request.from_json(doc["request"])
    runtime = Runtime(request.runtime, read_private_key(Path(key_file)))
    return runtime.proof(request, doc["artifact"], audience=audience, now=int(time.time()))


def cmd_proof(args: argparse.Namespace) -> int:
    from execgate.home import load_config

    doc = _load_submission(args)
    if not isinstance(doc.get("artifact"), str):
        raise UsageError("give the artifact with --artifact FILE (or in the request file)")
    if args.aud:
        audience = args.aud
    else:
        try:
            audience = load_config(_home(args)).gateway_id
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or pass --aud GATEWAY_ID") from exc
    _write_token(_sign_proof(doc, args.runtime_key, audience), args.out)
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    from execgate.attestations import issue_attestation
    from execgate.keyfile import read_private_key

    env = _pairs(args.env, "--env", "region=eu-west-1")
    if not env:
        raise UsageError("give at least one --env KEY=VALUE to attest, e.g. --env region=eu-west-1")
    key = read_private_key(Path(args.key))
    try:
        token = issue_attestation(
            key=key, subject=args.sub, env=env, now=int(time.time()), ttl=args.ttl
        )
    except ValueError as exc:
        raise UsageError(f"cannot sign this attestation: {exc}") from exc
    _write_token(token, args.out)
    return 0


def _open_gateway(home: Path) -> Gateway:
    from execgate.home import load_config
    from execgate.pipeline import Gateway
    from execgate.store.unavailable import UnavailableStore

    try:
        return Gateway.open(home)
    except PolicyError as exc:
        raise _policy_error(load_config(home).policy, exc) from exc
    except StoreError as exc:
        # Everything but the store loaded: decide anyway, so the caller gets a real
        # fail_closed decision instead of a bare error (see the module docstring).
        return Gateway.open(home, store=UnavailableStore(str(exc)))


def _print_decision(decision: Decision, as_json: bool) -> None:
    if as_json:
        _out(json.dumps(decision.to_json(), indent=2, ensure_ascii=False))
        return
    line = decision.outcome.value.upper()
    if decision.route:
        line += f" -> {decision.route}"
    if decision.rule:
        line += f"  (rule {decision.rule})"
    _out(line)
    for reason in decision.reasons:
        _out(f"  {reason.code}: {reason.detail}")
    if decision.log_index is None:
        _out(f"  decision {decision.decision_id}  NOT logged, no receipt")
    else:
        _out(f"  decision {decision.decision_id}  log index {decision.log_index}")
    _out(f"  policy {decision.policy_hash}")


def cmd_decide(args: argparse.Namespace) -> int:
    from execgate.keyfile import read_private_key
    from execgate.pipeline import Submission

    doc = _load_submission(args)
    if args.runtime_key:
        if not isinstance(doc.get("artifact"), str):
            raise UsageError(
                "--runtime-key signs a proof for an artifact: give it with --artifact FILE"
                " (or in the request file)"
            )
        if doc.get("proof") is not None:
            raise UsageError(
                "the request file already holds a proof; drop it there or drop --runtime-key"
            )
        read_private_key(Path(args.runtime_key))  # a bad key is a usage error, not a decision
    home = _home(args)
    with _open_gateway(home) as gateway:
        if args.runtime_key:
            doc["proof"] = _sign_proof(doc, args.runtime_key, gateway.gateway_id)
        try:
            submission = Submission.from_json(doc)
        except RequestError as exc:
            raise UsageError(f"bad decision request {args.request}: {exc}") from exc
        decision = gateway.decide(submission)
    _print_decision(decision, args.json)
    return EXIT_CODES[decision.outcome]


def cmd_revoke(args: argparse.Namespace) -> int:
    from execgate.home import load_config
    from execgate.store.sqlite import SQLiteStore

    given = [f"--{k}" for k in ("jti", "kid", "sub", "artifact") if getattr(args, k) is not None]
    if len(given) != 1:
        got = "none" if not given else " and ".join(given)
        raise UsageError(f"revoke exactly one of --jti, --kid, --sub or --artifact (got {got})")
    if not args.reason.strip():
        raise UsageError("--reason must say why (it is recorded and shown in every denial)")
    kind, value = _revoke_target(args)
    store = SQLiteStore(load_config(_home(args)).store)
    try:
        fresh = store.revoke(kind, value, reason=args.reason, now=int(time.time()))
    finally:
        store.close()
    if fresh:
        _out(f"revoked {kind} {value}: every decision from now on denies it (artifact.revoked)")
    else:
        _out(f"{kind} {value} was already revoked")
    return 0


def _revoke_target(args: argparse.Namespace) -> tuple[str, str]:
    from execgate.jose import parse_unverified

    if args.artifact is not None:
        token = _token_arg(args.artifact, "--artifact")
        try:
            parsed = parse_unverified(token, max_size=_MAX_TOKEN)
        except JoseError as exc:
            raise UsageError(f"--artifact is not a well-formed compact JWS: {exc.detail}") from exc
        jti = parsed.claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise UsageError("the --artifact token has no jti to revoke")
        return "jti", jti
    kind = next(k for k in ("jti", "kid", "sub") if getattr(args, k) is not None)
    value: str = getattr(args, kind)
    if not value:
        raise UsageError(f"--{kind} must not be empty")
    if kind == "kid" and not _THUMBPRINT.fullmatch(value):
        raise UsageError(
            f"--kid {_shown(value)} is not a key id (a 43-character RFC 7638 thumbprint,"
            " as keygen prints)"
        )
    return kind, value


def cmd_policy(args: argparse.Namespace) -> int:
    from execgate.policy import load_cases, load_policy, run_cases

    home = _home(args)
    config = _optional_config(home)
    targets = set(config.targets) if config else set()
    targets.update(args.target or ())
    try:
        policy = load_policy(Path(args.file), targets=targets)
    except PolicyError as exc:
        hint = ""
        if config is None and "reroute target" in str(exc):
            hint = f"; there is no gateway home at {home}: name reroute targets with --target"
        raise _policy_error(args.file, exc, hint) from exc
    if args.policy_command == "hash":
        _out(policy.hash)
        return 0
    if args.policy_command == "check":
        _out(f"ok: {args.file}: {len(policy.rules)} rules, {policy.hash}")
        return 0
    try:
        cases = load_cases(Path(args.cases))
    except PolicyError as exc:
        raise _policy_error(args.cases, exc) from exc
    results = run_cases(policy, cases)
    failed = [r for r in results if not r.passed]
    for result in results:
        _out(f"PASS  {result.name}" if result.passed else f"FAIL  {result.name}: {result.message}")
    _out(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from execgate.demo import run_demo

    return run_demo(_out)


# -- argument parsing -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"execgate: error: {message} (see '{self.prog} --help')\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _timestamp(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Unix time in seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="execgate", description="A fail-closed execution gateway.")
    home_help = "gateway home directory (default: $EXECGATE_HOME or ./.execgate)"
    p.add_argument("--home", help=home_help)
    # Also accepted after the command (execgate decide --home H ...).
    common = _Parser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS, help=home_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        return parser

    s = command("init", "create a gateway home (refuses an existing or non-empty directory)")
    s.add_argument("dir", nargs="?", default=None, help="directory (default: the home)")
    s.add_argument("--id", help="gateway id, the audience artifacts name (default: random)")
    s.set_defaults(func=cmd_init)

    s = command("keygen", "create an Ed25519 key pair: OUT (0600) and OUT's .pub.jwk")
    s.add_argument("out", help="private key file to create, e.g. runtime.jwk")
    s.set_defaults(func=cmd_keygen)

    s = command("issue", "mint an authorization artifact")
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
    s.add_argument("--ttl", type=_positive, default=900, help="seconds of validity (default 900)")
    s.add_argument("--nbf", type=_timestamp, help="not-before (Unix seconds; default now)")
    s.add_argument("--uses", type=_positive, help="maximum executions (default unlimited)")
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
    s.set_defaults(func=cmd_issue)

    s = command("inspect", "show a token decoded; UNVERIFIED unless it verifies against the home")
    s.add_argument("token", help="artifact (or attestation, receipt) file or compact JWS")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_inspect)

    s = command("proof", "sign a proof of possession for a request (runtime key)")
    s.add_argument("--request", required=True, help="request JSON file ('-' for stdin)")
    s.add_argument("--artifact", help="artifact file or compact JWS")
    s.add_argument("--runtime-key", required=True, help="the runtime's PRIVATE key file")
    s.add_argument("--aud", help="audience (default: this gateway's id)")
    s.add_argument("-o", "--out", help="write the proof to this file (default: stdout)")
    s.set_defaults(func=cmd_proof)

    s = command("attest", "sign an environment attestation (attester key)")
    s.add_argument("--key", required=True, help="attester PRIVATE key file")
    s.add_argument("--sub", required=True, help="runtime id the attestation is about")
    s.add_argument("--env", action="append", help="attested KEY=VALUE, e.g. region=eu-west-1")
    s.add_argument("--ttl", type=_positive, default=300, help="seconds of validity (default 300)")
    s.add_argument("-o", "--out", help="write the attestation to this file (default: stdout)")
    s.set_defaults(func=cmd_attest)

    s = command(
        "decide",
        "decide one request; exit 0 proceed, 1 deny, 2 usage, 3 pause, 4 reroute, 5 fail_closed",
    )
    s.add_argument("--request", required=True, help="(decision) request JSON file, '-' for stdin")
    s.add_argument("--artifact", help="artifact file or compact JWS (fills 'artifact')")
    s.add_argument("--attestation", help="attestation file or compact JWS")
    s.add_argument("--runtime-key", help="sign the proof with this runtime PRIVATE key")
    s.add_argument("--json", action="store_true", help="print the decision as JSON")
    s.set_defaults(func=cmd_decide)

    s = command("revoke", "revoke an artifact, a key or a subject (exactly one)")
    s.add_argument("--jti", help="an artifact id")
    s.add_argument("--kid", help="an authority or runtime key id (RFC 7638 thumbprint)")
    s.add_argument("--sub", help="a runtime id")
    s.add_argument("--artifact", help="revoke this artifact's jti (file or compact JWS)")
    s.add_argument("--reason", required=True, help="why; recorded and shown in denials")
    s.set_defaults(func=cmd_revoke)

    s = command("policy", "check, hash or test a policy file")
    psub = s.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    target_help = "an allowed reroute target, added to the home's (repeatable)"
    for name, text in (("check", "validate a policy"), ("hash", "print the policy hash")):
        q = psub.add_parser(name, help=text, description=text, parents=[common])
        q.add_argument("file")
        q.add_argument("--target", action="append", help=target_help)
        q.set_defaults(func=cmd_policy)
    text = "run table-driven cases against a policy (PASS/FAIL; exit 1 on a failure)"
    q = psub.add_parser("test", help=text, description=text, parents=[common])
    q.add_argument("file")
    q.add_argument("cases", help="cases YAML (see execgate.policy.cases)")
    q.add_argument("--target", action="append", help=target_help)
    q.set_defaults(func=cmd_policy)

    s = command("demo", "show every outcome on a temporary gateway")
    s.set_defaults(func=cmd_demo)
    return p


def _one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", message).strip()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "init" and args.dir is None:
        args.dir = str(_home(args))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except StoreError as exc:
        _note(
            f"execgate: error: the state store is unavailable (fail closed): {_one_line(str(exc))}"
        )
        return EXIT_CODES[Outcome.FAIL_CLOSED]
    except ExecgateError as exc:
        _note(f"execgate: error: {_one_line(str(exc))}")
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _note(f"execgate: error: {exc.strerror or exc}{where}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
