"""Spend alert crossings: validation, period spend, and the balance re-arm logic (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.alerts import (
    AlertKind,
    BalancePoint,
    Crossing,
    Observed,
    PeriodSpend,
    SpendAlert,
    Watch,
    balance_points,
    next_balance_crossing,
    parse_alert,
    period_crossing,
    remaining_balance,
)
from ledger.core.credits import BalanceBook, BalanceEntry, EntryKind, Grant, GrantKind
from ledger.core.errors import DomainError, Rule

T0 = datetime(2026, 3, 1, tzinfo=UTC)
THRESHOLD = Decimal("100")


def alert(kind: AlertKind = AlertKind.REMAINING_BALANCE, threshold: str = "100") -> SpendAlert:
    return SpendAlert("a-1", "cus-1", kind, Decimal(threshold), "USD")


def grant(
    grant_id: str,
    amount: str,
    *,
    currency: str = "USD",
    kind: GrantKind = GrantKind.CREDIT,
    starts_at: datetime = T0,
    expires_at: datetime | None = None,
) -> Grant:
    return Grant(grant_id, "cus-1", kind, Decimal(amount), currency, starts_at, expires_at)


def book_of(*grants: Grant) -> BalanceBook:
    book = BalanceBook()
    for g in grants:
        book = book.grant(g, g.starts_at)
    return book


def holding(value: Decimal) -> BalanceBook:
    """A book whose whole balance is ``value``, valid at any time after T0."""
    return book_of(grant("g", str(value)))


# ---------------------------------------------------------------------------------------
# Validation


def test_a_request_with_every_field_wrong_reports_every_field() -> None:
    with pytest.raises(DomainError) as raised:
        parse_alert(alert_id="", customer_id="a b", kind="weekly", threshold="NaN", currency="$")
    assert raised.value.rule is Rule.REQUEST_INVALID
    fields = {v.field for v in raised.value.violations}
    assert fields == {"alert_id", "customer_id", "kind", "threshold", "currency"}


@pytest.mark.parametrize("threshold", ["-1", "1e3", "1,000", " 5", "", "Infinity"])
def test_a_threshold_is_a_non_negative_plain_decimal(threshold: str) -> None:
    with pytest.raises(DomainError) as raised:
        parse_alert(
            alert_id="a", customer_id="c", kind="period_spend", threshold=threshold, currency="USD"
        )
    assert [v.field for v in raised.value.violations] == ["threshold"]


def test_a_zero_threshold_means_depleted_for_a_balance_but_nothing_for_spend() -> None:
    depleted = parse_alert(
        alert_id="a", customer_id="c", kind="remaining_balance", threshold="0", currency="USD"
    )
    assert depleted.threshold == 0
    with pytest.raises(DomainError):
        parse_alert(
            alert_id="a", customer_id="c", kind="period_spend", threshold="0", currency="USD"
        )


def test_a_custom_pricing_unit_is_a_currency() -> None:
    parsed = parse_alert(
        alert_id="a", customer_id="c", kind="period_spend", threshold="5.5", currency="credits"
    )
    assert (parsed.kind, parsed.threshold, parsed.currency) == (
        AlertKind.PERIOD_SPEND,
        Decimal("5.5"),
        "credits",
    )


# ---------------------------------------------------------------------------------------
# Period spend


def spend(subtotal: str, currency: str = "USD") -> PeriodSpend:
    return PeriodSpend("in-c1-2", Decimal(subtotal), currency, through_seq=42)


def test_period_spend_fires_when_the_subtotal_reaches_the_threshold() -> None:
    watch = alert(AlertKind.PERIOD_SPEND)
    assert period_crossing(watch, spend("99.99"), fired=False, at=T0) is None
    assert period_crossing(watch, spend("100.00"), fired=False, at=T0) == Crossing(
        "in-c1-2", Decimal("100.00"), T0, 42
    )


def test_period_spend_fires_once_per_period_invoice() -> None:
    watch = alert(AlertKind.PERIOD_SPEND)
    assert period_crossing(watch, spend("500"), fired=True, at=T0) is None


def test_period_spend_in_another_currency_or_without_a_period_never_fires() -> None:
    watch = alert(AlertKind.PERIOD_SPEND)
    assert period_crossing(watch, spend("500", "EUR"), fired=False, at=T0) is None
    assert period_crossing(watch, None, fired=False, at=T0) is None


# ---------------------------------------------------------------------------------------
# Remaining balance


def test_the_balance_counts_balances_valid_then_in_the_currency() -> None:
    later = T0 + timedelta(days=10)
    book = book_of(
        grant("credit", "100"),
        grant("commit", "50", kind=GrantKind.PREPAID_COMMIT),
        grant("postpaid", "1000", kind=GrantKind.POSTPAID_COMMIT),  # a minimum, not a balance
        grant("euros", "70", currency="EUR"),
        grant("future", "30", starts_at=later),
        grant("lapsing", "20", expires_at=later),
    )
    book = book.record(BalanceEntry("credit", EntryKind.DRAWN_DOWN, Decimal("-40"), T0))
    assert remaining_balance(book, "USD", T0) == Decimal("130")  # 60 + 50 + 20
    assert remaining_balance(book, "USD", later) == Decimal("140")  # 60 + 50 + 30
    assert remaining_balance(book, "EUR", T0) == Decimal("70")


def points(*values: str) -> list[BalancePoint]:
    return [BalancePoint(i, T0 + timedelta(hours=i), Decimal(v)) for i, v in enumerate(values)]


def test_a_fresh_alert_already_at_or_below_fires_at_once() -> None:
    assert next_balance_crossing(THRESHOLD, 0, points("100")) == Crossing(
        "1", Decimal("100"), T0, 0
    )


def test_a_fresh_alert_fires_at_the_first_point_at_or_below() -> None:
    crossing = next_balance_crossing(THRESHOLD, 0, points("300", "150", "80", "20"))
    assert crossing is not None
    assert (crossing.crossing_key, crossing.value, crossing.through_seq) == ("1", Decimal(80), 2)


def test_after_a_crossing_staying_below_fires_nothing() -> None:
    assert next_balance_crossing(THRESHOLD, 1, points("80", "50", "0")) is None


def test_a_rise_above_re_arms_and_the_next_fall_is_the_next_crossing() -> None:
    crossing = next_balance_crossing(THRESHOLD, 1, points("80", "280", "100"))
    assert crossing is not None
    assert (crossing.crossing_key, crossing.value, crossing.through_seq) == ("2", Decimal(100), 2)


def test_a_rise_that_has_not_fallen_yet_fires_nothing() -> None:
    assert next_balance_crossing(THRESHOLD, 3, points("80", "280", "101")) is None


def observed(*values: str) -> list[Observed]:
    """The customer's events 1..n, each leaving the whole balance at its value."""
    return [
        Observed(i, T0 + timedelta(hours=i), holding(Decimal(v))) for i, v in enumerate(values, 1)
    ]


def test_points_start_at_the_watch_then_each_later_event_then_now() -> None:
    history = observed("300", "250", "80", "500")
    now = T0 + timedelta(days=1)
    found = balance_points(history, "USD", Watch(2, T0 + timedelta(hours=2)), now, head_seq=9)
    assert [(p.seq, p.value) for p in found] == [
        (2, Decimal(250)),  # as it stood at the watch
        (3, Decimal(80)),
        (4, Decimal(500)),
        (9, Decimal(500)),  # now, through the head
    ]


def test_points_of_a_customer_without_events_since_the_watch() -> None:
    history = observed("300")
    found = balance_points(history, "USD", Watch(5, T0), T0 + timedelta(days=1), head_seq=7)
    assert [(p.seq, p.value) for p in found] == [(5, Decimal(300)), (7, Decimal(300))]


def test_each_event_is_seen_at_its_own_time_and_now_at_now() -> None:
    """A grant that lapses is gone from the points after its expiry, event or not."""
    expiry = T0 + timedelta(hours=2)
    lapsing = book_of(grant("g", "300", expires_at=expiry))
    history = [Observed(1, T0 + timedelta(hours=1), lapsing)]
    found = balance_points(history, "USD", Watch(0, T0), T0 + timedelta(hours=3), head_seq=1)
    assert [p.value for p in found] == [Decimal(0), Decimal(300), Decimal(0)]


def crossings_after_evaluations(
    values: Sequence[str], checkpoints: Sequence[int], set_after: int = 0
) -> list[str]:
    """Evaluate (as the app does: passes until none) after each prefix of the events;
    the alert is set right after event ``set_after``."""
    history = observed(*values)
    fired: list[Crossing] = []
    for end in (*checkpoints, len(history)):
        seen, now = history[:end], T0 + timedelta(hours=end, minutes=30)
        while True:
            last = fired[-1] if fired else None
            start = Watch(set_after, T0 + timedelta(hours=set_after, minutes=10))
            watch = Watch(last.through_seq, last.at) if last else start
            found = balance_points(seen, "USD", watch, now, head_seq=end)
            crossing = next_balance_crossing(THRESHOLD, len(fired), found)
            if crossing is None:
                break
            fired.append(crossing)
    return [c.crossing_key for c in fired]


def transitions(values: Sequence[str]) -> int:
    """Falls to or below the threshold, counting an empty start as below."""
    balances = [Decimal(0), *map(Decimal, values)]
    return sum(
        1
        for i, value in enumerate(balances)
        if value <= THRESHOLD and (i == 0 or balances[i - 1] > THRESHOLD)
    )


@given(
    values=st.lists(st.sampled_from(["0", "50", "100", "101", "250"]), max_size=12),
    checkpoints=st.lists(st.integers(0, 12), max_size=6).map(sorted),
)
def test_every_crossing_fires_once_however_often_evaluations_run(
    values: list[str], checkpoints: list[int]
) -> None:
    """The crossings recorded depend on the ledger only, not on when it was evaluated."""
    keys = crossings_after_evaluations(values, checkpoints)
    assert keys == [str(n) for n in range(1, transitions(values) + 1)]
    assert keys == crossings_after_evaluations(values, [])


def test_grant_drawdown_regrant_drawdown_is_two_crossings() -> None:
    """Set while 300 is left: a fall to 80 fires 1, a new grant re-arms, the next
    fall fires 2, and falling further fires nothing."""
    values = ["300", "80", "280", "80", "40"]
    assert crossings_after_evaluations(values, [1, 2, 3, 4], set_after=1) == ["1", "2"]
    assert crossings_after_evaluations(values, [], set_after=1) == ["1", "2"]
