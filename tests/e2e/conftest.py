"""A real server over loopback: the app wired as in production, on a test database."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from services.bootstrap import running_app
from services.config import Settings
from services.server import create_server


@dataclasses.dataclass
class RunningServer:
    address: str
    database_url: str
    channel: grpc.Channel


def test_settings(**overrides: object) -> Settings:
    """Production defaults with test-friendly values."""
    settings = Settings.from_env({})
    return dataclasses.replace(settings, finalize_grace=timedelta(0), **overrides)  # type: ignore[arg-type]


def _serve_in_thread(
    database_url: str,
    settings: Settings,
    ready: Future[int],
    stop: threading.Event,
    interceptors: Sequence[object] = (),
) -> None:
    async def main() -> None:
        async with running_app(settings, database_url) as app:
            server = create_server(app, "127.0.0.1:0", interceptors)
            await server.start()
            ready.set_result(server.port)
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await server.stop(1.0)

    try:
        asyncio.run(main())
    except BaseException as error:
        if not ready.done():
            ready.set_exception(error)
        raise


@pytest.fixture
def server(database_url: str) -> Iterator[RunningServer]:
    """The full service on a free loopback port, stopped after the test."""
    yield from serving(database_url)


def serving(database_url: str, interceptors: Sequence[object] = ()) -> Iterator[RunningServer]:
    """Run the service in a thread for the duration of a fixture."""
    ready: Future[int] = Future()
    stop = threading.Event()
    thread = threading.Thread(
        target=_serve_in_thread,
        args=(database_url, test_settings(), ready, stop, interceptors),
        daemon=True,
    )
    thread.start()
    port = ready.result(timeout=60)
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as channel:
        yield RunningServer(address, database_url, channel)
    stop.set()
    thread.join(timeout=30)


def utc_now() -> datetime:
    return datetime.now(UTC)
