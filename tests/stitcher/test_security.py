"""Session tokens and cohorts under attack, over real HTTP.

A stitcher with two channels (both on the fixture origin) and two session
keys (``k2`` signs new sessions, ``k1`` is the retiring one). Forged, tampered,
expired, wrong-key, cross-channel and malformed tokens get a clear 4xx JSON
reason on every session route and never a playlist (so never another
cohort's content); tokens of the retiring key keep working until they expire;
and a client sending ten thousand distinct attribute values creates no
cohort the config does not name: the cohorts, renders and ad decisions stay
within the product of the configured values.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import string
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from fixtures.clock import ManualClock
from stitcher.app import CHANNELS, create_app
from stitcher.channel import ChannelRuntime
from stitcher.config import StitcherConfig
from stitcher.sessions import Session, SessionSigner, _canonical
from stitcher.store import MemoryStore
from tests.harness import Stack, start_stack

KEYS = {"k2": "the-new-session-key", "k1": "the-retiring-session-key"}
GRACE = 3600
GEOS = ("us", "fr", "de")
DEVICES = ("mobile", "tv")
COHORTS = {f"{g}.{d}" for g in GEOS for d in DEVICES}
RULES = [{"attribute": "geo", "values": list(GEOS), "default": "us"},
         {"attribute": "device", "values": list(DEVICES), "default": "mobile"}]


@asynccontextmanager
async def _service(stack: Stack, tmp_path: Path, keys: dict[str, str]
                   ) -> AsyncIterator[tuple[str, web.Application]]:
    """A stitcher serving ``live1`` and ``live2`` (the same origin) with ``keys``."""
    live1 = stack.runtime.cfg
    live2 = live1.model_copy(update={"id": "live2"})
    folder = tmp_path / "service"
    config = StitcherConfig(host="127.0.0.1", port=0, data_dir=folder, session_keys=keys,
                            session_grace=GRACE, channels=[live1, live2])
    app = create_app(config, store=MemoryStore(folder), clock=stack.clock.now)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", app
    finally:
        await runner.cleanup()


def _stack(tmp_path: Path, *, origin: dict[str, Any] | None = None,
           ad_query: str = "") -> AbstractAsyncContextManager[Stack]:
    return start_stack(clock=ManualClock(start=1_840_000_000.0), data_dir=tmp_path / "stack",
                       channel_config={"cohorts": RULES}, origin=origin, ad_query=ad_query)


async def _start(stack: Stack, base: str, channel: str = "live1", **params: str) -> str:
    async with stack.http.post(f"{base}/v1/session/{channel}",
                               json={"adsParams": params}) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["manifestUrl"]).split("/")[3]


def _fields(token: str) -> list[str]:
    payload = base64.urlsafe_b64decode(token.split(".")[0] + "==")
    out, i = [], 0
    while i < len(payload):
        n = int.from_bytes(payload[i:i + 2], "big")
        out.append(payload[i + 2:i + 2 + n].decode())
        i += 2 + n
    return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_payload(token: str, **change: object) -> str:
    """``token``'s signature over a payload with some fields changed (a tamper)."""
    _v, kid, sid, ch, cohort, expires = _fields(token)
    fields = {"key_id": kid, "session_id": sid, "channel": ch, "cohort": cohort,
              "expires": int(expires), **change}
    return f"{_b64(_canonical(Session(**fields)))}.{token.split('.')[1]}"  # type: ignore[arg-type]


async def _refused(stack: Stack, base: str, token: str, channel: str = "live1"
                   ) -> list[tuple[int, str]]:
    """Every session route with ``token``: each must be a 4xx JSON refusal, never a
    playlist; returns (status, reason) per route."""
    found = []
    for rest in ("master.m3u8", "media/v0.m3u8", "media/ad/v0/b1/0/0.ts",
                 "media/ad/v0/b1/0/0.vtt", "tracking"):
        status, headers, body = await stack.get(f"{base}/v1/session/{token}/{channel}/{rest}")
        assert 400 <= status < 500, (rest, status, body[:200])
        assert not body.startswith(b"#EXTM3U") and b"WEBVTT" not in body
        reply = json.loads(body)
        assert reply["error"] == "session_invalid" and reply["reason"], reply
        assert headers["Cache-Control"] == "no-store"
        found.append((status, reply["reason"]))
    return found


def _other_trailing(char: str) -> str:
    """A last base64 character that decodes to the same bytes (only the unused
    low bits differ): 16 bytes of signature leave 4 such bits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = alphabet.index(char)
    return alphabet[(i & ~0b1111) | ((i + 1) & 0b1111)]


async def test_bad_tokens_are_refused_with_a_reason(tmp_path: Path) -> None:
    async with _stack(tmp_path) as stack, _service(stack, tmp_path, KEYS) as (base, _app):
        token = await _start(stack, base, geo="fr", device="tv")
        assert _fields(token)[4] == "fr.tv"
        ok, _, fr_tv = await stack.get(f"{base}/v1/session/{token}/live1/media/v0.m3u8")
        assert ok == 200 and fr_tv.startswith(b"#EXTM3U")
        expires = int(time.time()) + 3600
        payload, mac = token.split(".")
        flipped = ("B" if mac[0] != "B" else "C") + mac[1:]  # first char: every bit counts
        cases = {
            "forged": (SessionSigner({"k2": "a-guessed-key"}).encode(
                Session("k2", "f00d", "live1", "fr.tv", expires)), 403, "signature"),
            "tampered cohort": (_with_payload(token, cohort="us.mobile"), 403, "signature"),
            "tampered expiry": (_with_payload(token, expires=expires + 10**8), 403,
                                "signature"),
            "tampered channel": (_with_payload(token, channel="live2"), 403, "signature"),
            "tampered signature": (f"{payload}.{flipped}", 403, "signature"),
            # 16 of 22 characters: 12 whole bytes, a canonical spelling of a shorter
            # MAC (any other cut leaves bits that are random, so "malformed" or not).
            "truncated signature": (f"{payload}.{mac[:16]}", 403, "signature"),
            "expired": (SessionSigner(KEYS).encode(
                Session("k2", "0ld", "live1", "fr.tv", int(time.time()) - GRACE - 60)),
                410, "expired"),
            "unknown key id": (SessionSigner({"k9": KEYS["k2"]}).encode(
                Session("k9", "f00d", "live1", "fr.tv", expires)), 403, "unknown key"),
            "cross-channel": (await _start(stack, base, "live2", geo="fr", device="tv"), 403,
                              "another channel"),
            "malformed": ("not-a-token", 403, "malformed"),
            # Other spellings of the same bytes (found by a newcomer): one session,
            # one URL, or caches split and a URL can be varied at will.
            "padded signature": (f"{token}=", 403, "malformed"),
            "padded payload": (f"{payload}=.{mac}", 403, "malformed"),
            "trailing bits": (f"{payload}.{mac[:-1]}{_other_trailing(mac[-1])}", 403,
                              "malformed"),
            "empty payload": (f".{mac}", 403, "malformed"),
        }
        for name, (bad, status, reason) in cases.items():
            for got, why in await _refused(stack, base, bad):
                assert got == status, (name, got, why)
                assert reason in why, (name, why)
        # The genuine token still works, and still gets its own cohort's bytes.
        again = await stack.get(f"{base}/v1/session/{token}/live1/media/v0.m3u8")
        assert again[0] == 200 and again[2] == fr_tv


async def test_key_rotation_honours_old_tokens_until_they_expire(tmp_path: Path) -> None:
    old = SessionSigner({"k1": KEYS["k1"]})
    now = int(time.time())
    _s, before_rotation = old.issue("live1", "de.tv", now + 3600)
    _s, in_grace = old.issue("live1", "de.tv", now - 60)  # expired, within the grace
    _s, past_grace = old.issue("live1", "de.tv", now - GRACE - 60)
    async with _stack(tmp_path) as stack, _service(stack, tmp_path, KEYS) as (base, _app):
        fresh = await _start(stack, base, geo="de", device="tv")
        assert _fields(fresh)[1] == "k2", "new sessions are signed with the first key"
        assert SessionSigner(KEYS).decode(fresh, "live1", time.time()).cohort == "de.tv"
        status, _, body = await stack.get(f"{base}/v1/session/{fresh}/live1/media/v0.m3u8")
        assert status == 200
        for token in (before_rotation, in_grace):
            got = await stack.get(f"{base}/v1/session/{token}/live1/media/v0.m3u8")
            assert got[0] == 200 and got[2] == body  # the same cohort, the same bytes
        for status, reason in await _refused(stack, base, past_grace):
            assert status == 410 and "expired" in reason
    # The old key retired (its tokens expired): its tokens are refused, new ones work.
    async with _stack(tmp_path / "2") as stack, _service(
            stack, tmp_path / "2", {"k2": KEYS["k2"]}) as (base, _app):
        for status, reason in await _refused(stack, base, before_rotation):
            assert status == 403 and "unknown key" in reason
        status, _, _ = await stack.get(f"{base}/v1/session/{fresh}/live1/media/v0.m3u8")
        assert status == 200


def _junk(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + ".:/{}%*",
                               k=rng.randint(1, 24)))


async def test_ten_thousand_attribute_values_create_no_cohort(tmp_path: Path) -> None:
    rng = random.Random(4)
    origin = {"break_interval": 20, "break_duration": 10, "first_break_at": 6}
    async with _stack(tmp_path, origin=origin,
                      ad_query="geo={cohort.geo}&device={cohort.device}") as stack, _service(
            stack, tmp_path, KEYS) as (base, app):
        params = []
        for i in range(10_000):
            p = {"geo": _junk(rng), "device": _junk(rng), _junk(rng).lower(): _junk(rng)}
            if i % 10 == 0:  # some real values among the junk
                p["geo"], p["device"] = rng.choice(GEOS), rng.choice(DEVICES)
            params.append(p)
        assert len({p["geo"] for p in params}) > 8_000

        async def start(p: dict[str, str]) -> tuple[str, str]:
            async with stack.http.post(f"{base}/v1/session/live1",
                                       json={"adsParams": p}) as resp:
                assert resp.status == 200
                data = await resp.json()
                return data["cohort"], data["manifestUrl"].split("/")[3]

        started: list[tuple[str, str]] = []
        for i in range(0, len(params), 250):
            started += await asyncio.gather(*(start(p) for p in params[i:i + 250]))
        # Query-string attributes (implicit start) fall to the defaults too.
        for _ in range(200):
            status, headers, _ = await stack.get(
                f"{base}/v1/master/live1.m3u8?geo={_junk(rng)}&device=tv")
            assert status == 302
            token = headers["Location"].split("/")[3]
            started.append((_fields(token)[4], token))
        cohorts = {c for c, _t in started}
        assert cohorts <= COHORTS, cohorts - COHORTS
        assert "us.mobile" in cohorts  # junk falls to the defaults
        assert all(_fields(t)[4] == c for c, t in started)

        # Reload a sample of the sessions through a break: renders and decisions are
        # per cohort, so bounded by the config however many values clients sent.
        sample = rng.sample(started, 600)
        clock = stack.clock
        assert isinstance(clock, ManualClock)
        for step in range(12):
            replies = await asyncio.gather(*(
                stack.get(f"{base}/v1/session/{t}/live1/media/v0.m3u8")
                for _c, t in sample[step * 50:(step + 1) * 50]))
            assert all(status == 200 for status, _h, _b in replies)
            clock.advance(2)
            await asyncio.sleep(0)
        runtime: ChannelRuntime = app[CHANNELS]["live1"]
        rendered = {cohort for _rid, cohort, _mode, _version in runtime._renders}
        decided = {cohort for _break, cohort in runtime._decisions}
        assert rendered and rendered <= COHORTS, rendered
        assert decided and decided <= COHORTS, decided
        assert set(runtime.active_cohorts) <= COHORTS
        breaks = {b for b, _c in runtime._decisions}
        assert len(runtime._decisions) <= len(breaks) * len(COHORTS)
        asked = [parse_qs(r.query_string) for r in stack.vast_requests()]
        assert asked and {f"{q['geo'][0]}.{q['device'][0]}" for q in asked} <= COHORTS
        assert len(asked) <= len(breaks) * len(COHORTS)
        async with stack.http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        labelled = {s.labels["cohort"] for f in text_string_to_metric_families(text)
                    for s in f.samples if "cohort" in s.labels}
        assert labelled and labelled <= COHORTS, labelled - COHORTS
