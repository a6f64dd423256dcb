"""Customer and contract commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ledger.app.catalog import rate_context
from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.streams import contract_stream, customer_stream, rate_card_stream
from ledger.core.billing import CustomerState, evolve
from ledger.core.catalog import Contract, Override, OverrideKind
from ledger.core.codec import encode
from ledger.core.errors import DomainError, Rule, Violations
from ledger.core.events import (
    ContractCreated,
    ContractRegistered,
    CustomerCreated,
    RateCardPublished,
)
from ledger.core.money import is_decimal_text
from ledger.core.rate_specs import RateContext, RateSpec, check_rate, parse_rate
from ledger.core.validation import check_id, check_text
from ledger.store.event_store import PostgresEventStore


@dataclass(frozen=True)
class OverrideSpec:
    override_id: str
    product_id: str
    kind: str
    priority: int = 0
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    multiplier: str = ""
    rate: RateSpec | None = None


@dataclass(frozen=True)
class ContractInput:
    contract_id: str
    customer_id: str
    rate_card_id: str
    pinned_version: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    billing_anchor: datetime | None
    currency: str = ""
    overrides: Sequence[OverrideSpec] = ()


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
            currency = await self._check_rate_card(contract, cmd)
            # Overrides are built only once check_override has vouched for them.
            overrides = tuple(_override(o) for o in cmd.overrides)
            contract = dataclasses.replace(contract, currency=currency, overrides=overrides)
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

    async def _check_rate_card(self, contract: Contract, cmd: ContractInput) -> str:
        """The card exists (and the pinned version), in the contract's currency, and the
        overrides name real products with valid prices."""
        events = await self._store.read_streams([rate_card_stream(contract.rate_card_id)])
        violations = Violations()
        if not events:
            violations.add("contract.rate_card_id", f"unknown rate card {contract.rate_card_id!r}")
        elif contract.pinned_version is not None and contract.pinned_version > len(events):
            violations.add("contract.pinned_version", f"rate card has {len(events)} versions")
        if events:
            first = events[0].domain_event()
            assert isinstance(first, RateCardPublished)
            if cmd.currency and cmd.currency != first.rate_card.currency:
                message = f"the rate card bills in {first.rate_card.currency}, not {cmd.currency}"
                violations.add("contract.currency", message)
        context = await rate_context(self._store, [o.product_id for o in cmd.overrides])
        for i, override in enumerate(cmd.overrides):
            check_override(violations, f"contract.overrides[{i}]", override, context)
        violations.raise_if_any()
        first = events[0].domain_event()
        assert isinstance(first, RateCardPublished)
        return first.rate_card.currency


def check_override(
    violations: Violations, where: str, override: OverrideSpec, context: RateContext
) -> None:
    """An override names a known product, a kind, a valid factor or rate, and a window."""
    check_id(violations, f"{where}.override_id", override.override_id)
    if override.product_id not in context.products:
        violations.add(f"{where}.product_id", f"unknown product {override.product_id!r}")
    if override.starts_at and override.ends_at and override.ends_at <= override.starts_at:
        violations.add(f"{where}.ends_at", "must be after starts_at")
    if override.kind == OverrideKind.MULTIPLIER.value:
        if not is_decimal_text(override.multiplier) or override.multiplier.startswith("-"):
            violations.add(f"{where}.multiplier", "must be a non-negative decimal, e.g. 0.9")
    elif override.kind == OverrideKind.OVERWRITE.value:
        if override.rate is None:
            violations.add(f"{where}.rate", "an overwrite needs the rate that replaces the card's")
        else:
            rate = dataclasses.replace(override.rate, product_id=override.product_id)
            check_rate(violations, f"{where}.rate", rate, context, {rate.product_id: rate})
    else:
        violations.add(f"{where}.kind", "must be 'overwrite' or 'multiplier'")


def _override(spec: OverrideSpec) -> Override:
    kind = OverrideKind(spec.kind)
    return Override(
        override_id=spec.override_id,
        product_id=spec.product_id,
        kind=kind,
        priority=spec.priority,
        starts_at=spec.starts_at,
        ends_at=spec.ends_at,
        multiplier=Decimal(spec.multiplier) if kind is OverrideKind.MULTIPLIER else None,
        rate=(
            parse_rate(dataclasses.replace(spec.rate, product_id=spec.product_id))
            if kind is OverrideKind.OVERWRITE and spec.rate is not None
            else None
        ),
    )


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
    if len({o.override_id for o in cmd.overrides}) != len(cmd.overrides):
        violations.add("contract.overrides", "override ids must be unique")
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
