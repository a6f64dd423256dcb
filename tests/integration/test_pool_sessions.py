"""The app's database sessions run in UTC, whatever the URL or the server say."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from psycopg.conninfo import make_conninfo

from services.bootstrap import open_pool, utc_sessions


def test_sessions_are_in_utc_and_keep_the_url_s_other_options(database_url: str) -> None:
    elsewhere = make_conninfo(
        database_url, options="-c TimeZone=America/New_York -c search_path=public"
    )

    async def main() -> None:
        async with open_pool(elsewhere, max_size=1) as pool, pool.connection() as conn:
            cur = await conn.execute(
                "SELECT current_setting('TimeZone'), current_setting('search_path'),"
                " timestamptz '2026-03-01 02:00Z',"
                " date_trunc('day', timestamptz '2026-03-01 02:00Z')"
            )
            zone, search_path, instant, day = await cur.fetchone() or ()
            assert (zone, search_path) == ("UTC", "public")
            # datetime.UTC itself: psycopg builds it faster than a ZoneInfo.
            assert instant.tzinfo is UTC
            assert instant == datetime(2026, 3, 1, 2, tzinfo=UTC)
            assert day == datetime(2026, 3, 1, tzinfo=UTC)  # New York's day began on 28 Feb

    asyncio.run(main())


def test_options_from_the_environment_are_kept_when_the_url_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=5s")
    url = "postgresql://app@db.example:5432/ledger"
    assert "options='-c statement_timeout=5s -c TimeZone=UTC'" in utc_sessions(url)
    given = url + "?options=-c%20search_path%3Dx"
    assert "options='-c search_path=x -c TimeZone=UTC'" in utc_sessions(given)  # the URL wins
