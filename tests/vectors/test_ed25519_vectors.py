"""Wycheproof ed25519_test.json through ``PublicKey.verify``: valid exactly when no exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from execgate.errors import JoseError
from execgate.jose import PublicKey

Case = tuple[dict[str, Any], dict[str, Any]]


def test_wycheproof_ed25519_verify(ed25519_case: Case) -> None:
    group, test = ed25519_case
    key = PublicKey(bytes.fromhex(group["publicKey"]["pk"]))
    message, signature = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
    assert test["result"] in {"valid", "invalid"}, "no 'acceptable' cases are expected"
    if test["result"] == "valid":
        key.verify(message, signature)  # raises JoseError if rejected
    else:
        with pytest.raises(JoseError) as info:
            key.verify(message, signature)
        assert info.value.kind == "signature_invalid"


def test_wycheproof_ed25519_group_jwks_import_to_the_same_keys(vectors_dir: Path) -> None:
    data = json.loads((vectors_dir / "wycheproof/ed25519_test.json").read_text("utf-8"))
    for group in data["testGroups"]:
        # Each group's OKP JWK (it carries kid "none") names the same key as the raw hex.
        key = PublicKey.from_jwk(group["publicKeyJwk"])
        assert key.raw == bytes.fromhex(group["publicKey"]["pk"])
