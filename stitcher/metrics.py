"""Prometheus metrics, one registry per app (tests run many apps in one process).

The metrics every request touches (requests, latency, render cache hits, beacons
queued) are :class:`Tally` / :class:`RequestStats`: plain numbers exported when
scraped. prometheus_client takes a lock and validates labels on every
``labels()``/``inc()``/``observe()`` (an observe costs about 5 us here, a tenth
of serving a cached playlist); every increment in this service comes from the
event loop's one thread, so the lock buys nothing on these paths.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Tally:
    """A labelled counter used like prometheus_client's (``labels(...).inc()``),
    for the event loop's thread only; exported as ``<name>`` (``_total``)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], _Count] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Count:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames) or not all(
                    isinstance(v, str) for v in values):
                raise ValueError(f"{self._name}: labels {self._labelnames}, got {values!r}")
            child = self._children[values] = _Count()
        return child

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self._name, self._doc, labels=self._labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family


class RequestStats:
    """``stitcher_requests_total{endpoint,status}`` and the latency histogram
    ``stitcher_request_seconds{endpoint}`` (prometheus_client's default buckets),
    recorded by one call per request (each route's :meth:`recorder`)."""

    BOUNDS = Histogram.DEFAULT_BUCKETS  # ends with +Inf
    _LE = tuple(floatToGoString(b) for b in BOUNDS)  # type: ignore[no-untyped-call]

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: dict[tuple[str, int], float] = {}
        #: endpoint -> [count per bucket..., sum of seconds]
        self._latency: dict[str, list[float]] = {}
        registry.register(self)

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        h = self._latency.get(endpoint)
        if h is None:
            h = self._latency[endpoint] = [0.0] * (len(self.BOUNDS) + 1)
        h[bisect_left(self.BOUNDS, seconds)] += 1  # le: inclusive upper bounds
        h[-1] += seconds

    def recorder(self, endpoint: str) -> Callable[[int, float], None]:
        """:meth:`record` for one endpoint, its histogram looked up once (on its first
        request: an endpoint never asked is not exported, as before)."""
        counts, bounds = self._counts, self.BOUNDS
        latency = self._latency
        h: list[float] | None = None

        def record(status: int, seconds: float) -> None:
            nonlocal h
            key = (endpoint, status)
            counts[key] = counts.get(key, 0) + 1
            if h is None:
                h = latency.setdefault(endpoint, [0.0] * (len(bounds) + 1))
            h[bisect_left(bounds, seconds)] += 1  # le: inclusive upper bounds
            h[-1] += seconds

        return record

    def count(self, endpoint: str, status: int) -> float:
        return self._counts.get((endpoint, status), 0)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily("stitcher_requests", "Player-facing requests",
                                    labels=["endpoint", "status"]),
                HistogramMetricFamily("stitcher_request_seconds", "Request latency",
                                      labels=["endpoint"])]

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("stitcher_requests", "Player-facing requests",
                                       labels=["endpoint", "status"])
        for (endpoint, status), n in self._counts.items():
            requests.add_metric([endpoint, str(status)], n)
        latency = HistogramMetricFamily("stitcher_request_seconds", "Request latency",
                                        labels=["endpoint"])
        for endpoint, h in self._latency.items():
            cumulative, buckets = 0.0, []
            for le, n in zip(self._LE, h):
                cumulative += n
                buckets.append((le, cumulative))
            latency.add_metric([endpoint], buckets, h[-1])
        yield requests
        yield latency


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = RequestStats(r)
        self.render_seconds = Histogram("stitcher_render_seconds", "Playlist render time",
                                        registry=r)
        self.render_cache = Tally("stitcher_render_cache_total", "Rendered playlist cache",
                                  ["channel", "cohort", "result"], r)
        self.origin_fetches = Counter("stitcher_origin_fetches_total", "Origin fetches",
                                      ["channel", "result"], registry=r)
        self.origin_errors = Counter("stitcher_origin_errors_total", "Origin faults by kind",
                                     ["channel", "kind"], registry=r)
        self.origin_warnings = Counter(
            "stitcher_origin_playlist_warnings_total",
            "Lines of origin playlists taken with a defined fallback (a malformed date, "
            "an EXTINF without a URI ...), each counted when first read", ["channel"],
            registry=r)
        self.store_errors = Counter("stitcher_store_errors_total",
                                    "Shared store failures a player did not see (where)",
                                    ["channel", "where"], registry=r)
        self.stale_serves = Counter("stitcher_stale_serves_total",
                                    "Playlists served from the last good origin response",
                                    ["channel"], registry=r)
        self.ad_requests = Counter("stitcher_ad_requests_total", "Ad decision requests",
                                   ["channel", "result"], registry=r)
        self.ad_errors = Counter("stitcher_ad_errors_total", "Ad server faults by kind",
                                 ["channel", "kind"], registry=r)
        self.ad_circuit_state = Gauge(
            "stitcher_ad_circuit_state",
            "Circuit breaker per ad server: 0 closed, 1 half-open (probing), 2 open",
            ["server"], registry=r)
        self.ad_circuit_opened = Counter("stitcher_ad_circuit_opened_total",
                                         "Times an ad server's circuit opened", ["server"],
                                         registry=r)
        self.ad_fail_fast = Counter(
            "stitcher_ad_fail_fast_total",
            "Ad requests not sent (kind: circuit_open, retry_after, rate_limited)",
            ["server", "kind"], registry=r)
        self.ad_retry_after = Counter("stitcher_ad_retry_after_total",
                                      "Ad server answers asking to wait (429, 503 + Retry-After)",
                                      ["server"], registry=r)
        self.ad_retries = Counter("stitcher_ad_retries_total",
                                  "Ad requests retried (refused connection, 502/503/504)",
                                  ["server"], registry=r)
        self.prefetch = Counter(
            "stitcher_prefetch_decisions_total",
            "Decisions fetched ahead of their break (result: ok, deferred, late)",
            ["channel", "result"], registry=r)
        self.not_used = Counter("stitcher_ads_not_used_total",
                                "Decided ads that will not play (notUsed fired)",
                                ["channel"], registry=r)
        self.ads_not_ready = Counter("stitcher_ads_not_ready_total",
                                     "Ads skipped because conditioning was not done",
                                     ["channel"], registry=r)
        self.avail_seconds = Counter("stitcher_avail_seconds_total", "Avail duration decided",
                                     ["channel"], registry=r)
        self.filled_seconds = Counter("stitcher_filled_seconds_total", "Ad seconds placed",
                                      ["channel"], registry=r)
        self.marker_errors = Counter("stitcher_marker_errors_total",
                                     "Ad markers that could not be understood", ["channel"],
                                     registry=r)
        self.unaligned_breaks = Counter(
            "stitcher_unaligned_breaks_total",
            "Breaks left to the content underneath: no span on boundaries every grid shares",
            ["channel"], registry=r)
        self.ledger_conflicts = Counter(
            "stitcher_ledger_conflicts_total",
            "Renders redone because another instance published the same slots first",
            ["channel"], registry=r)
        self.beacons = Tally("stitcher_beacons_total", "Beacon deliveries", ["result"], r)
        self.beacons_deferred = Counter(
            "stitcher_beacons_deferred_total",
            "Ad segment requests whose beacon progress waited for the store (deferred), "
            "recorded later (replayed) or never (dropped)", ["result"], registry=r)
        self.beacon_queue = Gauge("stitcher_beacon_queue_depth", "Beacons waiting", registry=r)
        self.beacon_possible_duplicates = Counter(
            "stitcher_beacon_possible_duplicates",
            "Beacons resent after a consumer died between sending and recording the send",
            registry=r)
        self.conditioning = Counter("stitcher_conditioning_total", "Creative conditioning jobs",
                                    ["result"], registry=r)
        self.sessions_recohorted = Counter(
            "stitcher_sessions_recohorted_total",
            "Sessions whose cohort the channel's rules no longer have (changed since "
            "the session started), served the default cohort (once per session and "
            "instance)",
            ["channel"], registry=r)
        self.stored_config_ignored = Gauge(
            "stitcher_stored_config_ignored",
            "1 while a channel's stored config (admin API) does not validate here and "
            "is ignored (the channel runs its previous or file config, or not at all)",
            ["channel"], registry=r)
        self.breaks_overridden = Counter(
            "stitcher_breaks_overridden_total",
            "Breaks that did not play because they start inside another break that is "
            "open there (an ad-ops break, or one announced ahead; the open one wins)",
            ["channel"], registry=r)
        self.content_captions = Counter(
            "stitcher_content_captions_total",
            "Content WebVTT segments served through the stitcher, by what their "
            "X-TIMESTAMP-MAP needed (ok, equivalent, repaired, kept, unprobed, "
            "origin_error, not_webvtt)",
            ["channel", "outcome"], registry=r)
        self.creative_mismatch = Counter(
            "stitcher_creative_mismatch_total",
            "Creatives whose probed stream differs from what the VAST MediaFile declared "
            "(kind: resolution, codec); conditioned to the ladder from the probe",
            ["channel", "kind"], registry=r)
