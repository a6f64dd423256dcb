"""Granting credits and commits: the command that gives a customer a balance.

A grant is a ``CreditGranted`` event on the customer stream, appended at the
stream version the decision was made on, so a concurrent grant of the same id
(or anything else changing the customer) makes one of the two retry instead of
both landing. Drawdowns, expiries and reversals are written by invoicing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Final

from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.streams import customer_stream, product_stream, rate_card_stream
from ledger.core.billing import CustomerState, evolve
from ledger.core.catalog import Contract
from ledger.core.codec import encode
from ledger.core.credits import Grant, GrantKind
from ledger.core.errors import DomainError, Rule, Violations
from ledger.core.events import CreditGranted, RateCardPublished
from ledger.core.money import ISO_CURRENCY_DECIMALS, is_decimal_text, round_amount
from ledger.core.validation import check_id
from ledger.store.event_store import PostgresEventStore

# A grant names its products one by one; a grant for everything names none.
PRODUCTS_MAX: Final = 200
# The API's int32; a projection stores it as such.
PRIORITY_RANGE: Final = range(-(2**31), 2**31)
_KINDS: Final = {kind.value: kind for kind in GrantKind}


@dataclass(frozen=True)
class GrantInput:
    """A GrantCredit request as it arrived (decimals still text)."""

    grant_id: str
    customer_id: str
    kind: str
    amount: str
    currency: str
    starts_at: datetime | None
    expires_at: datetime | None = None
    product_ids: Sequence[str] = ()
    priority: int = 0
    rollover_fraction: str = ""
    hard_limit: bool = False


class BalanceCommands:
    """Grant credits, prepaid commits and postpaid commits."""

    def __init__(self, store: PostgresEventStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    async def grant_credit(self, cmd: GrantInput, ctx: RequestContext) -> tuple[Grant, int]:
        """Append the grant; return it and its ledger position (a consistency token)."""

        async def decide() -> list[Write]:
            grant = _grant(cmd)
            state = await self._customer(cmd.customer_id)
            if grant.grant_id in state.balances.grants:
                message = f"customer {cmd.customer_id!r} already has a grant {grant.grant_id!r}"
                raise DomainError(Rule.GRANT_EXISTS, message)
            if not state.contracts:
                message = f"customer {cmd.customer_id!r} has no contract: create a contract first"
                raise DomainError(Rule.CONTRACT_REQUIRED, message)
            places = await self._check_against_ledger(grant, state)
            # Written with the currency's places: "100" USD is stored as "100.00".
            event = CreditGranted(replace(grant, amount=round_amount(grant.amount, places)))
            return [Write(customer_stream(cmd.customer_id), event, state.version)]

        command = Command("GrantCredit", encode(cmd), Rule.GRANT_EXISTS)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, CreditGranted)
        return event.grant, seq

    async def _customer(self, customer_id: str) -> CustomerState:
        state = CustomerState(customer_id)
        for stored in await self._store.read_streams([customer_stream(customer_id)]):
            state = evolve(state, stored.domain_event(), stored.stream_version)
        if not state.exists:
            raise DomainError(Rule.CUSTOMER_NOT_FOUND, f"no customer {customer_id!r}")
        return state

    async def _check_against_ledger(self, grant: Grant, state: CustomerState) -> int:
        """The currency is the contracts', the amount fits it, the products exist;
        returns the currency's decimal places."""
        violations = Violations()
        currencies = sorted({c.currency for c in state.contracts.values()})
        places = 0
        if grant.currency not in currencies:
            billed_in = ", ".join(currencies)
            message = f"the customer's contracts bill in {billed_in}, not {grant.currency[:40]!r}"
            violations.add("currency", message)
        else:
            places = await self._places(state, grant)
            if round_amount(grant.amount, places) != grant.amount:
                violations.add("amount", f"{grant.currency} has {places} decimal places")
        await self._check_products_exist(violations, grant.products)
        violations.raise_if_any()
        return places

    async def _check_products_exist(self, violations: Violations, products: Sequence[str]) -> None:
        streams = [product_stream(p) for p in products]
        known = await self._store.stream_versions(streams)
        for i, (product_id, stream) in enumerate(zip(products, streams, strict=True)):
            if stream not in known:
                violations.add(f"product_ids[{i}]", f"unknown product {product_id!r}")

    async def _places(self, state: CustomerState, grant: Grant) -> int:
        """Decimal places of the grant's currency: ISO's, or the rate card's custom unit."""
        if grant.currency in ISO_CURRENCY_DECIMALS:
            return ISO_CURRENCY_DECIMALS[grant.currency]
        contract = _contract_in(state, grant.currency)
        stored = await self._store.read_streams([rate_card_stream(contract.rate_card_id)])
        first = stored[0].domain_event()
        assert isinstance(first, RateCardPublished)
        return first.rate_card.currency_decimals


def _contract_in(state: CustomerState, currency: str) -> Contract:
    return next(c for c in state.contracts.values() if c.currency == currency)


def _grant(cmd: GrantInput) -> Grant:
    """The grant a well-formed request describes; every malformed field at once."""
    violations = Violations()
    check_id(violations, "grant_id", cmd.grant_id)
    check_id(violations, "customer_id", cmd.customer_id)
    kind = _KINDS.get(cmd.kind)
    if kind is None:
        violations.add("kind", f"must be one of {', '.join(_KINDS)}")
    amount = _positive_amount(violations, cmd.amount)
    if not cmd.currency:
        violations.add("currency", "is required")
    _check_window(violations, cmd, kind)
    _check_products(violations, cmd.product_ids)
    if cmd.priority not in PRIORITY_RANGE:
        violations.add("priority", "must fit in 32 bits")
    rollover = _rollover(violations, cmd.rollover_fraction, kind)
    if cmd.hard_limit and kind is GrantKind.POSTPAID_COMMIT:
        violations.add("hard_limit", "a postpaid commit is a minimum spend, not a balance to limit")
    violations.raise_if_any()
    assert kind is not None and amount is not None and cmd.starts_at is not None
    return Grant(
        grant_id=cmd.grant_id,
        customer_id=cmd.customer_id,
        kind=kind,
        amount=amount,
        currency=cmd.currency,
        starts_at=cmd.starts_at,
        expires_at=cmd.expires_at,
        products=tuple(cmd.product_ids),
        priority=cmd.priority,
        rollover_fraction=rollover,
        hard_limit=cmd.hard_limit,
    )


def _positive_amount(violations: Violations, text: str) -> Decimal | None:
    if not is_decimal_text(text) or Decimal(text) <= 0:
        violations.add("amount", f"{text[:40]!r} is not a positive decimal (e.g. '500.00')")
        return None
    return Decimal(text)


def _check_window(violations: Violations, cmd: GrantInput, kind: GrantKind | None) -> None:
    if cmd.starts_at is None:
        violations.add("starts_at", "is required")
    elif cmd.expires_at is not None and cmd.expires_at <= cmd.starts_at:
        violations.add("expires_at", "must be after starts_at")
    if kind is GrantKind.POSTPAID_COMMIT and cmd.expires_at is None:
        violations.add("expires_at", "a postpaid commit needs its term's end")


def _check_products(violations: Violations, product_ids: Sequence[str]) -> None:
    if len(product_ids) > PRODUCTS_MAX:
        violations.add("product_ids", f"at most {PRODUCTS_MAX} products (none: every product)")
        return
    for i, product_id in enumerate(product_ids):
        check_id(violations, f"product_ids[{i}]", product_id)
    if len(set(product_ids)) != len(product_ids):
        violations.add("product_ids", "must not repeat a product")


def _rollover(violations: Violations, text: str, kind: GrantKind | None) -> Decimal:
    """The fraction of what is left at expiry that rolls over ("" is none)."""
    if not text:
        return Decimal(0)
    if not is_decimal_text(text) or not Decimal(0) <= Decimal(text) <= Decimal(1):
        violations.add("rollover_fraction", "must be a decimal from 0 to 1, e.g. '0.5'")
        return Decimal(0)
    fraction = Decimal(text)
    if fraction and kind is GrantKind.POSTPAID_COMMIT:
        violations.add("rollover_fraction", "only credits and prepaid commits roll over")
    return fraction
