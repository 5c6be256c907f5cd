"""Service and channel configuration (pydantic), with embedded defaults.

Validation errors name the field and the problem; they are raised at load time
(``load_config``) so a bad file never starts a half-configured service.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from stitcher.netpolicy import parse_host


def _a_number(value: object) -> object:
    """pydantic reads ``true`` as 1.0 and ``"30"`` as 30.0 for a float: a duration
    of ``true`` is a typo, and a quoted one says the sender's types are wrong
    (the next field it quotes may not be a number at all)."""
    if isinstance(value, bool):
        raise ValueError("a number of seconds, not true/false")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, str | bytes):
        raise ValueError("a number of seconds, not a string")  # noqa: TRY004
    return value


def _home(value: object) -> object:
    """A path as a shell would take it: ``~`` and ``~user`` expanded (a config
    that names ``~/media/slate.mp4`` meant the home folder, not a folder named
    ``~`` under the working directory); URLs and other values unchanged."""
    if isinstance(value, str | Path) and str(value).startswith("~"):
        return type(value)(Path(value).expanduser())
    return value


#: A filesystem path in the config (``~`` expanded).
HomePath = Annotated[Path, BeforeValidator(_home)]


#: Finite (a YAML ``.inf`` or a JSON ``1e999`` is refused, naming the field: it
#: would otherwise fail later, in exact time arithmetic), and a number, not a bool
#: or a string.
Seconds = Annotated[float, BeforeValidator(_a_number), Field(ge=0, allow_inf_nan=False)]


class CohortRule(BaseModel):
    """One targeting attribute: a session parameter and its allowed values.

    Values not listed map to ``default``, so clients cannot create cohorts.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    attribute: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    #: A value may not contain ``.`` (cohort keys join values with it) nor ``/``
    #: (cohort URLs carry the key in a path segment).
    values: list[Annotated[str, Field(pattern=r"^[^./\s]{1,64}$")]] = Field(
        min_length=1, max_length=64)
    default: str

    @field_validator("values")
    @classmethod
    def _distinct_values(cls, values: list[str]) -> list[str]:
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"values listed twice: {twice}")
        return values

    @field_validator("default")
    @classmethod
    def _default_listed(cls, v: str, info: object) -> str:
        values = getattr(info, "data", {}).get("values") or []
        if values and v not in values:
            raise ValueError(f"default {v!r} must be one of values {values}")
        return v


class LadderEntry(BaseModel):
    """One video rendition of an explicit ladder (``ChannelConfig.ladder``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    #: The stitcher's rendition id (``v0``, ``v1`` ...: video renditions in
    #: multivariant order).
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    bandwidth: int = Field(gt=0)
    #: Frames per second; 23.976, 29.97, 59.94 ... mean the exact n*1000/1001 rates.
    frame_rate: float = Field(default=30.0, gt=0)


class ChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    #: The origin's multivariant playlist URL.
    origin_url: str = Field(pattern=r"^https?://")
    #: VAST ad server URL template; macros like [CACHEBUSTING], {duration}, {cohort.geo}.
    ad_server_url: str | None = Field(default=None, pattern=r"^https?://")
    #: Ad servers, wrappers, creatives and trackers on private or loopback networks
    #: are refused, except these hosts (``host`` or ``host:port``): the fixture ad
    #: server on loopback, an ad server on the operator's own network.
    private_ad_hosts: list[str] = Field(default_factory=list)
    #: Every private host allowed (development only; prefer ``private_ad_hosts``).
    allow_private_ad_hosts: bool = False
    #: Mezzanine of the slate that fills what ads do not (path or http URL).
    slate: Annotated[str | None, BeforeValidator(_home)] = None
    #: Segment cadence ads are conditioned to; default: the origin's target duration.
    segment_duration: Seconds | None = None
    min_slate: Seconds = 2.0
    #: Leave a break unpersonalized when more than this many seconds would be unfilled.
    personalization_threshold: Seconds | None = None
    #: A break with no duration and no CUE-IN ends after this.
    max_break: Seconds = 120.0
    #: How long a render may wait for an ad decision before falling back.
    decision_budget: Seconds = 2.0
    #: What a break shows when its decision could not be made (ad server down,
    #: circuit open, Retry-After, over budget, every ad still being conditioned):
    #: ``content`` (the content
    #: underneath) or ``slate`` (the channel's slate over the whole avail).
    #: An ad server that answers with no ads is a no-fill: content.
    ad_fallback: Literal["content", "slate"] = "content"
    #: Breaks known ahead (a DATERANGE START-DATE past the live edge, an ad-ops
    #: break scheduled later): decisions for every active cohort are spread over
    #: this many seconds, ending ``prefetch_guard`` before the break starts (or
    #: over what lead time is left). 0: every cohort at once, when it is seen.
    prefetch_window: Seconds = 30.0
    prefetch_guard: Seconds = 5.0
    #: Each cohort's time is random within its share of the window, by this
    #: fraction of the share (0: evenly spaced, 1: anywhere in its share).
    prefetch_jitter: float = Field(default=1.0, ge=0, le=1)
    passthrough_markers: bool = False
    #: One EXT-X-DATERANGE per inserted ad, for players that beacon themselves.
    ad_dateranges: bool = False
    #: Serve at most this many segments (the newest) in every stitched playlist.
    window_cap: int | None = Field(default=None, ge=3)
    #: Content WebVTT segments: ``repair`` serves them through the stitcher with the
    #: X-TIMESTAMP-MAP of their video span written in where the origin's is missing
    #: or another span's (B22); ``origin`` leaves them at the origin's URLs.
    subtitle_maps: Literal["repair", "origin"] = "repair"
    #: Cohort-URL mode for the largest events: ``/v1/cohort/{channel}/{cohort}/...``
    #: playlists a CDN can cache (public, about half a target duration), ad segments
    #: straight at the conditioned assets and client-side tracking (no session).
    cohort_urls: bool = False
    cohorts: list[CohortRule] = Field(default_factory=list, max_length=8)

    @field_validator("cohorts")
    @classmethod
    def _distinct_attributes(cls, rules: list[CohortRule]) -> list[CohortRule]:
        names = [r.attribute for r in rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # two rules on one attribute make cohorts like ``us.a`` nobody meant
            raise ValueError(f"cohort attributes listed twice: {twice}")
        return rules
    #: The content ladder ads are conditioned to, given instead of probed: when set,
    #: preparing the channel runs no ffprobe (replay, or a ladder known up front).
    ladder: list[LadderEntry] | None = None

    @property
    def nominal(self) -> Fraction | None:
        return None if self.segment_duration is None else Fraction(str(self.segment_duration))

    @field_validator("private_ad_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for h in hosts:
            parse_host(h)  # ValueError names the entry
        return hosts


class StitcherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Public base URL of this service (what players see), for absolute URLs in JSON.
    public_url: str | None = None
    #: Where conditioned ad segments are served from; default: this service's /assets.
    assets_base_url: str | None = None
    #: Working folder: conditioned ads, ledgers (embedded mode).
    data_dir: HomePath = Path("var")
    #: Where the embedded store keeps ledgers and decisions (default: ``data_dir``).
    #: Keep it apart from the conditioned assets when they are shared or cached:
    #: live state belongs to one origin timeline, assets do not.
    state_dir: HomePath | None = None
    #: HMAC keys by key id; the first signs new sessions, all verify. When none are
    #: configured a random key is made at start-up (logged): fine for one process,
    #: but sessions then do not survive a restart nor work across instances.
    session_keys: dict[str, str] = Field(default_factory=dict)
    session_ttl: Seconds = 6 * 3600
    session_grace: Seconds = 3600
    #: Bearer token of the admin API and console (``/admin/...``, ``/console``);
    #: without one (nor ``admin_tokens``) the admin API refuses every request.
    admin_token: str | None = Field(default=None, min_length=16)
    #: More admin tokens by id (one per person or tool): the audit log names the id.
    admin_tokens: dict[str, Annotated[str, Field(min_length=16)]] = Field(default_factory=dict)
    #: ``json``: one JSON object per log line, with channel, cohort and break id
    #: fields where known (``stitcher.logs``); ``text``: human-readable lines.
    log_format: Literal["text", "json"] = "text"
    #: Proxies/CDN edges (IPs or CIDRs) whose X-Forwarded-For is believed: the
    #: viewer's IP for beacons is the right-most address not among them.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from exc
        return v
    #: Shared store for scale-out (``redis://host:6379/0``); None: the embedded
    #: in-process store (one process only). Run that Redis with ``appendonly yes``.
    redis_url: str | None = Field(default=None, pattern=r"^(redis|rediss|redis\+cluster)://")
    #: Connect to a Redis Cluster (also: ``redis+cluster://`` or ``?cluster=true``).
    redis_cluster: bool = False
    #: With Redis, beacons go through a durable Redis Streams queue
    #: (``stitcher/beacon_stream.py``): this many stream shards (spread over cluster
    #: slots; keep it at least the number of cluster masters) ...
    beacon_shards: int = Field(default=8, ge=1, le=1024)
    #: ... whose entries a dead consumer left unacknowledged are reclaimed by live
    #: instances (XAUTOCLAIM) once idle this long (must exceed a send's timeout).
    beacon_claim_idle: Seconds = Field(default=10.0, gt=0)
    #: Attempts per beacon before it is dead-lettered (both queues).
    beacon_max_attempts: int = Field(default=5, ge=1, le=50)
    #: First retry delay (doubled per attempt, with jitter x0.5-1.5) and the timeout
    #: of one beacon request (both queues).
    beacon_backoff: Seconds = Field(default=0.5, gt=0)
    beacon_timeout: Seconds = Field(default=5.0, gt=0)
    #: The longest retry delay: the doubling stops there (both queues).
    beacon_max_backoff: Seconds = Field(default=300.0, gt=0)
    #: Beacon requests in flight per tracking host, per instance (both queues).
    beacon_per_host: int = Field(default=8, ge=1, le=1024)
    origin_timeout: Seconds = 3.0
    #: The largest origin playlist (multivariant or media) taken, in bytes: a larger
    #: answer is refused unread, counted (``stitcher_origin_errors_total``, kind
    #: ``too_large``) and the last good playlist served instead.
    origin_max_bytes: int = Field(default=16 << 20, ge=1 << 10)
    #: Total budget of one ad decision: every request of it (wrappers, retries,
    #: waiting for a rate slot) must end within it.
    ad_timeout: Seconds = 5.0
    #: Per-request timeout of a VAST request, inside ``ad_timeout``.
    ad_request_timeout: Seconds = Field(default=3.0, gt=0)
    #: Decision requests per second per ad server (any window of one second); None: no cap.
    ad_max_rate: float | None = Field(default=20.0, gt=0, allow_inf_nan=False)
    #: Retries of a request where safe (refused connection, 502/503/504), with
    #: exponential backoff from ``ad_retry_backoff`` seconds, within the budget.
    ad_retries: int = Field(default=1, ge=0, le=5)
    ad_retry_backoff: Seconds = 0.2
    #: The circuit of an ad server opens after this many consecutive failures
    #: (errors, timeouts, 5xx); requests then fail fast for ``ad_breaker_cool_down``
    #: seconds, after which one probe request closes it on success.
    ad_breaker_failures: int = Field(default=5, ge=1)
    ad_breaker_cool_down: Seconds = 30.0
    #: Hold-off after a 429 without a usable Retry-After.
    ad_default_retry_after: Seconds = 30.0
    #: Worker processes sharing the port (SO_REUSEPORT); more than one needs
    #: ``redis_url``, since the embedded store lives in one process.
    workers: int = Field(default=1, ge=1, le=256)
    #: On SIGTERM: stop accepting, then give in-flight requests this long to finish.
    shutdown_timeout: Seconds = 30.0
    channels: list[ChannelConfig] = Field(default_factory=list)

    @field_validator("channels")
    @classmethod
    def _distinct_ids(cls, channels: list[ChannelConfig]) -> list[ChannelConfig]:
        ids = [c.id for c in channels]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:  # the first would win and the second vanish, silently
            raise ValueError(f"channel ids listed twice: {twice}")
        return channels

    def channel(self, channel_id: str) -> ChannelConfig | None:
        return next((c for c in self.channels if c.id == channel_id), None)


def load_config(path: Path) -> StitcherConfig:
    """Load YAML or JSON; raises pydantic.ValidationError naming the bad field."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:  # a ValueError for the CLI: one line, exit 2
            raise ValueError(f"not valid YAML: {exc}") from exc
    else:
        data = json.loads(text)
    return StitcherConfig.model_validate(data)
