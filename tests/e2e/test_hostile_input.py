"""Hostile input: property-based fuzzing of every RPC with malformed and extreme messages.

Requests start valid and get one or two fields (now and then all of them)
replaced by hostile values: empty, 10 kB, control-character and NUL strings,
SQL fragments, odd unicode, decimal strings such as NaN, infinities, exponents
and foreign digits, valid but extreme decimals, timestamps at and beyond the
protobuf limits, int32 and int64 extremes, maps with hundreds of keys and
repeated fields with duplicates. Invalid UTF-8 and corrupt messages go over the
wire as raw bytes.

Every call must succeed or fail with a clear client error within its deadline:
never INTERNAL, UNKNOWN, DEADLINE_EXCEEDED or UNAVAILABLE, never with SQL, a
driver name or a traceback in the error, and with the server's own status
reaching the caller. Read-only calls write nothing. After every test, a known
customer's invoices and events are as they were before any fuzzing and the
ledger's hash chain verifies.

The module shares one server and one database (the world is built once) and
runs derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import dataclasses
import html
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any, Final

import grpc
import psycopg
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from services.api.accrual.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    balances_pb2,
    balances_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    reports_pb2,
    reports_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.conftest import TEMPLATE, _with_database
from tests.e2e.conftest import RunningServer, serving
from tests.e2e.helpers import (
    ACCEPTED,
    DUPLICATE,
    EVENT_TYPE,
    PROPERTY,
    REJECTED,
    World,
    head_seq,
    midnight,
    setup_world,
    ts,
    unpack,
)

DEADLINE_S: Final = 10.0
MESSAGE_BYTES_LIMIT: Final = 7_500_000  # the server refuses messages over 8 MiB

CLIENT_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Never in an error a caller sees: SQL from our queries (case-sensitive), internals (any case).
LEAKED_SQL: Final = ("SELECT ", "INSERT INTO")
LEAKED_INTERNALS: Final = ("traceback", "psycopg")

# Part of the reliability suite too (make test-reliability), and of make test.
pytestmark = [
    pytest.mark.reliability,
    # A falsifying example of a thousand events has a repr of most of a megabyte:
    # Hypothesis warns of it before replaying the example, and with warnings as
    # errors that warning would be reported instead of the failure it replays.
    pytest.mark.filterwarnings(
        "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
    ),
]

FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)

NOW: Final = datetime.now(UTC)

# ---------------------------------------------------------------------------------------
# The world: a known customer that fuzzing must never disturb, and fuzz targets.

KNOWN: Final = "known"
FUZZ_NAME: Final = "fuzz"
FREE_CUSTOMER: Final = "fuzz-free"  # a customer without a contract
GROUPED_METRIC: Final = "tokens-grouped"
GROUPED_PRODUCT: Final = "llm-grouped"
FLAT_PRODUCT: Final = "support"  # no metric: flat fees
PERCENT_PRODUCT: Final = "platform-fee"  # no metric: a percentage of llm-fuzz


def _ids(name: str) -> dict[str, str]:
    """The ids :func:`setup_world` gives a world."""
    return {
        "customer": name,
        "contract": f"{name}-c1",
        "card": f"list-{name}",
        "product": f"llm-{name}",
        "metric": f"tokens-{name}",
    }


KNOWN_IDS: Final = _ids(KNOWN)
FUZZ_IDS: Final = _ids(FUZZ_NAME)


@dataclasses.dataclass(frozen=True)
class Api:
    catalog: catalog_pb2_grpc.CatalogServiceStub
    contracts: contracts_pb2_grpc.ContractServiceStub
    usage: usage_pb2_grpc.UsageServiceStub
    invoices: invoices_pb2_grpc.InvoiceServiceStub
    audit: audit_pb2_grpc.AuditServiceStub


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The known customer before any fuzzing."""

    finalized: invoices_pb2.Invoice
    draft: invoices_pb2.Invoice  # without its ledger position, see _without_position
    events: list[tuple[int, str, str]]


class Hostile:
    """The shared world. A plain class: failing examples print it as one word."""

    def __init__(
        self, server: RunningServer, api: Api, known: World, fuzz: World, baseline: Baseline
    ) -> None:
        self.server, self.api, self.known, self.fuzz = server, api, known, fuzz
        self.baseline = baseline
        # Contracts the fuzzing created, for later tests to aim at.
        self.contracts: list[str] = [FUZZ_IDS["contract"]]

    def __repr__(self) -> str:
        return "Hostile()"


@pytest.fixture(scope="module")
def hostile_database(server_url: str, template_url: str) -> Iterator[str]:
    """One fresh database for the whole module."""
    name = f"accrual_hostile_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    yield _with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="module")
def hostile(hostile_database: str) -> Iterator[Hostile]:
    for server in serving(hostile_database):
        channel = server.channel
        api = Api(
            catalog=catalog_pb2_grpc.CatalogServiceStub(channel),
            contracts=contracts_pb2_grpc.ContractServiceStub(channel),
            usage=usage_pb2_grpc.UsageServiceStub(channel),
            invoices=invoices_pb2_grpc.InvoiceServiceStub(channel),
            audit=audit_pb2_grpc.AuditServiceStub(channel),
        )
        known = setup_world(server, name=KNOWN)
        fuzz = setup_world(server, name=FUZZ_NAME)
        _extend_fuzz_world(api)
        for world in (known, fuzz):
            at = world.first_period_instant
            world.record(
                world.event("t-1", "1000", at),
                world.event("t-2", "250.5", at + timedelta(hours=3)),
                world.event("t-3", "7", world.now - timedelta(days=1)),
            )
            first = world.invoice_at(at)
            api.invoices.FinalizeInvoice(
                invoices_pb2.FinalizeInvoiceRequest(invoice_id=first.invoice_id)
            )
        baseline = _baseline(api, known)
        yield Hostile(server, api, known, fuzz, baseline)


def _extend_fuzz_world(api: Api) -> None:
    """A grouped, filtered metric; products without a metric; a customer without a contract."""
    api.catalog.CreateBillableMetric(
        catalog_pb2.CreateBillableMetricRequest(
            metric=catalog_pb2.BillableMetric(
                metric_id=GROUPED_METRIC,
                name="Tokens by region",
                event_type=EVENT_TYPE,
                aggregation="SUM",
                property=PROPERTY,
                filters=[catalog_pb2.PropertyFilter(property="model", op="in", values=["a", "b"])],
                group_by=["region"],
            )
        )
    )
    products = ((GROUPED_PRODUCT, GROUPED_METRIC), (FLAT_PRODUCT, ""), (PERCENT_PRODUCT, ""))
    for product_id, metric_id in products:
        api.catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(
                product=catalog_pb2.Product(
                    product_id=product_id, name=product_id, metric_id=metric_id
                )
            )
        )
    api.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id=FREE_CUSTOMER, name="Free")
        )
    )


def _without_position(invoice: invoices_pb2.Invoice) -> invoices_pb2.Invoice:
    """A draft's content apart from the ledger position it was computed through.

    A draft's content_sha256 covers computed_through_seq, the ledger head, which
    any write by anyone moves; everything else must stay exactly as it was.
    """
    copy = invoices_pb2.Invoice()
    copy.CopyFrom(invoice)
    copy.computed_through_seq = 0
    copy.content_sha256 = ""
    return copy


def _known_events(api: Api) -> list[tuple[int, str, str]]:
    items = api.audit.ReplayCustomer(
        audit_pb2.ReplayCustomerRequest(customer_id=KNOWN), timeout=DEADLINE_S
    )
    return [(i.event.seq, i.event.stream_id, i.event.hash) for i in items if i.HasField("event")]


def _baseline(api: Api, known: World) -> Baseline:
    finalized = known.invoice_at(known.first_period_instant)
    assert finalized.status == "FINALIZED"
    assert finalized.total.amount == "1.88"  # 1250.5 tokens at 0.0015
    draft = known.invoice_at(known.now)
    assert draft.status == "DRAFT"
    assert draft.total.amount == "0.01"  # 7 tokens
    return Baseline(finalized, _without_position(draft), _known_events(api))


def assert_known_customer_untouched(h: Hostile) -> None:
    """The known customer's invoices and events are unchanged; the chain verifies."""
    finalized = h.known.invoice(h.baseline.finalized.invoice_id)
    assert finalized.content_sha256 == h.baseline.finalized.content_sha256
    assert finalized.total == h.baseline.finalized.total
    assert finalized == h.baseline.finalized
    draft = h.known.invoice_at(h.known.now)
    assert draft.total == h.baseline.draft.total
    assert _without_position(draft) == h.baseline.draft
    assert _known_events(h.api) == h.baseline.events
    check = h.api.audit.VerifyInvoice(
        audit_pb2.VerifyInvoiceRequest(invoice_id=h.baseline.finalized.invoice_id),
        timeout=DEADLINE_S,
    )
    assert check.matches
    progress = list(h.api.audit.VerifyLedger(audit_pb2.VerifyLedgerRequest(), timeout=60))
    assert progress, "VerifyLedger sent nothing"
    final = progress[-1]
    assert final.done and final.ok, (final.breach_seq, final.breach_reason)
    assert final.last_seq == head_seq(h.server)


@pytest.fixture
def h(hostile: Hostile) -> Iterator[Hostile]:
    """The shared world; after each test the known customer must be untouched."""
    yield hostile
    assert_known_customer_untouched(hostile)


# ---------------------------------------------------------------------------------------
# Calling, and what every answer must look like


def _describe(request: Message) -> str:
    text = text_format.MessageToString(request, as_utf8=False, as_one_line=True)
    return text if len(text) <= 1_500 else f"{text[:1_500]}... ({len(text)} chars)"


def call(
    h: Hostile,
    rpc: Callable[..., Any],
    request: Message,
    *,
    stream: bool = False,
    read_only: bool = False,
) -> Any:
    """Call with a deadline; a failure must be a clear client error that leaks nothing.

    Returns the response (a list of messages for a stream), or None after an error.
    """
    method = getattr(rpc, "_method", b"?")
    name = method.decode() if isinstance(method, bytes) else str(method)
    head_before = head_seq(h.server) if read_only else None
    try:
        if stream:
            response = list(rpc(request, timeout=DEADLINE_S))
        else:
            response = rpc(request, timeout=DEADLINE_S)
    except grpc.RpcError as error:
        check_failure(f"{name} {_describe(request)}", error)
        response = None
    if head_before is not None:
        assert head_seq(h.server) == head_before, f"{name} wrote to the ledger"
    return response


def check_failure(where: str, error: grpc.RpcError) -> None:
    """The caller gets the server's own status: a client error, leaking nothing."""
    call: Any = error
    code, message = call.code(), call.details() or ""
    assert code in CLIENT_ERRORS, f"{code.name}: {message[:300]!r} for {where}"
    # An error that echoes huge input overflows the client's default metadata limit
    # (8 KiB): the caller then gets a transport RESOURCE_EXHAUSTED, not the error.
    assert "metadata size exceeds" not in message, f"{code.name}: {message!r} for {where}"
    try:
        failure = unpack(error)
    except ValueError as mismatch:  # grpc-status-details-bin disagrees with the code
        raise AssertionError(f"{mismatch} for {where}") from None
    for text in (failure.message, *failure.raw_details):
        for word in LEAKED_SQL:
            assert word not in text, (word, text[:500], where)
        for word in LEAKED_INTERNALS:
            assert word not in text.lower(), (word, text[:500], where)


def fits(request: Message) -> bool:
    return request.ByteSize() <= MESSAGE_BYTES_LIMIT


# ---------------------------------------------------------------------------------------
# Hostile values

SQL_FRAGMENTS: Final = (
    "'; DROP TABLE events; --",
    '"; DROP TABLE streams; --',
    "' OR '1'='1",
    "x' OR 1=1 --",
    "1; select pg_sleep(30); --",
    "'); delete from events where ('1'='1",
    "$$; truncate ledger_heads; $$",
    "' union all select null, null --",
    "%s",
    "%(x)s",
    "%%",
    "{}",
    "{0}",
    "\\",
    "\\x00",
    "E'\\x00'",
    "/*",
    "customer-known",
    "usage-known",
    "ratecard-list-known",
)
CONTROL: Final = (
    "\x00",
    "a\x00b",
    "known\x00",
    "fuzz\x00",
    "\x00" * 64,
    "\x01\x02\x1f",
    "\x7f",
    "\r\n",
    "\t",
    "\x1b[31mred",
    "\u0085",
    "\u2028\u2029",
    "fuzz\n",
    " fuzz",
)
UNICODE: Final = (
    "é",
    "e\u0301",
    "İ",
    "ǅ",
    "ﬃ",
    "\u202eevil",
    "\ufeffbom",
    "\u200b",
    "🙂",
    "👨\u200d👩\u200d👧",
    "\U0010ffff",
    "\ufffe",
    "\uffff",
    "\ue000",
    "\ud7ff",
    "١٢",
    "１２",
    "ｆｕｚｚ",
)
NESTED: Final = (
    "{" * 2_000,
    '{"a":' * 500 + "1" + "}" * 500,
    "[" * 3_000 + "]" * 3_000,
    ".".join(["a"] * 300),
)
SIZES: Final = ("", " ", "a" * 128, "a" * 129, "a" * 200, "a" * 201, "a" * 512, "a" * 513)

# Any code point but the surrogates, which protobuf strings cannot carry (see the wire test).
ODD_CHARACTERS = st.characters(exclude_categories=("Cs",))

hostile_text = st.one_of(
    st.sampled_from((*SQL_FRAGMENTS, *CONTROL, *UNICODE, *NESTED, *SIZES)),
    st.text(ODD_CHARACTERS, max_size=40),
    st.integers(0, 10_000).map(lambda n: "x" * n),
    st.integers(0, 3_000).map(lambda n: "\x00é🙂"[n % 3] * n),
)

BAD_DECIMALS: Final = (
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "-0",
    "-0.0",
    "+0",
    "1e309",
    "1E+3",
    "1e-400",
    "0x10",
    "0b1",
    "  1",
    "1  ",
    "1_000",
    "1,000",
    "1,5",
    "١٢",
    "١٢٫٥",
    "１２",
    "²",
    "½",
    ".5",
    "5.",
    "00",
    "007",
    "-.5",
    "--1",
    "+1",
    "1.2.3",
    "-",
    ".",
    "-1",
    "-" + "9" * 40,
    "9" * 41,
    "1." + "0" * 21,
    "9" * 4_301,
    "9" * 10_000,
    "1\n",
    "1\x00",
)
bad_decimals = st.one_of(
    st.sampled_from(BAD_DECIMALS),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.floats().map(repr),
    hostile_text,
)


def _plain(units: int, places: int) -> str:
    """``units`` × 10^-places in plain notation, every digit kept."""
    if not places:
        return str(units)
    digits = str(units).zfill(places + 1)
    return f"{digits[:-places]}.{digits[-places:]}"


# Plain decimal strings up to numeric(60, 20): 40 integer digits, 20 places. Each must be
# billed exactly or refused clearly (a server may take fewer digits).
VALID_EXTREMES: Final = (
    "0",
    "0.0015",
    "1",
    "12.5",
    "9" * 40,
    "9" * 40 + "." + "9" * 20,
    "1" + "0" * 30,
    "0." + "0" * 19 + "1",
    "0.0000000000001",
)
decimals = st.one_of(
    st.sampled_from(VALID_EXTREMES),
    st.builds(_plain, st.integers(0, 10**6), st.integers(0, 4)),
    st.builds(_plain, st.integers(0, 10**40 - 1), st.integers(0, 20)),
)
positive_decimals = decimals.filter(lambda text: Decimal(text) > 0)

INT32: Final = (0, -1, 1, 2, 500, 501, 1_000, 1_001, 2**31 - 1, -(2**31))
INT64: Final = (0, -1, 1, 2, 3, 2**31 - 1, 2**31, -(2**31), 2**53 + 1, 2**62, 2**63 - 1, -(2**63))
bad_int32s = st.one_of(st.sampled_from(INT32), st.integers(-(2**31), 2**31 - 1))
bad_int64s = st.one_of(st.sampled_from(INT64), st.integers(-(2**63), 2**63 - 1))

SECONDS_LIMITS: Final = (
    -62_135_596_800,  # 0001-01-01
    -62_135_596_801,
    253_402_300_799,  # 9999-12-31T23:59:59
    253_402_300_800,
    0,
    -1,
    32_503_680_000,  # 3000-01-01
    32_503_679_999,
    2**63 - 1,
    -(2**63),
)
NANOS: Final = (0, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31))
bad_times = st.one_of(
    st.none(),
    st.builds(Timestamp, seconds=st.sampled_from(SECONDS_LIMITS), nanos=st.sampled_from(NANOS)),
    st.builds(
        Timestamp,
        seconds=st.integers(-(2**63), 2**63 - 1),
        nanos=st.integers(-(2**31), 2**31 - 1),
    ),
)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
LAST_INSTANT: Final = datetime(2999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
in_late_window = st.integers(60, 33 * 86_400).map(lambda s: ts(NOW - timedelta(seconds=s)))
instants = st.one_of(
    in_late_window,
    st.integers(-400, 4_000).map(lambda days: ts(midnight(NOW) - timedelta(days=days))),
    st.sampled_from((ts(EPOCH), ts(LAST_INSTANT), ts(datetime(2999, 1, 1, tzinfo=UTC)))),
)

# Contract starts stay within a few years: decades of periods have their own test.
contract_starts = st.one_of(
    st.integers(-400, 800).map(lambda days: ts(midnight(NOW) - timedelta(days=days))),
    st.sampled_from((ts(datetime(2999, 1, 1, tzinfo=UTC)), ts(LAST_INSTANT))),
)

many_keys = st.integers(0, 200).map(lambda n: {f"k{i}": str(i) for i in range(n)})
bad_maps = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(("region", "model", PROPERTY)), hostile_text),
        st.one_of(hostile_text, bad_decimals),
        max_size=6,
    ),
    many_keys,
)
bad_lists = st.one_of(
    st.lists(hostile_text, max_size=6),
    st.integers(0, 300).map(lambda n: ["dup"] * n),
    st.integers(0, 300).map(lambda n: [f"v{i}" for i in range(n)]),
)
new_ids = st.uuids().map(lambda u: f"hx-{u.hex[:16]}")


def ids(*existing: str) -> st.SearchStrategy[str]:
    """Hostile ids: hostile text, alone or around existing ids (known ones too)."""
    pool = st.sampled_from(existing or ("x",))
    return st.one_of(
        hostile_text,
        st.tuples(pool, hostile_text).map("".join),
        st.tuples(hostile_text, pool).map("".join),
    )


def set_time(message: Message, field: str, stamp: Timestamp | None) -> None:
    if stamp is not None:
        getattr(message, field).CopyFrom(stamp)


class Fields:
    """Draws every field valid except the few an example chose to make hostile.

    Usually one or two fields, sometimes all; shrinking heads for a valid request.
    """

    def __init__(self, draw: st.DrawFn, names: tuple[str, ...]) -> None:
        self._draw = draw
        if draw(st.integers(0, 9)) == 0:
            self.hostile: frozenset[str] = frozenset(names)
        else:
            self.hostile = frozenset(draw(st.sets(st.sampled_from(names), max_size=2)))

    def __call__(
        self, name: str, valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]
    ) -> Any:
        return self._draw(bad if name in self.hostile else valid)


# ---------------------------------------------------------------------------------------
# Requests

ALL_CUSTOMERS: Final = (KNOWN, FUZZ_NAME, FREE_CUSTOMER)
ALL_CARDS: Final = (KNOWN_IDS["card"], FUZZ_IDS["card"])
ALL_PRODUCTS: Final = (
    KNOWN_IDS["product"],
    FUZZ_IDS["product"],
    GROUPED_PRODUCT,
    FLAT_PRODUCT,
    PERCENT_PRODUCT,
)
ALL_METRICS: Final = (KNOWN_IDS["metric"], FUZZ_IDS["metric"], GROUPED_METRIC)
ALL_CONTRACTS: Final = (KNOWN_IDS["contract"], FUZZ_IDS["contract"])
BAD_INVOICE_IDS: Final = (
    "in-fuzz-c1-0",
    "in-fuzz-c1--1",
    "in-fuzz-c1-10000",
    "in-fuzz-c1-10001",
    "in-fuzz-c1-99999999999999999999",
    "in-fuzz-c1-" + "9" * 5_000,
    "in-fuzz-c1-١",
    "in-fuzz-c1-+1",
    "in-fuzz-c1- 1",
    "in-fuzz-c1-1\x00",
    "in-fuzz\x00-c1-1",
    "in--1",
    "in-",
    "in-in-in-1",
    "IN-fuzz-c1-1",
)
valid_invoice_ids = st.sampled_from(
    ("in-known-c1-1", "in-known-c1-2", "in-fuzz-c1-1", "in-fuzz-c1-2", "in-fuzz-c1-3")
)
bad_invoice_ids = st.one_of(st.sampled_from(BAD_INVOICE_IDS), ids(*ALL_CONTRACTS))
bad_page_tokens = st.one_of(
    st.sampled_from(("-1", "00", "1.5", "١", "9" * 19, "9" * 20, "9" * 4_301, "9" * 10_000)),
    st.integers(0, 2**70).map(str),
    hostile_text,
)

USAGE_FIELDS: Final = ("transaction_id", "customer_id", "event_type", "timestamp", "properties")
# Usage may be recorded for these; never for the known customer.
USAGE_CUSTOMERS: Final = (FUZZ_NAME, FREE_CUSTOMER)


@st.composite
def usage_events(
    draw: st.DrawFn, customers: tuple[str, ...] = USAGE_CUSTOMERS
) -> usage_pb2.UsageEvent:
    field = Fields(draw, USAGE_FIELDS)
    valid_properties = st.fixed_dictionaries(
        {PROPERTY: decimals},
        optional={"region": st.sampled_from(("eu", "us")), "model": st.sampled_from("abc")},
    )
    bad_properties = st.one_of(
        bad_maps,
        bad_decimals.map(lambda quantity: {PROPERTY: quantity}),
        st.tuples(bad_maps, bad_decimals).map(lambda pair: {**pair[0], PROPERTY: pair[1]}),
    )
    event = usage_pb2.UsageEvent(
        transaction_id=field(
            "transaction_id", st.one_of(st.sampled_from(("t-1", "dup")), new_ids), hostile_text
        ),
        customer_id=field(
            "customer_id",
            st.sampled_from(customers),
            st.one_of(hostile_text, st.just("ghost")).filter(lambda c: c != KNOWN),
        ),
        event_type=field("event_type", st.just(EVENT_TYPE), hostile_text),
        properties=field("properties", valid_properties, bad_properties),
    )
    set_time(event, "timestamp", field("timestamp", in_late_window, bad_times))
    return event


@st.composite
def record_usage_requests(draw: st.DrawFn) -> usage_pb2.RecordUsageRequest:
    events = draw(st.lists(usage_events(), max_size=8))
    shape = draw(st.sampled_from(("as drawn", "as drawn", "repeated", "bulk")))
    if shape == "repeated" and events:
        # The very same event many times over: one ACCEPTED, the rest DUPLICATE.
        events = events[:1] * draw(st.integers(2, 50))
    elif shape == "bulk" and events:
        template = events[0]
        events = []
        for i in range(draw(st.sampled_from((999, 1_000, 1_001)))):
            event = usage_pb2.UsageEvent()
            event.CopyFrom(template)
            event.transaction_id = f"bulk-{i % 700}"  # duplicate keys inside one batch
            events.append(event)
    return usage_pb2.RecordUsageRequest(events=events)


METRIC_FIELDS: Final = (
    "metric_id",
    "name",
    "event_type",
    "aggregation",
    "property",
    "filters",
    "group_by",
    "consistency_token",
    "request_id",
)


@st.composite
def metric_requests(draw: st.DrawFn) -> catalog_pb2.CreateBillableMetricRequest:
    field = Fields(draw, METRIC_FIELDS)
    aggregation = field(
        "aggregation",
        st.sampled_from(("COUNT", "SUM", "MAX", "UNIQUE", "LATEST")),
        st.one_of(st.sampled_from(("sum", "AVG", "")), hostile_text),
    )
    valid_filters = st.lists(
        st.one_of(
            st.builds(
                catalog_pb2.PropertyFilter,
                property=st.just("model"),
                op=st.just("in"),
                values=st.lists(st.sampled_from("abc"), min_size=1, max_size=3),
            ),
            st.builds(catalog_pb2.PropertyFilter, property=st.just("region"), op=st.just("exists")),
        ),
        max_size=2,
    )
    bad_filters = st.lists(
        st.builds(
            catalog_pb2.PropertyFilter,
            property=st.one_of(st.just("model"), hostile_text),
            op=st.one_of(st.sampled_from(("in", "exists", "IN")), hostile_text),
            values=bad_lists,
        ),
        min_size=1,
        max_size=4,
    )
    bad_group_by = st.one_of(
        st.lists(st.one_of(st.just("region"), hostile_text), min_size=1, max_size=10),
        st.integers(2, 20).map(lambda n: ["region"] * n),
    )
    return catalog_pb2.CreateBillableMetricRequest(
        metric=catalog_pb2.BillableMetric(
            metric_id=field("metric_id", new_ids, ids(*ALL_METRICS)),
            name=field("name", st.just("A metric"), hostile_text),
            event_type=field("event_type", st.just(EVENT_TYPE), hostile_text),
            aggregation=aggregation,
            property=field(
                "property", st.just("" if aggregation == "COUNT" else PROPERTY), hostile_text
            ),
            filters=field("filters", valid_filters, bad_filters),
            group_by=field("group_by", st.lists(st.just("region"), max_size=1), bad_group_by),
            consistency_token=field("consistency_token", st.just(0), bad_int64s),
        ),
        request_id=field("request_id", st.one_of(st.just(""), new_ids), hostile_text),
    )


@st.composite
def product_requests(draw: st.DrawFn) -> catalog_pb2.CreateProductRequest:
    field = Fields(draw, ("product_id", "name", "metric_id", "consistency_token", "request_id"))
    return catalog_pb2.CreateProductRequest(
        product=catalog_pb2.Product(
            product_id=field("product_id", new_ids, ids(*ALL_PRODUCTS)),
            name=field("name", st.just("A product"), hostile_text),
            metric_id=field("metric_id", st.sampled_from(("", *ALL_METRICS)), ids(*ALL_METRICS)),
            consistency_token=field("consistency_token", st.just(0), bad_int64s),
        ),
        request_id=field("request_id", st.one_of(st.just(""), new_ids), hostile_text),
    )


@st.composite
def valid_tiers(draw: st.DrawFn) -> list[catalog_pb2.Tier]:
    bounds = sorted(set(draw(st.lists(positive_decimals, max_size=3))), key=Decimal)
    bounds = [b for i, b in enumerate(bounds) if i == 0 or Decimal(b) > Decimal(bounds[i - 1])]
    optional_fee = st.one_of(st.just(""), decimals)
    tiers = [
        catalog_pb2.Tier(up_to=b, unit_price=draw(decimals), flat_fee=draw(optional_fee))
        for b in bounds
    ]
    return [*tiers, catalog_pb2.Tier(unit_price=draw(decimals), flat_fee=draw(optional_fee))]


@st.composite
def bad_tiers(draw: st.DrawFn) -> list[catalog_pb2.Tier]:
    if draw(st.integers(0, 3)) == 0:
        count = draw(st.sampled_from((100, 101, 500)))
        tiers = [catalog_pb2.Tier(up_to=str(i + 1), unit_price="1") for i in range(count - 1)]
        return [*tiers, catalog_pb2.Tier(unit_price="0.5")]
    any_decimal = st.one_of(decimals, bad_decimals)
    tier = st.builds(
        catalog_pb2.Tier,
        up_to=st.one_of(st.just(""), any_decimal),
        unit_price=any_decimal,
        flat_fee=st.one_of(st.just(""), any_decimal),
    )
    return draw(st.lists(tier, max_size=5))


METERED: Final = ("per_unit", "per_unit", "graduated", "volume", "package", "seat")
RATE_FIELDS: Final = (
    "product_id",
    "group_values",
    "model",
    "unit_price",
    "minimum",
    "maximum",
    "tiers",
    "package_size",
    "package_rounding",
    "flat_amount",
    "percent",
    "percent_of",
)
MODELS: Final = ("per_unit", "graduated", "volume", "package", "flat", "seat", "percentage")


@st.composite
def metered_rate(
    draw: st.DrawFn, product_id: str, group_values: dict[str, str]
) -> catalog_pb2.Rate:
    model = draw(st.sampled_from(METERED))
    rate = catalog_pb2.Rate(product_id=product_id, model=model, group_values=group_values)
    if model in ("per_unit", "seat", "package"):
        rate.unit_price = draw(decimals)
    if model == "package":
        rate.package_size = draw(positive_decimals)
        rate.package_rounding = draw(st.sampled_from(("", "up", "down")))
    if model in ("graduated", "volume"):
        rate.tiers.extend(draw(valid_tiers()))
    if draw(st.booleans()):
        low, high = sorted((draw(decimals), draw(decimals)), key=Decimal)
        rate.minimum, rate.maximum = draw(st.sampled_from(((low, high), (low, ""), ("", high))))
    return rate


@st.composite
def valid_rates(draw: st.DrawFn) -> list[catalog_pb2.Rate]:
    """A valid card's rates: each product at most once per group."""
    rates = [draw(metered_rate(FUZZ_IDS["product"], {}))]
    if draw(st.booleans()):
        region = draw(st.sampled_from(({}, {"region": "eu"}, {"region": "us"})))
        rates.append(draw(metered_rate(GROUPED_PRODUCT, region)))
    if draw(st.booleans()):
        rates.append(catalog_pb2.Rate(product_id=FLAT_PRODUCT, model="flat", flat_amount="10"))
    if draw(st.booleans()):
        percent = catalog_pb2.Rate(
            product_id=PERCENT_PRODUCT,
            model="percentage",
            percent=draw(decimals),
            percent_of=[FUZZ_IDS["product"]],
        )
        rates.append(percent)
    return rates


@st.composite
def rate_lists(draw: st.DrawFn, *, hostile: bool) -> list[catalog_pb2.Rate]:
    """Valid rates, or valid rates with one or two fields of one rate made hostile."""
    rates = draw(valid_rates())
    if not hostile:
        return rates
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return []
    if shape == 1:  # the same rate over and over
        return rates[:1] * draw(st.integers(2, 150))
    victim = rates[draw(st.integers(0, len(rates) - 1))]
    field = Fields(draw, RATE_FIELDS)
    for name in field.hostile:
        if name == "product_id":
            victim.product_id = draw(ids(*ALL_PRODUCTS))
        elif name == "group_values":
            victim.group_values.clear()
            victim.group_values.update(draw(bad_maps))
        elif name == "model":
            victim.model = draw(st.one_of(st.sampled_from(MODELS), hostile_text))
        elif name == "tiers":
            del victim.tiers[:]
            victim.tiers.extend(draw(bad_tiers()))
        elif name == "package_rounding":
            victim.package_rounding = draw(st.one_of(st.just("UP"), hostile_text))
        elif name == "percent_of":
            victim.percent_of[:] = draw(
                st.one_of(st.lists(st.sampled_from(ALL_PRODUCTS), max_size=3), bad_lists)
            )
        else:
            setattr(victim, name, draw(bad_decimals))
    return rates


CARD_FIELDS: Final = (
    "rate_card_id",
    "name",
    "currency",
    "currency_decimals",
    "effective_from",
    "rates",
    "reason",
    "request_id",
)


@st.composite
def rate_card_requests(draw: st.DrawFn) -> catalog_pb2.DraftRateCardRequest:
    """A publish, never of the known customer's card (that would change its bills)."""
    field = Fields(draw, CARD_FIELDS)
    request = catalog_pb2.DraftRateCardRequest(
        rate_card_id=field(
            "rate_card_id",
            st.one_of(st.just(FUZZ_IDS["card"]), new_ids),
            ids(*ALL_CARDS).filter(lambda c: c != KNOWN_IDS["card"]),
        ),
        name=field("name", st.just("Prices"), hostile_text),
        currency=field(
            "currency",
            st.just("USD"),
            st.one_of(
                st.sampled_from(("JPY", "BHD", "credits", "usd", "", "US D", "A" * 33)),
                hostile_text,
            ),
        ),
        rates=field("rates", rate_lists(hostile=False), rate_lists(hostile=True)),
        reason=field("reason", st.just("fuzzing"), hostile_text),
        request_id=field("request_id", st.one_of(st.just(""), new_ids), hostile_text),
    )
    decimals_given = field("currency_decimals", st.sampled_from((None, 2)), bad_int32s)
    if decimals_given is not None:
        request.currency_decimals = decimals_given
    set_time(
        request,
        "effective_from",
        field("effective_from", st.one_of(st.none(), instants), bad_times),
    )
    return request


@st.composite
def valid_overrides(draw: st.DrawFn) -> list[contracts_pb2.Override]:
    kind = draw(st.sampled_from(("none", "multiplier", "overwrite")))
    if kind == "none":
        return []
    override = contracts_pb2.Override(
        override_id="o1", product_id=FUZZ_IDS["product"], kind=kind, priority=draw(bad_int32s)
    )
    if kind == "multiplier":
        override.multiplier = draw(decimals)
    else:
        override.rate.CopyFrom(draw(metered_rate(FUZZ_IDS["product"], {})))
    return [override]


@st.composite
def bad_overrides(draw: st.DrawFn) -> list[contracts_pb2.Override]:
    if draw(st.integers(0, 4)) == 0:
        count = draw(st.integers(2, 100))
        return [contracts_pb2.Override(override_id="same", kind="multiplier")] * count
    overrides = []
    for _ in range(draw(st.integers(1, 3))):
        override = contracts_pb2.Override(
            override_id=draw(st.one_of(st.sampled_from(("o1", "o1", "o2")), hostile_text)),
            product_id=draw(st.one_of(st.sampled_from(ALL_PRODUCTS), ids(*ALL_PRODUCTS))),
            kind=draw(st.one_of(st.sampled_from(("overwrite", "multiplier", "")), hostile_text)),
            priority=draw(bad_int32s),
            multiplier=draw(st.one_of(decimals, bad_decimals)),
        )
        set_time(override, "starts_at", draw(st.one_of(instants, bad_times)))
        set_time(override, "ends_at", draw(st.one_of(instants, bad_times)))
        rates = draw(rate_lists(hostile=True))
        if rates and draw(st.booleans()):
            override.rate.CopyFrom(rates[0])
        overrides.append(override)
    return overrides


CONTRACT_FIELDS: Final = (
    "contract_id",
    "customer_id",
    "rate_card_id",
    "pinned_version",
    "starts_at",
    "ends_at",
    "billing_anchor",
    "consistency_token",
    "currency",
    "overrides",
    "request_id",
)


@st.composite
def contract_requests(draw: st.DrawFn) -> contracts_pb2.CreateContractRequest:
    """A contract for a new customer (valid) or for a hostile one, never the known one."""
    field = Fields(draw, CONTRACT_FIELDS)
    starts = field("starts_at", contract_starts, bad_times)
    valid_ends = st.one_of(
        st.none(),
        st.integers(1, 5_000).map(
            lambda days: ts(starts.ToDatetime(tzinfo=UTC) + timedelta(days=days))
        )
        if starts is not None and 0 <= starts.seconds < 32_000_000_000 and 0 <= starts.nanos < 10**9
        else st.none(),
    )
    contract = contracts_pb2.Contract(
        contract_id=field("contract_id", new_ids, ids(*ALL_CONTRACTS)),
        customer_id=field(
            "customer_id",
            new_ids.map(lambda c: f"{c}-new"),
            st.one_of(
                st.sampled_from((FUZZ_NAME, FREE_CUSTOMER, "ghost")), ids(*ALL_CUSTOMERS)
            ).filter(lambda c: c != KNOWN),
        ),
        rate_card_id=field("rate_card_id", st.just(FUZZ_IDS["card"]), ids(*ALL_CARDS)),
        pinned_version=field("pinned_version", st.sampled_from((0, 1)), bad_int64s),
        consistency_token=field("consistency_token", st.just(0), bad_int64s),
        currency=field("currency", st.sampled_from(("", "USD")), hostile_text),
        overrides=field("overrides", valid_overrides(), bad_overrides()),
    )
    set_time(contract, "starts_at", starts)
    set_time(contract, "ends_at", field("ends_at", valid_ends, bad_times))
    set_time(
        contract,
        "billing_anchor",
        field("billing_anchor", st.one_of(st.none(), instants), bad_times),
    )
    request_id = field("request_id", st.one_of(st.just(""), new_ids), hostile_text)
    return contracts_pb2.CreateContractRequest(contract=contract, request_id=request_id)


PREVIEW_FIELDS: Final = (
    "invoice_id",
    "customer_id",
    "at",
    "rate_card_id",
    "rate_card_version",
    "rate_card",
    "usage",
)


@st.composite
def preview_requests(draw: st.DrawFn) -> invoices_pb2.PreviewInvoiceRequest:
    field = Fields(draw, PREVIEW_FIELDS)
    by_id = draw(st.booleans())
    request = invoices_pb2.PreviewInvoiceRequest(
        invoice_id=field(
            "invoice_id", valid_invoice_ids if by_id else st.just(""), bad_invoice_ids
        ),
        customer_id=field(
            "customer_id",
            st.just("") if by_id else st.sampled_from(ALL_CUSTOMERS),
            ids(*ALL_CUSTOMERS),
        ),
        rate_card_id=field("rate_card_id", st.sampled_from(("", *ALL_CARDS)), ids(*ALL_CARDS)),
        rate_card_version=field(
            "rate_card_version", st.integers(0, 3), st.one_of(bad_int64s, st.integers(-5, 50))
        ),
        hypothetical=draw(st.booleans()),
        usage=field(
            "usage",
            st.lists(usage_events(customers=ALL_CUSTOMERS), max_size=4),
            st.one_of(
                st.lists(usage_events(customers=ALL_CUSTOMERS), max_size=8),
                st.integers(0, 2_000).map(
                    lambda n: [usage_pb2.UsageEvent(transaction_id="q", timestamp=ts(NOW))] * n
                ),
            ),
        ),
    )
    set_time(request, "at", field("at", st.none() if by_id else instants, bad_times))
    inline = field("rate_card", st.one_of(st.none(), rate_card_requests()), rate_card_requests())
    if inline is not None:
        request.rate_card.CopyFrom(inline)
    return request


# ---------------------------------------------------------------------------------------
# UsageService


@FUZZ
@given(request=record_usage_requests())
@example(
    request=usage_pb2.RecordUsageRequest(
        events=[usage_pb2.UsageEvent(transaction_id="t", customer_id="fuzz\x00")]
    )
)
def test_record_usage(h: Hostile, request: usage_pb2.RecordUsageRequest) -> None:
    if not fits(request):
        return
    response = call(h, h.api.usage.RecordUsage, request)
    if response is None:
        return
    assert len(response.results) == len(request.events)
    accepted: set[tuple[str, str]] = set()
    for event, result in zip(request.events, response.results, strict=True):
        assert result.transaction_id == event.transaction_id
        assert result.status in (ACCEPTED, DUPLICATE, REJECTED)
        if result.status == REJECTED:
            assert result.reason
            continue
        assert result.seq > 0
        assert event.customer_id in USAGE_CUSTOMERS, event.customer_id
        if result.status == ACCEPTED:
            key = (event.customer_id, event.transaction_id)
            assert key not in accepted, f"{key} accepted twice in one batch"
            accepted.add(key)
    assert response.consistency_token == max((r.seq for r in response.results), default=0)


@FUZZ
@given(quantity=decimals, unit_price=decimals)
@example(quantity="1" + "0" * 30, unit_price="1")
@example(quantity="10000000000000000.0000000000001", unit_price="1")
@example(quantity="9" * 40, unit_price="9" * 40)
def test_accepted_extreme_usage_is_billed_exactly(
    h: Hostile, quantity: str, unit_price: str
) -> None:
    """Quantities and prices the API accepts (40 digits, 20 places) bill exactly or are refused.

    Each example gets its own customer, contract and card, so nothing else is billed.
    """
    try:
        world = setup_world(h.server, name=f"hx-{uuid.uuid4().hex[:12]}", unit_price=unit_price)
    except grpc.RpcError as error:  # a price the API does not take must be refused clearly
        check_failure(f"DraftRateCard unit_price={unit_price!r}", error)
        return
    at = world.now - timedelta(days=1)
    response = call(
        h,
        world.api.usage.RecordUsage,
        usage_pb2.RecordUsageRequest(events=[world.event("t-1", quantity, at)]),
    )
    if response is None or response.results[0].status != ACCEPTED:
        return
    request = invoices_pb2.GetInvoiceRequest(customer_id=world.customer_id, at=ts(at))
    invoice = call(h, world.api.invoices.GetInvoice, request, read_only=True)
    if invoice is None:
        return
    with localcontext(Context(prec=200)):
        exact = Decimal(quantity) * Decimal(unit_price)
        expected = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert invoice.total.amount == format(expected, "f"), (quantity, unit_price)


# ---------------------------------------------------------------------------------------
# CatalogService


@FUZZ
@given(request=metric_requests())
def test_create_billable_metric(
    h: Hostile, request: catalog_pb2.CreateBillableMetricRequest
) -> None:
    call(h, h.api.catalog.CreateBillableMetric, request)


@FUZZ
@given(request=product_requests())
def test_create_product(h: Hostile, request: catalog_pb2.CreateProductRequest) -> None:
    call(h, h.api.catalog.CreateProduct, request)


@FUZZ
@given(request=rate_card_requests())
@example(  # a package_rounding on a rate that is not a package rate
    request=catalog_pb2.DraftRateCardRequest(
        rate_card_id="hx-rounding",
        name="Prices",
        currency="USD",
        rates=[
            catalog_pb2.Rate(
                product_id=FUZZ_IDS["product"],
                model="per_unit",
                unit_price="1",
                package_rounding="sideways",
            )
        ],
        reason="fuzzing",
    )
)
@example(  # one violation per repeated rate: the error outgrows the caller's metadata limit
    request=catalog_pb2.DraftRateCardRequest(
        rate_card_id="hx-repeated",
        name="Prices",
        currency="USD",
        rates=[catalog_pb2.Rate(product_id=FUZZ_IDS["product"], model="per_unit", unit_price="1")]
        * 150,
        reason="fuzzing",
    )
)
def test_draft_rate_card(h: Hostile, request: catalog_pb2.DraftRateCardRequest) -> None:
    if fits(request):
        call(h, h.api.catalog.DraftRateCard, request)


card_ids = st.one_of(st.sampled_from(ALL_CARDS), ids(*ALL_CARDS))
versions = st.one_of(st.integers(-2, 5), bad_int64s)


@FUZZ
@given(
    rate_card_id=card_ids,
    draft=versions,
    reason=st.one_of(st.just("reviewed"), hostile_text),
    publish=st.booleans(),
)
def test_approve_or_publish_rate_card_draft(
    h: Hostile, rate_card_id: str, draft: int, reason: str, publish: bool
) -> None:
    """Drafts that do not exist, were written by this same caller, or are not approved."""
    if publish:
        request = catalog_pb2.PublishRateCardDraftRequest(
            rate_card_id=rate_card_id, draft=draft, reason=reason
        )
        call(h, h.api.catalog.PublishRateCardDraft, request)
    else:
        approval = catalog_pb2.ApproveRateCardDraftRequest(
            rate_card_id=rate_card_id, draft=draft, reason=reason
        )
        call(h, h.api.catalog.ApproveRateCardDraft, approval)


@FUZZ
@given(rate_card_id=card_ids, draft=versions)
def test_get_rate_card_draft(h: Hostile, rate_card_id: str, draft: int) -> None:
    request = catalog_pb2.GetRateCardDraftRequest(rate_card_id=rate_card_id, draft=draft)
    call(h, h.api.catalog.GetRateCardDraft, request, read_only=True)


@FUZZ
@given(rate_card_id=card_ids, version=versions)
@example(rate_card_id="list-fuzz\x00", version=0)
def test_get_rate_card(h: Hostile, rate_card_id: str, version: int) -> None:
    request = catalog_pb2.GetRateCardRequest(rate_card_id=rate_card_id, version=version)
    call(h, h.api.catalog.GetRateCard, request, read_only=True)


@FUZZ
@given(
    rate_card_id=card_ids,
    page_size=st.one_of(st.integers(0, 3), bad_int32s),
    page_token=st.one_of(st.sampled_from(("", "0", "1", "2")), bad_page_tokens),
)
@example(rate_card_id="list-fuzz", page_size=1, page_token="9" * 4_301)
def test_list_rate_card_versions(
    h: Hostile, rate_card_id: str, page_size: int, page_token: str
) -> None:
    request = catalog_pb2.ListRateCardVersionsRequest(
        rate_card_id=rate_card_id, page_size=page_size, page_token=page_token
    )
    call(h, h.api.catalog.ListRateCardVersions, request, read_only=True)


@FUZZ
@given(rate_card_id=card_ids, from_version=versions, to_version=versions)
def test_diff_rate_card_versions(
    h: Hostile, rate_card_id: str, from_version: int, to_version: int
) -> None:
    request = catalog_pb2.DiffRateCardVersionsRequest(
        rate_card_id=rate_card_id, from_version=from_version, to_version=to_version
    )
    call(h, h.api.catalog.DiffRateCardVersions, request, read_only=True)


# ---------------------------------------------------------------------------------------
# ContractService


@FUZZ
@given(
    customer_id=st.one_of(new_ids, st.sampled_from(ALL_CUSTOMERS), ids(*ALL_CUSTOMERS)),
    name=st.one_of(st.just("A customer"), hostile_text),
    request_id=st.one_of(st.just(""), new_ids, hostile_text),
    token=st.one_of(st.just(0), bad_int64s),
)
@example(customer_id="x" * 10_000, name="A customer", request_id="", token=0)
def test_create_customer(
    h: Hostile, customer_id: str, name: str, request_id: str, token: int
) -> None:
    request = contracts_pb2.CreateCustomerRequest(
        customer=contracts_pb2.Customer(
            customer_id=customer_id, name=name, consistency_token=token
        ),
        request_id=request_id,
    )
    call(h, h.api.contracts.CreateCustomer, request)


@FUZZ
@given(request=contract_requests())
def test_create_contract(h: Hostile, request: contracts_pb2.CreateContractRequest) -> None:
    customer_id = request.contract.customer_id
    if customer_id.endswith("-new"):  # a fresh customer, so the contract can be created
        customer = contracts_pb2.Customer(customer_id=customer_id, name="New")
        call(
            h,
            h.api.contracts.CreateCustomer,
            contracts_pb2.CreateCustomerRequest(customer=customer),
        )
    created = call(h, h.api.contracts.CreateContract, request)
    if created is not None:
        assert created.customer_id == customer_id != KNOWN
        h.contracts.append(created.contract_id)


@FUZZ
@given(
    customer_id=st.one_of(st.sampled_from(ALL_CUSTOMERS), ids(*ALL_CUSTOMERS)),
    contract_id=st.one_of(st.sampled_from(ALL_CONTRACTS), ids(*ALL_CONTRACTS)),
)
@example(customer_id="fuzz\x00", contract_id="fuzz-c1")
@example(customer_id="x" * 10_000, contract_id="fuzz-c1")
def test_get_contract(h: Hostile, customer_id: str, contract_id: str) -> None:
    request = contracts_pb2.GetContractRequest(customer_id=customer_id, contract_id=contract_id)
    call(h, h.api.contracts.GetContract, request, read_only=True)


AMEND_FIELDS: Final = (
    "customer_id",
    "contract_id",
    "effective_at",
    "rate_card_id",
    "pinned_version",
    "add_overrides",
    "end_override_ids",
    "ends_at",
    "reason",
    "request_id",
)
# Never the known customer: its contract must stay as it was.
amend_customers = st.one_of(st.sampled_from(ALL_CUSTOMERS), ids(*ALL_CUSTOMERS)).filter(
    lambda c: c != KNOWN
)


@st.composite
def amend_requests(draw: st.DrawFn) -> contracts_pb2.AmendContractRequest:
    """Amendments of the fuzz contract (valid) or of hostile ones, never the known one."""
    field = Fields(draw, AMEND_FIELDS)
    request = contracts_pb2.AmendContractRequest(
        customer_id=field("customer_id", st.just(FUZZ_NAME), amend_customers),
        contract_id=field("contract_id", st.just(FUZZ_IDS["contract"]), ids(*ALL_CONTRACTS)),
        rate_card_id=field("rate_card_id", st.sampled_from(("", *ALL_CARDS)), ids(*ALL_CARDS)),
        add_overrides=field("add_overrides", valid_overrides(), bad_overrides()),
        end_override_ids=field("end_override_ids", st.sampled_from(([], ["o1"])), bad_lists),
        clear_ends_at=draw(st.booleans()),
        reason=field("reason", st.just("fuzzing"), hostile_text),
        request_id=field("request_id", st.one_of(st.just(""), new_ids), hostile_text),
    )
    pinned = field("pinned_version", st.sampled_from((None, 0, 1)), bad_int64s)
    if pinned is not None:
        request.pinned_version = pinned
    set_time(request, "effective_at", field("effective_at", in_late_window, bad_times))
    set_time(request, "ends_at", field("ends_at", st.one_of(st.none(), instants), bad_times))
    return request


@FUZZ
@given(request=amend_requests())
def test_amend_contract(h: Hostile, request: contracts_pb2.AmendContractRequest) -> None:
    if not fits(request):
        return
    amended = call(h, h.api.contracts.AmendContract, request)
    if amended is not None:
        assert amended.customer_id == request.customer_id != KNOWN


@FUZZ
@given(
    customer_id=st.one_of(st.just(FUZZ_NAME), amend_customers),
    contract_id=st.one_of(st.sampled_from(ALL_CONTRACTS), ids(*ALL_CONTRACTS)),
    ends_at=st.one_of(instants, bad_times),
    request_id=st.one_of(st.just(""), new_ids, hostile_text),
)
def test_end_contract(
    h: Hostile, customer_id: str, contract_id: str, ends_at: Timestamp | None, request_id: str
) -> None:
    request = contracts_pb2.EndContractRequest(
        customer_id=customer_id, contract_id=contract_id, request_id=request_id
    )
    set_time(request, "ends_at", ends_at)
    ended = call(h, h.api.contracts.EndContract, request)
    if ended is not None:
        assert ended.customer_id == customer_id != KNOWN


# ---------------------------------------------------------------------------------------
# InvoiceService


@st.composite
def get_invoice_requests(draw: st.DrawFn) -> invoices_pb2.GetInvoiceRequest:
    field = Fields(draw, ("invoice_id", "customer_id", "at"))
    by_id = draw(st.booleans())
    request = invoices_pb2.GetInvoiceRequest(
        invoice_id=field(
            "invoice_id", valid_invoice_ids if by_id else st.just(""), bad_invoice_ids
        ),
        customer_id=field(
            "customer_id",
            st.just("") if by_id else st.sampled_from(ALL_CUSTOMERS),
            ids(*ALL_CUSTOMERS),
        ),
    )
    set_time(request, "at", field("at", st.none() if by_id else instants, bad_times))
    return request


@FUZZ
@given(request=get_invoice_requests())
def test_get_invoice(h: Hostile, request: invoices_pb2.GetInvoiceRequest) -> None:
    call(h, h.api.invoices.GetInvoice, request, read_only=True)


@FUZZ
@given(data=st.data(), request_id=st.one_of(st.just(""), new_ids, hostile_text))
def test_finalize_invoice(h: Hostile, data: st.DataObject, request_id: str) -> None:
    contract_id = data.draw(st.sampled_from(h.contracts))
    invoice_id = data.draw(
        st.one_of(
            st.integers(1, 200).map(lambda n: f"in-{contract_id}-{n}"),
            valid_invoice_ids,
            bad_invoice_ids,
        )
    )
    request = invoices_pb2.FinalizeInvoiceRequest(invoice_id=invoice_id, request_id=request_id)
    final = call(h, h.api.invoices.FinalizeInvoice, request)
    if final is not None:
        assert final.status == "FINALIZED"
        assert final.customer_id != KNOWN


@FUZZ
@given(data=st.data(), request_id=st.one_of(st.just(""), new_ids, hostile_text))
def test_void_invoice(h: Hostile, data: st.DataObject, request_id: str) -> None:
    """Voids of the fuzz contracts' invoices (revisions too) or of hostile ids; the
    known customer's finalized invoice is never named, so it must stand."""
    contract_id = data.draw(st.sampled_from(h.contracts))
    revision = st.sampled_from(("", "-r1", "-r2"))
    invoice_id = data.draw(
        st.one_of(
            st.tuples(st.integers(1, 200), revision).map(
                lambda nr: f"in-{contract_id}-{nr[0]}{nr[1]}"
            ),
            bad_invoice_ids,
        )
    )
    request = invoices_pb2.VoidInvoiceRequest(invoice_id=invoice_id, request_id=request_id)
    voided = call(h, h.api.invoices.VoidInvoice, request)
    if voided is not None:
        assert voided.voided.status == "VOIDED"
        assert voided.voided.customer_id != KNOWN


@FUZZ
@given(request=preview_requests())
def test_preview_invoice(h: Hostile, request: invoices_pb2.PreviewInvoiceRequest) -> None:
    if fits(request):
        call(h, h.api.invoices.PreviewInvoice, request, read_only=True)


# ---------------------------------------------------------------------------------------
# AuditService


@FUZZ
@given(invoice_id=st.one_of(st.just(""), valid_invoice_ids, bad_invoice_ids))
def test_verify_invoice(h: Hostile, invoice_id: str) -> None:
    request = audit_pb2.VerifyInvoiceRequest(invoice_id=invoice_id)
    response = call(h, h.api.audit.VerifyInvoice, request, read_only=True)
    if response is not None:
        assert response.matches, invoice_id


AUDIT_FIELDS: Final = (
    "customer_id",
    "actor",
    "kind",
    "start",
    "end",
    "page_size",
    "page_token",
    "consistency_token",
)


@st.composite
def audit_requests(draw: st.DrawFn) -> audit_pb2.ListAuditEntriesRequest:
    field = Fields(draw, AUDIT_FIELDS)
    request = audit_pb2.ListAuditEntriesRequest(
        customer_id=field(
            "customer_id", st.sampled_from(("", *ALL_CUSTOMERS)), ids(*ALL_CUSTOMERS)
        ),
        actor=field("actor", st.sampled_from(("", "anonymous")), hostile_text),
        kind=field(
            "kind", st.sampled_from(("", "RateCardPublished", "CustomerCreated")), hostile_text
        ),
        page_size=field("page_size", st.integers(0, 20), bad_int32s),
        page_token=field("page_token", st.sampled_from(("", "1", "5")), bad_page_tokens),
        consistency_token=field("consistency_token", st.integers(0, 5), bad_int64s),
    )
    set_time(request, "start", field("start", st.one_of(st.none(), instants), bad_times))
    set_time(request, "end", field("end", st.one_of(st.none(), instants), bad_times))
    return request


@FUZZ
@given(request=audit_requests())
@example(request=audit_pb2.ListAuditEntriesRequest(customer_id="fuzz\x00"))
def test_list_audit_entries(h: Hostile, request: audit_pb2.ListAuditEntriesRequest) -> None:
    call(h, h.api.audit.ListAuditEntries, request, read_only=True)


@st.composite
def simulate_requests(draw: st.DrawFn) -> audit_pb2.SimulatePricingRequest:
    field = Fields(draw, ("rate_card_id", "version", "start", "end"))
    request = audit_pb2.SimulatePricingRequest(
        rate_card_id=field("rate_card_id", st.sampled_from(ALL_CARDS), ids(*ALL_CARDS)),
        version=field("version", st.integers(0, 3), bad_int64s),
    )
    start, end = sorted((draw(instants), draw(instants)), key=lambda t: t.ToNanoseconds())
    set_time(request, "start", field("start", st.just(start), bad_times))
    set_time(request, "end", field("end", st.just(end), bad_times))
    return request


@FUZZ
@given(request=simulate_requests())
def test_simulate_pricing(h: Hostile, request: audit_pb2.SimulatePricingRequest) -> None:
    call(h, h.api.audit.SimulatePricing, request, read_only=True)


@st.composite
def replay_requests(draw: st.DrawFn) -> audit_pb2.ReplayCustomerRequest:
    field = Fields(
        draw, ("customer_id", "up_to_seq", "up_to_time", "rate_card_id", "rate_card_version")
    )
    request = audit_pb2.ReplayCustomerRequest(
        customer_id=field("customer_id", st.sampled_from(ALL_CUSTOMERS), ids(*ALL_CUSTOMERS)),
        up_to_seq=field("up_to_seq", st.integers(0, 40), bad_int64s),
        rate_card_id=field("rate_card_id", st.sampled_from(("", *ALL_CARDS)), ids(*ALL_CARDS)),
        rate_card_version=field("rate_card_version", st.integers(0, 3), bad_int64s),
    )
    set_time(request, "up_to_time", field("up_to_time", st.one_of(st.none(), instants), bad_times))
    return request


@FUZZ
@given(request=replay_requests())
@example(request=audit_pb2.ReplayCustomerRequest(customer_id="fuzz\x00"))
def test_replay_customer(h: Hostile, request: audit_pb2.ReplayCustomerRequest) -> None:
    items = call(h, h.api.audit.ReplayCustomer, request, stream=True, read_only=True)
    for item in items or ():
        if item.HasField("invoice") and item.invoice.status == "FINALIZED":
            assert item.invoice.matches, item.invoice.invoice.invoice_id


@FUZZ
@given(
    from_seq=st.one_of(st.integers(-1, 50), bad_int64s),
    to_seq=st.one_of(st.integers(-1, 50), bad_int64s),
)
def test_verify_ledger(h: Hostile, from_seq: int, to_seq: int) -> None:
    request = audit_pb2.VerifyLedgerRequest(from_seq=from_seq, to_seq=to_seq)
    progress = call(h, h.api.audit.VerifyLedger, request, stream=True, read_only=True)
    if progress is not None:
        assert progress, "a verification always ends with a final report"
        assert all(p.ok for p in progress), progress[-1]
        assert progress[-1].done


DECADES_CONTRACTS: Final = 12


def test_decades_of_periods_answer_within_the_deadline(h: Hostile) -> None:
    """Contracts from 1970 (the earliest instant the API takes) have ~680 monthly periods
    each; simulating a dozen of them over their whole term, replaying and reading them
    must answer (or refuse) within the deadline, not hang."""
    world = setup_world(h.server, name=f"hx-{uuid.uuid4().hex[:12]}", start=EPOCH)
    world.record(world.event("t-1", "10", world.now - timedelta(days=1)))
    for i in range(DECADES_CONTRACTS - 1):
        customer_id = f"{world.customer_id}-{i}"
        h.api.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(
                customer=contracts_pb2.Customer(customer_id=customer_id, name="Old")
            ),
            timeout=DEADLINE_S,
        )
        contract = contracts_pb2.Contract(
            contract_id=f"{customer_id}-c1",
            customer_id=customer_id,
            rate_card_id=world.rate_card_id,
            starts_at=ts(EPOCH),
        )
        h.api.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(contract=contract), timeout=DEADLINE_S
        )
    simulate = audit_pb2.SimulatePricingRequest(
        rate_card_id=world.rate_card_id, version=1, start=ts(EPOCH), end=ts(world.now)
    )
    call(h, h.api.audit.SimulatePricing, simulate, read_only=True)
    replay = audit_pb2.ReplayCustomerRequest(customer_id=world.customer_id)
    call(h, h.api.audit.ReplayCustomer, replay, stream=True, read_only=True)
    for at in (EPOCH, world.now):
        request = invoices_pb2.GetInvoiceRequest(customer_id=world.customer_id, at=ts(at))
        assert call(h, h.api.invoices.GetInvoice, request, read_only=True) is not None


# ---------------------------------------------------------------------------------------
# BalanceService

GRANT_FIELDS: Final = (
    "customer_id",
    "grant_id",
    "kind",
    "amount",
    "currency",
    "starts_at",
    "expires_at",
    "product_ids",
    "priority",
    "rollover_fraction",
    "request_id",
)
# Never the known customer: its events must stay as they were.
grant_customers = st.one_of(st.sampled_from(ALL_CUSTOMERS), ids(*ALL_CUSTOMERS)).filter(
    lambda c: c != KNOWN
)


def balances_api(h: Hostile) -> balances_pb2_grpc.BalanceServiceStub:
    return balances_pb2_grpc.BalanceServiceStub(h.server.channel)


@st.composite
def grant_requests(draw: st.DrawFn) -> balances_pb2.GrantCreditRequest:
    field = Fields(draw, GRANT_FIELDS)
    request = balances_pb2.GrantCreditRequest(
        customer_id=field("customer_id", st.just(FUZZ_NAME), grant_customers),
        grant_id=field("grant_id", st.one_of(st.just("g-1"), new_ids), hostile_text),
        kind=field(
            "kind",
            st.sampled_from(("credit", "prepaid_commit", "postpaid_commit")),
            st.one_of(st.sampled_from(("CREDIT", "")), hostile_text),
        ),
        amount=field("amount", positive_decimals, bad_decimals),
        currency=field(
            "currency", st.just("USD"), st.one_of(st.sampled_from(("EUR", "usd")), hostile_text)
        ),
        product_ids=field(
            "product_ids", st.lists(st.sampled_from(ALL_PRODUCTS), max_size=3), bad_lists
        ),
        priority=field("priority", st.integers(-5, 5), bad_int32s),
        rollover_fraction=field(
            "rollover_fraction", st.sampled_from(("", "0", "0.5", "1")), bad_decimals
        ),
        hard_limit=draw(st.booleans()),
        request_id=field("request_id", st.one_of(st.just(""), new_ids), hostile_text),
    )
    set_time(request, "starts_at", field("starts_at", instants, bad_times))
    set_time(request, "expires_at", field("expires_at", st.one_of(st.none(), instants), bad_times))
    return request


@FUZZ
@given(request=grant_requests())
def test_grant_credit(h: Hostile, request: balances_pb2.GrantCreditRequest) -> None:
    if not fits(request):
        return
    granted = call(h, balances_api(h).GrantCredit, request)
    if granted is not None:
        assert granted.customer_id == request.customer_id != KNOWN
        assert Decimal(granted.amount) == Decimal(request.amount) > 0


@FUZZ
@given(
    customer_id=st.one_of(st.sampled_from(ALL_CUSTOMERS), ids(*ALL_CUSTOMERS)),
    currency=st.one_of(st.sampled_from(("", "USD", "EUR")), hostile_text),
    page_size=st.one_of(st.integers(0, 5), bad_int32s),
    page_token=st.one_of(st.just(""), bad_page_tokens),
    token=st.one_of(st.integers(0, 5), bad_int64s),
)
def test_get_balances(
    h: Hostile, customer_id: str, currency: str, page_size: int, page_token: str, token: int
) -> None:
    request = balances_pb2.GetBalancesRequest(
        customer_id=customer_id,
        currency=currency,
        page_size=page_size,
        page_token=page_token,
        consistency_token=token,
    )
    reply = call(h, balances_api(h).GetBalances, request, read_only=True)
    for balance in reply.balances if reply is not None else ():
        assert Decimal(balance.remaining) == sum(Decimal(e.amount) for e in balance.entries)


@FUZZ
@given(
    customer_id=st.one_of(st.sampled_from(ALL_CUSTOMERS), ids(*ALL_CUSTOMERS)),
    product_id=st.one_of(st.sampled_from(ALL_PRODUCTS), ids(*ALL_PRODUCTS)),
    at=st.one_of(st.none(), instants, bad_times),
    token=st.one_of(st.integers(0, 5), bad_int64s),
)
@example(customer_id="fuzz\x00", product_id="llm-fuzz", at=None, token=0)
def test_check_entitlement(
    h: Hostile, customer_id: str, product_id: str, at: Timestamp | None, token: int
) -> None:
    request = balances_pb2.CheckEntitlementRequest(
        customer_id=customer_id, product_id=product_id, consistency_token=token
    )
    set_time(request, "at", at)
    reply = call(h, balances_api(h).CheckEntitlement, request, read_only=True)
    if reply is not None:
        assert reply.allowed == (reply.reason == "")


# ---------------------------------------------------------------------------------------
# AlertService

# Alerts go to a customer of their own, without contract or grants: its alerts cross
# when they are set, if at all, never later behind a read-only call's back.
ALERT_CUSTOMER: Final = "fuzz-alerts"
ALERT_FIELDS: Final = ("customer_id", "alert_id", "kind", "threshold", "currency", "request_id")


def alert_api(h: Hostile) -> alerts_pb2_grpc.AlertServiceStub:
    return alerts_pb2_grpc.AlertServiceStub(h.server.channel)


def ensure_alert_customer(h: Hostile) -> None:
    customer = contracts_pb2.Customer(customer_id=ALERT_CUSTOMER, name="Alerts")
    request = contracts_pb2.CreateCustomerRequest(customer=customer, request_id="alert-customer")
    h.api.contracts.CreateCustomer(request, timeout=DEADLINE_S)  # a retry after the first


@st.composite
def alert_requests(draw: st.DrawFn) -> alerts_pb2.SetSpendAlertRequest:
    field = Fields(draw, ALERT_FIELDS)
    return alerts_pb2.SetSpendAlertRequest(
        customer_id=field("customer_id", st.just(ALERT_CUSTOMER), ids(ALERT_CUSTOMER)),
        alert_id=field("alert_id", st.one_of(new_ids, st.just("budget")), hostile_text),
        kind=field("kind", st.sampled_from(("period_spend", "remaining_balance")), hostile_text),
        threshold=field("threshold", positive_decimals, bad_decimals),
        currency=field("currency", st.sampled_from(("USD", "JPY", "credits")), hostile_text),
        request_id=field("request_id", st.just(""), st.one_of(new_ids, hostile_text)),
    )


@FUZZ
@given(request=alert_requests())
@example(request=alerts_pb2.SetSpendAlertRequest(customer_id=ALERT_CUSTOMER, threshold="9" * 41))
def test_set_spend_alert(h: Hostile, request: alerts_pb2.SetSpendAlertRequest) -> None:
    ensure_alert_customer(h)
    alert = call(h, alert_api(h).SetSpendAlert, request)
    if alert is not None:
        assert (alert.customer_id, alert.alert_id) == (ALERT_CUSTOMER, request.alert_id)
        assert Decimal(alert.threshold) == Decimal(request.threshold)


@FUZZ
@given(
    customer_id=st.one_of(
        st.sampled_from((ALERT_CUSTOMER, *ALL_CUSTOMERS)), ids(ALERT_CUSTOMER, *ALL_CUSTOMERS)
    )
)
@example(customer_id="fuzz\x00")
@example(customer_id="x" * 10_000)
def test_list_spend_alerts(h: Hostile, customer_id: str) -> None:
    request = alerts_pb2.ListSpendAlertsRequest(customer_id=customer_id)
    call(h, alert_api(h).ListSpendAlerts, request, read_only=True)


# ---------------------------------------------------------------------------------------
# ReportingService

# Reports read every customer in the world, the decades-old contracts above and whatever
# the fuzzing created included: each must still answer (or refuse) within the deadline.
DIMENSIONS: Final = tuple(reports_pb2.ReportDimension.values())  # 0 (unspecified) .. 7
REAL_DIMENSIONS: Final = tuple(d for d in DIMENSIONS if d != 0)
SOURCES: Final = tuple(reports_pb2.RevenueSource.values())  # 0, 1, 2
BUCKETS_MAX: Final = 2_232  # the server refuses longer usage series with INVALID_ARGUMENT
PAST_PERIODS_MAX: Final = 24
DAY: Final = timedelta(days=1)
HOUR: Final = timedelta(hours=1)
# A money amount as the API writes it: a plain decimal string.
DECIMAL_STRING: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


def reports_api(h: Hostile) -> reports_pb2_grpc.ReportingServiceStub:
    return reports_pb2_grpc.ReportingServiceStub(h.server.channel)


def _datetime(stamp: Timestamp | None) -> datetime | None:
    """The instant, if a datetime can hold it (hostile timestamps may lie far outside)."""
    if stamp is None or not 0 <= stamp.seconds < 32_000_000_000 or not 0 <= stamp.nanos < 10**9:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def ends_before(start: Timestamp | None) -> st.SearchStrategy[Timestamp | None]:
    """An end at or before ``start``: an empty or backwards range."""
    begin = _datetime(start)
    if begin is None:
        return st.none()
    return st.one_of(
        st.just(start), st.integers(1, 3_000).map(lambda days: ts(begin - timedelta(days=days)))
    )


def id_filters(*existing: str) -> st.SearchStrategy[list[str]]:
    """Hostile id filters: hostile ids, duplicates, and lists around the 1,000 allowed."""
    return st.one_of(
        bad_lists,
        st.lists(ids(*existing), min_size=1, max_size=4),
        st.sampled_from((999, 1_000, 1_001, 2_000)).map(lambda n: [existing[0]] * n),
        st.sampled_from((1_000, 1_001, 2_000)).map(
            lambda n: [f"{existing[i % len(existing)]}-{i}" for i in range(n)]
        ),
    )


known_customer_filters = st.lists(st.sampled_from(ALL_CUSTOMERS), max_size=3, unique=True)
bad_customer_filters = id_filters(*ALL_CUSTOMERS)
REVENUE_FIELDS: Final = (
    "period_start",
    "period_end",
    "group_by",
    "source",
    "customer_ids",
    "consistency_token",
)
bad_dimensions = st.one_of(
    st.lists(
        st.one_of(st.sampled_from((*DIMENSIONS, 8, 99, -1)), bad_int32s), min_size=1, max_size=8
    ),
    st.tuples(st.sampled_from(REAL_DIMENSIONS), st.integers(2, 50)).map(lambda dn: [dn[0]] * dn[1]),
    st.integers(8, 2_000).map(lambda n: [REAL_DIMENSIONS[i % 7] for i in range(n)]),
)


@st.composite
def revenue_requests(draw: st.DrawFn) -> reports_pb2.GetRevenueReportRequest:
    field = Fields(draw, REVENUE_FIELDS)
    request = reports_pb2.GetRevenueReportRequest(
        group_by=field(
            "group_by",
            st.lists(st.sampled_from(REAL_DIMENSIONS), max_size=4, unique=True),
            bad_dimensions,
        ),
        source=field(
            "source", st.sampled_from(SOURCES), st.one_of(st.sampled_from((3, -1, 99)), bad_int32s)
        ),
        customer_ids=field("customer_ids", known_customer_filters, bad_customer_filters),
        consistency_token=field("consistency_token", st.integers(0, 5), bad_int64s),
    )
    start, end = sorted((draw(instants), draw(instants)), key=lambda t: t.ToNanoseconds())
    start = field("period_start", st.just(start), bad_times)
    set_time(request, "period_start", start)
    set_time(
        request,
        "period_end",
        field("period_end", st.just(end), st.one_of(bad_times, ends_before(start))),
    )
    return request


def _revenue_request(**fields: Any) -> reports_pb2.GetRevenueReportRequest:
    """A revenue request over every period the API can name, the worst case."""
    request = reports_pb2.GetRevenueReportRequest(**fields)
    set_time(request, "period_start", ts(EPOCH))
    set_time(request, "period_end", ts(LAST_INSTANT))
    return request


@FUZZ
@given(request=revenue_requests())
@example(request=_revenue_request(source=reports_pb2.REVENUE_SOURCE_DRAFT))
@example(request=_revenue_request(group_by=REAL_DIMENSIONS))
@example(
    request=_revenue_request(
        source=reports_pb2.REVENUE_SOURCE_DRAFT,
        group_by=REAL_DIMENSIONS,
        customer_ids=[FUZZ_NAME] * 1_000,
    )
)
@example(request=_revenue_request(customer_ids=[FUZZ_NAME] * 2_000))
@example(  # a customer named twice
    request=_revenue_request(
        source=reports_pb2.REVENUE_SOURCE_DRAFT, customer_ids=[FUZZ_NAME, FUZZ_NAME]
    )
)
@example(request=_revenue_request(group_by=[99, -1, 0, 0]))
def test_get_revenue_report(h: Hostile, request: reports_pb2.GetRevenueReportRequest) -> None:
    if not fits(request):
        return
    report = call(h, reports_api(h).GetRevenueReport, request, read_only=True)
    if report is None:
        return
    rows: dict[str, Decimal] = {}
    with localcontext(Context(prec=200)):  # amounts run to 60 digits: add them exactly
        for row in report.rows:
            assert DECIMAL_STRING.fullmatch(row.amount.amount), row
            assert len(row.keys) == len(request.group_by), row
            currency = row.amount.currency
            rows[currency] = rows.get(currency, Decimal(0)) + Decimal(row.amount.amount)
    totals = {t.currency: Decimal(t.subtotal.amount) for t in report.totals}
    for currency in rows.keys() | totals.keys():
        # The report's promise: its rows add up to its invoices' own sums, to the cent.
        assert rows.get(currency, Decimal(0)) == totals.get(currency, Decimal(0)), (
            currency,
            rows,
            totals,
        )
    distinct = list(dict.fromkeys(request.customer_ids))
    if len(distinct) < len(request.customer_ids):
        # A customer named twice is still one customer: its invoices count once.
        once = reports_pb2.GetRevenueReportRequest()
        once.CopyFrom(request)
        once.customer_ids[:] = distinct
        again = call(h, reports_api(h).GetRevenueReport, once, read_only=True)
        if again is not None:
            assert list(report.totals) == list(again.totals), (distinct[:3], report.totals)


def test_revenue_of_extreme_amounts_adds_up_exactly(h: Hostile) -> None:
    """Prices and quantities of 20 integer digits (the API takes them, and bills them to
    the cent): each revenue report's rows and totals are its invoices' sums, exactly."""
    price, quantity = "12345678901234567890.12", "98765432109876543210.5"
    world = setup_world(h.server, name=f"hx-{uuid.uuid4().hex[:12]}", unit_price=price)
    at = world.first_period_instant
    world.record(
        world.event("t-1", quantity, at),
        world.event("t-2", "1", at),
        world.event("t-3", quantity, world.now - timedelta(days=1)),
    )
    finalized = h.api.invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=world.invoice_at(at).invoice_id),
        timeout=DEADLINE_S,
    )
    draft = world.invoice_at(world.now)
    for source, invoice in (
        (reports_pb2.REVENUE_SOURCE_FINALIZED, finalized),
        (reports_pb2.REVENUE_SOURCE_DRAFT, draft),
    ):
        request = _revenue_request(
            source=source,
            customer_ids=[world.customer_id],
            consistency_token=head_seq(h.server),
        )
        report = call(h, reports_api(h).GetRevenueReport, request, read_only=True)
        assert report is not None
        assert [t.subtotal for t in report.totals] == [invoice.subtotal], (source, report)
        assert [r.amount for r in report.rows] == [invoice.subtotal], (source, report)


USAGE_REPORT_FIELDS: Final = ("start", "end", "customer_ids", "metric_ids", "consistency_token")


def later(
    start: Timestamp | None, grain: timedelta, buckets: st.SearchStrategy[int]
) -> st.SearchStrategy[Timestamp | None]:
    """An end ``buckets`` grains after ``start``."""
    begin = _datetime(start)
    if begin is None:
        return st.none()
    return buckets.map(lambda n: ts(begin + grain * n))


@st.composite
def usage_report_requests(draw: st.DrawFn) -> reports_pb2.GetUsageReportRequest:
    field = Fields(draw, USAGE_REPORT_FIELDS)
    hourly = draw(st.booleans())
    grain = HOUR if hourly else DAY
    request = reports_pb2.GetUsageReportRequest(
        hourly=hourly,
        by_customer=draw(st.booleans()),
        customer_ids=field(
            "customer_ids", st.one_of(st.just([]), known_customer_filters), bad_customer_filters
        ),
        metric_ids=field(
            "metric_ids",
            st.lists(st.sampled_from(ALL_METRICS), max_size=3, unique=True),
            id_filters(*ALL_METRICS),
        ),
        consistency_token=field("consistency_token", st.integers(0, 5), bad_int64s),
    )
    start = field("start", instants, bad_times)
    valid_buckets = st.one_of(st.integers(1, BUCKETS_MAX), st.just(BUCKETS_MAX))
    too_many = st.one_of(
        st.just(BUCKETS_MAX + 1), st.integers(BUCKETS_MAX + 1, 400_000 if hourly else 400_000 // 24)
    )
    end = field(
        "end",
        later(start, grain, valid_buckets),
        st.one_of(
            bad_times, ends_before(start), later(start, grain, too_many), st.just(ts(LAST_INSTANT))
        ),
    )
    set_time(request, "start", start)
    set_time(request, "end", end)
    return request


def _widest_usage_request(*, hourly: bool, **fields: Any) -> reports_pb2.GetUsageReportRequest:
    """The most buckets the server serves, ending now."""
    end = datetime.now(UTC)
    request = reports_pb2.GetUsageReportRequest(hourly=hourly, **fields)
    set_time(request, "start", ts(end - (HOUR if hourly else DAY) * BUCKETS_MAX))
    set_time(request, "end", ts(end))
    return request


@FUZZ
@given(request=usage_report_requests())
@example(request=_widest_usage_request(hourly=False, by_customer=True))
@example(request=_widest_usage_request(hourly=True, by_customer=True))
@example(request=_widest_usage_request(hourly=True, customer_ids=[FUZZ_NAME] * 1_000))
def test_get_usage_report(h: Hostile, request: reports_pb2.GetUsageReportRequest) -> None:
    if not fits(request):
        return
    report = call(h, reports_api(h).GetUsageReport, request, read_only=True)
    for point in report.points if report is not None else ():
        assert DECIMAL_STRING.fullmatch(point.quantity), point
        if not request.by_customer:
            assert point.customer_id == "", point
        elif request.customer_ids:
            assert point.customer_id in request.customer_ids, point
        if request.metric_ids:
            assert point.metric_id in request.metric_ids, point


@FUZZ
@given(
    customer_ids=st.one_of(known_customer_filters, bad_customer_filters),
    past_periods=st.one_of(
        st.integers(0, PAST_PERIODS_MAX), st.sampled_from((-1, PAST_PERIODS_MAX + 1)), bad_int32s
    ),
)
@example(customer_ids=[], past_periods=PAST_PERIODS_MAX)  # every customer in the world
@example(customer_ids=[FUZZ_NAME] * 1_000, past_periods=PAST_PERIODS_MAX)
@example(customer_ids=[FUZZ_NAME, FUZZ_NAME], past_periods=0)  # a customer named twice
def test_get_forecasts(h: Hostile, customer_ids: list[str], past_periods: int) -> None:
    request = reports_pb2.GetForecastsRequest(customer_ids=customer_ids, past_periods=past_periods)
    if not fits(request):
        return
    reply = call(h, reports_api(h).GetForecasts, request, read_only=True)
    if reply is None:
        return
    periods = [(f.invoice_id, f.as_of.ToNanoseconds()) for f in reply.forecasts]
    assert len(periods) == len(set(periods)), "a period forecast twice"
    for forecast in reply.forecasts:
        if customer_ids:
            assert forecast.customer_id in customer_ids, forecast.customer_id
        assert 0 <= Decimal(forecast.elapsed) <= 1, forecast


REVISION_IDS: Final = (
    "in-fuzz-c1-1-r1",
    "in-fuzz-c1-1-r9",
    "in-known-c1-1-r1",
    "in-fuzz-c1-1-r0",
    "in-fuzz-c1-1-r",
    "in-fuzz-c1-1-r-1",
    "in-fuzz-c1-1-r" + "9" * 30,
    "in-fuzz-c1-1-r1-r1",
    "in-fuzz-c1-1-R1",
)


@st.composite
def statement_requests(draw: st.DrawFn) -> reports_pb2.GetStatementRequest:
    field = Fields(draw, ("invoice_id", "customer_id", "at"))
    by_id = draw(st.booleans())
    request = reports_pb2.GetStatementRequest(
        invoice_id=field(
            "invoice_id",
            valid_invoice_ids if by_id else st.just(""),
            st.one_of(st.sampled_from(REVISION_IDS), bad_invoice_ids),
        ),
        customer_id=field(
            "customer_id",
            st.just("") if by_id else st.sampled_from(ALL_CUSTOMERS),
            ids(*ALL_CUSTOMERS),
        ),
    )
    set_time(request, "at", field("at", st.none() if by_id else instants, bad_times))
    return request


@FUZZ
@given(request=statement_requests())
@example(request=reports_pb2.GetStatementRequest(invoice_id="in-known-c1-1"))
@example(request=reports_pb2.GetStatementRequest(invoice_id="in-fuzz-c1-1-r9"))
@example(request=reports_pb2.GetStatementRequest(customer_id="fuzz\x00", at=ts(NOW)))
def test_get_statement(h: Hostile, request: reports_pb2.GetStatementRequest) -> None:
    statement = call(h, reports_api(h).GetStatement, request, read_only=True)
    if statement is None:
        return
    doctype = "<!doctype html>"
    assert statement.html[: len(doctype)].lower() == doctype, statement.html[:80]
    invoice_id = request.invoice_id or statement.invoice_id
    assert html.escape(invoice_id, quote=True) in statement.html, invoice_id


COST_FIELDS: Final = ("product_id", "unit_cost", "currency", "effective_from", "request_id")
valid_unit_costs = st.one_of(
    st.sampled_from(("0", "0.0004", "0.0015", "1", "0.000000000001", "9" * 20 + "." + "9" * 12)),
    st.builds(_plain, st.integers(0, 10**15), st.integers(0, 12)),
)
bad_unit_costs = st.one_of(
    st.sampled_from(
        (
            "-0.0004",
            "-1",
            "0.0000000000001",  # 13 places
            "1." + "0" * 13,
            "0." + "0" * 19 + "1",
            "",
        )
    ),
    bad_decimals,
    decimals,  # up to 40 digits and 20 places: some fit, some do not
)


@st.composite
def product_cost_requests(draw: st.DrawFn) -> reports_pb2.SetProductCostRequest:
    field = Fields(draw, COST_FIELDS)
    request = reports_pb2.SetProductCostRequest(
        product_id=field(
            "product_id",
            st.sampled_from(ALL_PRODUCTS),
            st.one_of(new_ids, ids(*ALL_PRODUCTS)),
        ),
        unit_cost=field("unit_cost", valid_unit_costs, bad_unit_costs),
        currency=field(
            "currency",
            st.sampled_from(("USD", "EUR", "JPY", "credits", "gpu_hours")),
            st.one_of(
                st.sampled_from(("", "US D", "1USD", "A" * 33, "_x", "credits\x00")), hostile_text
            ),
        ),
        request_id=field("request_id", st.one_of(st.just(""), new_ids), hostile_text),
    )
    set_time(request, "effective_from", field("effective_from", instants, bad_times))
    return request


@FUZZ
@given(request=product_cost_requests())
@example(
    request=reports_pb2.SetProductCostRequest(
        product_id=KNOWN_IDS["product"],
        unit_cost="0.0004",
        currency="USD",
        effective_from=ts(EPOCH),
    )
)
@example(
    request=reports_pb2.SetProductCostRequest(
        product_id=FUZZ_IDS["product"], unit_cost="9" * 41, currency="USD", effective_from=ts(NOW)
    )
)
def test_set_product_cost(h: Hostile, request: reports_pb2.SetProductCostRequest) -> None:
    """Costs of every product, the known customer's too: a cost changes margins, never
    an invoice, so the known customer stays as it was."""
    if not fits(request):
        return
    cost = call(h, reports_api(h).SetProductCost, request)
    if cost is not None:
        assert (cost.product_id, cost.currency) == (request.product_id, request.currency)
        assert Decimal(cost.unit_cost) == Decimal(request.unit_cost)
        assert cost.consistency_token > 0


# ---------------------------------------------------------------------------------------
# Raw bytes on the wire: invalid UTF-8 in string fields, corrupt messages

# (service, method, a valid request, the path of a string field to fill with raw bytes)
RAW_TARGETS: Final[tuple[tuple[str, str, Message, tuple[str, ...]], ...]] = (
    ("UsageService", "RecordUsage", usage_pb2.RecordUsageRequest(), ("events", "customer_id")),
    (
        "CatalogService",
        "CreateBillableMetric",
        catalog_pb2.CreateBillableMetricRequest(),
        ("metric", "metric_id"),
    ),
    ("CatalogService", "CreateProduct", catalog_pb2.CreateProductRequest(), ("product", "name")),
    (
        "CatalogService",
        "DraftRateCard",
        catalog_pb2.DraftRateCardRequest(reason="r"),
        ("rate_card_id",),
    ),
    (
        "CatalogService",
        "ApproveRateCardDraft",
        catalog_pb2.ApproveRateCardDraftRequest(draft=1),
        ("reason",),
    ),
    ("CatalogService", "GetRateCard", catalog_pb2.GetRateCardRequest(), ("rate_card_id",)),
    (
        "CatalogService",
        "ListRateCardVersions",
        catalog_pb2.ListRateCardVersionsRequest(rate_card_id=FUZZ_IDS["card"]),
        ("page_token",),
    ),
    (
        "CatalogService",
        "DiffRateCardVersions",
        catalog_pb2.DiffRateCardVersionsRequest(),
        ("rate_card_id",),
    ),
    (
        "ContractService",
        "CreateCustomer",
        contracts_pb2.CreateCustomerRequest(),
        ("customer", "customer_id"),
    ),
    (
        "ContractService",
        "CreateContract",
        contracts_pb2.CreateContractRequest(),
        ("contract", "contract_id"),
    ),
    ("ContractService", "GetContract", contracts_pb2.GetContractRequest(), ("customer_id",)),
    (
        "ContractService",
        "AmendContract",
        contracts_pb2.AmendContractRequest(customer_id=FUZZ_NAME),
        ("end_override_ids",),
    ),
    (
        "ContractService",
        "EndContract",
        contracts_pb2.EndContractRequest(customer_id=FUZZ_NAME),
        ("contract_id",),
    ),
    ("InvoiceService", "GetInvoice", invoices_pb2.GetInvoiceRequest(), ("invoice_id",)),
    (
        "InvoiceService",
        "FinalizeInvoice",
        invoices_pb2.FinalizeInvoiceRequest(invoice_id="in-fuzz-c1-2"),
        ("request_id",),
    ),
    (
        "InvoiceService",
        "VoidInvoice",
        invoices_pb2.VoidInvoiceRequest(invoice_id="in-fuzz-c1-2"),
        ("request_id",),
    ),
    ("InvoiceService", "PreviewInvoice", invoices_pb2.PreviewInvoiceRequest(), ("customer_id",)),
    ("AuditService", "ReplayCustomer", audit_pb2.ReplayCustomerRequest(), ("customer_id",)),
    ("AuditService", "VerifyInvoice", audit_pb2.VerifyInvoiceRequest(), ("invoice_id",)),
    ("AuditService", "VerifyLedger", audit_pb2.VerifyLedgerRequest(), ()),  # no string field
    ("AuditService", "ListAuditEntries", audit_pb2.ListAuditEntriesRequest(), ("actor",)),
    (
        "AuditService",
        "SimulatePricing",
        audit_pb2.SimulatePricingRequest(version=1),
        ("rate_card_id",),
    ),
    (
        "AlertService",
        "SetSpendAlert",
        alerts_pb2.SetSpendAlertRequest(
            customer_id=ALERT_CUSTOMER, kind="remaining_balance", threshold="1", currency="USD"
        ),
        ("alert_id",),
    ),
    ("AlertService", "ListSpendAlerts", alerts_pb2.ListSpendAlertsRequest(), ("customer_id",)),
    (
        "BalanceService",
        "GrantCredit",
        balances_pb2.GrantCreditRequest(customer_id=FUZZ_NAME, amount="1", currency="USD"),
        ("grant_id",),
    ),
    (
        "BalanceService",
        "GetBalances",
        balances_pb2.GetBalancesRequest(customer_id=FUZZ_NAME),
        ("currency",),
    ),
    (
        "BalanceService",
        "CheckEntitlement",
        balances_pb2.CheckEntitlementRequest(customer_id=FUZZ_NAME),
        ("product_id",),
    ),
    (
        "ReportingService",
        "GetRevenueReport",
        reports_pb2.GetRevenueReportRequest(period_start=ts(EPOCH), period_end=ts(NOW)),
        ("customer_ids",),
    ),
    (
        "ReportingService",
        "GetUsageReport",
        reports_pb2.GetUsageReportRequest(start=ts(NOW - DAY), end=ts(NOW)),
        ("metric_ids",),
    ),
    ("ReportingService", "GetForecasts", reports_pb2.GetForecastsRequest(), ("customer_ids",)),
    ("ReportingService", "GetStatement", reports_pb2.GetStatementRequest(), ("invoice_id",)),
    (
        "ReportingService",
        "SetProductCost",
        reports_pb2.SetProductCostRequest(
            product_id=FUZZ_IDS["product"], unit_cost="1", currency="USD", effective_from=ts(NOW)
        ),
        ("currency",),
    ),
)
STREAMING: Final = frozenset({"ReplayCustomer", "VerifyLedger"})
BAD_UTF8: Final = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc0\x80",  # overlong NUL
    b"\xc3",  # truncated
    b"\xe2\x82",
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xf8\x88\x80\x80\x80",
)
invalid_utf8 = st.builds(
    lambda before, bad, after: before + bad + after,
    st.sampled_from((b"", b"fuzz", "é".encode(), b"\x00")),
    st.sampled_from(BAD_UTF8),
    st.sampled_from((b"", b"abc", "é".encode())),
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(request: Message, path: tuple[str, ...], raw: bytes) -> bytes:
    """Wire bytes that set the string field at ``path`` to ``raw``, unchecked.

    Appended to a serialized message, they merge into it as protobuf fields do.
    """
    numbers = []
    descriptor = request.DESCRIPTOR
    for name in path:
        field = descriptor.fields_by_name[name]
        numbers.append(field.number)
        descriptor = field.message_type
    encoded = raw
    for number in reversed(numbers):
        encoded = _varint(number << 3 | 2) + _varint(len(encoded)) + encoded
    return encoded


@FUZZ
@given(
    target=st.sampled_from(RAW_TARGETS),
    junk=invalid_utf8,
    corruption=st.sampled_from(("invalid utf-8", "invalid utf-8", "truncated", "garbage")),
)
def test_raw_bytes_on_the_wire(
    h: Hostile,
    target: tuple[str, str, Message, tuple[str, ...]],
    junk: bytes,
    corruption: str,
) -> None:
    service, method, request, path = target
    raw = request.SerializeToString()
    if corruption == "invalid utf-8" and path:
        raw += _string_field(request, path, junk)
    elif corruption == "garbage":
        raw = b"\xff\xff\xff\xff" + junk
    else:
        raw += b"\x08"  # a key of a varint field, and no value after it
    full_name = f"/accrual.v1.{service}/{method}"
    channel = h.server.channel
    rpc = channel.unary_stream(full_name) if method in STREAMING else channel.unary_unary(full_name)
    try:
        result = rpc(raw, timeout=DEADLINE_S)
        if method in STREAMING:
            list(result)
    except grpc.RpcError as error:
        check_failure(f"{full_name} ({corruption}) {raw[:200]!r}", error)
