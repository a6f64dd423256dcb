"""Run a command: answer retries from the ledger, else decide and append atomically.

A command with a request id is idempotent: a retry with the same content gets
the original result, before any rule is checked again (the world may have
moved on since); the same request id with other content is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.app.context import RequestContext, request_hash
from ledger.core.errors import DomainError, Rule
from ledger.core.events import DomainEvent
from ledger.store.event_store import PostgresEventStore
from ledger.store.records import Appended, Duplicate, NewEvent


@dataclass(frozen=True)
class Write:
    """One event of a command, for a stream expected at a version (None: any)."""

    stream_id: str
    event: DomainEvent
    expected_version: int | None


@dataclass(frozen=True)
class Command:
    """A named command and its content, hashed for idempotency.

    ``exists_rule`` is the error when the first write, expected at version 0,
    finds its stream already there.
    """

    name: str
    content: Any
    exists_rule: Rule


Decide = Callable[[], Awaitable[Sequence[Write]]]


async def run_command(
    store: PostgresEventStore,
    ctx: RequestContext,
    command: Command,
    decide: Decide,
    occurred_at: datetime,
) -> tuple[DomainEvent, int]:
    """Return the command's first event and its seq: the original one for a retry."""
    key = ctx.idempotency_key(command.name)
    digest = request_hash(command.content)
    if key is not None and (earlier := await store.find_key(key)) is not None:
        return await _original(store, ctx, command, earlier, digest)
    try:
        writes = await decide()
    except DomainError:
        if key is not None and (earlier := await store.find_key(key)) is not None:
            return await _original(store, ctx, command, earlier, digest)
        raise
    new_events = [
        NewEvent(
            stream_id=write.stream_id,
            event=write.event,
            occurred_at=occurred_at,
            metadata=ctx.metadata(),
            idempotency_key=key if index == 0 else None,
            request_hash=digest if index == 0 else None,
            expected_version=write.expected_version,
        )
        for index, write in enumerate(writes)
    ]
    try:
        outcomes = await store.append(new_events)
    except DomainError as error:
        # A concurrent retry of the same request may have won the race: answer as it.
        if key is not None and (earlier := await store.find_key(key)) is not None:
            return await _original(store, ctx, command, earlier, digest)
        if error.rule is Rule.STREAM_VERSION_CONFLICT and writes[0].expected_version == 0:
            message = f"{writes[0].stream_id} already exists"
            raise DomainError(command.exists_rule, message) from error
        raise
    first = outcomes[0]
    if isinstance(first, Appended):
        return writes[0].event, first.seq
    # A concurrent retry committed between our check and our append.
    same = isinstance(first, Duplicate)
    return await _original(store, ctx, command, (first.seq, digest if same else None), digest)


async def _original(
    store: PostgresEventStore,
    ctx: RequestContext,
    command: Command,
    earlier: tuple[int, str | None],
    digest: str,
) -> tuple[DomainEvent, int]:
    seq, earlier_digest = earlier
    if earlier_digest != digest:
        raise DomainError(
            Rule.IDEMPOTENCY_KEY_REUSED,
            f"request_id {ctx.request_id!r} was already used for a different {command.name}",
        )
    original = await store.read_at(seq)
    return original.domain_event(), seq
