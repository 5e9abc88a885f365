"""The attenuation algebra: a delegated artifact may only narrow what its parent allows.

Each check compares one aspect of a child with its parent and returns ``None`` when the
child is no wider, or a sentence saying where it widens. ``widening`` runs them all.
Together they make delegation monotone: whatever request a child admits, its parent
admits too (grants, constraints, audience, validity window, environment, governance,
uses, and attribution), so a chain can never grant more than its root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from execgate.scope import Grant

__all__ = [
    "att_widening",
    "audience_widening",
    "env_widening",
    "gov_widening",
    "grants_widening",
    "uses_widening",
    "widening",
    "window_widening",
]


def grants_widening(child: Sequence[Grant], parent: Sequence[Grant]) -> str | None:
    for grant in child:
        if not any(grant.within(outer) for outer in parent):
            return (
                f"grant {grant.action} on {grant.resource} is not covered by a parent grant"
                " with constraints at least as tight"
            )
    return None


def window_widening(child: tuple[int, int], parent: tuple[int, int]) -> str | None:
    (c_nbf, c_exp), (p_nbf, p_exp) = child, parent
    if c_nbf < p_nbf:
        return f"nbf {c_nbf} is before the parent's nbf {p_nbf}"
    if c_exp > p_exp:
        return f"exp {c_exp} is after the parent's exp {p_exp}"
    return None


def audience_widening(child: Sequence[str], parent: Sequence[str]) -> str | None:
    extra = sorted(set(child) - set(parent))
    return f"audience {extra} is not in the parent's audience" if extra else None


def env_widening(
    child: Mapping[str, Sequence[str]], parent: Mapping[str, Sequence[str]]
) -> str | None:
    for key, accepted in parent.items():
        if key not in child:
            return f"env condition {key!r} of the parent is dropped"
        extra = sorted(set(child[key]) - set(accepted))
        if extra:
            return f"env condition {key!r} accepts {extra}, which the parent does not"
    return None


def gov_widening(child: Mapping[str, str], parent: Mapping[str, str]) -> str | None:
    for key, value in parent.items():
        if child.get(key) != value:
            return f"governance {key!r} of the parent is dropped or changed"
    return None


def att_widening(child: Mapping[str, str], parent: Mapping[str, str]) -> str | None:
    """Attribution (on whose behalf, requested by whom) is inherited: a delegator may add
    to it, never rewrite it, or a policy reading it could be told anything."""
    for key, value in parent.items():
        if child.get(key) != value:
            return f"attribution {key!r} of the parent is dropped or changed"
    return None


def uses_widening(child: int | None, parent: int | None) -> str | None:
    if parent is None:
        return None
    if child is None or child > parent:
        return f"uses {child} exceeds the parent's {parent}"
    return None


def widening(
    *,
    child_grants: Sequence[Grant],
    parent_grants: Sequence[Grant],
    child_window: tuple[int, int],
    parent_window: tuple[int, int],
    child_audience: Sequence[str],
    parent_audience: Sequence[str],
    child_env: Mapping[str, Sequence[str]],
    parent_env: Mapping[str, Sequence[str]],
    child_gov: Mapping[str, str],
    parent_gov: Mapping[str, str],
    child_uses: int | None,
    parent_uses: int | None,
    child_att: Mapping[str, str] | None = None,
    parent_att: Mapping[str, str] | None = None,
) -> str | None:
    """The first way the child is wider than its parent, or ``None``."""
    return (
        grants_widening(child_grants, parent_grants)
        or window_widening(child_window, parent_window)
        or audience_widening(child_audience, parent_audience)
        or env_widening(child_env, parent_env)
        or gov_widening(child_gov, parent_gov)
        or uses_widening(child_uses, parent_uses)
        or att_widening(child_att or {}, parent_att or {})
    )
