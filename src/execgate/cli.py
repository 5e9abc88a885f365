"""The ``execgate`` command.

Exit codes: 0 proceed, 1 deny, 2 usage or configuration error, 3 pause, 4 reroute,
5 fail_closed. Errors are one line saying what was wrong and what to do; a traceback
means a bug in execgate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from execgate.errors import (
    ConfigError,
    ExecgateError,
    JoseError,
    RequestError,
    StoreError,
    UsageError,
    VerificationError,
)
from execgate.model import Decision, Outcome

__all__ = ["EXIT_CODES", "main"]

EXIT_CODES: Final = {
    Outcome.PROCEED: 0,
    Outcome.DENY: 1,
    Outcome.PAUSE: 3,
    Outcome.REROUTE: 4,
    Outcome.FAIL_CLOSED: 5,
}
EXIT_USAGE: Final = 2


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _read_text(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"{what} file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc}") from exc


def _token_arg(value: str, what: str) -> str:
    """A compact JWS given inline, or a path to a file holding one."""
    text = value.strip()
    if text.count(".") == 2 and not Path(text).exists():
        return text
    return _read_text(value, what).strip()


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {item!r} must look like KEY=VALUE")
        out[key] = value
    return out


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


# -- commands ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from execgate.home import init_home

    config = init_home(Path(args.dir), gateway_id=args.id)
    _out(f"created gateway home {config.home} (gateway id {config.gateway_id})")
    _out(f"  config       {config.home / 'execgate.toml'}")
    _out(f"  trust store  {config.trust}")
    _out(f"  policy       {config.policy}  ({config.policy.stat().st_size} bytes)")
    _out(f"  node key     {config.node_key} (private, 0600)")
    _out(f"  authority    {config.home / 'keys' / 'authority.jwk'} (private, 0600; sample issuer)")
    _out("next: execgate keygen runtime.jwk  then  execgate issue --help")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from execgate.jose import PrivateKey
    from execgate.keyfile import write_keypair

    key = PrivateKey.generate()
    public = write_keypair(Path(args.out), key)
    _out(f"wrote private key {args.out} (0600) and public key {public}")
    _out(f"key id (RFC 7638 thumbprint): {key.public.thumbprint()}")
    return 0


def _home(args: argparse.Namespace) -> Path:
    from execgate.home import default_home

    return Path(args.home) if args.home else default_home()


def cmd_issue(args: argparse.Namespace) -> int:
    from execgate.artifacts import issue_artifact
    from execgate.home import load_config
    from execgate.keyfile import read_private_key, read_public_key
    from execgate.trust import TrustStore

    home = _home(args)
    config = load_config(home)
    key = read_private_key(Path(args.key) if args.key else home / "keys" / "authority.jwk")
    issuer = args.iss
    if issuer is None:
        owner = TrustStore.load(config.trust).authority_for_kid(key.public.thumbprint())
        if owner is None:
            raise UsageError("the signing key is not in the trust store; pass --iss AUTHORITY_ID")
        issuer = owner.id
    if args.scope:
        text = _read_text(args.scope[1:], "scope") if args.scope.startswith("@") else args.scope
        try:
            scope = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--scope is not JSON: {exc}") from exc
    elif args.action and args.resource:
        constraints: dict[str, dict[str, Any]] = {}
        for item in args.constraint or ():
            target, sep, value = item.partition("=")
            arg, dot, bound = target.rpartition(".")
            if not sep or not dot or not arg:
                raise UsageError(
                    f"--constraint {item!r} must look like ARG.BOUND=VALUE (amount.max=100)"
                )
            if bound in ("max", "min"):
                try:
                    constraints.setdefault(arg, {})[bound] = _number(value)
                except ValueError as exc:
                    raise UsageError(f"--constraint {item!r}: {value!r} is not a number") from exc
            elif bound == "enum":
                constraints.setdefault(arg, {})[bound] = value.split(",")
            else:
                constraints.setdefault(arg, {})[bound] = value
        grant: dict[str, Any] = {"action": args.action, "resource": args.resource}
        if constraints:
            grant["constraints"] = constraints
        scope = [grant]
    else:
        raise UsageError("give the grant with --action and --resource, or --scope JSON")
    env: dict[str, str | list[str]] = {
        k: (v.split("|") if "|" in v else v) for k, v in _pairs(args.env, "--env").items()
    }
    try:
        token = issue_artifact(
            key=key,
            issuer=issuer,
            subject=args.sub,
            audience=args.aud or config.gateway_id,
            runtime_key=read_public_key(Path(args.runtime_key)),
            scope=scope,
            now=int(time.time()),
            ttl=args.ttl,
            not_before=args.nbf,
            env=env or None,
            gov=_pairs(args.gov, "--gov") or None,
            att=_pairs(args.att, "--att") or None,
            uses=args.uses,
        )
    except ValueError as exc:
        raise UsageError(f"cannot issue this artifact: {exc}") from exc
    _write_token(token, args.out)
    return 0


def _write_token(token: str, out: str | None) -> None:
    if out:
        from execgate.keyfile import atomic_write

        atomic_write(Path(out), token.encode() + b"\n")
        sys.stderr.write(f"wrote {out}\n")
    else:
        _out(token)


def cmd_inspect(args: argparse.Namespace) -> int:
    from execgate.artifacts import verify_artifact
    from execgate.home import load_config
    from execgate.jose import parse_unverified
    from execgate.trust import TrustStore

    token = _token_arg(args.token, "artifact")
    try:
        parsed = parse_unverified(token, max_size=64 * 1024)
    except JoseError as exc:
        raise UsageError(f"not a well-formed compact JWS: {exc.detail}") from exc
    status = "UNVERIFIED (no gateway home to verify against)"
    home = _home(args)
    try:
        config = load_config(home)
    except ConfigError:
        config = None
    if config is not None:
        try:
            artifact = verify_artifact(
                token,
                trust=TrustStore.load(config.trust),
                audiences=config.audiences,
                now=int(time.time()),
                leeway=config.leeway,
            )
            status = f"VERIFIED: issued by trusted authority {artifact.authority.id!r}"
        except VerificationError as exc:
            status = f"UNVERIFIED: {exc.code}: {exc.detail}"
    if args.json:
        _out(
            json.dumps(
                {"status": status, "header": parsed.header, "claims": parsed.claims}, indent=2
            )
        )
    else:
        _out(status)
        _out("header: " + json.dumps(parsed.header, indent=2))
        _out("claims: " + json.dumps(parsed.claims, indent=2))
    return 0


def _load_submission(args: argparse.Namespace) -> dict[str, Any]:
    from execgate.jose import loads_strict

    text = _read_text(args.request, "request")
    try:
        doc = loads_strict(text.encode())
    except JoseError as exc:
        raise UsageError(f"{args.request} is not valid JSON: {exc.detail}") from exc
    if not isinstance(doc, dict):
        raise UsageError(f"{args.request} must hold a JSON object")
    if "request" not in doc:  # a bare request: {action, resource, args, runtime, parent}
        doc = {"request": doc}
    if getattr(args, "artifact", None):
        doc["artifact"] = _token_arg(args.artifact, "artifact")
    if getattr(args, "attestation", None):
        doc["attestation"] = _token_arg(args.attestation, "attestation")
    return doc


def cmd_proof(args: argparse.Namespace) -> int:
    from execgate.home import load_config
    from execgate.keyfile import read_private_key
    from execgate.model import Request
    from execgate.proofs import Runtime

    doc = _load_submission(args)
    if "artifact" not in doc:
        raise UsageError("give the artifact with --artifact FILE")
    try:
        request = Request.from_json(doc["request"])
    except ValueError as exc:
        raise UsageError(f"bad request: {exc}") from exc
    audience = args.aud or load_config(_home(args)).gateway_id
    runtime = Runtime(request.runtime, read_private_key(Path(args.runtime_key)))
    _out(runtime.proof(request, doc["artifact"], audience=audience, now=int(time.time())))
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    from execgate.attestations import issue_attestation
    from execgate.keyfile import read_private_key

    env = _pairs(args.env, "--env")
    if not env:
        raise UsageError("give at least one --env KEY=VALUE")
    key = read_private_key(Path(args.key))
    token = issue_attestation(
        key=key, subject=args.sub, env=env, now=int(time.time()), ttl=args.ttl
    )
    _write_token(token, args.out)
    return 0


def _print_decision(decision: Decision, as_json: bool) -> None:
    if as_json:
        _out(json.dumps(decision.to_json(), indent=2))
        return
    line = decision.outcome.value.upper()
    if decision.route:
        line += f" -> {decision.route}"
    if decision.rule:
        line += f"  (rule {decision.rule})"
    _out(line)
    for reason in decision.reasons:
        _out(f"  {reason.code}: {reason.detail}")
    _out(f"  decision {decision.decision_id}  log index {decision.log_index}")
    _out(f"  policy {decision.policy_hash}")


def cmd_decide(args: argparse.Namespace) -> int:
    from execgate.keyfile import read_private_key
    from execgate.model import Request
    from execgate.pipeline import Gateway, Submission
    from execgate.proofs import Runtime

    doc = _load_submission(args)
    try:
        submission = Submission.from_json(doc)
    except RequestError as exc:
        raise UsageError(f"bad decision request: {exc}") from exc
    with Gateway.open(_home(args)) as gateway:
        if args.runtime_key:
            if not isinstance(submission.artifact, str):
                raise UsageError("--runtime-key needs the artifact (in the request or --artifact)")
            request: Request = submission.request
            runtime = Runtime(request.runtime, read_private_key(Path(args.runtime_key)))
            proof = runtime.proof(
                request, submission.artifact, audience=gateway.gateway_id, now=int(time.time())
            )
            submission = Submission(request, submission.artifact, proof, submission.attestation)
        decision = gateway.decide(submission)
    _print_decision(decision, args.json)
    return EXIT_CODES[decision.outcome]


def cmd_revoke(args: argparse.Namespace) -> int:
    from execgate.home import load_config
    from execgate.jose import parse_unverified
    from execgate.store.sqlite import SQLiteStore

    targets = [(k, v) for k, v in (("jti", args.jti), ("kid", args.kid), ("sub", args.sub)) if v]
    if args.artifact:
        try:
            parsed = parse_unverified(_token_arg(args.artifact, "artifact"), max_size=64 * 1024)
        except JoseError as exc:
            raise UsageError(f"--artifact is not a compact JWS: {exc.detail}") from exc
        jti = parsed.claims.get("jti")
        if not isinstance(jti, str):
            raise UsageError("the artifact has no jti to revoke")
        targets.append(("jti", jti))
    if len(targets) != 1:
        raise UsageError("revoke exactly one of --jti, --kid, --sub or --artifact")
    kind, value = targets[0]
    store = SQLiteStore(load_config(_home(args)).store)
    try:
        fresh = store.revoke(kind, value, reason=args.reason, now=int(time.time()))
    finally:
        store.close()
    _out(f"revoked {kind} {value}" if fresh else f"{kind} {value} was already revoked")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from execgate.home import load_config
    from execgate.policy import load_cases, load_policy, run_cases

    targets: Sequence[str]
    try:
        targets = list(load_config(_home(args)).targets)
    except ConfigError:
        targets = list(args.target or ())
    policy = load_policy(Path(args.file), targets=targets)
    if args.policy_command == "hash":
        _out(policy.hash)
        return 0
    if args.policy_command == "check":
        _out(f"ok: {args.file}: {len(policy.rules)} rules, {policy.hash}")
        return 0
    results = run_cases(policy, load_cases(Path(args.cases)))
    failed = [r for r in results if not r.passed]
    for result in results:
        _out(
            f"{'PASS' if result.passed else 'FAIL'}  {result.name}"
            + ("" if result.passed else f": {result.message}")
        )
    _out(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from execgate.demo import run_demo

    return run_demo(_out)


# -- argument parsing -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="execgate", description="A fail-closed execution gateway.")
    p.add_argument("--home", help="gateway home directory (default: $EXECGATE_HOME or ./.execgate)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create a gateway home")
    s.add_argument("dir", nargs="?", default=None, help="directory (default: the home)")
    s.add_argument("--id", help="gateway id (default: random)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("keygen", help="create an Ed25519 key pair (OUT and OUT's .pub.jwk)")
    s.add_argument("out", help="private key file to create, e.g. runtime.jwk")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("issue", help="mint an authorization artifact")
    s.add_argument("--sub", required=True, help="runtime id allowed to execute")
    s.add_argument("--runtime-key", required=True, help="the runtime's public key file (.pub.jwk)")
    s.add_argument("--action", help="action glob, e.g. 'payments.*'")
    s.add_argument("--resource", help="resource glob, e.g. 'acct:**'")
    s.add_argument(
        "--constraint", action="append", help="ARG.BOUND=VALUE (max, min, enum, pattern, prefix)"
    )
    s.add_argument("--scope", help="the whole scope as JSON, or @FILE")
    s.add_argument("--ttl", type=int, default=900, help="seconds of validity (default 900)")
    s.add_argument("--nbf", type=int, help="not-before (Unix seconds)")
    s.add_argument("--uses", type=int, help="maximum executions")
    s.add_argument(
        "--env", action="append", help="required environment KEY=VALUE (VALUE may be A|B)"
    )
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
    s.add_argument("--key", help="authority private key (default: HOME/keys/authority.jwk)")
    s.add_argument("-o", "--out", help="write the artifact to this file")
    s.set_defaults(func=cmd_issue)

    s = sub.add_parser(
        "inspect", help="show an artifact, verified against the trust store if possible"
    )
    s.add_argument("token", help="artifact file or compact JWS")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("proof", help="sign a proof of possession for a request")
    s.add_argument("--request", required=True, help="request JSON file ('-' for stdin)")
    s.add_argument("--artifact", help="artifact file or compact JWS")
    s.add_argument("--runtime-key", required=True, help="the runtime's private key file")
    s.add_argument("--aud", help="audience (default: this gateway's id)")
    s.set_defaults(func=cmd_proof)

    s = sub.add_parser("attest", help="sign an environment attestation (attester key)")
    s.add_argument("--key", required=True, help="attester private key file")
    s.add_argument("--sub", required=True, help="runtime id the attestation is about")
    s.add_argument("--env", action="append", help="attested KEY=VALUE")
    s.add_argument("--ttl", type=int, default=300)
    s.add_argument("-o", "--out")
    s.set_defaults(func=cmd_attest)

    s = sub.add_parser("decide", help="decide one request")
    s.add_argument("--request", required=True, help="decision request JSON ('-' for stdin)")
    s.add_argument("--artifact", help="artifact file or compact JWS (fills 'artifact')")
    s.add_argument("--attestation", help="attestation file or compact JWS")
    s.add_argument("--runtime-key", help="sign the proof with this runtime private key")
    s.add_argument("--json", action="store_true", help="print the decision as JSON")
    s.set_defaults(func=cmd_decide)

    s = sub.add_parser("revoke", help="revoke an artifact, a key or a subject")
    s.add_argument("--jti")
    s.add_argument("--kid", help="an authority or runtime key id (thumbprint)")
    s.add_argument("--sub")
    s.add_argument("--artifact", help="revoke this artifact's jti")
    s.add_argument("--reason", required=True)
    s.set_defaults(func=cmd_revoke)

    s = sub.add_parser("policy", help="check, hash or test a policy file")
    psub = s.add_subparsers(dest="policy_command", required=True)
    for name, text in (("check", "validate a policy"), ("hash", "print the policy hash")):
        q = psub.add_parser(name, help=text)
        q.add_argument("file")
        q.add_argument("--target", action="append", help="allowed reroute target (without a home)")
        q.set_defaults(func=cmd_policy)
    q = psub.add_parser("test", help="run table-driven cases against a policy")
    q.add_argument("file")
    q.add_argument("cases")
    q.add_argument("--target", action="append", help="allowed reroute target (without a home)")
    q.set_defaults(func=cmd_policy)

    s = sub.add_parser("demo", help="show every outcome on a temporary gateway")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "init" and args.dir is None:
        args.dir = str(_home(args))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except StoreError as exc:
        sys.stderr.write(f"execgate: fail closed: the store is unavailable: {exc}\n")
        return EXIT_CODES[Outcome.FAIL_CLOSED]
    except ExecgateError as exc:
        sys.stderr.write(f"execgate: error: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:
        sys.stderr.write(f"execgate: error: {exc.strerror or exc}: {exc.filename or ''}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
