"""execgate: a fail-closed execution gateway.

The safe recipe is ``Gateway.open(home).decide(submission)``: it verifies the signed
authorization artifact, the runtime's proof of possession, replay and revocation, the
environment, scope and policy, writes the decision to the audit log before answering,
and returns a signed ``Decision``. Anything it cannot verify is denied.

``Guard`` puts a gateway in front of Python callables: ``@guard.protect(...)`` runs a
function only on proceed (or its registered stand-in on reroute) and logs the outcome.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each public name and the module it comes from, imported on first use: the command
# line starts without loading the pipeline (and a Ctrl-C while it starts is handled).
_EXPORTS: dict[str, str] = {
    "ExecutionPaused": "execgate.adapters",
    "ExecutionRefused": "execgate.adapters",
    "Guard": "execgate.adapters",
    "issue_artifact": "execgate.artifacts",
    "verify_artifact": "execgate.artifacts",
    "issue_attestation": "execgate.attestations",
    "REASON_CODES": "execgate.errors",
    "AuditError": "execgate.errors",
    "ConfigError": "execgate.errors",
    "ExecgateError": "execgate.errors",
    "PolicyError": "execgate.errors",
    "RequestError": "execgate.errors",
    "StoreError": "execgate.errors",
    "UsageError": "execgate.errors",
    "VerificationError": "execgate.errors",
    "init_home": "execgate.home",
    "PrivateKey": "execgate.jose",
    "PublicKey": "execgate.jose",
    "Decision": "execgate.model",
    "Outcome": "execgate.model",
    "Reason": "execgate.model",
    "Request": "execgate.model",
    "Gateway": "execgate.pipeline",
    "Submission": "execgate.pipeline",
    "Policy": "execgate.policy",
    "load_policy": "execgate.policy",
    "Runtime": "execgate.proofs",
    "SQLiteStore": "execgate.store.sqlite",
    "TrustStore": "execgate.trust",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
