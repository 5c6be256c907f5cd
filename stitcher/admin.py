"""The admin API and the ad-ops console: channels, breaks by hand, audit, status.

Routes (every ``/admin/...`` route but the OpenAPI document needs
``Authorization: Bearer <admin token>``; 401 without one, 403 with a wrong one):

  GET    /admin/openapi.json                       this API's OpenAPI 3.1 document
  GET    /admin/channels                           channels, their config and revision
  POST   /admin/channels                           create a channel (201)
  GET    /admin/channels/{channel}
  PUT    /admin/channels/{channel}                 replace its config (``If-Match`` revision)
  PATCH  /admin/channels/{channel}                 change some fields (merged, then validated)
  DELETE /admin/channels/{channel}                 remove it (204)
  GET    /admin/channels/{channel}/breaks          current and upcoming breaks, per-cohort fill
  POST   /admin/channels/{channel}/breaks          insert a break now, later, or at a time
  DELETE /admin/channels/{channel}/breaks/{break}  cancel an inserted break
  GET    /admin/audit                              who changed what (newest first)
  GET    /admin/status                             what the console shows, as JSON
  GET    /console                                  the ad-ops console page (asks for the token)

Changes apply at once on this instance and reach the others through the
control plane's change feed (:mod:`stitcher.control`): with Redis every
instance reads the same records, ad-ops breaks and audit log. A channel config
is validated in full (``stitcher.config.ChannelConfig``) before anything is
stored; a 422 names every bad field and what is wrong with it.

An inserted break lives on the channel's timeline (PDT), like a marker's:
"now" is the live edge of the main video playlist (the next segment the origin
publishes), never this host's clock, and a break can only start at or after
the live edge (a published segment never changes, DESIGN.md invariant 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from manifests.breaks import Break, update_breaks
from manifests.timing import add_seconds
from stitcher.channel import ChannelRuntime
from stitcher.config import ChannelConfig, Seconds, StitcherConfig
from stitcher.control import (
    ADOPS,
    RESYNC,
    AdOpsBreak,
    Change,
    ChannelRecord,
    Control,
    MemoryControl,
    RedisControl,
    RevisionMismatch,
)

if TYPE_CHECKING:
    from stitcher.app import Routes
from stitcher.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    OriginUnavailable,
    PreconditionFailed,
    Unauthorized,
)

log = logging.getLogger(__name__)
audit_log = logging.getLogger("stitcher.audit")

CONTROL = web.AppKey("control", object)
#: Serialises this instance's writes (the revision check lives in the store).
ADMIN_LOCK = web.AppKey("admin_lock", asyncio.Lock)
#: Stored channel configs this instance cannot validate (written by another
#: version, or edited by hand): channel -> what the listing and the console say.
IGNORED_CONFIGS = web.AppKey("ignored_configs", dict)
STATIC = Path(__file__).with_name("static")
#: An inserted break lasts at least one second and at most an hour.
MAX_INSERTED_BREAK = 3600.0


class BreakRequest(BaseModel):
    """Insert a break: ``duration`` seconds, starting at the live edge (``after`` = 0,
    the default), ``after`` seconds past it, or at ``start`` (a PDT on the channel's
    timeline, with its UTC offset)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    duration: Seconds = Field(ge=1, le=MAX_INSERTED_BREAK)
    after: Seconds | None = Field(default=None, le=86_400)
    start: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_start(self) -> BreakRequest:
        if self.after is not None and self.start is not None:
            raise ValueError("give either after or start, not both")
        return self


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: the admin token's id and the client."""

    token: str
    client: str
    user_agent: str

    def to_json(self) -> dict[str, str]:
        return {"token": self.token, "client": self.client, "user_agent": self.user_agent}


# ----------------------------------------------------------------- plumbing
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _tokens(config: StitcherConfig) -> dict[str, str]:
    tokens = dict(config.admin_tokens)
    if config.admin_token:
        tokens.setdefault("admin", config.admin_token)
    return tokens


def authenticate(request: web.Request) -> Actor:
    """The caller's token id (constant-time compare against every configured token)."""
    from stitcher.app import CONFIG, _client_ip

    tokens = _tokens(request.app[CONFIG])
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("admin API: send Authorization: Bearer <admin token>")
    if not tokens:
        raise Forbidden("admin API disabled: no admin_token configured")
    # Bytes as they came (aiohttp decodes headers as UTF-8 with surrogateescape):
    # a token that is not UTF-8 is a wrong token, not a 500 (found by a newcomer).
    given = presented.strip().encode("utf-8", "surrogateescape")
    found = None
    for token_id, token in tokens.items():
        if hmac.compare_digest(given, token.encode()):
            found = token_id  # no early exit: every token is compared
    if found is None:
        raise Forbidden("admin token not accepted")
    return Actor(found, _client_ip(request), request.headers.get("User-Agent", "")[:200])


def admin(handler: Callable[[web.Request, Actor], Awaitable[web.StreamResponse]]) -> Handler:
    """Authenticate, then run; errors (422 with fields, 401 with
    ``WWW-Authenticate``) are answered as on every route (``stitcher.app.served``)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        actor = authenticate(request)
        response = await handler(request, actor)
        response.headers["Cache-Control"] = "no-store"
        return response

    return wrapped


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _fields(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as (field path, problem) pairs a person can act on."""
    found = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(body)"
        problem = err["msg"]
        if err["type"] == "extra_forbidden":
            problem = "unknown field"
        elif err["type"] == "missing":
            problem = "required field missing"
        found.append({"field": path, "problem": problem})
    return found


def _invalid(what: str, exc: ValidationError) -> Invalid:
    fields = _fields(exc)
    summary = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
    return Invalid(f"invalid {what}: {summary}", fields)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise BadRequest("body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def _expected_revision(request: web.Request, control: Control,
                             channel: str) -> int | None:
    """The revision ``If-Match`` says a write was made against; None: any.

    ``*`` matches any current representation (RFC 9110 13.1.1), so it is true for
    every channel these routes reach: a channel that is not served (never was, or
    deleted) is a 404 before this is read, which is what 13.2.1 asks (preconditions
    are ignored when the request without them would not be a 2xx or 412). No
    channel route creates (POST /admin/channels does, on the collection, which
    always exists), so there is no create for ``*`` to refuse with a 412 (found by
    a newcomer: ``If-Match: *`` was a 400). Otherwise the header is a list of
    entity tags compared strongly: a weak tag (``W/"2"``) never matches, and of
    several tags the current revision's is the one expected (a list that names
    none of it, or only weak tags, is a 412)."""
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    tags = _entity_tags(value)
    if tags is None:
        raise BadRequest("If-Match must be a revision number (the ETag of GET), "
                         "a list of them, or *")
    revisions = {int(tag) for weak, tag in tags if not weak}
    if len(revisions) == 1:
        return revisions.pop()
    current = (await control.channels()).get(channel)
    now = current.revision if current is not None else 0
    if now in revisions:
        return now  # still compared and set atomically: a write meanwhile is a 412
    why = "only weak entity tags, which never match" if not revisions else "no current one"
    raise PreconditionFailed(f"If-Match {value.strip()} names {why}: channel {channel!r} is "
                             f"at revision {now}; GET it again (RFC 9110 13.1.1)")


#: One entity tag of an If-Match list (RFC 9110 8.8.3): ``W/`` for weak, then the
#: opaque tag; ours are revision numbers, quoted (a bare number is taken too).
_ENTITY_TAG = re.compile(r'\s*(W/)?(?:"(\d{1,18})"|(\d{1,18}))\s*(?:,|$)')


def _entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """``If-Match``'s entity tags as (weak, revision), or None when the header is
    not a list of revision tags."""
    tags: list[tuple[bool, str]] = []
    at, end = 0, len(value.rstrip())
    while at < end:
        found = _ENTITY_TAG.match(value, at)
        if found is None:
            return None
        tags.append((found[1] is not None, found[2] or found[3]))
        at = found.end()
    return tags or None


def _control(app: web.Application) -> Control:
    control: Control = app[CONTROL]  # type: ignore[assignment]
    return control


def _runtimes(app: web.Application) -> dict[str, ChannelRuntime]:
    from stitcher.app import CHANNELS

    runtimes: dict[str, ChannelRuntime] = app[CHANNELS]
    return runtimes


def _runtime(request: web.Request) -> ChannelRuntime:
    channel = request.match_info["channel"]
    runtime = _runtimes(request.app).get(channel)
    if runtime is None:
        if channel in request.app[IGNORED_CONFIGS]:
            raise NotFound(f"channel {channel!r} is not served: its stored config does not "
                           "validate here (see GET /admin/channels, \"ignored\"); POST a "
                           "valid one to replace it")
        raise NotFound(f"unknown channel {channel[:64]!r}")
    return runtime


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _audit(app: web.Application, actor: Actor, action: str, *, channel: str,
                 before: Any = None, after: Any = None, break_id: str | None = None) -> None:
    entry = {"time": _now(), "actor": actor.to_json(), "action": action, "channel": channel,
             "break": break_id, "before": before, "after": after}
    await _control(app).append_audit(entry)
    audit_log.info("%s %s%s by %s from %s", action, channel,
                   f" break {break_id}" if break_id else "", actor.token, actor.client,
                   extra={"channel": channel, "break_id": break_id, "actor": actor.token,
                          "action": action})


# ----------------------------------------------------------------- channels
def _channel_view(app: web.Application, runtime: ChannelRuntime,
                  records: dict[str, ChannelRecord]) -> dict[str, Any]:
    record = records.get(runtime.cfg.id)
    return {"id": runtime.cfg.id, "config": runtime.cfg.model_dump(mode="json"),
            "revision": record.revision if record else 0,
            "source": "api" if record else "file",
            "updated_at": record.updated_at if record else None,
            "updated_by": record.updated_by if record else None}


def _validated(body: dict[str, Any]) -> ChannelConfig:
    try:
        return ChannelConfig.model_validate(body)
    except ValidationError as exc:
        raise _invalid("channel config", exc) from exc


@admin
async def list_channels(request: web.Request, actor: Actor) -> web.Response:
    records = await _control(request.app).channels()
    return _json({"channels": [_channel_view(request.app, rt, records)
                               for rt in _runtimes(request.app).values()],
                  "ignored": sorted(request.app[IGNORED_CONFIGS].values(),
                                    key=lambda i: str(i["id"]))})


@admin
async def get_channel(request: web.Request, actor: Actor) -> web.Response:
    runtime = _runtime(request)
    view = _channel_view(request.app, runtime, await _control(request.app).channels())
    return _json(view, headers={"ETag": f'"{view["revision"]}"'})


@admin
async def create_channel(request: web.Request, actor: Actor) -> web.Response:
    cfg = _validated(await _body(request))
    async with request.app[ADMIN_LOCK]:
        if cfg.id in _runtimes(request.app):
            raise Conflict(f"channel {cfg.id!r} exists: change it with PUT or PATCH "
                           f"/admin/channels/{cfg.id}")
        return await _write_channel(request, actor, cfg.id, cfg, None, "channel.create", 201)


@admin
async def replace_channel(request: web.Request, actor: Actor) -> web.Response:
    runtime = _runtime(request)
    body = await _body(request)
    body.setdefault("id", runtime.cfg.id)
    cfg = _validated(body)
    if cfg.id != runtime.cfg.id:
        raise Invalid("invalid channel config: id: differs from the channel in the path "
                      "(a channel cannot be renamed: create the new one, delete the old)",
                      [{"field": "id", "problem": "differs from the channel in the path"}])
    async with request.app[ADMIN_LOCK]:
        return await _write_channel(request, actor, cfg.id, cfg, runtime.cfg,
                                    "channel.replace", 200)


@admin
async def patch_channel(request: web.Request, actor: Actor) -> web.Response:
    runtime = _runtime(request)
    body = await _body(request)
    if "id" in body and body["id"] != runtime.cfg.id:
        raise Invalid("invalid channel config: id: a channel cannot be renamed",
                      [{"field": "id", "problem": "a channel cannot be renamed"}])
    merged = {**runtime.cfg.model_dump(mode="json", exclude_unset=False), **body}
    cfg = _validated(merged)
    async with request.app[ADMIN_LOCK]:
        return await _write_channel(request, actor, cfg.id, cfg, runtime.cfg,
                                    "channel.update", 200)


@admin
async def delete_channel(request: web.Request, actor: Actor) -> web.Response:
    runtime = _runtime(request)
    async with request.app[ADMIN_LOCK]:
        await _write_channel(request, actor, runtime.cfg.id, None, runtime.cfg,
                             "channel.delete", 204)
    return web.Response(status=204)


async def _write_channel(request: web.Request, actor: Actor, channel: str,
                         cfg: ChannelConfig | None, before: ChannelConfig | None,
                         action: str, status: int) -> web.Response:
    app = request.app
    control = _control(app)
    after = cfg.model_dump(mode="json") if cfg is not None else None
    try:
        record = await control.put_channel(channel, after, at=_now(), by=actor.token,
                                           expected=await _expected_revision(
                                               request, control, channel))
    except RevisionMismatch as exc:
        raise PreconditionFailed(f"channel {channel!r} changed since revision "
                                 f"{request.headers.get('If-Match')}: it is at revision "
                                 f"{exc.current}; GET it again") from exc
    await apply_channel(app, channel, record)
    await control.publish(Change("channel", channel))
    await _audit(app, actor, action, channel=channel,
                 before=before.model_dump(mode="json") if before else None, after=after)
    if cfg is None:
        return web.Response(status=status)
    runtime = _runtimes(app)[channel]
    view = _channel_view(app, runtime, {channel: record})
    headers = {"ETag": f'"{record.revision}"'}
    if status == 201:
        headers["Location"] = f"/admin/channels/{channel}"
    return _json(view, status=status, headers=headers)


# ----------------------------------------------------------------- applying changes
def _effective(app: web.Application, channel: str,
               record: ChannelRecord | None) -> ChannelConfig | None:
    from stitcher.app import CONFIG, METRICS

    ignored: dict[str, dict[str, Any]] = app[IGNORED_CONFIGS]
    before = ignored.pop(channel, None)
    if before is not None:
        app[METRICS].stored_config_ignored.labels(channel).set(0)
    if record is None:
        return app[CONFIG].channel(channel)
    if record.config is None:
        return None
    try:
        return ChannelConfig.model_validate(record.config)
    except ValidationError as exc:
        # Written by another version, or edited by hand: keep what runs, else the
        # config file's channel, else nothing; said in the listing, the console
        # and the metrics, not only in one log line at start-up.
        current = _runtimes(app).get(channel)
        in_file = app[CONFIG].channel(channel)
        kept = current.cfg if current else in_file
        serving = ("nothing: the channel is not served" if kept is None else
                   "the config file's" if kept == in_file else "the config it was running")
        problems = "; ".join(f"{f['field']}: {f['problem']}" for f in _fields(exc))
        ignored[channel] = {"id": channel, "revision": record.revision,
                            "problems": problems, "serving": serving}
        app[METRICS].stored_config_ignored.labels(channel).set(1)
        if ignored[channel] != before:  # once, not at every resync
            log.error("ignoring stored config of channel %s (revision %d): %s; serving %s",
                      channel, record.revision, problems, serving,
                      extra={"channel": channel})
        return kept


async def apply_channel(app: web.Application, channel: str,
                        record: ChannelRecord | None = None, *, fetch: bool = False) -> None:
    """Make this instance run what the control plane says for ``channel``: build,
    rebuild (config changed) or drop its runtime, and hand it the ad-ops breaks."""
    from stitcher.app import RUNTIME_FACTORY

    control = _control(app)
    if fetch:
        record = (await control.channels()).get(channel)
    cfg = _effective(app, channel, record)
    runtimes = _runtimes(app)
    current = runtimes.get(channel)
    if cfg is None:
        removed = runtimes.pop(channel, None)
        if removed is not None:
            await removed.close()  # its decisions scheduled ahead are not needed any more
            log.info("channel %s removed", channel, extra={"channel": channel})
        return
    if current is None or current.cfg != cfg:
        factory: Callable[[ChannelConfig], ChannelRuntime] = app[RUNTIME_FACTORY]  # type: ignore[assignment]
        if current is not None:
            await current.close()
        current = runtimes[channel] = factory(cfg)
        log.info("channel %s %s", channel, "configured" if record else "loaded",
                 extra={"channel": channel})
    await apply_adops(app, current)


async def apply_adops(app: web.Application, runtime: ChannelRuntime) -> None:
    breaks = await _control(app).adops_breaks(runtime.cfg.id)
    runtime.adops = tuple(obs for b in breaks for obs in b.observations())


async def _sync_all(app: web.Application) -> None:
    from stitcher.app import CONFIG

    records = await _control(app).channels()
    ids = [c.id for c in app[CONFIG].channels] + [i for i in records
                                                   if app[CONFIG].channel(i) is None]
    ids += [i for i in _runtimes(app) if i not in ids]
    for channel in ids:
        await apply_channel(app, channel, records.get(channel))


async def _follow(app: web.Application) -> None:
    """Apply every change any instance publishes (and resync after a lost feed)."""
    control = _control(app)
    delay = 0.5
    while True:
        try:
            async for change in control.changes():
                delay = 0.5
                if change.kind == RESYNC:
                    await _sync_all(app)
                elif change.kind == "channel":
                    await apply_channel(app, change.channel, fetch=True)
                elif change.kind == "adops":
                    runtime = _runtimes(app).get(change.channel)
                    if runtime is not None:
                        await apply_adops(app, runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: the feed must come back after Redis does
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can turn a cancellation inside a blocking read into a
                # connection error: the shutdown asked for must still happen.
                raise asyncio.CancelledError from exc
            log.warning("control feed interrupted (%s): resyncing in %.1f s", exc, delay)
            await asyncio.sleep(delay)  # backoff before reconnecting, not a polling loop
            delay = min(delay * 2, 10.0)


async def _control_ctx(app: web.Application) -> AsyncIterator[None]:
    from stitcher.app import STORE
    from stitcher.redis_store import RedisStore
    from stitcher.store import MemoryStore

    store = app[STORE]
    control: Control
    if isinstance(store, RedisStore):
        control = RedisControl(store.client, prefix=store.prefix)
    else:
        state = store.state_dir if isinstance(store, MemoryStore) else None
        control = MemoryControl(state / "control" if state else None)
    app[CONTROL] = control
    await _sync_all(app)  # before the first request: channels as the control plane has them
    follower = asyncio.ensure_future(_follow(app))
    yield
    for _ in range(10):  # cancel again if a cancellation was absorbed (see _follow)
        follower.cancel()
        done, _pending = await asyncio.wait({follower}, timeout=1.0)
        if done:
            break
    else:
        log.warning("control feed did not stop within 10 s; closing under it")
    with contextlib.suppress(asyncio.CancelledError, Exception):
        if follower.done():
            follower.result()
    await control.close()


# ----------------------------------------------------------------- breaks
async def live_edge(runtime: ChannelRuntime) -> datetime:
    """The main playlist's live edge: where the next published segment starts."""
    view = await runtime.main_view()
    if view is None or not view[0].segments or view[0].segments[-1].pdt is None:
        raise Conflict(f"channel {runtime.cfg.id!r} has no live edge yet (no video playlist)")
    last = view[0].segments[-1]
    assert last.pdt is not None
    return last.pdt + last.step


async def known_breaks(app: web.Application, runtime: ChannelRuntime
                       ) -> tuple[tuple[Break, ...], list[AdOpsBreak]]:
    """The shared breaks with the ad-ops ones merged in, as the next render will have
    them (an inserted break no render has merged yet is listed too)."""
    from stitcher.app import STORE

    stored = await app[STORE].get_breaks(runtime.cfg.id)  # type: ignore[attr-defined]
    adops = await _control(app).adops_breaks(runtime.cfg.id)
    merged = update_breaks(stored, [o for b in adops for o in b.observations()],
                           runtime.policy).breaks
    return merged, adops


@admin
async def insert_break(request: web.Request, actor: Actor) -> web.Response:
    runtime = _runtime(request)
    try:
        req = BreakRequest.model_validate(await _body(request))
    except ValidationError as exc:
        raise _invalid("break", exc) from exc
    app = request.app
    try:
        edge = await live_edge(runtime)
    except OriginUnavailable as exc:
        raise Conflict(f"channel {runtime.cfg.id!r}: origin unavailable ({exc.reason}); "
                       "a break is placed on the origin's timeline") from exc
    duration = Fraction(str(req.duration))
    if duration > runtime.policy.max_duration:
        # It would be cut at the channel's max_break anyway: say so rather than
        # accept a break that cannot run as asked.
        raise Invalid(
            f"invalid break: duration: {req.duration:g} s is more than the channel's "
            f"max_break ({float(runtime.policy.max_duration):g} s)",
            [{"field": "duration",
              "problem": f"more than max_break ({float(runtime.policy.max_duration):g} s)"}])
    if req.start is not None:
        start = req.start.astimezone(UTC)
        if start > edge + timedelta(days=7):
            # Also keeps start + duration representable (9999-12-31 was a 500).
            raise Invalid(
                f"invalid break: start: {start.isoformat()} is more than 7 days ahead "
                f"of the live edge {edge.isoformat()}",
                [{"field": "start", "problem": "more than 7 days ahead of the live edge"}])
        if start < edge - timedelta(milliseconds=20):
            raise Invalid(
                f"invalid break: start: {start.isoformat()} is behind the live edge "
                f"{edge.isoformat()} (published segments never change)",
                [{"field": "start", "problem": f"behind the live edge {edge.isoformat()}"}])
    else:
        start = add_seconds(edge, Fraction(str(req.after or 0)))
    async with app[ADMIN_LOCK]:
        merged, _adops = await known_breaks(app, runtime)
        end = add_seconds(start, duration)
        for b in merged:
            if not b.cancelled and b.start < end and start < b.effective_end(runtime.policy):
                raise Conflict(f"overlaps break {b.id} ({b.start.isoformat()} to "
                               f"{b.effective_end(runtime.policy).isoformat()})")
        brk = AdOpsBreak(f"{ADOPS}-{secrets.token_hex(4)}", start, duration, _now(),
                         actor.token)
        await _control(app).put_adops_break(runtime.cfg.id, brk)
        await apply_adops(app, runtime)
        await _control(app).publish(Change("adops", runtime.cfg.id))
    view = _adops_view(brk, edge)
    await _audit(app, actor, "break.insert", channel=runtime.cfg.id, break_id=brk.id,
                 after=view)
    return _json(view, status=201,
                 headers={"Location": f"/admin/channels/{runtime.cfg.id}/breaks/{brk.id}"})


@admin
async def cancel_break(request: web.Request, actor: Actor) -> web.Response:
    runtime = _runtime(request)
    app = request.app
    wanted = request.match_info["break"]
    async with app[ADMIN_LOCK]:
        merged, adops = await known_breaks(app, runtime)
        brk = next((b for b in adops if wanted in (b.id, b.event_id)), None)
        if brk is None:
            if any(b.id == wanted for b in merged):
                raise Conflict(f"break {wanted!r} comes from the feed's markers: only "
                               "breaks inserted through this API can be cancelled")
            raise NotFound(f"no break {wanted[:80]!r} on channel {runtime.cfg.id!r}")
        if brk.cancelled_at is not None:
            raise Conflict(f"break {brk.id} was already cancelled by {brk.cancelled_by}")
        try:
            edge = await live_edge(runtime)
        except OriginUnavailable:
            edge = brk.start  # nothing new is published while the origin is down
        shared = next((b for b in merged if b.id == brk.id), None)
        ends = shared.effective_end(runtime.policy) if shared else brk.end
        if edge >= ends:
            raise Conflict(f"break {brk.id} already ended at {ends.isoformat()}")
        # Before it began: dropped; under way: it ends at the live edge (what is
        # published stays, as an early CUE-IN would leave it).
        at = max(brk.start, edge)
        cancelled = AdOpsBreak(brk.event_id, brk.start, brk.duration, brk.created_at,
                               brk.created_by, at, actor.token)
        await _control(app).put_adops_break(runtime.cfg.id, cancelled)
        await apply_adops(app, runtime)
        await _control(app).publish(Change("adops", runtime.cfg.id))
    before, after = _adops_view(brk, edge), _adops_view(cancelled, edge)
    await _audit(app, actor, "break.cancel", channel=runtime.cfg.id, break_id=brk.id,
                 before=before, after=after)
    return _json(after)


def _adops_view(b: AdOpsBreak, edge: datetime | None) -> dict[str, Any]:
    return {"id": b.id, "event_id": b.event_id, "source": ADOPS,
            "start": b.start.isoformat(), "duration": float(b.duration),
            "end": b.end.isoformat(), "created_by": b.created_by, "created_at": b.created_at,
            "cancelled": b.cancelled_at is not None,
            "cancelled_at": b.cancelled_at.isoformat() if b.cancelled_at else None,
            "cancelled_by": b.cancelled_by,
            "starts_in": None if edge is None else round((b.start - edge).total_seconds(), 3)}


@admin
async def list_breaks(request: web.Request, actor: Actor) -> web.Response:
    from stitcher.status import break_views

    runtime = _runtime(request)
    return _json(await break_views(request.app, runtime))


@admin
async def audit(request: web.Request, actor: Actor) -> web.Response:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    if not 1 <= limit <= 10_000:
        raise BadRequest("limit must be between 1 and 10000")
    channel = request.query.get("channel")
    entries = await _control(request.app).audit(10_000 if channel else limit)
    if channel:
        entries = [e for e in entries if e.get("channel") == channel][:limit]
    return _json({"entries": entries})


@admin
async def status(request: web.Request, actor: Actor) -> web.Response:
    from stitcher.status import console_status

    return _json(await console_status(request.app))


async def openapi(request: web.Request) -> web.Response:
    from stitcher.openapi import document

    return _json(document())


async def console(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "console.html", headers={
        "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache",
        # The page talks to this origin only: no CDN, no inline handlers from elsewhere.
        "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                   "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
        "X-Frame-Options": "DENY"})


def setup_admin(app: web.Application, r: Routes) -> None:
    """Routes (added through the app's ``r``: errors, metrics and CORS as on every
    route) and the control plane (its cleanup context runs after the app's
    resources, so the store and the runtime factory exist)."""
    app[ADMIN_LOCK] = asyncio.Lock()
    app[IGNORED_CONFIGS] = {}
    app.cleanup_ctx.append(_control_ctx)
    r.get("/admin/openapi.json", openapi, name="admin_openapi")
    r.get("/admin/channels", list_channels, name="admin_channels")
    r.add("POST", "/admin/channels", create_channel, name="admin_channel_create")
    one = "/admin/channels/{channel}"
    r.get(one, get_channel, name="admin_channel")
    r.add("PUT", one, replace_channel, name="admin_channel_replace")
    r.add("PATCH", one, patch_channel, name="admin_channel_update")
    r.add("DELETE", one, delete_channel, name="admin_channel_delete")
    r.get(one + "/breaks", list_breaks, name="admin_breaks")
    r.add("POST", one + "/breaks", insert_break, name="admin_break_insert")
    r.add("DELETE", one + "/breaks/{break}", cancel_break, name="admin_break_cancel")
    r.get("/admin/audit", audit, name="admin_audit")
    r.get("/admin/status", status, name="admin_status")
    r.get("/console", console, name="console")
