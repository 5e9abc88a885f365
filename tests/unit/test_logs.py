"""Structured JSON logs: one object per line, the decision id on the access line, and no
secret or artifact anywhere in the output of a full decision."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatekit import Kit, make_kit
from test_server_api import Client, outcome_proof

from execgate.server import create_app
from execgate.server.logs import FIELDS, JsonFormatter, access, lean_records, log_config
from execgate.server.metrics import Metrics

BEARER = "s3cr3t-bearer-token-value-0123456789"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the execgate loggers write, through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("execgate")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _format(record: logging.LogRecord) -> dict[str, Any]:
    line: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return line


def test_a_full_decision_logs_its_id_and_never_a_secret(kit: Kit, captured: io.StringIO) -> None:
    submission = kit.submit(kit.request(amount=100, note="argument-value-not-for-logs"))
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        response = client.post(
            "/v1/decisions",
            json=submission,
            headers={"Authorization": f"Bearer {BEARER}", "X-Api-Key": BEARER},
        )
        decision = response.json()
        looked_up = client.get(f"/v1/decisions/{decision['decision_id']}?token={BEARER}")
        assert looked_up.status_code == 200
    assert decision["outcome"] == "proceed"
    output = captured.getvalue()
    secrets = [
        submission["artifact"],
        submission["proof"],
        decision["receipt"],
        BEARER,
        "argument-value-not-for-logs",
        *submission["artifact"].split("."),  # no part of one either
        *submission["proof"].split("."),
        *decision["receipt"].split("."),
    ]
    for secret in secrets:
        assert secret not in output
    lines = _lines(captured)
    # One line per request: the decision is on the access line of its request.
    assert [line["logger"] for line in lines] == ["execgate.access"] * 2
    access = lines
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("POST", "/v1/decisions", 200),
        ("GET", "/v1/decisions/{decision_id}", 200),
    ]
    assert access[0]["decision_id"] == decision["decision_id"]
    assert access[0]["outcome"] == "proceed"
    assert access[0]["reasons"] == []
    assert "decision_id" not in access[1]  # nothing was decided by the lookup
    for line in lines:
        assert {"time", "level", "logger", "message", "pid"} <= set(line)
        assert set(line) <= {"time", "level", "logger", "message", "pid", *FIELDS}


def test_an_outcome_report_logs_the_decision_it_is_about(kit: Kit, captured: io.StringIO) -> None:
    """Accepted or refused, a report on a decision in the log names it; one on a
    decision the log does not hold names none (its id is only what the URL said)."""
    report = {"status": "failed", "exit_code": 1}
    unknown = "01a22341-baae-7cb7-a3b5-e7aceb162275"
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        decided = client.post("/v1/decisions", json=kit.submit()).json()["decision_id"]
        url = f"/v1/decisions/{decided}/outcome"
        signed = {"Execgate-Proof": outcome_proof(kit, decided, report)}
        assert client.post(url, json=report).status_code == 403  # no proof
        assert client.post(url, json=report, headers=signed).status_code == 200
        missing = client.post(f"/v1/decisions/{unknown}/outcome", json=report)
        assert missing.status_code == 404
    lines = _lines(captured)
    assert [(line["status"], line.get("decision_id")) for line in lines[1:]] == [
        (403, decided),
        (200, decided),
        (404, None),
    ]


def test_a_denied_decision_logs_codes_not_details(kit: Kit, captured: io.StringIO) -> None:
    with Client(create_app(open_gateway=kit.gateway, now=kit.clock)) as client:
        body = kit.submit(kit.request("payments.refund", amount=1))
        decision = client.post("/v1/decisions", json=body).json()
    (line,) = _lines(captured)
    assert line["decision_id"] == decision["decision_id"]
    assert line["reasons"] == ["policy.denied"]
    assert decision["reasons"][0]["detail"] not in captured.getvalue()


def test_a_decision_outside_a_request_gets_its_own_line(kit: Kit, captured: io.StringIO) -> None:
    metrics = Metrics(gateway=lambda: None, now=kit.clock)
    gateway = metrics.observing(kit.gateway)()
    submission = kit.submit()
    decision = gateway.decide(submission)
    (line,) = _lines(captured)
    assert line["logger"] == "execgate.decision"
    assert line["decision_id"] == decision.decision_id
    assert line["outcome"] == "proceed"
    assert {"artifact", "binding", "policy", "audit"} <= set(line["stages_ms"])
    assert submission["proof"] not in captured.getvalue()


class _Keeper(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_access_line_keeps_its_fields_and_its_level(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made without Logger.info, the access line is still an INFO record of
    execgate.access through the configured handlers, with records kept lean, and a level
    above INFO silences it."""
    monkeypatch.setattr(logging, "logThreads", logging.logThreads)
    monkeypatch.setattr(logging, "logMultiprocessing", logging.logMultiprocessing)
    lean_records()
    fields = {"decision_id": "d-1", "outcome": "deny", "reasons": ["scope.denied"], "x": 1}
    keeper = _Keeper()
    logging.getLogger("execgate").addHandler(keeper)
    try:
        access(method="GET", route="/v1/forward-auth", status=403, seconds=0.0125, fields=fields)
    finally:
        logging.getLogger("execgate").removeHandler(keeper)
    [record] = keeper.records
    assert (record.threadName, record.processName, record.process) == (None, None, os.getpid())
    [line] = _lines(captured)
    assert {k: v for k, v in line.items() if k != "time"} == {
        "level": "info",
        "logger": "execgate.access",
        "message": "request",
        "pid": os.getpid(),
        "method": "GET",
        "route": "/v1/forward-auth",
        "status": 403,
        "duration_ms": 12.5,
        "decision_id": "d-1",
        "outcome": "deny",
        "reasons": ["scope.denied"],
    }
    logging.getLogger("execgate").setLevel(logging.WARNING)
    access(method="GET", route="/healthz", status=200, seconds=0.001, fields={})
    assert len(_lines(captured)) == 1


def test_only_allow_listed_fields_are_written() -> None:
    record = logging.makeLogRecord(
        {
            "name": "execgate.test",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "hello %s",
            "args": ("world",),
            "decision_id": "d-1",
            "artifact": "eyJhbGciOiJFZDI1NTE5In0.eyJzdWIiOiJ4In0.c2ln",
            "authorization": f"Bearer {BEARER}",
        }
    )
    line = _format(record)
    assert line["message"] == "hello world"
    assert line["decision_id"] == "d-1"
    assert line["level"] == "info"
    assert line["logger"] == "execgate.test"
    assert "artifact" not in line
    assert "authorization" not in line


def test_messages_are_scrubbed_of_tokens_and_capped() -> None:
    jws = "eyJhbGciOiJFZDI1NTE5In0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    record = logging.makeLogRecord(
        {"msg": f"refused {jws} with Authorization: Bearer {BEARER} " + "x" * 5000}
    )
    message = _format(record)["message"]
    assert jws not in message
    assert "eyJzdWIiOiJ4In0" not in message
    assert BEARER not in message
    assert "[redacted-jws]" in message
    assert "Bearer [redacted]" in message
    assert len(message) < 1100


def test_exceptions_are_logged_as_type_and_frames_never_their_message() -> None:
    try:
        int(f"Bearer {BEARER}")
    except ValueError:
        record = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    line = _format(record)
    assert line["exc_type"] == "ValueError"
    assert any("test_logs.py" in frame for frame in line["exc_frames"])
    assert BEARER not in json.dumps(line)


def test_a_formatted_traceback_as_a_message_keeps_only_its_type() -> None:
    """uvicorn logs a failed startup with ``traceback.format_exc()`` as the message."""
    text = (
        'Traceback (most recent call last):\n  File "/srv/app.py", line 3, in start\n'
        f"execgate.errors.ConfigError: /srv/gw/trust.toml: bad key Bearer {BEARER}\n"
    )
    line = _format(logging.makeLogRecord({"msg": text}))
    assert line["message"] == "traceback: execgate.errors.ConfigError"


def _fail(message: str, *, chained: bool) -> None:
    if not chained:
        raise ValueError(message)
    try:
        _fail_with_key(message)
    except KeyError as cause:
        raise ValueError(message) from cause


def _fail_with_key(message: str) -> None:
    raise KeyError(message)


def _formatted(message: str, *, chained: bool) -> str:
    try:
        _fail(message, chained=chained)
    except ValueError:
        return traceback.format_exc()
    raise AssertionError("_fail raised nothing")


@pytest.mark.parametrize(
    "message",
    [
        "could not parse key file\nd=nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "outer SECRET-abc\nsecond line: more SECRET",
    ],
)
@pytest.mark.parametrize("chained", [False, True])
def test_a_traceback_of_a_message_of_several_lines_logs_no_line_of_it(
    message: str, chained: bool
) -> None:
    """The last line of such a traceback is the message's own last line, not the type:
    the type logged is the last exception's (of a chain, the one raised last)."""
    text = _formatted(message, chained=chained)
    assert _format(logging.makeLogRecord({"msg": text}))["message"] == "traceback: ValueError"


def test_a_traceback_whose_first_exception_was_never_raised_logs_none_of_it() -> None:
    """``raise X from Y(...)``: the text begins with Y's line, message and all, not the
    header (Starlette hands uvicorn such a text when an app's startup fails)."""
    try:
        raise RuntimeError("startup failed") from KeyError("api_key=sk-live-123")  # noqa: TRY301
    except RuntimeError:
        text = traceback.format_exc()
    assert text.startswith("KeyError: 'api_key=sk-live-123'")
    line = _format(logging.makeLogRecord({"msg": text}))
    assert line["message"] == "traceback: RuntimeError"


def test_a_syntax_errors_quoted_source_is_not_read_as_its_type() -> None:
    try:
        raise SyntaxError("bad", ("policy.py", 1, 1, "x\nsecret_word: more"))  # noqa: TRY301
    except SyntaxError:
        text = traceback.format_exc()
    assert "\nsecret_word: more" in text
    line = _format(logging.makeLogRecord({"msg": text}))
    assert line["message"] == "traceback: SyntaxError"


def test_a_line_separator_in_a_traceback_starts_no_line() -> None:
    """A syntax error's traceback quotes the source line, indented; a U+2028 in it is no
    line end to the traceback, and what follows it is not read as the type."""
    try:
        ast.parse("x = 1 +\u2028sk_live_SECRET: ")
    except SyntaxError:
        text = traceback.format_exc()
    line = _format(logging.makeLogRecord({"msg": text}))
    assert line["message"] == "traceback: SyntaxError"


def test_an_exception_group_traceback_logs_none_of_its_messages() -> None:
    try:
        raise ExceptionGroup("eg", [ValueError("cannot parse 'hunter2'")])  # noqa: TRY301
    except ExceptionGroup:
        text = traceback.format_exc()
    assert "hunter2" in text
    line = _format(logging.makeLogRecord({"msg": text}))
    assert line["message"] == "traceback: an exception group"


def test_a_name_whose_module_is_no_module_is_no_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything may sit in sys.modules: one without a namespace made the formatter
    raise, and a formatter that raises loses the line."""
    monkeypatch.setitem(sys.modules, "not_a_module", object())
    text = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nnot_a_module.X: y\n'
    assert _format(logging.makeLogRecord({"msg": text}))["message"] == "traceback"


def test_a_name_is_looked_up_without_running_the_modules_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lazy module loads at its first attribute read: the formatter reads none."""

    class Tripwire(types.ModuleType):
        def __getattribute__(self, name: str) -> Any:
            raise AssertionError(f"the formatter read {name}")

    monkeypatch.setitem(sys.modules, "lazy_module", Tripwire("lazy_module"))
    text = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nlazy_module.X: y\n'
    assert _format(logging.makeLogRecord({"msg": text}))["message"] == "traceback"


def test_a_traceback_whose_type_cannot_be_read_logs_none_of_it() -> None:
    text = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nd=secret value\n'
    assert _format(logging.makeLogRecord({"msg": text}))["message"] == "traceback"


_UVICORN_LOGS = textwrap.dedent(
    """
    import logging, logging.config
    from execgate.server.logs import log_config
    logging.config.dictConfig(log_config())
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn.access").info("must not appear")
    logging.getLogger("execgate.access").info("request", extra={"route": "/healthz"})
    logging.getLogger("execgate.other").debug("below the level")
    logging.getLogger("asyncio").error("task failed: eyJhbGciOiJFZDI1NTE5In0.eyJ4IjoxfQ.c2ln")
    logging.getLogger("asyncio").info("below the root's level")
    """
)


def test_log_config_makes_uvicorn_and_execgate_lines_json() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _UVICORN_LOGS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("uvicorn.error", "Started server process [42]"),
        ("execgate.access", "request"),
        ("asyncio", "task failed: [redacted-jws]"),
    ]
    assert lines[1]["route"] == "/healthz"
    assert log_config()["loggers"]["uvicorn.access"]["handlers"] == []
