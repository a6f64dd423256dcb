"""How the audit commands print: readable reports, canonical JSON lines, CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence

from ledger.app.audit import ReplayedInvoice, SimulationRow
from ledger.core.canonical import canonical_json, format_decimal, format_instant
from ledger.core.codec import encode
from ledger.core.invoice import Invoice
from ledger.store.records import StoredEvent
from projections.audit_log import AuditEntry


def event_json(event: StoredEvent) -> dict[str, object]:
    return {
        "seq": event.seq,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "payload": json.loads(bytes(event.payload)),
        "metadata": json.loads(bytes(event.metadata)),
        "occurred_at": format_instant(event.occurred_at),
        "recorded_at": format_instant(event.recorded_at),
        "prev_hash": bytes(event.prev_hash).hex(),
        "hash": bytes(event.hash).hex(),
    }


def replayed_json(item: ReplayedInvoice) -> dict[str, object]:
    return {
        "status": item.status,
        "replayed_sha256": item.sha256,
        "recorded_sha256": item.recorded_sha256,
        "matches": item.matches,
        "invoice": encode(item.invoice),
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    every = [tuple(headers), *(tuple(row) for row in rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*every, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in every
    )


def csv_text(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue()


def json_line(kind: str, body: dict[str, object]) -> str:
    """One canonical JSON line: the same history always prints the same bytes."""
    return canonical_json({kind: body}).decode()


def event_line(event: StoredEvent) -> str:
    payload = bytes(event.payload).decode()
    if len(payload) > 160:
        payload = payload[:157] + "..."
    return (
        f"  #{event.seq:<8} {format_instant(event.recorded_at)}  {event.event_type:<22}"
        f" {event.stream_id} v{event.stream_version}  {payload}"
    )


def invoice_block(item: ReplayedInvoice) -> str:
    invoice = item.invoice
    verdict = {True: "MATCH", False: "MISMATCH", None: ""}[item.matches]
    lines = [
        f"  {invoice.invoice_id}  {item.status}  {_period(invoice)}"
        f"  total {format_decimal(invoice.total)} {invoice.currency}  {verdict}",
        f"    through seq {invoice.computed_through_seq}, rate card {invoice.rate_card_id}"
        f" versions {', '.join(str(v) for v in invoice.rate_card_versions) or '-'}",
        f"    replayed sha256 {item.sha256}",
    ]
    if item.recorded_sha256:
        lines.append(f"    recorded sha256 {item.recorded_sha256}")
    lines += [f"    {line}" for line in line_explanations(invoice)]
    return "\n".join(lines)


def line_explanations(invoice: Invoice) -> list[str]:
    rendered = []
    for line in invoice.lines:
        groups = ",".join(f"{k}={v}" for k, v in sorted(line.group_values.items()))
        label = f"{line.product_id}{f'[{groups}]' if groups else ''} v{line.rate_card_version}"
        rendered.append(f"{label} ({line.model.value}): {line.explanation} {invoice.currency}")
    rendered += [
        f"unbilled {u.metric_id}: {u.event_count} events, {u.reason}" for u in invoice.unbilled
    ]
    return rendered


def _period(invoice: Invoice) -> str:
    return f"{invoice.period_start:%Y-%m-%d %H:%M}..{invoice.period_end:%Y-%m-%d %H:%M} UTC"


SIMULATION_COLUMNS = (
    "customer_id",
    "invoice_id",
    "period_start",
    "period_end",
    "status",
    "currency",
    "current_total",
    "simulated_total",
    "delta",
)


def simulation_csv(rows: Iterable[SimulationRow]) -> str:
    return csv_text(SIMULATION_COLUMNS, (_simulation_cells(row) for row in rows))


def simulation_table(rows: list[SimulationRow], totals: dict[str, tuple[object, object]]) -> str:
    lines = [table(SIMULATION_COLUMNS, (_simulation_cells(row) for row in rows))]
    for currency, (current, simulated) in sorted(totals.items()):
        delta = simulated - current  # type: ignore[operator]
        lines.append(f"total {currency}: current {current}, simulated {simulated}, delta {delta}")
    return "\n".join(lines)


def _simulation_cells(row: SimulationRow) -> tuple[str, ...]:
    return (
        row.customer_id,
        row.invoice_id,
        format_instant(row.period_start),
        format_instant(row.period_end),
        row.status,
        row.currency,
        format_decimal(row.current_total),
        format_decimal(row.simulated_total),
        format_decimal(row.delta),
    )


def audit_line(entry: AuditEntry) -> str:
    reason = f"  reason: {entry.reason}" if entry.reason else ""
    return (
        f"#{entry.seq:<8} {format_instant(entry.recorded_at)}  {entry.actor:<16}"
        f" {entry.kind:<22} {entry.summary}{reason}"
    )


def audit_json(entry: AuditEntry) -> str:
    body = {
        "seq": entry.seq,
        "recorded_at": format_instant(entry.recorded_at),
        "kind": entry.kind,
        "actor": entry.actor,
        "customer_id": entry.customer_id,
        "subject": entry.subject,
        "reason": entry.reason,
        "request_id": entry.request_id,
        "summary": entry.summary,
    }
    return canonical_json(body).decode()
