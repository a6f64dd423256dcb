"""Credit drawdown (PRICING.md, commits and credits), including worked example 7."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from ledger.core.catalog import RateModel
from ledger.core.credits import Balance, draw_down
from ledger.core.invoice import InvoiceLine

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def line(product_id: str, amount: str) -> InvoiceLine:
    return InvoiceLine(
        product_id=product_id,
        product_name=product_id,
        metric_id="",
        group_values={},
        rate_card_id="card",
        rate_card_version=1,
        segment_start=T0,
        segment_end=T0,
        model=RateModel.PER_UNIT,
        quantity=Decimal(1),
        unit_price=Decimal(amount),
        amount=Decimal(amount),
        explanation="",
    )


def test_worked_example_7_credit_covers_only_its_products() -> None:
    lines = [line("A", "312.40"), line("B", "87.61"), line("C", "50.00")]
    credit = Balance("credit-1", Decimal("500.00"), frozenset({"A", "B"}))
    result = draw_down(lines, [credit])
    assert result.credits_applied == Decimal("400.01")
    assert result.remaining == {"credit-1": Decimal("99.99")}
    due = sum((li.amount for li in lines), Decimal(0)) - result.credits_applied
    assert due == Decimal("50.00")


def test_balances_are_drawn_by_priority_then_expiry_then_grant_order() -> None:
    lines = [line("A", "100.00")]
    balances = [
        Balance("late-expiry", Decimal(40), expires_at=datetime(2027, 1, 1, tzinfo=UTC)),
        Balance("soon-expiry", Decimal(40), expires_at=datetime(2026, 6, 1, tzinfo=UTC)),
        Balance("first-priority", Decimal(10), priority=-1),
        Balance("no-expiry", Decimal(40), grant_order=0),
    ]
    result = draw_down(lines, balances)
    assert [(d.grant_id, d.amount) for d in result.drawdowns] == [
        ("first-priority", Decimal(10)),
        ("soon-expiry", Decimal(40)),
        ("late-expiry", Decimal(40)),
        ("no-expiry", Decimal(10)),
    ]


amounts = st.decimals(min_value=0, max_value=10_000, places=2)


@given(
    line_amounts=st.lists(amounts, max_size=6),
    grants=st.lists(st.tuples(amounts, st.integers(-2, 2)), max_size=4),
)
def test_balances_never_go_negative_and_cover_at_most_what_is_owed(
    line_amounts: list[Decimal], grants: list[tuple[Decimal, int]]
) -> None:
    lines = [line("A", str(a)) for a in line_amounts]
    balances = [Balance(f"g{i}", amount, priority=p) for i, (amount, p) in enumerate(grants)]
    result = draw_down(lines, balances)
    assert all(value >= 0 for value in result.remaining.values())
    assert result.credits_applied <= sum(line_amounts, Decimal(0))
    granted = sum((b.remaining for b in balances), Decimal(0))
    assert granted - sum(result.remaining.values(), Decimal(0)) == result.credits_applied
