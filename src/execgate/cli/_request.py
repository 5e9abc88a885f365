"""A decision request from the command line: a request file plus token flags.

The file holds the wire shape ``{request, artifact, proof, attestation}`` or just a bare
request ``{action, resource, args, runtime, parent}``; ``--artifact``/``--attestation``
fill the fields it leaves empty. ``decide`` and ``proof`` both read requests this way.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from execgate.cli._common import read_bytes, token_arg
from execgate.errors import JoseError, RequestError, UsageError


def load_submission(args: argparse.Namespace) -> dict[str, Any]:
    """The decision request: a file with the wire shape, or a bare request, plus flags."""
    from execgate.jose import loads_strict
    from execgate.submission import Submission

    where = "stdin" if args.request == "-" else f"request file {args.request}"
    data = read_bytes(args.request, "request")
    try:
        doc = loads_strict(data)
    except JoseError as exc:
        detail = exc.detail.removeprefix("invalid JSON: ")
        raise UsageError(f"{where} is not valid JSON ({detail})") from exc
    if not isinstance(doc, dict):
        raise UsageError(
            f"{where} must hold a JSON object: a request {{action, resource, args, runtime,"
            " parent} or a decision request {request, artifact, proof, attestation}"
        )
    if "request" not in doc:  # a bare request: {action, resource, args, runtime, parent}
        doc = {"request": doc}
    try:  # the request alone, as the gateway will read it (limits, canonical form)
        Submission.from_json({"request": doc["request"]})
    except RequestError as exc:
        raise UsageError(f"{where}: {exc}") from exc
    for name in ("artifact", "proof", "attestation"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise UsageError(f"{where}: '{name}' must be a compact JWS string or null")
    for name in ("artifact", "attestation"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if doc.get(name) is not None:
            raise UsageError(f"{where} already holds '{name}'; drop it there or drop --{name}")
        doc[name] = token_arg(value, f"--{name}")
    return doc


def sign_proof(doc: dict[str, Any], key_file: str, audience: str) -> str:
    from execgate.keyfile import read_private_key
    from execgate.model import Request
    from execgate.proofs import Runtime

    request = Request.from_json(doc["request"])
    runtime = Runtime(request.runtime, read_private_key(Path(key_file)))
    return runtime.proof(request, doc["artifact"], audience=audience, now=int(time.time()))
