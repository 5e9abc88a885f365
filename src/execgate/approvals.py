"""Pause, review, resume: signed m-of-n approvals bound to one exact request.

A pause decision opens a ``Pending`` approval whose id is the pause decision's id. It
is bound to the request hash, the exact artifact chain (each link's token digest, not
only its jti, which a delegator chooses) and the policy hash the pause was
decided under, names the approver groups and the quorum each must reach, and expires at
the rule's TTL or the artifact's ``exp``, whichever comes first.

Approvers review with their own Ed25519 keys (``sign_review``): a compact JWS of
``typ: execgate-approval+jwt`` naming the approval id and request hash, the verdict
(``approve`` or ``deny``) and an optional comment. ``check_review`` accepts a review only
from an approver in the trust store, in one of the required groups, and not a principal
of the request itself: its runtime, any subject, holder key, requester or beneficiary on
the artifact chain can never approve its own request. One deny is terminal. Approvals
count per group, by distinct approver (``quorum_met``); every group must reach its
quorum (AND of factors).

Resuming re-runs every check of the pipeline; the approval is consumed by the one
decision that executes, atomically with its log record.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Final

from execgate.errors import ApprovalError, JoseError, PolicyError
from execgate.jose import PrivateKey, encode, verify
from execgate.store.base import ASKER_FORM, deny_is_final
from execgate.trust import Approver, TrustStore, signer_refusal

if TYPE_CHECKING:
    from execgate.policy import Policy

__all__ = [
    "APPROVAL_TYP",
    "Pending",
    "Review",
    "asker",
    "check_pauses",
    "check_review",
    "excluded_principals",
    "quorum_met",
    "reviewer_keys",
    "sign_review",
    "standing_approvers",
    "tally",
]

APPROVAL_TYP: Final = "execgate-approval+jwt"
MAX_REVIEW_BYTES: Final = 8 * 1024
VERDICTS: Final = frozenset({"approve", "deny"})
_CLAIMS: Final = frozenset({"iss", "aid", "rh", "verdict", "iat", "exp", "jti", "comment"})


def asker(chain: Sequence[Any]) -> str:
    """The runtime a chain of artifact links asks as, for a deny's finality: its name as
    vouched for, link by link, from the authority down. The root is the authority's
    issuer and the subject it named (whatever key it bound: a runtime re-keyed is the
    same runtime); a link naming its parent's subject again (a runtime delegating to
    itself) keeps its parent's; any other link is its subject as named by its parent's
    runtime (not by its parent's key, which may change). So a runtime that names
    another's subject in a link of its own, a sibling's or an ancestor's, asks as its
    own descendant, never as the other."""
    who: Any = [chain[0].issuer, chain[0].subject]
    for parent, link in pairwise(chain):
        if link.subject != parent.subject:
            who = [who, link.subject]
    return ASKER_FORM + json.dumps(who, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Pending:
    """An approval opened by a pause decision (``approval_id`` is that decision's id)."""

    approval_id: str
    request_hash: str
    chain: tuple[str, ...]
    policy_hash: str
    rule: str
    groups: tuple[str, ...]
    quorum: int
    created_at: int
    expires_at: int
    excluded: tuple[str, ...]  # principal ids and key ids that may not review it
    # pending | denied | consumed | closed (another approval of the request was used)
    status: str = "pending"
    links: tuple[str, ...] = ()  # the digest of each link's token: the exact chain
    request: Mapping[str, Any] = field(default_factory=dict)
    # Who asked (``asker``): whose deny is final for the request (see ``denies``). Empty
    # in approvals opened before it was kept.
    holder: str = ""

    def denies(self, asker: str) -> bool:
        """Whether this approval, denied, is final for the request asked by ``asker``
        (``asker``: the runtime its chain vouches for): the same runtime's chains,
        whatever artifact it asks with, never another runtime's (which may name the
        same subject in a link of its own, and would otherwise have a request denied
        before it was ever asked). One whose holder was kept in an earlier form is
        final for every chain (``deny_is_final``)."""
        return deny_is_final(self.holder, asker)

    def state(self, now: int) -> str:
        """pending, denied, consumed, closed, or expired (a pending approval past its
        time)."""
        if self.status == "pending" and now >= self.expires_at:
            return "expired"
        return self.status

    def to_json(self) -> dict[str, Any]:
        return {
            "approval_id": self.approval_id,
            "request_hash": self.request_hash,
            "chain": list(self.chain),
            "policy_hash": self.policy_hash,
            "rule": self.rule,
            "groups": list(self.groups),
            "quorum": self.quorum,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "excluded": list(self.excluded),
            "request": dict(self.request),
            "links": list(self.links),
            **({"holder": self.holder} if self.holder else {}),
        }

    @classmethod
    def from_json(cls, body: str, status: str) -> Pending:
        d = json.loads(body)
        return cls(
            approval_id=d["approval_id"],
            request_hash=d["request_hash"],
            chain=tuple(d["chain"]),
            policy_hash=d["policy_hash"],
            rule=d["rule"],
            groups=tuple(d["groups"]),
            quorum=d["quorum"],
            created_at=d["created_at"],
            expires_at=d["expires_at"],
            excluded=tuple(d["excluded"]),
            status=status,
            request=d.get("request", {}),
            links=tuple(d.get("links", ())),
            holder=d.get("holder", ""),
        )


@dataclass(frozen=True, slots=True)
class Review:
    approval_id: str
    approver: str
    kid: str
    verdict: str
    at: int
    comment: str | None
    token: str

    def to_json(self) -> dict[str, Any]:
        return {
            "approval_id": self.approval_id,
            "approver": self.approver,
            "kid": self.kid,
            "verdict": self.verdict,
            "at": self.at,
            "comment": self.comment,
            "token": self.token,
        }

    @classmethod
    def from_json(cls, body: str) -> Review:
        d = json.loads(body)
        return cls(
            d["approval_id"],
            d["approver"],
            d["kid"],
            d["verdict"],
            d["at"],
            d["comment"],
            d["token"],
        )


def excluded_principals(
    chain_subjects: Sequence[str],
    chain_keys: Sequence[str],
    attributions: Sequence[Mapping[str, str]],
) -> tuple[str, ...]:
    """Everyone who asked for, runs, or benefits from the request: they cannot approve it."""
    names = set(chain_subjects) | set(chain_keys)
    for att in attributions:
        for key in ("requested_by", "on_behalf_of"):
            if att.get(key):
                names.add(att[key])
    return tuple(sorted(names))


def sign_review(
    *,
    key: PrivateKey,
    approver: str,
    pending: Pending,
    verdict: str,
    now: int,
    comment: str | None = None,
    ttl: int = 600,
) -> str:
    """An approver's signed review of one pending approval."""
    if verdict not in VERDICTS:
        raise ValueError("verdict must be approve or deny")
    claims: dict[str, Any] = {
        "iss": approver,
        "aid": pending.approval_id,
        "rh": pending.request_hash,
        "verdict": verdict,
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    if comment:
        claims["comment"] = comment
    return encode({"typ": APPROVAL_TYP, "kid": key.public.thumbprint()}, claims, key)


def check_review(
    token: str, *, pending: Pending, trust: TrustStore, now: int, leeway: int
) -> Review:
    """Accept a review of ``pending`` or raise ``ApprovalError`` saying why not."""
    try:
        verified = verify(
            token, typ=APPROVAL_TYP, max_size=MAX_REVIEW_BYTES, keys=trust.approver_keys
        )
    except JoseError as exc:
        raise ApprovalError(signer_refusal(exc, what="review", signer="approver")) from exc
    claims = verified.claims
    if set(claims) - _CLAIMS:
        raise ApprovalError(f"the review has unknown claims {sorted(set(claims) - _CLAIMS)}")
    kid = verified.header["kid"]
    approver = trust.approver_for_kid(kid)
    assert approver is not None  # the key came from the approver key set
    if claims.get("iss") != approver.id:
        raise ApprovalError(
            f"the review names {claims.get('iss')!r} but is signed by {approver.id!r}"
        )
    if claims.get("aid") != pending.approval_id or claims.get("rh") != pending.request_hash:
        raise ApprovalError("the review is for another approval or another request")
    verdict = claims.get("verdict")
    if verdict not in VERDICTS:
        raise ApprovalError("the review's verdict must be approve or deny")
    exp, iat = claims.get("exp"), claims.get("iat")
    if (
        not isinstance(exp, int)
        or not isinstance(iat, int)
        or now >= exp + leeway
        or iat > now + leeway
    ):
        raise ApprovalError("the review is expired or issued in the future")
    comment = claims.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 1024):
        raise ApprovalError("the review's comment must be a string of at most 1024 characters")
    _check_reviewer(approver, kid, pending)
    state = pending.state(now)
    if state != "pending":
        raise ApprovalError(f"approval {pending.approval_id} is {state}; it takes no more reviews")
    return Review(pending.approval_id, approver.id, kid, verdict, now, comment, token)


def _is_principal(pending: Pending, approver: Approver, kid: str | None = None) -> bool:
    """Whether ``approver`` (by its id or any of its keys, not only the one that signed:
    a principal with a second key is still the principal) is a principal of the request.
    Compared without case: 'ANA' in an artifact's ``att`` is approver 'ana' to whoever
    reads the log, and erring this way only takes a reviewer away."""
    excluded = {name.casefold() for name in pending.excluded}
    names = (approver.id, *approver.keys) if kid is None else (approver.id, kid, *approver.keys)
    return any(name.casefold() in excluded for name in names)


def _check_reviewer(approver: Approver, kid: str, pending: Pending) -> None:
    if _is_principal(pending, approver, kid):
        raise ApprovalError(
            f"{approver.id} is a principal of this request (runtime, delegator, requester or"
            " beneficiary) and cannot review it"
        )
    if not set(approver.groups) & set(pending.groups):
        raise ApprovalError(
            f"{approver.id} is in none of the groups this approval needs: {list(pending.groups)}"
        )


def reviewer_keys(review: Review) -> tuple[tuple[str, str], ...]:
    """What revoking would take a review's approval away: the key that signed it (by its
    thumbprint, ``kid``) or its approver (``sub``: approvers and the subjects of artifacts
    are principals of one name space, see ``excluded_principals``)."""
    return (("kid", review.kid), ("sub", review.approver))


def quorum_met(pending: Pending, reviews: Sequence[Review], trust: TrustStore) -> bool:
    """Every required group has ``quorum`` approvals from distinct approvers, no one denied,
    and no approver counts for two groups: one person in both ``finance`` and
    ``security`` is one factor, not two (a bipartite matching of approvers to seats).

    Approvers are looked up in the trust store as it is now: someone removed since
    reviewing no longer counts, nor does a review signed with a key since removed from
    its approver (a key rotated out after a compromise). A deny always counts.
    """
    if any(r.verdict == "deny" for r in reviews):
        return False
    approving = [trust.approvers[a] for a in sorted(_approving(pending, reviews, trust))]
    return _seated(pending.groups, pending.quorum, approving)


def _seated(groups: Sequence[str], quorum: int, approvers: Sequence[Approver]) -> bool:
    """Whether ``approvers`` fill ``quorum`` seats of every group, one seat each (a
    bipartite matching of approvers to seats, by augmenting paths)."""
    seats = [g for g in groups for _ in range(quorum)]
    eligible = {a.id: [i for i, g in enumerate(seats) if g in a.groups] for a in approvers}
    holder: dict[int, str] = {}

    def seat(approver: str, visited: set[int]) -> bool:
        for i in eligible[approver]:
            if i in visited:
                continue
            visited.add(i)
            if i not in holder or seat(holder[i], visited):
                holder[i] = approver
                return True
        return False

    for approver in eligible:
        seat(approver, set())
    return len(holder) == len(seats)


def check_pauses(policy: Policy, trust: TrustStore) -> None:
    """Refuse a policy with a pause no one could ever approve: every pause rule's groups
    must be fillable, ``quorum`` each, by distinct approvers of ``trust`` (a rule naming
    a group nobody is in, or asking more of a group than it has, would pause forever).
    ``PolicyError`` names the rule and its line."""
    approvers = list(trust.approvers.values())
    for rule in policy.rules:
        spec = rule.pause
        if spec is None or _seated(spec.approvers, spec.quorum, approvers):
            continue
        listed = ", ".join(
            f"{g}: {sum(1 for a in approvers if g in a.groups)}" for g in spec.approvers
        )
        raise PolicyError(
            f"no one could ever approve this pause: it needs {spec.quorum} distinct"
            f" approver(s) for each of {list(spec.approvers)}, one person counting once,"
            f" and the trust store lists {listed}; add [[approver]] entries to trust.toml"
            " or lower the quorum",
            rule=rule.name,
            line=rule.line,
        )


def tally(pending: Pending, reviews: Sequence[Review], trust: TrustStore) -> dict[str, int]:
    """How many distinct approvers have approved, per required group (before matching)."""
    approving = _approving(pending, reviews, trust)
    return {g: sum(1 for a in approving if g in trust.approvers[a].groups) for g in pending.groups}


def standing_approvers(pending: Pending, reviews: Sequence[Review], trust: TrustStore) -> list[str]:
    """Who approved and still counts (see ``quorum_met``), sorted: the approvers a
    resumed decision names."""
    return sorted(_approving(pending, reviews, trust))


def _approving(pending: Pending, reviews: Sequence[Review], trust: TrustStore) -> set[str]:
    """The approvers whose approval still stands: still in the trust store, signed with
    a key that is still theirs, and still no principal of the request (an approver who
    has since been given a principal's key is that principal)."""
    standing = set()
    for r in reviews:
        approver = trust.approvers.get(r.approver)
        if r.verdict != "approve" or approver is None or r.kid not in approver.keys:
            continue
        if _is_principal(pending, approver):
            continue
        standing.add(approver.id)
    return standing
