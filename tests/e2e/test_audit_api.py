"""AuditService over real gRPC: replaying a customer, verifying invoices and the ledger,
the audit log, and pricing simulations; plus the reason every price publish needs.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import psycopg
import pytest

from ledger.core.canonical import canonical_json
from projections import auditing
from services.api.accrual.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    catalog_pb2,
    contracts_pb2,
    invoices_pb2,
    usage_pb2,
)
from tests.e2e.conftest import RunningServer, issue
from tests.e2e.helpers import (
    ACCEPTED,
    Errors,
    World,
    head_seq,
    setup_world,
    stubs,
    ts,
    unpack,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
Metadata = Sequence[tuple[str, str]]


def audit_api(server: RunningServer) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(server.channel)


def caller(server: RunningServer, actor: str, request_id: str = "") -> Metadata:
    """gRPC metadata authenticating as ``actor`` (an admin) and, optionally, a
    request id header."""
    metadata = server.as_token(issue(server.database_url, actor, "admin"))
    return metadata + ([("x-request-id", request_id)] if request_id else [])


def add_customer(
    world: World, customer_id: str, *, pinned_version: int = 0, metadata: Metadata = ()
) -> str:
    """A customer on the world's rate card from the world's start; returns its contract id."""
    world.api.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id=customer_id, name=customer_id.title())
        ),
        metadata=metadata,
    )
    contract_id = f"{customer_id}-c1"
    world.api.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            contract=contracts_pb2.Contract(
                contract_id=contract_id,
                customer_id=customer_id,
                rate_card_id=world.rate_card_id,
                pinned_version=pinned_version,
                starts_at=ts(world.start),
            )
        ),
        metadata=metadata,
    )
    return contract_id


def publish_v2(
    world: World, unit_price: str, metadata: Metadata = ()
) -> catalog_pb2.RateCardVersion:
    """A second version of the world's card, in effect only long after its first periods."""
    card: catalog_pb2.RateCardVersion = world.api.publish(
        catalog_pb2.DraftRateCardRequest(
            rate_card_id=world.rate_card_id,
            name="List prices",
            currency="USD",
            effective_from=ts(world.now + timedelta(days=60)),
            rates=[
                catalog_pb2.Rate(
                    product_id=world.product_id, model="per_unit", unit_price=unit_price
                )
            ],
            reason="price rise",
        ),
        metadata=metadata,
    )
    return card


def record(
    world: World, customer_id: str, prefix: str, at: datetime, quantities: list[str]
) -> None:
    events = [
        world.event(f"{prefix}-{n}", quantity, at + timedelta(minutes=n), customer_id=customer_id)
        for n, quantity in enumerate(quantities)
    ]
    results = world.record(*events).results
    assert [r.status for r in results] == [ACCEPTED] * len(events), results


def finalize(
    world: World, invoice_id: str, *, request_id: str = "", metadata: Metadata = ()
) -> invoices_pb2.Invoice:
    invoice: invoices_pb2.Invoice = world.api.invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=invoice_id, request_id=request_id),
        metadata=metadata,
    )
    assert invoice.status == "FINALIZED"
    return invoice


def replay(
    server: RunningServer, request: audit_pb2.ReplayCustomerRequest
) -> tuple[list[audit_pb2.LedgerEvent], list[audit_pb2.ReplayedInvoice]]:
    """The stream's events and invoices; every event comes before every invoice."""
    items = list(audit_api(server).ReplayCustomer(request))
    kinds = [item.WhichOneof("item") for item in items]
    count = kinds.count("event")
    assert kinds == ["event"] * count + ["invoice"] * (len(items) - count)
    return [item.event for item in items[:count]], [item.invoice for item in items[count:]]


def stored_rows(server: RunningServer, seqs: list[int]) -> dict[int, tuple[bytes, ...]]:
    with psycopg.connect(server.database_url) as conn:
        rows = conn.execute(
            "SELECT seq, payload, metadata, prev_hash, hash FROM events WHERE seq = ANY(%s)",
            (seqs,),
        ).fetchall()
    return {row[0]: tuple(bytes(value) for value in row[1:]) for row in rows}


# ---------------------------------------------------------------------------------------
# ReplayCustomer


@dataclasses.dataclass(frozen=True)
class ReplayWorld:
    acme: World
    final: invoices_pb2.Invoice
    cut: int
    draft_at_cut: invoices_pb2.Invoice


def replay_world(server: RunningServer) -> ReplayWorld:
    """acme (10 usage events over two periods, period 1 finalized), beta on acme's card,
    and zeta with a catalog of its own; then a second version of acme's card."""
    acme = setup_world(server, name="acme")
    zeta = setup_world(server, name="zeta")
    add_customer(acme, "beta")
    p1, p2 = acme.first_period_instant, acme.now - timedelta(days=1)
    record(acme, "acme", "a1", p1, ["123457", "98765", "5000001", "7", "250000"])
    record(acme, "beta", "b1", p1, ["1000", "2000", "3000", "4000"])
    record(zeta, "zeta", "z1", p1, ["11", "22", "33"])
    final = finalize(acme, "in-acme-c1-1")
    record(acme, "acme", "a2", p2, ["100000", "200000", "300000"])
    cut = head_seq(server)
    draft_at_cut = acme.invoice_at(p2)
    assert (draft_at_cut.status, draft_at_cut.computed_through_seq) == ("DRAFT", cut)
    record(acme, "acme", "a3", p2 + timedelta(hours=1), ["400000", "500000"])
    record(acme, "beta", "b2", p2, ["5000"])
    publish_v2(acme, "0.0021")
    return ReplayWorld(acme, final, cut, draft_at_cut)


def acme_streams(world: World) -> set[str]:
    return {
        "customer-acme",
        "usage-acme",
        f"contract-{world.contract_id}",
        f"ratecard-{world.rate_card_id}",
        f"product-{world.product_id}",
        f"metric-{world.metric_id}",
    }


def usage_of(events: list[audit_pb2.LedgerEvent]) -> list[dict[str, object]]:
    return [json.loads(e.payload_json) for e in events if e.event_type == "UsageRecorded"]


def test_replay_customer_streams_its_history_then_every_invoice_recomputed(
    server: RunningServer,
) -> None:
    w = replay_world(server)
    head = head_seq(server)

    events, invoices = replay(server, audit_pb2.ReplayCustomerRequest(customer_id="acme"))

    seqs = [e.seq for e in events]
    assert all(a < b for a, b in itertools.pairwise(seqs)), "strictly increasing"
    # The card's second version; the head is its draft's closing entry, written with it.
    assert seqs[-1] == head - 1
    assert {e.stream_id for e in events} == acme_streams(w.acme)
    assert {e.event_type for e in events} >= {
        "BillableMetricCreated",
        "ProductCreated",
        "RateCardPublished",
        "CustomerCreated",
        "ContractCreated",
        "UsageRecorded",
        "InvoiceFinalized",
    }
    usage = usage_of(events)
    assert len(usage) == 10
    assert {u["customer_id"] for u in usage} == {"acme"}
    assert [e.event_type for e in events].count("RateCardPublished") == 2
    # Events are the stored rows, verbatim: payload and metadata bytes and both hashes.
    stored = stored_rows(server, seqs)
    for e in events:
        payload, metadata, prev_hash, hash_ = stored[e.seq]
        assert e.payload_json.encode() == payload
        assert e.metadata_json.encode() == metadata
        assert (e.prev_hash, e.hash) == (prev_hash.hex(), hash_.hex())

    assert [(i.invoice.invoice_id, i.status) for i in invoices] == [
        ("in-acme-c1-1", "FINALIZED"),
        ("in-acme-c1-2", "DRAFT"),
    ]
    final, draft = invoices
    assert final.matches
    assert final.replayed_sha256 == final.recorded_sha256 == w.final.content_sha256
    assert final.invoice.total == w.final.total
    assert final.invoice.computed_through_seq == w.final.computed_through_seq
    live = w.acme.invoice("in-acme-c1-2")
    assert draft.invoice.computed_through_seq == head
    assert draft.replayed_sha256 == live.content_sha256  # replay equals the live draft
    assert draft.invoice.total == live.total
    assert (draft.recorded_sha256, draft.matches) == ("", False)


def test_replay_up_to_a_seq_cuts_the_stream_and_recomputes_drafts_there(
    server: RunningServer,
) -> None:
    w = replay_world(server)

    events, invoices = replay(
        server, audit_pb2.ReplayCustomerRequest(customer_id="acme", up_to_seq=w.cut)
    )

    assert max(e.seq for e in events) == w.cut  # the cut is acme's own usage event
    assert len(usage_of(events)) == 8
    assert [e.event_type for e in events].count("RateCardPublished") == 1
    final, draft = invoices
    assert (final.status, final.matches) == ("FINALIZED", True)
    assert final.replayed_sha256 == w.final.content_sha256
    assert draft.status == "DRAFT"
    assert draft.invoice.computed_through_seq == w.cut
    assert draft.replayed_sha256 == w.draft_at_cut.content_sha256
    assert draft.invoice.total == w.draft_at_cut.total
    assert draft.invoice.total != w.acme.invoice("in-acme-c1-2").total  # later usage left out

    # Cut by time instead: the last event recorded by the cut event's instant.
    recorded_at = next(e.recorded_at for e in events if e.seq == w.cut)
    by_time = replay(
        server, audit_pb2.ReplayCustomerRequest(customer_id="acme", up_to_time=recorded_at)
    )
    assert by_time == (events, invoices)


def test_replay_under_another_version_simulates_every_invoice(server: RunningServer) -> None:
    w = replay_world(server)
    full, _ = replay(server, audit_pb2.ReplayCustomerRequest(customer_id="acme"))

    events, invoices = replay(
        server,
        audit_pb2.ReplayCustomerRequest(
            customer_id="acme", rate_card_id=w.acme.rate_card_id, rate_card_version=2
        ),
    )

    assert [e.seq for e in events] == [e.seq for e in full]
    assert [i.invoice.invoice_id for i in invoices] == ["in-acme-c1-1", "in-acme-c1-2"]
    for invoice in invoices:
        assert invoice.status == invoice.invoice.status == "SIMULATED"
        assert (invoice.recorded_sha256, invoice.matches) == ("", False)
        assert list(invoice.invoice.rate_card_versions) == [2]
    preview = w.acme.api.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(
            invoice_id="in-acme-c1-1", rate_card_id=w.acme.rate_card_id, rate_card_version=2
        )
    )
    assert invoices[0].invoice.total == preview.total
    assert invoices[0].invoice.total != w.final.total


def test_replay_of_unknowns_is_not_found(server: RunningServer) -> None:
    world = setup_world(server)
    errors = Errors()
    api = audit_api(server)

    errors.expect(
        NOT_FOUND,
        lambda: list(api.ReplayCustomer(audit_pb2.ReplayCustomerRequest(customer_id="x"))),
    )
    request = audit_pb2.ReplayCustomerRequest(
        customer_id=world.customer_id, rate_card_id=world.rate_card_id, rate_card_version=9
    )
    errors.expect(NOT_FOUND, lambda: list(api.ReplayCustomer(request)))
    errors.assert_no_internals_leaked()


# ---------------------------------------------------------------------------------------
# VerifyInvoice and VerifyLedger


def billed_world(server: RunningServer) -> tuple[World, invoices_pb2.Invoice]:
    world = setup_world(server)
    record(world, world.customer_id, "p1", world.first_period_instant, ["1000", "2345", "77777"])
    final = finalize(world, f"in-{world.contract_id}-1")
    record(world, world.customer_id, "p2", world.now - timedelta(days=1), ["5"])
    return world, final


def test_verify_invoice(server: RunningServer) -> None:
    world, final = billed_world(server)
    api = audit_api(server)
    errors = Errors()

    check = api.VerifyInvoice(audit_pb2.VerifyInvoiceRequest(invoice_id=final.invoice_id))

    assert check.matches
    assert check.invoice_id == final.invoice_id
    assert check.recorded_sha256 == check.replayed_sha256 == final.content_sha256
    assert check.replayed.total == final.total
    assert check.replayed.computed_through_seq == final.computed_through_seq

    draft = f"in-{world.contract_id}-2"
    failure = errors.expect(
        NOT_FOUND, lambda: api.VerifyInvoice(audit_pb2.VerifyInvoiceRequest(invoice_id=draft))
    )
    assert failure.reasons == ["INVOICE_NOT_FOUND"]
    failure = errors.expect(INVALID, lambda: api.VerifyInvoice(audit_pb2.VerifyInvoiceRequest()))
    assert failure.fields == ["invoice_id"]
    errors.expect(
        NOT_FOUND,
        lambda: api.VerifyInvoice(audit_pb2.VerifyInvoiceRequest(invoice_id="in-nobody-1")),
    )
    errors.assert_no_internals_leaked()


def chain_hash(server: RunningServer, seq: int) -> str:
    with psycopg.connect(server.database_url) as conn:
        row = conn.execute("SELECT hash FROM events WHERE seq = %s", (seq,)).fetchone()
    assert row is not None
    return bytes(row[0]).hex()


def verify_ledger(
    server: RunningServer, from_seq: int = 0, to_seq: int = 0
) -> list[audit_pb2.VerifyLedgerProgress]:
    request = audit_pb2.VerifyLedgerRequest(from_seq=from_seq, to_seq=to_seq)
    progress = list(audit_api(server).VerifyLedger(request))
    assert progress, "at least the final message"
    assert [p.done for p in progress] == [False] * (len(progress) - 1) + [True]
    return progress


def test_verify_ledger_streams_progress_then_a_verdict(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    billed_world(server)
    monkeypatch.setattr(
        auditing, "verify_progress", functools.partial(auditing.verify_progress, every=4)
    )
    head = head_seq(server)
    with psycopg.connect(server.database_url) as conn:
        row = conn.execute("SELECT last_hash FROM ledger_heads WHERE partition = 0").fetchone()
    assert row is not None

    progress = verify_ledger(server)

    *steps, final = progress
    assert [p.events_checked for p in steps] == list(range(4, head + 1, 4))
    assert [p.last_seq for p in steps] == list(range(4, head + 1, 4))
    assert all(p.ok for p in steps)
    assert final.ok and (final.breach_seq, final.breach_reason) == (0, "")
    assert (final.events_checked, final.last_seq) == (head, head)
    assert final.last_hash == bytes(row[0]).hex()

    *_, ranged = verify_ledger(server, from_seq=3, to_seq=10)
    assert ranged.ok
    assert (ranged.events_checked, ranged.last_seq) == (8, 10)
    assert ranged.last_hash == chain_hash(server, 10)
    *_, beyond = verify_ledger(server, to_seq=head + 100)
    assert beyond.ok and (beyond.events_checked, beyond.last_seq) == (head, head)

    errors = Errors()
    errors.expect(INVALID, lambda: verify_ledger(server, from_seq=-1))
    errors.assert_no_internals_leaked()


def stream_or_status(
    call: Callable[[], list[audit_pb2.VerifyLedgerProgress]],
) -> list[audit_pb2.VerifyLedgerProgress] | grpc.StatusCode:
    try:
        return call()
    except grpc.RpcError as error:
        return unpack(error).code


@pytest.mark.parametrize("beyond_head", [False, True])
def test_verify_ledger_of_an_empty_range_is_no_breach(
    server: RunningServer, beyond_head: bool
) -> None:
    """A range with nothing in it (from after to, or from after the head) says nothing
    about tampering: it is refused as a bad request, or checks zero events, never a breach
    of an intact ledger."""
    billed_world(server)
    head = head_seq(server)
    request = (
        audit_pb2.VerifyLedgerRequest(from_seq=head + 5)
        if beyond_head
        else audit_pb2.VerifyLedgerRequest(from_seq=6, to_seq=3)
    )
    outcome = stream_or_status(lambda: list(audit_api(server).VerifyLedger(request)))
    if isinstance(outcome, grpc.StatusCode):
        assert outcome == INVALID
        return
    final = outcome[-1]
    assert final.done
    assert (final.ok, final.breach_seq, final.breach_reason) == (True, 0, "")
    assert final.events_checked == 0


def test_verify_ledger_names_a_tampered_event(server: RunningServer) -> None:
    world, _ = billed_world(server)
    with psycopg.connect(server.database_url) as conn:
        row = conn.execute(
            "SELECT seq, payload FROM events WHERE stream_id = %s ORDER BY seq LIMIT 1 OFFSET 1",
            (f"usage-{world.customer_id}",),
        ).fetchone()
        assert row is not None
        seq, payload = row
        altered = json.loads(bytes(payload))
        altered["properties"]["tokens"] = "1"
        conn.execute("SET session_replication_role = replica")  # bypass the append-only trigger
        conn.execute(
            "UPDATE events SET payload = %s WHERE seq = %s", (canonical_json(altered), seq)
        )

    *_, final = verify_ledger(server)

    assert not final.ok
    assert final.breach_seq == seq
    assert "hash" in final.breach_reason
    assert (final.events_checked, final.last_seq) == (seq - 1, seq - 1)
    *_, before = verify_ledger(server, to_seq=seq - 1)
    assert before.ok


# ---------------------------------------------------------------------------------------
# The audit log


@dataclasses.dataclass(frozen=True)
class AuditWorld:
    t1: datetime  # after the product, before the first rate card
    t2: datetime  # after acme's customer, before its contract
    token: int  # consistency token of the last write (rate card v2)


def audit_world(server: RunningServer) -> tuple[World, AuditWorld]:
    api = stubs(server)
    now = datetime.now(UTC)
    start = (now - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
    alice, bob = caller(server, "alice"), caller(server, "bob")
    api.catalog.CreateBillableMetric(
        catalog_pb2.CreateBillableMetricRequest(
            metric=catalog_pb2.BillableMetric(
                metric_id="tokens",
                name="Tokens",
                event_type="completion",
                aggregation="SUM",
                property="tokens",
            ),
            request_id="req-metric",
        ),
        metadata=alice,
    )
    api.catalog.CreateProduct(
        catalog_pb2.CreateProductRequest(
            product=catalog_pb2.Product(product_id="llm", name="LLM", metric_id="tokens")
        )
    )
    t1 = datetime.now(UTC)
    api.publish(
        catalog_pb2.DraftRateCardRequest(
            rate_card_id="list",
            name="List prices",
            currency="USD",
            effective_from=ts(start),
            rates=[catalog_pb2.Rate(product_id="llm", model="per_unit", unit_price="0.0015")],
            reason="launch pricing",
            request_id="req-card",
        ),
        metadata=alice,
    )
    world = World(api, now, start, "tokens", "llm", "list", "acme", "acme-c1", "0.0015")
    api.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="acme", name="Acme")
        ),
        metadata=bob,
    )
    t2 = datetime.now(UTC)
    api.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            contract=contracts_pb2.Contract(
                contract_id="acme-c1",
                customer_id="acme",
                rate_card_id="list",
                starts_at=ts(start),
            )
        ),
        metadata=caller(server, "alice", request_id="req-contract"),
    )
    add_customer(world, "beta")
    usage = usage_pb2.RecordUsageRequest(
        events=[world.event("u1", "1000", world.first_period_instant)]
    )
    assert api.usage.RecordUsage(usage, metadata=alice).results[0].status == ACCEPTED
    finalize(world, "in-acme-c1-1", request_id="req-final", metadata=bob)
    v2 = publish_v2(world, "0.002", metadata=caller(server, "carol"))
    return world, AuditWorld(t1, t2, v2.consistency_token)


# (kind, actor, customer_id, subject, reason, request_id), in ledger order.
AUDIT_TRAIL = [
    ("BillableMetricCreated", "alice", "", "tokens", "", "req-metric"),
    ("ProductCreated", "test-admin", "", "llm", "", ""),
    ("RateCardDrafted", "alice", "", "list draft 1", "launch pricing", "req-card"),
    ("RateCardDraftApproved", "test-approver", "", "list draft 1", "reviewed", ""),
    ("RateCardPublished", "alice", "", "list v1", "launch pricing", "req-card"),
    ("CustomerCreated", "bob", "acme", "acme", "", ""),
    ("ContractCreated", "alice", "acme", "acme-c1", "", "req-contract"),
    ("CustomerCreated", "test-admin", "beta", "beta", "", ""),
    ("ContractCreated", "test-admin", "beta", "beta-c1", "", ""),
    ("InvoiceFinalized", "bob", "acme", "in-acme-c1-1", "", "req-final"),
    ("RateCardDrafted", "carol", "", "list draft 2", "price rise", ""),
    ("RateCardDraftApproved", "test-approver", "", "list draft 2", "reviewed", ""),
    ("RateCardPublished", "carol", "", "list v2", "price rise", ""),
]


def entries(server: RunningServer, **fields: object) -> tuple[list[audit_pb2.AuditEntry], str]:
    response = audit_api(server).ListAuditEntries(audit_pb2.ListAuditEntriesRequest(**fields))
    return list(response.entries), response.next_page_token


def trail(found: list[audit_pb2.AuditEntry]) -> list[tuple[str, ...]]:
    seqs = [e.seq for e in found]
    assert seqs == sorted(set(seqs)), "in seq order"
    return [(e.kind, e.actor, e.customer_id, e.subject, e.reason, e.request_id) for e in found]


def test_audit_log_records_who_did_what_and_why_and_filters_it(server: RunningServer) -> None:
    _, w = audit_world(server)

    # Read your own write: the last write's token makes its entry visible at once.
    latest, _ = entries(server, kind="RateCardPublished", consistency_token=w.token)
    assert [e.seq for e in latest][-1] == w.token
    assert trail(latest) == [AUDIT_TRAIL[4], AUDIT_TRAIL[12]]

    head = head_seq(server)
    everything, token = entries(server, consistency_token=head)
    assert token == ""
    assert trail(everything) == AUDIT_TRAIL
    assert all(e.summary for e in everything)
    assert all(w.t1 - timedelta(days=1) < e.recorded_at.ToDatetime(UTC) for e in everything)

    def only(**fields: object) -> list[tuple[str, ...]]:
        return trail(entries(server, consistency_token=head, **fields)[0])

    assert only(customer_id="acme") == [AUDIT_TRAIL[i] for i in (5, 6, 9)]
    assert only(actor="alice") == [AUDIT_TRAIL[i] for i in (0, 2, 4, 6)]
    assert only(kind="RateCardPublished") == [AUDIT_TRAIL[i] for i in (4, 12)]
    assert only(start=ts(w.t1), end=ts(w.t2)) == AUDIT_TRAIL[2:6]
    assert only(start=ts(w.t2)) == AUDIT_TRAIL[6:]
    assert only(end=ts(w.t1)) == AUDIT_TRAIL[:2]
    assert only(actor="bob", customer_id="acme") == [AUDIT_TRAIL[i] for i in (5, 9)]
    assert only(kind="UsageRecorded") == []  # usage is not an action of the audit log
    assert only(kind="ContractRegistered") == []  # bookkeeping of a contract creation


def test_audit_log_pages_walk_every_entry(server: RunningServer) -> None:
    audit_world(server)
    head = head_seq(server)
    everything, _ = entries(server, consistency_token=head)

    pages, token = [], ""
    while True:
        page, token = entries(server, page_size=2, page_token=token, consistency_token=head)
        assert len(page) <= 2
        pages.append(page)
        if not token:
            break
        assert len(pages) < 20, "paging ends"
    walked = [e for page in pages for e in page]
    assert [e.seq for e in walked] == [e.seq for e in everything]
    assert trail(walked) == AUDIT_TRAIL
    assert all(len(page) == 2 for page in pages[:-1])

    filtered, token = entries(server, actor="alice", page_size=3, consistency_token=head)
    rest, end = entries(server, actor="alice", page_size=3, page_token=token)
    assert trail(filtered + rest) == [AUDIT_TRAIL[i] for i in (0, 2, 4, 6)]
    assert end == ""

    errors = Errors()
    errors.expect(INVALID, lambda: entries(server, page_token="not-a-token"))
    errors.assert_no_internals_leaked()


@pytest.mark.parametrize("reason", ["", "   "])
def test_publishing_prices_without_a_reason_is_refused(server: RunningServer, reason: str) -> None:
    world = setup_world(server)
    errors = Errors()
    before = head_seq(server)
    request = catalog_pb2.DraftRateCardRequest(
        rate_card_id=world.rate_card_id,
        name="List prices",
        currency="USD",
        effective_from=ts(world.now),
        rates=[catalog_pb2.Rate(product_id=world.product_id, model="per_unit", unit_price="1")],
        reason=reason,
    )

    failure = errors.expect(INVALID, lambda: world.api.catalog.DraftRateCard(request))

    assert failure.fields == ["reason"]
    assert head_seq(server) == before
    errors.assert_no_internals_leaked()


# ---------------------------------------------------------------------------------------
# SimulatePricing


def test_simulated_version_totals_equal_an_invoice_finalized_under_it(
    server: RunningServer,
) -> None:
    acme = setup_world(server, name="acme")
    other = setup_world(server, name="zeta")  # a contract on another card: not simulated
    record(other, "zeta", "z", other.first_period_instant, ["1000"])
    v2 = publish_v2(acme, "0.0021")
    add_customer(acme, "beta", pinned_version=v2.version)
    quantities = ["123457", "98765", "5000001", "333"]
    for customer in ("acme", "beta"):
        record(acme, customer, "t", acme.first_period_instant, quantities)
    beta_final = finalize(acme, "in-beta-c1-1")
    acme_draft = acme.invoice("in-acme-c1-1")
    assert list(beta_final.rate_card_versions) == [2]
    assert list(acme_draft.rate_card_versions) == [1]
    assert acme_draft.total.amount != beta_final.total.amount
    api = audit_api(server)

    response = api.SimulatePricing(
        audit_pb2.SimulatePricingRequest(
            rate_card_id=acme.rate_card_id,
            version=2,
            start=acme_draft.period_start,
            end=acme_draft.period_end,
        )
    )

    rows = {row.customer_id: row for row in response.rows}
    assert len(rows) == len(response.rows) == 2
    a, b = rows["acme"], rows["beta"]
    assert (a.invoice_id, a.status) == ("in-acme-c1-1", "DRAFT")
    assert (a.period_start, a.period_end) == (acme_draft.period_start, acme_draft.period_end)
    assert a.simulated_total == beta_final.total
    assert a.current_total == acme_draft.total
    a_delta = Decimal(beta_final.total.amount) - Decimal(acme_draft.total.amount)
    assert (Decimal(a.delta.amount), a.delta.currency) == (a_delta, "USD")
    assert (b.invoice_id, b.status) == ("in-beta-c1-1", "FINALIZED")
    assert b.current_total == b.simulated_total == beta_final.total
    assert Decimal(b.delta.amount) == 0

    current = Decimal(acme_draft.total.amount) + Decimal(beta_final.total.amount)
    simulated = 2 * Decimal(beta_final.total.amount)
    assert [(m.currency, Decimal(m.amount)) for m in response.current_total] == [("USD", current)]
    assert [(m.currency, Decimal(m.amount)) for m in response.simulated_total] == [
        ("USD", simulated)
    ]
    assert [(m.currency, Decimal(m.amount)) for m in response.delta] == [
        ("USD", simulated - current)
    ]

    errors = Errors()
    backwards = audit_pb2.SimulatePricingRequest(
        rate_card_id=acme.rate_card_id,
        version=2,
        start=acme_draft.period_end,
        end=acme_draft.period_start,
    )
    assert errors.expect(INVALID, lambda: api.SimulatePricing(backwards)).fields == ["end"]
    open_ended = audit_pb2.SimulatePricingRequest(rate_card_id=acme.rate_card_id, version=2)
    assert sorted(errors.expect(INVALID, lambda: api.SimulatePricing(open_ended)).fields) == [
        "end",
        "start",
    ]
    unknown = audit_pb2.SimulatePricingRequest(
        rate_card_id=acme.rate_card_id,
        version=9,
        start=acme_draft.period_start,
        end=acme_draft.period_end,
    )
    errors.expect(NOT_FOUND, lambda: api.SimulatePricing(unknown))
    errors.assert_no_internals_leaked()
