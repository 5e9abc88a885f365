"""``execgate audit verify`` and ``execgate audit verify-proof``: offline verification.

Both need only the log's public key (``--key``: the node's ``.pub.jwk`` file, or the C2SP
verifier key ``audit checkpoint`` prints), never a home or a store. Exit 0 means
VERIFIED; anything that does not verify, however malformed, is exit 1 with one line
``execgate: NOT VERIFIED: WHY``; a missing file or a bad flag is exit 2.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from execgate.cli._common import (
    EXIT_NOT_VERIFIED,
    Commands,
    TooLarge,
    note,
    one_line,
    out,
    read_bytes,
    shown,
)
from execgate.cli._records import cell, parse_record
from execgate.errors import EvidenceError, UsageError

if TYPE_CHECKING:
    from execgate.audit.note import Verifier
    from execgate.jose import PublicKey

__all__ = ["checkpoint_arg", "key_arg", "not_verified", "register"]

_MAX_KEY: Final = 64 * 1024
_MAX_NOTE: Final = 64 * 1024
# An entry is a record of at most ~1 MiB of request, base64-encoded in one line.
_MAX_LINE: Final = 4 * 1024 * 1024
_MAX_EVIDENCE: Final = _MAX_LINE


def key_arg(value: str) -> PublicKey | Verifier:
    """``--key``: a public JWK file, a file holding a verifier key, or a verifier key."""
    from execgate.audit.note import Verifier
    from execgate.keyfile import NotRegular, read_public_key, read_regular, refuse_shared_writes

    path = Path(value)
    try:
        exists = path.exists()
    except OSError:  # e.g. a name too long to be a file
        exists = False
    if not exists and "+" in value:
        try:
            return Verifier.from_vkey(value.strip())
        except ValueError as exc:
            raise UsageError(
                f"--key {shown(value)} is not a verifier key ({exc}); give the vkey"
                " 'execgate audit checkpoint' prints, or the node's .pub.jwk file"
            ) from exc
    if not exists:  # never echo what may be a key pasted inline
        raise UsageError(
            f"--key file {shown(value)} does not exist; give the node's public key file"
            " (HOME/keys/node.pub.jwk) or its vkey"
        )
    try:  # a regular file (a FIFO would hang the read), that not any user may rewrite
        data, mode = read_regular(path, limit=_MAX_KEY)
    except NotRegular as exc:
        raise UsageError(f"--key file {value} {exc}, not a key file") from exc
    except OSError as exc:
        raise UsageError(f"cannot read --key file {value}: {exc.strerror or exc}") from exc
    if data.lstrip().startswith(b"{"):
        return read_public_key(path)
    refuse_shared_writes(path, mode, "--key file")
    try:
        return Verifier.from_vkey(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(
            f"--key file {value} holds neither a public JWK nor a verifier key;"
            " give the node's .pub.jwk (HOME/keys/node.pub.jwk) or its vkey"
        ) from exc


def checkpoint_arg(path: str) -> str:
    """The text of ``--checkpoint`` file ``path``; ``EvidenceError`` when it cannot be a
    checkpoint (too large, not UTF-8), ``UsageError`` when it cannot be read."""
    try:
        raw = read_bytes(path, "--checkpoint", limit=_MAX_NOTE)
    except TooLarge as exc:
        raise EvidenceError(str(exc)) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EvidenceError(f"--checkpoint {path} is not UTF-8") from None


def not_verified(exc: EvidenceError) -> int:
    note(f"execgate: NOT VERIFIED: {one_line(str(exc))}")
    return EXIT_NOT_VERIFIED


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class _Lines:
    """An export's lines as text, each checked for size and UTF-8; remembers line 1."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.first = ""

    def __iter__(self) -> Iterator[str]:
        lineno = 0
        while raw := self._fh.readline(_MAX_LINE + 1):
            lineno += 1
            if len(raw) > _MAX_LINE:
                raise EvidenceError(f"line {lineno} is longer than {_MAX_LINE} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EvidenceError(f"line {lineno} is not UTF-8 text") from exc
            if lineno == 1:
                self.first = line
            yield line


def _verify(args: argparse.Namespace) -> int:
    from execgate.audit.log import verify_export

    key = key_arg(args.key)
    checkpoint = None
    if args.checkpoint is not None:
        try:
            checkpoint = checkpoint_arg(args.checkpoint)
        except EvidenceError as exc:
            return not_verified(exc)
    try:
        with contextlib.ExitStack() as stack:
            fh = (
                sys.stdin.buffer if args.file == "-" else stack.enter_context(open(args.file, "rb"))
            )
            lines = _Lines(fh)
            report = verify_export(lines, key, checkpoint=checkpoint)
    except FileNotFoundError as exc:
        raise UsageError(f"export file {args.file} does not exist") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"export file {args.file} is a directory, not a file") from exc
    except EvidenceError as exc:
        return not_verified(exc)
    origin = json.loads(lines.first)["origin"]
    out(
        f"VERIFIED: log {cell(origin)}, {report.entries} entries,"
        f" {report.checkpoints} signed checkpoints"
    )
    out(f"  root    {_b64(report.root)} (size {report.entries})")
    if checkpoint is not None:
        from execgate.audit.checkpoint import unverified_checkpoint

        kept = unverified_checkpoint(checkpoint)  # verified above
        out(f"  holds the log of --checkpoint {args.checkpoint} (size {kept.size}) unchanged")
    return 0


def _verify_proof(args: argparse.Namespace) -> int:
    from execgate.audit.checkpoint import parse_tlog_proof
    from execgate.audit.log import verify_evidence

    key = key_arg(args.key)
    try:
        evidence = read_bytes(args.evidence, "evidence", limit=_MAX_EVIDENCE)
    except TooLarge as exc:
        return not_verified(EvidenceError(str(exc)))
    try:
        checkpoint, entry = verify_evidence(evidence, key)
    except EvidenceError as exc:
        return not_verified(exc)
    index = parse_tlog_proof(evidence).index
    record = parse_record(entry)
    out(f"VERIFIED: entry {index} is in log {cell(checkpoint.origin)}")
    out(f"  checkpoint   size {checkpoint.size}, root {_b64(checkpoint.root)}")
    if not isinstance(record, dict):
        out(f"  entry        {len(entry)} bytes, not a JSON record")
        return 0
    out(f"  kind         {cell(record.get('kind'))}")
    out(f"  decision id  {cell(record.get('decision_id'))}")
    if record.get("kind") == "outcome":
        out(f"  status       {cell(record.get('status'))}")
    else:
        out(f"  outcome      {cell(record.get('outcome'))}")
        request = record.get("request")
        if isinstance(request, dict):
            action, resource = cell(request.get("action")), cell(request.get("resource"))
            out(f"  request      {action} {resource}")
    return 0


def register(group: Commands) -> None:
    key_help = "the log's public key: a .pub.jwk file (HOME/keys/node.pub.jwk) or the vkey"
    q = group.add(
        "verify", "verify an export offline: every entry, root and checkpoint (exit 1 if not)"
    )
    q.add_argument("file", metavar="FILE", help="an export ('audit export FILE'), '-' for stdin")
    q.add_argument("--key", required=True, metavar="PUB", help=key_help)
    q.add_argument(
        "--checkpoint",
        metavar="NOTE_FILE",
        help="a signed checkpoint kept from the live log: the export must include it",
    )
    q.set_defaults(func=_verify)

    q = group.add("verify-proof", "verify evidence from 'audit prove' offline (exit 1 if not)")
    q.add_argument("evidence", metavar="EVIDENCE", help="the evidence file ('-' for stdin)")
    q.add_argument("--key", required=True, metavar="PUB", help=key_help)
    q.set_defaults(func=_verify_proof)
