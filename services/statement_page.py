"""A customer's statement as one self-contained HTML page.

The page is what a customer, or support on their behalf, reads to check an
invoice: every line with how it was priced, the credits drawn, the balances
left and how spend built up day by day. It must be trustworthy, so every figure
is the model's own ``Decimal`` written exactly (grouped digits, never a float),
and each one is tagged with ``data-field`` and ``data-amount`` (or
``data-quantity``) so that tests, and anyone reconciling, can compare the page
with the ledger without reading display text.

It must also last and travel: it is archived, e-mailed and opened offline, so
it is a single file with inline CSS and inline SVG, no scripts, fonts, images
or links to fetch. Names, ids and group values come from customers, so all text
is escaped, and a Content-Security-Policy forbidding every fetch and script
backs that up (and makes any stray reference a console error a browser reports).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Final

from ledger.core.canonical import format_decimal, format_instant
from ledger.core.invoice import Invoice, InvoiceLine, LineKind
from ledger.core.money import EXACT
from ledger.core.rate_models import TierUse
from projections.balances import GrantView
from projections.statement_model import Statement, StatementDay

# Nothing may be fetched or run; inline styles only. frame-ancestors is left out:
# a <meta> policy cannot carry it, and Chromium logs a console error if it tries.
CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE: Final = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6475; --rule: #d9dee7;
  --pos: #3b6fd8; --neg: #d2542f; --line: #1f8a5b; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f9; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 24px auto; background: #fff; padding: 28px 32px;
  border: 1px solid var(--rule); border-radius: 6px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px;
  border-bottom: 2px solid var(--rule); }
h3 { font-size: 14px; margin: 16px 0 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--rule);
  vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.muted, .note { color: var(--muted); }
.note { font-size: 12px; }
code, .mono { font-family: "DejaVu Sans Mono", ui-monospace, monospace; font-size: 12px; }
.hash { word-break: break-all; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 12px 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 700; letter-spacing: .04em; background: #e6e9ef; }
.status-draft { background: #fff1c2; color: #7a5a00; }
.status-finalized { background: #d6f2e2; color: #135c36; }
.status-voided { background: #fbdcd5; color: #8a2612; }
tr.line > td { border-bottom: none; }
tr.how > td { padding: 0 8px 10px 32px; font-size: 12px; }
table.tiers { width: auto; margin-top: 4px; }
table.tiers th, table.tiers td { padding: 2px 10px; }
table.totals { width: auto; margin-left: auto; }
table.totals td { border-bottom: none; padding: 3px 8px; }
table.totals tr.due td { border-top: 2px solid var(--ink); font-weight: 700; font-size: 16px; }
.grant { border: 1px solid var(--rule); border-radius: 4px; padding: 8px 12px; margin: 10px 0; }
svg.chart { width: 100%; height: auto; display: block; margin: 8px 0; }
svg.chart text { font-size: 11px; fill: var(--muted); }
svg.chart .axis { stroke: #8a93a3; stroke-width: 1; }
svg.chart .grid { stroke: #e6e9ef; stroke-width: 1; }
svg.chart .zero { stroke: var(--ink); stroke-width: 1.2; }
svg.chart .bar, svg.chart .key { fill: var(--pos); opacity: .8; }
svg.chart .tick-spend { fill: var(--pos); }
svg.chart .tick-cumulative { fill: var(--line); }
svg.chart .bar.negative { fill: var(--neg); }
svg.chart .cumulative { fill: none; stroke: var(--line); stroke-width: 2; }
svg.chart .point { fill: var(--line); }
@media print { body { background: #fff; } main { border: none; margin: 0; }
  tr, .grant { break-inside: avoid; } }
"""

# The chart's drawing area, in SVG user units; the SVG scales to the page width.
CHART_WIDTH: Final = 1000
CHART_HEIGHT: Final = 320
PLOT_LEFT: Final = 100  # room for the widest amount label, each side
PLOT_RIGHT: Final = CHART_WIDTH - 100
PLOT_TOP: Final = 36
PLOT_BOTTOM: Final = CHART_HEIGHT - 48
AXIS_STEP_CHOICES: Final = (4, 5, 6)  # gridline intervals, counted across zero
NICE_MULTIPLES: Final = (1, 2, Decimal("2.5"), 5, 10)
DATE_TICKS_MAX: Final = 7
BAR_SHARE: Final = 0.7  # of each day's slot; the rest is the gap between bars
BAR_WIDTH_MAX: Final = 48  # a day or two should not draw a slab
EMPTY_CHART_HEIGHT: Final = 60

KIND_LABELS: Final = {LineKind.USAGE: "usage", LineKind.TRUE_UP: "true-up"}
LINE_COLUMNS: Final = 8
LINE_FIGURES_FROM: Final = 5  # quantity, unit price, amount


def render_statement(statement: Statement) -> str:
    """The statement as a complete HTML5 page (UTF-8 text)."""
    invoice = statement.invoice
    title = f"Statement {invoice.invoice_id} for {statement.customer_name}"
    body = "\n".join(
        (
            _header(statement),
            _lines_section(invoice),
            _totals_section(invoice),
            _balances_section(statement.balances),
            _unbilled_section(invoice),
            _days_section(statement.days, invoice.currency),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# -- text and figures ---------------------------------------------------------


def _e(text: str) -> str:
    """Escaped for element text and quoted attributes alike."""
    return html.escape(text, quote=True)


def _grouped(value: Decimal) -> str:
    """Every digit the Decimal has, thousands grouped: Decimal's own formatting, no float."""
    return format(value, ",f")


def _data(fields: Mapping[str, object]) -> str:
    return "".join(f' data-{name}="{_e(str(value))}"' for name, value in fields.items())


def _money(value: Decimal, currency: str, field: str, **keys: object) -> str:
    """An amount, tagged with what it is and its exact value (``format_decimal``)."""
    attrs = _data({"field": field, "amount": format_decimal(value), **keys})
    return f'<span class="amount"{attrs}>{_grouped(value)} {_e(currency)}</span>'


def _quantity(value: Decimal, field: str, **keys: object) -> str:
    attrs = _data({"field": field, "quantity": format_decimal(value), **keys})
    return f'<span class="quantity"{attrs}>{_grouped(value)}</span>'


def _count(value: int, field: str, **keys: object) -> str:
    attrs = _data({"field": field, "count": value, **keys})
    return f"<span{attrs}>{value:,d}</span>"


def _instant(instant: datetime) -> str:
    """A UTC instant: the date alone at midnight, else to the second (or microsecond)."""
    exact = format_instant(instant)  # also refuses naive datetimes
    utc = instant.astimezone(UTC)
    if utc.time() == time(0):
        label = utc.date().isoformat()
    else:
        spec = "microseconds" if utc.microsecond else "seconds"
        label = utc.replace(tzinfo=None).isoformat(sep=" ", timespec=spec)
    return f'<time datetime="{exact}">{label}</time>'


def _span(start: datetime, end: datetime) -> str:
    return f"{_instant(start)} – {_instant(end)}"


def _table(head: Sequence[str], rows: Iterable[str], css: str = "", numeric_from: int = 99) -> str:
    """A table of rendered ``<tr>`` rows; columns from ``numeric_from`` on are figures."""
    cells = "".join(
        f'<th class="num">{h}</th>' if i >= numeric_from else f"<th>{h}</th>"
        for i, h in enumerate(head)
    )
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(*cells: str, numeric_from: int = 99, css: str = "") -> str:
    """A row; cells from ``numeric_from`` on are right-aligned figures."""
    tds = "".join(
        f'<td class="num">{cell}</td>' if i >= numeric_from else f"<td>{cell}</td>"
        for i, cell in enumerate(cells)
    )
    klass = f' class="{css}"' if css else ""
    return f"<tr{klass}>{tds}</tr>"


def _mono(text: str, field: str = "") -> str:
    attrs = _data({"field": field}) if field else ""
    return f'<span class="mono"{attrs}>{_e(text)}</span>'


# -- header -------------------------------------------------------------------


def _header(statement: Statement) -> str:
    invoice = statement.invoice
    status = statement.status.upper()
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in _facts(statement))
    return (
        f"<header><h1>Statement for {_e(statement.customer_name)}</h1>"
        f"<p>Invoice {_mono(invoice.invoice_id, 'invoice-id')} "
        f'<span class="status status-{_e(status.lower())}" data-field="status">{_e(status)}</span>'
        f"</p>{_status_note(status)}<dl class='meta'>{items}</dl></header>"
    )


def _facts(statement: Statement) -> list[tuple[str, str]]:
    """The header's name/value pairs (values already HTML)."""
    invoice = statement.invoice
    versions = ", ".join(str(v) for v in invoice.rate_card_versions) or "–"
    facts = [
        ("Customer", f"{_e(statement.customer_name)} ({_mono(statement.customer_id)})"),
        (
            "Period (UTC)",
            f"{_span(invoice.period_start, invoice.period_end)}"
            " <span class='note'>(end exclusive)</span>",
        ),
        ("Currency", _e(invoice.currency)),
        ("Computed through", f"ledger seq {invoice.computed_through_seq}"),
        ("Contract", f"{_mono(invoice.contract_id)} v{invoice.contract_version}"),
        ("Rate card", f"{_mono(invoice.rate_card_id)} v{_e(versions)}"),
        ("Content SHA-256", f"<span class='mono hash'>{_e(statement.content_sha256)}</span>"),
        ("Generated at (UTC)", _instant(statement.generated_at)),
    ]
    if invoice.replaces_invoice_id:
        facts.append(("Replaces", _mono(invoice.replaces_invoice_id)))
    return facts


def _status_note(status: str) -> str:
    """What the status means for the figures below, said where it cannot be missed."""
    notes = {
        "DRAFT": "Draft: these figures can still change until the invoice is finalized.",
        "VOIDED": "Voided: this invoice is no longer owed.",
    }
    note = notes.get(status)
    return f"<p class='note'><strong>{note}</strong></p>" if note else ""


# -- invoice lines --------------------------------------------------------------


def _lines_section(invoice: Invoice) -> str:
    if not invoice.lines:
        return "<section><h2>Invoice lines</h2><p class='muted'>No lines.</p></section>"
    head = ("", "Product", "Group", "Segment", "Kind", "Quantity", "Unit price", "Amount")
    rows = (_line_rows(index, line, invoice) for index, line in enumerate(invoice.lines))
    table = _table(head, rows, "lines", numeric_from=LINE_FIGURES_FROM)
    return f"<section><h2>Invoice lines</h2>{table}</section>"


def _line_rows(index: int, line: InvoiceLine, invoice: Invoice) -> str:
    """The line itself, then a row under it saying how it was computed."""
    currency = invoice.currency
    row = _row(
        f"<span class='muted'>{index + 1}</span>",
        f"{_e(line.product_name)} <span class='muted'>({_mono(line.product_id)})</span>",
        _e(", ".join(f"{k}={v}" for k, v in sorted(line.group_values.items()))),
        _segment(line, invoice),
        _kind(line),
        _quantity(line.quantity, "line-quantity", line=index),
        _money(line.unit_price, currency, "line-unit-price", line=index),
        _money(line.amount, currency, "line-amount", line=index),
        numeric_from=LINE_FIGURES_FROM,
        css="line",
    )
    how = _how(index, line, currency)
    return f'{row}<tr class="how"><td colspan="{LINE_COLUMNS}">{how}</td></tr>'


def _segment(line: InvoiceLine, invoice: Invoice) -> str:
    """Dates only for part of the period (proration, a plan change, an earlier period)."""
    whole = (line.segment_start, line.segment_end) == (invoice.period_start, invoice.period_end)
    return (
        "<span class='muted'>whole period</span>"
        if whole
        else _span(line.segment_start, line.segment_end)
    )


def _kind(line: InvoiceLine) -> str:
    if line.kind is LineKind.ADJUSTMENT:
        return f"adjustment of {_mono(line.adjusts_invoice_id, 'adjusts')}"
    return KIND_LABELS[line.kind]


def _how(index: int, line: InvoiceLine, currency: str) -> str:
    facts = [
        f"{_e(line.model.value.replace('_', ' '))} rate",
        f"rate card {_mono(line.rate_card_id)} v{line.rate_card_version}",
    ]
    if line.metric_id:
        facts.append(f"metric {_mono(line.metric_id)}")
    if line.override_id:
        facts.append(f"override {_mono(line.override_id, 'override')}")
    tiers = _tiers(index, line.tiers, currency) if line.tiers else ""
    return (
        f"How it was computed: <code>{_e(line.explanation)}</code>"
        f"<br><span class='muted'>{' · '.join(facts)}</span>{tiers}"
    )


def _tiers(index: int, tiers: Sequence[TierUse], currency: str) -> str:
    rows = (
        _row(
            _quantity(t.up_to, "tier-up-to", line=index, tier=n) if t.up_to is not None else "∞",
            _quantity(t.quantity, "tier-quantity", line=index, tier=n),
            _money(t.unit_price, currency, "tier-unit-price", line=index, tier=n),
            _money(t.flat_fee, currency, "tier-flat-fee", line=index, tier=n),
            _money(t.amount, currency, "tier-amount", line=index, tier=n),
            numeric_from=0,
        )
        for n, t in enumerate(tiers)
    )
    head = ("Up to", "Quantity", "Unit price", "Flat fee", "Amount")
    return _table(head, rows, "tiers", numeric_from=0)


# -- totals, balances, unbilled usage ---------------------------------------------


def _totals_section(invoice: Invoice) -> str:
    currency = invoice.currency
    credits = [
        _row(
            f"Credit {_mono(credit.grant_id)}",
            _money(credit.amount, currency, "credit", grant=credit.grant_id),
            numeric_from=1,
        )
        for credit in invoice.credits
    ]
    rows = [
        _row("Subtotal", _money(invoice.subtotal, currency, "subtotal"), numeric_from=1),
        *credits,
        _row(
            "Credits applied",
            _money(invoice.credits_applied, currency, "credits_applied"),
            numeric_from=1,
        ),
        _row("Total due", _money(invoice.total, currency, "total"), numeric_from=1, css="due"),
    ]
    return f"<section><h2>Totals</h2><table class='totals'>{''.join(rows)}</table></section>"


def _balances_section(balances: Sequence[GrantView]) -> str:
    if not balances:
        return "<section><h2>Balances</h2><p class='muted'>No credits or commits.</p></section>"
    return f"<section><h2>Balances</h2>{''.join(_grant(view) for view in balances)}</section>"


def _grant(view: GrantView) -> str:
    grant = view.grant
    expires = _instant(grant.expires_at) if grant.expires_at is not None else "no expiry"
    products = ", ".join(grant.products) or "all products"
    summary = _row(
        _mono(grant.grant_id),
        _e(grant.kind.value.replace("_", " ")),
        f"{_instant(grant.starts_at)} – {expires}",
        _e(products),
        _money(grant.amount, grant.currency, "grant-amount", grant=grant.grant_id),
        _money(view.remaining, grant.currency, "grant-remaining", grant=grant.grant_id),
        numeric_from=4,
    )
    head = ("Grant", "Kind", "Window (UTC)", "Products", "Amount", "Remaining")
    return f"<div class='grant'>{_table(head, [summary], numeric_from=4)}{_entries(view)}</div>"


def _entries(view: GrantView) -> str:
    if not view.entries:
        return "<p class='note'>No entries.</p>"
    grant = view.grant
    rows = (
        _row(
            _instant(entry.at),
            _e(entry.kind.value.replace("_", " ")),
            _mono(entry.invoice_id) if entry.invoice_id else "<span class='muted'>–</span>",
            _money(
                entry.amount, grant.currency, "entry-amount", grant=grant.grant_id, seq=entry.seq
            ),
            numeric_from=3,
        )
        for entry in view.entries
    )
    return _table(("Date (UTC)", "Entry", "Invoice", "Amount"), rows, "entries", numeric_from=3)


def _unbilled_section(invoice: Invoice) -> str:
    if not invoice.unbilled:
        return ""
    rows = (
        _row(
            _mono(u.metric_id),
            _e(u.reason),
            _count(u.event_count, "unbilled-count", metric=u.metric_id),
            numeric_from=2,
        )
        for u in invoice.unbilled
    )
    table = _table(("Metric", "Reason", "Events"), rows, numeric_from=2)
    note = "<p class='note'>Usage these metrics matched but could not bill.</p>"
    return f"<section><h2>Unbilled usage</h2>{note}{table}</section>"


# -- days: chart and table ------------------------------------------------------


def _days_section(days: Sequence[StatementDay], currency: str) -> str:
    return (
        "<section><h2>Day by day</h2>"
        f"{_chart(days, currency)}{_days_table(days, currency)}</section>"
    )


def _days_table(days: Sequence[StatementDay], currency: str) -> str:
    if not days:
        return "<p class='muted'>No days to show.</p>"
    metrics = sorted({use.metric_id for day in days for use in day.usage})
    head = ("Date (UTC)", "Spend", "Cumulative", *(_mono(m) for m in metrics))
    rows = (_day_row(index, day, currency, metrics) for index, day in enumerate(days))
    return _table(head, rows, "days", numeric_from=1)


def _day_row(index: int, day: StatementDay, currency: str, metrics: Sequence[str]) -> str:
    usage = {use.metric_id: use.quantity for use in day.usage}
    quantities = (
        _quantity(usage[m], "day-usage", day=index, metric=m) if m in usage else "–"
        for m in metrics
    )
    return _row(
        _day_span(day),
        _money(day.spend, currency, "day-spend", day=index),
        _money(day.cumulative, currency, "day-cumulative", day=index),
        *quantities,
        numeric_from=1,
    )


@dataclass(frozen=True)
class _Axis:
    """One series' amount axis: ``below`` and ``above`` whole ``step``s either side of zero.

    Spend and cumulative get an axis each (a day's spend is a sliver of the
    month's total, so on one axis its bars would vanish); both have the same
    counts of steps, so their zeros and gridlines coincide.
    """

    step: Decimal
    below: int
    above: int
    used: float  # the share of the axis the series spans: how well it fits

    def y(self, value: Decimal) -> float:
        # Floats for geometry only: no figure shown is ever read back from here.
        steps = float(EXACT.divide(value, self.step))
        share = (self.above - steps) / (self.above + self.below)
        return PLOT_TOP + share * (PLOT_BOTTOM - PLOT_TOP)

    def ticks(self) -> list[Decimal]:
        """Exact multiples of the step, so each label is a Decimal written out."""
        return [EXACT.multiply(Decimal(k), self.step) for k in range(-self.below, self.above + 1)]


def _axes(days: Sequence[StatementDay]) -> tuple[_Axis, _Axis]:
    """Spend's axis and cumulative's, with the count of steps that wastes least room."""
    series = ([d.spend for d in days], [d.cumulative for d in days])
    layouts = [
        (_axis(series[0], series, steps), _axis(series[1], series, steps))
        for steps in AXIS_STEP_CHOICES
    ]
    return max(layouts, key=lambda axes: min(axis.used for axis in axes))


def _axis(values: Sequence[Decimal], series: Sequence[Sequence[Decimal]], steps: int) -> _Axis:
    below = _steps_below(series, steps)
    above = steps - below
    low, high = _extent(values)
    # The least step that fits both sides: the positive part in ``above`` steps,
    # the negative in ``below``.
    need = max(
        EXACT.divide(high, above) if above else Decimal(0),
        EXACT.divide(-low, below) if below else Decimal(0),
    )
    step = _nice_step(need)
    used = float(EXACT.divide(EXACT.subtract(high, low), EXACT.multiply(step, Decimal(steps))))
    return _Axis(step, below, above, used)


def _steps_below(series: Sequence[Sequence[Decimal]], steps: int) -> int:
    """Steps below zero: enough for the most negative series, and one above at least."""
    shares = [_negative_share(values) for values in series]
    share = max(shares)
    if share == 0:
        return 0
    wanted = EXACT.multiply(share, Decimal(steps)).to_integral_value(rounding=ROUND_CEILING)
    return min(steps - 1, max(1, int(wanted)))


def _negative_share(values: Sequence[Decimal]) -> Decimal:
    low, high = _extent(values)
    return Decimal(0) if low == high else EXACT.divide(-low, EXACT.subtract(high, low))


def _extent(values: Sequence[Decimal]) -> tuple[Decimal, Decimal]:
    """The values' range, stretched to take in zero (bars stand on it)."""
    return min(Decimal(0), *values), max(Decimal(0), *values)


def _nice_step(need: Decimal) -> Decimal:
    """The least 1, 2, 2.5 or 5 times a power of ten that is at least ``need``."""
    if need <= 0:
        return Decimal(1)  # all zero: any step draws a flat line at zero
    power = Decimal(1).scaleb(need.adjusted(), EXACT)
    multiples = (EXACT.multiply(Decimal(m), power) for m in NICE_MULTIPLES)
    return next(step for step in multiples if step >= need)


def _chart(days: Sequence[StatementDay], currency: str) -> str:
    title = f"Daily spend (bars) and cumulative usage charges (line), {currency}"
    parts = [f"<title id='chart-title'>{_e(title)}</title>"]
    height = CHART_HEIGHT
    if days:
        spend, cumulative = _axes(days)
        parts += [
            _amount_axes(spend, cumulative, currency),
            _date_axis(days),
            _bars(days, spend, currency),
            _cumulative(days, cumulative),
            _legend(),
        ]
    else:
        height = EMPTY_CHART_HEIGHT
        parts.append(
            f"<text x='{CHART_WIDTH / 2}' y='{height / 2}' text-anchor='middle'>"
            "No days in this period yet.</text>"
        )
    return (
        f"<svg class='chart' viewBox='0 0 {CHART_WIDTH} {height}' role='img'"
        f" aria-labelledby='chart-title' data-days='{len(days)}'>{''.join(parts)}</svg>"
    )


def _slot(days: Sequence[StatementDay]) -> float:
    return (PLOT_RIGHT - PLOT_LEFT) / len(days)


def _amount_axes(spend: _Axis, cumulative: _Axis, currency: str) -> str:
    """Gridlines (zero darker), cumulative's labels on the left, spend's on the right."""
    parts = [
        f"<line class='axis' x1='{PLOT_LEFT}' y1='{PLOT_TOP}' x2='{PLOT_LEFT}' y2='{PLOT_BOTTOM}'/>"
        f"<line class='axis' x1='{PLOT_RIGHT}' y1='{PLOT_TOP}' x2='{PLOT_RIGHT}'"
        f" y2='{PLOT_BOTTOM}'/>"
    ]
    for left, right in zip(cumulative.ticks(), spend.ticks(), strict=True):
        y = cumulative.y(left)
        parts.append(
            f"<line class='{'zero' if left == 0 else 'grid'}' x1='{PLOT_LEFT}' y1='{y:.2f}'"
            f" x2='{PLOT_RIGHT}' y2='{y:.2f}'/>"
            f"<text class='tick-cumulative' x='{PLOT_LEFT - 6}' y='{y + 4:.2f}'"
            f" text-anchor='end'>{_grouped(left)}</text>"
            f"<text class='tick-spend' x='{PLOT_RIGHT + 6}' y='{y + 4:.2f}'>"
            f"{_grouped(right)}</text>"
        )
    parts.append(
        f"<text x='{PLOT_LEFT - 6}' y='{PLOT_TOP - 12}' text-anchor='end'>"
        f"cumulative, {_e(currency)}</text>"
        f"<text x='{PLOT_RIGHT + 6}' y='{PLOT_TOP - 12}'>daily, {_e(currency)}</text>"
    )
    return "".join(parts)


def _date_axis(days: Sequence[StatementDay]) -> str:
    """A handful of date labels, evenly spaced, the first day always among them."""
    every = -(-len(days) // DATE_TICKS_MAX)  # ceiling division
    slot = _slot(days)
    labels = (
        f"<text x='{PLOT_LEFT + slot * (i + 0.5):.2f}' y='{PLOT_BOTTOM + 18}'"
        f" text-anchor='middle'>{_date(days[i])}</text>"
        for i in range(0, len(days), every)
    )
    title = (
        f"<text x='{(PLOT_LEFT + PLOT_RIGHT) / 2}' y='{CHART_HEIGHT - 6}'"
        " text-anchor='middle'>day (UTC)</text>"
    )
    return "".join(labels) + title


def _day_span(day: StatementDay) -> str:
    """A whole UTC day by its date; a partial first or last day by its instants."""
    whole = day.start.astimezone(UTC).time() == time(0) and day.end - day.start == timedelta(1)
    return _instant(day.start) if whole else _span(day.start, day.end)


def _date(day: StatementDay) -> str:
    return day.start.astimezone(UTC).date().isoformat()


def _bars(days: Sequence[StatementDay], axis: _Axis, currency: str) -> str:
    """One bar a day from the zero line: up for spend, down for a day that lowered it."""
    slot, zero = _slot(days), axis.y(Decimal(0))
    width = min(slot * BAR_SHARE, BAR_WIDTH_MAX)
    bars = []
    for i, day in enumerate(days):
        top, bottom = sorted((axis.y(day.spend), zero))
        css = "bar negative" if day.spend < 0 else "bar"
        label = f"{_date(day)}: spend {_grouped(day.spend)} {currency}"
        x = PLOT_LEFT + slot * i + (slot - width) / 2
        bars.append(
            f"<rect class='{css}' data-day='{i}' x='{x:.2f}'"
            f" y='{top:.2f}' width='{width:.2f}' height='{bottom - top:.2f}'>"
            f"<title>{_e(label)}</title></rect>"
        )
    return "".join(bars)


def _cumulative(days: Sequence[StatementDay], axis: _Axis) -> str:
    # Points as well as the line: a single day has a point but no line to draw.
    slot = _slot(days)
    points = [(PLOT_LEFT + slot * (i + 0.5), axis.y(d.cumulative)) for i, d in enumerate(days)]
    line = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
    dots = "".join(f"<circle class='point' cx='{x:.2f}' cy='{y:.2f}' r='3'/>" for x, y in points)
    return f"<polyline class='cumulative' points='{line}'/>{dots}"


def _legend() -> str:
    x = PLOT_LEFT + 12
    return (
        f"<rect class='key' x='{x}' y='8' width='12' height='12'/>"
        f"<text x='{x + 18}' y='18'>daily spend (right axis)</text>"
        f"<line class='cumulative' x1='{x + 180}' y1='14' x2='{x + 204}' y2='14'/>"
        f"<text x='{x + 210}' y='18'>cumulative (left axis)</text>"
    )
