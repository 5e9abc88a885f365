"""The e2e harness itself: the page shows the tested configurations, templates render
strictly, and a missing proxy is a loud skip locally but a failure under ``CI=true``.

``docs/proxies.md``'s configuration blocks are the templates in ``configs/``, verbatim: a
change to either without the other fails here, so what the tests prove is what the page
says.
"""

from __future__ import annotations

from pathlib import Path

import proxykit
import pytest
from proxykit import CONFIGS, render, require_proxy

DOC = Path(__file__).resolve().parents[2] / "docs" / "proxies.md"
TEMPLATES = {
    "nginx.conf": "nginx",
    "envoy.yaml": "yaml",
    "traefik.yaml": "yaml",
    "traefik-dynamic.yaml": "yaml",
}


@pytest.mark.parametrize(("name", "language"), TEMPLATES.items())
def test_the_page_shows_the_tested_template(name: str, language: str) -> None:
    template = (CONFIGS / name).read_text(encoding="utf-8")
    assert f"```{language}\n{template}```\n" in DOC.read_text(encoding="utf-8")


def test_every_template_is_on_the_page() -> None:
    assert sorted(p.name for p in CONFIGS.iterdir()) == sorted(TEMPLATES)


def test_render_refuses_a_placeholder_without_a_value() -> None:
    with pytest.raises(KeyError, match="GATEWAY_PORT"):
        render(CONFIGS / "nginx.conf", {"PROXY_PORT": 1})


def test_a_missing_proxy_is_a_loud_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxykit, "proxy_binary", lambda kind: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="E2E PROXY TESTS NOT RUN: no envoy"):
        require_proxy("envoy")


def test_a_missing_proxy_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxykit, "proxy_binary", lambda kind: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true forbids skipping"):
        require_proxy("traefik")
