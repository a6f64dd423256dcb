"""A customer's billing state folded from its events, and its contract periods.

``evolve(state, event) -> state`` is the only way state changes; loading a
customer is folding its stream. Invoice ids name the contract and the period's
number within the contract (1 for the first period), so they are stable and
can be resolved back to a period without any lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from ledger.core.catalog import Contract
from ledger.core.events import (
    ContractCreated,
    CustomerCreated,
    DomainEvent,
    InvoiceFinalized,
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
    version: int = 0


def evolve(state: CustomerState, event: DomainEvent, stream_version: int) -> CustomerState:
    """The state after ``event`` (stored at ``stream_version`` of the customer stream)."""
    state = replace(state, version=stream_version)
    if isinstance(event, CustomerCreated):
        return replace(state, name=event.name, exists=True)
    if isinstance(event, ContractCreated):
        contract = event.contract
        return replace(
            state,
            contracts={**state.contracts, contract.contract_id: contract},
            contract_versions={**state.contract_versions, contract.contract_id: stream_version},
        )
    if isinstance(event, InvoiceFinalized):
        return replace(state, finalized={**state.finalized, event.invoice.invoice_id: event})
    return state


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


def invoice_id(contract_id: str, number: int) -> str:
    """The id of a contract's invoice for its ``number``-th period."""
    return f"in-{contract_id}-{number}"


def parse_invoice_id(text: str) -> tuple[str, int] | None:
    """``(contract_id, period number)`` from an invoice id, or None if malformed."""
    prefix, _, rest = text.partition("-")
    contract_id, _, number = rest.rpartition("-")
    valid = number.isascii() and number.isdigit() and len(number) <= len(str(PERIOD_NUMBER_MAX))
    if prefix != "in" or not contract_id or not valid or not 1 <= int(number) <= PERIOD_NUMBER_MAX:
        return None
    return contract_id, int(number)


def contract_at(state: CustomerState, instant: datetime) -> Contract | None:
    """The customer's contract in force at ``instant`` (contracts never overlap)."""
    for contract in state.contracts.values():
        if contract.is_active_at(instant):
            return contract
    return None
