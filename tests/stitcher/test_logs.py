"""``log_format: json``: one JSON object per line, with the request's channel,
cohort and rendition, and the fields a call site gives (break id)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import stitcher.admin
import stitcher.app
from fixtures.clock import ManualClock
from stitcher.channel import ChannelRuntime
from stitcher.logs import CONTEXT, FIELDS, ContextFilter, JsonFormatter
from tests.harness import start_stack

TOKEN = "log-context-admin-token-0123456789"


def test_json_line_carries_context_and_extra_fields() -> None:
    token = CONTEXT.set({"channel": "sports1", "cohort": "fr.tv", "rendition": "v0"})
    try:
        record = logging.makeLogRecord({"name": "stitcher.channel", "levelno": logging.WARNING,
                                        "levelname": "WARNING", "msg": "decision for %s late",
                                        "args": ("b1",), "break_id": "b1"})
        line = json.loads(JsonFormatter().format(record))
    finally:
        CONTEXT.reset(token)
    assert line["message"] == "decision for b1 late" and line["level"] == "warning"
    assert (line["channel"], line["cohort"], line["rendition"], line["break_id"]) == (
        "sports1", "fr.tv", "v0", "b1")
    assert line["time"].endswith("Z") and line["logger"] == "stitcher.channel"


async def test_requests_name_their_channel_cohort_and_rendition(tmp_path: Path,
                                                                caplog: Any) -> None:
    clock = ManualClock(start=1_860_000_000.0)
    async with start_stack(clock=clock, data_dir=tmp_path / "s",
                           channel_config={"cohort_urls": True}) as stack:
        url = f"/v1/cohort/{stack.channel}/default/media/v0.m3u8"
        assert (await stack.get(url))[0] == 200
        caplog.set_level(logging.WARNING)
        caplog.handler.addFilter(ContextFilter())  # as stitcher.logs.configure installs it
        stack.origin.add_fault(kinds={"media"}, status=500)
        clock.advance(4)
        assert (await stack.get(url))[0] == 200  # the last good playlist, and a warning
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records
             if r.name == "stitcher.origin"]
    assert lines, caplog.records
    assert all((line["channel"], line["cohort"], line["rendition"]) ==
               (stack.channel, "default", "v0") for line in lines), lines


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The request fields of a record as the JSON line carries them."""
    line = json.loads(JsonFormatter().format(record))
    return {k: line[k] for k in FIELDS if k in line}


async def test_every_line_logged_while_serving_names_the_request(
        tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines logged inside a request's handling (here by probes in the render
    lookup, the admin channel lookup and the error answer) carry the fields of that
    request's route, and only those: routed and unrouted paths, error answers,
    the admin API; none after the request, none on the next request of the same
    connection; a bug's traceback is logged without them."""
    probe = logging.getLogger("tests.probe")
    ready, runtime_of, to_response = (ChannelRuntime.ready, stitcher.admin._runtime,
                                      stitcher.app.to_response)
    failing = False

    def probed_ready(self: ChannelRuntime, *args: Any, **kw: Any) -> Any:
        probe.warning("ready")
        if failing:
            raise RuntimeError("a bug")
        return ready(self, *args, **kw)

    def probed_runtime(request: Any) -> Any:
        probe.warning("admin runtime")
        return runtime_of(request)

    def probed_error(exc: Exception) -> Any:
        probe.warning("error %s", type(exc).__name__)
        return to_response(exc)

    monkeypatch.setattr(ChannelRuntime, "ready", probed_ready)
    monkeypatch.setattr(stitcher.admin, "_runtime", probed_runtime)
    monkeypatch.setattr(stitcher.app, "to_response", probed_error)
    caplog.set_level(logging.WARNING)
    caplog.handler.addFilter(ContextFilter())  # as stitcher.logs.configure installs it
    clock = ManualClock(start=1_860_000_000.0)
    async with start_stack(clock=clock, data_dir=tmp_path / "s",
                           channel_config={"cohort_urls": True},
                           stitcher_config={"admin_token": TOKEN}) as stack:
        ch = stack.channel
        session = await stack.start_session()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        long_channel = "c" * 150
        cases: list[tuple[str, str, dict[str, str], int, list[str], dict[str, str]]] = [
            ("GET", f"/v1/session/{session.token}/{ch}/media/v0.m3u8", {}, 200,
             ["ready"], {"channel": ch, "rendition": "v0"}),
            ("GET", f"/v1/cohort/{ch}/default/media/v0.m3u8", {}, 200,
             ["ready"], {"channel": ch, "cohort": "default", "rendition": "v0"}),
            ("GET", f"/v1/session/{session.token}x/{ch}/media/v0.m3u8", {}, 403,
             ["error SessionInvalid"], {"channel": ch, "rendition": "v0"}),
            ("GET", f"/v1/session/{session.token}/{ch}/media/ad/v0/nobreak/0/0.ts", {}, 404,
             ["error NotFound"], {"channel": ch, "rendition": "v0", "break_id": "nobreak"}),
            ("GET", f"/v1/session/{session.token}/{ch}/media/ad/v0/b1/x/0.ts", {}, 400,
             ["error BadRequest"], {"channel": ch, "rendition": "v0", "break_id": "b1"}),
            ("GET", f"/v1/cohort/{long_channel}/default/media/v0.m3u8", {}, 404,
             ["error NotFound"],
             {"channel": long_channel[:100], "cohort": "default", "rendition": "v0"}),
            ("GET", "/nowhere/at/all", {}, 404, ["error StitcherError"], {}),
            ("POST", "/healthz", {}, 405, ["error StitcherError"], {}),
            ("DELETE", f"/admin/channels/{ch}/breaks/nope", auth, 404,
             ["admin runtime", "error NotFound"], {"channel": ch, "break_id": "nope"}),
            ("GET", f"/admin/channels/{ch}", {}, 401, ["error Unauthorized"],
             {"channel": ch}),
            ("GET", f"/admin/channels/{ch}", auth, 200, ["admin runtime"], {"channel": ch}),
        ]
        for method, path, headers, status, messages, fields in cases:
            caplog.clear()
            async with stack.http.request(method, stack.base + path, headers=headers,
                                          allow_redirects=False) as resp:
                assert resp.status == status, (path, await resp.text())
            lines = [r for r in caplog.records if r.name == "tests.probe"]
            # (a cold render asks the cache twice: the fast path, then the handler)
            assert {r.getMessage() for r in lines} == set(messages), path
            assert all(_context(r) == fields for r in lines), (
                path, [_context(r) for r in lines])
        # A bug: its traceback without the route's fields (the probe's line has them).
        failing = True
        caplog.clear()
        status, _, _ = await stack.get(f"/v1/session/{session.token}/{ch}/media/v0.m3u8")
        assert status == 500
        [bug] = [r for r in caplog.records if r.name == "stitcher.app"]
        assert bug.exc_info is not None and _context(bug) == {}
        lines = [r for r in caplog.records if r.name == "tests.probe"]
        assert lines and all(_context(r) == {"channel": ch, "rendition": "v0"}
                             for r in lines)
    probe.warning("after")
    assert _context(caplog.records[-1]) == {}
