"""execgate: a fail-closed execution gateway.

The safe recipe is ``Gateway.open(home).decide(submission)``: it verifies the signed
authorization artifact, the runtime's proof of possession, replay and revocation, the
environment, scope and policy, writes the decision to the audit log before answering,
and returns a signed ``Decision``. Anything it cannot verify is denied.

``Guard`` puts a gateway in front of Python callables: ``@guard.protect(...)`` runs a
function only on proceed (or its registered stand-in on reroute) and logs the outcome.
"""

from execgate.adapters import ExecutionPaused, ExecutionRefused, Guard
from execgate.artifacts import issue_artifact, verify_artifact
from execgate.attestations import issue_attestation
from execgate.errors import (
    REASON_CODES,
    AuditError,
    ConfigError,
    ExecgateError,
    PolicyError,
    RequestError,
    StoreError,
    UsageError,
    VerificationError,
)
from execgate.home import init_home
from execgate.jose import PrivateKey, PublicKey
from execgate.model import Decision, Outcome, Reason, Request
from execgate.pipeline import Gateway, Submission
from execgate.policy import Policy, load_policy
from execgate.proofs import Runtime
from execgate.store.sqlite import SQLiteStore
from execgate.trust import TrustStore

__all__ = [
    "REASON_CODES",
    "AuditError",
    "ConfigError",
    "Decision",
    "ExecgateError",
    "ExecutionPaused",
    "ExecutionRefused",
    "Gateway",
    "Guard",
    "Outcome",
    "Policy",
    "PolicyError",
    "PrivateKey",
    "PublicKey",
    "Reason",
    "Request",
    "RequestError",
    "Runtime",
    "SQLiteStore",
    "StoreError",
    "Submission",
    "TrustStore",
    "UsageError",
    "VerificationError",
    "init_home",
    "issue_artifact",
    "issue_attestation",
    "load_policy",
    "verify_artifact",
]

__version__ = "0.1.0"
