"""Graceful drain: stop accepting, let the requests in flight finish, then close.

aiohttp's own drain (``AppRunner.cleanup``) first marks every connection as
closing, and a closing connection drops what arrives on it
(``RequestHandler.data_received``, aiohttp#2298). A request whose body was
still arriving at the signal then never gets the rest: its handler waits until
``shutdown_timeout``, is cancelled, and the client gets no answer (found by a
newcomer: a break POSTed slowly, SIGTERM mid-body, no answer, no break, 31 s
to exit, status 0). So every route reports its requests here
(:class:`InFlight`, from :func:`stitcher.app.served`, which also sends a file
response itself so its transfer counts) and :func:`drain` runs before
aiohttp's: idle connections are closed at once, a busy one once its request
has been answered, the process goes on as soon as the last request ends, and
what is still running at the timeout is cut off and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

log = logging.getLogger(__name__)


class InFlight:
    """The requests being handled, by connection (aiohttp handles one request at a
    time per connection, pipelined ones in turn)."""

    def __init__(self) -> None:
        self.requests: dict[object, web.BaseRequest] = {}
        self.draining = False
        self._idle = asyncio.Event()

    def started(self, request: web.BaseRequest) -> None:
        self.requests[request.protocol] = request

    def ended(self, request: web.BaseRequest) -> None:
        protocol = request.protocol
        self.requests.pop(protocol, None)
        if self.draining:
            # aiohttp writes this response first, then closes: no next request on it.
            protocol.close()
            if not self.requests:
                self._idle.set()

    async def drain(self, connections: list[web.RequestHandler], timeout: float) -> int:
        """Close the idle ``connections``, wait up to ``timeout`` for the requests in
        flight, cancel those still running; returns how many were cut off."""
        self.draining = True
        for connection in connections:
            if connection not in self.requests:
                # Idle (a keep-alive between requests, or an answer handed to the
                # transport, which still flushes it before closing): closed now.
                connection.force_close()
        if self.requests:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        stragglers = list(self.requests.values())
        for request in stragglers:
            request.task.cancel()
        return len(stragglers)


async def drain(runner: web.AppRunner, in_flight: InFlight, timeout: float) -> int:
    """Stop accepting, let the requests in flight finish (within ``timeout``), then
    run aiohttp's cleanup (which has nothing left to wait for but responses being
    written). Returns how many requests had to be cut off, logged as a WARNING."""
    for site in list(runner.sites):
        await site.stop()
    # Requests that arrived before the listener closed reach their handler first
    # (as in aiohttp's own cleanup), so they count as in flight.
    await asyncio.sleep(0)
    server = runner.server
    cut = 0 if server is None else await in_flight.drain(server.connections, timeout)
    if cut:
        log.warning("drain: %d request%s still in flight after %s s cut off", cut,
                    "" if cut == 1 else "s", timeout)
    await runner.cleanup()
    return cut
