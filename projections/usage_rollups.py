"""Hourly usage rollups per customer, billable metric and pricing group.

A row holds the :class:`~ledger.core.metering.Tally` of one hour's usage; rows
merge exactly like tallies, so an invoice read from rollups equals a replay of
the raw events. A metric created after usage arrived is back-filled from the
ledger when the projection meets its creation event, because replay bills all
of a period's usage under the metric whenever it was created.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from ledger.core.canonical import canonical_json, format_instant
from ledger.core.catalog import Aggregation, BillableMetric
from ledger.core.codec import decode, encode
from ledger.core.errors import DomainError, Rule
from ledger.core.events import (
    BillableMetricCreated,
    UsageRecorded,
    from_payload,
    usage_from_bytes,
)
from ledger.core.metering import GroupKey, Latest, Running, Tally, group_of, matches
from ledger.store.records import RecordedEvent

BUCKET: Final = timedelta(hours=1)
BACKFILL_BATCH: Final = 5_000
# Usage events folded, or rows pending, before the rows are sent (see
# UsageRollups.apply): an event makes a row for each metric that selects it.
# A quarter of a full rebuild batch (50,000 events), so that PostgreSQL upserts
# each part while the next is folded, and only the last part's upserts are
# waited for alone. A rebuild of 300,000 events took 112,000-117,000 events/s
# with 12,500, against 90,000-101,000 with 25,000 (and 110,000 with 8,334).
FLUSH_EVENTS: Final = 12_500
FLUSH_ROWS: Final = 12_500

Span = tuple[datetime, datetime]
# (customer_id, metric_id, group key JSON, bucket start)
RollupKey = tuple[str, str, str, datetime]


def bucket_start(instant: datetime) -> datetime:
    # The constructor with positional fields: replace() with keywords took 0.6 us
    # an event, 6% of a rollup rebuild; this takes 0.35. Instants here are UTC,
    # so there is no fold to carry.
    return datetime(instant.year, instant.month, instant.day, instant.hour, tzinfo=instant.tzinfo)


@functools.lru_cache(maxsize=4096)
def encode_group(group: GroupKey) -> str:
    """A group's key column; groups repeat across events, so each is encoded once."""
    return canonical_json(list(group)).decode()


def decode_group(text: str) -> GroupKey:
    return tuple(json.loads(text))


@dataclass(frozen=True)
class SeriesQuery:
    """Which usage to put in a time series, and how finely."""

    span: tuple[datetime, datetime]
    hourly: bool  # else daily (UTC days)
    customer_ids: Sequence[str] = ()  # none: every customer
    metric_ids: Sequence[str] = ()  # none: every metric
    by_customer: bool = False
    rows_max: int = 50_000  # refused beyond: the caller narrows the series


@dataclass(frozen=True)
class UsageBucket:
    """One metric and group's usage in one time bucket (of one customer, or of all:
    ``customer_id`` is then "")."""

    start: datetime
    customer_id: str
    metric_id: str
    group: GroupKey
    tally: Tally  # without distinct values: those are counted in the database
    distinct_count: int = 0

    def quantity(self, aggregation: Aggregation) -> Decimal:
        if aggregation is Aggregation.UNIQUE:
            return Decimal(self.distinct_count)
        return self.tally.quantity(aggregation)


class UsageRollups:
    """Projection ``usage_rollups``: tallies per customer, metric, group and hour."""

    name = "usage_rollups"
    event_types = None  # usage: every event

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.rollups = f"usage_rollups_v{version}"
        self.unbilled = f"usage_unbilled_v{version}"
        self.metrics = f"usage_rollup_metrics_v{version}"
        self.distinct = f"usage_distinct_v{version}"

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
                latest_at    timestamptz,
                latest_seq   bigint,
                latest_value numeric,
                PRIMARY KEY (customer_id, metric_id, bucket_start, group_key))""",
            f"""CREATE TABLE IF NOT EXISTS {self.distinct} (
                customer_id  text        NOT NULL,
                metric_id    text        NOT NULL,
                group_key    text        NOT NULL,
                bucket_start timestamptz NOT NULL,
                value        text        NOT NULL,
                PRIMARY KEY (customer_id, metric_id, bucket_start, group_key, value))""",
            f"""CREATE TABLE IF NOT EXISTS {self.unbilled} (
                customer_id  text        NOT NULL,
                metric_id    text        NOT NULL,
                group_key    text        NOT NULL,
                bucket_start timestamptz NOT NULL,
                reason       text        NOT NULL,
                event_count  bigint      NOT NULL,
                PRIMARY KEY (customer_id, metric_id, bucket_start, group_key, reason))""",
        ]

    def tables(self) -> Sequence[str]:
        return [self.rollups, self.unbilled, self.distinct, self.metrics]

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[RecordedEvent],
        *,
        replaying: bool = False,  # no side effects to suppress
    ) -> None:
        metrics = await self._metrics(cur)
        # Each event is offered only to the metrics of its type: most metrics
        # select other types, and every event would otherwise ask each of them.
        by_type = _by_event_type(metrics)
        pending: dict[RollupKey, Running] = {}
        folded = 0
        # Pipelined: PostgreSQL upserts one chunk's rows while the next chunk is
        # folded here, on the other core; the batch's commit waits for them all.
        # In a rebuild, two fifths of the time went to waiting for the upserts.
        async with cur.connection.pipeline():
            for stored in events:
                if stored.event_type == UsageRecorded.EVENT_TYPE:
                    event = usage_from_bytes(stored.schema_version, stored.payload)
                    assert isinstance(event, UsageRecorded)
                    _accumulate(pending, stored.seq, event, by_type.get(event.event_type, ()))
                    folded += 1
                    if folded % FLUSH_EVENTS == 0 or len(pending) >= FLUSH_ROWS:
                        await self._flush(cur, pending)
                        pending = {}
                elif stored.event_type == BillableMetricCreated.EVENT_TYPE:
                    created = stored.domain_event()
                    assert isinstance(created, BillableMetricCreated)
                    await self._flush(cur, pending)
                    pending = {}
                    await self._add_metric(cur, created.metric, stored.seq)
                    metrics.append(created.metric)
                    by_type = _by_event_type(metrics)
            await self._flush(cur, pending)

    async def known_metrics(self, conn: AsyncConnection[TupleRow]) -> set[str]:
        """Metrics this projection has met (and back-filled) so far."""
        cur = await conn.execute(f"SELECT metric_id FROM {self.metrics}")
        return {str(row[0]) for row in await cur.fetchall()}

    async def tallies(
        self,
        conn: AsyncConnection[TupleRow],
        customer_id: str,
        metric_ids: list[str],
        hours: tuple[datetime, datetime],
    ) -> dict[tuple[str, GroupKey], Tally]:
        """The merged tallies of whole hours ``[start, end)`` per metric and group."""
        args = (customer_id, metric_ids, *hours)
        where = (
            " WHERE customer_id = %s AND metric_id = ANY(%s)"
            " AND bucket_start >= %s AND bucket_start < %s"
        )
        found: dict[tuple[str, GroupKey], Tally] = {}

        def add(metric_id: str, group_key: str, tally: Tally) -> None:
            key = (metric_id, decode_group(group_key))
            found[key] = found[key].merge(tally) if key in found else tally

        cur = await conn.execute(
            "SELECT metric_id, group_key, sum(event_count), sum(total), max(maximum)"
            f" FROM {self.rollups}{where} GROUP BY metric_id, group_key",
            args,
        )
        for metric_id, group_key, count, total, maximum in await cur.fetchall():
            add(metric_id, group_key, Tally(count=int(count), total=total, maximum=maximum))
        cur = await conn.execute(
            "SELECT DISTINCT ON (metric_id, group_key) metric_id, group_key,"
            " latest_at, latest_seq, latest_value"
            f" FROM {self.rollups}{where} AND latest_at IS NOT NULL"
            " ORDER BY metric_id, group_key, latest_at DESC, latest_seq DESC",
            args,
        )
        for metric_id, group_key, at, seq, value in await cur.fetchall():
            add(metric_id, group_key, Tally(latest=Latest(at.astimezone(UTC), seq, value)))
        cur = await conn.execute(
            f"SELECT DISTINCT metric_id, group_key, value FROM {self.distinct}{where}",
            args,
        )
        for metric_id, group_key, value in await cur.fetchall():
            add(metric_id, group_key, Tally(distinct=frozenset((value,))))
        cur = await conn.execute(
            "SELECT metric_id, group_key, reason, sum(event_count)"
            f" FROM {self.unbilled}{where} GROUP BY metric_id, group_key, reason",
            args,
        )
        for metric_id, group_key, reason, count in await cur.fetchall():
            add(metric_id, group_key, Tally(unbilled={reason: int(count)}))
        return found

    async def series(
        self, conn: AsyncConnection[TupleRow], query: SeriesQuery
    ) -> list[UsageBucket]:
        """Usage per time bucket, metric and group (and customer, if asked), merged
        from the hourly rows exactly as an invoice merges them."""
        who = "customer_id" if query.by_customer else "''"
        keys = f"date_trunc(%s, bucket_start, 'UTC') AS b, {who} AS who, metric_id, group_key"
        where = (
            " WHERE bucket_start >= %s AND bucket_start < %s"
            " AND (cardinality(%s::text[]) = 0 OR customer_id = ANY(%s::text[]))"
            " AND (cardinality(%s::text[]) = 0 OR metric_id = ANY(%s::text[]))"
        )
        args = (
            "hour" if query.hourly else "day",
            *query.span,
            *(list(query.customer_ids),) * 2,
            *(list(query.metric_ids),) * 2,
        )
        found: dict[tuple[datetime, str, str, str], Tally] = {}

        def add(key: tuple[datetime, str, str, str], tally: Tally) -> None:
            found[key] = found[key].merge(tally) if key in found else tally

        cur = await conn.execute(
            f"SELECT {keys}, sum(event_count), sum(total), max(maximum) FROM {self.rollups}"
            f"{where} GROUP BY 1, 2, 3, 4 LIMIT %s",
            (*args, query.rows_max + 1),
        )
        rows = await cur.fetchall()
        if len(rows) > query.rows_max:
            message = f"the series has more than {query.rows_max} rows: narrow its range,"
            raise DomainError(Rule.REPORT_TOO_LARGE, message + " metrics or customers")
        for b, c, m, g, count, total, maximum in rows:
            add((b, c, m, g), Tally(count=int(count), total=total, maximum=maximum))
        cur = await conn.execute(
            f"SELECT DISTINCT ON (1, 2, 3, 4) {keys}, latest_at, latest_seq, latest_value"
            f" FROM {self.rollups}{where} AND latest_at IS NOT NULL"
            " ORDER BY 1, 2, 3, 4, latest_at DESC, latest_seq DESC",
            args,
        )
        for b, c, m, g, at, seq, value in await cur.fetchall():
            add((b, c, m, g), Tally(latest=Latest(at.astimezone(UTC), seq, value)))
        cur = await conn.execute(
            f"SELECT {keys}, count(DISTINCT value) FROM {self.distinct}{where} GROUP BY 1, 2, 3, 4",
            args,
        )
        distinct = {(b, c, m, g): int(n) for b, c, m, g, n in await cur.fetchall()}
        buckets = [
            UsageBucket(
                b.astimezone(UTC), c, m, decode_group(g), tally, distinct.get((b, c, m, g), 0)
            )
            for (b, c, m, g), tally in found.items()
        ]
        return sorted(buckets, key=lambda u: (u.start, u.customer_id, u.metric_id, u.group))

    async def events_before(
        self, conn: AsyncConnection[TupleRow], customer_id: str, span: Span, cut: datetime
    ) -> tuple[int, int]:
        """A customer's measured events in ``span``: those in hours starting before
        ``cut``, and all of them (an event two metrics measure counts twice)."""
        cur = await conn.execute(
            "SELECT coalesce(sum(event_count) FILTER (WHERE bucket_start < %s), 0),"
            f" coalesce(sum(event_count), 0) FROM {self.rollups}"
            " WHERE customer_id = %s AND bucket_start >= %s AND bucket_start < %s",
            (cut, customer_id, *span),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def metric_definitions(self, conn: AsyncConnection[TupleRow]) -> list[BillableMetric]:
        """The metrics this projection has met, as defined."""
        async with conn.cursor() as cur:
            return await self._metrics(cur)

    async def _metrics(self, cur: AsyncCursor[TupleRow]) -> list[BillableMetric]:
        await cur.execute(f"SELECT definition FROM {self.metrics} ORDER BY metric_id")
        return [decode(BillableMetric, json.loads(row[0])) for row in await cur.fetchall()]

    async def _add_metric(
        self, cur: AsyncCursor[TupleRow], metric: BillableMetric, seq: int
    ) -> None:
        await cur.execute(
            f"INSERT INTO {self.metrics} (metric_id, definition) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (metric.metric_id, canonical_json(encode(metric)).decode()),
        )
        await self._backfill(cur, metric, seq)

    async def _backfill(self, cur: AsyncCursor[TupleRow], metric: BillableMetric, seq: int) -> None:
        """Fold the usage recorded before the metric existed (rare and bounded by batches)."""
        after = 0
        while True:
            # partition leads the primary key: without it every batch scans the table.
            await cur.execute(
                "SELECT seq, schema_version, payload FROM events WHERE partition = 0"
                " AND seq > %s AND seq < %s AND event_type = 'UsageRecorded'"
                " ORDER BY seq LIMIT %s",
                (after, seq, BACKFILL_BATCH),
            )
            rows = await cur.fetchall()
            if not rows:
                return
            pending: dict[RollupKey, Running] = {}
            for row_seq, schema_version, payload in rows:
                after = row_seq
                # Through the upcasters, as every other reader of stored events.
                event = from_payload(UsageRecorded.EVENT_TYPE, schema_version, json.loads(payload))
                assert isinstance(event, UsageRecorded)
                _accumulate(pending, row_seq, event, [metric])
            await self._flush(cur, pending)

    async def _flush_distinct(
        self, cur: AsyncCursor[TupleRow], keys: list[RollupKey], runs: list[Running]
    ) -> None:
        rows = _distinct_rows(keys, runs)
        if not rows:
            return
        await cur.execute(
            f"INSERT INTO {self.distinct}"
            " (customer_id, metric_id, group_key, bucket_start, value)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],"
            " %s::text[])"
            " ON CONFLICT DO NOTHING",
            tuple(list(column) for column in zip(*rows, strict=True)),
        )

    async def _flush(self, cur: AsyncCursor[TupleRow], pending: dict[RollupKey, Running]) -> None:
        if not pending:
            return
        keys = list(pending)
        runs = [pending[key] for key in keys]  # read as they are: no tally built per row
        # One JSON text instead of ten typed arrays: the driver dumps arrays value
        # by value in Python (a rebuild writes about a row per hour, metric, group
        # and customer). orjson writes it ten times faster than json; the rows hold
        # only text, small integers and None, which both write alike. Read as jsonb,
        # parsed once: as json, each of a row's ten ->> parsed its text again.
        await cur.execute(
            f"INSERT INTO {self.rollups} AS r"
            " (customer_id, metric_id, group_key, bucket_start, event_count, total, maximum,"
            " latest_at, latest_seq, latest_value)"
            " SELECT x->>0, x->>1, x->>2, (x->>3)::timestamptz, (x->>4)::bigint,"
            " (x->>5)::numeric, (x->>6)::numeric, (x->>7)::timestamptz, (x->>8)::bigint,"
            " (x->>9)::numeric FROM jsonb_array_elements(%s::jsonb) AS x"
            " ON CONFLICT (customer_id, metric_id, bucket_start, group_key) DO UPDATE SET"
            " event_count = r.event_count + excluded.event_count,"
            " total = r.total + excluded.total,"
            " maximum = GREATEST(r.maximum, excluded.maximum),"
            # The later of the two latest values, by timestamp then ledger seq.
            f" latest_at = {_LATER.format('at')},"
            f" latest_seq = {_LATER.format('seq')},"
            f" latest_value = {_LATER.format('value')}",
            (orjson.dumps([_rollup_row(k, r) for k, r in zip(keys, runs, strict=True)]).decode(),),
        )
        await self._flush_distinct(cur, keys, runs)
        unbilled = [
            (k, reason, n)
            for k, r in zip(keys, runs, strict=True)
            for reason, n in r.unbilled.items()
        ]
        if unbilled:
            await cur.execute(
                f"INSERT INTO {self.unbilled} AS u"
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


# Of a conflicting rollup row's latest value and the incoming one, the later by
# timestamp then ledger seq (a missing one is never later). A CASE per column,
# not a subquery that sorted the two for every updated row. It relies on the
# three latest_* columns being set or missing together, as _rollup_row writes them.
_LATER: Final = (
    "CASE WHEN excluded.latest_at IS NOT NULL AND (r.latest_at IS NULL"
    " OR (excluded.latest_at, excluded.latest_seq) > (r.latest_at, r.latest_seq))"
    " THEN excluded.latest_{0} ELSE r.latest_{0} END"
)


def _rollup_row(key: RollupKey, run: Running) -> list[object]:
    """A rollup row as JSON values: decimals as exact strings, instants as text."""
    latest = run.latest
    return [
        key[0],
        key[1],
        key[2],
        _instant_text(key[3]),
        run.count,
        "0" if run.total is None else str(run.total),
        None if run.maximum is None else str(run.maximum),
        None if latest is None else format_instant(latest.occurred_at),
        None if latest is None else latest.seq,
        None if latest is None else str(latest.value),
    ]


@functools.lru_cache(maxsize=4096)
def _instant_text(bucket: datetime) -> str:
    return format_instant(bucket)  # hours repeat across a batch's rows


def _distinct_rows(
    keys: list[RollupKey], runs: list[Running]
) -> list[tuple[str, str, str, datetime, str]]:
    return [(*key, value) for key, run in zip(keys, runs, strict=True) for value in run.distinct]


def _by_event_type(metrics: Iterable[BillableMetric]) -> dict[str, list[BillableMetric]]:
    by_type: dict[str, list[BillableMetric]] = {}
    for metric in metrics:
        by_type.setdefault(metric.event_type, []).append(metric)
    return by_type


def _accumulate(
    pending: dict[RollupKey, Running],
    seq: int,
    event: UsageRecorded,
    metrics: Iterable[BillableMetric],
) -> None:
    for metric in metrics:
        if not matches(metric, event):
            continue
        group = encode_group(group_of(metric, event.properties))
        key = (event.customer_id, metric.metric_id, group, bucket_start(event.occurred_at))
        run = pending.get(key)  # one lookup of the four-part key, not two or three
        if run is None:
            run = pending[key] = Running()
        run.add(metric, event, seq)
