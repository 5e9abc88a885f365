"""Reviews of paused requests: who may review, and when a quorum is met."""

from __future__ import annotations

from dataclasses import replace

import pytest

from execgate.approvals import (
    Pending,
    Review,
    check_pauses,
    check_review,
    excluded_principals,
    quorum_met,
    sign_review,
    tally,
)
from execgate.errors import ApprovalError, PolicyError
from execgate.jose import PrivateKey
from execgate.policy import parse_policy
from execgate.trust import Approver, Authority, TrustStore

NOW = 1_700_000_000
KEYS = {
    name: PrivateKey.generate() for name in ("alice", "bob", "carol", "dave", "erin", "mallory")
}
GROUPS = {
    "alice": ("finance",),
    "bob": ("finance",),
    "carol": ("security",),
    "dave": ("finance", "security"),
    "erin": ("security",),
    "mallory": ("finance",),
}


def trust() -> TrustStore:
    authority = PrivateKey.generate().public
    approvers = {
        n: Approver(n, GROUPS[n], {KEYS[n].public.thumbprint(): KEYS[n].public}) for n in KEYS
    }
    return TrustStore(
        {"auth": Authority("auth", {authority.thumbprint(): authority}, ())}, {}, None, approvers
    )


def pending(**kw: object) -> Pending:
    base = Pending(
        approval_id="d-1",
        request_hash="rh-1",
        chain=("root-jti",),
        policy_hash="sha256:" + "0" * 64,
        rule="big",
        groups=("finance",),
        quorum=2,
        created_at=NOW,
        expires_at=NOW + 600,
        excluded=excluded_principals(
            ["agent-1"], [KEYS["mallory"].public.thumbprint()], [{"requested_by": "erin"}]
        ),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def review(name: str, p: Pending, verdict: str = "approve", **kw: object) -> Review:
    token = sign_review(key=KEYS[name], approver=name, pending=p, verdict=verdict, now=NOW)
    return check_review(token, pending=p, trust=trust(), now=int(kw.get("now", NOW)), leeway=0)  # type: ignore[call-overload]


def test_a_good_review_is_accepted() -> None:
    r = review("alice", pending())
    assert (r.approver, r.verdict, r.approval_id) == ("alice", "approve", "d-1")


def test_forged_unknown_foreign_and_expired_reviews_are_refused() -> None:
    p = pending()
    good = sign_review(key=KEYS["alice"], approver="alice", pending=p, verdict="approve", now=NOW)
    forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "QQQ")  # canonical either way
    stranger = sign_review(
        key=PrivateKey.generate(), approver="alice", pending=p, verdict="approve", now=NOW
    )
    impostor = sign_review(key=KEYS["alice"], approver="bob", pending=p, verdict="approve", now=NOW)
    other = sign_review(
        key=KEYS["alice"],
        approver="alice",
        pending=pending(request_hash="rh-2"),
        verdict="approve",
        now=NOW,
    )
    for token, why in [
        (forged, "signature"),
        (stranger, "no approver"),
        (impostor, "names"),
        (other, "another"),
        ("not.a.review", "malformed"),
    ]:
        with pytest.raises(ApprovalError, match=why):
            check_review(token, pending=p, trust=trust(), now=NOW, leeway=0)
    with pytest.raises(ApprovalError, match="expired"):
        check_review(good, pending=p, trust=trust(), now=NOW + 601, leeway=0)


def test_principals_of_the_request_cannot_review_it() -> None:
    p = pending(groups=("finance", "security"))
    with pytest.raises(ApprovalError, match="principal"):
        review("mallory", p)  # holds a key on the artifact chain
    with pytest.raises(ApprovalError, match="principal"):
        review("erin", p)  # requested it
    with pytest.raises(ApprovalError, match="none of the groups"):
        review("carol", pending())  # security, but only finance is asked


def test_a_closed_approval_takes_no_reviews() -> None:
    with pytest.raises(ApprovalError, match="denied"):
        review("alice", pending(status="denied"))
    with pytest.raises(ApprovalError, match="expired"):
        review("alice", pending(expires_at=NOW))


def test_quorum_edges() -> None:
    p = pending(groups=("finance", "security"), quorum=1)
    t = trust()
    assert not quorum_met(p, [review("alice", p)], t)  # k-1: security missing
    assert quorum_met(p, [review("alice", p), review("carol", p)], t)
    assert not quorum_met(p, [review("alice", p), review("carol", p), review("bob", p, "deny")], t)
    # one person in both groups is one factor, not two
    assert not quorum_met(p, [review("dave", p)], t)
    assert quorum_met(p, [review("dave", p), review("alice", p)], t)
    two = pending(quorum=2)
    assert not quorum_met(two, [review("alice", two), review("alice", two)], t)  # same approver
    assert quorum_met(two, [review("alice", two), review("bob", two)], t)
    assert tally(two, [review("alice", two), review("alice", two)], t) == {"finance": 1}


def test_check_pauses_counts_one_person_once() -> None:
    """Two seats per group: finance has alice and dave, security carol and dave, two
    each, yet three people cannot fill four seats. With erin in security they can."""
    policy = parse_policy(
        "version: 1\nrules:\n  - name: big\n    match: {action: a}\n    effect: pause\n"
        "    approvers: [finance, security]\n    quorum: 2\n    ttl: 60\n",
        source="t",
        targets=(),
    )
    t = trust()

    def only(*names: str) -> TrustStore:
        return TrustStore(t.authorities, {}, None, {n: t.approvers[n] for n in names})

    with pytest.raises(PolicyError, match=r"finance: 2, security: 2") as info:
        check_pauses(policy, only("alice", "dave", "carol"))
    assert (info.value.rule, info.value.line) == ("big", 3)
    check_pauses(policy, only("alice", "dave", "carol", "erin"))


def test_approvers_removed_from_the_trust_store_no_longer_count() -> None:
    p = pending(quorum=2)
    reviews = [review("alice", p), review("bob", p)]
    t = trust()
    assert quorum_met(p, reviews, t)
    smaller = TrustStore(
        t.authorities, {}, None, {k: v for k, v in t.approvers.items() if k != "bob"}
    )
    assert not quorum_met(p, reviews, smaller)


def test_a_review_signed_with_a_key_since_removed_no_longer_counts() -> None:
    """Bob's key is rotated out (say it leaked): his reviews signed with it stop counting,
    even though bob himself is still an approver (with a new key)."""
    p = pending(quorum=2)
    reviews = [review("alice", p), review("bob", p)]
    t = trust()
    assert quorum_met(p, reviews, t)
    new_key = PrivateKey.generate().public
    rotated = TrustStore(
        t.authorities,
        {},
        None,
        {**t.approvers, "bob": Approver("bob", GROUPS["bob"], {new_key.thumbprint(): new_key})},
    )
    assert not quorum_met(p, reviews, rotated)
    assert tally(p, reviews, rotated) == {"finance": 1}
    denied = [review("alice", p), review("bob", p, "deny")]
    assert not quorum_met(p, [*denied, review("dave", p)], rotated)  # a deny still counts


def test_an_approver_since_given_a_principals_key_no_longer_counts() -> None:
    """Bob approved; then mallory's key (a principal's: the request's runtime key here)
    is added to bob's entry. Bob is now that principal: his review, which the same
    check would refuse today, stops counting, and the request waits again."""
    p = pending(quorum=2)
    reviews = [review("alice", p), review("bob", p)]
    t = trust()
    assert quorum_met(p, reviews, t)
    mallory = KEYS["mallory"].public
    bob = t.approvers["bob"]
    merged = Approver("bob", bob.groups, {**bob.keys, mallory.thumbprint(): mallory})
    others = {k: v for k, v in t.approvers.items() if k != "mallory"}  # a key has one owner
    widened = TrustStore(t.authorities, {}, None, {**others, "bob": merged})
    assert not quorum_met(p, reviews, widened)
    assert tally(p, reviews, widened) == {"finance": 1}


def test_a_principal_cannot_review_with_a_second_key() -> None:
    """Ana holds the runtime key and another one: neither key lets her approve."""
    runtime_key, other_key = PrivateKey.generate(), PrivateKey.generate()
    authority = PrivateKey.generate().public
    ana = Approver(
        "ana",
        ("finance",),
        {k.public.thumbprint(): k.public for k in (runtime_key, other_key)},
    )
    t = TrustStore(
        {"auth": Authority("auth", {authority.thumbprint(): authority}, ())}, {}, None, {"ana": ana}
    )
    p = pending(excluded=excluded_principals(["agent-1"], [runtime_key.public.thumbprint()], []))
    for key in (runtime_key, other_key):
        token = sign_review(key=key, approver="ana", pending=p, verdict="approve", now=NOW)
        with pytest.raises(ApprovalError, match="principal"):
            check_review(token, pending=p, trust=t, now=NOW, leeway=0)
