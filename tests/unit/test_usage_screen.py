"""RecordUsage's screen lets an event through quickly only when every rule passes.

The screen answers the common case (a good event) without building a report,
and writes the report otherwise: both must agree on which events pass.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ledger.core.validation import PROPERTIES_MAX, UsagePolicy, UsageScreen

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
POLICY = UsagePolicy(late_window=timedelta(days=34), future_tolerance=timedelta(minutes=5))
EARLIEST, LATEST = NOW - POLICY.late_window, NOW + POLICY.future_tolerance

# Mostly good values, with the characters and lengths each rule turns on.
ids = st.one_of(st.just("cust-1"), st.text("ab1_.:@+=-\x00 é", max_size=130))
names = st.one_of(st.just("tokens"), st.text("ab1_.:-\x07 ", max_size=130))
values = st.one_of(st.just("1234"), st.text("a1\n\x1f", max_size=210))
instants = st.one_of(
    st.none(),
    st.sampled_from([EARLIEST, LATEST, EARLIEST - timedelta(microseconds=1)]),
    st.sampled_from([LATEST + timedelta(microseconds=1), NOW]),
    st.datetimes(timezones=st.just(UTC)),
)
properties = st.dictionaries(names, values, max_size=PROPERTIES_MAX + 2)


@given(ids, ids, names, instants, properties)
def test_the_quick_answer_agrees_with_the_report(
    customer_id: str,
    transaction_id: str,
    event_type: str,
    occurred_at: datetime | None,
    props: dict[str, str],
) -> None:
    screen = UsageScreen(POLICY, NOW)
    event = (customer_id, transaction_id, event_type, occurred_at, props)
    report = screen._report(*event)  # every rule checked, one by one
    assert (screen.rejection(*event) is None) == (report is None)
    if report is not None:
        assert screen.rejection(*event) == report


def test_the_window_includes_both_ends() -> None:
    screen = UsageScreen(POLICY, NOW)
    for instant in (EARLIEST, LATEST):
        assert screen.rejection("cust-1", "tx-1", "tokens", instant, {}) is None


def test_each_rule_is_named_in_the_reason() -> None:
    screen = UsageScreen(POLICY, NOW)
    late = EARLIEST - timedelta(microseconds=1)
    early = LATEST + timedelta(microseconds=1)
    assert screen.rejection("cust-1", "tx-1", "tokens", late, {}) == (
        "timestamp is older than the 34-day late window"
    )
    assert screen.rejection("cust-1", "tx-1", "tokens", early, {}) == (
        "timestamp is more than 0:05:00 in the future"
    )
    reason = screen.rejection("", "tx 1", "9lives", None, {"ok": "a\nb"})
    assert reason == (
        "transaction_id must be 1-128 letters, digits or _.:@+=- starting alphanumeric; "
        "customer_id is required; "
        "event_type must be an identifier (letters, digits, _ . : -), max 128; "
        "properties['ok'] value too long or has control characters; "
        "timestamp is required (and must be a valid instant)"
    )
    many = {f"p{i}": "1" for i in range(PROPERTIES_MAX + 1)}
    assert screen.rejection("cust-1", "tx-1", "tokens", NOW, many) == (
        f"properties at most {PROPERTIES_MAX} properties"
    )
