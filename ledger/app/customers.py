"""Customer and contract commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ledger.app.billing import rate_card_versions
from ledger.app.catalog import rate_context
from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.streams import contract_stream, customer_stream, rate_card_stream
from ledger.core.billing import CustomerState, contract_period, evolve
from ledger.core.canonical import format_instant
from ledger.core.catalog import Contract, Override, OverrideKind, PlanChange, RateCardVersion
from ledger.core.codec import encode
from ledger.core.contracts import Amendment, amend
from ledger.core.errors import DomainError, Rule, Violations, invalid
from ledger.core.events import (
    ContractAmended,
    ContractCreated,
    ContractRegistered,
    CustomerCreated,
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


# Overrides one amendment may add, and ids it may end: every later invoice prices them.
AMENDMENT_OVERRIDES_MAX = 100


@dataclass(frozen=True)
class AmendmentInput:
    """A contract amendment as asked; the parts left empty change nothing."""

    contract_id: str
    customer_id: str
    effective_at: datetime | None
    rate_card_id: str = ""  # another card from effective_at on ("": keep the card)
    pinned_version: int | None = None  # None: not asked; 0: follow the latest version
    add_overrides: Sequence[OverrideSpec] = ()
    end_override_ids: Sequence[str] = ()
    ends_at: datetime | None = None  # a new end of the term (None: keep it) ...
    clear_ends_at: bool = False  # ... or none: open-ended

    @property
    def changes_plan(self) -> bool:
        return bool(self.rate_card_id) or self.pinned_version is not None

    @property
    def changes_term(self) -> bool:
        return self.ends_at is not None or self.clear_ends_at


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

    async def amend_contract(
        self, cmd: AmendmentInput, ctx: RequestContext
    ) -> tuple[Contract, int]:
        """Change a contract from ``effective_at`` on; a finalized period never changes."""
        return await self._amend("AmendContract", cmd, ctx, "effective_at")

    async def end_contract(
        self, customer_id: str, contract_id: str, ends_at: datetime | None, ctx: RequestContext
    ) -> tuple[Contract, int]:
        """End a contract at ``ends_at``: an amendment of its term, effective then."""
        cmd = AmendmentInput(contract_id, customer_id, effective_at=ends_at, ends_at=ends_at)
        return await self._amend("EndContract", cmd, ctx, "ends_at")

    async def customer(self, customer_id: str, up_to_seq: int | None = None) -> CustomerState:
        """The customer's state, now or as of ledger position ``up_to_seq``."""
        state = CustomerState(customer_id)
        for stored in await self._store.read_streams([customer_stream(customer_id)], up_to_seq):
            state = evolve(state, stored.domain_event(), stored.stream_version)
        if not state.exists:
            raise DomainError(Rule.CUSTOMER_NOT_FOUND, f"no customer {customer_id!r}")
        return state

    async def get_contract(self, customer_id: str, contract_id: str) -> Contract:
        return _contract_of(await self.customer(customer_id), contract_id)

    async def _check_rate_card(self, contract: Contract, cmd: ContractInput) -> str:
        """The card exists (and the pinned version), in the contract's currency, and the
        overrides name real products with valid prices."""
        versions = await self._card_versions(contract.rate_card_id)
        violations = Violations()
        fields = ("contract.rate_card_id", "contract.pinned_version")
        _check_card(violations, fields, contract.rate_card_id, contract.pinned_version, versions)
        if versions and cmd.currency and cmd.currency != versions[0].currency:
            message = f"the rate card bills in {versions[0].currency}, not {cmd.currency}"
            violations.add("contract.currency", message)
        context = await rate_context(self._store, [o.product_id for o in cmd.overrides])
        for i, override in enumerate(cmd.overrides):
            check_override(violations, f"contract.overrides[{i}]", override, context)
        violations.raise_if_any()
        return versions[0].currency

    async def _card_versions(self, rate_card_id: str) -> list[RateCardVersion]:
        return rate_card_versions(await self._store.read_streams([rate_card_stream(rate_card_id)]))

    async def _amend(
        self, name: str, cmd: AmendmentInput, ctx: RequestContext, effective_field: str
    ) -> tuple[Contract, int]:
        """Run an amendment command; ``effective_field`` names effective_at in the request."""

        async def decide() -> list[Write]:
            at = _check_amendment_shape(cmd, effective_field)
            state = await self.customer(cmd.customer_id)
            contract = _contract_of(state, cmd.contract_id)
            self._check_amendable(state, contract, cmd, effective_field)
            amendment = await self._amendment(contract, cmd, at)
            _check_new_term(state, contract, amendment)
            event = ContractAmended(amendment)
            # Expecting the customer stream's version: the checks above saw all of it.
            return [Write(customer_stream(cmd.customer_id), event, state.version)]

        command = Command(name, encode(cmd), Rule.STREAM_VERSION_CONFLICT)
        _, seq = await run_command(self._store, ctx, command, decide, self._clock())
        # A retry answers with the contract as its amendment left it, not as it is now.
        return _contract_of(await self.customer(cmd.customer_id, seq), cmd.contract_id), seq

    def _check_amendable(
        self, state: CustomerState, contract: Contract, cmd: AmendmentInput, effective_field: str
    ) -> None:
        """The contract runs, and the amendment takes effect inside its term and after
        its last finalized period."""
        at = cmd.effective_at
        assert at is not None
        if contract.ends_at is not None and contract.ends_at <= self._clock():
            ended = format_instant(contract.ends_at)
            message = f"contract {contract.contract_id!r} ended at {ended}; it cannot change"
            raise DomainError(Rule.CONTRACT_ENDED, message)
        if at < contract.starts_at:
            starts = format_instant(contract.starts_at)
            raise invalid(effective_field, f"is before the contract starts ({starts})")
        if contract.ends_at is not None and at >= contract.ends_at:
            ends = format_instant(contract.ends_at)
            raise invalid(effective_field, f"must be before the contract's end ({ends})")
        _check_open(state, contract, at, effective_field)
        if cmd.ends_at is not None:
            _check_open(state, contract, cmd.ends_at, "ends_at")

    async def _amendment(self, contract: Contract, cmd: AmendmentInput, at: datetime) -> Amendment:
        """The amendment the request asks for, every bad part reported at once."""
        violations = Violations()
        plan = await self._plan_change(violations, contract, cmd, at)
        context = await rate_context(self._store, [o.product_id for o in cmd.add_overrides])
        added = _check_added_overrides(violations, contract, cmd, context)
        _check_ended_overrides(violations, contract, cmd, at)
        change_term = _check_term(violations, contract, cmd, at)
        violations.raise_if_any()
        amendment = Amendment(
            contract_id=contract.contract_id,
            effective_at=at,
            plan=plan,
            # Built only once check_override has vouched for them.
            add_overrides=tuple(_override(spec) for spec in added),
            end_overrides=tuple(cmd.end_override_ids),
            change_term=change_term,
            ends_at=cmd.ends_at if change_term else None,
        )
        if amendment == Amendment(contract.contract_id, at):
            raise invalid("request", "changes nothing: give a plan, overrides or a new end")
        return amendment

    async def _plan_change(
        self, violations: Violations, contract: Contract, cmd: AmendmentInput, at: datetime
    ) -> PlanChange | None:
        """The new plan: a known card (and version) in the contract's currency; None if
        none was asked or it is the plan already in force from ``at`` on."""
        if not cmd.changes_plan:
            return None
        current = contract.plan_at(at)
        plan = PlanChange(at, cmd.rate_card_id or current.rate_card_id, cmd.pinned_version or None)
        versions = await self._card_versions(plan.rate_card_id)
        fields = ("rate_card_id", "pinned_version")
        _check_card(violations, fields, plan.rate_card_id, plan.pinned_version, versions)
        # Every card of a contract bills in the unit of the card it started on.
        unit = _unit(await self._card_versions(contract.rate_card_id))
        if versions and _unit(versions) != unit:
            (theirs, their_places), (ours, places) = _unit(versions), unit
            message = (
                f"bills in {theirs} ({their_places} places), the contract in {ours} ({places})"
            )
            violations.add("rate_card_id", message)
        # The plan in force already, unless it would also supersede later plan changes.
        later = [change for change in contract.plan_changes if change.effective_at > at]
        same = plan == dataclasses.replace(current, effective_at=at)
        return None if same and not later else plan


def _contract_of(state: CustomerState, contract_id: str) -> Contract:
    if contract_id not in state.contracts:
        raise DomainError(Rule.CONTRACT_NOT_FOUND, f"customer has no contract {contract_id!r}")
    return state.contracts[contract_id]


def _check_card(
    violations: Violations,
    fields: tuple[str, str],
    rate_card_id: str,
    pinned_version: int | None,
    versions: Sequence[RateCardVersion],
) -> None:
    """The card exists, and so does the version a contract is pinned to."""
    card_field, version_field = fields
    if not versions:
        violations.add(card_field, f"unknown rate card {rate_card_id!r}")
    elif pinned_version is not None and pinned_version > len(versions):
        violations.add(version_field, f"rate card has {len(versions)} versions")


def _unit(versions: Sequence[RateCardVersion]) -> tuple[str, int]:
    """The currency (and its places) a card bills in; every version keeps it."""
    return versions[0].currency, versions[0].currency_decimals


def _check_amendment_shape(cmd: AmendmentInput, effective_field: str) -> datetime:
    """Ids, the instant, and parts that fit together; returns ``effective_at``."""
    violations = Violations()
    check_id(violations, "customer_id", cmd.customer_id)
    check_id(violations, "contract_id", cmd.contract_id)
    if cmd.effective_at is None:
        violations.add(effective_field, "is required")
    if cmd.rate_card_id:
        check_id(violations, "rate_card_id", cmd.rate_card_id)
    if cmd.pinned_version is not None and cmd.pinned_version < 0:
        violations.add("pinned_version", "must be 0 (follow the latest) or a version number")
    if cmd.ends_at is not None and cmd.clear_ends_at:
        violations.add("clear_ends_at", "give ends_at or clear_ends_at, not both")
    lists = {
        "add_overrides": [o.override_id for o in cmd.add_overrides],
        "end_override_ids": list(cmd.end_override_ids),
    }
    for field, ids in lists.items():
        if len(ids) > AMENDMENT_OVERRIDES_MAX:
            violations.add(field, f"at most {AMENDMENT_OVERRIDES_MAX} per amendment")
        elif len(set(ids)) != len(ids):
            violations.add(field, "override ids must be unique")
    violations.raise_if_any()
    assert cmd.effective_at is not None
    return cmd.effective_at


def _closed_until(state: CustomerState, contract: Contract) -> datetime | None:
    """The end of the contract's last finalized period: nothing before it may change."""
    last = state.last_finalized(contract.contract_id)
    if last is None:
        return None
    period = contract_period(contract, last[0])
    assert period is not None, "a finalized period lies inside its contract's term"
    return period.end


def _check_open(state: CustomerState, contract: Contract, instant: datetime, field: str) -> None:
    closed_until = _closed_until(state, contract)
    if closed_until is not None and instant < closed_until:
        message = (
            f"{field} {format_instant(instant)} falls in a finalized period; the contract"
            f" can change from {format_instant(closed_until)} on"
        )
        raise DomainError(Rule.AMENDMENT_INTO_FINALIZED_PERIOD, message)


def _check_added_overrides(
    violations: Violations, contract: Contract, cmd: AmendmentInput, context: RateContext
) -> list[OverrideSpec]:
    """The overrides to add, each starting at ``effective_at`` unless it says later."""
    at = cmd.effective_at
    assert at is not None
    existing = {o.override_id for o in contract.overrides}
    specs = []
    for i, asked in enumerate(cmd.add_overrides):
        where = f"add_overrides[{i}]"
        spec = dataclasses.replace(asked, starts_at=asked.starts_at or at)
        check_override(violations, where, spec, context)
        if spec.override_id in existing:
            violations.add(f"{where}.override_id", "the contract already has this override")
        if spec.starts_at is not None and spec.starts_at < at:
            violations.add(f"{where}.starts_at", "may not be before effective_at")
        specs.append(spec)
    return specs


def _check_ended_overrides(
    violations: Violations, contract: Contract, cmd: AmendmentInput, at: datetime
) -> None:
    """Each override to end is the contract's and has not ended by ``at`` (ending one
    that starts later cancels it)."""
    overrides = {o.override_id: o for o in contract.overrides}
    for i, override_id in enumerate(cmd.end_override_ids):
        where, override = f"end_override_ids[{i}]", overrides.get(override_id)
        if override is None:
            violations.add(where, f"the contract has no override {override_id!r}")
        elif override.ends_at is not None and override.ends_at <= at:
            violations.add(where, f"already ends at {format_instant(override.ends_at)}")


def _check_term(
    violations: Violations, contract: Contract, cmd: AmendmentInput, at: datetime
) -> bool:
    """Whether the amendment moves the contract's end (a bad new end is a violation)."""
    if not cmd.changes_term or cmd.ends_at == contract.ends_at:
        return False
    if cmd.ends_at is not None and cmd.ends_at <= contract.starts_at:
        violations.add("ends_at", "must be after the contract's start")
    elif cmd.ends_at is not None and cmd.ends_at < at:
        violations.add("ends_at", "may not be before effective_at")
    return True


def _check_new_term(state: CustomerState, contract: Contract, amendment: Amendment) -> None:
    """A longer term may not reach into another of the customer's contracts."""
    amended = amend(contract, amendment)
    for other in state.contracts.values():
        if other.contract_id != contract.contract_id and _overlaps(amended, other):
            message = f"contract {other.contract_id!r} already covers part of the new term"
            raise DomainError(Rule.CONTRACT_OVERLAPS, message)


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
