"""``execgate approvals ... --url``: the approval routes of a running gateway, as a client.

The gateway's answers are parsed into the same values the local commands use
(``Pending``, ``Review`` and the state/tally/quorum a gateway reports), every field
type-checked: an answer that is not what the route promises is an error (exit 2), never
shown as an approval or taken for a recorded review.

Before a review is signed, the request the gateway shows is hashed here and compared
with the request hash it asks to be signed. The review binds the approval id and that
hash; the check makes sure they belong to the request the approver was shown
(``approvals show --url``), so a gateway cannot display one request and collect a review
of another.

Approval ids go into the URL path only when they need no encoding (the gateway's are
UUIDs): the path the admin token is bound to (``htu``) is then exactly the path the
gateway sees, and nothing user-typed can add a segment or a query.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any, Final

from execgate.cli._common import shown
from execgate.cli._remote import Refusal, admin_call, error_of
from execgate.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from execgate.approvals import Pending, Review

__all__ = [
    "STATES",
    "Found",
    "Recorded",
    "check_shown_request",
    "fetch",
    "fetch_all",
    "send_review",
]

STATES: Final = frozenset({"pending", "approved", "denied", "consumed", "closed", "expired"})
APPROVALS_PATH: Final = "/v1/admin/approvals"
_PAGE: Final = 1000  # approvals asked for a call: the most a gateway lists at once
_ID: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")

# An approval as a command shows it: the approval, its state and tally, its reviews.
Found = tuple["Pending", dict[str, Any], list["Review"]]
# A recorded review: the approver id, its log index, the approval, its state after.
Recorded = tuple[str, int, "Pending", dict[str, Any]]


def _malformed(args: argparse.Namespace, what: str) -> ConfigError:
    return ConfigError(
        f"the gateway at {args.url} answered with {what}; is --url an execgate gateway"
        " of this version?"
    )


def _typed(args: argparse.Namespace, doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _malformed(args, f"{name!r} that is not a {kind.__name__}")
    return value


def _strings(args: argparse.Namespace, doc: dict[str, Any], name: str) -> tuple[str, ...]:
    values = _typed(args, doc, name, list)
    if not all(isinstance(v, str) for v in values):
        raise _malformed(args, f"{name!r} that is not a list of strings")
    return tuple(values)


def _state(args: argparse.Namespace, doc: dict[str, Any]) -> dict[str, Any]:
    state = _typed(args, doc, "state", str)
    if state not in STATES:
        raise _malformed(args, f"an approval in an unknown state {shown(state)}")
    tally = _typed(args, doc, "tally", dict)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in tally.values()):
        raise _malformed(args, "a tally that is not a count per group")
    return {"state": state, "tally": tally, "quorum_met": _typed(args, doc, "quorum_met", bool)}


def _review(args: argparse.Namespace, item: object) -> Review:
    from execgate.approvals import Review

    if not isinstance(item, dict):
        raise _malformed(args, "a review that is not a JSON object")
    comment = item.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise _malformed(args, "a review whose comment is not a string")
    return Review(
        approval_id=_typed(args, item, "approval_id", str),
        approver=_typed(args, item, "approver", str),
        kid=_typed(args, item, "kid", str),
        verdict=_typed(args, item, "verdict", str),
        at=_typed(args, item, "at", int),
        comment=comment,
        token=_typed(args, item, "token", str),
    )


def _approval(args: argparse.Namespace, doc: object, *, reviews: bool) -> Found:
    """An approval as ``GET /v1/admin/approvals[/{id}]`` gives it."""
    from execgate.approvals import Pending

    if not isinstance(doc, dict):
        raise _malformed(args, "an approval that is not a JSON object")
    status = _state(args, doc)
    pending = Pending(
        approval_id=_typed(args, doc, "approval_id", str),
        request_hash=_typed(args, doc, "request_hash", str),
        chain=_strings(args, doc, "chain"),
        policy_hash=_typed(args, doc, "policy_hash", str),
        rule=_typed(args, doc, "rule", str),
        groups=_strings(args, doc, "groups"),
        quorum=_typed(args, doc, "quorum", int),
        created_at=_typed(args, doc, "created_at", int),
        expires_at=_typed(args, doc, "expires_at", int),
        excluded=_strings(args, doc, "excluded"),
        # The stored status, as far as the reported state tells it; the commands show
        # the reported state, never one recomputed here.
        status=status["state"]
        if status["state"] in ("denied", "consumed", "closed")
        else "pending",
        links=_strings(args, doc, "links"),
        request=_typed(args, doc, "request", dict),
        holder=_typed(args, doc, "holder", str) if "holder" in doc else "",
    )
    found = [_review(args, r) for r in _typed(args, doc, "reviews", list)] if reviews else []
    return pending, status, found


def _refused(args: argparse.Namespace, refusal: Refusal, approval_id: str) -> Exception:
    """Why a call did nothing, as the exception that exits 2."""
    if refusal.code == "approval.not_found":
        return UsageError(
            f"no approval {shown(approval_id)} at gateway {args.url};"
            f" 'execgate approvals list --all --url {args.url} ...' lists them"
        )
    return ConfigError(f"the gateway at {args.url} refused the call: {refusal}")


def _path(args: argparse.Namespace, approval_id: str) -> str:
    if not _ID.fullmatch(approval_id):
        raise UsageError(
            f"no approval {shown(approval_id)} at gateway {args.url} (an approval id is the"
            f" pause decision's id); 'execgate approvals list --all --url {args.url} ...'"
            " lists them"
        )
    return f"{APPROVALS_PATH}/{approval_id}"


def fetch_all(
    args: argparse.Namespace, *, open_only: bool = False
) -> list[tuple[Pending, dict[str, Any]]]:
    """Every approval at the gateway, with the state it reports: page after page (each
    call with a token of its own), following each page's ``next``. With ``open_only``,
    no page after one that holds an expired approval: the gateway lists the latest to
    expire first, so every approval after it has expired too, or was settled."""
    found: list[tuple[Pending, dict[str, Any]]] = []
    listed_ids: set[str] = set()
    path = f"{APPROVALS_PATH}?limit={_PAGE}"
    while True:
        status, answer = admin_call(args, "GET", path)
        if status != 200:
            raise _refused(args, error_of(status, answer), "")
        listed = answer.get("approvals") if isinstance(answer, dict) else None
        if not isinstance(listed, list):
            raise _malformed(args, "no list of approvals")
        page = [_approval(args, doc, reviews=False)[:2] for doc in listed]
        ids = {p.approval_id for p, _ in page}
        if len(ids) != len(page) or not ids.isdisjoint(listed_ids):
            raise _malformed(args, "an approval listed twice")
        listed_ids |= ids
        found += page
        following = answer.get("next")
        if following is None or (open_only and any(s["state"] == "expired" for _, s in page)):
            return found
        if not page or following != page[-1][0].approval_id or not _ID.fullmatch(following):
            raise _malformed(args, "a next page that does not follow the last approval listed")
        path = f"{APPROVALS_PATH}?limit={_PAGE}&after={following}"


def fetch(args: argparse.Namespace, approval_id: str) -> Found:
    """One approval at the gateway, with its reviews."""
    status, answer = admin_call(args, "GET", _path(args, approval_id))
    if status != 200:
        raise _refused(args, error_of(status, answer), approval_id)
    found = _approval(args, answer, reviews=True)
    if found[0].approval_id != approval_id:
        raise _malformed(args, f"another approval than {shown(approval_id)}")
    return found


def check_shown_request(args: argparse.Namespace, pending: Pending) -> None:
    """The request the gateway shows hashes to the request hash a review will sign."""
    from execgate.model import Request
    from execgate.proofs import request_hash

    try:
        hashed = request_hash(Request.from_json(pending.request))
    except (TypeError, ValueError) as exc:
        raise _malformed(args, f"a request that is not a request ({exc})") from exc
    if hashed != pending.request_hash:
        raise ConfigError(
            f"the gateway at {args.url} shows approval {shown(pending.approval_id)} with a"
            f" request that hashes to {hashed}, not to the request hash it asks to be"
            " signed; nothing was signed"
        )


def send_review(
    args: argparse.Namespace, pending: Pending, review: str, verdict: str
) -> Recorded | Refusal:
    """POST a signed review: what was recorded, or the gateway's refusal of the review
    (409 ``approval.review_refused``); anything else raises."""
    path = _path(args, pending.approval_id) + "/reviews"
    status, answer = admin_call(args, "POST", path, {"review": review})
    if status != 200:
        refusal = error_of(status, answer)
        if status == 409 and refusal.code == "approval.review_refused":
            return refusal
        raise _refused(args, refusal, pending.approval_id)
    if not isinstance(answer, dict):
        raise _malformed(args, "a review answer that is not a JSON object")
    if answer.get("approval_id") != pending.approval_id or answer.get("verdict") != verdict:
        raise _malformed(args, "a review answer for another approval or verdict")
    index = _typed(args, answer, "log_index", int)
    approver = _typed(args, answer, "approver", str)
    return approver, index, pending, _state(args, answer)
