"""The public surface is deliberate: adding or removing a name is an API change."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import execgate

PUBLIC = [
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

MODULES = [
    "execgate.adapters",
    "execgate.adapters.guard",
    "execgate.adapters.http",
    "execgate.artifacts",
    "execgate.attestations",
    "execgate.audit.query",
    "execgate.cli",
    "execgate.cli.admin",
    "execgate.cli.approvals",
    "execgate.cli.audit",
    "execgate.cli.decide",
    "execgate.cli.delegate",
    "execgate.cli.issue",
    "execgate.cli.keys",
    "execgate.cli.lineage",
    "execgate.cli.policy",
    "execgate.cli.serve",
    "execgate.cli.tokens",
    "execgate.cli.verify",
    "execgate.admin",
    "execgate.delegation",
    "execgate.errors",
    "execgate.home",
    "execgate.jose",
    "execgate.keyfile",
    "execgate.model",
    "execgate.notify",
    "execgate.pipeline",
    "execgate.policy",
    "execgate.proofs",
    "execgate.receipts",
    "execgate.scope",
    "execgate.server",
    "execgate.server.admin",
    "execgate.server.app",
    "execgate.server.forward_auth",
    "execgate.server.logs",
    "execgate.server.metrics",
    "execgate.server.openapi",
    "execgate.store.base",
    "execgate.store.sqlite",
    "execgate.submission",
    "execgate.trust",
]


def test_top_level_names_are_pinned() -> None:
    assert execgate.__all__ == PUBLIC
    assert sorted(PUBLIC, key=_isort_key) == PUBLIC
    for name in PUBLIC:
        assert getattr(execgate, name) is not None


def test_top_level_names_are_the_modules_own_and_load_on_first_use() -> None:
    assert set(execgate._EXPORTS) == set(PUBLIC)
    for name, module in execgate._EXPORTS.items():
        assert getattr(execgate, name) is getattr(importlib.import_module(module), name)
    assert set(PUBLIC) <= set(dir(execgate))
    with pytest.raises(AttributeError, match="no attribute 'Gatway'"):
        execgate.Gatway  # noqa: B018


def test_the_command_line_starts_without_the_pipeline() -> None:
    """``execgate --help`` (and a Ctrl-C while a command starts) need not wait for the
    pipeline, the policy engine, the store and the server to load: each command loads what
    it uses."""
    code = "import sys, execgate.cli; print(sorted(m for m in sys.modules if m in HEAVY))"
    heavy = ["execgate.pipeline", "execgate.policy", "execgate.store.sqlite", "starlette"]
    result = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {heavy!r}\n{code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions: the order ruff's RUF022 keeps."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_module_declares_a_sorted_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = module.__all__
    assert names == sorted(names, key=_isort_key), f"{module_name}.__all__ is not sorted"
    for name in names:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name}"


def test_the_five_outcomes_are_distinct_and_only_two_execute() -> None:
    outcomes = list(execgate.Outcome)
    assert [o.value for o in outcomes] == ["proceed", "pause", "reroute", "deny", "fail_closed"]
    assert {o for o in outcomes if o.executes} == {
        execgate.Outcome.PROCEED,
        execgate.Outcome.REROUTE,
    }
