"""RecordUsage over real gRPC: idempotency, per-event rejection, batch limits, invoices."""

from __future__ import annotations

from datetime import timedelta

import grpc

from services.api.accrual.v1 import invoices_pb2, usage_pb2
from tests.e2e.conftest import RunningServer
from tests.e2e.helpers import (
    ACCEPTED,
    DUPLICATE,
    REJECTED,
    Errors,
    head_seq,
    setup_world,
)


def test_retried_batch_is_duplicate_and_changes_nothing(server: RunningServer) -> None:
    world = setup_world(server)
    events = [
        world.event("tx-1", "1234", world.now - timedelta(days=30)),
        world.event("tx-2", "2345", world.now - timedelta(days=25)),
        world.event("tx-3", "3456", world.now - timedelta(days=20)),
    ]
    head_before = head_seq(server)
    first = world.record(*events)
    assert [r.status for r in first.results] == [ACCEPTED] * 3
    assert [r.seq for r in first.results] == [head_before + 1, head_before + 2, head_before + 3]
    assert [r.transaction_id for r in first.results] == ["tx-1", "tx-2", "tx-3"]
    assert first.consistency_token == head_before + 3
    head_after_first = head_seq(server)
    assert head_after_first == head_before + 3
    draft = world.invoice_at(world.first_period_instant)
    assert draft.status == "DRAFT"
    assert draft.total.amount == "10.55"  # 7035 × 0.0015 = 10.5525 → 10.55
    assert draft.total.currency == "USD"
    assert [(line.quantity, line.amount.amount) for line in draft.lines] == [("7035", "10.55")]

    retry = world.record(*events)

    assert [r.status for r in retry.results] == [DUPLICATE] * 3
    assert [r.seq for r in retry.results] == [r.seq for r in first.results]
    assert [r.transaction_id for r in retry.results] == ["tx-1", "tx-2", "tx-3"]
    assert [r.reason for r in retry.results] == ["", "", ""]
    assert head_seq(server) == head_after_first
    again = world.invoice_at(world.first_period_instant)
    assert again.invoice_id == draft.invoice_id
    assert again.total.amount == "10.55"
    assert again.content_sha256 == draft.content_sha256
    assert again.computed_through_seq == draft.computed_through_seq == head_after_first


def test_mixed_batch_accepts_valid_and_rejects_each_invalid_event_in_order(
    server: RunningServer,
) -> None:
    world = setup_world(server)
    now = world.now
    big = "100000"  # every invalid event carries a quantity that would show on the bill
    shape = world.event("bad-shape", big, now - timedelta(days=20), event_type="bad type!")
    shape.properties["my key"] = "1"
    events = [
        world.event("ok-1", "100", now - timedelta(days=30)),
        world.event("bad-customer", big, now - timedelta(days=20), customer_id="ghost"),
        world.event("", big, now - timedelta(days=20)),
        world.event("ok-2", "200", now - timedelta(days=20)),
        world.event("bad-quantity", "12abc", now - timedelta(days=20)),
        world.event("bad-future", big, now + timedelta(days=1)),
        world.event("bad-old", big, now - timedelta(days=35)),
        world.event("bad-no-timestamp", big, None),
        shape,
        world.event("ok-3", "300", now - timedelta(days=15)),
    ]
    head_before = head_seq(server)

    response = world.record(*events)

    results = response.results
    assert [r.transaction_id for r in results] == [e.transaction_id for e in events]
    statuses = [usage_pb2.UsageEventResult.Status.Name(r.status) for r in results]
    assert statuses == [
        "ACCEPTED",
        "REJECTED",
        "REJECTED",
        "ACCEPTED",
        "REJECTED",
        "REJECTED",
        "REJECTED",
        "REJECTED",
        "REJECTED",
        "ACCEPTED",
    ]
    reasons = {e.transaction_id: r.reason for e, r in zip(events, results, strict=True)}
    assert "ghost" in reasons["bad-customer"]
    assert "not a known customer" in reasons["bad-customer"]
    assert "transaction_id is required" in reasons[""]
    assert "'tokens' must be a decimal number" in reasons["bad-quantity"]
    assert "in the future" in reasons["bad-future"]
    assert "older than the 34-day late window" in reasons["bad-old"]
    assert "timestamp is required" in reasons["bad-no-timestamp"]
    assert "event_type must be an identifier" in reasons["bad-shape"]
    assert "properties['my key'] must be an identifier" in reasons["bad-shape"]
    for result in results:
        if result.status == REJECTED:
            assert result.seq == 0
        else:
            assert result.reason == ""
    accepted = [r.seq for r in results if r.status == ACCEPTED]
    assert accepted == [head_before + 1, head_before + 2, head_before + 3]
    assert response.consistency_token == head_before + 3
    assert head_seq(server) == head_before + 3

    first = world.invoice_at(world.first_period_instant)
    assert [(line.quantity, line.amount.amount) for line in first.lines] == [("600", "0.90")]
    assert first.total.amount == "0.90"  # 600 × 0.0015
    assert list(first.unbilled) == []
    current = world.invoice_at(now)
    assert current.invoice_id != first.invoice_id
    assert current.total.amount == "0.00"
    assert [(line.quantity, line.amount.amount) for line in current.lines] == [("0", "0.00")]


def test_transaction_id_reused_for_another_event_is_rejected(server: RunningServer) -> None:
    world = setup_world(server)
    at = world.now - timedelta(days=20)
    original = world.record(world.event("tx-1", "1000", at)).results[0]
    assert original.status == ACCEPTED
    before = world.invoice_at(at)
    assert before.total.amount == "1.50"
    head_before = head_seq(server)

    reused = world.record(world.event("tx-1", "2000", at)).results[0]

    assert reused.status == REJECTED
    assert reused.transaction_id == "tx-1"
    assert "already used" in reused.reason
    assert head_seq(server) == head_before
    after = world.invoice_at(at)
    assert after.total.amount == "1.50"
    assert after.content_sha256 == before.content_sha256
    assert after.computed_through_seq == before.computed_through_seq


def test_oversized_batch_is_refused_whole(server: RunningServer) -> None:
    world = setup_world(server)
    at = world.now - timedelta(days=20)
    events = [world.event(f"tx-{i}", "1", at) for i in range(1_001)]
    head_before = head_seq(server)
    errors = Errors()

    failure = errors.expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: world.record(*events))

    assert failure.fields == ["events"]
    assert failure.reasons == ["BATCH_TOO_LARGE"]
    assert "1000" in failure.message or "1,000" in failure.message
    assert head_seq(server) == head_before
    assert world.invoice_at(at).total.amount == "0.00"
    errors.assert_no_internals_leaked()


def test_batch_of_1000_events_is_accepted(server: RunningServer) -> None:
    world = setup_world(server)
    at = world.now - timedelta(days=20)
    events = [world.event(f"tx-{i}", "1", at + timedelta(seconds=i)) for i in range(1_000)]
    head_before = head_seq(server)

    response = world.record(*events)

    assert [r.status for r in response.results] == [ACCEPTED] * 1_000
    assert [r.seq for r in response.results] == list(range(head_before + 1, head_before + 1_001))
    assert [r.transaction_id for r in response.results] == [f"tx-{i}" for i in range(1_000)]
    assert head_seq(server) == head_before + 1_000
    invoice = world.invoice_at(at)
    assert [(line.quantity, line.amount.amount) for line in invoice.lines] == [("1000", "1.50")]
    assert invoice.total.amount == "1.50"


def test_duplicate_transaction_ids_in_one_batch(server: RunningServer) -> None:
    world = setup_world(server)
    at = world.now - timedelta(days=20)
    head_before = head_seq(server)

    response = world.record(
        world.event("tx-1", "10", at),
        world.event("tx-1", "10", at),
        world.event("tx-2", "5", at),
    )

    first, copy, other = response.results
    assert (first.status, first.seq) == (ACCEPTED, head_before + 1)
    assert (copy.status, copy.seq, copy.transaction_id) == (DUPLICATE, head_before + 1, "tx-1")
    assert (other.status, other.seq) == (ACCEPTED, head_before + 2)
    assert head_seq(server) == head_before + 2
    invoice = world.invoice_at(at)
    assert [(line.quantity, line.amount.amount) for line in invoice.lines] == [("15", "0.02")]
    assert invoice.total.amount == "0.02"  # 15 × 0.0015 = 0.0225 → 0.02


def test_missing_sum_property_is_accepted_and_reported_unbilled(server: RunningServer) -> None:
    world = setup_world(server)
    at = world.now - timedelta(days=20)
    head_before = head_seq(server)

    response = world.record(
        world.event("no-tokens-1", None, at),
        world.event("no-tokens-2", None, at, properties={"model": "large"}),
        world.event("with-tokens", "2000", at),
    )

    assert [r.status for r in response.results] == [ACCEPTED] * 3
    assert head_seq(server) == head_before + 3
    invoice = world.invoice_at(at)
    assert invoice.total.amount == "3.00"  # 2000 × 0.0015
    assert [(line.quantity, line.amount.amount) for line in invoice.lines] == [("2000", "3.00")]
    assert len(invoice.unbilled) == 1
    unbilled = invoice.unbilled[0]
    assert unbilled.metric_id == world.metric_id
    assert unbilled.event_count == 2
    assert "tokens" in unbilled.reason
    assert "missing" in unbilled.reason


def test_usage_after_finalization_leaves_the_finalized_invoice_unchanged(
    server: RunningServer,
) -> None:
    world = setup_world(server)
    at = world.first_period_instant
    assert world.record(world.event("tx-1", "1000", at)).results[0].status == ACCEPTED
    draft = world.invoice_at(at)
    final: invoices_pb2.Invoice = world.api.invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=draft.invoice_id)
    )
    assert final.status == "FINALIZED"
    assert final.invoice_id == draft.invoice_id
    assert final.total.amount == "1.50"
    head_after_finalize = head_seq(server)

    late = world.record(
        world.event("tx-late-1", "5000", at + timedelta(days=5)),
        world.event("tx-late-2", "7000", at - timedelta(days=5)),
    )

    assert [r.status for r in late.results] == [ACCEPTED, ACCEPTED]
    assert head_seq(server) == head_after_finalize + 2
    for again in (world.invoice(final.invoice_id), world.invoice_at(at)):
        assert again.invoice_id == final.invoice_id
        assert again.status == "FINALIZED"
        assert again.total.amount == "1.50"
        assert again.content_sha256 == final.content_sha256
        assert again.computed_through_seq == final.computed_through_seq
        assert [(line.quantity, line.amount.amount) for line in again.lines] == [("1000", "1.50")]
