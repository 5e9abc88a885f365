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

from execgate.cli._common import Commands, home_of, note, optional_config, out, policy_error
from execgate.cli._records import cell
from execgate.cli._remote import add_remote, admin_call, error_of
from execgate.errors import PolicyError

__all__ = ["register"]


def _policy(args: argparse.Namespace) -> int:
    from execgate.approvals import check_pauses
    from execgate.policy import load_cases, load_policy, run_cases
    from execgate.trust import TrustStore

    home = home_of(args)
    config = optional_config(home)
    targets = set(config.targets) if config else set()
    targets.update(args.target or ())
    try:
        policy = load_policy(Path(args.file), targets=targets)
        if config is not None:  # the home's approvers must be able to approve its pauses
            check_pauses(policy, TrustStore.load(config.trust))
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
    status, answer = admin_call(args, "POST", _RELOAD_PATH)
    if status == 200 and isinstance(answer, dict) and answer.get("reloaded") is True:
        # The gateway's text, as sent (a proxy's, whoever answered): escaped like any.
        now, was = (cell(answer.get(k)) for k in ("policy_hash", "previous_policy_hash"))
        out(
            f"reloaded: policy {now} is in force"
            f" ({'unchanged' if now == was else f'was {was}'};"
            f" workers: {cell(answer.get('workers'))})"
        )
        return 0
    refusal = error_of(status, answer)
    note(f"execgate: error: policy reload refused by the gateway: {refusal}")
    return 1 if refusal.code == "policy.reload_refused" else 2


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
    add_remote(q, role="reload", required=True)
    q.set_defaults(func=_reload)
