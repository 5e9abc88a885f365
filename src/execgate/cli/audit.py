"""``execgate audit checkpoint|prove|export|tail|show|reset-head``: the home's audit log.

These read the log from the home's store and sign with its node key; they do not load
the policy or the trust store, so a log stays exportable when the gateway itself would
not start. Offline verification (``audit verify``, ``audit verify-proof``) is in
``verify.py`` and needs neither a home nor a store.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, cast

from execgate.cli._common import (
    Commands,
    home_of,
    json_text,
    log_index,
    note,
    out,
    positive,
    refuse_to_replace,
    write_text,
)
from execgate.cli._records import parse_record, summary
from execgate.errors import EvidenceError, UsageError
from execgate.keyfile import atomic_file

if TYPE_CHECKING:
    from execgate.audit.log import AuditLog
    from execgate.home import GatewayConfig
    from execgate.store.sqlite import SQLiteStore

__all__ = ["register"]

_TAIL_BATCH: Final = 64  # entries read at a time: one holds up to about 1 MiB


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[GatewayConfig, SQLiteStore]]:
    from execgate.home import load_config
    from execgate.store.sqlite import SQLiteStore

    config = load_config(home_of(args))
    store = SQLiteStore(config.store)
    try:
        yield config, store
    finally:
        store.close()


@contextlib.contextmanager
def _log(args: argparse.Namespace) -> Iterator[AuditLog]:
    """The home's log with its node key (which signs checkpoints)."""
    from execgate.audit.log import AuditLog
    from execgate.keyfile import read_private_key

    with _store(args) as (config, store):
        key = read_private_key(config.node_key)
        yield AuditLog(store, origin=config.gateway_id, key=key)


def _checkpoint(args: argparse.Namespace) -> int:
    from execgate.audit.checkpoint import unverified_checkpoint

    with _log(args) as log:
        signed = log.checkpoint(now=int(time.time()))
        vkey = log.verifier.vkey()
    write_text(signed, args.out, "a checkpoint")
    size = unverified_checkpoint(signed).size
    note(f"checkpoint of log {log.origin} at size {size}")
    note(f"node key (vkey): {vkey}")
    note("keep both to check exports later: audit verify EXPORT --key VKEY --checkpoint FILE")
    return 0


def _prove(args: argparse.Namespace) -> int:
    with _log(args) as log:
        size = log.size()
        if args.index >= size:
            raise UsageError(
                f"index {args.index} is not in the log of {log.origin} (size {size});"
                " 'execgate audit tail' lists the last entries"
            )
        evidence = log.evidence(args.index, now=int(time.time()))
    write_text(evidence, args.out, "evidence")
    return 0


def _export(args: argparse.Namespace) -> int:
    with _log(args) as log:
        if args.file == "-":
            size = log.export(sys.stdout, now=int(time.time()))
        else:
            refuse_to_replace(args.file, "an export")
            if Path(args.file).is_dir():
                raise UsageError(f"{args.file} is a directory; give the export a file name")
            with atomic_file(Path(args.file), mode=0o600, text=True) as fh:
                size = log.export(fh, now=int(time.time()))
        count = sum(1 for s, _ in log.store.checkpoints() if s <= size)
    where = "" if args.file == "-" else f"wrote {args.file}: "
    note(f"{where}{size} entries and {count} signed checkpoints of log {log.origin}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    with _store(args) as (config, store):
        size = store.size()
        if size == 0:
            note(f"the audit log of {config.gateway_id} is empty")
        # Printed as they are read, a batch at a time.
        for start in range(max(0, size - args.n), size, _TAIL_BATCH):
            for item in store.entries(start, min(size, start + _TAIL_BATCH)):
                kind, status, decision_id, what = summary(parse_record(item.entry))
                out(f"{item.index:>6}  {kind:<8}  {status:<11}  {decision_id}  {what}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _store(args) as (config, store):
        found = store.entries(args.index, args.index + 1)
        size = store.size()
    if not found:
        raise UsageError(
            f"index {args.index} is not in the log of {config.gateway_id} (size {size});"
            " 'execgate audit tail' lists the last entries"
        )
    record = parse_record(found[0].entry)
    if record is None:
        raise UsageError(
            f"log entry {args.index} is not a JSON record; the log is damaged"
            " (run 'execgate audit export' and 'execgate audit verify' to find out how)"
        )
    out(json_text(record))
    return 0


def _last_checkpointed(export: IO[str]) -> Iterator[str]:
    """The lines of ``export`` up to its last checkpoint: what signatures cover. Entries
    after it are the node's own since it last signed (a node refuses to sign while its
    head is missing or damaged), checked by nothing but the store itself."""
    export.seek(0)
    last = 0
    for line in iter(export.readline, ""):
        if line.startswith('{"checkpoint"'):
            last = export.tell()
    if last == 0:
        raise EvidenceError(
            "the store holds no signed checkpoint to check its log against; only"
            " --unverified makes its head"
        )
    export.seek(0)
    while export.tell() < last and (line := export.readline()):
        yield line


def _reset_head(args: argparse.Namespace) -> int:
    """Make the store's committed tree head anew, once its log is shown whole: every
    entry up to the newest stored checkpoint recomputed, every stored checkpoint verified
    with ``--key`` (kept outside the home), and ``--checkpoint`` (also kept outside)
    found in the log unchanged. ``--unverified`` takes the store as it is."""
    from execgate.audit.log import verify_export
    from execgate.cli.verify import checkpoint_arg, key_arg, not_verified

    if args.unverified == (args.key is not None or args.checkpoint is not None):
        raise UsageError(
            "give --key PUB and --checkpoint FILE (both kept outside the home), or"
            " --unverified to take the store as it is"
        )
    if not args.unverified and (args.key is None or args.checkpoint is None):
        raise UsageError(
            "give both --key PUB and --checkpoint FILE: a checkpoint kept outside the home"
            " is what shows the store lost no entry it covers"
        )
    with _log(args) as log:
        verified = None
        if not args.unverified:
            key = key_arg(args.key)
            try:
                checkpoint = checkpoint_arg(args.checkpoint)
                with tempfile.TemporaryFile("w+", encoding="utf-8") as export:
                    log.export(export, now=int(time.time()))
                    report = verify_export(_last_checkpointed(export), key, checkpoint=checkpoint)
            except EvidenceError as exc:
                return not_verified(exc)
            verified = (report.entries, report.root)
            note(
                f"VERIFIED: log {log.origin}, {report.entries} entries and {report.checkpoints}"
                f" signed checkpoints; --checkpoint {args.checkpoint} is in it unchanged"
            )
        head = cast("SQLiteStore", log.store).remake_head(verified)
    after = head.size - (0 if verified is None else verified[0])
    note(
        f"made the committed tree head anew: {head.size} entries, {head.writes} other"
        " writes" + (f" ({after} entries after the newest checkpoint, unchecked)" if after else "")
    )
    note(
        "revocations and purges are not in the log, so nothing shows whether the store lost"
        " any: revoke again what was revoked since the store's last good copy"
    )
    return 0


def register(commands: Commands) -> Commands:
    """Add the ``audit`` group and its live-log commands; return the group."""
    s = commands.add("audit", "the audit log: checkpoints, proofs, export and verification")
    group = Commands(
        s.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND"),
        commands.common,
    )
    q = group.add("checkpoint", "sign and print a checkpoint of the log (and the node's vkey)")
    q.add_argument("-o", "--out", help="write the signed checkpoint to this file")
    q.set_defaults(func=_checkpoint)

    q = group.add("prove", "write offline evidence (C2SP tlog-proof) for one log entry")
    q.add_argument("index", type=log_index, metavar="INDEX", help="the entry's log index")
    q.add_argument("-o", "--out", help="write the evidence to this file (default: stdout)")
    q.set_defaults(func=_prove)

    q = group.add("export", "write every entry and checkpoint as JSON lines, for audit verify")
    q.add_argument("file", metavar="FILE", help="the export file to write ('-' for stdout)")
    q.set_defaults(func=_export)

    q = group.add("tail", "one line for each of the last N log records")
    q.add_argument("-n", type=positive, default=10, help="how many (default 10)")
    q.set_defaults(func=_tail)

    q = group.add("show", "print one log record as JSON")
    q.add_argument("index", type=log_index, metavar="INDEX", help="the record's log index")
    q.set_defaults(func=_show)

    q = group.add(
        "reset-head",
        "make the store's committed tree head anew (missing or damaged) once the log verifies",
    )
    q.add_argument(
        "--key", metavar="PUB", help="the node's public key, kept outside the home (.pub.jwk/vkey)"
    )
    q.add_argument("--checkpoint", metavar="NOTE_FILE", help="a checkpoint kept outside the home")
    q.add_argument(
        "--unverified", action="store_true", help="take the store as it is, checking nothing"
    )
    q.set_defaults(func=_reset_head)
    return group
