"""Remembered artifact verifications never outlive what they were checked against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gatekit import NOW, Kit, make_kit

from execgate.jose import PrivateKey
from execgate.model import Outcome
from execgate.pipeline import Gateway, Submission
from execgate.trust import Authority, TrustStore


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def test_a_verified_artifact_still_expires(kit: Kit) -> None:
    gw = kit.gateway()
    artifact = kit.artifact(ttl=120)
    assert gw.decide(kit.submission(kit.request(amount=5), artifact)).outcome is Outcome.PROCEED
    kit.clock.t = NOW + 120 + 61  # past exp + leeway; the token is the one remembered
    late = gw.decide(kit.submission(kit.request(amount=5), artifact, now=int(kit.clock.t)))
    assert late.outcome is Outcome.DENY
    assert [r.code for r in late.reasons] == ["artifact.expired"]


def test_a_new_trust_store_forgets_what_the_old_one_verified(kit: Kit) -> None:
    gw = kit.gateway()
    artifact = kit.artifact()
    assert gw.decide(kit.submission(kit.request(amount=5), artifact)).outcome is Outcome.PROCEED
    other = PrivateKey.generate()
    gw.trust = TrustStore(
        {
            "someone-else": Authority(
                "someone-else",
                {other.public.thumbprint(): other.public},
                gw.trust.authorities["example-authority"].scope,
            )
        },
        {},
    )
    again = gw.decide(kit.submission(kit.request(amount=5), artifact))
    assert again.outcome is Outcome.DENY
    assert [r.code for r in again.reasons] == ["artifact.untrusted_issuer"]


def test_failures_are_not_remembered_as_successes(kit: Kit) -> None:
    gw: Gateway = kit.gateway()
    artifact = kit.artifact()
    forged = artifact[:-4] + ("AAAA" if not artifact.endswith("AAAA") else "BBBB")
    for _ in range(2):
        d = gw.decide(kit.submission(kit.request(amount=5), forged))
        assert d.outcome is Outcome.DENY
    assert gw.decide(kit.submission(kit.request(amount=5), artifact)).outcome is Outcome.PROCEED


def test_mutating_args_after_submitting_changes_nothing_evaluated(kit: Kit) -> None:
    gw = kit.gateway()
    request = kit.request(amount=5)
    wire = kit.submission(request, kit.artifact())
    submission = Submission(request, wire["artifact"], wire["proof"])
    request.args["amount"] = 10**6  # type: ignore[index]  # the caller's own dict
    d = gw.decide(submission)
    assert d.outcome is Outcome.PROCEED
    assert submission.request.args == {"amount": 5}
