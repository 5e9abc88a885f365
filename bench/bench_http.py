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

Where the time goes, from the same run: the CPU the server's processes spent per request
(read from /proc; wrk's own is not counted) for forward-auth and for /healthz, and the
CPU of the same decisions made in-process, with no HTTP around them (``decide_async`` on
one event loop of the kind the server runs, uvloop, with as many in flight as wrk has
connections, so they share group commits as the server's do). A forward-auth call costs
at least the decision plus what /healthz costs, so with every core busy the server
answers at most cores / (decision + /healthz) calls a second: the run prints that bound
and its ratio to /healthz's rate, and says when the decision's own cost rules a target
out. With every connection always busy, the mean latency is connections / rate (Little's law), so
p99 <= 25 ms needs more than 64 / 25 ms = 2,560 calls a second however even they are.

Run: make bench-http   (EXECGATE_BENCH_QUICK=1 for a short smoke run)
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from execgate.adapters.http import forward_auth_headers, http_request
from execgate.artifacts import issue_artifact
from execgate.home import init_home
from execgate.jose import PrivateKey
from execgate.keyfile import read_private_key
from execgate.model import Decision, Outcome
from execgate.pipeline import Gateway
from execgate.proofs import Runtime
from execgate.submission import Submission

QUICK = os.environ.get("EXECGATE_BENCH_QUICK") == "1"
SECONDS = 3 if QUICK else 10
CONNECTIONS = 64
WRK_THREADS = 2
RATE_CEILING = 9000  # proofs made per second of run: above any rate measured (5,221/s)
TARGET_RATE = 2000
TARGET_P99_MS = 25.0
TARGET_RATIO = 0.4
IN_PROCESS = 1000 if QUICK else 5000  # decisions made in-process, without HTTP

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
def _running(argv: list[str], url: str, log: Path) -> Iterator[int]:
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        _wait(url, proc)
        # Every worker up before measuring: a few requests more than there are workers.
        for _ in range(8):
            httpx.get(url, timeout=5.0)
        yield proc.pid  # its process group (start_new_session)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of group ``pgid``
    (the server and its workers), from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii").rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _wrk(
    url: str, *, script: Path | None = None, script_arg: Path | None = None, pgid: int
) -> dict[str, float]:
    argv = ["wrk", "-t", str(WRK_THREADS), "-c", str(CONNECTIONS), "-d", f"{SECONDS}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script), url, "--", str(script_arg)]
    else:
        argv.append(url)
    cpu = _group_cpu(pgid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = _group_cpu(pgid) - cpu
    answered = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rate": rate,
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "non2xx": float(failed.group(1)) if failed else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
        "cpu_us": cpu / answered * 1e6,
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


def _decision_cpu_us(home: Path, runtime: Runtime, artifact: str, audience: str) -> float:
    """CPU per decision with no HTTP around it: forward-auth's own calls (the same
    request, artifact and fresh proof), each made into its request and submission as
    forward-auth makes them from the headers, decided by ``decide_async`` on one event
    loop with CONNECTIONS in flight, each durably logged before its answer."""
    now = int(time.time())
    made = []
    for n in range(IN_PROCESS):
        uri = f"/bench/in/{n}"
        request = http_request(method="GET", uri=uri, runtime=runtime.runtime_id)
        made.append(
            (
                uri,
                runtime.runtime_id,
                artifact,
                runtime.proof(request, artifact, audience=audience, now=now),
            )
        )
    warm = IN_PROCESS // 10  # caches filled, store warm: not counted
    gateway = Gateway.open(home)
    # The event loop the server's workers run (uvicorn picks uvloop where installed).
    try:
        with asyncio.Runner(loop_factory=_server_loop()) as runner:
            decisions = runner.run(_decide_all(gateway, made[:warm]))
            cpu = time.process_time()
            measured = runner.run(_decide_all(gateway, made[warm:]))
            cpu = time.process_time() - cpu
    finally:
        gateway.close()
    if any(d.outcome is not Outcome.PROCEED for d in decisions + measured):
        raise SystemExit("INVALID RUN: an in-process decision was not proceed")
    return cpu / len(measured) * 1e6


def _server_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _decide_all(
    gateway: Gateway, made: Sequence[tuple[str, str, str, str]]
) -> list[Decision]:
    """Every call (URI, runtime, artifact, proof) made into a submission and decided,
    CONNECTIONS at a time (each task takes the next)."""
    pending = iter(made)
    decisions: list[Decision] = []

    async def caller() -> None:
        for uri, runtime, artifact, proof in pending:
            request = http_request(method="GET", uri=uri, runtime=runtime)
            decisions.append(await gateway.decide_async(Submission(request, artifact, proof)))

    await asyncio.gather(*(caller() for _ in range(CONNECTIONS)))
    return decisions


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
        decision_us = _decision_cpu_us(home, runtime, artifact, audience)
        script = root / "forward.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")

        port = _free_port()
        serve = [
            sys.executable, "-m", "execgate", "--home", str(home), "serve",
            "--port", str(port), "--workers", "2",
        ]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        with _running(serve, base + "/healthz", root / "serve.log") as group:
            gate = _wrk(base, script=script, script_arg=root, pgid=group)
            trivial = _wrk(base + "/healthz", pgid=group)

        (root / "tmp").mkdir()
        nport = _free_port()
        conf = root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=root, port=nport), encoding="utf-8")
        nbase = f"http://127.0.0.1:{nport}/"
        nginx_argv = [nginx, "-p", str(root), "-c", str(conf)]
        with _running(nginx_argv, nbase, root / "nginx.log") as group:
            peer = _wrk(nbase, pgid=group)
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
    _accounting(gate, trivial, decision_us)
    if gate["non2xx"] or gate["socket_errors"]:
        print("INVALID RUN: forward-auth answered non-2xx or sockets failed; see above")
        return 1
    return 0


def _accounting(gate: dict[str, float], trivial: dict[str, float], decision_us: float) -> None:
    """Where forward-auth's time goes, and what the decision alone leaves reachable."""
    cores = len(os.sched_getaffinity(0))
    least_us = decision_us + trivial["cpu_us"]  # a forward-auth call costs at least this
    reachable = cores * 1e6 / least_us
    bound = reachable / trivial["rate"]
    needed = CONNECTIONS / (TARGET_P99_MS / 1000)
    rest = gate["cpu_us"] - least_us
    print(f"\nCPU per call, server processes ({cores} cores; wrk's own not counted)")
    for label, us in (
        ("forward-auth over HTTP", gate["cpu_us"]),
        ("the decision alone, in-process, no HTTP", decision_us),
        ("trivial /healthz over HTTP", trivial["cpu_us"]),
        ("the rest: HTTP in and out, metrics, smaller batches", rest),
    ):
        print(f"  {label:<50}{us:>7.0f} us")
    print(
        f"at least decision + /healthz per call: at most {reachable:,.0f} calls/s on"
        f" {cores} cores, {bound:.2f} x /healthz's rate"
    )
    print(
        f"p99 <= {TARGET_P99_MS:.0f} ms with {CONNECTIONS} busy connections needs more than"
        f" {needed:,.0f} calls/s (mean latency = connections / rate)"
    )
    if bound < TARGET_RATIO:
        print(f"  the decision's own CPU rules out >= {TARGET_RATIO} x /healthz on this machine")
    if reachable <= needed:
        print(f"  the decision's own CPU rules out p99 <= {TARGET_P99_MS:.0f} ms on this machine")


if __name__ == "__main__":
    sys.exit(main())
