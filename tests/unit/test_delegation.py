"""Delegation chains verified offline: every link, every attenuation rule, every code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import GATEWAY_ID, NOW, Kit, make_kit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from execgate.artifacts import ARTIFACT_TYP, Artifact, ArtifactVerifier, verify_artifact
from execgate.delegation import delegate_artifact
from execgate.errors import VerificationError
from execgate.jose import PrivateKey, encode, parse_unverified
from execgate.scope import check_scope, parse_grants
from execgate.trust import TrustStore

WIDE = [{"action": "payments.*", "resource": "acct:**", "constraints": {"amount": {"max": 500}}}]
NARROW = [
    {"action": "payments.transfer", "resource": "acct:7", "constraints": {"amount": {"max": 50}}}
]


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def trust(kit: Kit) -> TrustStore:
    return TrustStore.load(kit.config.trust)


def check(kit: Kit, token: str, *, now: int = NOW, max_depth: int = 8) -> Artifact:
    return verify_artifact(
        token,
        trust=trust(kit),
        audiences=frozenset({GATEWAY_ID}),
        now=now,
        leeway=0,
        max_depth=max_depth,
    )


def code_of(kit: Kit, token: str, **kw: Any) -> str:
    with pytest.raises(VerificationError) as info:
        check(kit, token, **kw)
    return info.value.code


class Chain:
    """A chain of runtimes, each holding the artifact its predecessor delegated to it."""

    def __init__(self, kit: Kit, **root_kw: Any):
        self.kit = kit
        self.keys = [kit.runtime.key]
        self.tokens = [kit.artifact(WIDE, ttl=3600, **root_kw)]

    def extend(self, scope: list[dict[str, Any]] = NARROW, **kw: Any) -> str:
        key = PrivateKey.generate()
        token = delegate_artifact(
            parent=self.tokens[-1],
            holder_key=self.keys[-1],
            subject=f"agent-{len(self.keys) + 1}",
            runtime_key=key.public,
            scope=scope,
            now=NOW,
            **kw,
        )
        self.keys.append(key)
        self.tokens.append(token)
        return token


def forge_child(kit: Kit, parent: str, holder: PrivateKey, **overrides: Any) -> str:
    """Sign a child with ``holder`` bypassing delegate_artifact's checks."""
    p = parse_unverified(parent, max_size=1 << 20).claims
    claims: dict[str, Any] = {
        "iss": holder.public.thumbprint(),
        "sub": "agent-x",
        "aud": p["aud"],
        "iat": NOW,
        "nbf": p["nbf"],
        "exp": p["exp"],
        "jti": "child-jti",
        "scope": NARROW,
        "cnf": {"jkt": PrivateKey.generate().public.thumbprint()},
        "prf": [parent],
    }
    for key, value in overrides.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return encode({"typ": ARTIFACT_TYP, "jwk": holder.public.to_jwk()}, claims, holder)


# --- chains that verify ---------------------------------------------------------------


def test_a_chain_of_three_verifies_and_knows_its_links(kit: Kit) -> None:
    chain = Chain(kit, gov={"ticket": "T-1"}, env={"region": ["eu-west-1", "eu-west-2"]})
    chain.extend(env={"region": ["eu-west-1"]})
    chain.extend()
    leaf = chain.extend(NARROW, gov={"purpose": "refill"})
    art = check(kit, leaf)
    assert art.depth == 3
    assert [a.token for a in art.chain] == chain.tokens
    assert art.chain[0].issuer == "example-authority"
    assert art.issuer == chain.keys[2].public.thumbprint()
    assert art.subject == "agent-4"
    assert art.gov == {"ticket": "T-1", "purpose": "refill"}
    assert art.env == {"region": ("eu-west-1",)}
    keys = set(art.revocation_keys())
    assert ("jti", art.chain[0].jti) in keys
    assert ("kid", kit.authority.public.thumbprint()) in keys
    assert ("sub", "agent-2") in keys
    assert ("kid", chain.keys[1].public.thumbprint()) in keys


def test_a_chains_patterns_share_one_budget(kit: Kit) -> None:
    """RE2 compiles each link's patterns as the artifact is read, on the event loop: the
    distinct patterns of the whole chain expand to 8000 characters at most, so a child
    cannot add its own 8000 to its parent's (each link alone within it)."""
    held = {"memo": ".{0,1000}" * 3, "ref": ".{0,1000}.{0,1000}.{0,999}", "to": ".{0,998}"}
    constraints = {"amount": {"max": 500}, **{k: {"pattern": p} for k, p in held.items()}}
    scope = [{**WIDE[0], "constraints": constraints}]
    chain = Chain(kit)
    chain.tokens[-1] = kit.artifact(scope, ttl=3600)
    parent = chain.tokens[-1]

    def child(extra: dict[str, str]) -> list[dict[str, Any]]:
        more = {k: {"pattern": p} for k, p in extra.items()}
        return [{**NARROW[0], "constraints": {**constraints, **more}}]

    fits = chain.extend(child({"note": "[a-z]{0,1000}"}))  # 7997 in all
    assert check(kit, fits).chain[-1].grants[0].constraints["note"].pattern == "[a-z]{0,1000}"
    chain.tokens[-1], chain.keys[-1] = parent, kit.runtime.key
    wider = child({"note": "[a-z]{0,1000}", "tag": "[a-z]{0,10}"})  # 8007
    with pytest.raises(ValueError, match="expand to 8007 characters in all, past 8000"):
        chain.extend(wider)  # not minted
    over = forge_child(kit, parent, kit.runtime.key, scope=wider)
    with pytest.raises(VerificationError, match="expand to 8007 characters in all") as info:
        check(kit, over)
    assert info.value.code == "artifact.malformed"


def test_delegated_child_admits_only_what_it_grants(kit: Kit) -> None:
    chain = Chain(kit)
    art = check(kit, chain.extend())
    assert check_scope(art.grants, "payments.transfer", "acct:7", {"amount": 50}) is None
    assert check_scope(art.grants, "payments.transfer", "acct:7", {"amount": 51}) is not None
    assert check_scope(art.grants, "payments.refund", "acct:7", {"amount": 1}) is not None


# --- each way a link can be broken ----------------------------------------------------


def test_link_signed_by_a_key_the_parent_does_not_bind(kit: Kit) -> None:
    chain = Chain(kit)
    stranger = PrivateKey.generate()
    assert code_of(kit, forge_child(kit, chain.tokens[0], stranger)) == "lineage.broken"


def test_link_whose_iss_is_not_its_signer(kit: Kit) -> None:
    chain = Chain(kit)
    token = forge_child(kit, chain.tokens[0], kit.runtime.key, iss="someone-else")
    assert code_of(kit, token) == "lineage.broken"


def test_prf_with_two_parents_or_not_a_list(kit: Kit) -> None:
    chain = Chain(kit)
    parent = chain.tokens[0]
    for prf in ([parent, parent], parent, [], [1], [""]):
        token = forge_child(kit, parent, kit.runtime.key, prf=prf)
        assert code_of(kit, token) == "lineage.broken", prf


def test_the_same_jti_twice_in_a_chain(kit: Kit) -> None:
    chain = Chain(kit)
    root_jti = parse_unverified(chain.tokens[0], max_size=1 << 20).claims["jti"]
    token = forge_child(kit, chain.tokens[0], kit.runtime.key, jti=root_jti)
    assert code_of(kit, token) == "lineage.broken"


def test_authority_signed_artifact_with_prf_is_broken(kit: Kit) -> None:
    token = kit.raw_artifact(kit.claims(prf=[kit.artifact()]))
    assert code_of(kit, token) == "lineage.broken"


def test_tampered_parent_inside_a_child(kit: Kit) -> None:
    chain = Chain(kit)
    root = chain.tokens[0]
    tampered = root[:-2] + ("AA" if not root.endswith("AA") else "BA")
    token = forge_child(kit, tampered, kit.runtime.key)
    assert code_of(kit, token) in {"artifact.signature_invalid", "artifact.malformed"}


def test_root_from_an_untrusted_authority(kit: Kit) -> None:
    rogue = PrivateKey.generate()
    root = kit.artifact(WIDE, key=rogue)
    token = forge_child(kit, root, kit.runtime.key)
    assert code_of(kit, token) == "artifact.untrusted_issuer"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"scope": [{"action": "payments.*", "resource": "acct:**"}]}, "constraint dropped"),
        (
            {
                "scope": [
                    {
                        "action": "payments.*",
                        "resource": "acct:**",
                        "constraints": {"amount": {"max": 501}},
                    }
                ]
            },
            "looser max",
        ),
        ({"scope": [{"action": "users.*", "resource": "acct:**"}]}, "other action"),
        ({"scope": [{"action": "**", "resource": "acct:**"}]}, "wider glob"),
        ({"nbf": NOW - 1}, "starts before the parent"),
        ({"exp": NOW + 3601}, "ends after the parent"),
        ({"aud": [GATEWAY_ID, "gw-other"]}, "audience added"),
        ({"env": {"region": ["eu-west-1", "us-east-1"]}}, "env widened"),
        ({"env": None}, "env dropped"),
        ({"gov": {"ticket": "OTHER"}}, "gov changed"),
        ({"gov": None}, "gov dropped"),
        ({"uses": 3}, "more uses"),
        ({"uses": None}, "unlimited under a limited parent"),
        ({"att": {"on_behalf_of": "cfo"}}, "attribution rewritten"),
        ({"att": None}, "attribution dropped"),
    ],
)
def test_every_widening_is_refused(kit: Kit, overrides: dict[str, Any], why: str) -> None:
    chain = Chain(
        kit,
        gov={"ticket": "T-1"},
        env={"region": ["eu-west-1"]},
        uses=2,
        att={"on_behalf_of": "intern"},
    )
    base = {
        "env": {"region": ["eu-west-1"]},
        "gov": {"ticket": "T-1"},
        "uses": 2,
        "att": {"on_behalf_of": "intern"},
    }
    token = forge_child(kit, chain.tokens[0], kit.runtime.key, **{**base, **overrides})
    assert code_of(kit, token) == "lineage.attenuation_violated", why


def test_delegation_keeps_the_parents_attribution_and_may_add_to_it(kit: Kit) -> None:
    chain = Chain(kit, att={"on_behalf_of": "intern"})
    art = check(kit, chain.extend(att={"requested_by": "ops-bot"}))
    assert art.claims["att"] == {"on_behalf_of": "intern", "requested_by": "ops-bot"}
    with pytest.raises(ValueError, match="attribution"):
        chain.extend(att={"on_behalf_of": "cfo"})


def test_the_same_child_without_widening_verifies(kit: Kit) -> None:
    chain = Chain(kit, gov={"ticket": "T-1"}, env={"region": ["eu-west-1"]}, uses=2)
    base = {"env": {"region": ["eu-west-1"]}, "gov": {"ticket": "T-1"}, "uses": 2}
    assert check(kit, forge_child(kit, chain.tokens[0], kit.runtime.key, **base)).depth == 1


def test_depth_over_the_limit(kit: Kit) -> None:
    chain = Chain(kit)
    for _ in range(3):
        chain.extend()
    assert check(kit, chain.tokens[-1], max_depth=3).depth == 3
    assert code_of(kit, chain.tokens[-1], max_depth=2) == "lineage.depth_exceeded"


def test_depth_is_refused_before_any_signature_is_checked(kit: Kit) -> None:
    """DESIGN §3 stage 1: depth is a size limit. A chain too deep is refused as such,
    even when its root is from no trusted authority, whose signature is then never
    checked; within the limit, that root is what is wrong with it."""
    untrusted = kit.artifact(WIDE, ttl=3600, key=PrivateKey.generate())
    child = forge_child(
        kit, untrusted, kit.runtime.key, cnf={"jkt": kit.runtime.key.public.thumbprint()}
    )
    grandchild = forge_child(kit, child, kit.runtime.key, jti="grandchild-jti")
    assert code_of(kit, grandchild, max_depth=1) == "lineage.depth_exceeded"
    assert code_of(kit, grandchild, max_depth=2) == "artifact.untrusted_issuer"
    verifier = ArtifactVerifier(
        trust=trust(kit), audiences=frozenset({GATEWAY_ID}), leeway=0, max_depth=1
    )
    with pytest.raises(VerificationError) as info:
        verifier.verify(grandchild, now=NOW)
    assert info.value.code == "lineage.depth_exceeded"


def test_a_link_issued_in_the_future_is_not_yet_valid(kit: Kit) -> None:
    """As a proof or an attestation issued in the future is refused: an iat past the
    leeway is a clock or a signer that cannot be trusted with the rest of the window."""
    future = kit.artifact(WIDE, now=NOW + 86400, not_before=NOW - 10, ttl=3600)
    assert code_of(kit, future) == "artifact.not_yet_valid"
    chain = Chain(kit)
    late = forge_child(kit, chain.tokens[0], chain.keys[0], iat=NOW + 86400)
    assert code_of(kit, late) == "artifact.not_yet_valid"
    assert check(kit, forge_child(kit, chain.tokens[0], chain.keys[0], iat=NOW)).depth == 1


def test_a_chain_is_only_as_valid_as_its_leaf_window(kit: Kit) -> None:
    chain = Chain(kit)
    leaf = chain.extend(ttl=60)
    assert check(kit, leaf, now=NOW + 30).depth == 1
    assert code_of(kit, leaf, now=NOW + 61) == "artifact.expired"


# --- minting --------------------------------------------------------------------------


def test_delegate_refuses_what_the_gateway_would_refuse(kit: Kit) -> None:
    chain = Chain(kit, uses=1)
    parent = chain.tokens[0]
    key = PrivateKey.generate().public
    base: dict[str, Any] = {"parent": parent, "subject": "b", "runtime_key": key, "now": NOW}
    with pytest.raises(ValueError, match="not the key the parent artifact binds"):
        delegate_artifact(holder_key=PrivateKey.generate(), scope=NARROW, **base)
    with pytest.raises(ValueError, match="widen"):
        delegate_artifact(
            holder_key=kit.runtime.key, scope=[{"action": "**", "resource": "**"}], **base
        )
    with pytest.raises(ValueError, match="widen"):
        delegate_artifact(holder_key=kit.runtime.key, scope=NARROW, ttl=7200, **base)
    with pytest.raises(ValueError, match="widen"):
        delegate_artifact(holder_key=kit.runtime.key, scope=NARROW, uses=2, **base)
    with pytest.raises(ValueError, match="well-formed"):
        delegate_artifact(holder_key=kit.runtime.key, scope=NARROW, **{**base, "parent": "x.y.z"})


def test_delegate_refuses_a_jti_already_in_the_chain(kit: Kit) -> None:
    """The gateway refuses a chain naming one jti twice (lineage.broken): not minted."""
    chain = Chain(kit)
    chain.extend()
    jtis = [parse_unverified(t, max_size=1 << 20).claims["jti"] for t in chain.tokens]
    for jti in jtis:  # the parent's own, and its parent's
        with pytest.raises(ValueError, match=f"jti '{jti}' is already a link's"):
            chain.extend(jti=jti)
    child = chain.extend(jti="a-fresh-jti-for-the-child")
    assert check(kit, child).chain[-1].jti == "a-fresh-jti-for-the-child"


@pytest.mark.parametrize(
    ("claim", "value", "missing"),
    [
        ("att", "ops", "an att that is not an object"),
        ("aud", [["gw"]], "no audience"),
        ("aud", [GATEWAY_ID, 7], "no audience"),
    ],
)
def test_delegate_refuses_a_parent_of_the_wrong_shape_with_a_value_error(
    kit: Kit, claim: str, value: object, missing: str
) -> None:
    """A parent's claims of the wrong type (it is read unverified) are a ValueError
    naming them, not a TypeError from deep inside."""
    holder = PrivateKey.generate()
    with pytest.raises(ValueError, match=f"not a well-formed artifact: it has {missing}"):
        delegate_artifact(
            parent=forge_child(
                kit,
                kit.artifact(WIDE),
                kit.runtime.key,
                cnf={"jkt": holder.public.thumbprint()},
                **{claim: value},
            ),
            holder_key=holder,
            subject="b",
            runtime_key=PrivateKey.generate().public,
            scope=NARROW,
            now=NOW,
        )


# --- property: a chain never admits what its root refuses -----------------------------

ACTIONS = st.sampled_from(["payments.*", "payments.transfer", "payments.refund", "**", "users.*"])
RESOURCES = st.sampled_from(["acct:**", "acct:7", "acct:*", "**", "host:1"])
MAXES = st.one_of(st.none(), st.integers(0, 1000))


@st.composite
def grants(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 2))):
        grant: dict[str, Any] = {"action": draw(ACTIONS), "resource": draw(RESOURCES)}
        bound = draw(MAXES)
        if bound is not None:
            grant["constraints"] = {"amount": {"max": bound}}
        out.append(grant)
    return out


REQUESTS = st.tuples(
    st.sampled_from(["payments.transfer", "payments.refund", "users.delete", "x"]),
    st.sampled_from(["acct:7", "acct:1", "acct:1:sub", "host:1"]),
    st.integers(0, 1200),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(child=grants(), requests=st.lists(REQUESTS, min_size=1, max_size=10))
def test_no_verified_child_admits_a_request_its_parent_refuses(
    kit: Kit, child: list[dict[str, Any]], requests: list[tuple[str, str, int]]
) -> None:
    root = Chain(kit).tokens[0]
    token = forge_child(kit, root, kit.runtime.key, scope=child)
    try:
        art = check(kit, token)
    except VerificationError as exc:
        refused = exc.code
        art = None
    if art is None:
        assert refused == "lineage.attenuation_violated"
        return
    parent = parse_grants(WIDE)
    for action, resource, amount in requests:
        if check_scope(art.grants, action, resource, {"amount": amount}) is None:
            assert check_scope(parent, action, resource, {"amount": amount}) is None
