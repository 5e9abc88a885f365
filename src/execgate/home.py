"""The gateway home: a directory holding config, keys, trust store, policy and state.

    execgate.toml      [gateway] id, audiences, file paths; [limits]; [audit];
                       [approvals] notification hooks; [targets.NAME]; [server]
                       (trusted proxies, header and timeout limits of ``execgate serve``)
    trust.toml         trusted authorities (with the scope each may grant), attesters
                       and approvers
    policy.yaml        ordered policy rules
    keys/node.jwk      the gateway node key (signs receipts), 0600
    keys/authority.jwk a sample authority key for trying things out, 0600
    keys/attester.jwk  a sample environment attester key, 0600
    keys/approver-alice.jwk, keys/approver-bob.jwk
                       sample approver keys (group ``finance``), 0600
    state.db           the SQLite store (replay, revocations, decision log); beside it
                       state.db-head, the log's size and root and the count of other
                       writes as the last commit left them (``execgate.store.sqlite``)

``[approvals]`` may name ``notify_command`` (an argv list, absolute program path),
``notify_url`` (http or https) and ``notify_timeout`` (seconds, 1-30, default 5): see
``execgate.notify``.

``init_home`` creates one, whole or not at all; ``load_config`` reads and checks one.
Every refusal is a ``ConfigError`` naming the file and what to do about it.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import secrets
import shutil
import tempfile
import tomllib
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from execgate.errors import ConfigError
from execgate.jose import PrivateKey
from execgate.keyfile import (
    NotRegular,
    atomic_write,
    read_private_file,
    read_regular,
    refuse_shared_writes,
    write_keypair,
)

__all__ = [
    "CONFIG_NAME",
    "ID_PATTERN",
    "ID_RULE",
    "SAMPLE_APPROVERS",
    "SAMPLE_POLICY",
    "GatewayConfig",
    "ServerConfig",
    "check_gateway_id",
    "default_home",
    "init_home",
    "load_config",
    "read_toml",
    "service_copy",
]

CONFIG_NAME: Final = "execgate.toml"
_MAX_TOML: Final = 1024 * 1024  # bytes of execgate.toml or trust.toml
_GATEWAY_KEYS: Final = frozenset({"id", "audiences", "node_key", "trust", "policy", "store"})
_LIMIT_KEYS: Final = frozenset({"leeway", "proof_max_age", "receipt_ttl", "max_depth"})
_AUDIT_KEYS: Final = frozenset({"checkpoint_every", "checkpoint_interval"})
_APPROVALS_KEYS: Final = frozenset({"notify_command", "notify_url", "notify_timeout"})
_SERVER_KEYS: Final = frozenset(
    {"trusted_proxies", "header_limit", "header_timeout", "body_timeout", "public_audit"}
)
# The sample approvers init writes: enough for the sample policy's quorum of 2 in finance.
SAMPLE_APPROVERS: Final = (("alice", ("finance",)), ("bob", ("finance",)))
# A gateway id is also the audience artifacts and proofs name: printable, no whitespace.
# A gateway id, and the ids and group names of trust.toml: 1-256 printable ASCII
# characters without spaces.
ID_PATTERN: Final = re.compile(r"[!-~]{1,256}")
ID_RULE: Final = "1-256 printable ASCII characters without spaces"  # ID_PATTERN, in words
# What init writes; the config goes last, so a directory is a home only once complete.
_HOME_ENTRIES: Final = ("keys", "trust.toml", "policy.yaml", CONFIG_NAME)


def default_home() -> Path:
    """``$EXECGATE_HOME`` when set and non-empty, else ``./.execgate``."""
    return Path(os.environ.get("EXECGATE_HOME") or ".execgate")


def check_gateway_id(value: object, where: str) -> str:
    """Return ``value`` if it is a usable gateway id, else raise ``ConfigError``."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ConfigError(f"{where}: the gateway id must be {ID_RULE}")
    return value


_LOOPBACK: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: what ``execgate serve`` enforces before a request reaches a handler.

    ``trusted_proxies`` are the addresses (CIDR) whose ``X-Original-*`` /
    ``X-Forwarded-*`` headers forward-auth believes; from any other address such headers
    are refused. ``header_limit`` caps the request line and headers together (bytes,
    431 beyond it); ``header_timeout`` and ``body_timeout`` bound how long a client may
    take to send them (seconds; 408 after that), and ``body_timeout`` also how long it
    may leave an answer unread (then the connection is dropped). ``public_audit`` lets
    anyone read whole log records (``/v1/audit/entries``, ``/v1/audit/proofs/{index}``,
    the full view of ``/v1/decisions/{id}``); by default they need an admin token with
    the ``audit`` role, as the export does, since every record holds its request's arguments.
    Checkpoints and consistency proofs (hashes only) are public either way.
    """

    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _LOOPBACK
    header_limit: int = 98304  # 96 KiB: see docs/forward-auth.md, Evidence headers
    header_timeout: int = 10
    body_timeout: int = 30
    public_audit: bool = False


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    home: Path
    gateway_id: str
    audiences: frozenset[str]
    node_key: Path
    trust: Path
    policy: Path
    store: Path
    leeway: int
    proof_max_age: int
    receipt_ttl: int
    targets: Mapping[str, str]
    checkpoint_every: int = 1000
    checkpoint_interval: int = 300
    max_depth: int = 8
    notify_command: tuple[str, ...] | None = None
    notify_url: str | None = None
    notify_timeout: int = 5
    server: ServerConfig = ServerConfig()


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _int(section: Mapping[str, Any], key: str, default: int, lo: int, hi: int, where: str) -> int:
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{where}: {key} must be an integer in [{lo}, {hi}]")
    return value


def read_toml(path: Path, *, name: str, what: str, data: bytes | None = None) -> dict[str, Any]:
    """The TOML document in the regular file at ``path`` (at most ``_MAX_TOML`` bytes,
    not writable by every user: ``what`` names it then), or in ``data``, that file's
    bytes as read before (``service_copy``). ``FileNotFoundError`` is the caller's to
    explain; anything else is a one-line ``ConfigError`` about ``name``."""
    try:
        if data is None:
            data, mode = read_regular(path, limit=_MAX_TOML)
            refuse_shared_writes(path, mode, what)
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name} is not UTF-8 text; fix or restore it") from exc
    except NotRegular as exc:
        raise ConfigError(f"{name} {exc}; restore it") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name} is not valid TOML: {exc}; fix or restore it") from exc


def service_copy(
    directory: Path | None, name: str, source: Path, what: str, *, new: bool
) -> bytes | None:
    """The bytes of the home file ``source`` as the first process of a service read them.

    ``execgate serve`` replaces a worker that dies, and the replacement opens the home
    again: had it read ``execgate.toml`` and ``trust.toml`` as they are by then, an edit
    made since (these apply at a restart) would be in force in that worker alone, and a
    broken file would stop it from starting, and with it the service. So the first open
    (``new``) keeps the bytes it read as ``directory/name`` (the service's private
    directory, see ``Gateway.open``) and later opens read those; a copy gone is an
    error (what the service runs is no longer known). None without a directory (not a
    service), or when the first open finds ``source`` missing (its reader reports
    that). The caller holds the directory's lock."""
    if directory is None:
        return None
    kept = directory / name
    if not new:
        try:
            return read_private_file(kept, limit=_MAX_TOML)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"the service's copy of {what} {source} is gone; restart the service"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {kept}: {exc}") from exc
    try:
        data, mode = read_regular(source, limit=_MAX_TOML)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {source}: {exc}") from exc
    refuse_shared_writes(source, mode, what)
    atomic_write(kept, data, mode=0o600)
    return data


def load_config(home: Path, *, data: bytes | None = None) -> GatewayConfig:
    """Read and check ``HOME/execgate.toml`` (or ``data``: its bytes as read before, see
    ``service_copy``); file paths in it are relative to the home."""
    path = home / CONFIG_NAME
    if not home.exists():
        raise ConfigError(
            f"no gateway home at {home}; create one with 'execgate init {home}'"
            " or point --home / EXECGATE_HOME at an existing one"
        )
    if not home.is_dir():
        raise ConfigError(f"gateway home {home} is not a directory")
    refuse_shared_writes(home, home.stat().st_mode, "gateway home")
    try:
        doc = read_toml(path, name=str(path), what="config", data=data)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{home} is not a gateway home ({CONFIG_NAME} is missing); create one with"
            f" 'execgate init DIR' or point --home / EXECGATE_HOME at an existing one"
        ) from exc
    unknown = set(doc) - {"gateway", "limits", "audit", "approvals", "targets", "server"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}")
    gw = doc.get("gateway")
    if not isinstance(gw, dict):
        raise ConfigError(f"{path}: the [gateway] section is required")
    if set(gw) - _GATEWAY_KEYS:
        raise ConfigError(f"{path}: unknown [gateway] keys {sorted(set(gw) - _GATEWAY_KEYS)}")
    gateway_id = check_gateway_id(gw.get("id"), f"{path}: [gateway] id")
    audiences = gw.get("audiences", [gateway_id])
    if not isinstance(audiences, list):
        raise ConfigError(f"{path}: [gateway] audiences must be a list of ids")
    for audience in audiences:
        check_gateway_id(audience, f"{path}: [gateway] audiences")
    files = {}
    for key, default in (
        ("node_key", "keys/node.jwk"),
        ("trust", "trust.toml"),
        ("policy", "policy.yaml"),
        ("store", "state.db"),
    ):
        value = gw.get(key, default)
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ConfigError(f"{path}: [gateway] {key} must be a path (with no NUL character)")
        files[key] = home / value
    limits = doc.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - _LIMIT_KEYS:
        raise ConfigError(f"{path}: [limits] may hold only {sorted(_LIMIT_KEYS)}")
    audit = doc.get("audit", {})
    if not isinstance(audit, dict) or set(audit) - _AUDIT_KEYS:
        raise ConfigError(f"{path}: [audit] may hold only {sorted(_AUDIT_KEYS)}")
    command, url, timeout = _approvals(doc.get("approvals", {}), str(path))
    targets = doc.get("targets", {})
    if not isinstance(targets, dict) or not all(
        isinstance(t, dict)
        and set(t) <= {"description"}
        and isinstance(t.get("description", ""), str)
        for t in targets.values()
    ):
        raise ConfigError(
            f"{path}: [targets.NAME] tables may hold only a description string"
            " (a misspelt key would be ignored)"
        )
    for name in targets:  # sent as the Execgate-Route header of a reroute
        if not ID_PATTERN.fullmatch(name):
            raise ConfigError(
                f"{path}: [targets.{json.dumps(name, ensure_ascii=True)}]: a target name must"
                f" be {ID_RULE} (a proxy routes on it, in the Execgate-Route header)"
            )
    return GatewayConfig(
        home=home,
        gateway_id=gateway_id,
        audiences=frozenset([gateway_id, *audiences]),
        node_key=files["node_key"],
        trust=files["trust"],
        policy=files["policy"],
        store=files["store"],
        leeway=_int(limits, "leeway", 60, 0, 60, str(path)),
        proof_max_age=_int(limits, "proof_max_age", 120, 1, 3600, str(path)),
        receipt_ttl=_int(limits, "receipt_ttl", 86400, 60, 31 * 86400, str(path)),
        max_depth=_int(limits, "max_depth", 8, 0, 8, str(path)),
        checkpoint_every=_int(audit, "checkpoint_every", 1000, 1, 10**9, str(path)),
        checkpoint_interval=_int(audit, "checkpoint_interval", 300, 1, 86400, str(path)),
        targets={name: t.get("description", "") for name, t in targets.items()},
        notify_command=command,
        notify_url=url,
        notify_timeout=timeout,
        server=_server(doc.get("server", {}), str(path)),
    )


def _server(section: object, where: str) -> ServerConfig:
    """``[server]``: trusted proxy networks and the limits of ``execgate serve``."""
    if not isinstance(section, dict) or set(section) - _SERVER_KEYS:
        raise ConfigError(f"{where}: [server] may hold only {sorted(_SERVER_KEYS)}")
    proxies = section.get("trusted_proxies")
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _LOOPBACK
    if proxies is not None:
        if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
            raise ConfigError(f"{where}: [server] trusted_proxies must be a list of CIDR strings")
        try:
            # strict: '10.0.0.1/8' is refused, not read as all of 10.0.0.0/8
            networks = tuple(ipaddress.ip_network(p) for p in proxies)
        except ValueError as exc:
            raise ConfigError(
                f"{where}: [server] trusted_proxies: {exc}; write addresses like"
                " '127.0.0.1/32' or '10.0.0.0/8'"
            ) from exc
        zoned = [p for p in proxies if "%" in p]
        if zoned:
            # ipaddress keeps the zone but matches addresses without it: fe80::1%eth0
            # would be trusted on every interface, not on eth0 alone.
            raise ConfigError(
                f"{where}: [server] trusted_proxies: {zoned[0]!r} names an interface (%…),"
                " which is not matched; write the address without it"
            )
    public_audit = section.get("public_audit", False)
    if not isinstance(public_audit, bool):
        raise ConfigError(f"{where}: [server] public_audit must be true or false")
    return ServerConfig(
        trusted_proxies=networks,
        public_audit=public_audit,
        header_limit=_int(section, "header_limit", 98304, 1024, 1 << 20, f"{where}: [server]"),
        header_timeout=_int(section, "header_timeout", 10, 1, 300, f"{where}: [server]"),
        body_timeout=_int(section, "body_timeout", 30, 1, 300, f"{where}: [server]"),
    )


def _approvals(section: object, where: str) -> tuple[tuple[str, ...] | None, str | None, int]:
    """``[approvals]``: the notification hooks (checked here, run by ``execgate.notify``)."""
    if not isinstance(section, dict) or set(section) - _APPROVALS_KEYS:
        raise ConfigError(f"{where}: [approvals] may hold only {sorted(_APPROVALS_KEYS)}")
    from execgate import notify

    timeout = section.get("notify_timeout", notify.DEFAULT_TIMEOUT)
    if (
        not isinstance(timeout, int)
        or isinstance(timeout, bool)
        or not notify.MIN_TIMEOUT <= timeout <= notify.MAX_TIMEOUT
    ):
        raise ConfigError(
            f"{where}: [approvals] notify_timeout must be whole seconds in"
            f" [{notify.MIN_TIMEOUT}, {notify.MAX_TIMEOUT}]"
        )
    checked: dict[str, Any] = {}
    for key, check in (("notify_command", notify.check_command), ("notify_url", notify.check_url)):
        if key in section:
            try:
                checked[key] = check(section[key])
            except ValueError as exc:
                raise ConfigError(f"{where}: [approvals] {key} {exc}") from exc
    command, url = checked.get("notify_command"), checked.get("notify_url")
    return command, url, timeout


SAMPLE_POLICY: Final = """\
# Ordered rules: the first rule that matches decides. No match means deny.
version: 1
rules:
  - name: refunds-need-a-ticket
    match: {action: "payments.refund", resource: "acct:**"}
    when: "!has(artifact.gov.ticket)"
    effect: deny
    reason: refunds are only executed against a ticket
  - name: large-transfers-need-approval
    match: {action: "payments.transfer", resource: "acct:**"}
    when: "request.args.amount > 1000"
    effect: pause
    approvers: [finance]
    quorum: 2
    ttl: 3600
  - name: payments
    match: {action: "payments.*", resource: "acct:**"}
    effect: proceed
  - name: shell-to-sandbox
    match: {action: "shell.exec", resource: "host:**"}
    effect: reroute
    target: sandbox
  - name: reports
    match: {action: "reports.read", resource: "**"}
    effect: proceed
  - name: http-reports
    match: {action: "http.get", resource: "/reports/**"}
    effect: proceed
"""


def _jwk_toml(key: PrivateKey) -> str:
    pub = key.public.to_jwk()
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in pub.items()) + "}"


def init_home(home: Path, *, gateway_id: str | None = None) -> GatewayConfig:
    """Create a new gateway home, whole or not at all. Refuses to touch an existing one.

    ``home`` must not exist or be an empty directory. Everything is written into a
    staging directory first and checked (config, trust store, policy); only then is it
    moved into place, with ``execgate.toml`` last, so an interrupted init leaves no
    half-made home behind.
    """
    if (home / CONFIG_NAME).exists():
        raise ConfigError(f"{home} is already a gateway home; refusing to overwrite it")
    if home.exists() or home.is_symlink():
        if not home.is_dir():
            raise ConfigError(f"{home} exists and is not a directory; choose another path")
        if any(home.iterdir()):
            raise ConfigError(f"{home} exists and is not empty; choose a new or empty directory")
        # The user's directory keeps its mode, but one others may write would not load.
        refuse_shared_writes(home, home.stat().st_mode, "directory")
    gateway_id = check_gateway_id(
        f"gw-{secrets.token_hex(4)}" if gateway_id is None else gateway_id,
        "init" if gateway_id is None else "--id",
    )
    existing = home.exists()
    base = home if existing else home.absolute().parent
    # The directories above the home that init makes: removed again if it fails.
    made = [d for d in (base, *base.parents) if not d.exists()]
    try:
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=base, prefix=".execgate-init-"))
    except OSError as exc:
        _remove_empty(made)
        raise ConfigError(f"cannot create gateway home {home}: {exc.strerror or exc}") from exc
    installed = False
    try:
        try:
            _populate(staging, gateway_id)
        except (OSError, ConfigError) as exc:  # a full disk, say: named as the home's file
            said = str(exc).replace(str(staging), str(home))
            raise ConfigError(
                f"cannot create gateway home {home}: {said}; nothing was kept"
            ) from exc
        _check(staging)
        if existing:
            _move_entries(staging, home)
        else:
            try:
                os.rename(staging, home)
            except OSError as exc:  # e.g. someone created it meanwhile
                raise ConfigError(
                    f"cannot create gateway home {home}: {exc.strerror or exc}; nothing was kept"
                ) from exc
        installed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not installed:
            _remove_empty(made)
    return load_config(home)


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are still empty: what a failed init made."""
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()


def _check(staging: Path) -> None:
    """The home must load before it is installed (a bug here must not ship a broken one)."""
    from execgate.policy import load_policy  # here: policy imports are heavy (CEL)
    from execgate.trust import TrustStore

    config = load_config(staging)
    TrustStore.load(config.trust)
    load_policy(config.policy, targets=config.targets.keys())


def _rename_new(source: Path, target: Path) -> None:
    """Rename, but never over something that appeared at ``target`` meanwhile."""
    if target.exists() or target.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _move_entries(staging: Path, home: Path) -> None:
    moved: list[Path] = []
    try:
        for name in _HOME_ENTRIES:
            _rename_new(staging / name, home / name)
            moved.append(home / name)
    except BaseException as exc:
        for target in reversed(moved):
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            raise ConfigError(
                f"cannot create gateway home {home}: {exc.strerror or exc}{where}; nothing was kept"
            ) from exc
        raise


def _populate(home: Path, gateway_id: str) -> None:
    (home / "keys").mkdir(mode=0o700)
    node = PrivateKey.generate()
    write_keypair(home / "keys" / "node.jwk", node)
    authority = PrivateKey.generate()
    write_keypair(home / "keys" / "authority.jwk", authority)
    attester = PrivateKey.generate()
    write_keypair(home / "keys" / "attester.jwk", attester)
    approvers = []
    for name, groups in SAMPLE_APPROVERS:
        key = PrivateKey.generate()
        write_keypair(home / "keys" / f"approver-{name}.jwk", key)
        approvers.append(
            f"""
[[approver]]
id = {_toml(name)}
groups = [{", ".join(map(_toml, groups))}]
keys = [{_jwk_toml(key)}]
"""
        )
    admin = PrivateKey.generate()
    write_keypair(home / "keys" / "admin.jwk", admin)

    trust = f"""\
# Trusted root authorities: the keys that may issue artifacts, and what each may grant.
[[authority]]
id = "example-authority"
keys = [{_jwk_toml(authority)}]
scope = [
  {{action = "payments.*", resource = "acct:**"}},
  {{action = "shell.exec", resource = "host:**"}},
  {{action = "reports.read", resource = "**"}},
  {{action = "http.get", resource = "/reports/**"}},
]

# Attesters whose environment attestations (region, image, …) this gateway believes.
[[attester]]
id = "example-attester"
keys = [{_jwk_toml(attester)}]

# Approvers who may review paused requests, for the groups each is in. The sample
# policy's large-transfers rule needs 2 of finance. alice and bob are samples whose
# private keys lie in this home's keys/ (approver-alice.jwk, approver-bob.jwk): for real
# use, list each person's own public key instead. No one may approve a request they
# asked for, run, or benefit from.
{"".join(approvers).lstrip()}
# Admins who may call the admin routes of 'execgate serve' (revoke, approvals, reload,
# audit export), each with the roles it holds. The sample's private key is this home's
# keys/admin.jwk: for real use, list each admin's own public key and only the roles
# they need. An admin key may not also be an approver's.
[[admin]]
id = "admin"
roles = ["approvals", "audit", "reload", "revoke"]
keys = [{_jwk_toml(admin)}]
"""
    atomic_write(home / "trust.toml", trust.encode(), exclusive=True)
    atomic_write(home / "policy.yaml", SAMPLE_POLICY.encode(), exclusive=True)
    config = f"""\
[gateway]
id = {_toml(gateway_id)}          # receipts' issuer; the audience artifacts and proofs name
audiences = [{_toml(gateway_id)}]
node_key = "keys/node.jwk"
trust = "trust.toml"
policy = "policy.yaml"
store = "state.db"

[limits]
leeway = 60             # clock skew tolerated on nbf/exp, seconds (at most 60)
proof_max_age = 120     # how old a proof of possession may be, seconds
receipt_ttl = 86400     # how long a decision receipt stays valid, seconds
max_depth = 8           # how many delegation steps below an authority's artifact

[audit]
checkpoint_every = 1000     # sign a checkpoint after this many new log entries
checkpoint_interval = 300   # or when this many seconds have passed with new entries

[approvals]
# Tell people when a pause opens an approval, and when it is approved, denied or
# resumed: a program run with the event JSON on stdin (no shell; an absolute path)
# and/or a URL the event is POSTed to. A hook that fails or hangs changes no decision.
# notify_command = ["/usr/local/bin/page-approvers", "--team", "finance"]
# notify_url = "http://127.0.0.1:8080/execgate"
notify_timeout = 5      # seconds a hook may take (1-30); then it is killed or abandoned

[server]
# execgate serve: forward-auth believes X-Original-* / X-Forwarded-* headers only from
# these networks (the proxies in front of it); from anywhere else they are refused.
trusted_proxies = ["127.0.0.0/8", "::1/128"]
header_limit = 98304    # bytes of request line + headers (fits every evidence header); 431 beyond
header_timeout = 10     # seconds a client may take to send its headers; then 408
body_timeout = 30       # seconds a client may take to send its body (then 408), or to
                        # take an answer it stopped reading (then it is dropped)
# Log records hold each request's arguments: reading them whole (/v1/audit/entries,
# /v1/audit/proofs, a full /v1/decisions/{{id}}) needs an admin token with the audit role
# unless this is true. Checkpoints and consistency proofs are public either way.
public_audit = false

[targets.sandbox]
description = "an isolated runtime with no production credentials"

[targets.dry-run]
description = "validate and record, execute nothing"
"""
    atomic_write(home / CONFIG_NAME, config.encode(), exclusive=True)
