"""Prometheus metrics, one registry per app (tests run many apps in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # Label children of the per-request metrics, looked up once: ``labels()``
        # takes a lock and validates on every call, a visible cost per request.
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self.requests = Counter("stitcher_requests_total", "Player-facing requests",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("stitcher_request_seconds", "Request latency", ["endpoint"],
                                 registry=r)
        self.render_seconds = Histogram("stitcher_render_seconds", "Playlist render time",
                                        registry=r)
        self.render_cache = Counter("stitcher_render_cache_total", "Rendered playlist cache",
                                    ["channel", "cohort", "result"], registry=r)
        self.origin_fetches = Counter("stitcher_origin_fetches_total", "Origin fetches",
                                      ["channel", "result"], registry=r)
        self.origin_errors = Counter("stitcher_origin_errors_total", "Origin faults by kind",
                                     ["channel", "kind"], registry=r)
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
        self.beacons = Counter("stitcher_beacons_total", "Beacon deliveries", ["result"],
                               registry=r)
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
        self.creative_mismatch = Counter(
            "stitcher_creative_mismatch_total",
            "Creatives whose probed stream differs from what the VAST MediaFile declared "
            "(kind: resolution, codec); conditioned to the ladder from the probe",
            ["channel", "kind"], registry=r)

    def request_counter(self, endpoint: str, status: int) -> Any:
        child = self._request_children.get((endpoint, status))
        if child is None:
            child = self._request_children[(endpoint, status)] = self.requests.labels(
                endpoint, str(status))
        return child

    def latency_histogram(self, endpoint: str) -> Any:
        child = self._latency_children.get(endpoint)
        if child is None:
            child = self._latency_children[endpoint] = self.latency.labels(endpoint)
        return child
