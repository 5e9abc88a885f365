"""/metrics in process: decisions by outcome and reason, stage timing, HTTP requests by
route template, the store gauges (and a store that is down), the gateway observer's
cost-free default and its isolation, and multiprocess aggregation across real processes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from gatekit import Kit, make_kit
from prometheus_client import generate_latest, values
from prometheus_client.parser import text_string_to_metric_families
from test_server_api import Client

from execgate._state import DecisionState
from execgate.errors import ConfigError
from execgate.model import Decision, Outcome, Reason
from execgate.pipeline import Gateway
from execgate.server import create_app
from execgate.server import metrics as metrics_module
from execgate.server.metrics import MULTIPROC_ENV, Metrics, multiprocess_dir
from execgate.store.sqlite import SQLiteStore
from execgate.store.unavailable import UnavailableStore

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _scrape(client: Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return _samples(response.text)


def test_decisions_by_outcome_and_reason_stages_and_gauges(kit: Kit) -> None:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        submission = kit.submit()
        outcomes = []
        for body in (
            submission,  # proceed
            submission,  # replay: deny
            kit.submit(kit.request("payments.refund", amount=1)),  # policy.denied
            kit.submit(kit.request(amount=5000)),  # pause, approval.required
        ):
            response = client.post("/v1/decisions", json=body)
            assert response.status_code == 200
            outcomes.append(response.json()["outcome"])
        assert outcomes == ["proceed", "deny", "deny", "pause"]
        samples = _scrape(client)

    total = "execgate_decisions_total"
    assert _value(samples, total, outcome="proceed", reason="none") == 1
    assert _value(samples, total, outcome="deny", reason="replay.detected") == 1
    assert _value(samples, total, outcome="deny", reason="policy.denied") == 1
    assert _value(samples, total, outcome="pause", reason="approval.required") == 1
    assert sum(v for (n, _), v in samples.items() if n == total) == 4
    # Every decision passed parse and artifact; the three that were logged, audit too.
    stage_count = "execgate_decision_stage_seconds_count"
    assert _value(samples, stage_count, stage="artifact") == 4
    assert _value(samples, stage_count, stage="audit") == 4
    # The replay is found in the commit, after the policy stage: all four reached it.
    assert _value(samples, stage_count, stage="policy") == 4
    assert (_value(samples, "execgate_decision_stage_seconds_sum", stage="audit") or 0) > 0
    # The gauges are the store's own numbers.
    assert _value(samples, "execgate_store_up") == 1
    with closing(SQLiteStore(kit.config.store)) as store:
        assert _value(samples, "execgate_audit_log_entries") == store.size() == 4
        assert _value(samples, "execgate_replay_store_entries") == store.replay_size() == 3
        assert _value(samples, "execgate_pending_approvals") == 1
        assert store.pending_approvals(kit.clock.now) == 1
        assert store.pending_approvals(kit.clock.now + 10_000) == 0  # expired: not pending
    # HTTP requests by route template, method and status.
    assert (
        _value(
            samples,
            "execgate_http_requests_total",
            method="POST",
            route="/v1/decisions",
            status="200",
        )
        == 4
    )


def test_http_requests_are_counted_by_route_template_never_the_raw_path(kit: Kit) -> None:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        assert client.get("/v1/decisions/some-secret-looking-id").status_code == 404
        assert client.get("/no/such/route").status_code == 404
        assert client.request("PURGE", "/healthz").status_code == 405
        text = client.get("/metrics").text
    samples = _samples(text)
    requests = "execgate_http_requests_total"
    assert (
        _value(samples, requests, method="GET", route="/v1/decisions/{decision_id}", status="404")
        == 1
    )
    assert _value(samples, requests, method="GET", route="unmatched", status="404") == 1
    assert _value(samples, requests, method="other", route="/healthz", status="405") == 1
    assert "some-secret-looking-id" not in text
    assert "/no/such/route" not in text


def test_a_store_that_is_down_still_scrapes_with_its_fail_closed_counts(kit: Kit) -> None:
    """Documented choice: the scrape answers 200; the store gauges are absent,
    execgate_store_up is 0, and the decision counters (which show the outage) remain."""
    down = UnavailableStore("the database is unreachable")
    with Client(create_app(open_gateway=lambda: kit.gateway(down), now=kit.clock)) as client:
        decided = client.post("/v1/decisions", json=kit.submit()).json()
        assert decided["outcome"] == "fail_closed"
        samples = _scrape(client)
    assert _value(samples, "execgate_store_up") == 0
    names = {name for name, _ in samples}
    assert "execgate_audit_log_entries" not in names
    assert "execgate_replay_store_entries" not in names
    assert "execgate_pending_approvals" not in names
    failed = [
        v
        for (n, labels), v in samples.items()
        if n == "execgate_decisions_total" and ("outcome", "fail_closed") in labels
    ]
    assert failed == [1]


def test_one_read_of_the_store_serves_the_scrapes_of_a_second(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics needs no credential: a burst of scrapes, however many come at once,
    counts the replay store and renders the text once per ``GAUGE_MAX_AGE``, and a
    later scrape sees what was decided meanwhile."""
    gateway = kit.gateway()
    counted = []
    replay_size = gateway.store.replay_size

    def counting() -> int:
        counted.append(1)
        time.sleep(0.05)  # scrapes arriving meanwhile wait for this read
        return replay_size()

    rendered = []
    generate = generate_latest

    def rendering(registry: Any) -> bytes:
        rendered.append(1)  # merging every worker's files: tens of ms with several
        return generate(registry)

    monkeypatch.setattr(gateway.store, "replay_size", counting)
    monkeypatch.setattr(metrics_module, "generate_latest", rendering)
    # Long enough for the burst on a busy machine (at 0.5 s a CI run rendered twice).
    monkeypatch.setattr(metrics_module, "GAUGE_MAX_AGE", 3.0)
    with Client(create_app(open_gateway=lambda: gateway, now=kit.clock)) as client:
        client.post("/v1/decisions", json=kit.submit())
        with ThreadPoolExecutor(max_workers=8) as pool:
            scraped = list(pool.map(lambda _: _scrape(client), range(16)))
        assert {_value(s, "execgate_replay_store_entries") for s in scraped} == {1}
        assert len(counted) == len(rendered) == 1
        client.post("/v1/decisions", json=kit.submit())
        time.sleep(3.0)
        later = _scrape(client)
        assert _value(later, "execgate_replay_store_entries") == 2
        assert _value(later, "execgate_decisions_total", outcome="proceed", reason="none") == 2
        assert len(counted) == len(rendered) == 2


def test_a_read_serves_only_the_gateway_it_was_made_from(kit: Kit) -> None:
    """A read kept for a second is not shown for another gateway, nor for none: the
    gauges of a closed gateway are not served as if it were up."""
    opened = [kit.gateway(), kit.gateway()]
    current: list[Gateway | None] = [opened[0]]
    gauges = metrics_module._StoreGauges(gateway=lambda: current[0], now=kit.clock)

    def store_up() -> float:
        [up] = [m for m in gauges.collect() if m.name == "execgate_store_up"]
        return up.samples[0].value

    try:
        assert store_up() == 1
        current[0] = None
        assert store_up() == 0
        current[0] = opened[1]
        assert store_up() == 1
    finally:
        for gateway in opened:
            gateway.close()


def test_scrape_without_an_open_gateway_has_no_store_gauges(kit: Kit) -> None:
    app = create_app(open_gateway=kit.gateway, now=kit.clock)
    with Client(app, lifespan=False) as client:
        samples = _scrape(client)
    assert _value(samples, "execgate_store_up") == 0
    assert not any(name == "execgate_audit_log_entries" for name, _ in samples)


def _decision(outcome: Outcome, *codes: str) -> Decision:
    return Decision(
        decision_id="d-1",
        outcome=outcome,
        reasons=tuple(Reason(c, "detail") for c in codes),
        request_hash=None,
        policy_hash="p",
        decided_at=0,
    )


def test_reason_labels_are_a_closed_set() -> None:
    metrics = Metrics(gateway=lambda: None, now=lambda: 0.0)
    # Reason refuses unknown codes; the metrics do not rely on it (a label set that could
    # grow with input would be a memory leak in every worker and in Prometheus).
    odd = _decision(Outcome.DENY, "policy.denied")
    object.__setattr__(odd.reasons[0], "code", "made.up.code")
    metrics.observe(odd, {"artifact": 0.001})
    # The code that settled the outcome is the last one (an unlogged decision keeps
    # the earlier reasons and adds audit.unavailable).
    metrics.observe(_decision(Outcome.FAIL_CLOSED, "policy.denied", "audit.unavailable"), {})
    samples = _samples(metrics.render().decode())
    total = "execgate_decisions_total"
    assert _value(samples, total, outcome="deny", reason="other") == 1
    assert _value(samples, total, outcome="fail_closed", reason="audit.unavailable") == 1
    assert not any("made.up.code" in str(labels) for _, labels in samples)


def test_each_app_has_its_own_registry(kit: Kit) -> None:
    first = Metrics(gateway=lambda: None, now=lambda: 0.0)
    second = Metrics(gateway=lambda: None, now=lambda: 0.0)
    first.request("GET", "/healthz", 200, 0.001)
    requests = "execgate_http_requests_total"
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    assert _value(_samples(first.render().decode()), requests, **labels) == 1
    assert _value(_samples(second.render().decode()), requests, **labels) is None


def test_the_observer_sees_every_decision_and_cannot_change_one(kit: Kit) -> None:
    gateway = kit.gateway()
    assert gateway.observer is None  # the default: stages are not timed at all
    seen: list[tuple[str, dict[str, float]]] = []

    def observe(decision: Decision, stages: object) -> None:
        assert isinstance(stages, dict)
        seen.append((decision.outcome.value, dict(stages)))
        raise RuntimeError("a broken metrics backend")

    gateway.observer = observe
    decision = gateway.decide(kit.submit())
    assert decision.outcome is Outcome.PROCEED  # the observer's exception is dropped
    assert decision.log_index == 0
    assert seen[0][0] == "proceed"
    assert {"parse", "artifact", "binding", "replay", "policy", "audit"} <= set(seen[0][1])
    assert all(seconds >= 0 for seconds in seen[0][1].values())
    gateway.observer = None
    assert gateway.decide(kit.submit()).outcome is Outcome.PROCEED
    assert len(seen) == 1


def test_timed_state_is_a_decision_state() -> None:
    from execgate._timing import TimedState

    state = TimedState("d-1", 5)
    assert isinstance(state, DecisionState)
    assert state.stage == "parse"
    assert state.now == 5
    state.stage = "artifact"
    state.stop(Outcome.DENY, "artifact.malformed", "x")
    laps = state.finish()
    assert set(laps) == {"parse", "artifact"}
    assert state.outcome is Outcome.DENY


def test_multiprocess_dir_is_private_named_and_removed() -> None:
    before = os.environ.get(MULTIPROC_ENV)
    with multiprocess_dir() as path:
        assert os.environ[MULTIPROC_ENV] == str(path)
        assert path.is_dir()
        assert (path.stat().st_mode & 0o777) == 0o700
        # prometheus-client was loaded here without the variable: this process keeps
        # its own registry rather than reading a directory it never writes to.
        assert Metrics(gateway=lambda: None, now=lambda: 0.0).multiprocess is False
    assert not path.exists()
    assert os.environ.get(MULTIPROC_ENV) == before


def test_a_run_directory_is_made_private_and_one_others_may_write_is_refused(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with multiprocess_dir(run) as path:
        assert path.parent == run
        assert (run.stat().st_mode & 0o777) == 0o700
    assert list(run.iterdir()) == []
    run.chmod(0o777)
    with pytest.raises(ConfigError, match="may be written by any user"), multiprocess_dir(run):
        pass
    run.rmdir()
    run.write_text("")
    with pytest.raises(ConfigError, match="is not a directory"), multiprocess_dir(run):
        pass


_WORKER = textwrap.dedent(
    """
    import sys
    from execgate.server.metrics import Metrics
    metrics = Metrics(gateway=lambda: None, now=lambda: 0.0)
    assert metrics.multiprocess
    for _ in range(int(sys.argv[1])):
        metrics.request("POST", "/v1/decisions", 200, 0.002)
    if sys.argv[2] == "scrape":
        sys.stdout.write(metrics.render().decode())
    if sys.argv[2] == "hold":  # counted; alive until killed
        print("counted", flush=True)
        sys.stdin.read()
    """
)


def _python(script: str, *args: str) -> str:
    """``script`` run to its end in a process of its own, which must succeed (it names
    the multiprocess directory the environment names, as the workers inherit it); what
    it wrote to stdout."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _run_worker(count: int, mode: str) -> str:
    """A worker process counting ``count`` requests; what it wrote to stdout."""
    return _python(_WORKER, str(count), mode)


@contextmanager
def _held_worker(count: int) -> Iterator[subprocess.Popen[str]]:
    """A worker that has counted ``count`` requests and stays alive until killed."""
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(count), "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline() == "counted\n"
        yield worker
    finally:
        worker.kill()
        worker.wait(timeout=60)
        for pipe in (worker.stdin, worker.stdout):
            if pipe is not None:
                pipe.close()


def _requests_counted(samples: Samples) -> float | None:
    return _value(
        samples, "execgate_http_requests_total", method="POST", route="/v1/decisions", status="200"
    )


def test_counters_add_up_across_worker_processes() -> None:
    """Two real processes write to one multiprocess directory; a third scrapes the sum
    (as whichever worker answers /metrics under ``execgate serve --workers N`` does)."""
    with multiprocess_dir():
        _run_worker(3, "count")
        _run_worker(4, "count")
        samples = _samples(_run_worker(0, "scrape"))
    labels = {"method": "POST", "route": "/v1/decisions", "status": "200"}
    assert _value(samples, "execgate_http_requests_total", **labels) == 7
    assert (
        _value(
            samples,
            "execgate_http_request_duration_seconds_count",
            method="POST",
            route="/v1/decisions",
        )
        == 7
    )
    assert _value(samples, "execgate_store_up") == 0


def test_a_replacement_for_a_killed_worker_takes_its_files_and_counts_on() -> None:
    """A worker's files are named after its slot, not its pid: the replacement for a
    worker killed with SIGKILL takes the slot, the files and the counts in them, so a
    crash loop adds no files (each pid left 2 MiB more, and every scrape read them all)
    and no counter goes down."""
    with multiprocess_dir() as directory:
        for count in (3, 4, 5):
            with _held_worker(count):
                pass  # killed with SIGKILL as it leaves
        files = sorted(p.name for p in directory.glob("*.db"))
        samples = _samples(_run_worker(0, "scrape"))
    assert files == ["counter_slot0.db", "histogram_slot0.db"]
    assert _requests_counted(samples) == 12


def test_workers_alive_at_once_take_slots_of_their_own() -> None:
    with multiprocess_dir() as directory, _held_worker(3):
        samples = _samples(_run_worker(4, "scrape"))
        files = sorted(p.name for p in directory.glob("counter_*.db"))
    assert files == ["counter_slot0.db", "counter_slot1.db"]
    assert _requests_counted(samples) == 7


_FORKING = textwrap.dedent(
    """
    import os, sys
    from execgate.server.metrics import _Slot
    slot = _Slot()
    assert slot() == ""  # not started: no slot taken
    slot.started = True
    parent = slot()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, slot().encode())
        os._exit(0)
    os.close(write)
    print(parent, os.read(read, 64).decode(), slot())
    os.waitpid(child, 0)
    """
)


def test_a_forked_child_takes_a_slot_of_its_own(tmp_path: Path) -> None:
    """prometheus-client asks for the identifier before every write to notice a fork; a
    child answering its parent's slot would write into the parent's files."""
    done = subprocess.run(
        [sys.executable, "-c", _FORKING],
        env={**os.environ, MULTIPROC_ENV: str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["slot0", "slot1", "slot0"]


_FORK_OUTLIVED = textwrap.dedent(
    """
    import os, sys, time
    from execgate.server import metrics as module
    from execgate.server.metrics import Metrics
    metrics = Metrics(gateway=lambda: None, now=lambda: 0.0)
    assert metrics.multiprocess
    metrics.request("POST", "/v1/decisions", 200, 0.002)
    parent = os.getpid()
    if os.fork() == 0:
        if sys.argv[2] == "closes":  # as a daemon closing every descriptor it inherited
            os.close(module._slot._held)
        while os.getppid() == parent:  # until the parent is gone
            time.sleep(0.01)
        metrics.request("POST", "/v1/decisions", 200, 0.002)
        with open(sys.argv[1], "w") as done:
            done.write("done")
        os._exit(0)
    for _ in range(9):
        metrics.request("POST", "/v1/decisions", 200, 0.002)
    """
)


@pytest.mark.parametrize("child", ["keeps", "closes"])
def test_a_forked_child_that_outlives_its_parent_counts_on_top_of_it(
    tmp_path: Path, child: str
) -> None:
    """The parent gone, its slot is free: a child taking it again kept the library's
    values from the fork and wrote them over what the parent counted since (10 became
    2). The child takes a slot of its own before it lets go of the parent's, and never
    the parent's, even when it closed the descriptor it inherited."""
    done = tmp_path / "done"
    with multiprocess_dir() as directory:
        _python(_FORK_OUTLIVED, str(done), child)  # the parent, gone once it returns
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert done.exists()
        samples = _samples(_run_worker(0, "scrape"))
        files = sorted(p.name for p in directory.glob("counter_*.db"))
    assert files == ["counter_slot0.db", "counter_slot1.db"]
    assert _requests_counted(samples) == 11


def _worker_value(directory: Path, pid: int) -> Any:
    """One value of a served worker's counter, made as prometheus-client's multiprocess
    mode makes it: through the file it opens in ``directory`` for process ``pid``."""
    value_class = values.MultiProcessValue(process_identifier=lambda: pid)  # type: ignore[no-untyped-call]
    with pytest.MonkeyPatch.context() as env:
        env.setenv(MULTIPROC_ENV, str(directory))
        return value_class("counter", "execgate_x", "execgate_x_total", (), (), "help")


def test_a_workers_metrics_file_is_allocated_before_it_is_written(tmp_path: Path) -> None:
    """prometheus-client makes a sparse file and writes through a memory mapping: on a
    full disk that write killed the worker with SIGBUS (and each replacement at its
    first new series). Its blocks are now allocated first."""
    _worker_value(tmp_path, 4242).inc(3)
    [made] = tmp_path.glob("counter_4242.db")
    held = made.stat()
    assert held.st_size == metrics_module.METRICS_FILE_BYTES
    assert held.st_blocks * 512 >= metrics_module.METRICS_FILE_BYTES  # not sparse
    assert _worker_value(tmp_path, 4242).get() == 3  # the value is where the library reads


def test_a_full_disk_is_an_error_for_the_metric_not_a_dead_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="No space left"):
        _worker_value(tmp_path, 4343)
