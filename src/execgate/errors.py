"""One exception tree for execgate, and the stable reason codes.

    ExecgateError              base of everything execgate raises on purpose
    ├── UsageError             a CLI caller asked for something malformed (exit 2)
    ├── RequestError           a decision request is malformed or oversized: not a decision
    ├── ConfigError            gateway home, config, trust store or key file is unusable
    │   └── PolicyError        a policy file was refused at load (names the rule and line)
    ├── VerificationError      a presented object failed a check; carries a reason ``code``
    │   └── JoseError          a compact JWS failed the strict codec; carries a ``kind``
    ├── EvidenceError          audit evidence (proof, checkpoint, note, export) does not verify
    ├── ApprovalError          an approval review is refused (forged, foreign, self-approval…)
    ├── AdminError             an admin call is refused: ``admin.unauthenticated`` (no valid
    │                          token: HTTP 401) or ``admin.forbidden`` (lacks the role: 403)
    └── StoreError             the state store could not answer (fail closed)
        └── AuditError         the audit log could not be appended to (fail closed)

Reason codes (``REASON_CODES``) are part of the public API: they appear in decisions,
receipts, the audit log and CLI output, and never change meaning.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "REASON_CODES",
    "AdminError",
    "ApprovalError",
    "AuditError",
    "ConfigError",
    "EvidenceError",
    "ExecgateError",
    "JoseError",
    "PolicyError",
    "RequestError",
    "StoreError",
    "StoreUnavailable",
    "UsageError",
    "VerificationError",
]

REASON_CODES: Final = frozenset(
    {
        "artifact.missing",
        "artifact.malformed",
        "artifact.signature_invalid",
        "artifact.untrusted_issuer",
        "artifact.expired",
        "artifact.not_yet_valid",
        "artifact.wrong_audience",
        "artifact.revoked",
        "artifact.exhausted",
        "scope.not_granted",
        "scope.constraint_violated",
        "identity.proof_missing",
        "identity.proof_invalid",
        "identity.mismatch",
        "replay.detected",
        "environment.untrusted",
        "environment.mismatch",
        "lineage.broken",
        "lineage.attenuation_violated",
        "lineage.depth_exceeded",
        "policy.denied",
        "policy.mismatch",
        "policy.no_match",
        "approval.required",
        "approval.denied",
        "approval.expired",
        "internal.error",
        "store.unavailable",
        "audit.unavailable",
    }
)


class ExecgateError(Exception):
    """Base of every exception execgate raises on purpose."""


class UsageError(ExecgateError):
    """A command-line caller asked for something malformed."""


class RequestError(ExecgateError):
    """A decision request is malformed or oversized; it is refused before any decision."""


class ConfigError(ExecgateError):
    """The gateway home, its config, trust store or a key file cannot be used."""


class PolicyError(ConfigError):
    """A policy document was refused; ``rule`` and ``line`` locate the problem."""

    def __init__(self, message: str, *, rule: str | None = None, line: int | None = None):
        where = []
        if rule is not None:
            where.append(f"rule {rule!r}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.rule = rule
        self.line = line


class VerificationError(ExecgateError):
    """A presented object failed a check. ``code`` is one of ``REASON_CODES``."""

    def __init__(self, code: str, detail: str):
        if code not in REASON_CODES:
            raise ValueError(f"unknown reason code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class JoseError(ExecgateError):
    """A compact JWS failed the strict codec.

    ``kind`` is ``"malformed"`` (structure, encoding, JSON, header rules, size),
    ``"unknown_key"`` (no pinned key for the ``kid``) or ``"signature_invalid"``.
    The caller maps the kind to the reason code of the object it was verifying.
    """

    KINDS: Final = frozenset({"malformed", "unknown_key", "signature_invalid"})

    def __init__(self, kind: str, detail: str):
        if kind not in self.KINDS:
            raise ValueError(f"unknown JOSE error kind {kind!r}")
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class AdminError(ExecgateError):
    """An admin call refused: ``code`` is ``admin.unauthenticated`` (the token does not
    verify) or ``admin.forbidden`` (the admin lacks the role). Admin codes are HTTP error
    codes, not decision reasons, so they are not in ``REASON_CODES``."""

    CODES: Final = frozenset({"admin.unauthenticated", "admin.forbidden"})

    def __init__(self, code: str, detail: str, *, admin: str | None = None):
        if code not in self.CODES:
            raise ValueError(f"unknown admin error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.admin = admin  # who, once the signature verified (a 403); else None


class ApprovalError(ExecgateError):
    """A review of a paused request is refused: a forged or foreign signature, an approver
    outside the required groups, a self-approval, an approval that is no longer pending."""


class EvidenceError(ExecgateError):
    """Audit evidence does not verify: a Merkle proof, a checkpoint, a signed note or an
    export. The message names what is wrong (and the first bad index where there is one)."""


class StoreError(ExecgateError):
    """The state store could not answer; the gateway fails closed."""


class AuditError(StoreError):
    """The audit log could not be appended to; nothing may execute."""


class StoreUnavailable(AuditError):
    """The append failed because the store itself could not be used (it cannot be
    opened or written, is closed, or stayed locked past its wait): the decision says
    ``store.unavailable`` as well as ``audit.unavailable``."""
