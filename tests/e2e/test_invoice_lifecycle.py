"""The invoice lifecycle over gRPC: finalize in order, void once, replace, late usage.

The server runs on a clock the test moves, so periods end when the test says.
Every refusal leaves the ledger as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest

from services.api.accrual.v1 import audit_pb2, audit_pb2_grpc, invoices_pb2
from tests.e2e.conftest import RunningServer, serving
from tests.e2e.helpers import (
    ACCEPTED,
    CallError,
    MovableClock,
    World,
    head_seq,
    setup_world,
    unpack,
)

START = datetime(2025, 1, 1, tzinfo=UTC)
JAN_10 = datetime(2025, 1, 10, tzinfo=UTC)
JAN_31 = datetime(2025, 1, 31, 12, tzinfo=UTC)  # late on 2 March, inside the 34-day window
FEB_10 = datetime(2025, 2, 10, tzinfo=UTC)


@dataclass
class Lifecycle:
    server: RunningServer
    world: World
    clock: MovableClock

    def finalize(self, invoice_id: str, request_id: str = "") -> invoices_pb2.Invoice:
        request = invoices_pb2.FinalizeInvoiceRequest(invoice_id=invoice_id, request_id=request_id)
        invoice: invoices_pb2.Invoice = self.world.api.invoices.FinalizeInvoice(request)
        assert invoice.consistency_token > invoice.computed_through_seq  # where it was written
        invoice.ClearField("consistency_token")  # the reply's alone: GetInvoice has none
        return invoice

    def void(self, invoice_id: str, request_id: str = "") -> invoices_pb2.VoidInvoiceResponse:
        request = invoices_pb2.VoidInvoiceRequest(invoice_id=invoice_id, request_id=request_id)
        response: invoices_pb2.VoidInvoiceResponse = self.world.api.invoices.VoidInvoice(request)
        return response

    def refused(self, code: grpc.StatusCode, call: Callable[[], object]) -> CallError:
        """The call fails with ``code`` and writes nothing."""
        before = head_seq(self.server)
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert head_seq(self.server) == before
        error = unpack(raised.value)
        assert error.code == code, error.message
        return error


@pytest.fixture
def life(database_url: str) -> Iterator[Lifecycle]:
    clock = MovableClock(datetime(2025, 1, 1, 1, tzinfo=UTC))
    for server in serving(database_url, clock=clock):
        world = setup_world(server, start=START)
        clock.set(datetime(2025, 1, 15, tzinfo=UTC))
        assert [r.status for r in world.record(world.event("jan", "1000", JAN_10)).results] == [
            ACCEPTED
        ]
        clock.set(datetime(2025, 2, 15, tzinfo=UTC))
        assert [r.status for r in world.record(world.event("feb", "2000", FEB_10)).results] == [
            ACCEPTED
        ]
        clock.set(datetime(2025, 3, 2, tzinfo=UTC))
        yield Lifecycle(server, world, clock)


def ids(life: Lifecycle, number: int, revision: int = 0) -> str:
    base = f"in-{life.world.contract_id}-{number}"
    return f"{base}-r{revision}" if revision else base


def test_periods_are_finalized_in_order(life: Lifecycle) -> None:
    skipped = life.refused(grpc.StatusCode.FAILED_PRECONDITION, lambda: life.finalize(ids(life, 2)))
    assert skipped.reasons == ["EARLIER_PERIOD_NOT_FINALIZED"]
    assert life.finalize(ids(life, 1)).status == "FINALIZED"
    assert life.finalize(ids(life, 2)).status == "FINALIZED"


def test_only_a_finalized_invoice_is_voided_and_only_once(life: Lifecycle) -> None:
    draft = life.refused(grpc.StatusCode.FAILED_PRECONDITION, lambda: life.void(ids(life, 1)))
    assert draft.reasons == ["INVOICE_NOT_FINALIZED"]
    life.finalize(ids(life, 1))
    life.finalize(ids(life, 2))
    earlier = life.refused(grpc.StatusCode.FAILED_PRECONDITION, lambda: life.void(ids(life, 1)))
    assert earlier.reasons == ["INVOICE_NOT_LATEST_FINALIZED"]

    voided = life.void(ids(life, 2), request_id="void-2")
    assert voided.voided.status == "VOIDED"
    assert voided.replacement_invoice_id == ids(life, 2, 1)
    assert life.void(ids(life, 2), request_id="void-2") == voided  # a retry, answered the same
    again = life.refused(grpc.StatusCode.FAILED_PRECONDITION, lambda: life.void(ids(life, 2)))
    assert again.reasons == ["INVOICE_ALREADY_VOIDED"]
    final = life.refused(grpc.StatusCode.FAILED_PRECONDITION, lambda: life.finalize(ids(life, 2)))
    assert final.reasons == ["INVOICE_VOIDED"]


def test_a_replacement_bills_the_period_again_and_both_verify(life: Lifecycle) -> None:
    invoices = life.world.api.invoices
    life.finalize(ids(life, 1))
    original = life.finalize(ids(life, 2))
    life.void(ids(life, 2))

    shown = invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=ids(life, 2)))
    assert shown.status == "VOIDED"
    assert shown.content_sha256 == original.content_sha256  # voiding changes no content
    by_time = invoices.GetInvoice(
        invoices_pb2.GetInvoiceRequest(customer_id=life.world.customer_id, at=original.period_start)
    )
    assert by_time.invoice_id == ids(life, 2, 1)
    assert by_time.status == "DRAFT"
    assert by_time.replaces_invoice_id == ids(life, 2)
    assert by_time.total == original.total
    life.refused(
        grpc.StatusCode.NOT_FOUND,
        lambda: invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=ids(life, 2, 2))),
    )

    # Usage for the reopened period is billed on the replacement itself.
    late = life.world.event("feb-late", "500", FEB_10)
    assert [r.status for r in life.world.record(late).results] == [ACCEPTED]
    replacement = life.finalize(ids(life, 2, 1))
    assert [line.quantity for line in replacement.lines] == ["2500"]
    audit = audit_pb2_grpc.AuditServiceStub(life.server.channel)
    for ref in (ids(life, 2), ids(life, 2, 1)):
        assert audit.VerifyInvoice(audit_pb2.VerifyInvoiceRequest(invoice_id=ref)).matches


def test_late_usage_lands_on_the_next_open_invoice_only(life: Lifecycle) -> None:
    invoices = life.world.api.invoices
    january = life.finalize(ids(life, 1))
    late = life.world.event("jan-late", "300", JAN_31)
    assert [r.status for r in life.world.record(late).results] == [ACCEPTED]

    feb = invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=ids(life, 2)))
    adjustments = [line for line in feb.lines if line.kind == "adjustment"]
    assert [(a.quantity, a.amount.amount, a.adjusts_invoice_id) for a in adjustments] == [
        ("300", "0.45", ids(life, 1))  # 300 tokens × 0.0015
    ]
    march = invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=ids(life, 3)))
    assert all(line.kind == "usage" for line in march.lines)  # not billed twice
    again = invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=ids(life, 1)))
    assert again == january


def test_void_requests_are_checked(life: Lifecycle) -> None:
    missing = life.refused(grpc.StatusCode.INVALID_ARGUMENT, lambda: life.void(""))
    assert missing.fields == ["invoice_id"]
    life.refused(grpc.StatusCode.NOT_FOUND, lambda: life.void("in-nobody-1"))
    life.refused(grpc.StatusCode.NOT_FOUND, lambda: life.void("not an invoice"))
