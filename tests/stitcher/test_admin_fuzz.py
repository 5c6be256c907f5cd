"""Fuzz every operation of the admin API's own OpenAPI document (schemathesis):
valid and invalid bodies, paths, headers and queries, with the token. No
answer may be a 5xx (every refusal is a 4xx with a reason).

The stack (fixture origin, ad server, stitcher) runs in a thread with its own
event loop, since schemathesis calls the API synchronously.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from stitcher.openapi import document
from tests.harness import start_stack

TOKEN = "fuzz-admin-token-0123456789"
schema = schemathesis.openapi.from_dict(document())


class StackThread:
    """``start_stack`` entered and exited on an event loop of its own thread."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.data_dir = data_dir
        self.cm: Any = None

    def __enter__(self) -> str:
        self.thread.start()
        self.cm = start_stack(data_dir=self.data_dir,
                              stitcher_config={"admin_token": TOKEN})
        stack = asyncio.run_coroutine_threadsafe(self.cm.__aenter__(), self.loop).result(60)
        return str(stack.base)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.cm.__aexit__(None, None, None),
                                         self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with StackThread(tmp_path_factory.mktemp("fuzz")) as base:
        yield base


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_operation_answers_5xx(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[not_a_server_error], timeout=20)
