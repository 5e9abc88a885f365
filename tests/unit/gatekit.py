"""Shared helpers for the gateway-core tests: a real gateway home, keys, an injected clock.

This would be ``tests/unit/conftest.py``, but mypy (strict, no ``__init__.py`` in tests)
maps every ``conftest.py`` to the module name ``conftest`` and refuses the duplicate of
``tests/vectors/conftest.py``. So the helpers live in a uniquely named module, and each
test file declares the two-line fixtures it needs.

``Kit`` holds one gateway home made by ``init_home`` (its own trust store and keys, and the
test policy below), the authority, attester and node keys read back from that home, a
runtime with a fresh key, and a ``Clock`` every gateway opened from the kit reads.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from execgate.artifacts import ARTIFACT_TYP, issue_artifact
from execgate.attestations import issue_attestation
from execgate.home import GatewayConfig, init_home
from execgate.jose import PrivateKey, encode
from execgate.keyfile import read_private_key
from execgate.model import Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.store.base import Store

__all__ = [
    "AUTHORITY_ID",
    "GATEWAY_ID",
    "NOW",
    "PAYMENTS",
    "POLICY",
    "RUNTIME_ID",
    "Clock",
    "Kit",
    "make_kit",
]

NOW: Final = 1_700_000_000
GATEWAY_ID: Final = "gw-test"
RUNTIME_ID: Final = "agent-1"
AUTHORITY_ID: Final = "example-authority"  # what init_home writes into trust.toml
PAYMENTS: Final = ({"action": "payments.*", "resource": "acct:**"},)

# The trust store init_home writes lets the authority grant payments.* on acct:**,
# shell.exec on host:** and reports.read on **. This policy gives every outcome a rule.
POLICY: Final = """\
version: 1
rules:
  - name: refunds-denied
    match: {action: payments.refund, resource: "acct:**"}
    effect: deny
    reason: refunds are manual
  - name: charges-over-ten
    match: {action: payments.charge, resource: "acct:**"}
    when: "request.args.amount > 10"
    effect: proceed
  - name: big-transfers
    match: {action: payments.transfer, resource: "acct:**"}
    when: "request.args.amount > 1000"
    effect: pause
    approvers: [finance]
    quorum: 1
    ttl: 600
  - name: payments
    match: {action: "payments.*", resource: "acct:**"}
    effect: proceed
  - name: shell-to-sandbox
    match: {action: shell.exec, resource: "host:**"}
    effect: reroute
    target: sandbox
  - name: reports
    match: {action: reports.read, resource: "report:**"}
    effect: proceed
"""


class Clock:
    """The injected clock. Set ``t`` to move time; set ``error`` to make it raise."""

    def __init__(self, t: float = NOW) -> None:
        self.t = t
        self.error: Exception | None = None

    def __call__(self) -> float:
        if self.error is not None:
            raise self.error
        return self.t

    @property
    def now(self) -> int:
        return int(self.t) if math.isfinite(self.t) else NOW


@dataclass
class Kit:
    home: Path
    config: GatewayConfig
    clock: Clock
    authority: PrivateKey
    attester: PrivateKey
    node_key: PrivateKey
    runtime: Runtime
    _gateways: list[Gateway] = field(default_factory=list)

    # -- gateways ----------------------------------------------------------------------

    def gateway(self, store: Store | None = None) -> Gateway:
        """Open the home's gateway on the injected clock, optionally on another store."""
        gw = Gateway.open(self.home, now=self.clock)
        if store is not None:
            gw.store.close()
            gw.store = store
        self._gateways.append(gw)
        return gw

    def close(self) -> None:
        for gw in self._gateways:
            gw.close()
        self._gateways.clear()

    def set_leeway(self, seconds: int) -> None:
        """Change ``[limits] leeway`` in the home's config (gateways opened later read it)."""
        config = self.home / "execgate.toml"
        text = config.read_text(encoding="utf-8")
        config.write_text(re.sub(r"(?m)^leeway = \d+ ", f"leeway = {seconds} ", text), "utf-8")

    def add_admin(self, admin: str, roles: list[str]) -> None:
        """Another admin in the home's trust store, its key in ``keys/<admin>.jwk``."""
        key = PrivateKey.generate()
        path = self.home / "keys" / f"{admin}.jwk"
        path.write_text(json.dumps(key.to_jwk(private=True)))
        path.chmod(0o600)
        x = key.public.to_jwk()["x"]
        with (self.home / "trust.toml").open("a", encoding="utf-8") as trust:
            trust.write(
                f'\n[[admin]]\nid = "{admin}"\nroles = {json.dumps(roles)}\n'
                f'keys = [{{kty = "OKP", crv = "Ed25519", x = "{x}"}}]\n'
            )

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every record in the home's log, in order (optionally of one kind), read from
        the store file itself: what any gateway or server on this home has logged."""
        db = sqlite3.connect(f"file:{self.config.store}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT entry FROM audit_log ORDER BY idx").fetchall()
        finally:
            db.close()
        found = [json.loads(row[0]) for row in rows]
        return [r for r in found if kind is None or r["kind"] == kind]

    # -- artifacts ---------------------------------------------------------------------

    def artifact(
        self,
        scope: Any = PAYMENTS,
        *,
        now: int | None = None,
        ttl: int = 600,
        subject: str = RUNTIME_ID,
        audience: str | list[str] = GATEWAY_ID,
        key: PrivateKey | None = None,
        issuer: str = AUTHORITY_ID,
        runtime_key: PrivateKey | None = None,
        **extra: Any,
    ) -> str:
        """A valid artifact from the home's authority, bound to the kit's runtime."""
        return issue_artifact(
            key=key or self.authority,
            issuer=issuer,
            subject=subject,
            audience=audience,
            runtime_key=(runtime_key or self.runtime.key).public,
            scope=list(scope),
            now=self.clock.now if now is None else now,
            ttl=ttl,
            **extra,
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """A valid artifact claim set; ``None`` values remove a claim."""
        now = self.clock.now
        claims: dict[str, Any] = {
            "iss": AUTHORITY_ID,
            "sub": RUNTIME_ID,
            "aud": GATEWAY_ID,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "artifact-jti-0001",
            "scope": [dict(g) for g in PAYMENTS],
            "cnf": {"jkt": self.runtime.key.public.thumbprint()},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def raw_artifact(
        self,
        claims: dict[str, Any],
        *,
        key: PrivateKey | None = None,
        header: dict[str, Any] | None = None,
    ) -> str:
        """Sign any claim set as an artifact, bypassing ``issue_artifact``'s checks."""
        signer = key or self.authority
        hdr = {"typ": ARTIFACT_TYP, "kid": signer.public.thumbprint()}
        if header is not None:
            hdr.update(header)
        return encode(hdr, claims, signer)

    def attestation(
        self,
        env: dict[str, str] | None = None,
        *,
        subject: str = RUNTIME_ID,
        key: PrivateKey | None = None,
        now: int | None = None,
        ttl: int = 300,
        runtime_key: PrivateKey | None = None,
    ) -> str:
        return issue_attestation(
            key=key or self.attester,
            subject=subject,
            runtime_key=(runtime_key or self.runtime.key).public,
            env=env or {"region": "eu-west-1"},
            now=self.clock.now if now is None else now,
            ttl=ttl,
        )

    # -- requests ----------------------------------------------------------------------

    def request(
        self,
        action: str = "payments.transfer",
        resource: str = "acct:1",
        *,
        runtime: str = RUNTIME_ID,
        parent: str | None = None,
        **args: Any,
    ) -> Request:
        return Request(action=action, resource=resource, runtime=runtime, args=args, parent=parent)

    def submission(
        self,
        request: Request,
        artifact: str,
        *,
        signer: PrivateKey | None = None,
        now: int | None = None,
        audience: str = GATEWAY_ID,
        attestation: str | None = None,
    ) -> dict[str, Any]:
        """The wire shape, with a fresh proof by the runtime key (or ``signer``)."""
        runtime = self.runtime if signer is None else Runtime(self.runtime.runtime_id, signer)
        return runtime.submission(
            request,
            artifact,
            audience=audience,
            now=self.clock.now if now is None else now,
            attestation=attestation,
        )

    def submit(self, request: Request | None = None, **artifact_kw: Any) -> dict[str, Any]:
        """A complete, valid submission for ``request`` (default: a small transfer)."""
        request = request or self.request(amount=100)
        return self.submission(request, self.artifact(**artifact_kw))


def make_kit(base: Path, *, policy: str = POLICY) -> Kit:
    """A fresh gateway home under ``base`` with the test policy and a new runtime."""
    home = base / "home"
    config = init_home(home, gateway_id=GATEWAY_ID)
    (home / "policy.yaml").write_text(policy, encoding="utf-8")
    return Kit(
        home=home,
        config=config,
        clock=Clock(),
        authority=read_private_key(home / "keys" / "authority.jwk"),
        attester=read_private_key(home / "keys" / "attester.jwk"),
        node_key=read_private_key(config.node_key),
        runtime=Runtime(RUNTIME_ID, PrivateKey.generate()),
    )
