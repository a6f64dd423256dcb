"""The statement page: every figure is the model's exact Decimal, all text is
escaped, nothing is fetched, and the day chart copes with any run of days."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.canonical import format_decimal, format_instant
from projections.statement_model import Statement
from services import statement_page
from services.statement_page import render_statement
from tests.statement_fixtures import (
    HOSTILE_GROUP,
    HOSTILE_NAME,
    INVOICE_ID,
    NEGATIVE_DAY,
    balances,
    days_from,
    invoice,
    lines,
    statement,
)

VOID_ELEMENTS = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "wbr"})
# Attributes that, with data-field, name which figure an element is.
KEYS = ("data-line", "data-tier", "data-grant", "data-seq", "data-day", "data-metric")


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def key(self) -> tuple[str, ...]:
        return (self.attrs["data-field"], *(self.attrs[k] for k in KEYS if k in self.attrs))


class Page(HTMLParser):
    """Every element of a page in document order, with its attributes and text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in VOID_ELEMENTS:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.parts.append(data)

    def find(self, tag: str = "", **attrs: str) -> list[Element]:
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            e
            for e in self.elements
            if (not tag or e.tag == tag) and all(e.attrs.get(n) == v for n, v in wanted.items())
        ]

    def figures(self, attribute: str) -> dict[tuple[str, ...], Element]:
        tagged = [e for e in self.elements if attribute in e.attrs]
        assert all("data-field" in e.attrs for e in tagged)
        keys = Counter(e.key() for e in tagged)
        assert [k for k, n in keys.items() if n > 1] == [], "each figure is shown once"
        return {e.key(): e for e in tagged}


def page_of(value: Statement) -> Page:
    return Page(render_statement(value))


def expected_amounts(value: Statement) -> dict[tuple[str, ...], Decimal]:
    """Every money figure the page must show, keyed as its data attributes name it."""
    bill = value.invoice
    amounts: dict[tuple[str, ...], Decimal] = {
        ("subtotal",): bill.subtotal,
        ("credits_applied",): bill.credits_applied,
        ("total",): bill.total,
    }
    for i, line in enumerate(bill.lines):
        amounts[("line-unit-price", str(i))] = line.unit_price
        amounts[("line-amount", str(i))] = line.amount
        for n, tier in enumerate(line.tiers):
            amounts[("tier-unit-price", str(i), str(n))] = tier.unit_price
            amounts[("tier-flat-fee", str(i), str(n))] = tier.flat_fee
            amounts[("tier-amount", str(i), str(n))] = tier.amount
    for credit in bill.credits:
        amounts[("credit", credit.grant_id)] = credit.amount
    for view in value.balances:
        grant_id = view.grant.grant_id
        amounts[("grant-amount", grant_id)] = view.grant.amount
        amounts[("grant-remaining", grant_id)] = view.remaining
        for entry in view.entries:
            amounts[("entry-amount", grant_id, str(entry.seq))] = entry.amount
    for d, day in enumerate(value.days):
        amounts[("day-spend", str(d))] = day.spend
        amounts[("day-cumulative", str(d))] = day.cumulative
    return amounts


def expected_quantities(value: Statement) -> dict[tuple[str, ...], Decimal]:
    quantities: dict[tuple[str, ...], Decimal] = {}
    for i, line in enumerate(value.invoice.lines):
        quantities[("line-quantity", str(i))] = line.quantity
        for n, tier in enumerate(line.tiers):
            quantities[("tier-quantity", str(i), str(n))] = tier.quantity
            if tier.up_to is not None:
                quantities[("tier-up-to", str(i), str(n))] = tier.up_to
    for d, day in enumerate(value.days):
        for use in day.usage:
            quantities[("day-usage", str(d), use.metric_id)] = use.quantity
    return quantities


# -- figures ----------------------------------------------------------------------


def test_every_amount_shown_is_the_models_exact_decimal() -> None:
    value = statement()
    shown = page_of(value).figures("data-amount")
    expected = expected_amounts(value)
    assert {k: e.attrs["data-amount"] for k, e in shown.items()} == {
        k: format_decimal(v) for k, v in expected.items()
    }
    for key, element in shown.items():
        # The text is the same digits, grouped, then the currency.
        assert element.text == f"{format(expected[key], ',f')} USD", key
        assert Decimal(element.text.removesuffix(" USD").replace(",", "")) == expected[key]


def test_the_totals_are_tagged_as_the_brief_names_them() -> None:
    shown = page_of(statement()).figures("data-amount")
    assert shown[("subtotal",)].attrs["data-amount"] == "340.56"
    assert shown[("credits_applied",)].attrs["data-amount"] == "140.56"
    assert shown[("total",)].attrs["data-amount"] == "200.00"
    assert shown[("credit", "promo-<x>")].attrs["data-amount"] == "40.56"
    assert shown[("grant-remaining", "credit-1")].attrs["data-amount"] == "150.00"
    assert shown[("line-amount", "1")].attrs["data-amount"] == "130.00"
    assert shown[("day-spend", str(NEGATIVE_DAY))].attrs["data-amount"] == "-3.10"


def test_every_quantity_shown_is_exact() -> None:
    value = statement()
    shown = page_of(value).figures("data-quantity")
    assert {k: e.attrs["data-quantity"] for k, e in shown.items()} == {
        k: format_decimal(v) for k, v in expected_quantities(value).items()
    }
    assert shown[("line-quantity", "0")].text == "1,234,567"


def test_decimals_in_exponent_form_are_written_out_in_full() -> None:
    tiny = invoice(lines=(replace(lines()[0], unit_price=Decimal("1E-7")),))
    value = statement(invoice=tiny, days=days_from([Decimal("1E+3"), Decimal("-0.00")]))
    shown = page_of(value).figures("data-amount")
    assert shown[("line-unit-price", "0")].attrs["data-amount"] == "0.0000001"
    assert shown[("line-unit-price", "0")].text == "0.0000001 USD"
    assert shown[("day-spend", "0")].attrs["data-amount"] == "1000"
    assert shown[("day-spend", "0")].text == "1,000 USD"
    assert "E+" not in render_statement(value)


def test_a_grant_in_another_currency_shows_its_own() -> None:
    view = balances()[0]
    euro = replace(view, grant=replace(view.grant, currency="EUR"))
    shown = page_of(statement(balances=(euro,))).figures("data-amount")
    assert shown[("grant-remaining", "credit-1")].text == "150.00 EUR"


# -- text -------------------------------------------------------------------------


def test_customer_text_is_escaped_everywhere() -> None:
    text = render_statement(statement())
    assert "<script" not in text.lower()
    assert HOSTILE_NAME not in text
    assert (
        "Acme &lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; Sons &#x27;Ltd&#x27;"
        in text
    )
    page = Page(text)
    assert page.find("h1")[0].text == f"Statement for {HOSTILE_NAME}"
    assert page.find("title")[0].text == f"Statement {INVOICE_ID} for {HOSTILE_NAME}"
    assert any(e.text == f"model=gpt-4, region={HOSTILE_GROUP}" for e in page.find("td"))
    assert page.find(data_field="credit", data_grant="promo-<x>")
    assert any(e.text == "no rate for region=ap-<south>" for e in page.find("td"))
    assert page.find(data_field="override")[0].text == "ovr-<special>"


def test_page_is_self_contained() -> None:
    text = render_statement(statement())
    assert text.startswith("<!DOCTYPE html>\n")
    lowered = text.lower()
    for reference in ("http://", "https://", "src=", "@import", "url(", "@font-face", "//"):
        assert reference not in lowered, reference
    for tag in ("<script", "<link", "<img", "<iframe", "<object", "<embed", "<base", "<form"):
        assert tag not in lowered, tag
    page = Page(text)
    assert page.find("meta", charset="utf-8")
    policy = page.find("meta", http_equiv="Content-Security-Policy")[0].attrs["content"]
    assert "default-src 'none'" in policy
    assert len(page.find("style")) == 1


def test_header_names_the_invoice_and_how_it_was_computed() -> None:
    value = statement()
    page = page_of(value)
    assert page.find(data_field="invoice-id")[0].text == INVOICE_ID
    assert page.find(data_field="status")[0].text == "DRAFT"
    text = render_statement(value)
    assert value.content_sha256 in text
    assert "ledger seq 4711" in text
    assert "acme-&lt;&amp;&gt;" in text
    times = {e.attrs["datetime"] for e in page.find("time")}
    assert format_instant(value.invoice.period_start) in times
    assert format_instant(value.generated_at) in times


@pytest.mark.parametrize(
    ("status", "note"),
    [("DRAFT", "can still change"), ("FINALIZED", ""), ("VOIDED", "no longer owed")],
)
def test_status_is_shown_with_what_it_means(status: str, note: str) -> None:
    page = page_of(statement(status=status))
    badge = page.find(data_field="status")[0]
    assert badge.text == status
    assert f"status-{status.lower()}" in badge.attrs["class"]
    notes = [e.text for e in page.find("strong")]  # only the header's status note is bold
    assert notes == ([n for n in notes if note in n] if note else [])
    assert len(notes) == (1 if note else 0)


def test_each_line_says_how_it_was_computed() -> None:
    value = statement()
    page = page_of(value)
    rows = page.find("tr", **{"class": "line"})
    assert len(rows) == len(value.invoice.lines)
    hows = [e.text for e in page.find("tr", **{"class": "how"})]
    for line, how in zip(value.invoice.lines, hows, strict=True):
        assert line.explanation in how
        assert f"{line.model.value.replace('_', ' ')} rate" in how
    assert len(page.find("table", **{"class": "tiers"})) == 1
    assert page.find(data_field="tier-up-to", data_line="1", data_tier="0")[0].text == "1,000"
    assert "∞" in hows[1]
    assert "override ovr-<special>" in hows[1]


def test_segments_are_dated_only_when_they_are_not_the_whole_period() -> None:
    value = statement()
    segments = [row.text for row in page_of(value).find("tr", **{"class": "line"})]
    assert "whole period" in segments[0]
    assert "2026-01-15 – 2026-02-01" in segments[2]  # prorated seats
    assert "2025-12-10 – 2025-12-11 06:30:00" in segments[3]  # an earlier period
    assert "adjustment of inv-2025-12-acme" in segments[3]
    assert "true-up" in segments[4]


def test_balances_show_each_grant_and_its_entries() -> None:
    page = page_of(statement())
    grants = page.find("div", **{"class": "grant"})
    assert len(grants) == 2
    assert "no expiry" in grants[0].text and "all products" in grants[0].text
    assert "2026-03-01" in grants[1].text and "api-calls, storage" in grants[1].text
    assert "prepaid commit" in grants[1].text
    entry = page.find(data_field="entry-amount", data_grant="credit-1", data_seq="40")[0]
    assert entry.text == "-100.00 USD"


def test_unbilled_usage_is_listed_only_when_there_is_some() -> None:
    page = page_of(statement())
    count = page.find(data_field="unbilled-count", data_metric="tokens")[0]
    assert (count.text, count.attrs["data-count"]) == ("12", "12")
    assert "Unbilled usage" not in render_statement(statement(invoice=invoice(unbilled=())))


# -- the day chart ------------------------------------------------------------------


def zero_line(page: Page) -> float:
    (line,) = page.find("line", **{"class": "zero"})
    assert line.attrs["y1"] == line.attrs["y2"]
    return float(line.attrs["y1"])


def assert_chart_fits(page: Page, days: int) -> None:
    """One bar and one point a day, all inside the plot, the bars standing on zero."""
    (svg,) = page.find("svg")
    assert svg.attrs["data-days"] == str(days)
    assert page.find("title", id="chart-title")
    bars = [e for e in page.find("rect") if "data-day" in e.attrs]
    assert len(bars) == days
    top, bottom = statement_page.PLOT_TOP - 0.01, statement_page.PLOT_BOTTOM + 0.01
    zero = zero_line(page)
    for bar in bars:
        y, height = float(bar.attrs["y"]), float(bar.attrs["height"])
        assert height >= 0 and top <= y and y + height <= bottom
        assert zero in (pytest.approx(y, abs=0.011), pytest.approx(y + height, abs=0.011))
    points = page.find("circle")
    assert len(points) == days
    assert all(top <= float(p.attrs["cy"]) <= bottom for p in points)
    for tick in page.find("text"):
        if tick.attrs.get("class", "").startswith("tick-"):
            Decimal(tick.text.replace(",", ""))  # an exact decimal, never a float's repr


def test_chart_draws_a_bar_a_day_and_the_cumulative_line() -> None:
    value = statement()
    page = page_of(value)
    assert_chart_fits(page, len(value.days))
    (line,) = page.find("polyline")
    assert len(line.attrs["points"].split()) == len(value.days)
    negative = page.find("rect", data_day=str(NEGATIVE_DAY))[0]
    assert negative.attrs["class"] == "bar negative"
    assert float(negative.attrs["y"]) == pytest.approx(zero_line(page), abs=0.011)
    assert "spend -3.10 USD" in negative.text
    labels = [t for t in page.find("text") if t.text.startswith("2026-01-")]
    assert 3 <= len(labels) <= statement_page.DATE_TICKS_MAX
    assert labels[0].text == "2026-01-01"


def test_chart_ticks_are_exact_and_include_zero() -> None:
    page = page_of(statement())
    for side in ("tick-spend", "tick-cumulative"):
        ticks = [Decimal(t.text.replace(",", "")) for t in page.find("text", **{"class": side})]
        assert Decimal(0) in ticks
        assert ticks == sorted(ticks, reverse=True) or ticks == sorted(ticks)
        assert min(ticks) < 0  # the negative day needs room below zero


def test_no_days_still_renders_a_chart() -> None:
    page = page_of(statement(days=()))
    (svg,) = page.find("svg")
    assert "No days in this period yet." in svg.text
    assert page.find("title", id="chart-title")
    assert not page.find("polyline")
    assert not [e for e in page.elements if e.attrs.get("data-field", "").startswith("day-")]


def test_one_day() -> None:
    page = page_of(statement(days=days_from([Decimal("12.34")])))
    assert_chart_fits(page, 1)
    assert page.find("text", **{"class": "tick-spend"})


def test_all_zero_spend_draws_flat_at_zero() -> None:
    page = page_of(statement(days=days_from([Decimal("0.00")] * 5)))
    assert_chart_fits(page, 5)
    bars = [e for e in page.find("rect") if "data-day" in e.attrs]
    assert all(float(bar.attrs["height"]) == 0 for bar in bars)


def test_only_negative_spend_hangs_below_zero() -> None:
    page = page_of(statement(days=days_from([Decimal("-5.00"), Decimal("-0.25")])))
    assert_chart_fits(page, 2)
    zero = zero_line(page)
    assert all(float(c.attrs["cy"]) > zero for c in page.find("circle"))


def test_whole_days_show_their_date_and_partial_days_their_instants() -> None:
    whole = page_of(statement()).find("table", **{"class": "days"})[0].text
    assert "2026-01-01" in whole and "2026-01-01 – 2026-01-02" not in whole
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    partial = page_of(statement(days=days_from([Decimal(1)], start)))
    text = partial.find("table", **{"class": "days"})[0].text
    assert "2026-01-01 12:00:00 – 2026-01-02 12:00:00" in text


def test_a_long_period_has_a_handful_of_date_labels() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    page = page_of(statement(days=days_from([Decimal(1)] * 92, start)))
    labels = [t for t in page.find("text") if t.text.startswith("2026-")]
    assert 3 <= len(labels) <= statement_page.DATE_TICKS_MAX


@given(
    st.lists(
        st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False),
        max_size=40,
    )
)
def test_any_run_of_days_fits_the_chart(spends: list[Decimal]) -> None:
    value = statement(days=days_from(spends))
    page = page_of(value)
    if spends:
        assert_chart_fits(page, len(spends))
    shown = page.figures("data-amount")
    for d, day in enumerate(value.days):
        assert shown[("day-spend", str(d))].attrs["data-amount"] == format_decimal(day.spend)
