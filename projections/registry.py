"""Which version of each projection is live, which is being rebuilt, which is retired.

Readers ask for the live version inside their own snapshot, so a swap is
atomic for them: a query sees either the old version and its checkpoint or
the new one and its checkpoint, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

REGISTRY_DDL: Final = (
    """CREATE TABLE IF NOT EXISTS projection_registry (
        name       text        NOT NULL,
        version    integer     NOT NULL,
        state      text        NOT NULL CHECK (state IN ('live', 'building', 'retired')),
        created_at timestamptz NOT NULL DEFAULT now(),
        swapped_at timestamptz,
        PRIMARY KEY (name, version))""",
    """CREATE UNIQUE INDEX IF NOT EXISTS projection_registry_one_live
        ON projection_registry (name) WHERE state = 'live'""",
)


class State(Enum):
    LIVE = "live"
    BUILDING = "building"
    RETIRED = "retired"


@dataclass(frozen=True)
class Registered:
    name: str
    version: int
    state: State
    checkpoint: int
    checkpoint_recorded_at: datetime | None


async def live_version(conn: AsyncConnection[TupleRow], name: str) -> int:
    """The live version of ``name`` as ``conn``'s snapshot sees it."""
    cur = await conn.execute(
        "SELECT version FROM projection_registry WHERE name = %s AND state = 'live'", (name,)
    )
    row = await cur.fetchone()
    assert row is not None, f"projection {name} has a live version once set up"
    return int(row[0])


async def versions_in(conn: AsyncConnection[TupleRow], *states: State) -> list[tuple[str, int]]:
    cur = await conn.execute(
        "SELECT name, version FROM projection_registry WHERE state = ANY(%s)"
        " ORDER BY name, version",
        ([s.value for s in states],),
    )
    return [(str(name), int(version)) for name, version in await cur.fetchall()]


async def register(conn: AsyncConnection[TupleRow], name: str, version: int, state: State) -> None:
    """Record a version (no change if it is already registered)."""
    await conn.execute(
        "INSERT INTO projection_registry (name, version, state) VALUES (%s, %s, %s)"
        " ON CONFLICT (name, version) DO NOTHING",
        (name, version, state.value),
    )


async def state_of(conn: AsyncConnection[TupleRow], name: str, version: int) -> State | None:
    cur = await conn.execute(
        "SELECT state FROM projection_registry WHERE name = %s AND version = %s", (name, version)
    )
    row = await cur.fetchone()
    return State(row[0]) if row else None


async def make_live(conn: AsyncConnection[TupleRow], name: str, version: int) -> int | None:
    """Retire the live version and make ``version`` live; return the retired one."""
    old = None
    cur = await conn.execute(
        "UPDATE projection_registry SET state = 'retired' WHERE name = %s AND state = 'live'"
        " RETURNING version",
        (name,),
    )
    row = await cur.fetchone()
    if row is not None:
        old = int(row[0])
    await conn.execute(
        "UPDATE projection_registry SET state = 'live', swapped_at = now()"
        " WHERE name = %s AND version = %s",
        (name, version),
    )
    return old


async def status(conn: AsyncConnection[TupleRow]) -> list[Registered]:
    """Every registered version with its checkpoint and when that event was recorded."""
    cur = await conn.execute(
        "SELECT r.name, r.version, r.state, coalesce(c.seq, 0), e.recorded_at"
        " FROM projection_registry r"
        " LEFT JOIN projection_checkpoints c ON c.name = r.name AND c.version = r.version"
        " LEFT JOIN events e ON e.partition = 0 AND e.seq = c.seq"
        " ORDER BY r.name, r.version"
    )
    return [
        Registered(str(name), int(version), State(state), int(seq), recorded_at)
        for name, version, state, seq, recorded_at in await cur.fetchall()
    ]
