"""The invoice lifecycle's rules: finalize in period order, enter balances, void.

A finalized invoice never changes. Finalizing enters its drawdowns and the
expiry (and rollover) of every balance lapsing by its period's end; voiding
gives back every entry the finalization made, and the period is billed again
by a replacement revision. Only a contract's latest finalized invoice can be
voided, so nothing billed after it depends on what is given back.
"""

from __future__ import annotations

from datetime import datetime

from ledger.core.billing import CustomerState, InvoiceRef, invoice_id
from ledger.core.errors import DomainError, Rule
from ledger.core.events import (
    CreditDrawnDown,
    CreditExpired,
    CreditGranted,
    CreditReversed,
    DomainEvent,
    InvoiceFinalized,
    InvoiceVoided,
)
from ledger.core.invoice import Invoice, minor_unit_places
from ledger.core.settlement import closing_entries


def check_earlier_periods_final(customer: CustomerState, ref: InvoiceRef) -> None:
    """Periods are finalized in order: balances, expiries and late usage depend on it."""
    if ref.number == 1:
        return
    earlier = ref.number - 1
    revision = customer.current_revision(ref.contract_id, earlier)
    earlier_id = invoice_id(ref.contract_id, earlier, revision)
    if earlier_id not in customer.finalized:
        raise DomainError(
            Rule.EARLIER_PERIOD_OPEN, f"finalize {earlier_id} before {ref.invoice_id}"
        )


def finalization_events(
    invoice: Invoice, sha256: str, customer: CustomerState, now: datetime
) -> list[DomainEvent]:
    """The invoice, its drawdowns, and the expiries (and rollovers) it closes."""
    decimals = minor_unit_places(invoice)
    events: list[DomainEvent] = [InvoiceFinalized(invoice, sha256)]
    events += [
        CreditDrawnDown(credit.grant_id, invoice.invoice_id, credit.amount, now)
        for credit in invoice.credits
    ]
    for expiry in closing_entries(invoice, customer.balances, decimals):
        events.append(CreditExpired(expiry.grant_id, invoice.invoice_id, expiry.amount, expiry.at))
        if expiry.rollover is not None:
            events.append(CreditGranted(expiry.rollover, invoice.invoice_id))
    return events


def void_events(customer: CustomerState, ref: InvoiceRef, now: datetime) -> list[DomainEvent]:
    """Voiding: only the contract's latest finalized invoice, once; every balance
    entry its finalization made is reversed."""
    voided_id = ref.invoice_id
    if voided_id in customer.voided:
        raise DomainError(Rule.INVOICE_ALREADY_VOIDED, f"{voided_id} is already voided")
    if voided_id not in customer.finalized:
        raise DomainError(Rule.INVOICE_NOT_FINALIZED, f"{voided_id} is not finalized")
    last = customer.last_finalized(ref.contract_id)
    if last is None or last[0] != ref.number:
        raise DomainError(
            Rule.INVOICE_NOT_LATEST,
            f"{voided_id} is followed by a finalized invoice; void the later ones first",
        )
    replacement = invoice_id(ref.contract_id, ref.number, ref.revision + 1)
    events: list[DomainEvent] = [InvoiceVoided(voided_id, replacement)]
    events += [
        CreditReversed(entry.grant_id, voided_id, -entry.amount, now)
        for entry in customer.balances.caused_by(voided_id)
    ]
    return events
