"""``execgate approvals list|show|approve|deny``: requests paused until people review them.

A pause decision opens an approval; its id is the pause decision's id (``decide --json``
prints it as ``approval_id``). The approval is bound to that exact request, artifact
chain, policy and rule, names the approver groups and the quorum each must reach, and
expires. ``list`` shows the open ones (``--all``: every one), ``show`` one of them with the
request and every review.

``approve`` and ``deny`` sign a review with the approver's own private key (``--key``).
Who the approver is comes from the home's trust store: the ``[[approver]]`` that lists
that key. The gateway then checks the review (a group the approval needs; not a
principal of the request: its runtime, requester or beneficiary; not reviewed before;
the approval still open) and records it in the audit log. When every group has its
quorum, the runtime re-submits the same request and it proceeds, once. One deny is final.

An approval is in one of these states:

    pending    waiting for reviews
    approved   every group has its quorum: the re-submitted request proceeds, once
    denied     an approver said no: the re-submitted request is denied (approval.denied)
    consumed   the approved request has executed
    expired    no quorum in time: re-submitting the request opens a new approval

Exit codes of ``approve`` and ``deny``: 0 the review is recorded (a recorded deny too:
the command did what was asked); 1 the gateway refused the review, and says why on one
line (not in a group the approval needs, a principal of the request, already reviewed,
the approval denied, consumed or expired); 2 nothing was reviewed: a usage error, a key
file that cannot be read, a key that is no approver's in the trust store, or an approval
id the gateway does not know. A script can tell "this person may not review this" (1)
from "the command or its setup is wrong" (2).

Every command also works on a running gateway (``execgate serve``) instead of the local
home: ``--url URL --admin-key KEYFILE`` (and ``--admin``/``--audience`` when no local home
names them), the same flags as ``execgate policy reload``. Each HTTP call carries a fresh
single-use admin token (``execgate.cli._remote``). ``approve`` and ``deny`` then take two
factors, both needed: the admin key lets the call in (an ``[[admin]]`` with the role
``approvals``), and the approver key (``--key``) signs the review, here, on this machine;
only the signed review is sent. The approval's id and request hash come from the
gateway's answer, and the command checks that hash against the request the gateway shows
before signing (a gateway cannot get a review of one request for another it displays).
The approver is the ``[[approver]]`` that lists the key in the local home's trust store,
or ``--approver ID`` where there is none (a key the gateway does not hold for that
approver is then its refusal, exit 1). Remote exit codes are the local ones: 0
recorded; 1 the gateway refused the review (HTTP 409 ``approval.review_refused``), with
its reason on one line; 2 nothing was reviewed, and one line says what to fix: the
gateway cannot be reached, an admin token it does not accept (401
``admin.unauthenticated``, 403 ``admin.forbidden``: a setup error, not a refusal of the
review), an unknown approval id, or an answer that is not what the route promises.

Request fields come from the runtime that asked, so they are printed with control
characters escaped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from execgate.cli._common import (
    Commands,
    home_of,
    json_text,
    note,
    one_line,
    open_gateway,
    optional_config,
    out,
    record_id,
    shown,
)
from execgate.cli._records import cell
from execgate.cli._remote import add_remote, is_remote
from execgate.errors import ApprovalError, UsageError

if TYPE_CHECKING:
    from execgate.approvals import Pending, Review
    from execgate.cli._approvals_remote import Recorded
    from execgate.jose import PrivateKey
    from execgate.pipeline import Gateway

__all__ = ["EXIT_REFUSED", "register"]

EXIT_REFUSED: Final = 1
_MAX_COMMENT: Final = 1024
_ARGS_SHOWN: Final = 200
_OPEN: Final = frozenset({"pending", "approved"})
_NEXT: Final = {
    "pending": "waiting for reviews: execgate approvals approve|deny {id} --key KEY",
    "approved": "quorum met: the runtime may now re-submit the request (it proceeds once)",
    "denied": "denied: re-submitting the request is denied (approval.denied)",
    "consumed": "consumed: the approved request has executed",
    "closed": "closed: another approval of the same request was used (it executed once)",
    "expired": "expired: re-submitting the request opens a new approval",
}


def _when(value: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _find(gateway: Gateway, approval_id: str) -> tuple[Pending, list[Review]]:
    try:
        return gateway.approval(approval_id)
    except ApprovalError as exc:
        raise UsageError(
            f"no approval {shown(approval_id)} at gateway {gateway.gateway_id};"
            " 'execgate approvals list --all' lists them"
        ) from exc


def _tally_text(pending: Pending, status: dict[str, Any]) -> str:
    return ", ".join(f"{cell(g)} {n}/{pending.quorum}" for g, n in status["tally"].items())


# -- the commands --------------------------------------------------------------------------


def _local_list(args: argparse.Namespace) -> tuple[list[tuple[Pending, dict[str, Any]]], str]:
    with open_gateway(home_of(args), fallback=False) as gateway:
        now = int(time.time())
        rows = []
        for pending in gateway.approvals():
            _, reviews = gateway.approval(pending.approval_id)
            rows.append((pending, gateway.approval_status(pending, reviews, now)))
        return rows, gateway.gateway_id


def _list(args: argparse.Namespace) -> int:
    if is_remote(args):
        from execgate.cli._approvals_remote import fetch_all

        every, where = fetch_all(args, open_only=not args.all), args.url
    else:
        every, where = _local_list(args)
    rows = [(p, s) for p, s in every if args.all or s["state"] in _OPEN]
    if args.json:
        docs = [
            {
                "approval_id": p.approval_id,
                **s,
                "rule": p.rule,
                "request": dict(p.request),
                "groups": list(p.groups),
                "quorum": p.quorum,
                "created_at": p.created_at,
                "expires_at": p.expires_at,
            }
            for p, s in rows
        ]
        out(json_text(docs))
        return 0
    if not rows:
        hint = "" if args.all else " (--all lists closed ones too)"
        note(f"no {'' if args.all else 'open '}approvals at gateway {where}{hint}")
    for p, s in rows:
        request = p.request
        out(
            f"{cell(p.approval_id)}  {s['state']:<8}  {_tally_text(p, s)}"
            f"  expires {_when(p.expires_at)}  {cell(p.rule)}"
            f"  {cell(request.get('action'))} {cell(request.get('resource'))}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    if is_remote(args):
        from execgate.cli._approvals_remote import fetch

        pending, status, reviews = fetch(args, args.approval_id)
    else:
        with open_gateway(home_of(args), fallback=False) as gateway:
            pending, reviews = _find(gateway, args.approval_id)
            status = gateway.approval_status(pending, reviews, int(time.time()))
    if args.json:
        doc = {**pending.to_json(), **status, "reviews": [r.to_json() for r in reviews]}
        out(json_text(doc))
        return 0
    request = pending.request
    arguments = cell(json.dumps(request.get("args", {}), ensure_ascii=False, sort_keys=True))
    if len(arguments) > _ARGS_SHOWN:
        arguments = arguments[:_ARGS_SHOWN] + " ... (show --json prints them all)"
    out(f"approval {cell(pending.approval_id)}: {status['state']}")
    out(f"  rule          {cell(pending.rule)}")
    out(f"  request       {cell(request.get('action'))} {cell(request.get('resource'))}")
    out(f"  runtime       {cell(request.get('runtime'))}")
    out(f"  arguments     {arguments}")
    out(f"  parent        {cell(request.get('parent'))}")
    out(f"  request hash  {cell(pending.request_hash)}")
    out(f"  chain         {' > '.join(cell(j) for j in pending.chain)}  (root first)")
    out(f"  policy        {cell(pending.policy_hash)}")
    groups = ", ".join(cell(g) for g in pending.groups)
    out(f"  needs         {pending.quorum} approver(s) from each of: {groups}")
    out(f"  approvals     {_tally_text(pending, status)}")
    out(f"  opened        {_when(pending.created_at)}")
    out(f"  expires       {_when(pending.expires_at)}")
    out(f"  may not review  {', '.join(cell(e) for e in pending.excluded) or '-'}")
    out("reviews:" if reviews else "reviews: none yet")
    for r in reviews:
        comment = "" if r.comment is None else f"  {cell(r.comment)}"
        out(f"  {_when(r.at)}  {cell(r.approver)}  {cell(r.verdict)}{comment}")
    out(_NEXT[status["state"]].format(id=cell(pending.approval_id)))
    return 0


def _approve(args: argparse.Namespace) -> int:
    return _review(args, "approve", args.comment)


def _deny(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise UsageError("--reason must say why (it is signed, logged and shown to everyone)")
    return _review(args, "deny", args.reason)


def _not_an_approver(args: argparse.Namespace, kid: str, trust_path: Path, more: str) -> UsageError:
    from execgate.keyfile import public_path_for

    public = public_path_for(Path(args.key))
    return UsageError(
        f"the key {args.key} (key id {kid}) is no approver's in the trust store"
        f" {trust_path}; list its public half {public} there as an [[approver]] with that"
        f" person's groups, or use your own key{more}"
    )


def _sign(
    key: PrivateKey, approver: str, pending: Pending, verdict: str, comment: str | None
) -> str:
    """The one way a review is made, for the local home and a running gateway alike."""
    from execgate.approvals import sign_review

    return sign_review(
        key=key,
        approver=approver,
        pending=pending,
        verdict=verdict,
        now=int(time.time()),
        comment=comment or None,
    )


def _review_local(
    args: argparse.Namespace, key: PrivateKey, verdict: str, comment: str | None
) -> Recorded | None:
    from execgate.home import load_config

    home = home_of(args)
    with open_gateway(home, fallback=False) as gateway:
        approver = gateway.trust.approver_for_kid(key.public.thumbprint())
        if approver is None:
            raise _not_an_approver(args, key.public.thumbprint(), load_config(home).trust, "")
        pending, _ = _find(gateway, args.approval_id)
        token = _sign(key, approver.id, pending, verdict, comment)
        try:
            index, after, reviews = gateway.review(pending.approval_id, token)
        except ApprovalError as exc:
            note(f"execgate: error: review refused: {one_line(str(exc))}")
            return None
        return approver.id, index, after, gateway.approval_status(after, reviews, int(time.time()))


def _remote_approver(args: argparse.Namespace, key: PrivateKey) -> str:
    """``--approver``, or the ``[[approver]]`` that lists the key in the local home."""
    from execgate.trust import TrustStore

    if args.approver is not None:
        approver: str = args.approver
        return approver
    home, kid = home_of(args), key.public.thumbprint()
    config = optional_config(home)
    if config is None:
        raise UsageError(
            f"there is no gateway home at {home} to find whose approver key {args.key} is;"
            " name yourself with --approver ID (your [[approver]] id at that gateway)"
        )
    found = TrustStore.load(config.trust).approver_for_kid(kid)
    if found is None:
        raise _not_an_approver(args, kid, config.trust, ", or name the approver with --approver")
    return found.id


def _review_remote(
    args: argparse.Namespace, key: PrivateKey, verdict: str, comment: str | None
) -> Recorded | None:
    from execgate.cli._approvals_remote import check_shown_request, fetch, send_review

    approver = _remote_approver(args, key)
    pending, _, _ = fetch(args, args.approval_id)
    check_shown_request(args, pending)
    sent = send_review(args, pending, _sign(key, approver, pending, verdict, comment), verdict)
    if isinstance(sent, tuple):
        return sent
    note(f"execgate: error: review refused: {sent.message}")
    return None


def _review(args: argparse.Namespace, verdict: str, comment: str | None) -> int:
    from execgate.keyfile import read_private_key

    flag = "--reason" if verdict == "deny" else "--comment"
    if comment is not None and len(comment) > _MAX_COMMENT:
        raise UsageError(f"{flag} is {len(comment)} characters; at most {_MAX_COMMENT} fit")
    remote = is_remote(args)
    if args.approver is not None and not remote:
        raise UsageError(
            "--approver is for a running gateway (--url); the local home's trust store"
            " says whose key --key is"
        )
    key = read_private_key(Path(args.key))  # a bad key file is a usage error (exit 2)
    recorded = (_review_remote if remote else _review_local)(args, key, verdict, comment)
    if recorded is None:
        return EXIT_REFUSED
    approver, index, after, status = recorded
    if args.json:
        doc = {
            "approval_id": after.approval_id,
            "approver": approver,
            "verdict": verdict,
            "log_index": index,
            **status,
            "groups": list(after.groups),
            "quorum": after.quorum,
        }
        out(json_text(doc))
        return 0
    who = cell(approver)
    if verdict == "deny":
        out(
            f"denied by {who}: approval {cell(after.approval_id)} is closed;"
            " re-submitting the request is denied (approval.denied)"
        )
    elif status["quorum_met"]:
        out(
            f"approved by {who}: {_tally_text(after, status)}; the runtime may now re-submit"
            " the request (it proceeds once)"
        )
    else:
        groups = ", ".join(cell(g) for g in after.groups)
        out(
            f"approved by {who}: {_tally_text(after, status)}; waiting for more approvals"
            f" ({after.quorum} from each of: {groups})"
        )
    out(f"  review of approval {cell(after.approval_id)} logged at index {index}")
    return 0


def register(commands: Commands) -> None:
    s = commands.add("approvals", "paused requests: list, show, approve or deny them")
    group = Commands(
        s.add_subparsers(dest="approvals_command", required=True, metavar="SUBCOMMAND"),
        commands.common,
    )
    q = group.add("list", "the open approvals: id, state, tally, expiry, rule and request")
    q.add_argument("--all", action="store_true", help="also denied, consumed and expired ones")
    q.add_argument("--json", action="store_true", help="print them as JSON")
    add_remote(q, role="approvals", required=False)
    q.set_defaults(func=_list)

    q = group.add("show", "one approval: its request, every review, and its state")
    q.add_argument(
        "approval_id", metavar="ID", type=record_id, help="the approval id (the pause decision's)"
    )
    q.add_argument("--json", action="store_true", help="print it as JSON")
    add_remote(q, role="approvals", required=False)
    q.set_defaults(func=_show)

    for name, func, help_text in (
        ("approve", _approve, "sign and record your approval; exit 1 if it is refused"),
        ("deny", _deny, "sign and record your denial (final); exit 1 if it is refused"),
    ):
        q = group.add(name, help_text)
        q.description = (
            f"{help_text}. With --url, two keys are needed: --admin-key lets the call in"
            " (an admin's), --key signs the review (yours, the approver's); the review is"
            " signed here and only the signed review is sent."
        )
        q.add_argument(
            "approval_id",
            metavar="ID",
            type=record_id,
            help="the approval id (the pause decision's)",
        )
        q.add_argument(
            "--key", required=True, help="your approver PRIVATE key file (its [[approver]])"
        )
        if name == "approve":
            q.add_argument("--comment", help="a note signed with the review (at most 1024 chars)")
        else:
            q.add_argument("--reason", required=True, help="why; signed, logged and shown")
        q.add_argument("--json", action="store_true", help="print the result as JSON")
        add_remote(q, role="approvals", required=False)
        q.add_argument(
            "--approver",
            help="with --url: your [[approver]] id at that gateway (default: the one that"
            " lists --key in the local home's trust store)",
        )
        q.set_defaults(func=func)
