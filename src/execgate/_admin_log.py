"""Admin actions as audit records, and policy reload (the ``Gateway`` side of ``admin``).

Every admin call is logged, refused or not, as a record of kind ``"admin"`` in the same
Merkle log as decisions (versioned with ``RECORD_VERSION``; every field inside the
hash). A record never holds the token, only who presented it (once its signature
verified), the key id and the token's ``jti``:

    {"v": 1, "kind": "admin", "gateway": ..., "at": ..., "action": "revocation",
     "method": "POST", "path": "/v1/revocations", "admin": "ops" | null,
     "admin_kid": ... | null, "token_jti": ... | null, "via": "http" | "signal",
     "result": "refused" | "authorized" | "done" | "failed", "code": ..., "detail": ...,
     ...what the action changed (a revocation, the old and new policy hash)}

Write-ahead, as for decisions: an authorized call is logged (``authorized``) before
it acts, in the same commit that spends its token's ``jti`` (kept with the proof
``jti``s, under an ``admin:`` prefix, until the token expires); a ``jti`` seen before
makes that commit log a refusal instead. What the action then changed is logged as
``done`` (or ``failed``).

Policy reload re-reads the home's policy file with the loader ``Gateway.open`` uses,
logs ``policy.reloaded`` (old and new hash, and the ``worker`` process id), and only
then swaps the gateway's policy, in one attribute assignment: a decision that already
holds the old ``Policy`` object keeps it. An invalid file is refused
(``policy.reload_refused``, logged and written to the ``execgate.server`` logger); the
old policy stays in force. A reload whose record cannot be appended changes nothing
either. For a gateway opened with a ``policy_in_force`` file (``execgate serve``), the
accepted text is written beside the pin before the record and renamed into place only
once the record is durable, so no process of the service ever takes a policy that was
not logged; every other process takes it before its next decision
(``Gateway.current_policy``), so one reload, by one worker, reads the file once, and
all end with what it logged. Reloads of a service's processes take the pin's lock, so
they run one after another.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from execgate._state import RECORD_VERSION
from execgate._timing import clock_seconds
from execgate.admin import UNAUTHENTICATED, AdminError
from execgate.errors import ConfigError
from execgate.jose import canonical_json
from execgate.store.base import PURGED_DETAIL, Conflict, WriteJob

if TYPE_CHECKING:
    from execgate.pipeline import Gateway
    from execgate.policy import Policy

__all__ = [
    "PolicyReload",
    "admin_record",
    "append_admin_record",
    "reload_policy",
    "revoked_detail",
    "spent",
]

KIND: Final = "admin"
_JTI_PREFIX: Final = "admin:"
_MAX_TEXT: Final = 2000
_log = logging.getLogger("execgate.server")


def _text(value: str) -> str:
    return value if len(value) <= _MAX_TEXT else value[: _MAX_TEXT - 3] + "..."


def admin_record(
    gateway: Gateway,
    *,
    action: str,
    result: str,
    code: str,
    detail: str,
    now: int,
    via: str = "http",
    method: str | None = None,
    path: str | None = None,
    admin: str | None = None,
    admin_kid: str | None = None,
    token_jti: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One admin record (not yet appended)."""
    return {
        "v": RECORD_VERSION,
        "kind": KIND,
        "gateway": gateway.gateway_id,
        "at": now,
        "action": action,
        "method": method,
        "path": None if path is None else _text(path),
        "admin": admin,
        "admin_kid": admin_kid,
        "token_jti": token_jti,
        "via": via,
        "result": result,
        "code": code,
        "detail": _text(detail),
        **extra,
    }


def spent(gateway: Gateway, jti: str) -> bool:
    """Whether the admin token ``jti`` has been spent already: a read, for refusing a
    replay early. Only ``append_admin_record``'s spend, in the commit of the record that
    lets a call in, decides that a token is used once."""
    return gateway.store.proof_seen(_JTI_PREFIX + jti)


def revoked_detail(admin: object, kind: str) -> str:
    """Why an admin's call is refused when its key (``kid``) or the admin (``sub``) is
    revoked."""
    if kind == "sub":
        return f"admin {admin!r} is revoked"
    return f"the key of admin {admin!r} is revoked"


def append_admin_record(
    gateway: Gateway,
    record: dict[str, Any],
    *,
    spend: tuple[str, int] | None = None,
    unrevoked: tuple[tuple[str, str], ...] = (),
) -> int:
    """Append ``record``; return its log index once durable.

    ``spend=(jti, expires)`` spends an admin token's ``jti`` in the same commit. If it
    was spent before, a refusal record (the replay) is appended instead, and
    ``AdminError`` (``admin.unauthenticated``) is raised after it is durable. Likewise
    if any of ``unrevoked`` (the admin's key) is revoked when the record commits: a
    revocation that returned while the call's body was being read still wins.
    """
    replayed: list[str] = []
    jobs: list[WriteJob] = []  # the job below, for what its commit found revoked

    def finalize(conflict: str | None, _index: int) -> bytes:
        if conflict is not None:  # REPLAY, REVOKED, or PURGED: whether it was used is unknown
            revoked = jobs[0].revoked if jobs else None
            detail = (
                "this admin token was used before (replay)"
                if conflict == Conflict.REPLAY
                else revoked_detail(record.get("admin"), revoked.kind if revoked else "kid")
                if conflict == Conflict.REVOKED
                else f"this admin token cannot be checked for replay: {PURGED_DETAIL}"
            )
            replayed.append(detail)
            return canonical_json(
                {**record, "result": "refused", "code": UNAUTHENTICATED, "detail": detail}
            )
        return canonical_json(record)

    jti, expires = spend if spend is not None else (None, 0)
    jobs.append(
        WriteJob(
            None if jti is None else _JTI_PREFIX + jti,
            expires,
            None,
            finalize,
            kind=KIND,
            proof_window=gateway._leeway,  # a token's expires is its exp plus the leeway
            revocation_keys=unrevoked,
        )
    )
    index = gateway.store.commit(jobs[0])
    gateway._checkpoint_if_due(index + 1, int(record["at"]))
    if replayed:
        raise AdminError(UNAUTHENTICATED, replayed[0])
    return index


@dataclass(frozen=True, slots=True)
class PolicyReload:
    """What a reload did: ``reloaded`` (and the hashes), or why it was refused."""

    reloaded: bool
    previous_hash: str
    policy_hash: str  # in force now: the new one, or the old one after a refusal
    log_index: int
    error: str | None = None


def reload_policy(
    gateway: Gateway,
    *,
    via: str,
    admin: str | None = None,
    admin_kid: str | None = None,
    token_jti: str | None = None,
) -> PolicyReload:
    """Load the home's policy file again and put it in force, or refuse it (see above).

    Raises ``ConfigError`` for a gateway not opened from a home (nothing to re-read),
    and ``StoreError``/``AuditError`` when the record cannot be appended (the old policy
    then stays in force).
    """
    from execgate.approvals import check_pauses
    from execgate.keyfile import refuse_shared_writes, refuse_unsafe_path
    from execgate.policy.loader import read_policy

    source = gateway.policy_source
    if source is None:
        raise ConfigError("this gateway was not opened from a home: there is no policy to reload")
    path, targets = source
    with gateway.reload_lock:
        pinned = gateway.policy_in_force
        # The pin is written through the directory the service's processes follow.
        pin = gateway._pin
        now = clock_seconds(gateway._now)

        def record(result: str, code: str, detail: str, **fields: Any) -> int:
            # Files by name only: where the home lies on this machine is not evidence,
            # and a log read by anyone ([server] public_audit) should not tell it. Only
            # the files' own absolute paths are replaced, never other text of the detail.
            for file in (path, pinned):
                if file is not None and file.is_absolute():
                    detail = detail.replace(str(file), file.name)
            return append_admin_record(
                gateway,
                admin_record(
                    gateway,
                    action="policy.reload",
                    result=result,
                    code=code,
                    detail=detail,
                    now=now,
                    worker=os.getpid(),
                    via=via,
                    admin=admin,
                    admin_kid=admin_kid,
                    token_jti=token_jti,
                    **fields,
                ),
            )

        def refused(error: str, old: Policy) -> PolicyReload:
            _log.warning("policy reload refused; policy %s stays in force: %s", old.hash, error)
            index = record("refused", "policy.reload_refused", error, policy_hash=old.hash)
            return PolicyReload(False, old.hash, old.hash, index, error)

        with ExitStack() as held:
            # The pin's lock is held until the new version is in place (or not): the
            # reloads of a service's processes run one at a time, each on the version
            # the one before left.
            old, behind = gateway.policy, ""
            try:
                if pin is not None:
                    held.enter_context(pin.lock())
                    try:
                        old = gateway.current_policy()
                    except Exception as exc:  # noqa: BLE001 - a logged reload repairs that
                        behind = f"; the pinned policy could not be taken here: {_reason(exc)}"
                refuse_unsafe_path(path, "policy")  # the directories on the way to it
                with suppress(FileNotFoundError):  # reported by the read, as at open
                    refuse_shared_writes(path, path.stat().st_mode, "policy")
                new, text = read_policy(path, targets=targets)
                check_pauses(new, gateway.trust)
            except Exception as exc:  # noqa: BLE001 - any failure refuses the file, never the gateway
                return refused(_reason(exc) + behind, old)
            detail = f"policy {old.hash} replaced by {new.hash} ({path}){behind}"
            fields = {"previous_policy_hash": old.hash, "policy_hash": new.hash}
            if pin is None:
                index = record("done", "policy.reloaded", detail, **fields)  # raises: no change
            else:
                # The new version is written beside the pin, logged, and only then
                # renamed into place: no process of the service can take a version that
                # was never logged. A record that fails leaves the pin as it was.
                logged = False
                try:
                    with pin.replacing(text):  # written and synced: the record next
                        index = record("done", "policy.reloaded", detail, **fields)
                        logged = True
                except ConfigError as exc:  # the pin's file could not be written or renamed
                    if not logged:
                        return refused(_reason(exc), old)
                    failed = f"the policy was logged but not put in force: {_reason(exc)}"
                    _log.error("policy reload failed; %s stays in force: %s", old.hash, failed)
                    index = record("failed", "policy.reload_refused", failed, policy_hash=old.hash)
                    return PolicyReload(False, old.hash, old.hash, index, failed)
                # Taken here as every process takes it, and under the pin's lock: a later
                # reload's version, taken before this one's is assigned, is never undone.
                with suppress(Exception):  # else its next decision tries again (or fails)
                    gateway.current_policy()
        if pin is None:
            gateway.policy = new  # one assignment: decisions in flight keep their object
        _log.info("policy reloaded: %s -> %s", old.hash, new.hash)
        return PolicyReload(True, old.hash, new.hash, index)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
