"""What every command shares: exit codes, output, reading files and tokens, the home.

Heavy modules (the policy engine, the store) are imported inside the functions that need
them, so ``execgate --help`` and the offline commands start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from execgate.cli._records import terminal_safe
from execgate.errors import ConfigError, JoseError, PolicyError, StoreError, UsageError
from execgate.model import ID_TEXT, Outcome

if TYPE_CHECKING:
    from execgate.home import GatewayConfig
    from execgate.pipeline import Gateway

EXIT_CODES: Final = {
    Outcome.PROCEED: 0,
    Outcome.DENY: 1,
    Outcome.PAUSE: 3,
    Outcome.REROUTE: 4,
    Outcome.FAIL_CLOSED: 5,
}
EXIT_NOT_VERIFIED: Final = 1
EXIT_USAGE: Final = 2

MAX_INPUT: Final = 2 * 1024 * 1024  # a decision request file; the pipeline allows 1 MiB
MAX_TOKEN: Final = 64 * 1024
_JWS_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_INDEX: Final = re.compile(r"[0-9]{1,20}")

Subparsers = argparse._SubParsersAction  # argparse has no public name for it


class StdoutError(Exception):
    """Standard output could not be written (a full disk, say): what the command did
    before it stands (``main`` says so)."""


@contextlib.contextmanager
def _on_stdout() -> Iterator[None]:
    """A failure to write standard output, but the reader going away (main stops
    quietly then), as ``StdoutError``."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StdoutError(exc.strerror or str(exc)) from exc


def write_stdout(text: str) -> None:
    with _on_stdout():
        sys.stdout.write(text)


def flush_stdout() -> None:
    with _on_stdout():
        sys.stdout.flush()


def out(text: str) -> None:
    write_stdout(text + "\n")


def note(text: str) -> None:
    sys.stderr.write(text + "\n")


def one_line(message: str) -> str:
    """An error message for a terminal: one line, and nothing in it a control (a message
    may quote a request file's keys or a gateway's answer, which are anyone's text: an
    escape sequence there would retitle the window or clear the screen)."""
    return terminal_safe(re.sub(r"\s*\n\s*", " ", message).strip())


def shown(value: str) -> str:
    """A user-supplied value safe to echo: short, one line, never something key-shaped."""
    if len(value) <= 80 and "{" not in value and "\n" not in value:
        return repr(value)
    return "(the value given)"


class Commands:
    """Adds subcommands that also accept the shared flags (``--home`` after the command)."""

    def __init__(self, sub: Subparsers[Any], common: argparse.ArgumentParser) -> None:
        self._sub = sub
        self.common = common

    def add(self, name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._sub.add_parser(
            name, help=help_text, description=help_text, parents=[self.common]
        )
        return parser


# -- argument types ---------------------------------------------------------------------


MAX_SECONDS: Final = 100 * 365 * 86400


def seconds(text: str) -> int:
    """A validity in seconds: positive, and at most a hundred years."""
    value = positive(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_SECONDS} s (100 years)")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def timestamp(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Unix time in seconds")
    return value


def log_index(text: str) -> int:
    from execgate.jose import MAX_SAFE_INT

    if _INDEX.fullmatch(text) is None or int(text) > MAX_SAFE_INT:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a log index (0, 1, 2, ...: 'execgate audit tail' lists them)"
        )
    return int(text)


def json_text(value: object) -> str:
    """``value`` as indented JSON for a terminal: log content (a request's arguments, a
    delegator's subject) is anyone's text, so nothing in it is printed as a control."""
    return terminal_safe(json.dumps(value, indent=2, ensure_ascii=False), as_json=True)


def record_id(text: str) -> str:
    """A decision's or an approval's id: what this gateway makes (UUIDs) and little more,
    as over HTTP; anything else names no record (and is never looked up)."""
    if ID_TEXT.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a decision or approval id (1-128 letters, digits and"
            " '.', '_', '~', '-': as decide or 'approvals list' printed it)"
        )
    return text


# -- reading inputs ---------------------------------------------------------------------


def read_bytes(path: str, what: str, *, limit: int = MAX_INPUT) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise UsageError(f"{what} file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{what} file {path} is a directory, not a file") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise TooLarge(f"{what} file {path} is larger than {limit} bytes")
    return data


class TooLarge(UsageError):
    """An input file over its limit (``read_bytes``): a usage error, except where the
    input is what is being verified (it then does not verify)."""


def _looks_like_jws(text: str) -> bool:
    if len(text) > MAX_TOKEN or not _JWS_SHAPE.fullmatch(text):
        return False
    from execgate.jose import b64url_decode

    try:
        header = b64url_decode(text.split(".", 1)[0])
    except JoseError:
        return False
    return header.lstrip().startswith(b"{")


def token_arg(value: str, flag: str) -> str:
    """A compact JWS given inline, or the path of a file holding one (nothing else)."""
    path = Path(value)
    try:
        is_file, exists = path.is_file(), path.exists()
    except OSError:  # e.g. a long token is too long to be a file name
        is_file = exists = False
    if value and is_file:
        raw = read_bytes(value, flag, limit=MAX_TOKEN)
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = ""
        if not _looks_like_jws(text):
            raise UsageError(
                f"{flag} file {value} does not hold a compact JWS token"
                " (three base64url parts joined by dots, as 'execgate issue -o FILE' writes)"
            )
        return text
    if _looks_like_jws(value.strip()):
        return value.strip()
    if value and exists:
        raise UsageError(f"{flag} {value} is not a regular file; give a token file or a token")
    raise UsageError(
        f"{flag} {shown(value)} is neither a file nor a compact JWS token;"
        " give the path of a token file or the token itself"
    )


# -- the gateway home -------------------------------------------------------------------


def home_of(args: argparse.Namespace) -> Path:
    from execgate.home import default_home

    home: str | None = getattr(args, "home", None)
    return Path(home) if home else default_home()


def optional_config(home: Path) -> GatewayConfig | None:
    """The home's config, or None when there is no home; a broken home is an error."""
    from execgate.home import CONFIG_NAME, load_config

    if not (home / CONFIG_NAME).exists():
        return None
    return load_config(home)


def policy_error(path: Path | str, exc: PolicyError, hint: str = "") -> ConfigError:
    message = str(exc)
    if str(path) not in message:
        message = f"{path}: {message}"
    return ConfigError(message + hint)


def open_gateway(
    home: Path, *, fallback: bool, policy_in_force: Path | None = None, new_service: bool = False
) -> Gateway:
    """The home's gateway; with ``fallback``, one on a store that is down when the real
    store cannot be opened (a ``decide`` then still answers with a fail_closed decision).
    ``policy_in_force``, ``new_service``: see ``Gateway.open``."""
    from execgate.home import load_config
    from execgate.pipeline import Gateway
    from execgate.store.unavailable import UnavailableStore

    try:
        return Gateway.open(home, policy_in_force=policy_in_force, new_service=new_service)
    except PolicyError as exc:
        raise policy_error(load_config(home).policy, exc) from exc
    except StoreError as exc:
        if not fallback:
            raise
        return Gateway.open(home, store=UnavailableStore(str(exc)))


# -- writing outputs --------------------------------------------------------------------


# Beside a SQLite store: its journal and shared memory, and the committed head, its
# aside copy and the writers' lock (store.sqlite).
_STORE_SIDE_FILES: Final = ("-wal", "-shm", "-head", "-head.new", "-writer.lock")


def _home_file(target: Path) -> tuple[str, Path] | None:
    """What ``target`` is to a gateway home it lies in (its config names the files): the
    trust store, the policy, the state store or a file beside it, or a file in its key
    or ``run`` directory. None for anything else there, the user's own outputs
    included."""
    from execgate.home import CONFIG_NAME, load_config

    real = target.resolve()
    for home in real.parents:
        if not (home / CONFIG_NAME).is_file():
            continue
        try:
            config = load_config(home)
            trust, policy = config.trust, config.policy
            store, keys = config.store, config.node_key.parent
        except ConfigError:  # a home that does not load: its files where init puts them
            trust, policy = home / "trust.toml", home / "policy.yaml"
            store, keys = home / "state.db", home / "keys"
        store = store.resolve()
        named = {
            trust.resolve(): "the trust store",
            policy.resolve(): "the policy",
            store: "the state store",
        }
        for suffix in _STORE_SIDE_FILES:
            named[store.with_name(store.name + suffix)] = "a file of the state store"
        if real in named:
            return named[real], home
        for folder, name in ((keys.resolve(), "key"), ((home / "run").resolve(), "run")):
            if folder in real.parents:
                return f"a file in the {name} directory", home
    return None


def refuse_to_replace(path: str, what: str) -> None:
    """Never replace a key file (private or public), a file of a gateway home (its
    config, trust store, policy, store and the store's side files), or a SQLite store
    or a file beside one with an output: a typo in ``-o`` would lose a key, a home or
    entries of its log."""
    from execgate.home import CONFIG_NAME
    from execgate.jose import loads_strict

    target = Path(path)
    if not target.is_file():
        return
    if target.name in (CONFIG_NAME, "trust.toml"):
        raise UsageError(f"{path} is a gateway home's {target.name}; refusing to overwrite it")
    try:
        with target.open("rb") as fh:  # the head says what it is: not a whole store
            head = fh.read(MAX_TOKEN)
    except OSError:
        head = b""  # the write reports what is wrong with the file
    if head.startswith(_SQLITE_MAGIC):
        raise UsageError(f"{path} is a SQLite database; refusing to overwrite it with {what}")
    try:
        existing = loads_strict(head)
    except JoseError:
        existing = None
    if isinstance(existing, dict) and "d" in existing:
        raise UsageError(f"{path} holds a private key; refusing to overwrite it with {what}")
    if isinstance(existing, dict) and "kty" in existing:
        raise UsageError(
            f"{path} holds a public key; refusing to overwrite it with {what} (choose another file)"
        )
    held = _home_file(target)
    if held is not None:
        raise UsageError(
            f"{path} is {held[0]} of the gateway home {held[1]}; refusing to overwrite it"
            f" with {what} (choose another file)"
        )
    for suffix in _STORE_SIDE_FILES:
        store = target.with_name(target.name.removesuffix(suffix))
        if target.name.endswith(suffix) and _is_sqlite(store):
            raise UsageError(
                f"{path} belongs to the SQLite store {store.name}; refusing to overwrite it"
            )


_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def write_text(text: str, dest: str | None, what: str) -> None:
    """``text`` on stdout (no ``dest``, or ``-``), or written whole to ``dest`` (never
    over a key or a home's file: ``refuse_to_replace``)."""
    if not dest or dest == "-":
        write_stdout(text)
        return
    from execgate.keyfile import atomic_write

    refuse_to_replace(dest, what)
    atomic_write(Path(dest), text.encode())
    note(f"wrote {dest}")


def write_token(token: str, dest: str | None) -> None:
    write_text(token + "\n", dest, "a token")
