"""Security facts that belong in the ledger: calls refused to a known principal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ledger.app.context import RequestContext
from ledger.app.streams import access_stream
from ledger.core.events import AccessDenied
from ledger.store.event_store import PostgresEventStore
from ledger.store.records import NewEvent


class AccessAudit:
    """Appends an :class:`AccessDenied` for every refused call, so denials sit in
    the same tamper-evident trail (and ``ListAuditEntries``) as every change."""

    def __init__(self, store: PostgresEventStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    async def denied(self, method: str, reason: str, ctx: RequestContext) -> None:
        event = AccessDenied(principal=ctx.actor, method=method, reason=reason)
        await self._store.append(
            [
                NewEvent(
                    stream_id=access_stream(ctx.actor),
                    event=event,
                    occurred_at=self._clock(),
                    metadata=ctx.metadata(),
                )
            ]
        )
