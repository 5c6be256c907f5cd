"""Resilient requests to ad servers: budget, retries, Retry-After, breaker, rate.

Every VAST request goes through :meth:`AdServers.fetch`, which keeps one
:class:`AdServer` per server (scheme, host and port of the URL) shared by every
channel of the process:

* a per-request timeout (``request_timeout``, default 3 s) inside the caller's
  total budget (a deadline): no request outlives the decision it serves;
* retries with exponential backoff and jitter only where a retry is safe: the
  connection was refused or reset before the request was sent, or the server
  answered 502/503/504 (it did not process the request, RFC 9110 15.6); never
  after a timeout (the server may have taken the request: asking again doubles
  its load at the worst moment) and never past the budget;
* ``429 Too Many Requests`` (RFC 6585 4) with ``Retry-After`` (seconds or an
  HTTP-date): nothing is sent to that server before the time it gave
  (``default_retry_after`` when it gave none), requests fail fast meanwhile;
* a :class:`~stitcher.breaker.CircuitBreaker` per server: consecutive failures
  open it, requests fail fast while it is open, a probe after the cool-down
  closes it;
* a :class:`~stitcher.ratelimit.RateLimiter` per server on decision requests
  (``limited=True``): at most ``max_rate`` per second, waiting for a slot only
  while the budget allows.

Failing fast raises :class:`AdServerUnavailable` (nothing was sent); a request
that was sent and failed raises :class:`AdServerFailed`. The decider turns both
into a fallback (slate or content), never a stalled playlist.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp

from stitcher.breaker import GAUGE_VALUE, CircuitBreaker, CircuitState
from stitcher.metrics import Metrics
from stitcher.netpolicy import ForbiddenDestination, fetch_bounded
from stitcher.ratelimit import RateLimiter, parse_retry_after

log = logging.getLogger(__name__)

#: Answers that say the server did not process the request (RFC 9110 15.6.3-5).
RETRYABLE_STATUS = frozenset({502, 503, 504})
#: Servers remembered at most (wrapper chains reach arbitrary hosts).
MAX_SERVERS = 1024


class AdServerUnavailable(Exception):
    """Not sent: ``kind`` is ``circuit_open``, ``retry_after`` or ``rate_limited``;
    ``until`` is when the server may be asked again, if known (clock time)."""

    def __init__(self, kind: str, server: str, until: float | None = None) -> None:
        super().__init__(f"ad server {server}: {kind.replace('_', ' ')}")
        self.kind = kind
        self.server = server
        self.until = until


class AdServerFailed(Exception):
    """Sent, and it failed: ``kind`` is ``timeout``, ``connect``, ``http_<status>``
    or ``transport``."""

    def __init__(self, kind: str, server: str, detail: str = "") -> None:
        super().__init__(f"ad server {server}: {kind}{': ' + detail if detail else ''}")
        self.kind = kind
        self.server = server


@dataclass(frozen=True, slots=True)
class AdServerPolicy:
    request_timeout: float = 3.0
    #: Decision requests per second per server; None: no cap.
    max_rate: float | None = 20.0
    failure_threshold: int = 5
    cool_down: float = 30.0
    #: Retries of one request (safe cases only, within the budget).
    retries: int = 1
    #: First backoff; doubled per retry, with jitter (half to full).
    backoff: float = 0.2
    #: How long to hold off after a 429 that carries no usable Retry-After.
    default_retry_after: float = 30.0
    max_bytes: int = 1 << 20


class AdServer:
    """One server's state: breaker, rate limiter, Retry-After hold."""

    def __init__(self, name: str, policy: AdServerPolicy, metrics: Metrics,
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self.name = name
        gauge = metrics.ad_circuit_state.labels(name)
        gauge.set(GAUGE_VALUE[CircuitState.CLOSED])

        def changed(state: CircuitState) -> None:
            gauge.set(GAUGE_VALUE[state])
            if state is CircuitState.OPEN:
                metrics.ad_circuit_opened.labels(name).inc()
                log.warning("ad server %s: circuit open for %.0f s", name, policy.cool_down)
            else:
                log.info("ad server %s: circuit %s", name, state.value)

        self.breaker = CircuitBreaker(failure_threshold=policy.failure_threshold,
                                      cool_down=policy.cool_down, clock=clock,
                                      on_change=changed)
        self.limiter = (RateLimiter(policy.max_rate, clock=clock, sleep=sleep)
                        if policy.max_rate else None)
        #: No request before this clock time (a 429's Retry-After).
        self.hold_until = 0.0


def server_of(url: str) -> str:
    """The server a URL names: ``scheme://host:port`` (the breaker's key)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class AdServers:
    """Every ad server this process talks to (see the module docstring)."""

    def __init__(self, policy: AdServerPolicy, metrics: Metrics, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._metrics = metrics
        self.clock = clock
        self._sleep = sleep
        self._wall = wall
        self._rng = rng
        self._servers: OrderedDict[str, AdServer] = OrderedDict()

    def server(self, url: str) -> AdServer:
        name = server_of(url)
        found = self._servers.get(name)
        if found is None:
            found = self._servers[name] = AdServer(name, self.policy, self._metrics,
                                                   self.clock, self._sleep)
            while len(self._servers) > MAX_SERVERS:
                self._servers.popitem(last=False)
        else:
            self._servers.move_to_end(name)
        return found

    def unavailable(self, url: str) -> AdServerUnavailable | None:
        """Why ``url``'s server must not be asked now (nothing changes state), or None."""
        srv = self.server(url)
        now = self.clock()
        if srv.hold_until > now:
            return AdServerUnavailable("retry_after", srv.name, srv.hold_until)
        if srv.breaker.state is CircuitState.OPEN:
            until = srv.breaker.retry_at()
            if until is not None and until > now:
                return AdServerUnavailable("circuit_open", srv.name, until)
        return None

    async def fetch(self, session: aiohttp.ClientSession, url: str, *, deadline: float,
                    limited: bool = False) -> bytes:
        """GET ``url`` before ``deadline`` (a clock time) under the server's policy."""
        srv = self.server(url)
        blocked = self.unavailable(url)
        if blocked is None and not srv.breaker.allow():
            blocked = AdServerUnavailable("circuit_open", srv.name, srv.breaker.retry_at())
        if blocked is not None:
            self._metrics.ad_fail_fast.labels(srv.name, blocked.kind).inc()
            raise blocked
        try:
            if limited and srv.limiter is not None and not await srv.limiter.acquire(deadline):
                self._metrics.ad_fail_fast.labels(srv.name, "rate_limited").inc()
                raise AdServerUnavailable("rate_limited", srv.name, srv.limiter.next_slot())
            return await self._attempts(session, srv, url, deadline)
        finally:
            srv.breaker.release()  # a verdict, if any, was given; else the probe is free

    async def _attempts(self, session: aiohttp.ClientSession, srv: AdServer, url: str,
                        deadline: float) -> bytes:
        policy = self.policy
        attempt = 0
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise AdServerFailed("timeout", srv.name, "budget spent")
            retryable: bool
            try:
                body = await fetch_bounded(session, url, timeout=min(policy.request_timeout, left),
                                           max_bytes=policy.max_bytes)
            except ForbiddenDestination:
                raise  # our policy refused it: says nothing about the server
            except aiohttp.ClientResponseError as exc:
                if exc.status == 429:
                    self._hold(srv, exc.headers.get("Retry-After") if exc.headers else None)
                    raise AdServerFailed("http_429", srv.name) from exc
                if exc.status < 500:
                    srv.breaker.success()  # it answered: up, if unhelpful
                    raise AdServerFailed(f"http_{exc.status}", srv.name) from exc
                srv.breaker.failure()
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if exc.status == 503 and retry_after is not None:
                    self._hold(srv, retry_after)  # RFC 9110 10.2.3: 503 may carry it too
                    retryable = False
                else:
                    retryable = exc.status in RETRYABLE_STATUS
                failure = AdServerFailed(f"http_{exc.status}", srv.name)
                cause: BaseException = exc
            except aiohttp.ClientConnectorError as exc:
                srv.breaker.failure()
                retryable, failure, cause = True, AdServerFailed("connect", srv.name, str(exc)), exc
            except TimeoutError as exc:
                srv.breaker.failure()
                raise AdServerFailed("timeout", srv.name) from exc
            except aiohttp.ClientError as exc:
                srv.breaker.failure()
                raise AdServerFailed("transport", srv.name, repr(exc)) from exc
            else:
                srv.breaker.success()
                return body
            delay = policy.backoff * (2 ** attempt) * (0.5 + 0.5 * self._rng())
            if (not retryable or attempt >= policy.retries
                    or srv.breaker.state is not CircuitState.CLOSED
                    or self.clock() + delay + 0.05 >= deadline):
                raise failure from cause
            attempt += 1
            self._metrics.ad_retries.labels(srv.name).inc()
            await self._sleep(delay)

    def _hold(self, srv: AdServer, header: str | None) -> None:
        delay = parse_retry_after(header, self._wall())
        if delay is None:
            delay = self.policy.default_retry_after
        srv.hold_until = max(srv.hold_until, self.clock() + delay)
        self._metrics.ad_retry_after.labels(srv.name).inc()
        log.warning("ad server %s asked to wait %.1f s (Retry-After %r)", srv.name, delay, header)
