"""``log_format: json``: one JSON object per line, with the request's channel,
cohort and rendition, and the fields a call site gives (break id)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fixtures.clock import ManualClock
from stitcher.logs import CONTEXT, ContextFilter, JsonFormatter, context_middleware
from tests.harness import start_stack


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
        assert context_middleware in stack.app.middlewares
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
