"""A stream's tail by seq is what the business-time read gives for the same seqs.

Drafts read the events beyond the rollups' checkpoint, and late usage the events
since a finalization, by stream position rather than by business time (so a
period of millions of events costs what its tail costs). Both reads must agree
on every range, whatever the interleaving of streams and times.
"""

from __future__ import annotations

import random
from datetime import timedelta

from ledger.core.events import UsageRecorded
from ledger.store.event_store import (
    iter_stream_recorded_after,
    read_stream_between,
    read_stream_recorded_after,
)
from ledger.store.records import NewEvent
from services.bootstrap import App
from tests.integration.test_projection_ops import NOW, run_app

STREAMS = ("usage-a", "usage-b", "usage-c")


def test_reading_by_stream_position_equals_reading_by_business_time(database_url: str) -> None:
    rng = random.Random(11)

    async def body(app: App) -> None:
        for n in range(60):
            stream = rng.choice(STREAMS)
            occurred = NOW - timedelta(hours=rng.randrange(48))
            event = UsageRecorded(stream, f"t{n}", "api_call", occurred, {})
            await app.store.append([NewEvent(stream, event, occurred)])
        head = (await app.store.head()).seq
        span = (NOW - timedelta(hours=30), NOW - timedelta(hours=6))
        checked = 0
        async with app.pool.connection() as conn:
            for lo in range(0, head + 1, 3):
                for hi in range(lo, head + 2, 4):
                    for stream in STREAMS:
                        by_time = await read_stream_between(conn, stream, span, (lo, hi))
                        by_seq = await read_stream_recorded_after(conn, stream, span, (lo, hi))
                        assert by_seq == by_time, (stream, lo, hi)
                        batches = iter_stream_recorded_after(conn, stream, span, (lo, hi), 2)
                        assert [e async for rows in batches for e in rows] == by_time
                        checked += len(by_seq)
        assert checked > 1_000  # the ranges held events, not only empty answers

    run_app(database_url, body)
