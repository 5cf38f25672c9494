"""The HTTP endpoints, served by the real aiohttp application on loopback."""

from __future__ import annotations

import gzip
import platform
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import Runtime, make_app
from tests.metrics_text import value
from tests.ntp_peer import NtpPeer

SECRET = "pa55-w0rd-never-shown"
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def peer() -> AsyncIterator[NtpPeer]:
    peer = NtpPeer()
    yield peer
    peer.close()


def write_config(folder: Path, ntp_port: int, extra: str = "") -> Path:
    (folder / "password").write_text(SECRET + "\n")
    path = folder / "config.yml"
    path.write_text(
        "realm: corp.example.test\n"
        "ldap: {url: 'ldaps://127.0.0.1:636', user: svc@corp.example.test, password_file: password}\n"
        "domain_controllers:\n"
        f"  static: [{{name: dc1.corp.example.test, address: 127.0.0.1, ports: {{ntp: {ntp_port}}}}}]\n"
        f"{extra}"
    )
    return path


@pytest.fixture
async def client(tmp_path: Path, peer: NtpPeer) -> AsyncIterator[Client]:
    port = await peer.serve(offset=3.0)
    runtime = await Runtime.load(write_config(tmp_path, port))
    async with TestClient(TestServer(make_app(runtime))) as client:
        yield client


async def test_metrics_in_text_format(client: Client) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    labels = {"server": "dc1.corp.example.test", "role": "domain_controller", "source": "ntp"}
    assert value(text, "exchange_auth_clock_offset_seconds", **labels) == pytest.approx(
        3.0, abs=0.05
    )
    assert (
        value(
            text,
            "exchange_auth_build_info",
            version="0.1.0",
            python_version=platform.python_version(),
        )
        == 1
    )
    assert value(text, "exchange_auth_config_last_reload_successful") == 1


async def test_metrics_in_openmetrics_when_asked(client: Client) -> None:
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


async def test_metrics_gzipped_when_accepted(client: Client) -> None:
    response = await client.get(
        "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(await response.read()).decode()
    assert "exchange_auth_scrape_duration_seconds" in body


async def test_timeout_header_sets_the_budget(client: Client) -> None:
    response = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "4"})
    assert value(await response.text(), "exchange_auth_scrape_timeout_seconds") == pytest.approx(
        3.5
    )


async def test_config_shows_the_effective_config_without_secrets(client: Client) -> None:
    text = await (await client.get("/config")).text()
    assert "realm: CORP.EXAMPLE.TEST" in text
    assert "max_skew: 5m" in text
    assert "password: <secret>" in text
    assert SECRET not in text


async def test_landing_page_lists_the_inventory(client: Client) -> None:
    response = await client.get("/")
    assert response.content_type == "text/html"
    page = await response.text()
    assert "dc1.corp.example.test" in page
    assert 'href="metrics"' in page


async def test_landing_page_reuses_a_recent_scrape(client: Client, peer: NtpPeer) -> None:
    await client.get("/metrics")
    after_scrape = peer.requests()
    assert after_scrape >= 1
    assert (await client.get("/")).status == 200
    # The page is built from Prometheus' last scrape: no second round of probes.
    assert peer.requests() == after_scrape


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    assert (await client.get("/no-such-page")).status == 404


async def test_reload_applies_a_good_config_and_keeps_the_old_one_on_error(
    client: Client,
    tmp_path: Path,
    peer: NtpPeer,
) -> None:
    port = await peer.serve(offset=-7.0)
    extra = f"exchange_servers: {{static: [{{name: exch1.corp.example.test, address: 127.0.0.1, ports: {{ntp: {port}}}}}]}}\n"
    config = tmp_path / "config.yml"
    config.write_text(config.read_text() + extra)
    assert (await client.post("/-/reload")).status == 200
    text = await (await client.get("/metrics")).text()
    assert value(text, "exchange_auth_inventory_servers", role="exchange", source="static") == 1
    assert value(
        text,
        "exchange_auth_clock_skew_seconds",
        exchange_server="exch1.corp.example.test",
        domain_controller="dc1.corp.example.test",
    ) == pytest.approx(10.0, abs=0.1)

    config.write_text(config.read_text() + "surprise: key\n")
    response = await client.post("/-/reload")
    assert response.status == 500
    assert "surprise (line" in await response.text()
    text = await (await client.get("/metrics")).text()
    assert value(text, "exchange_auth_config_last_reload_successful") == 0
    assert (
        value(text, "exchange_auth_inventory_servers", role="exchange", source="static") == 1
    )  # old config kept


async def test_reload_only_by_post(client: Client) -> None:
    assert (await client.get("/-/reload")).status == 405
