"""``execgate admin token``: mint an admin token for one call to a running gateway.

The token (``execgate.admin``) is signed with the admin's own private key (``--key``)
and is good for exactly one call: the method and path given (with the query, if any,
exactly as the call sends it), with the body given (``--data`` or ``--data-file``, byte
for byte as the call sends it: curl's ``--data-binary``, not ``-d @FILE``, which drops
line breaks; none by default), at one gateway, for ``--ttl`` seconds (at most an hour).
Who the admin is and which gateway it is for come from the home's trust store and config
(the ``[[admin]]`` that lists the key, the gateway id); ``--admin`` and ``--audience``
name them instead, for a gateway whose home is elsewhere. Send it as
``Authorization: Bearer TOKEN``:

    curl -X POST -H "Authorization: Bearer $(execgate admin token --key keys/admin.jwk \\
         --method POST --path /v1/admin/policy/reload)" http://127.0.0.1:8080/v1/admin/policy/reload

``execgate policy reload`` mints its own. Which routes an admin may call is up to the
``roles`` of their ``[[admin]]``, not to the token.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from execgate.cli._common import Commands, home_of, out, shown
from execgate.errors import ConfigError, UsageError

__all__ = ["add_identity", "call", "mint", "register"]

DEFAULT_TTL: Final = 60
CALL_TIMEOUT: Final = 60.0
_MAX_ANSWER: Final = 1024 * 1024
_MAX_BODY: Final = 1024 * 1024  # over any admin route's body limit


def mint(
    *,
    key_path: str,
    home: Path,
    method: str,
    path: str,
    ttl: int = DEFAULT_TTL,
    admin: str | None = None,
    audience: str | None = None,
    body: bytes = b"",
) -> str:
    """A token for ``method path`` with ``body``, signed with the key in ``key_path``;
    ``path`` may end in the call's query (``/v1/audit/entries?start=0&end=9``), which the
    token then binds as written."""
    from execgate.admin import MAX_TTL, issue_admin_token
    from execgate.keyfile import read_private_key

    if not 0 < ttl <= MAX_TTL:
        raise UsageError(f"--ttl must be within 1..{MAX_TTL} seconds")
    key = read_private_key(Path(key_path))  # a bad key file is a usage error (exit 2)
    if admin is None or audience is None:
        from execgate.home import load_config
        from execgate.trust import TrustStore

        config = load_config(home)
        if audience is None:
            audience = config.gateway_id
        if admin is None:
            found = TrustStore.load(config.trust).admin_for_kid(key.public.thumbprint())
            if found is None:
                raise UsageError(
                    f"the key {key_path} (key id {key.public.thumbprint()}) is no admin's in"
                    f" the trust store {config.trust}; list its public half there as an"
                    " [[admin]] with the roles it needs, or name the admin with --admin"
                )
            admin = found.id
    path, _, query = path.partition("?")
    try:
        return issue_admin_token(
            key=key,
            admin=admin,
            audience=audience,
            method=method,
            path=path,
            query=query,
            now=int(time.time()),
            ttl=ttl,
            body=body,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib's default handler sends the request again, with its
    ``Authorization`` header, to any host the answer names, where an admin token that
    the gateway never saw (so never spent) would be one anyone there could use."""

    def redirect_request(self, *args: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER: Final = urllib.request.build_opener(_NoRedirect)


def call(url: str, method: str, token: str, data: bytes | None = None) -> tuple[int, Any]:
    """One call to a running gateway, ``data`` its JSON body (the bytes the token was
    minted over): (HTTP status, the JSON answer). A redirect is not followed: it is a
    ``UsageError`` (the wrong ``--url``) naming where the answer pointed."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {shown(url)} must be an http:// or https:// URL")
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=CALL_TIMEOUT) as answer:
            status, raw = answer.status, answer.read(_MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            exc.close()
            where = exc.headers.get("Location") if exc.headers else None
            raise UsageError(
                f"the gateway at {url} answered HTTP {exc.code}, a redirect"
                f"{f' to {shown(where)}' if where else ''}; it is not followed, and the"
                " admin token was sent nowhere else: give the gateway's own address as --url"
            ) from None
        status, raw = exc.code, exc.read(_MAX_ANSWER)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot reach the gateway at {url}: {reason}") from exc
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _body(args: argparse.Namespace) -> bytes:
    """The call's body as the token binds it: ``--data`` as the shell passed it (its
    bytes, whatever the locale), or ``--data-file`` byte for byte; none by default."""
    if args.data is not None and args.data_file is not None:
        raise UsageError("give the body once: --data or --data-file")
    if args.data is not None:
        body = os.fsencode(args.data)
    elif args.data_file is not None:
        from execgate.keyfile import read_regular

        try:
            body = read_regular(Path(args.data_file), limit=_MAX_BODY)[0]
        except OSError as exc:
            raise UsageError(
                f"cannot read --data-file {shown(args.data_file)}: {exc.strerror or exc}"
            ) from exc
    else:
        return b""
    if args.method in ("GET", "HEAD"):
        raise UsageError(f"a {args.method} call sends no body: drop --data / --data-file")
    return body


def _token(args: argparse.Namespace) -> int:
    out(
        mint(
            key_path=args.key,
            home=home_of(args),
            method=args.method,
            path=args.path,
            ttl=args.ttl,
            admin=args.admin,
            audience=args.audience,
            body=_body(args),
        )
    )
    return 0


def _ttl(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds")
    return int(text)


def add_identity(p: argparse.ArgumentParser) -> None:
    """The flags that say who signs an admin token and for which gateway."""
    p.add_argument("--admin", help="the admin id (default: the [[admin]] that lists the key)")
    p.add_argument("--audience", help="the gateway id (default: the home's)")


def register(commands: Commands) -> None:
    s = commands.add("admin", "admin credentials for a running gateway")
    group = Commands(
        s.add_subparsers(dest="admin_command", required=True, metavar="SUBCOMMAND"),
        commands.common,
    )
    q = group.add("token", "print a single-use admin token for one call (METHOD and PATH)")
    q.add_argument("--key", required=True, help="your admin PRIVATE key file (its [[admin]])")
    q.add_argument("--method", required=True, help="the call's HTTP method, e.g. POST")
    q.add_argument(
        "--path",
        required=True,
        help="the call's path, percent-decoded (as the gateway routes it), and its query"
        " exactly as sent: /v1/revocations, '/v1/audit/entries?start=0&end=9'",
    )
    q.add_argument(
        "--data",
        metavar="BODY",
        help="the call's body, exactly as it will be sent (curl --data-binary); default: none",
    )
    q.add_argument(
        "--data-file",
        metavar="FILE",
        help="the call's body is this file, byte for byte (curl --data-binary @FILE)",
    )
    q.add_argument(
        "--ttl", type=_ttl, default=DEFAULT_TTL, help="seconds it stays valid (default: 60)"
    )
    add_identity(q)
    q.set_defaults(func=_token)
