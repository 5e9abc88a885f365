"""The Python guard: a protected callable runs only on proceed (or its registered stand-in
on reroute), its outcome is logged, and everything else runs nothing.

Each test counts side effects: a refusal must leave the counter at zero. The gateway is a
real home on its SQLite store; the log is read back to check what was recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import gc
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import GATEWAY_ID, NOW, Kit, make_kit

from execgate import ExecutionPaused, ExecutionRefused, Guard
from execgate.approvals import sign_review
from execgate.errors import AuditError, RequestError
from execgate.jose import PrivateKey, canonical_json
from execgate.model import Outcome
from execgate.pipeline import Gateway
from execgate.store.unavailable import UnavailableStore

SCOPE = (
    {"action": "payments.*", "resource": "acct:**"},
    {"action": "shell.exec", "resource": "host:**"},
)
APPROVER = PrivateKey.generate()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    jwk = ", ".join(f"{k} = {json.dumps(v)}" for k, v in APPROVER.public.to_jwk().items())
    with (k.home / "trust.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[[approver]]\nid = "ana"\ngroups = ["finance"]\nkeys = [{{{jwk}}}]\n')
    yield k
    k.close()


@pytest.fixture
def gw(kit: Kit) -> Gateway:
    return kit.gateway()


def make_guard(kit: Kit, gw: Gateway, **kw: Any) -> Guard:
    kw.setdefault("artifact", kit.artifact(SCOPE))
    return Guard(gw, runtime=kit.runtime, audience=GATEWAY_ID, now=kit.clock, **kw)


@pytest.fixture
def guard(kit: Kit, gw: Gateway) -> Guard:
    return make_guard(kit, gw)


def log(gw: Gateway) -> list[dict[str, Any]]:
    return [json.loads(e.entry) for e in gw.store.entries(0, gw.store.size())]


def last_decision_and_outcome(gw: Gateway) -> tuple[dict[str, Any], dict[str, Any] | None]:
    records = log(gw)
    decision = [r for r in records if r["kind"] == "decision"][-1]
    outcomes = [
        r for r in records if r["kind"] == "outcome" and r["decision_id"] == decision["decision_id"]
    ]
    assert len(outcomes) <= 1
    return decision, outcomes[0] if outcomes else None


def digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


class Payments:
    """A protected transfer and the side effects it had."""

    def __init__(self, guard: Guard, **reroute: Any) -> None:
        self.sent: list[tuple[str, int, str]] = []
        self.sandboxed: list[tuple[str, int, str]] = []

        def sandbox_transfer(account: str, amount: int, currency: str) -> dict[str, Any]:
            self.sandboxed.append((account, amount, currency))
            return {"sandbox": True, "amount": amount}

        @guard.protect(
            action="payments.transfer",
            resource=lambda account, **_: f"acct:{account}",
            reroute=reroute or {"sandbox": sandbox_transfer},
        )
        def transfer(account: str, amount: int, currency: str = "EUR") -> dict[str, Any]:
            self.sent.append((account, amount, currency))
            return {"account": account, "amount": amount, "currency": currency, "ok": True}

        self.transfer = transfer


# --- proceed ----------------------------------------------------------------------------


def test_proceed_runs_and_logs_a_succeeded_outcome_with_the_digest(
    guard: Guard, gw: Gateway
) -> None:
    payments = Payments(guard)
    result = payments.transfer("1001", 250)

    assert result == {"account": "1001", "amount": 250, "currency": "EUR", "ok": True}
    assert payments.sent == [("1001", 250, "EUR")]
    decision, outcome = last_decision_and_outcome(gw)
    assert decision["outcome"] == "proceed"
    assert decision["request"]["resource"] == "acct:1001"
    # positional arguments by parameter name, defaults included
    assert decision["request"]["args"] == {"account": "1001", "amount": 250, "currency": "EUR"}
    assert outcome is not None
    assert outcome["status"] == "succeeded"
    assert outcome["result_digest"] == digest(result)
    assert outcome["decision_index"] == len(log(gw)) - 2


def test_a_result_that_is_not_json_is_digested_by_its_repr(guard: Guard, gw: Gateway) -> None:
    class Receipt:
        def __repr__(self) -> str:
            return "Receipt(42)"

    @guard.protect(action="payments.charge", resource="acct:1")
    def charge(amount: int) -> Receipt:
        return Receipt()

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    @guard.protect(action="payments.charge", resource="acct:1")
    def broken(amount: int) -> Broken:
        return Broken()

    charge(amount=50)
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    assert outcome["result_digest"] == "sha256:" + hashlib.sha256(b"Receipt(42)").hexdigest()
    assert isinstance(broken(amount=60), Broken)  # its outcome is still logged
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    expected = hashlib.sha256(f"<{Broken.__qualname__} without a repr>".encode()).hexdigest()
    assert (outcome["status"], outcome["result_digest"]) == ("succeeded", f"sha256:{expected}")


def test_a_raising_function_logs_failed_and_reraises(guard: Guard, gw: Gateway) -> None:
    ran = []

    @guard.protect(action="payments.transfer", resource="acct:1")
    def transfer(amount: int) -> None:
        ran.append(amount)
        raise ValueError("bank said no")

    with pytest.raises(ValueError, match="bank said no"):
        transfer(amount=5)
    assert ran == [5]
    decision, outcome = last_decision_and_outcome(gw)
    assert decision["outcome"] == "proceed"
    assert outcome is not None
    assert outcome["status"] == "failed"
    assert outcome["result_digest"] == digest("builtins.ValueError")


def test_the_function_gets_its_own_copy_of_what_was_decided(guard: Guard, gw: Gateway) -> None:
    seen: list[list[str]] = []
    tags = ["a", "b"]

    @guard.protect(action="payments.transfer", resource="acct:1")
    def transfer(amount: int, tags: list[str]) -> None:
        seen.append(tags)

    transfer(5, tags)
    assert seen == [tags]
    assert seen[0] is not tags  # a caller mutating its list later changes nothing that ran


def test_keyword_only_positional_only_and_extra_keywords_are_named(
    guard: Guard, gw: Gateway
) -> None:
    got: list[tuple[str, int, dict[str, Any]]] = []

    @guard.protect(action="payments.transfer", resource=lambda account, **_: f"acct:{account}")
    def transfer(account: str, /, *, amount: int, **extra: Any) -> None:
        got.append((account, amount, extra))

    transfer("7", amount=5, memo="rent")
    assert got == [("7", 5, {"memo": "rent"})]
    decision, _ = last_decision_and_outcome(gw)
    assert decision["request"]["args"] == {"account": "7", "amount": 5, "memo": "rent"}
    with pytest.raises(RequestError, match="both by position and by name"):
        transfer("7", amount=5, account="8")
    with pytest.raises(RequestError, match="missing a required argument"):
        transfer("7")  # type: ignore[call-arg]
    assert len(got) == 1


# --- nothing runs -------------------------------------------------------------------------


def test_a_deny_raises_and_runs_nothing(guard: Guard, gw: Gateway) -> None:
    ran = []

    @guard.protect(action="payments.refund", resource="acct:1")
    def refund(amount: int) -> None:
        ran.append(amount)

    with pytest.raises(ExecutionRefused) as caught:
        refund(amount=5)
    assert type(caught.value) is ExecutionRefused
    decision = caught.value.decision
    assert decision.outcome is Outcome.DENY
    assert [r.code for r in decision.reasons] == ["policy.denied"]
    assert decision.decision_id in str(caught.value)
    assert ran == []
    assert gw.store.find(decision.decision_id, "outcome") is None


def test_a_pause_raises_with_the_approval_id_and_a_retry_resumes(
    kit: Kit, guard: Guard, gw: Gateway
) -> None:
    payments = Payments(guard)
    with pytest.raises(ExecutionPaused) as caught:
        payments.transfer("1", 5000)
    decision = caught.value.decision
    assert decision.outcome is Outcome.PAUSE
    assert caught.value.approval_id == decision.decision_id
    assert payments.sent == payments.sandboxed == []

    pending, _ = gw.approval(decision.decision_id)
    gw.review(
        decision.decision_id,
        sign_review(key=APPROVER, approver="ana", pending=pending, verdict="approve", now=NOW),
    )
    payments.transfer("1", 5000)  # the same call: the same request, now approved
    assert payments.sent == [("1", 5000, "EUR")]
    resumed, outcome = last_decision_and_outcome(gw)
    assert resumed["approval_id"] == decision.decision_id
    assert outcome is not None
    assert outcome["status"] == "succeeded"


def test_fail_closed_raises_and_runs_nothing(kit: Kit) -> None:
    down = kit.gateway(store=UnavailableStore("connection refused"))
    payments = Payments(make_guard(kit, down))
    with pytest.raises(ExecutionRefused) as caught:
        payments.transfer("1", 5)
    assert caught.value.decision.outcome is Outcome.FAIL_CLOSED
    assert payments.sent == payments.sandboxed == []


def test_arguments_that_are_not_json_are_refused_before_deciding(guard: Guard, gw: Gateway) -> None:
    class Name(str):
        pass

    class Level(enum.IntEnum):
        HIGH = 1

    ran = []

    @guard.protect(action="payments.transfer", resource="acct:1")
    def transfer(amount: Any, memo: Any = None) -> None:
        ran.append(amount)

    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for amount, memo, why in [
        (object(), None, "not a JSON value"),
        ((1, 2), None, "tuple"),
        (5, {1: "x"}, "not a string"),
        (float("nan"), None, "JSON cannot carry"),
        (5, b"raw", "bytes"),
        (5, Name("x"), "Name"),
        (Level.HIGH, None, "Level"),
        (5, {"deep": cyclic}, "nested deeper"),
        (2**64, None, "no canonical JSON form"),
    ]:
        with pytest.raises(RequestError, match=why):
            transfer(amount, memo)
    with pytest.raises(RequestError, match="resource"):
        guard.protect(action="payments.transfer", resource=lambda **_: 5)(transfer)(5)  # type: ignore[arg-type]
    assert ran == []
    assert gw.store.size() == 0  # nothing was decided


# --- reroute ------------------------------------------------------------------------------


class Shell:
    def __init__(self, guard: Guard, reroute: dict[str, Any]) -> None:
        self.ran: list[list[str]] = []

        @guard.protect(
            action="shell.exec", resource=lambda host, **_: f"host:{host}", reroute=reroute
        )
        def run(host: str, argv: list[str], cwd: str) -> object:
            self.ran.append(argv)
            return 0

        self.run = run


def test_a_reroute_runs_the_registered_target_instead(guard: Guard, gw: Gateway) -> None:
    sandboxed: list[tuple[str, list[str], str]] = []

    def in_sandbox(host: str, argv: list[str], cwd: str) -> dict[str, Any]:
        sandboxed.append((host, argv, cwd))
        return {"sandbox": host, "exit": 0}

    shell = Shell(guard, {"sandbox": in_sandbox})
    assert shell.run("build-1", ["make", "test"], cwd="/src") == {"sandbox": "build-1", "exit": 0}
    assert sandboxed == [("build-1", ["make", "test"], "/src")]
    assert shell.ran == []
    decision, outcome = last_decision_and_outcome(gw)
    assert (decision["outcome"], decision["route"]) == ("reroute", "sandbox")
    assert outcome is not None
    assert outcome["status"] == "succeeded"
    assert outcome["result_digest"] == digest({"sandbox": "build-1", "exit": 0})


@pytest.mark.parametrize("registered", [{}, {"dry-run": print}], ids=["none", "other"])
def test_a_reroute_to_an_unregistered_target_runs_nothing(
    guard: Guard, gw: Gateway, registered: dict[str, Any]
) -> None:
    shell = Shell(guard, registered)
    with pytest.raises(ExecutionRefused, match="no callable is registered") as caught:
        shell.run("build-1", ["make"], cwd="/src")
    assert caught.value.decision.outcome is Outcome.REROUTE
    assert shell.ran == []
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    assert outcome["status"] == "failed"
    assert outcome["result_digest"] == digest("execgate.adapters.guard.ExecutionRefused")


def test_a_call_that_returns_work_still_to_run_is_logged_failed(guard: Guard, gw: Gateway) -> None:
    """A plain function that hands back a coroutine (a wrapper of an async function, a
    lambda): nothing has run when it returns, so the outcome is not 'succeeded'. The
    coroutine is closed unstarted and the caller gets a TypeError."""
    started: list[int] = []

    async def transfer(amount: int) -> int:
        started.append(amount)
        return amount

    def wrapper(amount: int) -> Coroutine[Any, Any, int]:
        return transfer(amount)

    pay = guard.protect(action="payments.transfer", resource="acct:1")(wrapper)
    with pytest.raises(TypeError, match="returned 'coroutine'"):
        _ = pay(amount=5)
    gc.collect()  # an unawaited coroutine would warn here (warnings are errors in tests)
    assert started == []
    decision, outcome = last_decision_and_outcome(gw)
    assert decision["outcome"] == "proceed"
    assert outcome is not None
    assert (outcome["status"], outcome["result_digest"]) == ("failed", digest("builtins.TypeError"))


def test_a_call_that_returns_a_task_is_logged_failed_and_the_task_never_runs(
    guard: Guard, gw: Gateway
) -> None:
    started: list[int] = []

    async def transfer(amount: int) -> None:
        started.append(amount)

    async def main() -> None:
        def schedule(amount: int) -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(transfer(amount))

        pay = guard.protect(action="payments.transfer", resource="acct:1")(schedule)
        with pytest.raises(TypeError, match=r"returned 'Task'.*it was cancelled \(a task"):
            _ = pay(amount=5)
        await asyncio.sleep(0.01)  # a task left alone would run here

    asyncio.run(main())
    assert started == []
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    assert (outcome["status"], outcome["result_digest"]) == ("failed", digest("builtins.TypeError"))


def test_a_call_that_returns_a_thread_pool_future_is_never_logged_succeeded(
    guard: Guard, gw: Gateway
) -> None:
    """A job handed to a thread pool: one still queued is cancelled, one already running
    cannot be stopped; either way the outcome is 'failed', never 'succeeded' for work
    that had not finished (and may yet fail)."""
    release = threading.Event()
    ran: list[object] = []

    def job(name: object) -> None:
        release.wait(5)
        ran.append(name)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(job, "busy")  # holds the only thread: the next job queues

        def charge(amount: int) -> concurrent.futures.Future[None]:
            return pool.submit(job, amount)

        pay = guard.protect(action="payments.transfer", resource="acct:1")(charge)
        with pytest.raises(TypeError, match=r"returned 'Future'.*cancelled before it started"):
            _ = pay(amount=5)
        release.set()
        busy.result(timeout=5)
    assert ran == ["busy"]  # the queued charge was cancelled
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    assert (outcome["status"], outcome["result_digest"]) == ("failed", digest("builtins.TypeError"))


def test_a_thread_pool_job_already_running_is_never_said_to_be_cancelled(
    guard: Guard, gw: Gateway
) -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def job(amount: int) -> None:
        started.set()
        release.wait(5)
        ran.append(amount)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:

        def charge(amount: int) -> concurrent.futures.Future[None]:
            future = pool.submit(job, amount)
            assert started.wait(5)  # running by the time the guard sees it
            return future

        pay = guard.protect(action="payments.transfer", resource="acct:1")(charge)
        with pytest.raises(TypeError) as caught:
            _ = pay(amount=5)
        release.set()
    assert "could not be cancelled: it may have run, or may still be running" in str(caught.value)
    assert "was cancelled" not in str(caught.value)
    assert ran == [5]
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    assert outcome["status"] == "failed"  # never 'succeeded' for work that had not finished


def test_reroutes_given_as_one_string_is_refused(guard: Guard, gw: Gateway) -> None:
    """'sandbox' in 'sandbox-eu' is true: a string would let a block meant for one
    target run for another."""
    before = len(log(gw))
    with pytest.raises(TypeError, match="not one string"):  # noqa: SIM117
        with guard.execution("shell.exec", "host:1", {}, reroutes="sandbox-eu"):
            pytest.fail("the block ran")
    assert len(log(gw)) == before  # refused before anything was decided


# --- the context manager -------------------------------------------------------------------


def test_the_context_manager_logs_the_block(guard: Guard, gw: Gateway) -> None:
    with guard.execution("payments.transfer", "acct:1", {"amount": 5}) as run:
        assert run.decision.outcome is Outcome.PROCEED
        assert run.route is None
        assert run.args == {"amount": 5}
        run.result = {"sent": 5}
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    assert (outcome["status"], outcome["result_digest"]) == ("succeeded", digest({"sent": 5}))

    with pytest.raises(KeyError), guard.execution("payments.transfer", "acct:1", {"amount": 6}):
        raise KeyError("boom")
    _, outcome = last_decision_and_outcome(gw)
    assert outcome is not None
    assert (outcome["status"], outcome["result_digest"]) == ("failed", digest("builtins.KeyError"))


def test_the_context_manager_enters_a_reroute_only_for_named_targets(
    guard: Guard, gw: Gateway
) -> None:
    entered = []
    args = {"argv": ["make"], "cwd": "/src"}
    with (
        pytest.raises(ExecutionRefused, match="no callable"),
        guard.execution("shell.exec", "host:1", args),
    ):
        entered.append("original")
    with guard.execution("shell.exec", "host:1", args, reroutes=["sandbox"]) as run:
        entered.append(f"at {run.route}")
    assert entered == ["at sandbox"]
    with (
        pytest.raises(ExecutionPaused),
        guard.execution("payments.transfer", "acct:1", {"amount": 5000}),
    ):
        entered.append("paused")
    assert entered == ["at sandbox"]


# --- the edges -------------------------------------------------------------------------------


def test_an_outcome_the_log_refuses_is_not_hidden(
    guard: Guard, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> int:
        raise AuditError("disk full")

    monkeypatch.setattr(gw, "report_outcome", refuse)
    payments = Payments(guard)
    with pytest.raises(AuditError, match="disk full") as caught:
        payments.transfer("1", 5)
    assert payments.sent == [("1", 5, "EUR")]  # it ran: the caller must not think otherwise
    assert "ran and returned" in "".join(caught.value.__notes__)

    @guard.protect(action="payments.transfer", resource="acct:1")
    def failing(amount: int) -> None:
        raise ValueError("bank said no")

    with pytest.raises(ValueError, match="bank said no") as failed:
        failing(5)
    assert "could not be logged: disk full" in "".join(failed.value.__notes__)


def test_an_attestation_function_is_asked_for_every_request(kit: Kit, gw: Gateway) -> None:
    asked = []

    def attest() -> str:
        asked.append(1)
        return kit.attestation({"region": "eu-west-1"})

    artifact = kit.artifact(
        [{"action": "reports.read", "resource": "report:**"}], env={"region": "eu-west-1"}
    )
    guard = make_guard(kit, gw, artifact=artifact, attestation=attest)

    @guard.protect(action="reports.read", resource=lambda name: f"report:{name}")
    def read(name: str) -> str:
        return f"contents of {name}"

    assert read("q3") == "contents of q3"
    assert read("q4") == "contents of q4"
    assert len(asked) == 2


def test_callables_the_guard_cannot_follow_are_refused_when_decorated(guard: Guard) -> None:
    protect = guard.protect(action="payments.transfer", resource="acct:1")

    async def later(amount: int) -> None:
        pass

    def generator(amount: int) -> Iterator[int]:
        yield amount

    def variadic(*amounts: int) -> None:
        pass

    async def stream(amount: int) -> AsyncIterator[int]:
        yield amount

    refused: list[tuple[Callable[..., Any], str]] = [
        (later, "async"),
        (generator, "generator"),
        (stream, "async or generator"),
        (functools.partial(later), "async"),
        (variadic, r"\*args"),
    ]
    for fn, why in refused:
        with pytest.raises(TypeError, match=why):
            protect(fn)
    with pytest.raises(TypeError, match="reroute target 'sandbox' does its work after"):
        guard.protect(action="shell.exec", resource="host:1", reroute={"sandbox": later})
    with pytest.raises(TypeError, match="action"):
        guard.protect(action="", resource="acct:1")
    with pytest.raises(TypeError, match="resource"):
        guard.protect(action="payments.transfer", resource=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reroute"):
        guard.protect(action="shell.exec", resource="host:1", reroute={"sandbox": "nope"})  # type: ignore[dict-item]


def test_gateway_guard_is_the_guard_for_this_gateway(kit: Kit, gw: Gateway) -> None:
    ran: list[int] = []
    guard = gw.guard(runtime=kit.runtime, artifact=kit.artifact())

    @guard.protect(action="payments.transfer", resource=lambda **_: "acct:1")
    def pay(amount: int) -> int:
        ran.append(amount)
        return amount

    assert pay(amount=5) == 5
    assert ran == [5]
    assert guard.audience == gw.gateway_id
