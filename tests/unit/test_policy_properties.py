"""Properties: evaluation never raises, and never proceeds unless a proceed rule matched."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from execgate._glob import glob_match
from execgate.model import Outcome
from execgate.policy import Policy, parse_policy

_ERROR = "error"


def _n_le(limit: int) -> Any:
    def oracle(args: dict[str, Any], runtime: str) -> bool | str:
        if "n" not in args:
            return _ERROR
        n = args["n"]
        if isinstance(n, bool) or not isinstance(n, int | float):
            return _ERROR
        return bool(n <= limit)

    return oracle


def _has_n(args: dict[str, Any], runtime: str) -> bool | str:
    return "n" in args


def _n_itself(args: dict[str, Any], runtime: str) -> bool | str:
    n = args.get("n", _ERROR)
    return n if isinstance(n, bool) else _ERROR


def _runtime_is_agent(args: dict[str, Any], runtime: str) -> bool | str:
    return runtime == "agent-1"


# Condition source -> a Python oracle: True, False or "error".
CONDITIONS: dict[str | None, Any] = {
    None: lambda args, runtime: True,
    "request.args.n <= 10": _n_le(10),
    "request.args.n <= 0": _n_le(0),
    "has(request.args.n)": _has_n,
    "!has(request.args.n)": lambda args, runtime: "n" not in args,
    "request.args.n": _n_itself,
    "request.runtime == 'agent-1'": _runtime_is_agent,
    "request.args.n == 1 || true": lambda args, runtime: True,
}
ACTIONS = ["**", "*", "payments.*", "payments.transfer", "shell.**", "shell.run"]
RESOURCES = ["**", "acct:*", "acct:**", "host:1"]
EFFECTS = ["proceed", "deny", "pause", "reroute"]

rule_strategy = st.tuples(
    st.sampled_from(ACTIONS),
    st.sampled_from(RESOURCES),
    st.sampled_from(sorted(CONDITIONS, key=str)),
    st.sampled_from(EFFECTS),
)


def _build(rules: list[tuple[str, str, str | None, str]]) -> Policy:
    lines = ["version: 1", "rules:"]
    for index, (action, resource, when, effect) in enumerate(rules):
        lines += [
            f"  - name: r{index}",
            f"    match: {{action: {action!r}, resource: {resource!r}}}",
            f"    effect: {effect}",
        ]
        if when is not None:
            lines.append(f"    when: {when!r}")
        if effect == "pause":
            lines += ["    approvers: [ops]", "    quorum: 1", "    ttl: 60"]
        if effect == "reroute":
            lines.append("    target: sandbox")
    return parse_policy("\n".join(lines) + "\n", source="gen", targets={"sandbox"})


arg_value = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(min_value=-(2**65), max_value=2**65), max_size=3),
)
request_strategy = st.fixed_dictionaries(
    {
        "action": st.one_of(
            st.sampled_from(["payments.transfer", "payments.refund", "shell.run", "x"]),
            st.text(max_size=12),
        ),
        "resource": st.one_of(st.sampled_from(["acct:1", "acct:1:2", "host:1"]), st.text()),
        "args": st.dictionaries(st.sampled_from(["n", "m"]), arg_value, max_size=2),
        "runtime": st.sampled_from(["agent-1", "agent-2"]),
        "parent": st.none(),
    }
)


def _beyond_int64(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_beyond_int64(v) for v in value.values())
    if isinstance(value, list):
        return any(_beyond_int64(v) for v in value)
    return type(value) is int and not -(2**63) <= value < 2**63


def _oracle(
    rules: list[tuple[str, str, str | None, str]], request: dict[str, Any]
) -> tuple[str, str | None, str | None]:
    args = request["args"]
    # An input is converted once per evaluation, along every key path any condition of the
    # policy reads (here only request.args.n): when some condition reads it and it holds
    # an int no int64 can hold, the request input cannot be converted and every condition
    # reading it fails. What no condition reads (request.args.m) is never converted.
    unconvertible = _beyond_int64(args.get("n")) and any(
        when is not None and "request.args" in when for _, _, when, _ in rules
    )
    for index, (action, resource, when, effect) in enumerate(rules):
        if not (
            glob_match(action, request["action"]) and glob_match(resource, request["resource"])
        ):
            continue
        verdict = True if when is None else CONDITIONS[when](args, request["runtime"])
        if when is not None and unconvertible:
            verdict = _ERROR
        if verdict is False:
            continue
        if verdict is not True:
            return "deny", f"r{index}", "policy.denied"
        code = {"deny": "policy.denied", "pause": "approval.required"}.get(effect)
        return effect, f"r{index}", code
    return "deny", None, "policy.no_match"


@settings(max_examples=300, deadline=None)
@given(rules=st.lists(rule_strategy, min_size=1, max_size=6), request=request_strategy)
def test_evaluation_agrees_with_oracle(
    rules: list[tuple[str, str, str | None, str]], request: dict[str, Any]
) -> None:
    result = _build(rules).evaluate(request=request, artifact={}, environment={}, now=0)
    assert (str(result.outcome), result.rule, result.code) == _oracle(rules, request)
    if result.outcome is Outcome.PROCEED:
        rule = next(r for r in _build(rules).rules if r.name == result.rule)
        assert rule.effect is Outcome.PROCEED
        assert rule.applies_to(request["action"], request["resource"])


json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=5), children, max_size=3),
    ),
    max_leaves=20,
)
FIXED = _build(
    [
        ("payments.*", "**", "request.args.n <= 10", "proceed"),
        ("**", "acct:**", "has(request.args.n)", "pause"),
        ("shell.**", "**", "request.runtime == 'agent-1'", "reroute"),
        ("x", "**", None, "proceed"),
    ]
)
ARTIFACT_POLICY = parse_policy(
    """
version: 1
rules:
  - name: claims
    match: {action: "**"}
    when: "artifact.sub == request.runtime && environment.region == 'eu' && now > now"
    effect: proceed
""",
    source="t",
    targets=(),
)


@settings(max_examples=300, deadline=None)
@given(
    request=st.dictionaries(
        st.sampled_from(["action", "resource", "args", "runtime", "parent", "other"]),
        json_value,
    ),
    artifact=st.dictionaries(st.text(max_size=5), json_value, max_size=4),
    environment=st.dictionaries(st.text(max_size=5), json_value, max_size=4),
    now=st.integers(),
)
def test_arbitrary_input_never_raises_and_never_proceeds_by_accident(
    request: dict[str, Any], artifact: dict[str, Any], environment: dict[str, Any], now: int
) -> None:
    for policy in (FIXED, ARTIFACT_POLICY):
        result = policy.evaluate(
            request=request, artifact=artifact, environment=environment, now=now
        )
        if policy is ARTIFACT_POLICY:
            # "now > now" is never true: this policy can only deny.
            assert result.outcome is Outcome.DENY
        if result.outcome is Outcome.PROCEED:
            rule = policy.rule(result.rule or "")
            assert rule.effect is Outcome.PROCEED
            assert rule.applies_to(request["action"], request["resource"])
