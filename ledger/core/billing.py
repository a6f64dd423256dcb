"""A customer's billing state folded from its events, and its contract periods.

``evolve(state, event) -> state`` is the only way state changes; loading a
customer is folding its stream. Invoice ids name the contract and the period's
number within the contract (1 for the first period), so they are stable and
can be resolved back to a period without any lookup table. A voided invoice's
replacement adds its revision: ``in-<contract>-<n>-r1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from ledger.core.catalog import Contract
from ledger.core.contracts import amend
from ledger.core.credits import BalanceBook, BalanceEntry, EntryKind
from ledger.core.events import (
    ContractAmended,
    ContractCreated,
    CreditDrawnDown,
    CreditExpired,
    CreditGranted,
    CreditReversed,
    CustomerCreated,
    DomainEvent,
    InvoiceFinalized,
    InvoiceVoided,
)
from ledger.core.periods import Period, period_at, period_index

# Monthly periods for 800+ years: more than any contract, small enough for datetimes.
PERIOD_NUMBER_MAX = 10_000


@dataclass(frozen=True)
class CustomerState:
    """Everything billing needs to know about one customer."""

    customer_id: str
    name: str = ""
    exists: bool = False
    contracts: dict[str, Contract] = field(default_factory=dict)
    contract_versions: dict[str, int] = field(default_factory=dict)
    finalized: dict[str, InvoiceFinalized] = field(default_factory=dict)
    voided: dict[str, InvoiceVoided] = field(default_factory=dict)
    balances: BalanceBook = field(default_factory=BalanceBook)
    version: int = 0

    def current_revision(self, contract_id: str, number: int) -> int:
        """How many times the period's invoice has been voided (its live revision)."""
        revision = 0
        while invoice_id(contract_id, number, revision) in self.voided:
            revision += 1
        return revision

    def last_finalized(self, contract_id: str) -> tuple[int, InvoiceFinalized] | None:
        """The contract's latest period whose current invoice is finalized, with it."""
        latest: tuple[int, InvoiceFinalized] | None = None
        for ref, event in self.finalized.items():
            parsed = parse_invoice_ref(ref)
            assert parsed is not None
            standing = parsed.contract_id == contract_id and ref not in self.voided
            if standing and (latest is None or parsed.number > latest[0]):
                latest = (parsed.number, event)
        return latest


def evolve(state: CustomerState, event: DomainEvent, stream_version: int) -> CustomerState:
    """The state after ``event`` (stored at ``stream_version`` of the customer stream)."""
    state = replace(state, version=stream_version)
    if isinstance(event, CustomerCreated):
        return replace(state, name=event.name, exists=True)
    if isinstance(event, ContractCreated | ContractAmended):
        return _evolve_contract(state, event, stream_version)
    if isinstance(event, InvoiceFinalized):
        return replace(state, finalized={**state.finalized, event.invoice.invoice_id: event})
    if isinstance(event, InvoiceVoided):
        book = state.balances.void(event.invoice_id)
        return replace(state, voided={**state.voided, event.invoice_id: event}, balances=book)
    return replace(state, balances=_evolve_balances(state.balances, event))


def _evolve_contract(
    state: CustomerState, event: ContractCreated | ContractAmended, stream_version: int
) -> CustomerState:
    if isinstance(event, ContractCreated):
        contract = event.contract
    else:
        contract = amend(state.contracts[event.amendment.contract_id], event.amendment)
    return replace(
        state,
        contracts={**state.contracts, contract.contract_id: contract},
        contract_versions={**state.contract_versions, contract.contract_id: stream_version},
    )


def _evolve_balances(book: BalanceBook, event: DomainEvent) -> BalanceBook:
    if isinstance(event, CreditGranted):
        return book.grant(event.grant, event.grant.starts_at, event.invoice_id)
    if isinstance(event, CreditDrawnDown):
        entry = BalanceEntry(
            event.grant_id, EntryKind.DRAWN_DOWN, -event.amount, event.at, event.invoice_id
        )
        return book.record(entry)
    if isinstance(event, CreditExpired):
        entry = BalanceEntry(
            event.grant_id, EntryKind.EXPIRED, -event.amount, event.at, event.invoice_id
        )
        return book.record(entry)
    if isinstance(event, CreditReversed):
        entry = BalanceEntry(
            event.grant_id, EntryKind.REVERSED, event.amount, event.at, event.invoice_id
        )
        return book.record(entry)
    return book


def contract_period(contract: Contract, number: int) -> Period | None:
    """The contract's ``number``-th billing period (1-based), clipped to its term."""
    if not 1 <= number <= PERIOD_NUMBER_MAX:
        return None
    first = period_index(contract.billing_anchor, contract.starts_at)
    try:
        raw = period_at(contract.billing_anchor, first + number - 1)
    except (ValueError, OverflowError):  # beyond the year 9999
        return None
    return raw.clip(contract.starts_at, contract.ends_at)


def period_number_at(contract: Contract, instant: datetime) -> int | None:
    """Number of the contract period containing ``instant``, or None outside the term."""
    if not contract.is_active_at(instant):
        return None
    first = period_index(contract.billing_anchor, contract.starts_at)
    return period_index(contract.billing_anchor, instant) - first + 1


def begun_periods(state: CustomerState, now: datetime) -> list[tuple[str, int]]:
    """``(contract_id, period number)`` of every period that has begun by ``now``,
    newest first (ties: by contract id)."""
    refs: list[tuple[datetime, str, int]] = []
    for contract in state.contracts.values():
        for number in range(1, PERIOD_NUMBER_MAX + 1):
            period = contract_period(contract, number)
            if period is None or period.start > now:
                break
            refs.append((period.start, contract.contract_id, number))
    refs.sort(key=lambda ref: (-ref[0].timestamp(), ref[1]))
    return [(contract_id, number) for _, contract_id, number in refs]


def invoice_id(contract_id: str, number: int, revision: int = 0) -> str:
    """The id of a contract's invoice for its ``number``-th period (and revision)."""
    base = f"in-{contract_id}-{number}"
    return f"{base}-r{revision}" if revision else base


def current_invoice_id(state: CustomerState, contract_id: str, number: int) -> str:
    """The id of the period's invoice as it stands (its latest revision)."""
    return invoice_id(contract_id, number, state.current_revision(contract_id, number))


@dataclass(frozen=True)
class InvoiceRef:
    contract_id: str
    number: int
    revision: int = 0

    @property
    def invoice_id(self) -> str:
        return invoice_id(self.contract_id, self.number, self.revision)


def parse_invoice_ref(text: str) -> InvoiceRef | None:
    """The contract, period number and revision an invoice id names, or None."""
    revision = 0
    head, _, last = text.rpartition("-")
    if last.startswith("r") and _is_number(last[1:], PERIOD_NUMBER_MAX):
        revision, text = int(last[1:]), head
    prefix, _, rest = text.partition("-")
    contract_id, _, number = rest.rpartition("-")
    if prefix != "in" or not contract_id or not _is_number(number, PERIOD_NUMBER_MAX):
        return None
    return InvoiceRef(contract_id, int(number), revision)


def parse_invoice_id(text: str) -> tuple[str, int] | None:
    """``(contract_id, period number)`` from an invoice id, or None if malformed."""
    ref = parse_invoice_ref(text)
    return None if ref is None else (ref.contract_id, ref.number)


def _is_number(text: str, most: int) -> bool:
    valid = text.isascii() and text.isdigit() and len(text) <= len(str(most))
    return valid and 1 <= int(text) <= most


def contract_at(state: CustomerState, instant: datetime) -> Contract | None:
    """The customer's contract in force at ``instant`` (contracts never overlap)."""
    for contract in state.contracts.values():
        if contract.is_active_at(instant):
            return contract
    return None
