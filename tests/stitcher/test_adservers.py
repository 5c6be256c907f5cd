"""Ad server resilience: breaker, rate cap, Retry-After, retries (fake clock, loopback HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from stitcher.adservers import (
    AdServerFailed,
    AdServerPolicy,
    AdServers,
    AdServerUnavailable,
    server_of,
)
from stitcher.breaker import CircuitBreaker, CircuitState
from stitcher.metrics import Metrics
from stitcher.ratelimit import RateLimiter, parse_retry_after


class FakeClock:
    """Time moves only by ``advance`` or by sleeping (a sleep advances it)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


# ------------------------------------------------------------------ breaker

def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    seen: list[CircuitState] = []
    b = CircuitBreaker(failure_threshold=3, cool_down=10, clock=clock, on_change=seen.append)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.allow()
    b.success()  # a success in between resets the count
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state is CircuitState.CLOSED
    assert b.allow()
    b.failure()
    assert b.state is CircuitState.OPEN and seen == [CircuitState.OPEN]
    assert not b.allow()
    assert b.retry_at() == clock.t + 10


def test_breaker_half_open_admits_one_probe_and_closes_on_success() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, cool_down=10, clock=clock)
    b.failure()
    clock.advance(9.9)
    assert not b.allow(), "still cooling down"
    clock.advance(0.1)
    assert b.allow(), "the probe"
    assert b.state is CircuitState.HALF_OPEN
    assert not b.allow(), "one probe at a time"
    b.success()
    assert b.state is CircuitState.CLOSED
    assert b.allow() and b.allow()


def test_breaker_failed_probe_reopens_for_a_full_cool_down() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=2, cool_down=10, clock=clock)
    b.failure()
    b.failure()
    clock.advance(10)
    assert b.allow()
    clock.advance(1)
    b.failure()
    assert b.state is CircuitState.OPEN
    clock.advance(9.5)
    assert not b.allow(), "the cool-down restarts at the failed probe"
    clock.advance(0.5)
    assert b.allow()


def test_breaker_released_probe_may_probe_again() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, cool_down=1, clock=clock)
    b.failure()
    clock.advance(1)
    assert b.allow()
    b.release()  # e.g. the probe was refused by the rate cap before it was sent
    assert b.allow()


# ------------------------------------------------------------------ rate limiter

@pytest.mark.parametrize("rate", [0.5, 1, 2, 3.7, 10])
async def test_rate_limiter_never_exceeds_its_rate_in_any_window(rate: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(25):
        assert await limiter.acquire()
        times.append(clock.t)
    cap = max(1, int(rate)) if rate >= 1 else 1
    window = 1.0 if rate >= 1 else 1 / rate
    for t in times:
        in_window = [u for u in times if t <= u < t + window - 1e-9]
        assert len(in_window) <= cap, (t, in_window)
    # ... and it is not slower than it has to be.
    assert times[-1] - times[0] <= (len(times) / cap) * window


async def test_rate_limiter_refuses_a_slot_past_the_deadline_without_reserving_it() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock, sleep=clock.sleep)
    assert await limiter.acquire(deadline=clock.t + 0.5)
    assert not await limiter.acquire(deadline=clock.t + 0.5)  # next slot is 1 s away
    assert clock.slept == []
    assert await limiter.acquire(deadline=clock.t + 1.0)
    assert clock.slept == [1.0]


def test_parse_retry_after_both_forms() -> None:
    now = datetime(2026, 5, 1, 20, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(" 0 ", now) == 0
    date = format_datetime(now + timedelta(seconds=90), usegmt=True)  # IMF-fixdate
    assert parse_retry_after(date, now) == 90
    assert parse_retry_after("Friday, 01-May-26 20:00:30 GMT", now) == 30  # RFC 850
    assert parse_retry_after("Fri May  1 20:00:45 2026", now) == 45  # asctime
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad, now) is None


# ------------------------------------------------------------------ over HTTP

@contextlib.asynccontextmanager
async def _server(answers: list[Any]) -> AsyncIterator[tuple[str, list[float]]]:
    """A loopback server answering each request with the next of ``answers``: an
    int status, ``(status, headers)``, ``"ok"`` (a VAST body) or ``"hang"``; it logs
    the (event loop) time of every request it receives."""
    log: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        log.append(asyncio.get_running_loop().time())
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer == "ok":
            return web.Response(body=b'<VAST version="4.2"/>', content_type="application/xml")
        if answer == "hang":
            await asyncio.sleep(1)
            return web.Response(status=204)
        status, headers = answer if isinstance(answer, tuple) else (answer, None)
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/vast", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/vast", log
    finally:
        await runner.cleanup()


def _servers(clock: FakeClock, **policy: Any) -> tuple[AdServers, Metrics]:
    metrics = Metrics()
    fields: dict[str, Any] = {"retries": 0, "max_rate": None}
    fields.update(policy)
    return AdServers(AdServerPolicy(**fields), metrics, clock=clock, sleep=clock.sleep,
                     rng=lambda: 0.5), metrics


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_circuit_opens_fails_fast_and_a_probe_closes_it() -> None:
    clock = FakeClock()
    servers, metrics = _servers(clock, failure_threshold=3, cool_down=30)
    async with _server([500, 500, 500, "ok"]) as (url, log), aiohttp.ClientSession() as http:
        name = server_of(url)
        for _ in range(3):
            with pytest.raises(AdServerFailed):
                await servers.fetch(http, url, deadline=clock.t + 5)
        assert _sample(metrics, "stitcher_ad_circuit_state", server=name) == 2
        assert _sample(metrics, "stitcher_ad_circuit_opened_total", server=name) == 1
        for _ in range(5):
            with pytest.raises(AdServerUnavailable) as caught:
                await servers.fetch(http, url, deadline=clock.t + 5)
            assert caught.value.kind == "circuit_open"
        assert len(log) == 3, "an open circuit sends nothing"
        assert _sample(metrics, "stitcher_ad_fail_fast_total", server=name,
                       kind="circuit_open") == 5
        clock.advance(30)
        assert await servers.fetch(http, url, deadline=clock.t + 5) == b'<VAST version="4.2"/>'
        assert len(log) == 4
        assert _sample(metrics, "stitcher_ad_circuit_state", server=name) == 0
        assert await servers.fetch(http, url, deadline=clock.t + 5)


async def test_timeouts_count_as_failures_and_are_not_retried() -> None:
    clock = FakeClock()
    servers, _ = _servers(clock, failure_threshold=2, request_timeout=0.2, retries=3)
    async with _server(["hang"]) as (url, log), aiohttp.ClientSession() as http:
        for _ in range(2):
            with pytest.raises(AdServerFailed) as caught:
                await servers.fetch(http, url, deadline=clock.t + 5)
            assert caught.value.kind == "timeout"
        assert len(log) == 2, "a timed-out request is never sent again"
        assert servers.server(url).breaker.state is CircuitState.OPEN


async def test_429_holds_every_request_until_retry_after_passes() -> None:
    clock = FakeClock()
    servers, metrics = _servers(clock)
    async with _server([(429, {"Retry-After": "20"}), "ok"]) as (url, log), \
            aiohttp.ClientSession() as http:
        with pytest.raises(AdServerFailed) as caught:
            await servers.fetch(http, url, deadline=clock.t + 5)
        assert caught.value.kind == "http_429"
        clock.advance(19.9)
        blocked = servers.unavailable(url)
        assert blocked is not None and blocked.kind == "retry_after"
        with pytest.raises(AdServerUnavailable):
            await servers.fetch(http, url, deadline=clock.t + 5)
        assert len(log) == 1
        clock.advance(0.1)
        assert servers.unavailable(url) is None
        assert await servers.fetch(http, url, deadline=clock.t + 5)
        assert len(log) == 2
        assert servers.server(url).breaker.state is CircuitState.CLOSED, "429 is not a failure"
        assert _sample(metrics, "stitcher_ad_retry_after_total", server=server_of(url)) == 1


async def test_429_with_an_http_date() -> None:
    clock = FakeClock()
    wall = datetime(2026, 5, 1, 20, 0, 0, tzinfo=UTC)
    metrics = Metrics()
    servers = AdServers(AdServerPolicy(retries=0, max_rate=None), metrics, clock=clock,
                        sleep=clock.sleep, wall=lambda: wall)
    header = format_datetime(wall + timedelta(seconds=45), usegmt=True)
    async with _server([(429, {"Retry-After": header}), "ok"]) as (url, _log), \
            aiohttp.ClientSession() as http:
        with pytest.raises(AdServerFailed):
            await servers.fetch(http, url, deadline=clock.t + 5)
        clock.advance(44.5)
        assert servers.unavailable(url) is not None
        clock.advance(0.5)
        assert servers.unavailable(url) is None


async def test_429_without_retry_after_holds_the_default() -> None:
    clock = FakeClock()
    servers, _ = _servers(clock, default_retry_after=12)
    async with _server([429, "ok"]) as (url, _log), aiohttp.ClientSession() as http:
        with pytest.raises(AdServerFailed):
            await servers.fetch(http, url, deadline=clock.t + 5)
        blocked = servers.unavailable(url)
        assert blocked is not None and blocked.until == pytest.approx(clock.t + 12)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_unprocessed_answers_are_retried_with_backoff(status: int) -> None:
    clock = FakeClock()
    servers, metrics = _servers(clock, retries=2, backoff=0.2)
    async with _server([status, status, "ok"]) as (url, log), aiohttp.ClientSession() as http:
        assert await servers.fetch(http, url, deadline=clock.t + 5)
        assert len(log) == 3
        assert clock.slept == [pytest.approx(0.15), pytest.approx(0.3)]  # 0.2 * 2^n * 0.75
        assert _sample(metrics, "stitcher_ad_retries_total", server=server_of(url)) == 2


@pytest.mark.parametrize("status", [500, 501, 404])
async def test_other_errors_are_not_retried(status: int) -> None:
    clock = FakeClock()
    servers, _ = _servers(clock, retries=3)
    async with _server([status, "ok"]) as (url, log), aiohttp.ClientSession() as http:
        with pytest.raises(AdServerFailed) as caught:
            await servers.fetch(http, url, deadline=clock.t + 5)
        assert caught.value.kind == f"http_{status}"
        assert len(log) == 1


async def test_retries_stay_within_the_budget() -> None:
    clock = FakeClock()
    servers, _ = _servers(clock, retries=5, backoff=1.0)
    async with _server([503]) as (url, log), aiohttp.ClientSession() as http:
        with pytest.raises(AdServerFailed):
            await servers.fetch(http, url, deadline=clock.t + 2.0)
        # 0.75 s backoff fits, the next (1.5 s) would end past the deadline.
        assert len(log) == 2 and clock.slept == [pytest.approx(0.75)]


async def test_a_refused_connection_is_retried() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock()
    servers, metrics = _servers(clock, retries=1)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(AdServerFailed) as caught:
            await servers.fetch(http, f"http://127.0.0.1:{port}/vast", deadline=clock.t + 5)
        assert caught.value.kind == "connect"
        assert _sample(metrics, "stitcher_ad_retries_total",
                       server=f"http://127.0.0.1:{port}") == 1


async def test_rate_cap_applies_to_decision_requests_only() -> None:
    clock = FakeClock()
    servers, _ = _servers(clock, max_rate=2)
    async with _server(["ok"]) as (url, log), aiohttp.ClientSession() as http:
        for _ in range(4):
            await servers.fetch(http, url, deadline=clock.t + 5, limited=True)
        assert clock.slept == [pytest.approx(1.0)], "the third waits for the next second"
        for _ in range(4):  # wrapper hops are not decisions: not capped
            await servers.fetch(http, url, deadline=clock.t + 5)
        assert len(clock.slept) == 1
        # A slot past the budget: refused at once, nothing sent.
        sent = len(log)
        await servers.fetch(http, url, deadline=clock.t + 5, limited=True)
        await servers.fetch(http, url, deadline=clock.t + 5, limited=True)
        with pytest.raises(AdServerUnavailable) as caught:
            await servers.fetch(http, url, deadline=clock.t + 0.1, limited=True)
        assert caught.value.kind == "rate_limited"
        assert len(log) == sent + 2
