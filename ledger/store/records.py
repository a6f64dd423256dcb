"""The storage boundary: what is appended and what is read back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple, Protocol

from ledger.core.canonical import canonical_json
from ledger.core.events import (
    DomainEvent,
    UsageRecorded,
    from_payload,
    to_payload,
    usage_from_bytes,
)

ANY_VERSION = None
NEW_STREAM = 0
_NO_METADATA: Mapping[str, str] = MappingProxyType({})


class NewEvent(NamedTuple):
    """An event to append. ``expected_version`` None appends at any version.

    A named tuple, like :class:`StoredEvent`: batched ingest builds one per usage
    event, and a frozen dataclass sets each field through ``object.__setattr__``.
    """

    stream_id: str
    event: DomainEvent
    occurred_at: datetime
    metadata: Mapping[str, str] = _NO_METADATA
    idempotency_key: str | None = None
    request_hash: str | None = None
    expected_version: int | None = ANY_VERSION
    # The payload's canonical bytes, and their SHA-256 in hex, when the caller
    # already has them (usage hashes them for idempotency): encoded and hashed
    # once, not twice, on the hot path.
    payload: bytes | None = None
    payload_sha256: str | None = None
    # ``occurred_at`` as the chain's header writes it (format_instant), when the
    # caller already wrote it into the payload: formatted once, not twice.
    occurred_at_text: str | None = None

    def payload_bytes(self) -> bytes:
        return self.payload if self.payload is not None else canonical_json(to_payload(self.event))


class StoredEvent(NamedTuple):
    """One row of the ledger, exactly as stored.

    A named tuple, not a frozen dataclass: projections, drafts and replays build
    one per row read, and a frozen dataclass sets each of its fourteen fields
    through ``object.__setattr__`` (a seventh of a rollup rebuild's time).
    """

    seq: int
    partition: int
    stream_id: str
    stream_version: int
    event_type: str
    schema_version: int
    payload: bytes
    metadata: bytes
    occurred_at: datetime
    recorded_at: datetime
    idempotency_key: str | None
    request_hash: str | None
    prev_hash: bytes
    hash: bytes

    def domain_event(self) -> DomainEvent:
        """The payload as a domain event, upcast to the current schema."""
        return decode_payload(self.event_type, self.schema_version, self.payload)


class ProjectedEvent(NamedTuple):
    """A ledger row as projections read it: without the chain's hashes, the
    idempotency columns, the stream version and the partition, which no
    projection uses. Reading eight columns instead of fourteen took a usage
    rollup rebuild from about 91,000 to 95,000 events/s."""

    seq: int
    stream_id: str
    event_type: str
    schema_version: int
    payload: bytes
    metadata: bytes
    occurred_at: datetime
    recorded_at: datetime

    def domain_event(self) -> DomainEvent:
        """The payload as a domain event, upcast to the current schema."""
        return decode_payload(self.event_type, self.schema_version, self.payload)


class RecordedEvent(Protocol):
    """What a projection may read of a ledger row: a :class:`ProjectedEvent` as the
    projection runner gives it, or a whole :class:`StoredEvent`."""

    @property
    def seq(self) -> int: ...
    @property
    def stream_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def metadata(self) -> bytes: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def recorded_at(self) -> datetime: ...
    def domain_event(self) -> DomainEvent: ...


def decode_payload(event_type: str, schema_version: int, payload: bytes) -> DomainEvent:
    """A stored payload as its domain event, upcast to the current schema."""
    if event_type == UsageRecorded.EVENT_TYPE:
        return usage_from_bytes(schema_version, payload)
    # Stored payloads are UTF-8: decoded as text, json.loads skips sniffing it.
    return from_payload(event_type, schema_version, json.loads(payload.decode()))


class TouchedStreams(NamedTuple):
    """The streams a run of events wrote to, how many events, and the last one's seq."""

    last_seq: int
    events: int
    stream_ids: list[str]


@dataclass(frozen=True)
class Appended:
    seq: int
    stream_version: int


@dataclass(frozen=True)
class Duplicate:
    """The idempotency key was seen with the same request: the original result."""

    seq: int


@dataclass(frozen=True)
class KeyReused:
    """The idempotency key was seen with a different request: refused."""

    seq: int


AppendOutcome = Appended | Duplicate | KeyReused


@dataclass(frozen=True)
class NoneAfter:
    """A condition on an append: the ledger holds no event of ``event_types`` after
    ``seq``. A caller that decided what to write from what it had read through
    ``seq`` (the billable metrics, say) writes only if that is still all there is.
    Usage events cannot be named: the check reads the index that leaves them out."""

    event_types: tuple[str, ...]
    seq: int

    def __post_init__(self) -> None:
        assert "UsageRecorded" not in self.event_types, "a condition cannot name usage"

    def holds_through(self, newest: int) -> bool:
        """Whether this holds when ``newest`` is the newest event of its types."""
        return self.seq >= newest


class ConditionFailedError(Exception):
    """An append's :class:`NoneAfter` no longer held (an event of its types is at
    ``newest``); nothing was written."""

    def __init__(self, condition: NoneAfter, newest: int) -> None:
        super().__init__(
            f"an event of {', '.join(condition.event_types)} at seq {newest},"
            f" after seq {condition.seq}"
        )
        self.condition = condition
        self.newest = newest
