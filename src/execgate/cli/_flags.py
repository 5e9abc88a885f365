"""The flags that describe what a token grants or claims: KEY=VALUE pairs, constraints
(ARG.BOUND=VALUE), environment conditions and a whole ``--scope``.

Each is checked here with a message naming the flag; the token's own parser stays the
authority on what it accepts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any, Final

from execgate.cli._common import read_bytes
from execgate.errors import JoseError, UsageError

_BOUNDS: Final = ("max", "min", "enum", "pattern", "prefix")
# Hints only: issue_artifact is the authority on which keys these claims accept.
GOV_KEYS: Final = frozenset({"policy", "ticket", "purpose", "classification"})
ATT_KEYS: Final = frozenset({"on_behalf_of", "requested_by", "reason"})


def pairs(
    items: Sequence[str] | None,
    flag: str,
    example: str,
    allowed: frozenset[str] | None = None,
) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value:
            raise UsageError(f"{flag} {item!r} must look like KEY=VALUE, e.g. {flag} {example}")
        if key != key.strip():
            raise UsageError(f"{flag} {item!r}: the key has surrounding spaces")
        if allowed is not None and key not in allowed:
            raise UsageError(
                f"{flag} {item!r}: unknown key {key!r}; use one of {', '.join(sorted(allowed))}"
            )
        if key in found:
            raise UsageError(f"{flag} {key} is given twice; give each key once")
        found[key] = value
    return found


def _number(item: str, text: str) -> int | float:
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"--constraint {item!r}: {text!r} is not a finite number")
    return value


def _constraints(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in items or ():
        target, sep, value = item.partition("=")
        arg, dot, bound = target.rpartition(".")
        if not sep or not dot or not arg or not value:
            raise UsageError(
                f"--constraint {item!r} must look like ARG.BOUND=VALUE,"
                " e.g. amount.max=100 or currency.enum=EUR,USD"
            )
        if bound not in _BOUNDS:
            raise UsageError(
                f"--constraint {item!r}: unknown bound {bound!r}; use one of {', '.join(_BOUNDS)}"
            )
        bounds = found.setdefault(arg, {})
        if bound in bounds:
            raise UsageError(f"--constraint {arg}.{bound} is given twice; give each bound once")
        if bound in ("max", "min"):
            bounds[bound] = _number(item, value)
        elif bound == "enum":
            options = value.split(",")
            if not all(options):
                raise UsageError(f"--constraint {item!r}: an enum lists values like A,B,C")
            bounds[bound] = options
        else:
            bounds[bound] = value
    return found


def scope(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The grants to issue, checked with the same parser verification uses."""
    from execgate.scope import parse_grants

    grants: Any
    if args.scope is not None:
        if args.action or args.resource or args.constraint:
            raise UsageError(
                "give the grant either with --scope or with --action/--resource/--constraint,"
                " not both"
            )
        if args.scope.startswith("@"):
            source = f"--scope file {args.scope[1:]}"
            data = read_bytes(args.scope[1:], "--scope")
        else:
            source, data = "--scope", args.scope.encode()
        from execgate.jose import loads_strict

        try:
            grants = loads_strict(data)
        except JoseError as exc:
            detail = exc.detail.removeprefix("invalid JSON: ")
            raise UsageError(f"{source} is not valid JSON ({detail})") from exc
        if not isinstance(grants, list) or not all(isinstance(g, dict) for g in grants):
            raise UsageError(
                f"{source} must be a JSON list of grants, e.g."
                ' [{"action": "payments.*", "resource": "acct:**"}]'
            )
    elif args.action and args.resource:
        grant: dict[str, Any] = {"action": args.action, "resource": args.resource}
        constraints = _constraints(args.constraint)
        if constraints:
            grant["constraints"] = constraints
        grants = [grant]
    else:
        raise UsageError(
            "give the grant with --action and --resource (and any --constraint), or --scope JSON"
        )
    try:
        parse_grants(grants)
    except ValueError as exc:
        raise UsageError(f"invalid grant: {exc}") from exc
    result: list[dict[str, Any]] = grants
    return result


def env(items: Sequence[str] | None) -> dict[str, str | list[str]]:
    given = pairs(items, "--env", "region=eu-west-1|eu-central-1")
    found: dict[str, str | list[str]] = {}
    for key, value in given.items():
        options = value.split("|")
        if not all(options):
            raise UsageError(f"--env {key}={value}: list accepted values like A|B")
        found[key] = options if len(options) > 1 else value
    return found
