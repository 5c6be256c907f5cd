"""The admin API (``stitcher.admin``): tokens, channel CRUD with field-named
validation errors, breaks inserted and cancelled by hand (seen in the stitched
playlists), the audit log, and changes reaching another instance through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from fixtures.clock import ManualClock
from manifests.checker import Snapshot, check, format_text
from manifests.playlist import parse_media
from stitcher.app import CHANNELS, create_app
from stitcher.config import ChannelConfig, StitcherConfig
from stitcher.openapi import document
from stitcher.store import MemoryStore
from tests.harness import Stack, start_stack

TOKEN = "test-admin-token-0123456789"
OTHER = "another-token-for-bob-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VALID = {"id": "news", "origin_url": "http://127.0.0.1:9/live/news/master.m3u8"}

#: For every field of ChannelConfig, a value it must refuse. A field added to the
#: model without a row here fails ``test_every_field_has_an_invalid_case``.
INVALID: dict[str, Any] = {
    "id": "bad id!",
    "origin_url": "ftp://origin.example.com/master.m3u8",
    "ad_server_url": "javascript:alert(1)",
    "private_ad_hosts": ["http://10.0.0.5/vast"],
    "allow_private_ad_hosts": "sometimes",
    "slate": 42,
    "segment_duration": -2,
    "min_slate": -1,
    "personalization_threshold": "lots",
    "max_break": -5,
    "decision_budget": "soon",
    "ad_fallback": "blank",
    "prefetch_window": -1,
    "prefetch_guard": "early",
    "prefetch_jitter": 2,
    "passthrough_markers": "maybe",
    "ad_dateranges": [1],
    "window_cap": 2,
    "subtitle_maps": "rewrite",
    "cohort_urls": {"on": True},
    "cohorts": [{"attribute": "Geo!", "values": ["us"], "default": "us"}],
    "ladder": [{"name": "v0", "width": 0, "height": 720, "bandwidth": 1}],
}


def _config(**extra: Any) -> StitcherConfig:
    return StitcherConfig(**{"admin_token": TOKEN, "admin_tokens": {"bob": OTHER}, **extra})


async def _client(aiohttp_client: Any, tmp_path: Path, **extra: Any) -> TestClient:
    app = create_app(_config(**extra), store=MemoryStore(tmp_path / "state"))
    client: TestClient = await aiohttp_client(app)
    return client


def test_every_field_has_an_invalid_case() -> None:
    assert set(INVALID) == set(ChannelConfig.model_fields)


@pytest.mark.parametrize("field", ["decision_budget", "max_break", "min_slate",
                                   "prefetch_window"])
@pytest.mark.parametrize("value", [True, "30"], ids=["bool", "string"])
def test_a_duration_that_is_not_a_number_is_refused(field: str, value: object) -> None:
    """Found by a newcomer: ``decision_budget: true`` was stored as 1.0, and a
    quoted ``"30"`` read as 30."""
    with pytest.raises(ValidationError, match=field):
        ChannelConfig(**VALID, **{field: value})


@pytest.mark.parametrize("field", sorted(INVALID))
async def test_invalid_field_is_refused_by_name(field: str, aiohttp_client: Any,
                                                tmp_path: Path) -> None:
    client = await _client(aiohttp_client, tmp_path)
    body = {**VALID, field: INVALID[field]}
    resp = await client.post("/admin/channels", json=body, headers=AUTH)
    assert resp.status == 422, await resp.text()
    data = await resp.json()
    assert data["error"] == "invalid"
    assert any(f["field"] == field or f["field"].startswith(field + ".")
               for f in data["fields"]), data
    assert field in data["reason"], data
    # The same refusal on a change of an existing channel (PATCH merges, then validates).
    assert (await client.post("/admin/channels", json=VALID, headers=AUTH)).status == 201
    if field != "id":  # renaming is its own refusal
        resp = await client.patch("/admin/channels/news", json={field: INVALID[field]},
                                  headers=AUTH)
        assert resp.status == 422, await resp.text()
        assert field in (await resp.json())["reason"]
    # Nothing was applied: the channel is as created.
    got = await (await client.get("/admin/channels/news", headers=AUTH)).json()
    assert got["revision"] == 1 and got["config"] == ChannelConfig(**VALID).model_dump(mode="json")


@pytest.mark.parametrize("body, field, problem", [
    ({"origin_url": "http://x/m.m3u8"}, "id", "required field missing"),
    ({**VALID, "colour": "red"}, "colour", "unknown field"),
    ({**VALID, "cohorts": [{"attribute": "geo", "values": ["us"], "default": "eu"}]},
     "cohorts.0.default", "must be one of values"),
])
async def test_missing_unknown_and_cross_field_errors(body: dict[str, Any], field: str,
                                                      problem: str, aiohttp_client: Any,
                                                      tmp_path: Path) -> None:
    client = await _client(aiohttp_client, tmp_path)
    resp = await client.post("/admin/channels", json=body, headers=AUTH)
    assert resp.status == 422
    fields = (await resp.json())["fields"]
    assert any(f["field"] == field and problem in f["problem"] for f in fields), fields


@pytest.mark.parametrize("raw, field", [
    ('{"max_break": 1e999}', "max_break"), ('{"segment_duration": 1e999}', "segment_duration"),
    ('{"min_slate": NaN}', "min_slate"), ('{"decision_budget": Infinity}', "decision_budget"),
    ('{"cohorts": [{"attribute": "geo", "values": ["a.b"], "default": "a.b"}]}', "cohorts"),
    ('{"cohorts": [{"attribute": "geo", "values": ["a/b"], "default": "a/b"}]}', "cohorts"),
])
async def test_non_finite_numbers_and_unroutable_cohort_values_are_refused(
        raw: str, field: str, aiohttp_client: Any, tmp_path: Path) -> None:
    """Found by a newcomer: ``1e999`` passed validation, was saved, answered 500 and
    then stopped the service from starting; a cohort value with ``.`` (the cohort
    key's separator) made every session of the channel a 403."""
    client = await _client(aiohttp_client, tmp_path)
    assert (await client.post("/admin/channels", json=VALID, headers=AUTH)).status == 201
    resp = await client.patch("/admin/channels/news", data=raw,
                              headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 422, await resp.text()
    assert field in (await resp.json())["reason"]
    got = await (await client.get("/admin/channels/news", headers=AUTH)).json()
    assert got["revision"] == 1 and got["config"] == ChannelConfig(**VALID).model_dump(mode="json")


def _operations() -> list[tuple[str, str]]:
    ops = []
    for path, item in document()["paths"].items():
        for method in item:
            ops.append((method.upper(), path.replace("{channel}", "news")
                        .replace("{break}", "b1")))
    return ops


@pytest.mark.parametrize("method, path", _operations())
async def test_every_operation_needs_the_token(method: str, path: str, aiohttp_client: Any,
                                               tmp_path: Path) -> None:
    client = await _client(aiohttp_client, tmp_path, channels=[ChannelConfig(**VALID)])
    body = json.dumps(VALID) if method in ("POST", "PUT", "PATCH") else None
    resp = await client.request(method, path, data=body)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.request(method, path, data=body,
                                headers={"Authorization": "Bearer wrong-token-000000000000"})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"
    resp = await client.request(method, path, data=body, headers={"Authorization": TOKEN})
    assert resp.status == 401  # not a bearer credential


async def test_no_admin_token_configured_refuses_and_players_stay_public(
        aiohttp_client: Any, tmp_path: Path) -> None:
    app = create_app(StitcherConfig(channels=[ChannelConfig(**VALID)]),
                     store=MemoryStore(tmp_path / "state"))
    client = await aiohttp_client(app)
    resp = await client.get("/admin/channels", headers=AUTH)
    assert resp.status == 403 and "no admin_token" in (await resp.json())["reason"]
    assert (await client.get("/healthz")).status == 200
    assert (await client.post("/v1/session/news")).status == 200  # no token needed
    assert (await client.get("/admin/openapi.json")).status == 200
    page = await client.get("/console")
    assert page.status == 200 and "<title>" in await page.text()


async def test_new_cohort_rules_keep_every_session_playing(tmp_path: Path) -> None:
    """Found by a newcomer: after ad ops changed a channel's cohorts, every viewer's
    next reload was a 403 (their token names a cohort of the old rules). They play
    on in the new default cohort; a signed token naming no cohort shape is still
    refused."""
    async with start_stack(clock=ManualClock(start=1_800_000_000.0), data_dir=tmp_path / "s",
                           stitcher_config={"admin_token": TOKEN}) as stack:
        session = await stack.start_session()
        assert session.cohort == "default"
        assert (await stack.get(session.media_url("v0")))[0] == 200
        status, data = await _call(stack, "PATCH", "/admin/channels/live1", {"cohorts": [
            {"attribute": "geo", "values": ["us", "fr"], "default": "us"}]})
        assert status == 200, data
        for _ in range(2):
            status, _h, body = await stack.get(session.media_url("v0"))
            assert status == 200 and body.startswith(b"#EXTM3U"), body[:200]
        assert (await stack.get(session.manifest_url))[0] == 200
        assert await stack.metric("stitcher_sessions_recohorted_total") == 1  # one session
        fresh = await stack.start_session(geo="fr")
        assert fresh.cohort == "fr"


async def test_channel_crud_applies_at_once_and_is_audited(tmp_path: Path) -> None:
    async with start_stack(clock=ManualClock(start=1_800_000_000.0), data_dir=tmp_path / "s",
                           stitcher_config={"admin_token": TOKEN,
                                            "admin_tokens": {"bob": OTHER}}) as stack:
        origin_url = stack.runtime.cfg.origin_url  # a second channel on the same feed
        new = {"id": "second", "origin_url": origin_url}
        status, data = await _call(stack, "POST", "/admin/channels", new)
        assert status == 201 and data["revision"] == 1 and data["source"] == "api", data
        status, _ = await _call(stack, "POST", "/admin/channels", new)
        assert status == 409
        # Players can use it at once.
        session = await stack.http.post(f"{stack.base}/v1/session/second")
        assert session.status == 200
        manifest = (await session.json())["manifestUrl"]
        status, _h, body = await stack.get(manifest.replace("master.m3u8", "media/v0.m3u8"))
        assert status == 200 and body.startswith(b"#EXTM3U"), body[:200]
        # Listed beside the file's channel.
        status, data = await _call(stack, "GET", "/admin/channels")
        assert [(c["id"], c["source"]) for c in data["channels"]] == [
            ("live1", "file"), ("second", "api")]
        # PATCH with the right revision, then a stale one.
        status, data = await _call(stack, "PATCH", "/admin/channels/second",
                                   {"ad_dateranges": True}, headers={"If-Match": '"1"'},
                                   token=OTHER)
        assert status == 200 and data["revision"] == 2 and data["config"]["ad_dateranges"]
        status, data = await _call(stack, "PUT", "/admin/channels/second", new,
                                   headers={"If-Match": '"1"'})
        assert status == 412 and "revision 2" in data["reason"]
        assert stack.app[CHANNELS]["second"].cfg.ad_dateranges is True
        # A file channel changed through the API becomes the API's.
        status, data = await _call(stack, "PATCH", "/admin/channels/live1", {"max_break": 90})
        assert status == 200 and data["source"] == "api" and data["config"]["max_break"] == 90
        status, _ = await _call(stack, "DELETE", "/admin/channels/second")
        assert status == 204
        gone = await stack.http.post(f"{stack.base}/v1/session/second")
        assert gone.status == 404
        status, data = await _call(stack, "GET", "/admin/audit")
        entries = data["entries"]
        assert [e["action"] for e in entries] == [
            "channel.delete", "channel.update", "channel.update", "channel.create"]
        delete, patch_live, patch, create = entries
        assert create["actor"]["token"] == "admin" and create["before"] is None
        assert create["after"]["origin_url"] == origin_url
        assert patch["actor"]["token"] == "bob"
        assert patch["before"]["ad_dateranges"] is False and patch["after"]["ad_dateranges"]
        assert patch_live["before"]["max_break"] == 120 and patch_live["channel"] == "live1"
        assert delete["after"] is None and delete["before"]["id"] == "second"
        assert create["actor"]["client"] == "127.0.0.1" and create["time"].endswith("Z")
        status, data = await _call(stack, "GET", "/admin/audit?channel=live1&limit=5")
        assert [e["channel"] for e in data["entries"]] == ["live1"]


async def test_if_match_compares_entity_tags_strongly(aiohttp_client: Any,
                                                      tmp_path: Path) -> None:
    """RFC 9110 13.1.1: If-Match is a list of entity tags compared strongly, so a
    weak tag never matches (it was taken as the revision it names) and a list
    holds when one of its strong tags is current (it was a 400)."""
    client = await _client(aiohttp_client, tmp_path)
    resp = await client.post("/admin/channels", json=VALID, headers=AUTH)
    assert resp.status == 201 and resp.headers["ETag"] == '"1"'

    async def patch(if_match: str, max_break: int) -> tuple[int, dict[str, Any]]:
        resp = await client.patch("/admin/channels/news", json={"max_break": max_break},
                                  headers={**AUTH, "If-Match": if_match})
        return resp.status, await resp.json()

    status, data = await patch('W/"1"', 90)
    assert status == 412 and data["error"] == "revision_mismatch", data
    assert "weak" in data["reason"] and "revision 1" in data["reason"], data
    status, data = await patch('"7", W/"1"', 90)  # weak 1 still does not match
    assert status == 412 and "revision 1" in data["reason"], data
    status, data = await patch('"7", "1"', 90)
    assert status == 200 and data["revision"] == 2, data
    status, data = await patch(' "2" ', 91)  # one tag, spaces around it
    assert status == 200 and data["revision"] == 3, data
    status, data = await patch('"1", "2"', 92)  # neither is current
    assert status == 412 and "revision 3" in data["reason"], data
    for bad in ('"abc"', '"3" "4"', '"3",,', 'W/', '"3'):
        status, data = await patch(bad, 93)
        assert status == 400 and "If-Match" in data["reason"], (bad, data)
    resp = await client.get("/admin/channels/news", headers=AUTH)
    data = await resp.json()
    assert data["revision"] == 3 and data["config"]["max_break"] == 91


async def test_if_match_star_matches_any_current_channel(aiohttp_client: Any,
                                                         tmp_path: Path) -> None:
    """RFC 9110 13.1.1: ``If-Match: *`` is true when the channel has a current
    representation (found by a newcomer: a 400). Where it has none (never created,
    or deleted) the route's 404 stands (13.2.1), and nothing is created."""
    client = await _client(aiohttp_client, tmp_path)
    star = {**AUTH, "If-Match": "*"}
    resp = await client.post("/admin/channels", json=VALID, headers=AUTH)
    assert resp.status == 201
    resp = await client.patch("/admin/channels/news", json={"max_break": 90}, headers=star)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert data["revision"] == 2 and data["config"]["max_break"] == 90
    resp = await client.put("/admin/channels/news", json=VALID, headers=star)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert data["revision"] == 3 and data["config"]["max_break"] == 120
    resp = await client.put("/admin/channels/news", json=VALID,
                            headers={**AUTH, "If-Match": '"2"'})
    assert resp.status == 412  # a revision still has to be the current one
    resp = await client.delete("/admin/channels/news", headers=star)
    assert resp.status == 204
    for channel in ("news", "never"):
        for method in ("PUT", "PATCH", "DELETE"):
            resp = await client.request(method, f"/admin/channels/{channel}",
                                        json={**VALID, "id": channel}, headers=star)
            assert resp.status == 404, (method, channel, await resp.text())
            assert (await resp.json())["error"] == "not_found"
    resp = await client.get("/admin/channels", headers=AUTH)
    assert [c["id"] for c in (await resp.json())["channels"]] == []
    resp = await client.get("/admin/audit", headers=AUTH)
    assert [e["action"] for e in (await resp.json())["entries"]] == [
        "channel.delete", "channel.replace", "channel.update", "channel.create"]


async def test_changes_survive_a_restart_in_embedded_mode(tmp_path: Path) -> None:
    config = {"admin_token": TOKEN}
    async with start_stack(data_dir=tmp_path / "s", stitcher_config=config) as stack:
        assert (await _call(stack, "PATCH", "/admin/channels/live1", {"max_break": 77}))[0] == 200
        assert (await _call(stack, "POST", "/admin/channels", {
            "id": "extra", "origin_url": stack.runtime.cfg.origin_url}))[0] == 201
    async with start_stack(data_dir=tmp_path / "s", stitcher_config=config) as stack:
        assert stack.runtime.cfg.max_break == 77
        assert "extra" in stack.app[CHANNELS]
        _status, data = await _call(stack, "GET", "/admin/audit")
        assert len(data["entries"]) == 2


async def test_a_stored_config_that_no_longer_validates_is_said_not_only_logged(
        tmp_path: Path) -> None:
    """Found by a newcomer: a stored channel config this version refuses (another
    version wrote it, or a hand edit) dropped the channel at start-up with one
    ERROR line. Now the channel keeps the config file's definition where there
    is one, and the listing, the console's status and a gauge say what is
    ignored and what is served instead, until a valid config replaces it."""
    config = {"admin_token": TOKEN}
    async with start_stack(data_dir=tmp_path / "s", stitcher_config=config) as stack:
        assert (await _call(stack, "PATCH", "/admin/channels/live1", {"max_break": 77}))[0] == 200
        extra = {"id": "extra", "origin_url": stack.runtime.cfg.origin_url}
        assert (await _call(stack, "POST", "/admin/channels", extra))[0] == 201
    [path] = (tmp_path / "s").rglob("control.json")
    stored = json.loads(path.read_text())
    for rec in stored["channels"]:
        rec["config"] |= {"max_break": -5} if rec["id"] == "live1" else {"colour": "red"}
    path.write_text(json.dumps(stored))

    async with start_stack(data_dir=tmp_path / "s", stitcher_config=config) as stack:
        assert stack.runtime.cfg.max_break != 77, "the file's definition, not the stored one"
        assert "extra" not in stack.app[CHANNELS]
        status, listing = await _call(stack, "GET", "/admin/channels")
        assert status == 200
        ignored = {i["id"]: i for i in listing["ignored"]}
        assert set(ignored) == {"live1", "extra"}, listing
        assert "max_break" in ignored["live1"]["problems"]
        assert ignored["live1"]["serving"] == "the config file's"
        assert "colour: unknown field" in ignored["extra"]["problems"]
        assert ignored["extra"]["serving"].startswith("nothing")
        _status, data = await _call(stack, "GET", "/admin/status")
        assert [w.split(" (")[0] for w in data["warnings"]] == [
            "stored config of channel extra", "stored config of channel live1"], data
        assert await stack.metric("stitcher_stored_config_ignored", channel="extra") == 1

        # The channel is not served, so not there to change; a valid config
        # replaces the ignored one: served, and no longer listed.
        status, err = await _call(stack, "PATCH", "/admin/channels/extra", {"max_break": 60})
        assert status == 404 and "POST a valid one" in err["reason"], err
        assert (await _call(stack, "POST", "/admin/channels", extra))[0] == 201
        assert "extra" in stack.app[CHANNELS]
        _status, listing = await _call(stack, "GET", "/admin/channels")
        assert [i["id"] for i in listing["ignored"]] == ["live1"]
        assert await stack.metric("stitcher_stored_config_ignored", channel="extra") == 0


# ----------------------------------------------------------------- breaks by hand
async def _call(stack: Stack, method: str, path: str, body: Any = None, *,
                headers: dict[str, str] | None = None, token: str = TOKEN,
                instance: int = 0) -> tuple[int, Any]:
    base = stack.bases[instance]
    async with stack.http.request(method, base + path, json=body, headers={
            "Authorization": f"Bearer {token}", **(headers or {})}) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


def _ad_msns(text: str, break_id: str) -> list[int]:
    return [s.msn for s in parse_media(text).segments if f"/{break_id}/" in s.uri]


def _served(snapshots: list[Snapshot], rid: str) -> dict[int, str]:
    """MSN -> URI over every snapshot (the checker proves they never change)."""
    served: dict[int, str] = {}
    for snap in snapshots:
        for seg in parse_media(snap.playlists[rid]).segments:
            served.setdefault(seg.msn, seg.uri)
    return dict(sorted(served.items()))


async def _reload(stack: Stack, url: str, renditions: list[str], steps: int,
                  snapshots: list[Snapshot], clock: ManualClock) -> dict[str, str]:
    playlists: dict[str, str] = {}
    for _ in range(steps):
        clock.advance(2)
        await asyncio.sleep(0)
        playlists = {}
        for rid in renditions:
            status, _headers, body = await stack.get(url.replace("v0.m3u8", f"{rid}.m3u8"))
            assert status == 200, body
            playlists[rid] = body.decode()
        snapshots.append(Snapshot(index=len(snapshots), time=clock.now(), playlists=playlists))
    return playlists


async def test_insert_break_now_is_stitched_listed_cancelled_and_audited(
        media: object, assets_dir: Path, tmp_path: Path) -> None:
    clock = ManualClock(start=1_830_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           stitcher_config={"admin_token": TOKEN}) as stack:
        session = await stack.start_session()
        renditions = await stack.stitcher_renditions()
        url = session.media_url("v0")
        snapshots: list[Snapshot] = []
        before = await _reload(stack, url, renditions, 2, snapshots, clock)
        assert "ad/" not in before["v0"]  # the origin signals no break at all

        status, brk = await _call(stack, "POST", "/admin/channels/live1/breaks",
                                  {"duration": 14})
        assert status == 201, brk
        assert brk["starts_in"] == 0 and brk["duration"] == 14 and brk["source"] == "adops"
        edge = parse_media(before["v0"]).segments[-1]
        assert edge.pdt is not None
        # "Now" is the origin's live edge: where its next segment starts.
        assert brk["start"] == (edge.pdt + edge.step).isoformat()
        status, listed = await _call(stack, "GET", "/admin/channels/live1/breaks")
        assert [(b["id"], b["state"]) for b in listed["breaks"]] == [(brk["id"], "upcoming")]

        await _reload(stack, url, renditions, 9, snapshots, clock)
        first = edge.msn + 1
        for rid in renditions:  # 14 s of 2 s slots: ad A (10 s), then 4 s of slate
            served = _served(snapshots, rid)
            assert [m for m, u in served.items() if f"/{brk['id']}/" in u] == list(
                range(first, first + 5)), served
            assert [m for m, u in served.items() if "/assets/slate-" in u] == [
                first + 5, first + 6], served
        faults = [v for v in check(snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)

        status, listed = await _call(stack, "GET", "/admin/channels/live1/breaks")
        (view,) = listed["breaks"]
        assert view["state"] == "ended" and view["source"] == "adops"
        decision = view["cohorts"][session.cohort]
        assert decision["decided"] and decision["ads"], decision
        assert decision["ad_seconds"] == 10 and decision["fill"] == round(10 / 14, 4)

        # Cancel before it starts: it never plays.
        status, later = await _call(stack, "POST", "/admin/channels/live1/breaks",
                                    {"duration": 10, "after": 10})
        assert status == 201 and later["starts_in"] == 10
        status, overlapping = await _call(stack, "POST", "/admin/channels/live1/breaks",
                                          {"duration": 30})
        assert status == 409 and later["id"] in overlapping["reason"]
        status, cancelled = await _call(stack, "DELETE",
                                        f"/admin/channels/live1/breaks/{later['id']}")
        assert status == 200 and cancelled["cancelled"], cancelled
        status, _ = await _call(stack, "DELETE", f"/admin/channels/live1/breaks/{later['id']}")
        assert status == 409
        await _reload(stack, url, renditions, 10, snapshots, clock)
        assert [u for u in _served(snapshots, "v0").values() if later["id"] in u] == []

        # Cancel under way: what was published stays, content from the live edge on.
        status, third = await _call(stack, "POST", "/admin/channels/live1/breaks",
                                    {"duration": 20})
        assert status == 201
        running = await _reload(stack, url, renditions, 3, snapshots, clock)
        published = _ad_msns(running["v0"], third["id"])
        assert len(published) == 3, running["v0"]
        status, cut = await _call(stack, "DELETE", f"/admin/channels/live1/breaks/{third['id']}")
        assert status == 200 and cut["cancelled_at"] > third["start"]
        await _reload(stack, url, renditions, 5, snapshots, clock)
        served = _served(snapshots, "v0")
        assert [m for m, u in served.items() if f"/{third['id']}/" in u] == published
        after_cut = [u for m, u in served.items() if m > published[-1]]
        assert len(after_cut) == 5 and all(u.startswith("http://") for u in after_cut), served
        faults = [v for v in check(snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)

        status, data = await _call(stack, "GET", "/admin/audit?channel=live1")
        actions = [(e["action"], e["break"]) for e in data["entries"]]
        assert actions == [("break.cancel", third["id"]), ("break.insert", third["id"]),
                           ("break.cancel", later["id"]), ("break.insert", later["id"]),
                           ("break.insert", brk["id"])]
        assert data["entries"][0]["before"]["cancelled"] is False
        assert data["entries"][0]["after"]["cancelled"] is True

        # Bad requests name the field.
        for body, field in (({"duration": 0}, "duration"), ({}, "duration"),
                            ({"duration": 5, "start": "2020-01-01T00:00:00"}, "start"),
                            ({"duration": 5, "start": "2020-01-01T00:00:00Z"}, "start"),
                            # Found by a newcomer: a 500 (date out of range).
                            ({"duration": 30, "start": "9999-12-31T23:59:59Z"}, "start"),
                            # Found by a newcomer: accepted, then cut at max_break (120).
                            ({"duration": 121}, "duration"), ({"duration": True}, "duration"),
                            ({"duration": "30"}, "duration"),
                            ({"duration": 5, "when": 3}, "when")):
            status, err = await _call(stack, "POST", "/admin/channels/live1/breaks", body)
            assert status == 422 and any(f["field"] == field for f in err["fields"]), err


async def test_a_break_placed_ahead_that_the_feed_pre_empts_does_not_cut_the_feeds_break(
        media: object, assets_dir: Path, tmp_path: Path) -> None:
    """Found by a newcomer: an ad-ops break placed 6 s ahead, then the feed's own
    14 s break opening 2 s before it. The ad-ops break took over one slot into the
    feed's pod (its ad cut after 2 s) and both were listed as played. The open one
    wins: the feed's break plays whole, the ad-ops one is listed as overridden,
    counted, and its decided ads are told notUsed."""
    clock = ManualClock(start=1_830_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           stitcher_config={"admin_token": TOKEN}) as stack:
        session = await stack.start_session()
        renditions = await stack.stitcher_renditions()
        url = session.media_url("v0")
        snapshots: list[Snapshot] = []
        before = await _reload(stack, url, renditions, 2, snapshots, clock)
        edge = parse_media(before["v0"]).segments[-1].msn
        status, placed = await _call(stack, "POST", "/admin/channels/live1/breaks",
                                     {"duration": 10, "after": 6})
        assert status == 201, placed
        await _reload(stack, url, renditions, 1, snapshots, clock)  # decided ahead
        feed = stack.origin.insert_break(edge + 3, 14)
        await _reload(stack, url, renditions, 14, snapshots, clock)

        for rid in renditions:
            served = _served(snapshots, rid)
            assert [u for u in served.values() if placed["id"] in u] == [], served
            pod = [m for m, u in served.items() if u.startswith("ad/") or "/assets/slate-" in u]
            assert pod == list(range(feed.start_msn, feed.start_msn + 7)), served
        faults = [v for v in check(snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)

        status, listed = await _call(stack, "GET", "/admin/channels/live1/breaks")
        views = {b["id"]: b for b in listed["breaks"]}
        mine = views[placed["id"]]
        (theirs,) = [b for b in views.values() if b["source"] != "adops"]
        assert (mine["state"], mine["overridden_by"]) == ("overridden", theirs["id"])
        assert (theirs["state"], theirs["overridden_by"]) == ("ended", None)
        assert await stack.metric("stitcher_breaks_overridden_total") == 1
        decided = mine["cohorts"][session.cohort]
        assert decided["decided"] and decided["ads"], decided
        assert await stack.metric("stitcher_ads_not_used_total") == len(decided["ads"])


async def test_the_feeds_out_inside_an_inserted_break_is_counted_once(
        media: object, assets_dir: Path, tmp_path: Path) -> None:
    """The other way round: the inserted break is open when the feed's OUT comes.
    It plays whole; the feed's break is ignored, counted once however many
    renditions and renders carry its marker (found by a newcomer: 3 for 1)."""
    clock = ManualClock(start=1_830_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           stitcher_config={"admin_token": TOKEN}) as stack:
        session = await stack.start_session()
        renditions = await stack.stitcher_renditions()
        url = session.media_url("v0")
        snapshots: list[Snapshot] = []
        before = await _reload(stack, url, renditions, 2, snapshots, clock)
        edge = parse_media(before["v0"]).segments[-1].msn
        status, placed = await _call(stack, "POST", "/admin/channels/live1/breaks",
                                     {"duration": 20})
        assert status == 201, placed
        feed = stack.origin.insert_break(edge + 4, 14)
        await _reload(stack, url, renditions, 6, snapshots, clock)
        # While its OUT is in the origin's window, an instance that rendered none of it
        # lists it too: found from the shared breaks, not only from what it met.
        met = dict(stack.runtime._ignored)
        assert len(met) == 1, met
        stack.runtime._ignored.clear()
        _status, listed = await _call(stack, "GET", "/admin/channels/live1/breaks")
        stack.runtime._ignored.update(met)
        assert [(b["state"], b["id"]) for b in listed["breaks"] if b["state"] == "ignored"] == [
            ("ignored", next(iter(met)))], listed
        await _reload(stack, url, renditions, 8, snapshots, clock)
        for rid in renditions:
            served = _served(snapshots, rid)
            mine = [m for m, u in served.items() if f"/{placed['id']}/" in u
                    or "/assets/slate-" in u]
            assert mine == list(range(edge + 1, edge + 11)), served
        assert await stack.metric("stitcher_breaks_overridden_total") == 1
        faults = [v for v in check(snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)

        # Listed, once, with the break it fell into (found by a newcomer: the feed's
        # break was only a log line, so ad ops could not see it had been asked for).
        status, listed = await _call(stack, "GET", "/admin/channels/live1/breaks")
        ignored = [b for b in listed["breaks"] if b["state"] == "ignored"]
        assert [(b["overridden_by"], b["duration"], b["cohorts"]) for b in ignored] == [
            (placed["id"], 14, {})], listed
        starts = {s.msn: s.pdt for snap in snapshots
                  for s in parse_media(snap.playlists[renditions[0]]).segments}
        assert ignored[0]["start"] == starts[feed.start_msn].isoformat()


async def test_a_channel_never_plays_another_channels_slate(
        media: object, assets_dir: Path, tmp_path: Path) -> None:
    """Found by a newcomer: the library kept one slate for all channels, so a channel
    whose own slate could not be fetched played the first channel's."""
    clock = ManualClock(start=1_830_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           stitcher_config={"admin_token": TOKEN}) as stack:
        cfg = stack.runtime.cfg
        status, made = await _call(stack, "POST", "/admin/channels", {
            "id": "second", "origin_url": cfg.origin_url, "ad_server_url": "http://127.0.0.1:9/v",
            "private_ad_hosts": ["127.0.0.1:9"], "ad_fallback": "slate",
            "slate": stack.origin_base + "/no-such-slate.mp4"})
        assert status == 201, made
        session = await stack.http.post(f"{stack.base}/v1/session/second")
        manifest = (await session.json())["manifestUrl"]
        url = stack.base + manifest.replace("master.m3u8", "media/v0.m3u8")
        renditions = await stack.stitcher_renditions()
        snapshots: list[Snapshot] = []
        await _reload(stack, url, renditions, 2, snapshots, clock)
        status, brk = await _call(stack, "POST", "/admin/channels/second/breaks",
                                  {"duration": 10})
        assert status == 201, brk
        await _reload(stack, url, renditions, 8, snapshots, clock)
        served = _served(snapshots, "v0")
        assert not [u for u in served.values() if "/assets/slate" in u], served
        assert all(u.startswith("http://") for u in served.values()), served  # content


async def test_console_status_reports_health_breaks_and_stale_serving(tmp_path: Path) -> None:
    clock = ManualClock(start=1_840_000_000.0)
    async with start_stack(clock=clock, data_dir=tmp_path / "s",
                           stitcher_config={"admin_token": TOKEN}) as stack:
        session = await stack.start_session()
        assert (await stack.get(session.media_url("v0")))[0] == 200
        status, brk = await _call(stack, "POST", "/admin/channels/live1/breaks",
                                  {"duration": 10, "after": 6})
        assert status == 201
        status, data = await _call(stack, "GET", "/admin/status")
        (channel,) = data["channels"]
        assert channel["origin"]["status"] == "ok" and channel["warnings"] == []
        assert channel["next_break"]["id"] == brk["id"]
        assert channel["next_break"]["starts_in"] == 6
        assert channel["current_break"] is None
        assert channel["live_edge"] and channel["cache"]["miss"] >= 1
        assert data["beacon_queue_depth"] == 0
        # The origin stalls: the console says so in plain words.
        stack.origin.add_fault(kinds={"media"}, status=500)
        clock.advance(12)
        assert (await stack.get(session.media_url("v0")))[0] == 200
        status, data = await _call(stack, "GET", "/admin/status")
        (channel,) = data["channels"]
        assert channel["origin"]["status"] == "stale", channel["origin"]
        assert channel["warnings"] == [channel["origin"]["message"]]
        assert channel["origin"]["message"].startswith("origin delayed 12 s, serving last good "
                                                       "playlist"), channel["origin"]


async def test_changes_reach_another_instance_through_redis(redis_url: str,
                                                            tmp_path: Path) -> None:
    from redis.asyncio import Redis

    clock = ManualClock(start=1_850_000_000.0)
    channel = "adm-redis"
    try:
        async with start_stack(clock=clock, channel=channel, data_dir=tmp_path / "s",
                               instances=2, stitcher_config={
                                   "admin_token": TOKEN, "redis_url": redis_url}) as stack:
            s1 = await stack.start_session(instance=1)
            url1 = s1.media_url("v0")
            assert (await stack.get(url1))[0] == 200
            # A channel created on instance 0 plays on instance 1.
            new = {"id": "adm-redis-b", "origin_url": stack.runtime.cfg.origin_url}
            assert (await _call(stack, "POST", "/admin/channels", new))[0] == 201
            runtimes1 = stack.stitcher_runners[1].app[CHANNELS]
            for _ in range(100):
                if "adm-redis-b" in runtimes1:
                    break
                await asyncio.sleep(0.02)
            resp = await stack.http.post(f"{stack.bases[1]}/v1/session/adm-redis-b")
            assert resp.status == 200
            status, listed = await _call(stack, "GET", "/admin/channels", instance=1)
            assert [c["id"] for c in listed["channels"]] == [channel, "adm-redis-b"]
            # A changed config reaches it too.
            assert (await _call(stack, "PATCH", "/admin/channels/adm-redis-b",
                                {"max_break": 33}))[0] == 200
            for _ in range(100):
                if runtimes1["adm-redis-b"].cfg.max_break == 33:
                    break
                await asyncio.sleep(0.02)
            assert runtimes1["adm-redis-b"].cfg.max_break == 33
            # A break inserted on instance 0 is stitched by instance 1.
            status, brk = await _call(stack, "POST", f"/admin/channels/{channel}/breaks",
                                      {"duration": 6, "after": 2})
            assert status == 201
            for _ in range(100):
                if stack.runtime_of(1).adops:
                    break
                await asyncio.sleep(0.02)
            status, listed = await _call(stack, "GET", f"/admin/channels/{channel}/breaks",
                                         instance=1)
            assert [b["id"] for b in listed["breaks"]] == [brk["id"]]
            seen: set[str] = set()
            for _ in range(6):
                clock.advance(2)
                status, _h, _body = await stack.get(url1)
                assert status == 200
                seen |= {b.id for b in stack.runtime_of(1).breaks}
            assert brk["id"] in seen
            status, data = await _call(stack, "GET", "/admin/audit", instance=1)
            assert [e["action"] for e in data["entries"]][:3] == [
                "break.insert", "channel.update", "channel.create"]
    finally:
        client = Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter("ss:{control}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def test_break_start_and_duration_keep_the_fraction() -> None:
    assert Fraction(str(14.0)) == 14 and Fraction(str(2.5)) == Fraction(5, 2)


@pytest.mark.redis
async def test_the_change_feed_waits_quietly_past_the_socket_timeout(redis_url: str) -> None:
    """Found in the process tests' logs: the feed's 10 s blocking read outlived
    redis-py's 5 s socket timeout, so every 5 s an idle feed raised, warned and
    resynced every channel. Idle for 6 s, it must still be waiting."""
    from stitcher.control import RedisControl
    from stitcher.redis_store import RedisStore

    store = RedisStore.from_url(redis_url)
    feed = RedisControl(store.client, prefix=f"feed-{secrets.token_hex(4)}").changes()
    try:
        first = await anext(feed)
        assert first.kind == "resync"
        pending = asyncio.ensure_future(anext(feed))
        done, _ = await asyncio.wait({pending}, timeout=6.0)
        assert not done, pending.exception() if pending.done() else pending
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    finally:
        await feed.aclose()
        await store.close()


async def test_a_token_that_is_not_utf8_is_refused_not_a_500(aiohttp_client: Any,
                                                              tmp_path: Path) -> None:
    """Found by a newcomer: ``Authorization: Bearer \\xff\\xfe`` answered 500 (the
    compare encoded the header's surrogate-escaped bytes)."""
    client = await _client(aiohttp_client, tmp_path, channels=[ChannelConfig(**VALID)])
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"GET /admin/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer \xff\xfe\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 403 Forbidden", answer[:300]
