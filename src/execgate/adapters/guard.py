"""The Python guard (DESIGN §6): a callable runs only when the gateway says so.

    guard = Guard(gateway, runtime=Runtime("agent-7", key), artifact=token, audience="gw-1")

    @guard.protect(
        action="payments.transfer",
        resource=lambda account, **_: f"acct:{account}",
        reroute={"sandbox": sandbox_transfer},
    )
    def transfer(account: str, amount: int, currency: str = "EUR") -> dict[str, Any]: ...

    transfer("1001", amount=250)  # decided, run, and its outcome logged

Each call of a protected function:

1. binds its arguments to the parameter names (defaults included): they become the
   request's ``args``. Every value must be a JSON value of an exact built-in type (dict
   with string keys, list, str, int, finite float, bool, None); anything else raises
   ``RequestError`` before deciding, and nothing is logged;
2. computes the resource (a string, or a function called with the arguments as keywords),
   signs a fresh proof with the runtime's key, and calls ``Gateway.decide``;
3. on ``proceed`` runs the function, with a private copy of exactly the arguments that
   were decided (mutating a list afterwards cannot change what runs); on ``reroute`` runs
   the callable registered for ``decision.route`` instead, with the same arguments;
   on ``pause`` raises ``ExecutionPaused`` (with the approval id), on ``deny`` and
   ``fail_closed`` ``ExecutionRefused``: nothing runs;
4. logs the outcome with ``Gateway.report_outcome``: ``succeeded`` with the ``sha256:``
   digest of the JCS of the return value (of its ``repr`` when it is not JSON), or
   ``failed`` with the digest of the JCS of the exception's qualified type name (say
   ``"builtins.ValueError"``), re-raising the exception.

Reroute targets are the ``[targets.NAME]`` tables of ``execgate.toml``. For this adapter:

    sandbox   the callable registered for "sandbox" runs instead of the original, with the
              same arguments, in an isolated runtime without production credentials
    dry-run   the callable registered for "dry-run" runs instead; it should validate the
              arguments and return what would happen, with no side effects

A reroute to a target with no registered callable runs nothing (fail closed): the guard
logs a ``failed`` outcome and raises ``ExecutionRefused``.

A paused call resumes by being called again with the same arguments once its approval has
its quorum (``Gateway.review``): the same request hash finds the approval, every check
runs again, and the approval is used by that one execution.

``with guard.execution(action, resource, args) as run:`` is the same contract for a block
of code: it raises before the block when nothing may run, and logs the block's outcome
(``run.result`` is what the digest covers). A block cannot be swapped for another, so a
reroute enters it only for the targets named in ``reroutes``; the block reads
``run.route`` and must act on it.

The command (``execgate exec``) and MCP adapters do not exist yet; HTTP services sit
behind a proxy that asks ``/v1/forward-auth`` (``execgate.adapters.http``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import hashlib
import inspect
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, ParamSpec, TypeVar, cast

from execgate._timing import clock_seconds
from execgate.errors import ExecgateError, RequestError
from execgate.jose import canonical_json
from execgate.model import Decision, Outcome, Request
from execgate.pipeline import Gateway
from execgate.proofs import Runtime

__all__ = ["Execution", "ExecutionPaused", "ExecutionRefused", "Guard"]

P = ParamSpec("P")
R = TypeVar("R")

_MAX_DEPTH: Final = 32


class ExecutionRefused(ExecgateError):
    """The gateway did not let the call run; nothing ran. ``decision`` is the logged
    decision (deny, fail_closed, pause, or a reroute to a target with no callable)."""

    def __init__(self, decision: Decision, message: str | None = None):
        self.decision = decision
        super().__init__(message or _describe(decision))


class ExecutionPaused(ExecutionRefused):
    """The request waits for approval ``approval_id``; call again once it is approved."""

    def __init__(self, decision: Decision):
        self.approval_id = decision.approval_id
        super().__init__(decision)


def _describe(decision: Decision) -> str:
    reasons = "; ".join(f"{r.code}: {r.detail}" for r in decision.reasons)
    return f"decision {decision.decision_id} is {decision.outcome.value}: {reasons}"


@dataclass(slots=True)
class Execution:
    """One permitted execution in ``Guard.execution``: set ``result`` for the digest."""

    decision: Decision
    args: dict[str, Any]
    result: Any = field(default=None)

    @property
    def route(self) -> str | None:
        """The reroute target the block must run at, or None to run as asked."""
        return self.decision.route


class Guard:
    """Wraps Python callables in decisions of ``gateway`` for one runtime and artifact.

    ``attestation`` is an environment attestation, or a function returning a fresh one
    for each request (attestations expire). ``now`` is the clock the proofs are dated by.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        runtime: Runtime,
        artifact: str,
        audience: str,
        attestation: str | Callable[[], str | None] | None = None,
        now: Callable[[], float] = time.time,
    ):
        self.gateway = gateway
        self.runtime = runtime
        self.artifact = artifact
        self.audience = audience
        self.attestation = attestation
        self._now = now

    # -- the decorator -----------------------------------------------------------------

    def protect(
        self,
        *,
        action: str,
        resource: str | Callable[..., str],
        reroute: Mapping[str, Callable[..., Any]] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function so that every call is decided first (see the module doc)."""
        if not isinstance(action, str) or not action:
            raise TypeError("action must be a non-empty string")
        if not isinstance(resource, str) and not callable(resource):
            raise TypeError("resource must be a string or a function of the arguments")
        targets = dict(reroute or {})
        for name, target in targets.items():
            if not isinstance(name, str) or not callable(target):
                raise TypeError("reroute must map target names to callables")
            _refuse_deferred(target, f"reroute target {name!r}")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            _refuse_deferred(fn, getattr(fn, "__qualname__", repr(fn)))
            signature = inspect.signature(fn)
            if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
                raise TypeError(
                    f"{fn.__qualname__} takes *args; a guarded function's arguments need names"
                )

            @functools.wraps(fn)
            def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError as exc:
                    raise RequestError(f"{fn.__qualname__}: {exc}") from exc
                bound.apply_defaults()
                named = _request_args(bound)
                frozen = _frozen(named)
                where = resource if isinstance(resource, str) else resource(**frozen)
                decision = self._decide(action, where, frozen)
                # _decide raised for everything that does not execute: proceed or reroute
                target: Callable[..., Any] | None = None
                if decision.outcome is Outcome.PROCEED:
                    target = fn
                elif decision.outcome is Outcome.REROUTE and decision.route is not None:
                    target = targets.get(decision.route)
                if target is None:
                    self._refuse_route(decision, set(targets))
                call = _rebind(bound, frozen)
                return cast("R", self._run(decision, lambda: target(*call.args, **call.kwargs)))

            return guarded

        return decorate

    # -- the context manager -----------------------------------------------------------

    @contextmanager
    def execution(
        self,
        action: str,
        resource: str,
        args: Mapping[str, Any] | None = None,
        *,
        reroutes: Collection[str] = (),
    ) -> Iterator[Execution]:
        """Decide, enter the block only when it may run, and log the block's outcome."""
        if isinstance(reroutes, str):  # 'sandbox' in 'sandbox-eu' is true
            raise TypeError("reroutes must be a collection of target names, not one string")
        frozen = _frozen(dict(args or {}))
        decision = self._decide(action, resource, frozen)
        if decision.outcome is Outcome.REROUTE and decision.route not in reroutes:
            self._refuse_route(decision, set(reroutes))
        run = Execution(decision, copy.deepcopy(frozen))
        try:
            yield run
        except BaseException as exc:
            self._report_failed(decision, exc)
            raise
        self._report(decision, "succeeded", _result_digest(run.result))

    # -- the steps -----------------------------------------------------------------------

    def _decide(self, action: str, resource: str, args: dict[str, Any]) -> Decision:
        """Decide; return only a decision that executes, raise for every other."""
        try:
            request = Request(
                action=action, resource=resource, runtime=self.runtime.runtime_id, args=args
            )
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        attestation = self.attestation() if callable(self.attestation) else self.attestation
        wire = self.runtime.submission(
            request,
            self.artifact,
            audience=self.audience,
            now=clock_seconds(self._now),
            attestation=attestation,
        )
        decision = self.gateway.decide(wire)
        if decision.outcome is Outcome.PAUSE:
            raise ExecutionPaused(decision)
        if not decision.executes:
            raise ExecutionRefused(decision)
        return decision

    def _refuse_route(self, decision: Decision, known: set[str]) -> NoReturn:
        refused = ExecutionRefused(
            decision,
            f"decision {decision.decision_id} reroutes to {decision.route!r}, but no callable is"
            f" registered for it (only {sorted(known)}); nothing ran",
        )
        self._report_failed(decision, refused)
        raise refused

    def _run(self, decision: Decision, call: Callable[[], Any]) -> Any:
        try:
            result = call()
            _refuse_deferred_result(result)
        except BaseException as exc:
            self._report_failed(decision, exc)
            raise
        try:
            self._report(decision, "succeeded", _result_digest(result))
        except Exception as exc:
            exc.add_note(
                f"execgate: decision {decision.decision_id} ran and returned, but its outcome"
                " could not be logged"
            )
            raise
        return result

    def _report(self, decision: Decision, status: str, digest: str) -> None:
        self.gateway.report_outcome(decision.decision_id, status=status, result_digest=digest)

    def _report_failed(self, decision: Decision, exc: BaseException) -> None:
        """Log a failed outcome; a log that refuses it is noted on ``exc``, which the caller
        re-raises: the caller's own exception is what it must see."""
        kind = type(exc)
        try:
            self._report(decision, "failed", _digest(f"{kind.__module__}.{kind.__qualname__}"))
        except Exception as report:  # noqa: BLE001 - noted on the exception being raised
            exc.add_note(
                f"execgate: the failed outcome of decision {decision.decision_id} could not be"
                f" logged: {report}"
            )


def _refuse_deferred(fn: Callable[..., Any], what: str) -> None:
    """Refuse a callable known to do its work after it returns: the guard logs the
    outcome when the call returns, and nothing would have run yet."""
    if (
        inspect.iscoroutinefunction(fn)
        or inspect.isgeneratorfunction(fn)
        or inspect.isasyncgenfunction(fn)
    ):
        raise TypeError(
            f"{what} does its work after it returns (async or generator); the guard cannot"
            " tell when it ran"
        )


def _refuse_deferred_result(result: object) -> None:
    """Raise ``TypeError`` when ``result`` is work still to run (a coroutine, generator,
    task, future or anything to await): its outcome cannot be logged. A coroutine or
    generator is closed first, so it never runs; a task or future is cancelled, which
    stops it unless it is already running or done (a thread pool's job then goes on,
    logged as ``failed``: never as ``succeeded`` before it has), and the error says
    which."""
    if inspect.iscoroutine(result) or inspect.isgenerator(result):
        result.close()
        fate = "it was closed unstarted"
    elif isinstance(result, asyncio.Future):
        fate = (
            "it was cancelled (a task already started stops at its next await)"
            if result.cancel()
            else "it had already finished"
        )
    elif isinstance(result, concurrent.futures.Future):
        fate = (
            "it was cancelled before it started"
            if result.cancel()
            else "it could not be cancelled: it may have run, or may still be running"
        )
    elif inspect.isasyncgen(result) or inspect.isawaitable(result):
        fate = "it was left as it is"
    else:
        return
    raise TypeError(
        f"the guarded call returned {type(result).__name__!r}, work that runs after it"
        f" returns: the guard cannot log its outcome, and {fate} (protect the function"
        " that does the work)"
    )


# -- arguments and digests -----------------------------------------------------------------


def _request_args(bound: inspect.BoundArguments) -> dict[str, Any]:
    """Parameter name → value, with ``**kwargs`` spread in beside the named parameters."""
    named: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            spread = value
        else:
            named[name] = value
    clash = set(named) & set(spread)
    if clash:
        raise RequestError(f"arguments {sorted(clash)} are given both by position and by name")
    return {**named, **spread}


def _rebind(bound: inspect.BoundArguments, frozen: Mapping[str, Any]) -> inspect.BoundArguments:
    """The call's arguments, taken from a private copy of what was decided."""
    values = copy.deepcopy(dict(frozen))
    arguments: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments[name] = {key: values[key] for key in value}
        else:
            arguments[name] = values[name]
    return inspect.BoundArguments(bound.signature, OrderedDict(arguments))


def _frozen(args: dict[str, Any]) -> dict[str, Any]:
    """Check that ``args`` is JSON (with a canonical form); return a private deep copy."""
    _check_json(args, "args", 0)
    try:
        canonical_json(args)
    except ValueError as exc:
        raise RequestError(f"the arguments have no canonical JSON form: {exc}") from exc
    return copy.deepcopy(args)


def _check_json(value: object, where: str, depth: int) -> None:
    """Exact built-in JSON types only: a subclass could hash as one value and act as another."""
    kind = type(value)
    if value is None or kind in (str, int, bool):
        return
    if depth >= _MAX_DEPTH:
        raise RequestError(f"{where} is nested deeper than {_MAX_DEPTH} levels")
    if kind is float:
        if not math.isfinite(cast("float", value)):
            raise RequestError(f"{where} is {value!r}, which JSON cannot carry")
    elif kind is list:
        for i, item in enumerate(cast("list[Any]", value)):
            _check_json(item, f"{where}[{i}]", depth + 1)
    elif kind is dict:
        for key, item in cast("dict[Any, Any]", value).items():
            if type(key) is not str:
                raise RequestError(f"{where} has a key {key!r} that is not a string")
            _check_json(item, f"{where}.{key}", depth + 1)
    else:
        raise RequestError(
            f"{where} is a {kind.__qualname__}, not a JSON value (dict, list, str, int, float,"
            " bool or None)"
        )


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def _result_digest(value: Any) -> str:
    """``sha256:`` of the JCS of a JSON ``value``, else of its ``repr`` in UTF-8."""
    try:
        _check_json(value, "result", 0)
        return _digest(value)
    except (RequestError, ValueError):
        pass
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the outcome
        text = f"<{type(value).__qualname__} without a repr>"
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()
