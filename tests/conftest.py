"""Shared fixtures: the cached fixture media and a per-session folder of conditioned assets.

The stack itself (origin + ad server + stitcher) is :func:`tests.harness.start_stack`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.media import MediaSet, ensure_media


@pytest.fixture(scope="session")
def media() -> MediaSet:
    """The fixture media (generated once into the cache, reused after)."""
    return ensure_media()


@pytest.fixture(scope="session")
def assets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conditioned creatives shared by every stack of the session (the slate's key is
    stable, so it is conditioned once per session)."""
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server started for this test session (see ``tests/redis_server.py``).
    Tests sharing it use distinct channel names or flush it."""
    from tests.redis_server import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on loopback ports, started for this test session
    (see ``tests/redis_server.py``); connect with ``redis_cluster=True``."""
    from tests.redis_server import redis_cluster

    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: a missing prerequisite must never pass silently."""
    import os

    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) skipped; in CI a skip is a failure",
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
