"""Every refusal of the policy loader names the rule and the 1-based line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from execgate.errors import ConfigError, PolicyError
from execgate.policy import load_policy, parse_policy

TARGETS = frozenset({"sandbox"})


def _parse(text: str) -> None:
    parse_policy(textwrap.dedent(text).lstrip("\n"), source="test.yaml", targets=TARGETS)


# (id, document, rule, line, fragment of the message)
RULE_ERRORS = [
    (
        "unknown-rule-key",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: proceed
            priority: 3
        """,
        "a",
        6,
        "unknown key 'priority'",
    ),
    (
        "missing-name",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: proceed
          - match: {action: y}
            effect: deny
        """,
        "#2",
        6,
        "no 'name'",
    ),
    (
        "bad-name",
        """
        version: 1
        rules:
          - name: Big_Payments
            match: {action: x}
            effect: proceed
        """,
        "#1",
        3,
        "must match",
    ),
    (
        "name-not-string",
        """
        version: 1
        rules:
          - name: [a]
            match: {action: x}
            effect: proceed
        """,
        "#1",
        3,
        "'name' must be a non-empty string",
    ),
    (
        "missing-match",
        """
        version: 1
        rules:
          - name: a
            effect: proceed
        """,
        "a",
        3,
        "no 'match'",
    ),
    (
        "missing-effect",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
        """,
        "a",
        3,
        "no 'effect'",
    ),
    (
        "match-without-action",
        """
        version: 1
        rules:
          - name: a
            match:
              resource: "acct:*"
            effect: proceed
        """,
        "a",
        4,
        "'match' has no 'action'",
    ),
    (
        "match-not-mapping",
        """
        version: 1
        rules:
          - name: a
            match: "payments.*"
            effect: proceed
        """,
        "a",
        4,
        "'match' must be a mapping",
    ),
    (
        "unknown-match-key",
        """
        version: 1
        rules:
          - name: a
            match:
              action: x
              principal: y
            effect: proceed
        """,
        "a",
        6,
        "unknown key 'principal'",
    ),
    (
        "bad-action-glob",
        """
        version: 1
        rules:
          - name: a
            match:
              action: "payments.***"
            effect: proceed
        """,
        "a",
        5,
        "'match.action'",
    ),
    (
        "bad-resource-glob",
        """
        version: 1
        rules:
          - name: a
            match:
              action: x
              resource: ""
            effect: proceed
        """,
        "a",
        6,
        "'match.resource'",
    ),
    (
        "unknown-effect",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: allow
        """,
        "a",
        5,
        "unknown effect 'allow'",
    ),
    (
        "effect-not-string",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: true
        """,
        "a",
        5,
        "'effect' must be a non-empty string",
    ),
    (
        "cel-syntax-error",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            when: "request.args.amount <="
            effect: proceed
        """,
        "a",
        5,
        "Syntax error",
    ),
    (
        "cel-unknown-variable",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            when: "requst.args.amount <= 100"
            effect: proceed
        """,
        "a",
        5,
        "unknown variable(s) requst",
    ),
    (
        "cel-unknown-function",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            when: "request.action.startswith('x')"
            effect: proceed
        """,
        "a",
        5,
        "unknown function(s) startswith",
    ),
    (
        "cel-wrong-arguments",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            when: "now.getDayOfWeek('Europe/Paris') == 1"
            effect: proceed
        """,
        "a",
        5,
        "x.getDayOfWeek(...) with 1 argument(s); the binding takes x.getDayOfWeek()",
    ),
    (
        "cel-not-string",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            when: true
            effect: proceed
        """,
        "a",
        5,
        "'when' must be a non-empty string",
    ),
    (
        "cel-too-long",
        f"""
        version: 1
        rules:
          - name: a
            match: {{action: x}}
            when: "{"true && " * 600}true"
            effect: proceed
        """,
        "a",
        5,
        "at most 4096 characters",
    ),
    (
        "target-on-proceed",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: proceed
            target: sandbox
        """,
        "a",
        6,
        "'target' is only allowed on reroute rules",
    ),
    (
        "approvers-on-deny",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: deny
            approvers: [finance]
        """,
        "a",
        6,
        "'approvers' is only allowed on pause rules",
    ),
    (
        "ttl-on-reroute",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: reroute
            target: sandbox
            ttl: 60
        """,
        "a",
        7,
        "'ttl' is only allowed on pause rules",
    ),
    (
        "reroute-unknown-target",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: reroute
            target: production
        """,
        "a",
        6,
        "unknown reroute target 'production'",
    ),
    (
        "reroute-without-target",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: reroute
        """,
        "a",
        3,
        "needs a 'target'",
    ),
    (
        "pause-without-approvers",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            quorum: 1
            ttl: 60
        """,
        "a",
        3,
        "needs 'approvers'",
    ),
    (
        "pause-without-quorum",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: [finance]
            ttl: 60
        """,
        "a",
        3,
        "needs 'quorum'",
    ),
    (
        "pause-without-ttl",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: [finance]
            quorum: 1
        """,
        "a",
        3,
        "needs 'ttl'",
    ),
    (
        "pause-empty-approvers",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: []
            quorum: 1
            ttl: 60
        """,
        "a",
        6,
        "at least one group",
    ),
    (
        "pause-duplicate-approver",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: [finance, finance]
            quorum: 1
            ttl: 60
        """,
        "a",
        6,
        "lists a group twice",
    ),
    (
        "pause-zero-quorum",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: [finance]
            quorum: 0
            ttl: 60
        """,
        "a",
        7,
        "'quorum' must be an integer",
    ),
    (
        "pause-bool-quorum",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: [finance]
            quorum: true
            ttl: 60
        """,
        "a",
        7,
        "'quorum' must be an integer",
    ),
    (
        "pause-string-ttl",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: [finance]
            quorum: 1
            ttl: "3600"
        """,
        "a",
        8,
        "'ttl' must be an integer",
    ),
    (
        "duplicate-rule-name",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: proceed
          - name: a
            match: {action: y}
            effect: deny
        """,
        "a",
        6,
        "duplicate rule name (first defined on line 3)",
    ),
    (
        "duplicate-key-in-rule",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: deny
            effect: proceed
        """,
        "a",
        6,
        "duplicate key 'effect'",
    ),
    (
        "duplicate-key-in-match",
        """
        version: 1
        rules:
          - name: a
            match: {action: x, action: "**"}
            effect: proceed
        """,
        "a",
        4,
        "duplicate key 'action'",
    ),
    (
        "reason-not-string",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: deny
            reason: 2024-01-01
        """,
        "a",
        6,
        "not a JSON value",
    ),
    (
        "quorum-octal",  # YAML 1.1 would read 8: fewer approvals than the file seems to ask
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: pause
            approvers: [finance]
            quorum: 010
            ttl: 600
        """,
        "a",
        7,
        "'010' is read as 8 (YAML 1.1)",
    ),
    (
        "rule-not-mapping",
        """
        version: 1
        rules:
          - name: a
            match: {action: x}
            effect: deny
          - just-a-string
        """,
        "#2",
        6,
        "a rule must be a mapping",
    ),
]


@pytest.mark.parametrize(
    ("text", "rule", "line", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in RULE_ERRORS],
)
def test_rule_error_names_rule_and_line(text: str, rule: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        _parse(text)
    assert info.value.rule == rule
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"rule {rule!r}, line {line}: ")


# (id, document, line, fragment): errors about the document, not one rule.
DOCUMENT_ERRORS = [
    ("empty-rules", "version: 1\nrules: []\n", 2, "'rules' is empty"),
    ("no-rules", "version: 1\n", 1, "no 'rules'"),
    ("null-rules", "version: 1\nrules:\n", 2, "'rules' must be a list"),
    ("no-version", "rules:\n  - {name: a, match: {action: x}, effect: deny}\n", 1, "no 'version'"),
    ("version-2", "version: 2\nrules: []\n", 1, "unsupported policy version 2"),
    ("version-string", "version: '1'\nrules: []\n", 1, "unsupported policy version '1'"),
    ("unknown-top-key", "version: 1\nowner: me\nrules: []\n", 2, "unknown key 'owner'"),
    ("duplicate-top-key", "version: 1\nversion: 1\nrules: []\n", 2, "duplicate key 'version'"),
    ("not-a-mapping", "- a\n- b\n", 1, "must be a mapping"),
    ("scalar-document", "just text\n", 1, "must be a mapping"),
    ("empty-document", "# nothing\n", 1, "the document is empty"),
    ("not-yaml", "version: 1\nrules: [\n  {name: a\n", 4, "not valid YAML"),
    ("tab-indent", "version: 1\nrules:\n\t- a\n", 3, "not valid YAML"),
    ("two-documents", "version: 1\n---\nversion: 1\n", 2, "not valid YAML"),
    ("alias", "version: &v 1\nrules: *v\n", 1, "anchors and aliases"),
    ("python-tag", "version: !!python/object:os.system 1\n", 1, "unusable value"),
    ("deep-nesting", "version: 1\nrules: " + "[" * 40 + "]" * 40 + "\n", 2, "nested deeper"),
    ("nan", "version: .nan\nrules: []\n", 1, "not a JSON value"),
    # YAML 1.1 reads these as numbers a reviewer would not see: refused, not guessed
    ("octal", "version: 01\nrules: []\n", 1, "'01' is read as 1 (YAML 1.1)"),
    ("hex", "version: 0x1\nrules: []\n", 1, "'0x1' is read as 1 (YAML 1.1)"),
    ("underscore", "version: 1_0\nrules: []\n", 1, "'1_0' is read as 10"),
    ("sexagesimal", "version: 1:00\nrules: []\n", 1, "'1:00' is read as 60"),
    ("plus-sign", "version: +1\nrules: []\n", 1, "'+1' is read as 1"),
    ("yes", "version: yes\nrules: []\n", 1, "'yes' is a YAML 1.1 boolean"),
    # what PyYAML's value conversions raise outside its own errors
    ("bad-date", "version: 2001-13-45\nrules: []\n", 1, "unusable value '2001-13-45'"),
    ("bad-int-tag", "version: !!int abc\nrules: []\n", 1, "unusable value 'abc'"),
    ("bad-bool-tag", "version: !!bool maybe\nrules: []\n", 1, "unusable value 'maybe'"),
    ("control-char", "version: 1\nrules: []\n# \x01\n", 3, "#x0001 is not allowed"),
    ("merge-key", "version: 1\nrules: []\n<<: {a: 1}\n", 3, "merge keys"),
]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in DOCUMENT_ERRORS],
)
def test_document_error_names_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="t", targets=())
    assert info.value.line == line, str(info.value)
    assert info.value.rule is None
    assert fragment in str(info.value)


def test_policy_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_policy("version: 1\nrules: []\n", source="t", targets=())


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml", targets=())


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read .*: it is a directory"):
        load_policy(tmp_path, targets=())


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "policy.yaml")
    with pytest.raises(PolicyError, match="it is not a regular file"):
        load_policy(tmp_path / "policy.yaml", targets=())


def test_file_larger_than_one_mib(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    body = "version: 1\nrules:\n  - {name: a, match: {action: x}, effect: deny}\n"
    path.write_text(body + "#" * (1 << 20) + "\n")
    with pytest.raises(PolicyError, match="larger than 1048576 bytes"):
        load_policy(path, targets=())


def test_text_larger_than_one_mib() -> None:
    body = "version: 1\nrules:\n  - {name: a, match: {action: x}, effect: deny}\n"
    with pytest.raises(PolicyError, match="larger than 1048576 bytes"):
        parse_policy(body + "#" + "é" * (1 << 19) + "\n", source="t", targets=())


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nrules:\n  - {name: caf\xe9, match: {action: x}, effect: deny}\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path, targets=())


def test_targets_must_not_be_a_bare_string() -> None:
    text = "version: 1\nrules:\n  - {name: a, match: {action: x}, effect: deny}\n"
    with pytest.raises(TypeError):
        parse_policy(text, source="t", targets="sandbox")
