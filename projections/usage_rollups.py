"""Hourly usage rollups per customer, billable metric and pricing group.

A row holds the :class:`~ledger.core.metering.Tally` of one hour's usage; rows
merge exactly like tallies, so an invoice read from rollups equals a replay of
the raw events. A metric created after usage arrived is back-filled from the
ledger when the projection meets its creation event, because replay bills all
of a period's usage under the metric whenever it was created.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Final

from psycopg import AsyncCursor
from psycopg.rows import TupleRow

from ledger.core.canonical import canonical_json
from ledger.core.catalog import BillableMetric
from ledger.core.codec import decode, encode
from ledger.core.events import BillableMetricCreated, UsageRecorded
from ledger.core.metering import GroupKey, Tally, group_of, measure
from ledger.store.records import StoredEvent

BUCKET: Final = timedelta(hours=1)
BACKFILL_BATCH: Final = 5_000

# (customer_id, metric_id, group key JSON, bucket start)
RollupKey = tuple[str, str, str, datetime]


def bucket_start(instant: datetime) -> datetime:
    return instant.replace(minute=0, second=0, microsecond=0)


def encode_group(group: GroupKey) -> str:
    return canonical_json(list(group)).decode()


def decode_group(text: str) -> GroupKey:
    return tuple(json.loads(text))


class UsageRollups:
    """Projection ``usage_rollups``: tallies per customer, metric, group and hour."""

    name = "usage_rollups"

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.rollups = f"usage_rollups_v{version}"
        self.unbilled = f"usage_unbilled_v{version}"
        self.metrics = f"usage_rollup_metrics_v{version}"

    def ddl(self) -> Sequence[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {self.metrics} (
                metric_id  text PRIMARY KEY,
                definition text NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {self.rollups} (
                customer_id  text        NOT NULL,
                metric_id    text        NOT NULL,
                group_key    text        NOT NULL,
                bucket_start timestamptz NOT NULL,
                event_count  bigint      NOT NULL,
                total        numeric     NOT NULL,
                maximum      numeric,
                PRIMARY KEY (customer_id, metric_id, bucket_start, group_key))""",
            f"""CREATE TABLE IF NOT EXISTS {self.unbilled} (
                customer_id  text        NOT NULL,
                metric_id    text        NOT NULL,
                group_key    text        NOT NULL,
                bucket_start timestamptz NOT NULL,
                reason       text        NOT NULL,
                event_count  bigint      NOT NULL,
                PRIMARY KEY (customer_id, metric_id, bucket_start, group_key, reason))""",
        ]

    async def apply(self, cur: AsyncCursor[TupleRow], events: Sequence[StoredEvent]) -> None:
        metrics = await self._metrics(cur)
        pending: dict[RollupKey, Tally] = {}
        for stored in events:
            if stored.event_type == UsageRecorded.EVENT_TYPE:
                event = stored.domain_event()
                assert isinstance(event, UsageRecorded)
                _accumulate(pending, event, metrics)
            elif stored.event_type == BillableMetricCreated.EVENT_TYPE:
                created = stored.domain_event()
                assert isinstance(created, BillableMetricCreated)
                await self._flush(cur, pending)
                pending = {}
                await self._add_metric(cur, created.metric, stored.seq)
                metrics.append(created.metric)
        await self._flush(cur, pending)

    async def _metrics(self, cur: AsyncCursor[TupleRow]) -> list[BillableMetric]:
        await cur.execute(f"SELECT definition FROM {self.metrics} ORDER BY metric_id")  # noqa: S608
        return [decode(BillableMetric, json.loads(row[0])) for row in await cur.fetchall()]

    async def _add_metric(
        self, cur: AsyncCursor[TupleRow], metric: BillableMetric, seq: int
    ) -> None:
        await cur.execute(
            f"INSERT INTO {self.metrics} (metric_id, definition) VALUES (%s, %s)"  # noqa: S608
            " ON CONFLICT DO NOTHING",
            (metric.metric_id, canonical_json(encode(metric)).decode()),
        )
        await self._backfill(cur, metric, seq)

    async def _backfill(self, cur: AsyncCursor[TupleRow], metric: BillableMetric, seq: int) -> None:
        """Fold the usage recorded before the metric existed (rare and bounded by batches)."""
        after = 0
        while True:
            await cur.execute(
                "SELECT seq, payload FROM events WHERE event_type = 'UsageRecorded'"
                " AND seq > %s AND seq < %s ORDER BY seq LIMIT %s",
                (after, seq, BACKFILL_BATCH),
            )
            rows = await cur.fetchall()
            if not rows:
                return
            pending: dict[RollupKey, Tally] = {}
            for row_seq, payload in rows:
                after = row_seq
                event = decode(UsageRecorded, json.loads(bytes(payload)))
                _accumulate(pending, event, [metric])
            await self._flush(cur, pending)

    async def _flush(self, cur: AsyncCursor[TupleRow], pending: dict[RollupKey, Tally]) -> None:
        if not pending:
            return
        keys = list(pending)
        tallies = [pending[key] for key in keys]
        await cur.execute(
            f"INSERT INTO {self.rollups} AS r"  # noqa: S608
            " (customer_id, metric_id, group_key, bucket_start, event_count, total, maximum)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],"
            " %s::bigint[], %s::numeric[], %s::numeric[])"
            " ON CONFLICT (customer_id, metric_id, bucket_start, group_key) DO UPDATE SET"
            " event_count = r.event_count + excluded.event_count,"
            " total = r.total + excluded.total,"
            " maximum = GREATEST(r.maximum, excluded.maximum)",
            (
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [k[3] for k in keys],
                [t.count for t in tallies],
                [t.total for t in tallies],
                [t.maximum for t in tallies],
            ),
        )
        unbilled = [
            (k, reason, n)
            for k, t in zip(keys, tallies, strict=True)
            for reason, n in t.unbilled.items()
        ]
        if unbilled:
            await cur.execute(
                f"INSERT INTO {self.unbilled} AS u"  # noqa: S608
                " (customer_id, metric_id, group_key, bucket_start, reason, event_count)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],"
                " %s::text[], %s::bigint[])"
                " ON CONFLICT (customer_id, metric_id, bucket_start, group_key, reason)"
                " DO UPDATE SET event_count = u.event_count + excluded.event_count",
                (
                    [k[0] for k, _, _ in unbilled],
                    [k[1] for k, _, _ in unbilled],
                    [k[2] for k, _, _ in unbilled],
                    [k[3] for k, _, _ in unbilled],
                    [reason for _, reason, _ in unbilled],
                    [n for _, _, n in unbilled],
                ),
            )


def _accumulate(
    pending: dict[RollupKey, Tally], event: UsageRecorded, metrics: Iterable[BillableMetric]
) -> None:
    for metric in metrics:
        tally = measure(metric, event)
        if tally is None:
            continue
        group = encode_group(group_of(metric, event.properties))
        key = (event.customer_id, metric.metric_id, group, bucket_start(event.occurred_at))
        pending[key] = pending[key].merge(tally) if key in pending else tally
