"""Verify the ledger: gapless seq, contiguous stream versions, and the hash chain.

Reads rows in bounded batches, so memory stays flat however long the ledger.
The first broken row is reported with its position and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.store.chain import GENESIS_HASH, row_hash
from ledger.store.event_store import PostgresEventStore
from ledger.store.records import StoredEvent


@dataclass(frozen=True)
class Breach:
    """Where and why verification failed."""

    seq: int
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    events_checked: int
    last_seq: int
    last_hash: bytes
    breach: Breach | None

    @property
    def ok(self) -> bool:
        return self.breach is None


def recompute_hash(event: StoredEvent, prev_hash: bytes) -> bytes:
    """The hash a row must carry given its predecessor's hash."""
    return row_hash(
        prev_hash=prev_hash,
        seq=event.seq,
        partition=event.partition,
        stream_id=event.stream_id,
        stream_version=event.stream_version,
        event_type=event.event_type,
        schema_version=event.schema_version,
        payload=bytes(event.payload),
        metadata=bytes(event.metadata),
        occurred_at=event.occurred_at,
        recorded_at=event.recorded_at,
        idempotency_key=event.idempotency_key,
        request_hash=event.request_hash,
    )


def check_row(
    event: StoredEvent, expected_seq: int, prev_hash: bytes, stream_versions: dict[str, int]
) -> str | None:
    """Why ``event`` breaks the ledger's rules, or None if it does not."""
    if event.seq != expected_seq:
        return f"seq gap: expected {expected_seq}, found {event.seq}"
    if bytes(event.prev_hash) != prev_hash:
        return "prev_hash does not match the previous row's hash"
    if recompute_hash(event, prev_hash) != bytes(event.hash):
        return "hash does not match the row's content"
    expected_version = stream_versions.get(event.stream_id, 0) + 1
    if event.stream_version != expected_version:
        return (
            f"stream {event.stream_id} version {event.stream_version}, expected {expected_version}"
        )
    return None


async def verify_ledger(store: PostgresEventStore, up_to_seq: int | None = None) -> VerifyReport:
    """Check the whole chain from genesis through ``up_to_seq`` (default: head)."""
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    stream_versions: dict[str, int] = {}
    async for event in store.scan(0, up_to_seq):
        reason = check_row(event, expected_seq, prev_hash, stream_versions)
        if reason is not None:
            # A gap is reported where the missing event belongs, not at its successor.
            where = min(event.seq, expected_seq)
            return VerifyReport(checked, expected_seq - 1, prev_hash, Breach(where, reason))
        stream_versions[event.stream_id] = event.stream_version
        prev_hash, expected_seq, checked = bytes(event.hash), expected_seq + 1, checked + 1
    head = await store.head()
    last = head.seq if up_to_seq is None else min(up_to_seq, head.seq)
    if expected_seq - 1 != last:
        return VerifyReport(checked, expected_seq - 1, prev_hash, Breach(expected_seq, "missing"))
    if up_to_seq is None and head.hash != prev_hash:
        breach = Breach(last, "head hash does not match the chain")
        return VerifyReport(checked, last, prev_hash, breach)
    return VerifyReport(checked, last, prev_hash, None)
