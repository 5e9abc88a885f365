"""``execgate approvals ... --url``: the same commands against a real ``execgate serve``.

A large transfer pauses over HTTP (quorum 2 of ``finance``); ``approvals list`` and
``show`` read it from the running gateway with a fresh admin token per call; alice and
bob approve it from the command line, each signing the review with their own key here
and sending only the signed review; the re-submitted request proceeds. A refused review
exits 1 with the gateway's reason, as the local command does; no gateway, a wrong admin
key, an unknown approval or a gateway answering nonsense exit 2 with one line, and
nothing is reviewed.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatekit import GATEWAY_ID, POLICY, Kit, make_kit
from test_server_process import Server, _free_port, serve

from execgate.cli import EXIT_USAGE, main
from execgate.cli.approvals import EXIT_REFUSED
from execgate.jose import PrivateKey

# The sample policy's rule, as ``execgate init`` writes it: 2 of finance.
QUORUM_2 = POLICY.replace("quorum: 1", "quorum: 2")
assert QUORUM_2 != POLICY


_AMOUNTS = itertools.count(5000)  # above the policy's pause threshold
_LISTING = "/v1/admin/approvals?limit=1000"  # the first page approvals list asks for


@dataclass
class Env:
    kit: Kit
    server: Server
    capsys: pytest.CaptureFixture[str]
    outputs: list[str] = field(default_factory=list)
    amounts: dict[str, int] = field(default_factory=dict)  # per artifact: see pause

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, name: str) -> str:
        return str(self.kit.home / "keys" / f"{name}.jwk")

    def run(self, *argv: str, home: Path | None = None) -> tuple[int, str, str]:
        code = main(["--home", str(home or self.kit.home), *argv])
        captured = self.capsys.readouterr()
        self.outputs += [captured.out, captured.err]
        return code, captured.out, captured.err

    def remote(self, *argv: str, admin_key: str | None = None) -> list[str]:
        return [*argv, "--url", self.url, "--admin-key", admin_key or self.key("admin")]

    def ok(self, *argv: str) -> str:
        code, out, err = self.run(*self.remote(*argv))
        assert code == 0, err
        return out

    def failed(self, code: int, argv: list[str], home: Path | None = None) -> str:
        """The one error line of a command that had to exit ``code``."""
        got, out, err = self.run(*argv, home=home)
        assert got == code, (out, err)
        assert out == ""
        [line] = err.splitlines()
        assert line.startswith("execgate: error: ")
        return line

    def decide(self, artifact: str) -> dict[str, Any]:
        """The large transfer ``pause`` asked for with this artifact, with a fresh proof."""
        self.kit.clock.t = time.time()  # the server reads the real clock
        request = self.kit.request(amount=self.amounts[artifact])
        response = httpx.post(
            self.url + "/v1/decisions",
            json=self.kit.submission(request, artifact),
            timeout=10.0,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def pause(self) -> tuple[str, str]:
        """A fresh artifact and the approval its large transfer opened."""
        self.kit.clock.t = time.time()
        artifact = self.kit.artifact()
        # A request of its own: one deny is final for a request, and the tests share
        # one server (one log, one set of approvals).
        self.amounts[artifact] = next(_AMOUNTS)
        paused = self.decide(artifact)
        assert paused["outcome"] == "pause", paused
        approval_id: str = paused["approval_id"]
        return artifact, approval_id

    def records(self, kind: str) -> list[dict[str, Any]]:
        return self.kit.records(kind)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kit, Server]]:
    kit = make_kit(tmp_path_factory.mktemp("remote"), policy=QUORUM_2)
    kit.add_admin("auditor", ["audit"])  # let in, but not to approvals
    kit.clock.t = time.time()
    with serve(kit) as server:
        yield kit, server
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()
    kit.close()


@pytest.fixture
def env(
    gateway: tuple[Kit, Server],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Env]:
    monkeypatch.delenv("EXECGATE_HOME", raising=False)
    e = Env(*gateway, capsys)
    yield e
    # No private key ever reaches stdout or stderr: only signed reviews are sent.
    secrets = [json.loads(p.read_text()).get("d") for p in e.kit.home.glob("keys/*.jwk")]
    secrets = [s for s in secrets if s]
    assert len(secrets) >= 4
    for text in e.outputs:
        for secret in secrets:
            assert secret not in text


# -- the whole story --------------------------------------------------------------------


def test_list_show_approve_twice_then_the_request_proceeds(env: Env) -> None:
    artifact, approval = env.pause()

    lines = env.ok("approvals", "list").splitlines()
    [line] = [x for x in lines if x.startswith(approval)]
    assert line.startswith(f"{approval}  pending   finance 0/2  expires ")
    assert line.endswith("  big-transfers  payments.transfer acct:1")
    # The same documents as the local command prints from the home itself.
    remote_docs = json.loads(env.ok("approvals", "list", "--json"))
    code, local, _ = env.run("approvals", "list", "--json")
    assert code == 0
    assert remote_docs == json.loads(local)
    [doc] = [d for d in remote_docs if d["approval_id"] == approval]
    assert (doc["state"], doc["tally"], doc["quorum"]) == ("pending", {"finance": 0}, 2)

    shown = env.ok("approvals", "show", approval)
    assert shown.splitlines()[0] == f"approval {approval}: pending"
    assert '  arguments     {"amount": 5000}' in shown
    assert "reviews: none yet" in shown
    code, local, _ = env.run("approvals", "show", approval)
    assert (code, local) == (0, shown)

    first = env.ok("approvals", "approve", approval, "--key", env.key("approver-alice"),
                   "--comment", "checked")  # fmt: skip
    assert first.splitlines()[0] == (
        "approved by alice: finance 1/2; waiting for more approvals (2 from each of: finance)"
    )
    early = env.decide(artifact)
    assert (early["outcome"], early["approval_id"]) == ("pause", approval)

    second = json.loads(
        env.ok("approvals", "approve", approval, "--key", env.key("approver-bob"), "--json")
    )
    assert second["log_index"] > 0
    assert {k: v for k, v in second.items() if k != "log_index"} == {
        "approval_id": approval,
        "approver": "bob",
        "verdict": "approve",
        "state": "approved",
        "tally": {"finance": 2},
        "quorum_met": True,
        "groups": ["finance"],
        "quorum": 2,
    }
    doc = json.loads(env.ok("approvals", "show", approval, "--json"))
    assert [(r["approver"], r["verdict"], r["comment"]) for r in doc["reviews"]] == [
        ("alice", "approve", "checked"),
        ("bob", "approve", None),
    ]
    # Both reviews are in the gateway's log, each let in by the admin's token.
    reviews = [r for r in env.records("review") if r["decision_id"] == approval]
    assert [r["approver"] for r in reviews] == ["alice", "bob"]
    let_in = [
        r
        for r in env.records("admin")
        if (r["action"], r["result"]) == ("approvals.review", "authorized")
        and r["path"] == f"/v1/admin/approvals/{approval}/reviews"
    ]
    assert [r["admin"] for r in let_in] == ["admin", "admin"]

    resumed = env.decide(artifact)
    assert (resumed["outcome"], resumed["approval_id"]) == ("proceed", approval)
    assert json.loads(env.ok("approvals", "show", approval, "--json"))["state"] == "consumed"
    every = json.loads(env.ok("approvals", "list", "--all", "--json"))
    assert {d["approval_id"]: d["state"] for d in every}[approval] == "consumed"
    open_ids = [d["approval_id"] for d in json.loads(env.ok("approvals", "list", "--json"))]
    assert approval not in open_ids


def test_a_refused_review_exits_1_with_the_gateways_reason(env: Env) -> None:
    _, approval = env.pause()
    alice = env.key("approver-alice")
    env.ok("approvals", "approve", approval, "--key", alice)
    line = env.failed(EXIT_REFUSED, env.remote("approvals", "approve", approval, "--key", alice))
    assert (
        line == f"execgate: error: review refused: alice has already reviewed approval {approval}"
    )
    # Word for word what the local command says.
    assert env.failed(EXIT_REFUSED, ["approvals", "approve", approval, "--key", alice]) == line
    # A deny is recorded (exit 0), and then the approval takes no more reviews.
    denied = env.ok("approvals", "deny", approval, "--key", env.key("approver-bob"),
                    "--reason", "not before the audit")  # fmt: skip
    assert denied.splitlines()[0] == (
        f"denied by bob: approval {approval} is closed; re-submitting the request is denied"
        " (approval.denied)"
    )
    line = env.failed(EXIT_REFUSED, env.remote("approvals", "approve", approval, "--key", alice))
    assert line.endswith(f"approval {approval} is denied; it takes no more reviews")


def test_without_a_local_home_the_identities_are_named(env: Env, tmp_path: Path) -> None:
    _, approval = env.pause()
    elsewhere = tmp_path / "no-home"
    argv = env.remote("approvals", "approve", approval, "--key", env.key("approver-alice"))
    line = env.failed(EXIT_USAGE, [*argv, "--approver", "alice"], home=elsewhere)
    assert line == (
        f"execgate: error: there is no gateway home at {elsewhere} to say who the admin is and"
        " which gateway the call is for; name them with --admin ID --audience GATEWAY_ID"
    )
    named = [*argv, "--admin", "admin", "--audience", GATEWAY_ID]
    line = env.failed(EXIT_USAGE, named, home=elsewhere)
    assert line == (
        f"execgate: error: there is no gateway home at {elsewhere} to find whose approver key"
        f" {env.key('approver-alice')} is; name yourself with --approver ID (your [[approver]]"
        " id at that gateway)"
    )
    code, out, err = env.run(*named, "--approver", "alice", home=elsewhere)
    assert code == 0, err
    assert out.startswith("approved by alice: finance 1/2")
    # A wrong --approver is the gateway's refusal of the review: the key is not theirs.
    bob = [*named[:4], env.key("approver-bob"), *named[5:], "--approver", "alice"]
    line = env.failed(EXIT_REFUSED, bob, home=elsewhere)
    assert line.endswith("review refused: the review names 'alice' but is signed by 'bob'")
    code, out, err = env.run("approvals", "list", "--url", env.url, "--admin-key",
                             env.key("admin"), "--admin", "admin", "--audience", GATEWAY_ID,
                             home=elsewhere)  # fmt: skip
    assert code == 0, err
    assert f"{approval}  pending   finance 1/2" in out


# -- nothing reviewed: exit 2 -------------------------------------------------------------


def test_an_unreachable_gateway_is_one_line_exit_2(env: Env) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    approval = "3b1f6f0e-0d5c-4a55-9a57-7c2d1c6f0a11"
    alice = env.key("approver-alice")
    for argv in (
        ["approvals", "list"],
        ["approvals", "show", approval],
        ["approvals", "approve", approval, "--key", alice],
        ["approvals", "deny", approval, "--key", alice, "--reason", "no"],
        ["policy", "reload"],
    ):
        line = env.failed(EXIT_USAGE, [*argv, "--url", url, "--admin-key", env.key("admin")])
        assert line.startswith(f"execgate: error: cannot reach the gateway at {url}/v1/admin/")
        assert line.endswith("; check --url, and that 'execgate serve' runs there and is reachable")


def test_a_wrong_admin_key_is_exit_2_with_the_gateways_reason(env: Env, tmp_path: Path) -> None:
    _, approval = env.pause()
    stranger = tmp_path / "stranger.jwk"
    stranger.write_text(json.dumps(PrivateKey.generate().to_jwk(private=True)))
    stranger.chmod(0o600)
    alice = env.key("approver-alice")
    approve = ["approvals", "approve", approval, "--key", alice]
    # A key the gateway does not know as an admin's: 401, refused before anything acts.
    line = env.failed(
        EXIT_USAGE, [*env.remote(*approve, admin_key=str(stranger)), "--admin", "admin"]
    )
    assert line == (
        f"execgate: error: the gateway at {env.url} refused the call: admin.unauthenticated:"
        " the token is signed by a key that is no admin's in the trust store"
    )
    # An admin without the role 'approvals': 403.
    for argv in (["approvals", "list"], approve):
        line = env.failed(EXIT_USAGE, env.remote(*argv, admin_key=env.key("auditor")))
        assert line.endswith(
            "admin.forbidden: admin 'auditor' does not hold the role 'approvals' this call needs"
        )
    # An approver key given as the admin key: the home already says it is no admin's.
    line = env.failed(EXIT_USAGE, env.remote(*approve, admin_key=alice))
    assert "is no admin's in the trust store" in line
    # Nothing was reviewed.
    assert json.loads(env.ok("approvals", "show", approval, "--json"))["reviews"] == []


def test_unknown_approvals_and_flag_mistakes_are_exit_2(env: Env) -> None:
    alice = env.key("approver-alice")
    unknown = "00000000-0000-4000-8000-000000000000"
    for argv in (
        ["approvals", "show", unknown],
        ["approvals", "approve", unknown, "--key", alice],
    ):
        line = env.failed(EXIT_USAGE, env.remote(*argv))
        assert line.startswith(f"execgate: error: no approval {unknown!r} at gateway {env.url}")
        assert f"'execgate approvals list --all --url {env.url} ...' lists them" in line
    for approval in ("../reload", "x?y", "a\udcff"):  # never sent: no id looks like these
        for argv in (
            ["approvals", "show", approval],
            ["approvals", "approve", approval, "--key", alice],
        ):
            line = env.failed(EXIT_USAGE, env.remote(*argv))
            assert f"argument ID: {approval!r} is not a decision or approval id" in line
    line = env.failed(EXIT_USAGE, ["approvals", "list", "--url", env.url])
    assert "needs --admin-key KEYFILE" in line
    line = env.failed(EXIT_USAGE, ["approvals", "list", "--admin-key", env.key("admin")])
    assert line == "execgate: error: --admin-key is for a running gateway: give its --url as well"
    line = env.failed(EXIT_USAGE, ["approvals", "approve", unknown, "--key", alice,
                                   "--approver", "alice"])  # fmt: skip
    assert "--approver is for a running gateway (--url)" in line
    line = env.failed(EXIT_USAGE, ["approvals", "list", "--url", "ftp://127.0.0.1",
                                   "--admin-key", env.key("admin")])  # fmt: skip
    assert "not an http:// or https:// URL" in line


# -- a gateway answering what it should not ----------------------------------------------------


class Fake:
    """A real HTTP server on loopback answering canned JSON, recording what it was sent."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.locations: dict[tuple[str, str], str] = {}  # a Location header to send
        self.seen: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                fake.seen.append((self.command, self.path))
                status, body = fake.answers.get((self.command, self.path), (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if (self.command, self.path) in fake.locations:
                    self.send_header("Location", fake.locations[(self.command, self.path)])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # the names http.server calls

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    yield f
    f.close()


def test_a_gateway_showing_another_request_gets_no_signature(env: Env, fake: Fake) -> None:
    _, approval = env.pause()
    real = json.loads(env.ok("approvals", "show", approval, "--json"))
    path = f"/v1/admin/approvals/{approval}"
    shown = {**real, "request": {**real["request"], "args": {"amount": 5}}}
    fake.answers[("GET", path)] = (200, json.dumps(shown).encode())
    fake.answers[("POST", path + "/reviews")] = (200, b"{}")
    argv = ["approvals", "approve", approval, "--key", env.key("approver-alice")]
    line = env.failed(EXIT_USAGE, [*argv, "--url", fake.url, "--admin-key", env.key("admin")])
    assert line.endswith("not to the request hash it asks to be signed; nothing was signed")
    assert fake.seen == [("GET", path)]  # no review was sent


@pytest.mark.parametrize(
    ("route", "answer", "fragment"),
    [
        ("list", (200, b'{"approvals": {}}'), "answered with no list of approvals"),
        ("list", (200, b"not json"), "answered with no list of approvals"),
        ("list", (502, b"<html>bad gateway</html>"), "refused the call: HTTP 502 without an error"),
        ("show", (200, b'{"approval_id": 1}'), "answered with 'state' that is not a str"),
        ("review", (200, b"[]"), "answered with a review answer that is not a JSON object"),
        ("review", (200, b'{"approval_id": "other"}'), "for another approval or verdict"),
        ("review", (409, b'{"error": {"code": "x", "message": "y"}}'), "refused the call: x: y"),
    ],
)
def test_answers_that_are_not_what_the_route_promises_are_exit_2(
    env: Env, fake: Fake, route: str, answer: tuple[int, bytes], fragment: str
) -> None:
    _, approval = env.pause()
    path = f"/v1/admin/approvals/{approval}"
    real = env.ok("approvals", "show", approval, "--json").encode()
    fake.answers[("GET", path)] = (200, real)
    argv = {
        "list": ["approvals", "list"],
        "show": ["approvals", "show", approval],
        "review": ["approvals", "approve", approval, "--key", env.key("approver-alice")],
    }[route]
    where = {"list": ("GET", _LISTING), "show": ("GET", path)}
    fake.answers[where.get(route, ("POST", path + "/reviews"))] = answer
    line = env.failed(EXIT_USAGE, [*argv, "--url", fake.url, "--admin-key", env.key("admin")])
    assert fragment in line, line


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("route", ["list", "reload"])
def test_a_redirect_is_not_followed_and_the_token_goes_nowhere_else(
    env: Env, fake: Fake, status: int, route: str
) -> None:
    """urllib would send the call again, Authorization and all, wherever the answer
    points: a token the gateway never spent, for whoever is there."""
    asked, argv = {
        "list": (("GET", _LISTING), ["approvals", "list"]),
        "reload": (("POST", "/v1/admin/policy/reload"), ["policy", "reload"]),
    }[route]
    fake.answers[asked] = (status, b"{}")
    fake.locations[asked] = fake.url + "/elsewhere"
    fake.answers[("GET", "/elsewhere")] = fake.answers[("POST", "/elsewhere")] = (200, b"{}")
    line = env.failed(EXIT_USAGE, [*argv, "--url", fake.url, "--admin-key", env.key("admin")])
    assert f"answered HTTP {status}, a redirect to '{fake.url}/elsewhere'; it is not" in line
    assert line.endswith(
        "admin token was sent nowhere else: give the gateway's own address as --url"
    )
    assert fake.seen == [asked]


def _two_shown(env: Env) -> list[dict[str, Any]]:
    """Two approvals opened at the real gateway, as ``approvals show --json`` gives them."""
    docs = []
    for _ in range(2):
        _, approval = env.pause()
        docs.append(json.loads(env.ok("approvals", "show", approval, "--json")))
    return docs


def _page(docs: list[dict[str, Any]], following: str | None) -> tuple[int, bytes]:
    return 200, json.dumps({"approvals": docs, "next": following}).encode()


def test_list_follows_the_pages_and_refuses_a_page_that_goes_round(env: Env, fake: Fake) -> None:
    """``approvals list --url`` reads page after page (``next``, each call with a token of
    its own); a gateway whose ``next`` is not the last approval of its page, or that
    lists an approval twice, is answering nonsense (it might list forever): exit 2."""
    docs = _two_shown(env)
    first, second = (d["approval_id"] for d in docs)
    path = _LISTING
    fake.answers[("GET", path)] = _page([docs[0]], first)
    following = ("GET", f"{path}&after={first}")
    fake.answers[following] = _page([docs[1]], None)
    argv = ["approvals", "list", "--all", "--json", "--url", fake.url]
    code, out, err = env.run(*argv, "--admin-key", env.key("admin"))
    assert code == 0, err
    assert [d["approval_id"] for d in json.loads(out)] == [first, second]
    assert fake.seen == [("GET", path), following]

    fake.answers[following] = _page([docs[1]], first)
    line = env.failed(EXIT_USAGE, [*argv, "--admin-key", env.key("admin")])
    assert "a next page that does not follow the last approval listed" in line
    fake.answers[following] = _page([docs[0]], None)
    line = env.failed(EXIT_USAGE, [*argv, "--admin-key", env.key("admin")])
    assert "an approval listed twice" in line


def test_listing_open_approvals_stops_at_the_first_expired_one(env: Env, fake: Fake) -> None:
    """The gateway lists the latest to expire first: after a page that holds an expired
    approval, none is open, so ``approvals list`` (open ones) reads no further page, and
    spends no more admin tokens; ``--all`` reads them all."""
    docs = _two_shown(env)
    first, second = (d["approval_id"] for d in docs)
    path = _LISTING
    fake.answers[("GET", path)] = _page([{**docs[0], "state": "expired"}], first)
    following = ("GET", f"{path}&after={first}")
    fake.answers[following] = _page([docs[1]], None)
    remote = ["--url", fake.url, "--admin-key", env.key("admin")]
    code, out, err = env.run("approvals", "list", "--json", *remote)
    assert (code, json.loads(out)) == (0, []), err
    assert fake.seen == [("GET", path)]
    code, out, err = env.run("approvals", "list", "--all", "--json", *remote)
    assert code == 0, err
    assert [(d["approval_id"], d["state"]) for d in json.loads(out)] == [
        (first, "expired"),
        (second, "pending"),
    ]
    assert fake.seen == [("GET", path), ("GET", path), following]


def test_the_client_knows_every_state_the_commands_show() -> None:
    from execgate.cli import approvals
    from execgate.cli._approvals_remote import STATES

    assert set(approvals._NEXT) == STATES


_EVIL = "\x1b]0;PWNED\x07\x1b[2J\u202e\u061c"


def test_a_gateway_answer_is_printed_with_its_controls_escaped(env: Env, fake: Fake) -> None:
    """Whoever answers --url (a rogue gateway, anyone in the path of plain http) chooses
    the text of its answer: an error code or a success field holding an escape sequence
    would retitle the window or clear the screen."""
    argv = ["policy", "reload", "--url", fake.url, "--admin-key", env.key("admin")]
    path = "/v1/admin/policy/reload"
    refused = {"error": {"code": f"policy.reload_refused{_EVIL}", "message": f"no{_EVIL}"}}
    fake.answers[("POST", path)] = (422, json.dumps(refused).encode())
    code, out, err = env.run(*argv)
    assert code == 2
    assert out == ""
    assert "policy.reload_refused\\x1b]0;PWNED\\x07\\x1b[2J\\u202e\\u061c: no\\x1b" in err
    done = {"reloaded": True, "policy_hash": f"sha256:x{_EVIL}", "workers": f"all{_EVIL}"}
    done["previous_policy_hash"] = "sha256:a"
    fake.answers[("POST", path)] = (200, json.dumps(done).encode())
    code, out, err = env.run(*argv)
    assert code == 0, err
    assert out == (
        "reloaded: policy sha256:x\\x1b]0;PWNED\\x07\\x1b[2J\\u202e\\u061c is in force"
        " (was sha256:a; workers: all\\x1b]0;PWNED\\x07\\x1b[2J\\u202e\\u061c)\n"
    )
