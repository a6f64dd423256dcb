"""Settlement rules: adjustments, true-ups, credits drawn down, expiries and voids."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ledger.core.billing import CustomerState, InvoiceRef, evolve, parse_invoice_ref
from ledger.core.catalog import Contract, RateModel
from ledger.core.credits import BalanceBook, Grant, GrantKind
from ledger.core.errors import DomainError, Rule
from ledger.core.events import (
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
from ledger.core.invoice import Invoice, InvoiceLine, LineKind, content_sha256
from ledger.core.lifecycle import check_earlier_periods_final, finalization_events, void_events
from ledger.core.settlement import (
    TrueUp,
    adjustment_lines,
    closing_entries,
    settle,
    true_up_lines,
)

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)
APR = datetime(2026, 4, 1, tzinfo=UTC)


def line(product: str, amount: str, quantity: str = "1", start: datetime = JAN) -> InvoiceLine:
    return InvoiceLine(
        product_id=product,
        product_name=product.upper(),
        metric_id=f"m-{product}",
        group_values={},
        rate_card_id="rc",
        rate_card_version=1,
        segment_start=start,
        segment_end=FEB if start == JAN else MAR,
        model=RateModel.PER_UNIT,
        quantity=Decimal(quantity),
        unit_price=Decimal(1),
        amount=Decimal(amount),
        explanation="",
    )


def invoice(*lines: InvoiceLine, ref: str = "in-ct-1", start: datetime = JAN) -> Invoice:
    subtotal = sum((item.amount for item in lines), Decimal("0.00"))
    return Invoice(
        invoice_id=ref,
        customer_id="cus",
        contract_id="ct",
        currency="USD",
        period_start=start,
        period_end=FEB if start == JAN else MAR,
        lines=lines,
        subtotal=subtotal,
        credits_applied=Decimal("0.00"),
        total=subtotal,
        computed_through_seq=10,
        rate_card_id="rc",
        rate_card_versions=(1,),
        contract_version=2,
    )


def grant(grant_id: str, amount: str, **changes: object) -> Grant:
    base = Grant(
        grant_id=grant_id,
        customer_id="cus",
        kind=GrantKind.CREDIT,
        amount=Decimal(amount),
        currency="USD",
        starts_at=JAN,
        expires_at=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def book_of(*grants: Grant) -> BalanceBook:
    book = BalanceBook()
    for item in grants:
        book = book.grant(item, item.starts_at)
    return book


def test_worked_example_7_credit_covers_its_products_and_c_is_due() -> None:
    """PRICING.md example 7: a 500.00 credit for A and B; lines A 312.40, B 87.61, C 50.00."""
    priced = invoice(line("a", "312.40"), line("b", "87.61"), line("c", "50.00"))
    book = book_of(grant("g", "500.00", products=("a", "b")))
    settled = settle(priced, [], book, 2)
    assert settled.credits_applied == Decimal("400.01")
    assert settled.total == Decimal("50.00")
    assert [(c.grant_id, c.amount) for c in settled.credits] == [("g", Decimal("400.01"))]
    assert book.remaining("g") - settled.credits[0].amount == Decimal("99.99")


def test_balances_draw_by_priority_then_expiry_then_grant_order() -> None:
    book = book_of(
        grant("late", "10.00", expires_at=APR),
        grant("soon", "10.00", expires_at=MAR),
        grant("first", "10.00", priority=-1),
    )
    settled = settle(invoice(line("a", "25.00")), [], book, 2)
    assert [(c.grant_id, c.amount) for c in settled.credits] == [
        ("first", Decimal("10.00")),
        ("soon", Decimal("10.00")),
        ("late", Decimal("5.00")),
    ]
    assert settled.total == Decimal("0.00")


def test_expired_grants_and_grants_outside_the_period_draw_nothing() -> None:
    state = customer_with(
        CreditGranted(grant("future", "10.00", starts_at=MAR)),
        CreditGranted(grant("old", "10.00")),
        CreditExpired("old", "in-ct-0", Decimal("10.00"), JAN),
    )
    assert state.balances.is_expired("old")
    settled = settle(invoice(line("a", "5.00")), [], state.balances, 2)
    assert settled.credits == () and settled.total == Decimal("5.00")


def test_true_up_is_the_shortfall_and_no_balance_covers_it() -> None:
    commit = grant("commit", "1000.00", kind=GrantKind.POSTPAID_COMMIT, expires_at=FEB)
    priced = invoice(line("a", "300.00"), line("b", "50.00"))
    lines = true_up_lines(priced, [TrueUp(commit, Decimal("450.00"))], 2)
    assert [(item.kind, item.amount) for item in lines] == [(LineKind.TRUE_UP, Decimal("200.00"))]
    settled = settle(priced, lines, book_of(grant("credit", "1000.00")), 2)
    assert settled.credits_applied == Decimal("350.00")
    assert settled.total == Decimal("200.00")


def test_a_commit_met_trues_up_to_zero() -> None:
    commit = grant("c", "100.00", kind=GrantKind.POSTPAID_COMMIT, expires_at=FEB, products=("a",))
    (only,) = true_up_lines(invoice(line("a", "150.00")), [TrueUp(commit, Decimal(0))], 2)
    assert only.amount == Decimal("0.00")


def test_adjustment_is_the_difference_line_by_line() -> None:
    billed = invoice(line("a", "10.00", "100"), line("b", "5.00", "5"))
    now = invoice(line("a", "12.50", "125"), line("b", "5.00", "5"), line("c", "1.00", "1"))
    adjustments = adjustment_lines(billed, now, 2)
    assert [(a.product_id, a.quantity, a.amount) for a in adjustments] == [
        ("a", Decimal(25), Decimal("2.50")),
        ("c", Decimal(1), Decimal("1.00")),
    ]
    assert all(
        a.kind is LineKind.ADJUSTMENT and a.adjusts_invoice_id == "in-ct-1" for a in adjustments
    )
    assert adjustments[0].segment_start == JAN  # names the period it belongs to


def test_expiry_takes_what_this_invoice_left_and_rolls_over_a_share() -> None:
    book = book_of(grant("g", "100.00", expires_at=FEB, rollover_fraction=Decimal("0.5")))
    settled = settle(invoice(line("a", "30.00")), [], book, 2)
    (expiry,) = closing_entries(settled, book, 2)
    assert (expiry.grant_id, expiry.amount, expiry.at) == ("g", Decimal("70.00"), FEB)
    assert expiry.rollover is not None
    assert expiry.rollover.amount == Decimal("35.00")
    assert (expiry.rollover.starts_at, expiry.rollover.expires_at) == (
        FEB,
        datetime(2026, 3, 4, tzinfo=UTC),
    )


def customer_with(*events: DomainEvent) -> CustomerState:
    state = CustomerState("cus")
    for version, event in enumerate([CustomerCreated("cus", "Cus"), *events], start=1):
        state = evolve(state, event, version)
    return state


def finalized(inv: Invoice) -> InvoiceFinalized:
    return InvoiceFinalized(inv, content_sha256(inv))


def test_finalizing_enters_drawdowns_expiry_and_rollover() -> None:
    g = grant("g", "100.00", expires_at=FEB, rollover_fraction=Decimal("0.5"))
    state = customer_with(CreditGranted(g))
    settled = settle(invoice(line("a", "30.00")), [], state.balances, 2)
    events = finalization_events(settled, content_sha256(settled), state, FEB)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["InvoiceFinalized", "CreditDrawnDown", "CreditExpired", "CreditGranted"]
    after = customer_with(CreditGranted(g), *events)
    assert after.balances.remaining("g") == Decimal("0.00")
    assert after.balances.remaining("g~rollover") == Decimal("35.00")


def test_voiding_reverses_every_entry_the_invoice_made() -> None:
    g = grant("g", "100.00", expires_at=FEB, rollover_fraction=Decimal("0.5"))
    state = customer_with(CreditGranted(g))
    settled = settle(invoice(line("a", "30.00")), [], state.balances, 2)
    final = finalization_events(settled, content_sha256(settled), state, FEB)
    state = customer_with(CreditGranted(g), *final)
    voiding = void_events(state, InvoiceRef("ct", 1), MAR)
    assert isinstance(voiding[0], InvoiceVoided) and voiding[0].replacement_id == "in-ct-1-r1"
    assert all(isinstance(e, CreditReversed) for e in voiding[1:])
    state = customer_with(CreditGranted(g), *final, *voiding)
    assert state.balances.remaining("g") == Decimal("100.00")
    assert state.balances.remaining("g~rollover") == Decimal("0.00")
    assert not state.balances.is_expired("g")
    assert state.current_revision("ct", 1) == 1
    with pytest.raises(DomainError) as again:
        void_events(state, InvoiceRef("ct", 1), MAR)
    assert again.value.rule is Rule.INVOICE_ALREADY_VOIDED


def test_only_the_latest_finalized_invoice_can_be_voided() -> None:
    state = customer_with(
        finalized(invoice(ref="in-ct-1")), finalized(invoice(ref="in-ct-2", start=FEB))
    )
    with pytest.raises(DomainError) as earlier:
        void_events(state, InvoiceRef("ct", 1), MAR)
    assert earlier.value.rule is Rule.INVOICE_NOT_LATEST
    with pytest.raises(DomainError) as draft:
        void_events(state, InvoiceRef("ct", 3), MAR)
    assert draft.value.rule is Rule.INVOICE_NOT_FINALIZED


def test_periods_are_finalized_in_order() -> None:
    contract = Contract("ct", "cus", "rc", None, JAN, None, JAN)
    state = customer_with(ContractCreated(contract), finalized(invoice(ref="in-ct-1")))
    check_earlier_periods_final(state, InvoiceRef("ct", 2))
    with pytest.raises(DomainError) as skipped:
        check_earlier_periods_final(state, InvoiceRef("ct", 3))
    assert skipped.value.rule is Rule.EARLIER_PERIOD_OPEN


def test_a_lowering_adjustment_is_netted_before_credits_are_counted() -> None:
    priced = invoice(line("a", "100.00"))
    lowered = dataclasses.replace(line("a", "-49.95"), kind=LineKind.ADJUSTMENT)
    settled = settle(priced, [lowered], book_of(grant("g", "500.00")), 2)
    assert (settled.subtotal, settled.credits_applied, settled.total) == (
        Decimal("50.05"),
        Decimal("50.05"),
        Decimal("0.00"),
    )


def test_nothing_left_to_lapse_enters_no_expiry() -> None:
    book = book_of(grant("g", "30.00", expires_at=FEB))
    settled = settle(invoice(line("a", "30.00")), [], book, 2)
    assert closing_entries(settled, book, 2) == []


def test_drawdowns_and_expiries_fold_into_the_balance() -> None:
    state = customer_with(
        CreditGranted(grant("g", "10.00")),
        CreditDrawnDown("g", "in-ct-1", Decimal("4.00"), FEB),
        CreditExpired("g", "in-ct-2", Decimal("6.00"), MAR),
    )
    assert state.balances.remaining("g") == Decimal("0.00")
    assert [e.kind.value for e in state.balances.entries_of("g")] == [
        "granted",
        "drawn_down",
        "expired",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in-ct-1", InvoiceRef("ct", 1)),
        ("in-ct-1-r2", InvoiceRef("ct", 1, 2)),
        ("in-c-2-r1-3", InvoiceRef("c-2-r1", 3)),  # a contract id may look like a revision
        ("in-c-2-r1-3-r1", InvoiceRef("c-2-r1", 3, 1)),
        ("in-ct-r1", None),
        ("in-ct-0", None),
        ("in-ct-1-r0", None),
        ("ct-1", None),
        ("in--1", None),
    ],
)
def test_invoice_ids_name_contract_period_and_revision(
    text: str, expected: InvoiceRef | None
) -> None:
    assert parse_invoice_ref(text) == expected
    if expected is not None:
        assert expected.invoice_id == text
