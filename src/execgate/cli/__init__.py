"""The ``execgate`` command.

Exit codes:

    0  proceed, VERIFIED (``audit verify``, ``audit verify-proof``), and every other
       command that did what was asked (a recorded ``approvals deny`` too)
    1  deny (``decide``), a failing case (``policy test``), NOT VERIFIED, or a review
       the gateway refused (``approvals approve|deny``: not in a group the approval
       needs, a principal of the request, already reviewed, the approval closed)
    2  usage or configuration error: a bad flag, a missing or corrupt file (a key file
       too), a home that does not load, an id the gateway does not know, an approver key
       that is not in the trust store. Nothing was decided and nothing was written.
       Also: standard output could not be written (a full disk, say); then what the
       command did stands, and the message says so (a decision is in the log).
    3  pause        4  reroute
    5  fail_closed: the gateway could not decide (or the state store is unavailable)

``inspect`` exits 0 whether or not the token verified: its first line (``verified`` in
``--json``) says VERIFIED or UNVERIFIED and why.

Errors are one line on stderr, ``execgate: error: WHAT; WHAT TO DO`` (for evidence that
does not verify, ``execgate: NOT VERIFIED: WHY``); a traceback means a bug in execgate. No
message ever quotes a key file's content, and private keys are never printed: only their
paths and public thumbprints.

One module per group of commands: ``keys`` (init, keygen), ``issue``, ``delegate``,
``tokens`` (inspect, proof, attest), ``decide`` (decide, outcome, revoke), ``policy``,
``audit`` (the home's log), ``verify`` (offline verification), ``lineage`` (the tree
of executions in the home's log) and ``approvals`` (paused requests: list, show, approve,
deny) and ``serve`` (the HTTP decision API). Each adds its own subcommands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

try:
    from execgate.cli import (
        admin,
        approvals,
        audit,
        decide,
        delegate,
        issue,
        keys,
        lineage,
        policy,
        serve,
        tokens,
        verify,
    )
    from execgate.cli._common import (
        EXIT_CODES,
        EXIT_USAGE,
        Commands,
        StdoutError,
        flush_stdout,
        note,
        one_line,
        out,
    )
    from execgate.errors import ExecgateError, StoreError
    from execgate.model import Outcome
except KeyboardInterrupt:  # Ctrl-C while the command starts: quietly, as main() does
    raise SystemExit(130) from None

__all__ = ["EXIT_CODES", "EXIT_USAGE", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"execgate: error: {message} (see '{self.prog} --help')\n")


class _Warnings(logging.Handler):
    """execgate's log warnings (e.g. a notification hook that failed) as one line each,
    ``execgate: warning: ...``, on the stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"execgate: warning: {one_line(record.getMessage())}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


def _log_warnings() -> None:
    logger = logging.getLogger("execgate")
    if not any(isinstance(h, _Warnings) for h in logger.handlers):
        logger.addHandler(_Warnings(logging.WARNING))


def _drain_notifications() -> None:
    notify = sys.modules.get("execgate.notify")  # only if a gateway with hooks was opened
    if notify is not None:
        notify.drain()


def _demo(args: argparse.Namespace) -> int:
    from execgate.demo import run_demo

    return run_demo(out)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="execgate", description="A fail-closed execution gateway.")
    home_help = "gateway home directory (default: $EXECGATE_HOME or ./.execgate)"
    p.add_argument("--home", help=home_help)
    # Also accepted after the command (execgate decide --home H ...).
    common = _Parser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS, help=home_help)
    commands = Commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    keys.register(commands)
    issue.register(commands)
    delegate.register(commands)
    tokens.register(commands)
    decide.register(commands)
    policy.register(commands)
    verify.register(audit.register(commands))
    lineage.register(commands)
    approvals.register(commands)
    serve.register(commands)
    admin.register(commands)
    commands.add("demo", "show every outcome on a temporary gateway").set_defaults(func=_demo)
    return p


# Options whose values are opaque ids that may begin with '-' (a base64url key id or
# jti does one time in 64): argparse would read such a value as an option, so the pair
# is joined as --opt=VALUE before parsing.
_OPAQUE_OPTIONS = frozenset({"--kid", "--jti"})


def _join_opaque(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _OPAQUE_OPTIONS and i + 1 < len(argv) and argv[i + 1] != "--":
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = _join_opaque(sys.argv[1:] if argv is None else [str(a) for a in argv])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    _log_warnings()
    try:
        code = func(args)
        # Print what was decided first; then let approval notifications still in flight
        # finish (each bounded by its timeout), as the process would at exit anyway.
        flush_stdout()
        _drain_notifications()
        return code
    except StoreError as exc:
        note(
            f"execgate: error: the state store is unavailable (fail closed): {one_line(str(exc))};"
            " check the [gateway] store file and its directory (space, permissions; a damaged"
            " file is restored from a backup): every decision fails closed until it opens"
        )
        return EXIT_CODES[Outcome.FAIL_CLOSED]
    except ExecgateError as exc:
        note(f"execgate: error: {one_line(str(exc))}")
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except StdoutError as exc:
        note(
            f"execgate: error: cannot write to standard output: {exc}; what the command"
            " did stands (a decision made is in the log: execgate audit tail shows it)"
        )
        return EXIT_USAGE
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        note(f"execgate: error: {exc.strerror or exc}{where}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
