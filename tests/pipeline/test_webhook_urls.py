"""Which webhook URLs are refused (SSRF), in process, and the backoff schedule."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import create_app
from kiln_service.webhooks.sender import backoff_seconds
from kiln_service.webhooks.urls import WebhookURLError, check_webhook_url, pin_webhook_url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/x",
    "http://192.168.0.10/x", "http://172.16.5.4/x", "http://169.254.169.254/latest/meta-data",
    "http://[::1]/x", "http://0.0.0.0/x", "http://100.64.0.1/x",
])
def test_internal_addresses_are_refused_with_the_way_to_allow_them(url: str) -> None:
    with pytest.raises(WebhookURLError, match="KILN_WEBHOOK_ALLOW_PRIVATE_URLS=true"):
        check_webhook_url(url, allow_private=False)
    assert check_webhook_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/x",
                                 "http://user:pw@example.com/x"])
def test_other_schemes_and_credentials_are_refused(url: str) -> None:
    with pytest.raises(WebhookURLError):
        check_webhook_url(url, allow_private=True)


def _resolver(answers: list[list[str]]) -> Any:
    """A stand-in for the DNS resolver (no DNS server can be controlled here): each lookup of
    the name gets the next answer, so a rebinding name can be played."""
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in answers.pop(0)]
    return getaddrinfo


def test_each_attempt_connects_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first lookup says public, a second would say loopback (DNS rebinding): the pinned
    # request goes to the checked public address, carrying the receiver's name.
    monkeypatch.setattr(socket, "getaddrinfo", _resolver([["93.184.216.34"], ["127.0.0.1"]]))
    pinned = pin_webhook_url("https://hooks.example.com:8443/in?x=1", allow_private=False)
    assert pinned.url == "https://93.184.216.34:8443/in?x=1"
    assert pinned.headers == {"host": "hooks.example.com:8443"}
    assert pinned.extensions == {"sni_hostname": "hooks.example.com"}
    monkeypatch.setattr(socket, "getaddrinfo", _resolver([["2606:2800:220:1::1"]]))
    assert pin_webhook_url("http://hooks.example.com/in", allow_private=False).url == \
        "http://[2606:2800:220:1::1]/in"
    monkeypatch.setattr(socket, "getaddrinfo", _resolver([["93.184.216.34", "10.0.0.5"]]))
    with pytest.raises(WebhookURLError, match=r"10\.0\.0\.5"):
        pin_webhook_url("http://hooks.example.com/in", allow_private=False)
    assert pin_webhook_url("http://hooks.example.com/in", allow_private=True).url == \
        "http://hooks.example.com/in"


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff_seconds(n, base=5, cap=3600) for n in range(1, 12)]
    assert delays[:4] == [5, 10, 20, 40] and delays[-1] == 3600 and delays == sorted(delays)


@pytest.fixture
def app(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path / "kiln", auth="off")
    migrations.upgrade(settings.resolved_database_url)
    return create_app(settings)


async def test_private_url_is_a_422_saying_how_to_allow_it(app: Any, model_tgz: bytes) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiln.test") as client:
        r = await client.post("/v1/webhooks", json={"url": "http://10.0.0.7/hook"})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "KILN_WEBHOOK_ALLOW_PRIVATE_URLS=true" in r.json()["detail"]
        buf = io.BytesIO()
        np.savez(buf, x=np.ones((1, 3), np.float32))
        r = await client.post("/v1/compile", data={"webhook_url": "http://127.0.0.1:9/x"},
                              files={"model": ("m.tgz", model_tgz), "example_inputs": ("x.npz", buf.getvalue())})
        assert r.status_code == 422 and r.json()["code"] == "invalid_webhook_url"
        assert "KILN_WEBHOOK_ALLOW_PRIVATE_URLS=true" in r.json()["detail"]
        assert (await client.get("/v1/jobs")).json()["items"] == []
