"""What every command needs: the database (embedded or given) and the wired app."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import structlog

from services.bootstrap import App, running_app
from services.config import Settings
from services.embedded_db import EmbeddedPostgres

T = TypeVar("T")
_log = structlog.get_logger("accrual.cli")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database, or the embedded one.

    The embedded server is started if it is not running, and stopped again at
    the end only if this command started it.
    """
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir / "pgdata", settings.embedded_pg_port)
    was_running = embedded.is_running()
    url = embedded.start()
    if not was_running:
        _log.info("embedded postgres started", data_dir=str(embedded.data_dir), url=url)
    try:
        yield url
    finally:
        if not was_running:
            embedded.stop()


def with_app(settings: Settings, body: Callable[[App], Awaitable[T]]) -> T:
    """Run ``body`` against the wired app, without starting the projector."""
    quiet = dataclasses.replace(settings, run_projector=False)
    with database(settings) as url:

        async def main() -> T:
            async with running_app(quiet, url) as app:
                return await body(app)

        return asyncio.run(main())
