"""A real server over loopback: the app wired as in production, on a test database."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest

from services.auth.credentials import issue_token
from services.bootstrap import running_app
from services.config import Settings
from services.server import create_server


@dataclasses.dataclass
class RunningServer:
    """The server, and a channel that calls as ``admin_token``'s principal."""

    address: str
    database_url: str
    channel: grpc.Channel
    admin_token: str
    approver_token: str

    def as_token(self, token: str) -> list[tuple[str, str]]:
        """Call metadata that authenticates as another token's principal."""
        return bearer(token)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def issue(
    database_url: str, principal: str, *roles: str, customers: list[str] | None = None
) -> str:
    """A fresh token for ``principal``, straight into the test database."""
    with psycopg.connect(database_url) as conn:
        return issue_token(conn, principal, roles, customers=customers).token


class WithToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds a bearer token to every call that does not carry its own credential."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            metadata += bearer(self._token)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


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
    clock: Callable[[], datetime] | None = None,
) -> None:
    async def main() -> None:
        async with running_app(settings, database_url, **_clocked(clock)) as app:
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


def _clocked(clock: Callable[[], datetime] | None) -> dict[str, Callable[[], datetime]]:
    return {} if clock is None else {"clock": clock}


def serving(
    database_url: str,
    interceptors: Sequence[object] = (),
    settings: Settings | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Iterator[RunningServer]:
    """Run the service in a thread for the duration of a fixture (on ``clock`` if given:
    a test that walks through months of billing moves the server's time itself)."""
    ready: Future[int] = Future()
    stop = threading.Event()
    thread = threading.Thread(
        target=_serve_in_thread,
        args=(database_url, settings or test_settings(), ready, stop, interceptors, clock),
        daemon=True,
    )
    thread.start()
    port = ready.result(timeout=60)
    address = f"127.0.0.1:{port}"
    admin = issue(database_url, "test-admin", "admin")
    approver = issue(database_url, "test-approver", "pricing-approver")
    # A TLS server's tests make their own channels; this plain one stays unused.
    with grpc.insecure_channel(address) as plain:
        channel = grpc.intercept_channel(plain, WithToken(admin))
        yield RunningServer(address, database_url, channel, admin, approver)
    stop.set()
    thread.join(timeout=30)


def utc_now() -> datetime:
    return datetime.now(UTC)
