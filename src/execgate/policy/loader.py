"""Load and validate a policy file. Every refusal is a ``PolicyError`` naming rule and line.

The format (``version: 1``, a non-empty ordered ``rules`` list) is documented in the
package docstring of ``execgate.policy``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

import rfc8785
import yaml

from execgate._glob import validate_glob
from execgate.errors import ConfigError, PolicyError
from execgate.model import Outcome
from execgate.policy import _yaml
from execgate.policy._yaml import Entry, Invalid, line_of
from execgate.policy.conditions import Condition
from execgate.policy.engine import Policy
from execgate.policy.model import EFFECTS, MAX_QUORUM, MAX_TTL, NAME_PATTERN, PauseSpec, Rule

__all__ = ["Pin", "load_policy", "parse_policy", "pin_lock", "pin_policy", "read_policy"]

_TOP_KEYS: Final = frozenset({"version", "rules"})
_MATCH_KEYS: Final = frozenset({"action", "resource"})
_PAUSE_KEYS: Final = ("approvers", "quorum", "ttl")
_RULE_KEYS: Final = frozenset({"name", "match", "when", "effect", "reason", "target", *_PAUSE_KEYS})
_EFFECT_NAMES: Final = ", ".join(sorted(EFFECTS))


def load_policy(path: str | Path, *, targets: Collection[str]) -> Policy:
    """Read, validate and compile the policy file at ``path``.

    ``targets`` are the reroute targets the gateway has configured; a rule rerouting
    anywhere else is refused at load.
    """
    return read_policy(path, targets=targets)[0]


def read_policy(path: str | Path, *, targets: Collection[str]) -> tuple[Policy, str]:
    """``load_policy``, also returning the exact text that was validated (so that text,
    not whatever the file holds later, can be pinned: ``Gateway.open``)."""
    text = _yaml.read_text(path)
    return parse_policy(text, source=str(path), targets=targets), text


@contextmanager
def pin_lock(path: Path) -> Iterator[None]:
    """Hold the lock of the pin at ``path`` (an ``flock`` on ``<path>.lock`` beside it):
    the workers of a service read, write and restore it one at a time."""
    with _flocked(path, str(path) + ".lock", None):
        yield


@contextmanager
def _flocked(pin: Path, name: str, directory: int | None) -> Iterator[None]:
    """An ``flock`` held on the lock file ``name`` (in ``directory``, a descriptor, when
    given) of the pin at ``pin``."""
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(name, flags, 0o600, dir_fd=directory)
    except OSError as exc:
        raise ConfigError(f"cannot write {pin}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def pin_policy(path: Path, text: str) -> None:
    """Write ``text`` (a policy just validated) to ``path`` whole or not at all, private
    to this user: the policy in force for a service (``Gateway.open``)."""
    from execgate.keyfile import atomic_write

    atomic_write(path, text.encode("utf-8"), mode=0o600)


class Pin:
    """The pin at ``path`` (the policy in force for a service of several processes) as
    one process follows it: which version of the file this process runs, and whether
    another has been pinned since.

    A version is a file (a new one is renamed into place by ``replacing``), known by
    its device and inode. The version taken is held open: a file's inode number can be
    given to a new file once the old one is gone, and a later pin that got it would look
    like the one taken; while held, it is not gone.

    The directory is held open too, and must be this user's alone (``ConfigError``
    otherwise, and when it is gone): whoever else could write there would choose the
    policy every process takes, unlogged. Held, it stays the one checked, even if its
    name is given to another directory (a home others of its group may write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None
        self._dir = _private_dir(path.parent)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """``pin_lock`` of this pin, in the directory this process follows (not whatever
        directory has its name now)."""
        with _flocked(self.path, self.path.name + ".lock", self._dir):
            yield

    @contextmanager
    def replacing(self, text: str) -> Iterator[None]:
        """Write ``text`` (a policy just validated) beside the pin, private to this user,
        and once the block ends rename it into place: whole or not at all, in the
        directory this process follows, where every process of the service looks. A
        block that raises leaves the pin as it was. Hold ``lock`` around it.

        By name, the write would go wherever the directory's name leads now: if that
        name had been given to another directory, the version would be logged and
        answered as in force while every process ran the old one."""
        name = f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=self._dir)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        placed = False
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), 0o600)  # whatever the umask
                    out.write(text.encode("utf-8"))
                    out.flush()
                    os.fsync(out.fileno())  # a disk that fails fails it before the block
            except OSError as exc:
                raise ConfigError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
            yield
            try:
                os.replace(name, self.path.name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
            except OSError as exc:
                raise ConfigError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
            placed = True
            # In place, and read by every process from now: a directory whose sync fails
            # (or a file system that has none) leaves it so, and a crash may take it back.
            with suppress(OSError):
                os.fsync(self._dir)
        finally:
            if not placed:
                with suppress(OSError):
                    os.unlink(name, dir_fd=self._dir)

    def moved(self) -> bool:
        """Whether another version is pinned than the one taken (one ``stat``). A pin
        removed has not moved: the version taken stays in force."""
        if self._id is None:
            return True
        try:
            status = os.stat(self.path.name, dir_fd=self._dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (status.st_dev, status.st_ino) != self._id

    def read(self) -> tuple[int, str]:
        """Open the version pinned now: its descriptor (the caller ``hold``s or closes
        it) and its text. ``PolicyError`` when it cannot be read (``SERVICE_GONE`` when
        there is none)."""
        from execgate.keyfile import NotRegular, check_private, read_open_regular

        try:
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.path.name, flags, dir_fd=self._dir)
        except FileNotFoundError as exc:
            raise PolicyError(SERVICE_GONE) from exc
        except OSError as exc:
            raise PolicyError(f"cannot read {str(self.path)!r}: {exc.strerror or exc}") from exc
        try:
            check_private(fd)  # whoever else could write it would choose what runs
            data = read_open_regular(fd, limit=_yaml.MAX_BYTES)[0]
            return fd, data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            os.close(fd)
            why = f"it {exc}" if isinstance(exc, NotRegular) else type(exc).__name__
            raise PolicyError(f"cannot read {str(self.path)!r}: {why}") from exc
        except BaseException:
            os.close(fd)
            raise

    def hold(self, fd: int) -> None:
        """Follow the version open at ``fd`` from now on (the one before is let go);
        ``fd`` is this object's now, also when that fails."""
        try:
            status = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self.release()
        self._fd, self._id = fd, (status.st_dev, status.st_ino)

    def release(self) -> None:
        """Let go of the version taken."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._id = None

    def close(self) -> None:
        """Let go of the version taken and of the directory."""
        self.release()
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1


SERVICE_GONE: Final = (
    "the service's private files (its policy in force, config and trust store as it"
    " started) are gone; restart the service"
)


def _private_dir(directory: Path) -> int:
    """A descriptor of ``directory`` (not followed if a link), once it is known to be a
    directory of this user's that no one else may use."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ConfigError(SERVICE_GONE) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot use {directory}: {exc.strerror or exc} (a directory of this user's)"
        ) from exc
    status = os.fstat(fd)
    if status.st_uid != os.geteuid() or status.st_mode & 0o077:
        os.close(fd)
        raise ConfigError(
            f"{directory} may be used by others (mode {status.st_mode & 0o777:04o}, owner"
            f" uid {status.st_uid}); restart the service"
        )
    return fd


def parse_policy(text: str, *, source: str, targets: Collection[str]) -> Policy:
    """Validate and compile a policy document; ``source`` names it in ``Policy.source``."""
    if isinstance(targets, str):
        raise TypeError("targets must be a collection of target names, not one string")
    known_targets = frozenset(targets)
    try:
        root, rule_nodes = _document(text)
    except Invalid as exc:
        raise PolicyError(exc.message, line=exc.line) from exc
    rules: list[Rule] = []
    first_line: dict[str, int] = {}
    for index, node in enumerate(rule_nodes, start=1):
        rule = _rule(node, index, known_targets)
        if rule.name in first_line:
            raise PolicyError(
                f"duplicate rule name (first defined on line {first_line[rule.name]})",
                rule=rule.name,
                line=rule.line,
            )
        first_line[rule.name] = rule.line or 0
        rules.append(rule)
    try:
        document = _yaml.to_json(root)
        digest = hashlib.sha256(rfc8785.dumps(document)).hexdigest()
    except (Invalid, rfc8785.CanonicalizationError) as exc:  # unreachable after validation
        raise PolicyError(f"the policy cannot be hashed: {exc}") from exc
    return Policy(rules=tuple(rules), hash=f"sha256:{digest}", source=source)


def _document(text: str) -> tuple[yaml.Node, list[yaml.Node]]:
    root = _yaml.compose(text)
    top = _yaml.mapping(root, "the policy")
    _yaml.check_keys(top, _TOP_KEYS, "the policy")
    _version(top, root)
    if "rules" not in top:
        raise Invalid("the policy has no 'rules'", line_of(root))
    rule_nodes = _yaml.sequence(top["rules"].node, "'rules'")
    if not rule_nodes:
        raise Invalid(
            "'rules' is empty; an empty policy is refused, never an allow-all", top["rules"].line
        )
    return root, rule_nodes


def _version(top: dict[str, Entry], root: yaml.Node) -> None:
    if "version" not in top:
        raise Invalid("the policy has no 'version' (expected 1)", line_of(root))
    node = top["version"].node
    value = _yaml.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if type(value) is not int or value != 1:
        raise Invalid(f"unsupported policy version {value!r} (expected 1)", line_of(node))


def _rule(node: yaml.Node, index: int, targets: frozenset[str]) -> Rule:
    try:
        name, fields = _named(node)
    except Invalid as exc:  # no valid name yet: label the rule by its raw name or position
        raw = _yaml.peek_name(node)
        label = raw if raw and NAME_PATTERN.fullmatch(raw) else f"#{index}"
        raise PolicyError(exc.message, rule=label, line=exc.line) from exc
    try:
        _yaml.check_keys(fields, _RULE_KEYS, "the rule")
        return _fields(name, fields, line_of(node), targets)
    except Invalid as exc:
        raise PolicyError(exc.message, rule=name, line=exc.line) from exc


def _named(node: yaml.Node) -> tuple[str, dict[str, Entry]]:
    fields = _yaml.mapping(node, "a rule")
    if "name" not in fields:
        raise Invalid("the rule has no 'name'", line_of(node))
    name = _yaml.string(fields["name"].node, "'name'", max_len=128)
    if not NAME_PATTERN.fullmatch(name):
        raise Invalid(f"rule name {name!r} must match {NAME_PATTERN.pattern}", fields["name"].line)
    return name, fields


def _fields(name: str, fields: dict[str, Entry], line: int, targets: frozenset[str]) -> Rule:
    for required in ("match", "effect"):
        if required not in fields:
            raise Invalid(f"the rule has no {required!r}", line)
    action, resource = _match(fields["match"])
    effect_node = fields["effect"].node
    effect_name = _yaml.string(effect_node, "'effect'")
    if effect_name not in EFFECTS:
        raise Invalid(
            f"unknown effect {effect_name!r} (expected one of {_EFFECT_NAMES})",
            line_of(effect_node),
        )
    effect = Outcome(effect_name)
    condition = None
    if "when" in fields:
        when = fields["when"].node
        try:
            condition = Condition(_yaml.string(when, "'when'"))
        except ValueError as exc:
            raise Invalid(f"'when': {exc}", line_of(when)) from exc
    reason = None
    if "reason" in fields:
        reason = _yaml.string(fields["reason"].node, "'reason'", max_len=512)
    return Rule(
        name=name,
        action=action,
        resource=resource,
        effect=effect,
        condition=condition,
        reason=reason,
        target=_target(effect, fields, line, targets),
        pause=_pause(effect, fields, line),
        line=line,
    )


def _match(entry: Entry) -> tuple[str, str]:
    match = _yaml.mapping(entry.node, "'match'")
    _yaml.check_keys(match, _MATCH_KEYS, "'match'")
    if "action" not in match:
        raise Invalid("'match' has no 'action'", entry.line)
    globs = []
    for key in ("action", "resource"):
        if key not in match:
            globs.append("**")
            continue
        value = _yaml.string(match[key].node, f"'match.{key}'", max_len=512)
        try:
            globs.append(validate_glob(value))
        except ValueError as exc:
            raise Invalid(f"'match.{key}': {exc}", match[key].line) from exc
    return globs[0], globs[1]


def _target(
    effect: Outcome, fields: dict[str, Entry], line: int, targets: frozenset[str]
) -> str | None:
    if effect is not Outcome.REROUTE:
        if "target" in fields:
            raise Invalid(
                f"'target' is only allowed on reroute rules, not {effect}", fields["target"].line
            )
        return None
    if "target" not in fields:
        raise Invalid("a reroute rule needs a 'target'", line)
    target = _yaml.string(fields["target"].node, "'target'", max_len=256)
    if target not in targets:
        known = ", ".join(sorted(targets)) or "none"
        raise Invalid(
            f"unknown reroute target {target!r} (configured: {known})", fields["target"].line
        )
    return target


def _pause(effect: Outcome, fields: dict[str, Entry], line: int) -> PauseSpec | None:
    if effect is not Outcome.PAUSE:
        for key in _PAUSE_KEYS:
            if key in fields:
                raise Invalid(
                    f"{key!r} is only allowed on pause rules, not {effect}", fields[key].line
                )
        return None
    for key in _PAUSE_KEYS:
        if key not in fields:
            raise Invalid(f"a pause rule needs {key!r}", line)
    groups_node = fields["approvers"].node
    groups = [
        _yaml.string(n, "an approver group", max_len=128)
        for n in _yaml.sequence(groups_node, "'approvers'")
    ]
    if not groups:
        raise Invalid("'approvers' must name at least one group", line_of(groups_node))
    if len(set(groups)) != len(groups):
        raise Invalid("'approvers' lists a group twice", line_of(groups_node))
    quorum = _yaml.integer(fields["quorum"].node, "'quorum'", low=1, high=MAX_QUORUM)
    ttl = _yaml.integer(fields["ttl"].node, "'ttl'", low=1, high=MAX_TTL)
    return PauseSpec(approvers=tuple(groups), quorum=quorum, ttl=ttl)
