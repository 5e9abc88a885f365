"""Opaque ids that begin with '-' (one base64url key id or jti in 64) still parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from execgate.cli import main
from execgate.home import init_home


@pytest.mark.parametrize(
    ("option", "value"),
    [("--jti", "-starts-with-a-dash"), ("--kid", "-" + "A" * 42), ("--jti", "--")],
)
def test_revoking_an_id_that_begins_with_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    init_home(tmp_path / "home", gateway_id="gw-argv")
    code = main(["--home", str(tmp_path / "home"), "revoke", option, value, "--reason", "lost"])
    out = capsys.readouterr()
    if value == "--":  # the end-of-options marker is never taken as a value
        assert code == 2
        return
    assert (code, out.err) == (0, "")
    assert out.out.startswith(f"revoked {option[2:]} {value}:")
    again = main(["--home", str(tmp_path / "home"), "revoke", f"{option}={value}", "--reason", "x"])
    assert again == 0
    assert "already revoked" in capsys.readouterr().out
