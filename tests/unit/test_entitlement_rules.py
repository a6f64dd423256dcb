"""The entitlement answer from what its query finds, and a contract's plan segments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.catalog import Contract, PlanChange
from ledger.core.contracts import Amendment, amend
from projections.entitlements import Entitlement, Refusal, decide, plan_segments

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("found", "answer"),
    [
        ((None, True, True, Decimal(5)), Entitlement(False, Refusal.NO_CONTRACT)),
        (("USD", False, True, Decimal(5)), Entitlement(False, Refusal.NOT_ON_CARD, None, "USD")),
        (("USD", True, False, None), Entitlement(True, None, None, "USD")),
        (("USD", True, True, Decimal("0.01")), Entitlement(True, None, Decimal("0.01"), "USD")),
        (
            ("USD", True, True, Decimal("0.00")),
            Entitlement(False, Refusal.HARD_LIMIT_EXHAUSTED, Decimal(0), "USD"),
        ),
        # Hard limits cover the product, but none is valid at the instant.
        (
            ("USD", True, True, None),
            Entitlement(False, Refusal.HARD_LIMIT_EXHAUSTED, Decimal(0), "USD"),
        ),
    ],
)
def test_the_first_broken_condition_is_the_reason(
    found: tuple[str | None, bool, bool, Decimal | None], answer: Entitlement
) -> None:
    in_force, on_card, limited, remaining = found
    assert (
        decide(in_force=in_force, on_card=on_card, limited=limited, remaining=remaining) == answer
    )


def contract(ends_at: datetime | None = None) -> Contract:
    return Contract("k1", "acme", "list", None, T0, ends_at, T0, currency="USD")


def test_an_unamended_contract_is_one_segment_over_its_term() -> None:
    plan = PlanChange(T0, "list", None)
    assert plan_segments(contract()) == [(T0, None, plan)]
    end = T0 + timedelta(days=90)
    assert plan_segments(contract(end)) == [(T0, end, plan)]


@given(
    days=st.lists(st.integers(-30, 120), min_size=1, max_size=5),
    term_days=st.one_of(st.none(), st.integers(1, 100)),
)
def test_segments_tile_the_term_and_agree_with_plan_at(
    days: list[int], term_days: int | None
) -> None:
    """Whatever plan changes were made, each instant of the term falls in exactly one
    segment, and its plan is ``Contract.plan_at`` of that instant."""
    ends_at = None if term_days is None else T0 + timedelta(days=term_days)
    amended = contract(ends_at)
    for n, day in enumerate(days):
        at = T0 + timedelta(days=day)
        amended = amend(amended, Amendment("k1", at, plan=PlanChange(at, f"card{n}", n or None)))
    segments = plan_segments(amended)
    for day in range(-40, 130):
        instant = T0 + timedelta(days=day, hours=12)
        holding = [
            plan
            for start, until, plan in segments
            if start <= instant and (until is None or instant < until)
        ]
        if amended.is_active_at(instant):
            assert holding == [amended.plan_at(instant)], instant
        else:
            assert holding == [], instant
