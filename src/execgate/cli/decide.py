"""``execgate decide`` (one request through the pipeline), ``execgate outcome`` (what
happened when it ran) and ``execgate revoke``.

``revoke --cascade-report`` revokes, then lists what the audit log has seen descend from
the revoked item: every recorded decision whose artifact chain holds it, and the
artifacts at or below it on those chains. ``revoke --dry-run`` revokes nothing and prints
that report for the same command line: look, then drop ``--dry-run`` to cut. The report
is read before revoking; if the log cannot give it, nothing is revoked.

When the state store cannot be opened, ``decide`` still runs the pipeline, against a
store that answers "unavailable", so the caller sees the same ``fail_closed`` decision a
running gateway would give (exit 5). ``outcome`` and ``revoke`` print one line and exit 5.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from execgate.cli._common import (
    EXIT_CODES,
    MAX_TOKEN,
    Commands,
    home_of,
    json_text,
    open_gateway,
    out,
    record_id,
    shown,
    token_arg,
)
from execgate.cli._request import load_submission, sign_proof
from execgate.errors import EvidenceError, JoseError, RequestError, UsageError
from execgate.model import Outcome

if TYPE_CHECKING:
    from execgate.model import Decision

__all__ = ["register"]

_THUMBPRINT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")


def _print_decision(decision: Decision, as_json: bool) -> None:
    if as_json:
        out(json_text(decision.to_json()))
        return
    line = decision.outcome.value.upper()
    if decision.route:
        line += f" -> {decision.route}"
    # The rule that matched, when it made the outcome: not for a decision the commit
    # turned (a replay, a revocation, spent uses) or that could not be made.
    family = decision.reasons[0].code.split(".")[0] if decision.reasons else "policy"
    if decision.rule and family in ("policy", "approval"):
        line += f"  (rule {decision.rule})"
    out(line)
    for reason in decision.reasons:
        out(f"  {reason.code}: {reason.detail}")
    if decision.log_index is None:
        out(f"  decision {decision.decision_id}  NOT logged, no receipt")
    else:
        out(f"  decision {decision.decision_id}  log index {decision.log_index}")
    out(f"  policy {decision.policy_hash}")
    if (
        decision.outcome is Outcome.PAUSE
        and decision.approval_id
        and decision.log_index is not None
    ):
        out(f"  approval {decision.approval_id}: execgate approvals show {decision.approval_id}")


def _decide(args: argparse.Namespace) -> int:
    from execgate.keyfile import read_private_key
    from execgate.pipeline import Submission

    doc = load_submission(args)
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
    with open_gateway(home_of(args), fallback=True) as gateway:
        if args.runtime_key:
            doc["proof"] = sign_proof(doc, args.runtime_key, gateway.gateway_id)
        try:
            submission = Submission.from_json(doc)
        except RequestError as exc:
            raise UsageError(f"bad decision request {args.request}: {exc}") from exc
        decision = gateway.decide(submission)
    _print_decision(decision, args.json)
    return EXIT_CODES[decision.outcome]


def _outcome(args: argparse.Namespace) -> int:
    with open_gateway(home_of(args), fallback=False) as gateway:
        index = gateway.report_outcome(
            args.decision_id,
            status=args.status,
            exit_code=args.exit_code,
            result_digest=args.digest,
        )
    out(f"logged outcome {args.status} of decision {args.decision_id} at log index {index}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from execgate.cli import _cascade
    from execgate.home import load_config
    from execgate.store.sqlite import SQLiteStore

    given = [f"--{k}" for k in ("jti", "kid", "sub", "artifact") if getattr(args, k) is not None]
    if len(given) != 1:
        got = "none" if not given else " and ".join(given)
        raise UsageError(f"revoke exactly one of --jti, --kid, --sub or --artifact (got {got})")
    if not args.reason.strip():
        raise UsageError("--reason must say why (it is recorded and shown in every denial)")
    kind, value = _revoke_target(args)
    for flag, text in ((f"--{kind}", value), ("--reason", args.reason)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes of the command line that are not UTF-8
            raise UsageError(f"{flag} is not UTF-8 text; nothing was revoked") from None
    config = load_config(home_of(args))
    store = SQLiteStore(config.store)
    try:
        # The report is read first: if the log cannot give it, nothing is revoked (and
        # the message says how to revoke without it).
        found = None
        if args.cascade_report or args.dry_run:
            try:
                found = _cascade.report(store, config.gateway_id, kind, value)
            except EvidenceError as exc:
                nothing = "" if args.dry_run else "nothing was revoked; "
                raise EvidenceError(f"{exc}; {nothing}revoke without --cascade-report") from exc
        if args.dry_run:
            fresh, already = False, store.revoked([(kind, value)]) is not None
        else:
            fresh = store.revoke(kind, value, reason=args.reason, now=int(time.time()))
            already = not fresh
    finally:
        store.close()
    if args.json:
        doc = {
            "kind": kind,
            "value": value,
            "dry_run": args.dry_run,
            "revoked": fresh,
            "already_revoked": already,
            "cascade": None if found is None else _cascade.to_json(found),
        }
        out(json_text(doc))
        return 0
    label = value if value.isprintable() else repr(value)  # a line break stays one line
    if already:
        out(f"{kind} {label} was already revoked")
    elif args.dry_run:
        out(f"dry run: nothing revoked; revoking {kind} {label} would deny it from now on")
    elif kind in ("kid", "sub"):
        out(
            f"revoked {kind} {label}: every decision from now on that stands on it is denied"
            " (artifact.revoked; for an attester's, a mesh node's or an approver's:"
            " environment.untrusted, lineage.broken, approval.required)"
        )
    else:
        out(f"revoked {kind} {label}: every decision from now on denies it (artifact.revoked)")
    if found is not None:
        _cascade.show(found, config.gateway_id)
    return 0


def _revoke_target(args: argparse.Namespace) -> tuple[str, str]:
    from execgate.artifacts import ARTIFACT_TYP
    from execgate.jose import parse_unverified, sha256_b64url

    if args.artifact is not None:
        # This exact token (and what descends from it), by its digest: not its jti, which
        # whoever delegates a link chooses, so another artifact may carry the same one.
        token = token_arg(args.artifact, "--artifact")
        try:
            typ = parse_unverified(token, max_size=MAX_TOKEN).header.get("typ")
        except JoseError as exc:
            raise UsageError(f"--artifact is not a well-formed compact JWS: {exc.detail}") from exc
        if typ != ARTIFACT_TYP:
            raise UsageError(
                f"--artifact is a {shown(str(typ))} token, not an artifact ({ARTIFACT_TYP});"
                " revoking it would deny nothing"
            )
        return "artifact", sha256_b64url(token.encode("ascii"))
    kind = next(k for k in ("jti", "kid", "sub") if getattr(args, k) is not None)
    value: str = getattr(args, kind)
    if not value:
        raise UsageError(f"--{kind} must not be empty")
    if kind == "kid" and not _THUMBPRINT.fullmatch(value):
        raise UsageError(
            f"--kid {shown(value)} is not a key id (a 43-character RFC 7638 thumbprint,"
            " as keygen prints)"
        )
    return kind, value


def _exit_code(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an integer") from None
    if not -(2**31) <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{text} is not a 32-bit exit code")
    return value


def _digest(text: str) -> str:
    if _DIGEST.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not sha256:<64 lowercase hex digits>, e.g. the output of"
            " sha256sum with 'sha256:' in front"
        )
    return text


def register(commands: Commands) -> None:
    s = commands.add(
        "decide",
        "decide one request; exit 0 proceed, 1 deny, 2 usage, 3 pause, 4 reroute, 5 fail_closed",
    )
    s.add_argument("--request", required=True, help="(decision) request JSON file, '-' for stdin")
    s.add_argument("--artifact", help="artifact file or compact JWS (fills 'artifact')")
    s.add_argument("--attestation", help="attestation file or compact JWS")
    s.add_argument("--runtime-key", help="sign the proof with this runtime PRIVATE key")
    s.add_argument("--json", action="store_true", help="print the decision as JSON")
    s.set_defaults(func=_decide)

    s = commands.add("outcome", "log what happened when a proceed/reroute decision ran")
    s.add_argument(
        "decision_id", metavar="DECISION_ID", type=record_id, help="as decide printed it"
    )
    s.add_argument("--status", required=True, choices=("succeeded", "failed"))
    s.add_argument("--exit-code", type=_exit_code, help="the command's exit code")
    s.add_argument("--digest", type=_digest, help="sha256:HEX of the result")
    s.set_defaults(func=_outcome)

    s = commands.add("revoke", "revoke an artifact, a key or a subject (exactly one)")
    s.add_argument("--jti", help="an artifact id")
    s.add_argument(
        "--kid",
        help="a key id (RFC 7638 thumbprint): an authority's, a runtime's, an attester's,"
        " a mesh node's, an approver's or an admin's",
    )
    s.add_argument(
        "--sub",
        help="a subject on an artifact chain (a runtime id), an approver or an admin (ids are"
        " one name space: each of that id is stopped)",
    )
    s.add_argument(
        "--artifact",
        help="this exact artifact and what descends from it (file or compact JWS)",
    )
    s.add_argument("--reason", required=True, help="why; recorded and shown in denials")
    s.add_argument(
        "--cascade-report",
        action="store_true",
        help="also list the logged decisions and the artifacts that descend from it",
    )
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="revoke nothing: report what the same command without --dry-run would reach",
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=_revoke)
