"""The invoice lifecycle's rules: finalize in period order, enter balances, void.

A finalized invoice never changes. Finalizing enters its drawdowns and the
expiry (and rollover) of every balance lapsing by its period's end; voiding
gives back every entry the finalization made, and the period is billed again
by a replacement revision. Both go in period order across all of a customer's
contracts (balances are the customer's): a period is finalized only after
every period that ended before it, and only an invoice with nothing finalized
after it is voided, so nothing billed later depends on what is given back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from ledger.core.billing import (
    PERIOD_NUMBER_MAX,
    CustomerState,
    InvoiceRef,
    contract_period,
    current_invoice_id,
    invoice_id,
)
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
    """Periods are finalized in order, across all of a customer's contracts: its
    balances, their expiries and late usage are the customer's, not one contract's."""
    contract = customer.contracts[ref.contract_id]
    period = contract_period(contract, ref.number)
    assert period is not None
    for earlier_id in _ended_by(customer, period.start):
        if earlier_id not in customer.finalized:
            raise DomainError(
                Rule.EARLIER_PERIOD_OPEN, f"finalize {earlier_id} before {ref.invoice_id}"
            )


def _ended_by(customer: CustomerState, instant: datetime) -> Iterator[str]:
    """The current invoice ids of every period of the customer ending by ``instant``."""
    for contract in customer.contracts.values():
        for number in range(1, PERIOD_NUMBER_MAX + 1):
            period = contract_period(contract, number)
            if period is None or period.end > instant:
                break
            yield current_invoice_id(customer, contract.contract_id, number)


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
    """Voiding: a finalized invoice with no later one of the customer's finalized,
    once; every balance entry its finalization made is reversed."""
    voided_id = ref.invoice_id
    if voided_id in customer.voided:
        raise DomainError(Rule.INVOICE_ALREADY_VOIDED, f"{voided_id} is already voided")
    if voided_id not in customer.finalized:
        raise DomainError(Rule.INVOICE_NOT_FINALIZED, f"{voided_id} is not finalized")
    voided = customer.finalized[voided_id].invoice
    for later_id, later in customer.finalized.items():
        standing = later_id not in customer.voided and later_id != voided_id
        if standing and later.invoice.period_start >= voided.period_end:
            raise DomainError(
                Rule.INVOICE_NOT_LATEST,
                f"{later_id} was finalized after {voided_id}; void the later ones first",
            )
    replacement = invoice_id(ref.contract_id, ref.number, ref.revision + 1)
    events: list[DomainEvent] = [InvoiceVoided(voided_id, replacement)]
    events += [
        CreditReversed(entry.grant_id, voided_id, -entry.amount, now)
        for entry in customer.balances.caused_by(voided_id)
    ]
    return events
