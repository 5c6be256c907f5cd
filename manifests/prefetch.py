"""When to ask for each cohort's decision of a break known ahead of time.

DESIGN.md "Decide before the break": a million viewers reach a break at the
same second, but the break is often signalled long before (a DATERANGE whose
START-DATE is ahead of the live edge, an ad-ops break scheduled for later).
Asking the ad server for every cohort the moment the signal arrives is the
spike it must not see; :func:`prefetch_times` spreads the requests over a
window that ends ``guard`` seconds before the break, one share of the window
per cohort with a random place inside its share (stratified jitter: random,
yet never two cohorts bunched in one share), and wide enough for the ad
server's rate cap. Pure: the caller supplies the uniform random numbers.
"""

from __future__ import annotations

from collections.abc import Callable


def prefetch_times(count: int, *, lead: float, window: float, guard: float,
                   max_rate: float | None, jitter: float,
                   uniform: Callable[[], float]) -> list[float]:
    """Seconds from now at which to request each of ``count`` decisions.

    ``lead``: seconds until the break starts. The requests fall in
    ``[end - span, end)`` where ``end = lead - guard`` and ``span`` is
    ``window``, widened to ``count / max_rate`` (so the cap can be honoured)
    and narrowed to what is left before ``end``. No lead left (``end <= 0``)
    or no window: every request now. ``jitter`` in [0, 1] is how much of its
    share a request may move from the share's middle; ``uniform()`` returns
    numbers in [0, 1). Returned in order (the i-th for the i-th cohort).
    """
    if count <= 0:
        return []
    end = lead - guard
    if end <= 0 or window <= 0:
        return [0.0] * count
    span = window
    if max_rate:
        span = max(span, count / max_rate)
    span = min(span, end)
    begin = end - span
    share = span / count
    return [begin + share * (i + 0.5 + jitter * (uniform() - 0.5)) for i in range(count)]
