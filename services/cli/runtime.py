"""What every command needs: the database (embedded or given) and the wired app."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import TupleRow

from services.bootstrap import PROJECTIONS, App, running_app
from services.config import Settings
from services.embedded_db import EmbeddedPostgres

T = TypeVar("T")
_log = structlog.get_logger("accrual.cli")

# Created by the migrations (0002); see the README's configuration section.
SERVICE_ROLE: Final = "accrual_service"
PROJECTOR_ROLE: Final = "accrual_projector"


@dataclass(frozen=True)
class DatabaseUrls:
    """Whom each part connects as.

    ``owner`` migrates and administers; ``service`` is the app (appends and
    reads); ``projector`` is the projection runner (creates and writes the
    projection tables). ``owner_login`` names the role URL variables that were
    unset, so that part logs in as the owner.
    """

    owner: str
    service: str
    projector: str
    owner_login: tuple[str, ...] = ()


def as_role(url: str, role: str) -> str:
    """The same server and database, connecting as ``role`` without a password."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    params.pop("password", None)
    params["user"] = role
    return psycopg.conninfo.make_conninfo("", **params)


def role_urls(settings: Settings, owner: str, *, embedded: bool) -> DatabaseUrls:
    """The role URLs given; else, on the embedded server (trust auth), the owner's
    URL with the role's user; else the owner's URL itself."""
    service, projector = settings.service_database_url, settings.projector_database_url
    if embedded:
        return DatabaseUrls(
            owner=owner,
            service=service or as_role(owner, SERVICE_ROLE),
            projector=projector or as_role(owner, PROJECTOR_ROLE),
        )
    given = {"ACCRUAL_SERVICE_DATABASE_URL": service, "ACCRUAL_PROJECTOR_DATABASE_URL": projector}
    return DatabaseUrls(
        owner=owner,
        service=service or owner,
        projector=projector or owner,
        owner_login=tuple(name for name, url in given.items() if not url),
    )


def hand_projections_to_projector(urls: DatabaseUrls) -> None:
    """Make the projector own every projection table before it runs as its role.

    As migration 0002 did for tables made before it: tables made while the
    projector ran on the owner's URL go to the projector, which must own them
    to create their indexes and drop retired versions; the service reads them.
    """
    if urls.projector == urls.owner:
        return
    with psycopg.connect(urls.owner, autocommit=True) as conn:
        for table in _tables_to_hand_over(conn):
            name = sql.Identifier(table)
            conn.execute(sql.SQL("GRANT SELECT ON {} TO accrual_service").format(name))
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO accrual_projector").format(name))


def _tables_to_hand_over(conn: psycopg.Connection[TupleRow]) -> list[str]:
    """The runner's tables and those of every registered projection version that
    exist and are not the projector's yet (each projection names its own)."""
    names = {"projection_checkpoints", "projection_registry"}
    registered = conn.execute("SELECT to_regclass('projection_registry')").fetchone()
    if registered is not None and registered[0] is not None:
        for name, version in conn.execute("SELECT name, version FROM projection_registry"):
            if name in PROJECTIONS:
                names |= set(PROJECTIONS[name](version).tables())
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)"
        " AND c.relowner <> 'accrual_projector'::regrole",
        (sorted(names),),
    )
    return [str(row[0]) for row in rows]


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[DatabaseUrls]:
    """The configured database, or the embedded one, and whom to connect as.

    The embedded server is started if it is not running, and stopped again at
    the end only if this command started it.
    """
    if settings.database_url:
        yield role_urls(settings, settings.database_url, embedded=False)
        return
    embedded = EmbeddedPostgres(settings.data_dir / "pgdata", settings.embedded_pg_port)
    was_running = embedded.is_running()
    url = embedded.start()
    if not was_running:
        _log.info("embedded postgres started", data_dir=str(embedded.data_dir), url=url)
    try:
        yield role_urls(settings, url, embedded=True)
    finally:
        if not was_running:
            embedded.stop()


def with_app(settings: Settings, body: Callable[[App], Awaitable[T]]) -> T:
    """Run ``body`` against the wired app, without starting the projector."""
    quiet = dataclasses.replace(settings, run_projector=False)
    with database(settings) as urls:

        async def main() -> T:
            async with running_app(quiet, urls.service, projector_url=urls.projector) as app:
                return await body(app)

        return asyncio.run(main())
