"""Audit view: who did what, when and why, for every action that is not usage.

One row per ledger event other than usage, with the actor, reason and request
id from its metadata, the customer it concerns (if any) and a one-line
summary. Queryable by customer, actor, kind and time range, oldest first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from ledger.app.streams import customer_stream
from ledger.core.alerts import AlertKind
from ledger.core.canonical import format_decimal, format_instant
from ledger.core.contracts import Amendment
from ledger.core.events import (
    EVENT_CLASSES,
    AccessDenied,
    BillableMetricCreated,
    ContractAmended,
    ContractCreated,
    ContractRegistered,
    CreditDrawnDown,
    CreditExpired,
    CreditGranted,
    CreditReversed,
    CustomerCreated,
    DomainEvent,
    InvoiceFinalized,
    InvoiceVoided,
    ProductCreated,
    RateCardDraftApproved,
    RateCardDrafted,
    RateCardDraftPublished,
    RateCardPublished,
    SpendAlertSet,
    SpendAlertTriggered,
    UsageRecorded,
)
from ledger.store.records import RecordedEvent

PAGE_SIZE_DEFAULT: Final = 100
PAGE_SIZE_MAX: Final = 1_000
# Bookkeeping events that are part of another action, not actions of their own.
# Bookkeeping written beside an action (the action has its own entry), and usage.
NOT_ACTIONS: Final = frozenset(
    {
        UsageRecorded.EVENT_TYPE,
        ContractRegistered.EVENT_TYPE,
        RateCardDraftPublished.EVENT_TYPE,
    }
)


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    recorded_at: datetime
    kind: str
    actor: str
    customer_id: str
    subject: str
    reason: str
    request_id: str
    summary: str


@dataclass(frozen=True)
class AuditQuery:
    customer_id: str = ""
    actor: str = ""
    kind: str = ""
    start: datetime | None = None
    end: datetime | None = None
    page_size: int = PAGE_SIZE_DEFAULT
    after_seq: int = 0


class AuditLog:
    """Projection ``audit_log``."""

    name = "audit_log"
    # Every action: usage and the bookkeeping beside actions are not read at all.
    event_types: Final = frozenset(EVENT_CLASSES) - NOT_ACTIONS

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.table = f"audit_entries_v{version}"

    def ddl(self) -> Sequence[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {self.table} (
                seq         bigint PRIMARY KEY,
                recorded_at timestamptz NOT NULL,
                kind        text NOT NULL,
                actor       text NOT NULL,
                customer_id text NOT NULL,
                subject     text NOT NULL,
                reason      text NOT NULL,
                request_id  text NOT NULL,
                summary     text NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS {self.table}_customer ON {self.table} (customer_id, seq)",
            f"CREATE INDEX IF NOT EXISTS {self.table}_actor ON {self.table} (actor, seq)",
            f"CREATE INDEX IF NOT EXISTS {self.table}_kind ON {self.table} (kind, seq)",
            f"CREATE INDEX IF NOT EXISTS {self.table}_time ON {self.table} (recorded_at)",
        ]

    def tables(self) -> Sequence[str]:
        return [self.table]

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[RecordedEvent],
        *,
        replaying: bool = False,  # no side effects to suppress
    ) -> None:
        rows = [entry_row(e) for e in events if e.event_type not in NOT_ACTIONS]
        if not rows:
            return
        await cur.executemany(
            f"INSERT INTO {self.table} (seq, recorded_at, kind, actor, customer_id, subject,"
            " reason, request_id, summary) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (seq) DO NOTHING",
            rows,
        )

    async def entries(self, conn: AsyncConnection[TupleRow], query: AuditQuery) -> list[AuditEntry]:
        """A page of entries matching every given filter, oldest first."""
        clauses: list[str] = ["seq > %s"]
        args: list[object] = [query.after_seq]
        for column, value in (
            ("customer_id", query.customer_id),
            ("actor", query.actor),
            ("kind", query.kind),
        ):
            if value:
                clauses.append(f"{column} = %s")
                args.append(value)
        if query.start is not None:
            clauses.append("recorded_at >= %s")
            args.append(query.start)
        if query.end is not None:
            clauses.append("recorded_at < %s")
            args.append(query.end)
        size = min(query.page_size or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        cur = await conn.execute(
            f"SELECT seq, recorded_at, kind, actor, customer_id, subject, reason, request_id,"
            f" summary FROM {self.table} WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT %s",
            (*args, size),
        )
        return [AuditEntry(*row) for row in await cur.fetchall()]


def entry_row(stored: RecordedEvent) -> tuple[object, ...]:
    metadata = json.loads(bytes(stored.metadata))
    customer_id, subject, summary = describe(stored.domain_event())
    return (
        stored.seq,
        stored.recorded_at,
        stored.event_type,
        metadata.get("actor", ""),
        customer_id or _stream_customer(stored.stream_id),
        subject,
        metadata.get("reason", ""),
        metadata.get("request_id", ""),
        summary,
    )


def _stream_customer(stream_id: str) -> str:
    """The customer whose stream holds an event that does not name its customer."""
    prefix = customer_stream("")
    return stream_id.removeprefix(prefix) if stream_id.startswith(prefix) else ""


def describe(event: DomainEvent) -> tuple[str, str, str]:
    """``(customer_id, subject, summary)`` of an action."""
    describer = _DESCRIBERS.get(type(event))
    return describer(event) if describer is not None else ("", "", type(event).__name__)


def _customer(event: CustomerCreated) -> tuple[str, str, str]:
    return event.customer_id, event.customer_id, f"created customer {event.name!r}"


def _contract(event: ContractCreated) -> tuple[str, str, str]:
    c = event.contract
    pin = f" pinned to v{c.pinned_version}" if c.pinned_version else ""
    summary = f"created contract on {c.rate_card_id}{pin} from {format_instant(c.starts_at)}"
    return c.customer_id, c.contract_id, summary


def _amended(event: ContractAmended) -> tuple[str, str, str]:
    """The customer is the stream's: an amendment names only its contract."""
    a = event.amendment
    changes = "; ".join(_amendment_parts(a))
    return "", a.contract_id, f"amended contract from {format_instant(a.effective_at)}: {changes}"


def _amendment_parts(a: Amendment) -> list[str]:
    parts = []
    if a.plan is not None:
        pin = f" pinned to v{a.plan.pinned_version}" if a.plan.pinned_version else ""
        parts.append(f"plan {a.plan.rate_card_id}{pin}")
    if a.add_overrides:
        parts.append(f"added overrides {', '.join(o.override_id for o in a.add_overrides)}")
    if a.end_overrides:
        parts.append(f"ended overrides {', '.join(a.end_overrides)}")
    if a.change_term:
        parts.append(f"ends {format_instant(a.ends_at)}" if a.ends_at else "open-ended")
    return parts


def _finalized(event: InvoiceFinalized) -> tuple[str, str, str]:
    i = event.invoice
    summary = f"finalized {i.invoice_id}: {i.total} {i.currency}"
    return i.customer_id, i.invoice_id, f"{summary} through seq {i.computed_through_seq}"


def _voided(event: InvoiceVoided) -> tuple[str, str, str]:
    summary = f"voided {event.invoice_id}; {event.replacement_id} bills its period"
    return "", event.invoice_id, summary


def _granted(event: CreditGranted) -> tuple[str, str, str]:
    g = event.grant
    until = f" until {format_instant(g.expires_at)}" if g.expires_at else ""
    rolled = (
        f", rolled over from {g.rolled_over_from} by {event.invoice_id}" if event.invoice_id else ""
    )
    summary = f"granted {g.kind.value} {g.grant_id}: {g.amount} {g.currency}{until}{rolled}"
    return g.customer_id, g.grant_id, summary


def _drawn(event: CreditDrawnDown) -> tuple[str, str, str]:
    return "", event.grant_id, f"{event.invoice_id} drew {event.amount} from {event.grant_id}"


def _expired(event: CreditExpired) -> tuple[str, str, str]:
    summary = f"{event.amount} of {event.grant_id} expired {format_instant(event.at)}"
    return "", event.grant_id, f"{summary} (entered by {event.invoice_id})"


def _reversed(event: CreditReversed) -> tuple[str, str, str]:
    summary = f"gave {event.amount} back to {event.grant_id}: {event.invoice_id} was voided"
    return "", event.grant_id, summary


def _published(event: RateCardPublished) -> tuple[str, str, str]:
    card = event.rate_card
    subject = f"{card.rate_card_id} v{card.version}"
    return "", subject, f"published {subject} effective {format_instant(card.effective_from)}"


def _drafted(event: RateCardDrafted) -> tuple[str, str, str]:
    card = event.rate_card
    subject = f"{card.rate_card_id} draft {event.draft}"
    restores = f" restoring v{event.copy_of_version}" if event.copy_of_version else ""
    effective = format_instant(card.effective_from)
    return "", subject, f"drafted {subject}{restores} effective {effective}"


def _approved(event: RateCardDraftApproved) -> tuple[str, str, str]:
    subject = f"{event.rate_card_id} draft {event.draft}"
    return "", subject, f"approved {subject}"


def _denied(event: AccessDenied) -> tuple[str, str, str]:
    return "", event.method, f"denied {event.method} to {event.principal!r}: {event.reason}"


def _product(event: ProductCreated) -> tuple[str, str, str]:
    return "", event.product.product_id, f"created product {event.product.name!r}"


def _metric(event: BillableMetricCreated) -> tuple[str, str, str]:
    m = event.metric
    return "", m.metric_id, f"created metric {m.aggregation.value} of {m.event_type}"


def _alert_set(event: SpendAlertSet) -> tuple[str, str, str]:
    a = event.alert
    watched = "period spend reaches" if a.kind is AlertKind.PERIOD_SPEND else "balance falls to"
    threshold = f"{format_decimal(a.threshold)} {a.currency}"
    return a.customer_id, a.alert_id, f"set alert {a.alert_id}: when {watched} {threshold}"


def _alert_triggered(event: SpendAlertTriggered) -> tuple[str, str, str]:
    e = event
    summary = (
        f"alert {e.alert_id} crossed ({e.crossing_key}): {format_decimal(e.value)}"
        f" against threshold {format_decimal(e.threshold)}"
    )
    return e.customer_id, e.alert_id, summary


_DESCRIBERS: Final[dict[type[DomainEvent], Callable[[Any], tuple[str, str, str]]]] = {
    CustomerCreated: _customer,
    ContractCreated: _contract,
    ContractAmended: _amended,
    InvoiceFinalized: _finalized,
    InvoiceVoided: _voided,
    CreditGranted: _granted,
    CreditDrawnDown: _drawn,
    CreditExpired: _expired,
    CreditReversed: _reversed,
    RateCardPublished: _published,
    RateCardDrafted: _drafted,
    AccessDenied: _denied,
    RateCardDraftApproved: _approved,
    ProductCreated: _product,
    BillableMetricCreated: _metric,
    SpendAlertSet: _alert_set,
    SpendAlertTriggered: _alert_triggered,
}
