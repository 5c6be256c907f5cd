"""``stitcher serve`` drains on SIGTERM (``stitcher.drain``), observed from outside
over raw sockets (found by a newcomer: a break POSTed with its body arriving
slowly, SIGTERM one second in: no answer, no break, 31 s to exit, status 0).

* A request whose body is still arriving at the signal is read to its end and
  answered, a segment still on its way to a slow reader arrives whole, an idle
  keep-alive connection is closed at once, new connections are refused, and the
  process exits as soon as the last is done, status 0.
* A request still in flight at ``shutdown_timeout`` is cut off at the timeout:
  a WARNING says how many, and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path

import yaml

from fixtures.clock import SystemClock
from fixtures.origin import OriginConfig, run_origin, synthetic_renditions
from tests.harness import ChildProcess, default_start_epoch, spawn, stop_children
from tests.loopback import refused

TOKEN = "drain-test-token-0123456789"
BODY = json.dumps({"duration": 30, "after": 60}).encode()
SLOW = 3.0  # seconds the body takes to arrive
SIGNAL_AT = 1.0  # seconds into the body


@asynccontextmanager
async def _origin() -> AsyncIterator[str]:
    clock = SystemClock()
    config = OriginConfig(renditions=synthetic_renditions(), channel="live1",
                          break_interval=None, window_segments=6,
                          start_epoch=default_start_epoch(clock, Fraction(2), 6))
    runner, port = await run_origin(config, clock, host="127.0.0.1", port=0)
    try:
        yield f"http://127.0.0.1:{port}/live/live1/master.m3u8"
    finally:
        await runner.cleanup()


async def _serve(tmp: Path, origin_url: str, shutdown_timeout: float) -> ChildProcess:
    tmp.mkdir()
    _publish_segment(tmp / "var")
    config = tmp / "channels.yaml"
    config.write_text(yaml.safe_dump({
        "admin_token": TOKEN, "data_dir": str(tmp / "var"), "shutdown_timeout": shutdown_timeout,
        "session_keys": {"k1": "drain-test-session-key"},
        "channels": [{"id": "live1", "origin_url": origin_url}]}))
    return await spawn(0, ["-m", "stitcher.cli", "serve", "--config", str(config)], tmp)


async def _up(child: ChildProcess) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert child.proc.returncode is None, child.log_text()
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", child.port)
        except OSError:
            assert time.monotonic() < deadline, child.log_text()
            await asyncio.sleep(0.1)  # a process starting: nothing to wait on
            continue
        writer.close()
        return


async def _post_head(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST of a break whose headers are sent, its body not yet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /admin/channels/live1/breaks HTTP/1.1\r\nHost: stitcher\r\n"
                 f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(BODY)}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


#: A conditioned segment laid out by hand (``stitcher.conditioning``'s layout: its
#: rendition folder has a ``done.json``), big enough to still be on its way at the
#: signal to a client reading slowly.
SEGMENT = "cdrain0000000000000000/v0/seg_00000.ts"
SEGMENT_BYTES = 24 << 20


def _publish_segment(data_dir: Path) -> None:
    folder = data_dir / "assets" / SEGMENT.rsplit("/", 1)[0]
    folder.mkdir(parents=True)
    (folder / "done.json").write_text("{}")
    (folder / "seg_00000.ts").write_bytes(b"\x47" * SEGMENT_BYTES)


async def _slow_download(port: int, until: float) -> int:
    """GET the segment and read it slowly, spread to about ``until`` (monotonic);
    returns the body's length as received."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 << 10)
    writer.write(f"GET /assets/{SEGMENT} HTTP/1.1\r\nHost: stitcher\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    got = 0
    chunks = SEGMENT_BYTES // (256 << 10)
    for _ in range(chunks):
        got += len(await reader.read(256 << 10))
        await asyncio.sleep(max(0.0, until - time.monotonic()) / chunks)
    while chunk := await reader.read(1 << 20):
        got += len(chunk)
    writer.close()
    return got


async def _slow_body_answered(child: ChildProcess) -> None:
    download = asyncio.ensure_future(_slow_download(child.port, time.monotonic() + SLOW + 0.5))
    # An idle keep-alive connection, as a player leaves between reloads.
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", child.port)
    idle_w.write(b"GET /healthz HTTP/1.1\r\nHost: stitcher\r\n\r\n")
    head = await idle_r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await idle_r.readexactly(length)

    reader, writer = await _post_head(child.port)
    pieces = [BODY[i:i + 4] for i in range(0, len(BODY), 4)]
    started = time.monotonic()
    signalled = None
    for i, piece in enumerate(pieces):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(SLOW / len(pieces))
        if signalled is None and time.monotonic() - started >= SIGNAL_AT:
            child.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # The idle connection is closed at once, and nothing new is accepted.
            assert await asyncio.wait_for(idle_r.read(), 2.0) == b""
            assert await refused(child.port)
            assert i < len(pieces) - 2, "the body ended before the drain was observed"
    assert signalled is not None
    answer = await asyncio.wait_for(reader.read(), 10.0)
    assert answer.startswith(b"HTTP/1.1 201 "), (answer, child.log_text())
    # The file on its way at the signal arrives whole.
    assert await asyncio.wait_for(download, 10.0) == SEGMENT_BYTES
    body_done = time.monotonic()
    created = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert created["duration"] == 30, created
    code = await asyncio.wait_for(child.proc.wait(), 10.0)
    assert code == 0, child.log_text()
    # Soon after the last request ended, not after shutdown_timeout (20 s here).
    assert time.monotonic() - body_done < 3.0, child.log_text()
    assert "cut off" not in child.log_text()
    # The break was stored before the exit (the embedded control plane's file).
    [stored] = (child.log.parent / "var").rglob("control.json")
    stored_breaks = [json.loads(b) for b in json.loads(stored.read_text())["adops"]["live1"]]
    assert [b["event_id"] for b in stored_breaks] == [created["event_id"]]


async def _stalled_body_cut_off(child: ChildProcess) -> None:
    reader, writer = await _post_head(child.port)
    writer.write(BODY[:5])  # and never the rest
    await writer.drain()
    await asyncio.sleep(0.3)
    child.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = await asyncio.wait_for(child.proc.wait(), 10.0)
    took = time.monotonic() - signalled
    assert code == 1, child.log_text()
    assert 1.0 <= took < 4.0, (took, child.log_text())
    assert "drain: 1 request still in flight after 1.0 s cut off" in child.log_text()
    assert await asyncio.wait_for(reader.read(), 2.0) == b""  # cut off: no answer
    writer.close()


async def test_drain_answers_a_slow_body_and_cuts_off_at_the_timeout(tmp_path: Path) -> None:
    async with _origin() as origin_url:
        slow, stalled = await asyncio.gather(_serve(tmp_path / "slow", origin_url, 20.0),
                                             _serve(tmp_path / "stalled", origin_url, 1.0))
        try:
            await asyncio.gather(_up(slow), _up(stalled))
            await asyncio.gather(_slow_body_answered(slow), _stalled_body_cut_off(stalled))
        finally:
            await stop_children([slow, stalled])
