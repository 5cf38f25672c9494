"""The scrape runner's deadline, concurrency and failure handling, and the skew pairs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

from exporter.app import Runtime
from exporter.checks.base import CheckContext, CheckRun, CheckSpec, ClockReading, Failure, Resolver
from exporter.checks.clock import SPEC as CLOCK
from exporter.checks.clock import skew_pairs
from exporter.config import Settings, load_text
from exporter.inventory import Inventory, Role, Server, build_inventory
from exporter.metrics import ReloadStatus, ScrapeCollector
from exporter.scrape import run_scrape, scrape_budget
from tests.metrics_text import value
from tests.ntp_peer import NtpPeer

DC = Server("dc1.x.test", Role.DOMAIN_CONTROLLER, "127.0.0.1")
EXCH = Server("exch1.x.test", Role.EXCHANGE, "127.0.0.1")


def settings(**scrape: Any) -> Settings:
    text = "realm: x.test\n"
    if scrape:
        text += "scrape: {" + ", ".join(f"{k}: {v}" for k, v in scrape.items()) + "}\n"
    return load_text(text)


def no_metrics(runs: Sequence[CheckRun[Any]], s: Any) -> Iterable[Metric]:
    return []


def spec(name: str, run: Any, timeout: float = 10.0) -> CheckSpec[Any, Any]:
    return CheckSpec(
        name=name,
        run=run,
        settings=lambda s: s,
        enabled=lambda s: True,
        applies_to=lambda server, s: True,
        timeout=lambda s: timeout,
        emit=no_metrics,
    )


async def test_all_servers_run_concurrently_under_one_deadline() -> None:
    async def slow(ctx: CheckContext, target: Server, s: Any) -> str:
        await asyncio.sleep(0.3)
        return "ok"

    servers = tuple(Server(f"s{i}.x.test", Role.EXCHANGE) for i in range(50))
    result = await run_scrape(settings(), Inventory(servers), 5.0, [spec("slow", slow)])
    assert len(result.runs["slow"]) == 50
    assert all(run.ok for run in result.runs["slow"])
    assert result.duration < 0.6  # 50 x 0.3 s in sequence would be 15 s


async def test_concurrency_limit_is_respected() -> None:
    running = 0
    peak = 0

    async def counted(ctx: CheckContext, target: Server, s: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    servers = tuple(Server(f"s{i}.x.test", Role.EXCHANGE) for i in range(40))
    await run_scrape(settings(max_concurrency=5), Inventory(servers), 5.0, [spec("c", counted)])
    assert peak == 5


async def test_unfinished_checks_become_timeouts_and_the_answer_is_on_time() -> None:
    async def hang(ctx: CheckContext, target: Server, s: Any) -> None:
        await asyncio.sleep(60)

    async def stubborn(ctx: CheckContext, target: Server, s: Any) -> None:
        # Swallows the runner's cancellation, as a badly written library might, and goes on
        # for a second: the scrape must not wait for it.
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)

    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run_scrape(
        settings(), Inventory((DC, EXCH)), 0.4, [spec("hang", hang), spec("stubborn", stubborn)]
    )
    assert loop.time() - started < 0.4 + 0.2
    for run in result.all_runs():
        assert isinstance(run.outcome, Failure)
        assert run.outcome.reason == "timeout"


async def test_a_check_timeout_shorter_than_the_scrape_wins() -> None:
    async def hang(ctx: CheckContext, target: Server, s: Any) -> None:
        await asyncio.sleep(60)

    result = await run_scrape(settings(), Inventory((DC,)), 5.0, [spec("hang", hang, timeout=0.2)])
    assert result.duration < 0.4
    assert isinstance(result.runs["hang"][0].outcome, Failure)


async def test_a_raising_check_fails_only_itself() -> None:
    async def boom(ctx: CheckContext, target: Server, s: Any) -> None:
        if target is DC:
            raise RuntimeError("bug")

    result = await run_scrape(settings(), Inventory((DC, EXCH)), 1.0, [spec("boom", boom)])
    by_server = {run.server.name: run for run in result.runs["boom"]}
    assert by_server["dc1.x.test"].outcome == Failure(
        "error", "internal error: RuntimeError('bug')"
    )
    assert by_server["exch1.x.test"].ok


@pytest.mark.parametrize(
    ("header", "expected"), [(None, 9.5), ("2", 1.5), ("15.5", 15.0), ("junk", 9.5), ("0.3", 0.1)]
)
def test_budget_from_the_timeout_header(header: str | None, expected: float) -> None:
    assert scrape_budget(header, settings()) == pytest.approx(expected)


def reading(server: Server, source: str, offset: float, uncertainty: float) -> ClockReading:
    return ClockReading(server, source, offset, uncertainty)


def test_skew_uses_each_servers_most_precise_reading() -> None:
    readings = [
        reading(EXCH, "smtp", 400.0, 1.0),
        reading(EXCH, "ntp", 420.0, 0.001),
        reading(DC, "kerberos", 0.5, 0.01),
        reading(DC, "ntp", 0.0, 0.5),
    ]
    (pair,) = skew_pairs(readings, ["ntp", "kerberos", "smtp", "ldap"])
    assert pair.skew == pytest.approx(419.5)
    assert pair.uncertainty == pytest.approx(0.011)
    (ntp_only,) = skew_pairs(readings, ["ntp"])
    assert ntp_only.skew == pytest.approx(420.0)


def test_no_pair_without_a_reading_of_both_sides() -> None:
    assert skew_pairs([reading(EXCH, "ntp", 1.0, 0.1)], ["ntp"]) == []


@dataclass(frozen=True)
class BannerResult:
    clock_readings: tuple[ClockReading, ...]


async def test_a_new_clock_source_feeds_the_skew_pairs_without_changes() -> None:
    """Any check whose result carries clock readings takes part, as SMTP and Kerberos will."""

    async def banner(ctx: CheckContext, target: Server, s: Any) -> BannerResult:
        offset = 200.0 if target.role is Role.EXCHANGE else 0.0
        return BannerResult((ClockReading(target, "smtp", offset, 1.0),))

    config = load_text(
        "realm: x.test\ncheck_placeholder: 1\n".replace("check_placeholder: 1\n", "")
    )
    inventory = Inventory((DC, EXCH))
    checks = [spec("smtp_banner", banner)]
    result = await run_scrape(config, inventory, 1.0, checks)
    text = generate_latest(
        ScrapeCollector(result, config, inventory, ReloadStatus(True, 0), checks)
    ).decode()
    assert value(
        text,
        "exchange_auth_clock_skew_seconds",
        exchange_server="exch1.x.test",
        domain_controller="dc1.x.test",
    ) == pytest.approx(200.0)
    assert value(
        text,
        "exchange_auth_clock_offset_seconds",
        server="exch1.x.test",
        role="exchange",
        source="smtp",
    ) == pytest.approx(200.0)


async def test_clock_check_metrics_for_answering_and_dead_servers() -> None:
    peer = NtpPeer()
    try:
        port = await peer.serve(offset=420.0)
        text = (
            "realm: x.test\n"
            f"domain_controllers: {{static: [{{name: dc1.x.test, address: 127.0.0.1, ports: {{ntp: {port}}}}}]}}\n"
            "exchange_servers: {static: [{name: exch1.x.test, address: 127.0.0.1, ports: {ntp: 9}}]}\n"
        )
        config = load_text(text)
        inventory = await build_inventory(config)
        result = await run_scrape(config, inventory, 1.0, [CLOCK.erased()])
    finally:
        peer.close()
    body = generate_latest(
        ScrapeCollector(result, config, inventory, ReloadStatus(True, 0))
    ).decode()
    dc = {"server": "dc1.x.test", "role": "domain_controller"}
    exch = {"server": "exch1.x.test", "role": "exchange"}
    assert value(body, "exchange_auth_clock_offset_seconds", **dc, source="ntp") == pytest.approx(
        420, abs=0.05
    )
    assert value(body, "exchange_auth_ntp_up", **dc) == 1
    assert value(body, "exchange_auth_ntp_stratum", **dc) == 2
    assert value(body, "exchange_auth_ntp_up", **exch) == 0
    assert value(body, "exchange_auth_ntp_failure", **exch, reason="refused") == 1
    # No reading is not a zero reading.
    assert value(body, "exchange_auth_clock_offset_seconds", **exch, source="ntp") is None
    assert value(body, "exchange_auth_check_success", check="clock", server="exch1.x.test") == 0
    assert value(body, "exchange_auth_check_success", check="clock", server="dc1.x.test") == 1


async def test_lookups_still_running_are_cancelled_with_the_scrape() -> None:
    resolver = Resolver()
    started = asyncio.Event()

    async def slow_lookup(name: str) -> str:
        started.set()
        await asyncio.sleep(60)
        return "127.0.0.1"

    resolver._lookup = slow_lookup  # type: ignore[method-assign]
    waiter = asyncio.create_task(resolver.address(Server("dc1.x.test", Role.DOMAIN_CONTROLLER)))
    await started.wait()
    pending = list(resolver._pending.values())
    resolver.close()
    await asyncio.sleep(0)
    assert all(task.cancelled() for task in pending)
    waiter.cancel()


async def test_concurrent_requests_share_one_scrape() -> None:
    calls = 0

    async def counted(ctx: CheckContext, target: Server, s: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)

    runtime = Runtime(
        Path("unused.yml"), settings(), Inventory((DC, EXCH)), [spec("counted", counted)]
    )
    first, second = await asyncio.gather(runtime.scrape(2.0), runtime.scrape(3.0))
    assert first is second
    assert calls == 2
    # A request that must end sooner than the scrape in flight does not wait for it.
    await asyncio.gather(runtime.scrape(2.0), runtime.scrape(0.5))
    assert calls == 2 + 4
