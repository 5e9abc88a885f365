"""Commands that act on a running gateway (``execgate serve``) instead of a local home.

Each call carries a fresh admin token (``execgate.cli.admin.mint``): signed with
``--admin-key``, bound to the call's method, path, query and body, good once. A command
mints one token per request it sends, never reuses one, and never writes one anywhere.

The flags are the same for every such command (``add_remote``): ``--url`` names the
gateway, ``--admin-key`` the admin's private key file, and ``--admin``/``--audience``
name the admin and the gateway id when the local home cannot (no home on this machine,
or a home of another gateway). The admin key only lets the call in; what the call may do
is up to that admin's roles in the gateway's trust store.

What comes back is read strictly: an answer that is not the JSON object a route
promises is an error (exit 2), never taken for success.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from execgate.cli._common import home_of, one_line, optional_config
from execgate.errors import ConfigError, UsageError

__all__ = [
    "DEFAULT_URL",
    "Refusal",
    "add_remote",
    "admin_call",
    "error_of",
    "gateway_url",
    "is_remote",
]

DEFAULT_URL: Final = "http://127.0.0.1:8080"


def gateway_url(text: str) -> str:
    """``--url``: an http:// or https:// URL with a host and a valid port, and no user
    name or password (a call is signed with ``--admin-key``; a password would only be
    sent in the clear, and echoed in errors)."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port past 65535 or not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"not an http:// or https:// URL with a host and a valid port (e.g. {DEFAULT_URL})"
        )
    if "@" in parts.netloc:
        raise argparse.ArgumentTypeError(
            "must not hold a user name or password: calls are signed with --admin-key"
        )
    return text


def add_remote(p: argparse.ArgumentParser, *, role: str, required: bool) -> None:
    """``--url``, ``--admin-key``, ``--admin``, ``--audience``. With ``required`` the
    command only ever calls a gateway (``--url`` defaults to ``DEFAULT_URL``); without,
    ``--url`` switches it from the local home to a running gateway."""
    from execgate.cli.admin import add_identity

    if required:
        p.add_argument(
            "--url",
            type=gateway_url,
            default=DEFAULT_URL,
            help=f"the gateway (default: {DEFAULT_URL})",
        )
    else:
        p.add_argument(
            "--url",
            type=gateway_url,
            help="a running gateway (execgate serve) to call instead of the local home",
        )
    p.add_argument(
        "--admin-key",
        required=required,
        help=f"your admin PRIVATE key file (an [[admin]] with the role '{role}')"
        + ("" if required else "; needed with --url"),
    )
    add_identity(p)


def is_remote(args: argparse.Namespace) -> bool:
    """Whether the command calls a gateway (``--url``); the admin flags need ``--url``,
    and ``--url`` needs ``--admin-key``."""
    if args.url is None:
        given = [
            flag
            for flag, value in (
                ("--admin-key", args.admin_key),
                ("--admin", args.admin),
                ("--audience", args.audience),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)} is for a running gateway: give its --url as well")
        return False
    if args.admin_key is None:
        raise UsageError(
            f"--url {args.url} needs --admin-key KEYFILE: every call to a gateway is signed"
            " by an admin ('execgate admin token --help' says how admins are listed)"
        )
    return True


def admin_call(
    args: argparse.Namespace, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One call ``method path`` to ``args.url`` with a fresh admin token: (HTTP status,
    the JSON answer, or None when the answer is not JSON)."""
    from execgate.cli.admin import call, mint

    home = home_of(args)
    if (args.admin is None or args.audience is None) and optional_config(home) is None:
        raise UsageError(
            f"there is no gateway home at {home} to say who the admin is and which gateway"
            " the call is for; name them with --admin ID --audience GATEWAY_ID"
        )
    data = None if body is None else json.dumps(body).encode("utf-8")  # what the token binds
    token = mint(
        key_path=args.admin_key,
        home=home,
        method=method,
        path=path,
        admin=args.admin,
        audience=args.audience,
        body=data or b"",
    )
    try:
        return call(args.url.rstrip("/") + path, method, token, data)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}; check --url, and that 'execgate serve' runs there and is reachable"
        ) from exc


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a gateway did not do what was asked: its error ``code`` (None when the answer
    had no error body) and its message, on one line."""

    code: str | None
    message: str

    def __str__(self) -> str:
        return self.message if self.code is None else f"{self.code}: {self.message}"


def error_of(status: int, answer: Any) -> Refusal:
    """The refusal in a gateway's answer that is not a success."""
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(code, str):
        return Refusal(None, f"HTTP {status} without an error body")
    return Refusal(one_line(code[:128]), one_line(str(message)))  # anyone's text, as sent
