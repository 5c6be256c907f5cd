"""Pacing requests to an ad server: a per-second cap and HTTP Retry-After.

:class:`RateLimiter` admits at most ``rate`` requests in any window of one
second (a sliding log, so the cap holds for every window, not only aligned
ones): a break that asks for every cohort at once is spread out instead of
hitting the ad server as one spike. :func:`parse_retry_after` reads RFC 9110
10.2.3 ``Retry-After`` (delay-seconds or an HTTP-date).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: The window the rate is counted over, in seconds.
WINDOW = 1.0


class RateLimiter:
    """At most ``rate`` admissions in any ``WINDOW``-second span.

    ``rate`` below 1 spaces requests (0.5: one every two seconds); above 1 it
    is rounded down to whole requests per second, so the cap is never exceeded.
    Clock and sleep are injected, so tests run it on a fake or accelerated clock.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        # ``rate`` per second as ``count`` admissions per ``span`` seconds.
        self.count = math.floor(rate) if rate >= 1 else 1
        self.span = WINDOW if rate >= 1 else WINDOW / rate
        self._clock = clock
        self._sleep = sleep
        #: Admission times, the last ``count`` of them (including reserved future ones).
        self._admitted: deque[float] = deque()

    def next_slot(self) -> float:
        """The earliest time a request could be admitted (now or later)."""
        now = self._clock()
        if len(self._admitted) < self.count:
            return max(now, self._admitted[-1] if self._admitted else now)
        return max(now, self._admitted[0] + self.span, self._admitted[-1])

    async def acquire(self, deadline: float | None = None) -> bool:
        """Wait for a slot; False (and nothing reserved) when the slot is past
        ``deadline`` (a clock time), so a caller with a budget fails fast."""
        slot = self.next_slot()
        if deadline is not None and slot > deadline:
            return False
        self._admitted.append(slot)
        while len(self._admitted) > self.count:
            self._admitted.popleft()
        wait = slot - self._clock()
        if wait > 0:
            await self._sleep(wait)
        return True


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value; None when absent or unreadable.

    RFC 9110 10.2.3: ``Retry-After = HTTP-date / delay-seconds``. A date in the
    past means zero. Unreadable values are None (the caller's default applies).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 5.6.7: HTTP-dates are UTC
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())
