"""Forward-auth over HTTP under load, next to two peers measured in the same run.

Three servers, each loaded by ``wrk`` with 64 connections on loopback:

    execgate forward-auth   ``execgate serve --workers 2``, GET /v1/forward-auth with the
                            artifact, a fresh single-use proof per request and
                            X-Original-Method / X-Original-URI (what nginx sends): the
                            whole decision, durable audit append included
    trivial endpoint        the same server stack (uvicorn + Starlette, 2 workers): /healthz
    nginx auth_request      nginx (2 workers) whose location is guarded by auth_request to
                            its own ``return 200`` location: what a proxy costs at best

Targets (issue 6), as measured here: forward-auth >= 2,000 decisions/s with p99 <= 25 ms,
and >= 0.4 x the trivial endpoint's rate. Every forward-auth answer must be 200: a
non-2xx answer (a replayed or expired proof) would measure the wrong path, so the run
fails if wrk counts any.

Proofs are single use, so they are made before the run: one per request wrk may send,
split between wrk's threads (each thread reads its own share). A proof is valid for the
gateway's proof_max_age (120 s by default); the run is far shorter.

Run: make bench-http   (EXECGATE_BENCH_QUICK=1 for a short smoke run)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from execgate.adapters.http import forward_auth_headers
from execgate.artifacts import issue_artifact
from execgate.home import init_home
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.proofs import Runtime

QUICK = os.environ.get("EXECGATE_BENCH_QUICK") == "1"
SECONDS = 3 if QUICK else 10
CONNECTIONS = 64
WRK_THREADS = 2
RATE_CEILING = 6000  # proofs made per second of run: above any rate this machine reaches
TARGET_RATE = 2000
TARGET_P99_MS = 25.0
TARGET_RATIO = 0.4

POLICY = """\
version: 1
rules:
  - name: bench
    match: {action: "http.get", resource: "/bench/**"}
    effect: proceed
"""

TRUST_GRANT = '{action = "http.*", resource = "/**"}'

# wrk: each thread sends the header blocks of its own file, one per request, in order.
WRK_SCRIPT = """\
local counter = 0
local threads = {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  blocks = {}
  local f = assert(io.open(args[1] .. "/proofs-" .. id .. ".txt", "r"))
  for line in f:lines() do
    local headers = {}
    for name, value in line:gmatch("([^\\t]+)\\t([^\\t]+)\\t?") do headers[name] = value end
    table.insert(blocks, headers)
  end
  f:close()
  i = 0
end
function request()
  i = i + 1
  if i > #blocks then i = 1 end
  return wrk.format("GET", "/v1/forward-auth", blocks[i])
end
"""

NGINX_CONF = """\
worker_processes 2;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}/tmp;
  proxy_temp_path {root}/tmp;
  fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp;
  scgi_temp_path {root}/tmp;
  server {{
    listen 127.0.0.1:{port};
    location = /auth {{ internal; return 200; }}
    location / {{ auth_request /auth; return 200 "ok"; }}
  }}
}}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server for {url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def _running(argv: list[str], url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        _wait(url, proc)
        # Every worker up before measuring: a few requests more than there are workers.
        for _ in range(8):
            httpx.get(url, timeout=5.0)
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wrk(
    url: str, *, script: Path | None = None, script_arg: Path | None = None
) -> dict[str, float]:
    argv = ["wrk", "-t", str(WRK_THREADS), "-c", str(CONNECTIONS), "-d", f"{SECONDS}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script), url, "--", str(script_arg)]
    else:
        argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rate": rate,
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "non2xx": float(failed.group(1)) if failed else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _home(root: Path) -> tuple[Path, str, Runtime, str]:
    home = root / "home"
    config = init_home(home, gateway_id="gw-bench")
    (home / "policy.yaml").write_text(POLICY, encoding="utf-8")
    trust = (home / "trust.toml").read_text(encoding="utf-8")
    trust = trust.replace("scope = [\n", f"scope = [\n  {TRUST_GRANT},\n", 1)
    (home / "trust.toml").write_text(trust, encoding="utf-8")
    authority = read_private_key(home / "keys" / "authority.jwk")
    runtime = Runtime("bench-runtime", PrivateKey.generate())
    now = int(time.time())
    artifact = issue_artifact(
        key=authority,
        issuer="example-authority",
        subject=runtime.runtime_id,
        audience=config.gateway_id,
        scope=[{"action": "http.get", "resource": "/bench/**"}],
        runtime_key=runtime.key.public,
        now=now,
        ttl=3600,
    )
    return home, config.gateway_id, runtime, artifact


def _proof_files(root: Path, runtime: Runtime, artifact: str, audience: str) -> int:
    count = RATE_CEILING * SECONDS
    per_thread = count // WRK_THREADS
    now = int(time.time())
    for thread in range(WRK_THREADS):
        with (root / f"proofs-{thread}.txt").open("w", encoding="ascii") as out:
            for n in range(per_thread):
                headers = forward_auth_headers(
                    runtime,
                    artifact=artifact,
                    audience=audience,
                    method="GET",
                    uri=f"/bench/item/{thread}-{n}",
                    now=now,
                )
                headers["X-Original-Method"] = "GET"
                headers["X-Original-URI"] = f"/bench/item/{thread}-{n}"
                out.write("\t".join(f"{k}\t{v}" for k, v in headers.items()) + "\n")
    return per_thread * WRK_THREADS


def main() -> int:
    if shutil.which("wrk") is None:
        print("bench-http needs wrk (Debian package 'wrk'); 'make bench-http' installs it")
        return 2
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    root = Path(tempfile.mkdtemp(prefix="execgate-bench-http-"))
    try:
        home, audience, runtime, artifact = _home(root)
        t0 = time.perf_counter()
        made = _proof_files(root, runtime, artifact, audience)
        print(f"{made} single-use proofs made in {time.perf_counter() - t0:.1f} s")
        script = root / "forward.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")

        port = _free_port()
        serve = [
            sys.executable, "-m", "execgate", "--home", str(home), "serve",
            "--port", str(port), "--workers", "2",
        ]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        with _running(serve, base + "/healthz", root / "serve.log"):
            gate = _wrk(base, script=script, script_arg=root)
            trivial = _wrk(base + "/healthz")

        (root / "tmp").mkdir()
        nport = _free_port()
        conf = root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=root, port=nport), encoding="utf-8")
        nbase = f"http://127.0.0.1:{nport}/"
        with _running([nginx, "-p", str(root), "-c", str(conf)], nbase, root / "nginx.log"):
            peer = _wrk(nbase)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nwrk: {CONNECTIONS} connections, {WRK_THREADS} threads, {SECONDS} s each, loopback")
    print(f"{'server':<42}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    rows = (
        ("execgate forward-auth (2 workers)", gate),
        ("same stack, trivial /healthz (2 workers)", trivial),
        ("nginx auth_request -> own 200 (2 workers)", peer),
    )
    for name, r in rows:
        print(f"{name:<42}{r['rate']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['non2xx']:>9.0f}")
    ratio = gate["rate"] / trivial["rate"]
    checks = (
        (f"forward-auth >= {TARGET_RATE} decisions/s", gate["rate"] >= TARGET_RATE),
        (f"forward-auth p99 <= {TARGET_P99_MS:.0f} ms", gate["p99"] <= TARGET_P99_MS),
        (f"forward-auth >= {TARGET_RATIO} x trivial ({ratio:.2f} x)", ratio >= TARGET_RATIO),
    )
    print(f"forward-auth / nginx auth_request: {gate['rate'] / peer['rate']:.3f} x")
    for label, met in checks:
        print(f"  {'MET ' if met else 'MISS'} {label}")
    if gate["non2xx"] or gate["socket_errors"]:
        print("INVALID RUN: forward-auth answered non-2xx or sockets failed; see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
