"""Verify the ledger: gapless seq, contiguous stream versions, and the hash chain.

Reads rows in bounded batches, so memory stays flat however long the ledger.
The first broken row is reported with its position and the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
    done: bool = True

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
    """Why ``event`` breaks the ledger's rules, or None if it does not.

    Its stream's version is checked against ``stream_versions`` when the
    stream is there (the caller decides where a stream's count starts).
    """
    if event.seq != expected_seq:
        return f"seq gap: expected {expected_seq}, found {event.seq}"
    if bytes(event.prev_hash) != prev_hash:
        return "prev_hash does not match the previous row's hash"
    if recompute_hash(event, prev_hash) != bytes(event.hash):
        return "hash does not match the row's content"
    if event.stream_id in stream_versions:
        expected_version = stream_versions[event.stream_id] + 1
        if event.stream_version != expected_version:
            return (
                f"stream {event.stream_id} version {event.stream_version},"
                f" expected {expected_version}"
            )
    return None


PROGRESS_EVERY = 50_000


async def verify_progress(
    store: PostgresEventStore,
    from_seq: int = 1,
    to_seq: int | None = None,
    every: int = PROGRESS_EVERY,
) -> AsyncIterator[VerifyReport]:
    """Check seq gaps, stream versions and the chain over ``[from_seq, to_seq]``.

    Yields a report every ``every`` events and a final one; the first breach
    ends the run. A range that starts after genesis trusts its first row's
    ``prev_hash``, and takes each stream's first version in the range as given.
    """
    head = await store.head()
    last = head.seq if to_seq is None else min(to_seq, head.seq)
    if from_seq > last:
        # Nothing to check is not a breach; callers refuse ranges that make no sense.
        yield VerifyReport(0, from_seq - 1, b"", None, done=True)
        return
    state = _Walk(expected_seq=from_seq, prev_hash=GENESIS_HASH if from_seq <= 1 else None)
    async for event in store.scan(from_seq - 1, last):
        breach = state.step(event, genesis=from_seq <= 1)
        if breach is not None:
            yield state.report(breach, done=True)
            return
        if state.checked % every == 0:
            yield state.report(None, done=False)
    if state.expected_seq - 1 != last:
        yield state.report(Breach(state.expected_seq, "missing: the ledger ends early"), done=True)
    elif to_seq is None and state.prev_hash is not None and head.hash != state.prev_hash:
        yield state.report(Breach(last, "head hash does not match the chain"), done=True)
    else:
        yield state.report(None, done=True)


@dataclass
class _Walk:
    expected_seq: int
    prev_hash: bytes | None
    checked: int = 0

    def __post_init__(self) -> None:
        self.versions: dict[str, int] = {}

    def step(self, event: StoredEvent, *, genesis: bool) -> Breach | None:
        prev = self.prev_hash if self.prev_hash is not None else bytes(event.prev_hash)
        if not genesis and event.stream_id not in self.versions:
            self.versions[event.stream_id] = event.stream_version - 1
        elif genesis:
            self.versions.setdefault(event.stream_id, 0)
        reason = check_row(event, self.expected_seq, prev, self.versions)
        if reason is not None:
            # A gap is reported where the missing event belongs, not at its successor.
            return Breach(min(event.seq, self.expected_seq), reason)
        self.versions[event.stream_id] = event.stream_version
        self.prev_hash, self.expected_seq = bytes(event.hash), self.expected_seq + 1
        self.checked += 1
        return None

    def report(self, breach: Breach | None, *, done: bool) -> VerifyReport:
        last_hash = self.prev_hash if self.prev_hash is not None else b""
        return VerifyReport(self.checked, self.expected_seq - 1, last_hash, breach, done)


async def verify_ledger(store: PostgresEventStore, up_to_seq: int | None = None) -> VerifyReport:
    """Check the whole chain from genesis through ``up_to_seq`` (default: head)."""
    final = None
    async for report in verify_progress(store, 1, up_to_seq):
        final = report
    assert final is not None, "verify_progress always ends with a final report"
    return final
