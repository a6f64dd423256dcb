"""Customer and contract commands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.streams import contract_stream, customer_stream, rate_card_stream
from ledger.core.billing import CustomerState, evolve
from ledger.core.catalog import Contract
from ledger.core.codec import encode
from ledger.core.errors import DomainError, Rule, Violations
from ledger.core.events import (
    ContractCreated,
    ContractRegistered,
    CustomerCreated,
    RateCardPublished,
)
from ledger.core.validation import check_id, check_text
from ledger.store.event_store import PostgresEventStore


@dataclass(frozen=True)
class ContractInput:
    contract_id: str
    customer_id: str
    rate_card_id: str
    pinned_version: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    billing_anchor: datetime | None


class CustomerCommands:
    """Create customers and their contracts."""

    def __init__(self, store: PostgresEventStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    async def create_customer(
        self, customer_id: str, name: str, ctx: RequestContext
    ) -> tuple[CustomerCreated, int]:
        created = CustomerCreated(customer_id, name)

        async def decide() -> list[Write]:
            violations = Violations()
            check_id(violations, "customer.customer_id", customer_id)
            check_text(violations, "customer.name", name)
            violations.raise_if_any()
            return [Write(customer_stream(customer_id), created, 0)]

        command = Command("CreateCustomer", encode(created), Rule.CUSTOMER_EXISTS)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, CustomerCreated)
        return event, seq

    async def create_contract(
        self, cmd: ContractInput, ctx: RequestContext
    ) -> tuple[Contract, int]:
        """Bind a customer to a rate card; contracts of one customer never overlap."""

        async def decide() -> list[Write]:
            contract = _contract(cmd)
            state = await self.customer(cmd.customer_id)
            await self._check_rate_card(contract)
            if await self._store.stream_versions([contract_stream(cmd.contract_id)]):
                raise DomainError(Rule.CONTRACT_EXISTS, f"contract {cmd.contract_id!r} exists")
            for other in state.contracts.values():
                if _overlaps(contract, other):
                    message = f"contract {other.contract_id!r} already covers part of this term"
                    raise DomainError(Rule.CONTRACT_OVERLAPS, message)
            # Expecting the customer stream's version guards against a concurrent
            # overlapping contract; the contract stream claims the id globally.
            return [
                Write(customer_stream(cmd.customer_id), ContractCreated(contract), state.version),
                Write(contract_stream(cmd.contract_id), ContractRegistered(**_ids(cmd)), 0),
            ]

        command = Command("CreateContract", encode(cmd), Rule.CONTRACT_EXISTS)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, ContractCreated)
        return event.contract, seq

    async def customer(self, customer_id: str) -> CustomerState:
        """The customer's current state."""
        state = CustomerState(customer_id)
        for stored in await self._store.read_streams([customer_stream(customer_id)]):
            state = evolve(state, stored.domain_event(), stored.stream_version)
        if not state.exists:
            raise DomainError(Rule.CUSTOMER_NOT_FOUND, f"no customer {customer_id!r}")
        return state

    async def get_contract(self, customer_id: str, contract_id: str) -> Contract:
        state = await self.customer(customer_id)
        if contract_id not in state.contracts:
            raise DomainError(Rule.CONTRACT_NOT_FOUND, f"customer has no contract {contract_id!r}")
        return state.contracts[contract_id]

    async def _check_rate_card(self, contract: Contract) -> None:
        events = await self._store.read_streams([rate_card_stream(contract.rate_card_id)])
        violations = Violations()
        if not events:
            violations.add("contract.rate_card_id", f"unknown rate card {contract.rate_card_id!r}")
        elif contract.pinned_version is not None and contract.pinned_version > len(events):
            violations.add("contract.pinned_version", f"rate card has {len(events)} versions")
        violations.raise_if_any()
        assert isinstance(events[0].domain_event(), RateCardPublished)


def _ids(cmd: ContractInput) -> dict[str, str]:
    return {"contract_id": cmd.contract_id, "customer_id": cmd.customer_id}


def _contract(cmd: ContractInput) -> Contract:
    violations = Violations()
    check_id(violations, "contract.contract_id", cmd.contract_id)
    check_id(violations, "contract.customer_id", cmd.customer_id)
    check_id(violations, "contract.rate_card_id", cmd.rate_card_id)
    if cmd.starts_at is None:
        violations.add("contract.starts_at", "is required")
    elif cmd.ends_at is not None and cmd.ends_at <= cmd.starts_at:
        violations.add("contract.ends_at", "must be after starts_at")
    if cmd.pinned_version is not None and cmd.pinned_version < 1:
        violations.add("contract.pinned_version", "must be 1 or more (0 follows the latest)")
    violations.raise_if_any()
    assert cmd.starts_at is not None
    return Contract(
        contract_id=cmd.contract_id,
        customer_id=cmd.customer_id,
        rate_card_id=cmd.rate_card_id,
        pinned_version=cmd.pinned_version,
        starts_at=cmd.starts_at,
        ends_at=cmd.ends_at,
        billing_anchor=cmd.billing_anchor or cmd.starts_at,
    )


def _overlaps(a: Contract, b: Contract) -> bool:
    a_end_after_b_start = a.ends_at is None or a.ends_at > b.starts_at
    b_end_after_a_start = b.ends_at is None or b.ends_at > a.starts_at
    return a_end_after_b_start and b_end_after_a_start
