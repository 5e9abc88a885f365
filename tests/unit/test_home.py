"""The gateway home: created whole or not at all, and read with errors that name the file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from test_store_sqlite import _small_disk

import execgate.home
from execgate.errors import ConfigError
from execgate.home import CONFIG_NAME, default_home, init_home, load_config
from execgate.keyfile import read_private_key
from execgate.policy import load_policy
from execgate.trust import TrustStore


def test_init_home_creates_everything_and_it_loads(tmp_path: Path) -> None:
    home = tmp_path / "nested" / "home"
    config = init_home(home, gateway_id="gw-1")
    assert config.home == home
    assert config.gateway_id == "gw-1"
    assert config.audiences == frozenset({"gw-1"})
    assert (config.leeway, config.proof_max_age, config.receipt_ttl) == (60, 120, 86400)
    assert set(config.targets) == {"sandbox", "dry-run"}
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    for name in ("node", "authority", "attester", "approver-alice", "approver-bob"):
        assert stat.S_IMODE((home / "keys" / f"{name}.jwk").stat().st_mode) == 0o600
        read_private_key(home / "keys" / f"{name}.jwk")
    trust = TrustStore.load(config.trust)
    assert list(trust.authorities) == ["example-authority"]
    assert list(trust.attesters) == ["example-attester"]
    assert {a.id: a.groups for a in trust.approvers.values()} == {
        "alice": ("finance",),
        "bob": ("finance",),
    }
    assert (config.notify_command, config.notify_url, config.notify_timeout) == (None, None, 5)
    load_policy(config.policy, targets=config.targets.keys())
    assert not config.store.exists()  # the store is created on first use
    assert not [p for p in tmp_path.rglob("*") if ".execgate-init-" in p.name or ".tmp" in p.name]


def test_init_home_picks_a_random_id(tmp_path: Path) -> None:
    a = init_home(tmp_path / "a").gateway_id
    b = init_home(tmp_path / "b").gateway_id
    assert a.startswith("gw-")
    assert a != b


def test_init_home_fills_an_empty_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o750)
    init_home(home)
    assert {p.name for p in home.iterdir()} == {"keys", "trust.toml", "policy.yaml", CONFIG_NAME}
    assert stat.S_IMODE(home.stat().st_mode) == 0o750  # the user's directory is left as is


def test_init_home_refuses_an_existing_home_a_file_or_a_non_empty_directory(
    tmp_path: Path,
) -> None:
    init_home(tmp_path / "home")
    with pytest.raises(ConfigError, match="is already a gateway home; refusing to overwrite"):
        init_home(tmp_path / "home")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        init_home(tmp_path / "file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        init_home(tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("bad", ["", "has space", "tab\t", "é", "x" * 257])
def test_init_home_refuses_a_bad_gateway_id(tmp_path: Path, bad: str) -> None:
    if bad == "":
        return  # an empty id means "pick one"
    with pytest.raises(ConfigError, match="gateway id must be 1-256 printable ASCII"):
        init_home(tmp_path / "h", gateway_id=bad)
    assert not (tmp_path / "h").exists()


def test_init_home_quotes_an_id_safely_in_toml(tmp_path: Path) -> None:
    config = init_home(tmp_path / "h", gateway_id='https://gw.example/"x"\\y')
    assert config.gateway_id == 'https://gw.example/"x"\\y'


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_init_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    home = tmp_path / "home"
    if existing:
        home.mkdir()
    real = execgate.home._populate

    def crash_midway(staging: Path, gateway_id: str) -> None:
        real(staging, gateway_id)
        (staging / CONFIG_NAME).unlink()
        raise KeyboardInterrupt  # as if the user hit ^C after the keys were written

    monkeypatch.setattr(execgate.home, "_populate", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        init_home(home)
    if existing:
        assert list(home.iterdir()) == []
    else:
        assert not home.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["home"] if existing else [])


def test_an_entry_appearing_during_init_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    real = execgate.home._check

    def someone_writes(staging: Path) -> None:
        real(staging)
        (home / "policy.yaml").write_text("theirs")

    monkeypatch.setattr(execgate.home, "_check", someone_writes)
    with pytest.raises(ConfigError, match=r"cannot create gateway home .*nothing was kept"):
        init_home(home)
    assert [p.name for p in home.iterdir()] == ["policy.yaml"]
    assert (home / "policy.yaml").read_text() == "theirs"


def test_default_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECGATE_HOME", raising=False)
    assert default_home() == Path(".execgate")
    monkeypatch.setenv("EXECGATE_HOME", "")
    assert default_home() == Path(".execgate")
    monkeypatch.setenv("EXECGATE_HOME", "/srv/gw")
    assert default_home() == Path("/srv/gw")


# -- load_config ------------------------------------------------------------------------


def test_load_config_without_a_home(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nowhere")
    assert str(info.value) == (
        f"no gateway home at {tmp_path / 'nowhere'}; create one with"
        f" 'execgate init {tmp_path / 'nowhere'}' or point --home / EXECGATE_HOME at an"
        " existing one"
    )
    with pytest.raises(ConfigError, match=r"is not a gateway home \(execgate\.toml is missing\)"):
        load_config(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_config(tmp_path / "file")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    init_home(tmp_path / "home", gateway_id="gw-1")
    return tmp_path / "home"


def _edit(home: Path, old: str, new: str) -> None:
    path = home / CONFIG_NAME
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("[gateway]", "[gateway", "is not valid TOML"),
        ("[limits]", "[limitz]", "unknown sections ['limitz']"),
        ("[gateway]", "[gw]", "unknown sections ['gw']"),
        ('node_key = "keys/node.jwk"', 'node_key = "keys/node.jwk"\nnodekey = 1', "nodekey"),
        ('id = "gw-1"', "id = 1", "[gateway] id: the gateway id"),
        ('id = "gw-1"', 'id = ""', "[gateway] id: the gateway id"),
        ('audiences = ["gw-1"]', 'audiences = "gw-1"', "audiences must be a list"),
        ('audiences = ["gw-1"]', 'audiences = ["a b"]', "[gateway] audiences"),
        ('trust = "trust.toml"', "trust = 5", "[gateway] trust must be a path"),
        ('store = "state.db"', 'store = "a\\u0000b"', "[gateway] store must be a path"),
        ("leeway = 60", "leeway = 600", "leeway must be an integer in [0, 60]"),
        ("leeway = 60", "leeway = true", "leeway must be an integer"),
        ("proof_max_age = 120", "proof_max_age = 0", "proof_max_age"),
        ("receipt_ttl = 86400", "receipt_ttl = 1", "receipt_ttl"),
        ("receipt_ttl = 86400", "receipt_ttl = 86400\nextra = 1", "[limits] may hold only"),
        ('[targets.sandbox]\ndescription = "an', "[targets.sandbox]\ndescription = 5 #", "targets"),
        (
            '[targets.sandbox]\ndescription = "an',
            '[targets.sandbox]\ndescripton = "x"\nd = "an',
            "only",
        ),
        (
            "[targets.sandbox]",
            '[targets."a b"]',
            '[targets."a b"]: a target name must be 1-256 printable ASCII characters',
        ),
        ("[targets.sandbox]", '[targets."a\\r\\nX: y"]', '[targets."a\\r\\nX: y"]: a target'),
        ("[targets.sandbox]", '[targets.""]', '[targets.""]: a target name'),
        (
            'trusted_proxies = ["127.0.0.0/8", "::1/128"]',
            'trusted_proxies = ["10.0.0.1/8"]',
            "trusted_proxies: 10.0.0.1/8 has host bits set",
        ),
        (
            'trusted_proxies = ["127.0.0.0/8", "::1/128"]',
            'trusted_proxies = ["fe80::1%eth0/128"]',
            "'fe80::1%eth0/128' names an interface (%…), which is not matched",
        ),
        ("public_audit = false", 'public_audit = "yes"', "public_audit must be true or false"),
        ("public_audit = false", "public_audit = 1", "public_audit must be true or false"),
    ],
)
def test_load_config_errors_name_the_file(home: Path, old: str, new: str, fragment: str) -> None:
    _edit(home, old, new)
    with pytest.raises(ConfigError) as info:
        load_config(home)
    message = str(info.value)
    assert message.startswith(str(home / CONFIG_NAME)), message
    assert fragment in message
    assert "\n" not in message


def test_log_entries_are_not_public_unless_the_home_says_so(home: Path) -> None:
    assert load_config(home).server.public_audit is False
    _edit(home, "public_audit = false", "public_audit = true")
    assert load_config(home).server.public_audit is True


def test_load_config_refuses_non_utf8(home: Path) -> None:
    (home / CONFIG_NAME).write_bytes(b"\xff\xfe[gateway]")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(home)


def test_load_config_resolves_paths_against_the_home(home: Path) -> None:
    _edit(home, 'store = "state.db"', 'store = "data/gw.db"')
    config = load_config(home)
    assert config.store == home / "data" / "gw.db"
    assert config.node_key == home / "keys" / "node.jwk"


def test_an_init_that_fills_the_disk_says_so_and_leaves_no_directory(tmp_path: Path) -> None:
    """On a full disk, init names the home (not its staging directory) and the cause,
    and removes the directories above the home it made."""
    with _small_disk(tmp_path / "disk", "12k") as disk:
        home = disk / "a" / "b" / "gw"
        with pytest.raises(ConfigError, match="No space left on device") as refused:
            init_home(home)
        message = str(refused.value)
        assert message.startswith(f"cannot create gateway home {home}: ")
        assert ".execgate-init-" not in message
        assert list(disk.iterdir()) == []
