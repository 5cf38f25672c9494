"""Merging static and discovered servers, and keeping the last good discovery on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exporter.config import Settings, load_text
from exporter.inventory import DISCOVERERS, build_inventory, refresh_interval
from exporter.servers import Role, Server

CONFIG = """
realm: corp.example.test
domain_controllers:
  discover: dns
  refresh_interval: 2m
  static: [{name: dc1.corp.example.test, address: 127.0.0.1}]
"""


class FakeDns:
    """Stands in for the DNS answer; the real lookup is tested against Samba in integration."""

    def __init__(self) -> None:
        self.answer: list[Server] | Exception = []

    async def __call__(self, settings: Settings) -> list[Server]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def dns() -> Iterator[FakeDns]:
    fake = FakeDns()
    original = DISCOVERERS[(Role.DOMAIN_CONTROLLER, "dns")]
    DISCOVERERS[(Role.DOMAIN_CONTROLLER, "dns")] = fake
    yield fake
    DISCOVERERS[(Role.DOMAIN_CONTROLLER, "dns")] = original


def found(name: str, address: str = "127.0.0.2") -> Server:
    return Server(name, Role.DOMAIN_CONTROLLER, address, origin="dns")


async def test_static_wins_and_discovered_servers_are_added(dns: FakeDns) -> None:
    settings = load_text(CONFIG)
    dns.answer = [found("dc1.corp.example.test", "127.0.0.9"), found("dc2.corp.example.test")]
    inventory = await build_inventory(settings)
    by_name = {s.name: s for s in inventory.servers}
    assert by_name["dc1.corp.example.test"].address == "127.0.0.1"
    assert by_name["dc1.corp.example.test"].origin == "static"
    assert by_name["dc2.corp.example.test"].origin == "dns"
    (discovery,) = inventory.discoveries
    assert discovery.success
    assert discovery.found == 2
    assert discovery.last_success > 0


async def test_a_failed_discovery_keeps_what_it_found_before(dns: FakeDns) -> None:
    settings = load_text(CONFIG)
    dns.answer = [found("dc2.corp.example.test")]
    first = await build_inventory(settings)
    dns.answer = RuntimeError("SERVFAIL")
    second = await build_inventory(settings, first)
    assert {s.name for s in second.servers} == {"dc1.corp.example.test", "dc2.corp.example.test"}
    (discovery,) = second.discoveries
    assert not discovery.success
    assert discovery.reason == "error"
    assert discovery.last_success == first.discoveries[0].last_success
    dns.answer = [found("dc3.corp.example.test")]
    third = await build_inventory(settings, second)
    assert {s.name for s in third.servers} == {"dc1.corp.example.test", "dc3.corp.example.test"}


async def test_a_method_without_a_discoverer_is_reported_not_fatal(dns: FakeDns) -> None:
    del DISCOVERERS[(Role.DOMAIN_CONTROLLER, "dns")]
    settings = load_text("realm: x.test\ndomain_controllers: {discover: dns}\n")
    inventory = await build_inventory(settings)
    assert inventory.servers == ()
    (discovery,) = inventory.discoveries
    assert (discovery.success, discovery.reason) == (False, "unsupported")


def test_refresh_interval_is_the_shortest_of_the_discovering_roles() -> None:
    assert refresh_interval(load_text("realm: x.test\n")) is None
    assert refresh_interval(load_text(CONFIG)) == 120
