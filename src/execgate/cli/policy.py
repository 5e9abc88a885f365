"""``execgate policy check|hash|test``: validate a policy file, print its hash, or run
table-driven cases against it (PASS/FAIL per case, exit 1 when any fails).

``execgate policy reload`` asks a running gateway (``execgate serve``) to load its
policy file again, with a fresh single-use admin token signed by ``--admin-key`` (an
``[[admin]]`` holding the ``reload`` role): every worker then decides under the new
policy. A refused file (invalid, unreadable) leaves the old policy in force; the command
prints the gateway's reason and exits 1 (2 when the call itself could not be made or was
not let in)."""

from __future__ import annotations

import argparse
from pathlib import Path

from execgate.cli._common import (
    Commands,
    home_of,
    note,
    one_line,
    optional_config,
    out,
    policy_error,
)
from execgate.cli.admin import add_identity
from execgate.errors import PolicyError

__all__ = ["register"]


def _policy(args: argparse.Namespace) -> int:
    from execgate.policy import load_cases, load_policy, run_cases

    home = home_of(args)
    config = optional_config(home)
    targets = set(config.targets) if config else set()
    targets.update(args.target or ())
    try:
        policy = load_policy(Path(args.file), targets=targets)
    except PolicyError as exc:
        hint = ""
        if config is None and "reroute target" in str(exc):
            hint = f"; there is no gateway home at {home}: name reroute targets with --target"
        raise policy_error(args.file, exc, hint) from exc
    if args.policy_command == "hash":
        out(policy.hash)
        return 0
    if args.policy_command == "check":
        out(f"ok: {args.file}: {len(policy.rules)} rules, {policy.hash}")
        return 0
    try:
        cases = load_cases(Path(args.cases))
    except PolicyError as exc:
        raise policy_error(args.cases, exc) from exc
    results = run_cases(policy, cases)
    failed = [r for r in results if not r.passed]
    for result in results:
        out(f"PASS  {result.name}" if result.passed else f"FAIL  {result.name}: {result.message}")
    out(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


_RELOAD_PATH = "/v1/admin/policy/reload"


def _reload(args: argparse.Namespace) -> int:
    from execgate.cli.admin import call, mint

    token = mint(
        key_path=args.admin_key,
        home=home_of(args),
        method="POST",
        path=_RELOAD_PATH,
        admin=args.admin,
        audience=args.audience,
    )
    status, answer = call(args.url.rstrip("/") + _RELOAD_PATH, "POST", token)
    if status == 200 and isinstance(answer, dict) and answer.get("reloaded") is True:
        out(
            f"reloaded: policy {answer.get('policy_hash')} is in force"
            f" (was {answer.get('previous_policy_hash')}; workers: {answer.get('workers')})"
        )
        return 0
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = f"{code}: {message}" if code else f"HTTP {status} without an error body"
    note(f"execgate: error: policy reload refused by the gateway: {one_line(str(text))}")
    return 1 if code == "policy.reload_refused" else 2


def register(commands: Commands) -> None:
    s = commands.add("policy", "check, hash or test a policy file")
    psub = s.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    policy = Commands(psub, commands.common)
    target_help = "an allowed reroute target, added to the home's (repeatable)"
    for name, text in (("check", "validate a policy"), ("hash", "print the policy hash")):
        q = policy.add(name, text)
        q.add_argument("file")
        q.add_argument("--target", action="append", help=target_help)
        q.set_defaults(func=_policy)
    text = "run table-driven cases against a policy (PASS/FAIL; exit 1 on a failure)"
    q = policy.add("test", text)
    q.add_argument("file")
    q.add_argument("cases", help="cases YAML (see execgate.policy.cases)")
    q.add_argument("--target", action="append", help=target_help)
    q.set_defaults(func=_policy)

    q = policy.add("reload", "make a running gateway load its policy file again (admin)")
    q.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="the gateway (default: http://127.0.0.1:8080)",
    )
    q.add_argument("--admin-key", required=True, help="your admin PRIVATE key file (role 'reload')")
    add_identity(q)
    q.set_defaults(func=_reload)
