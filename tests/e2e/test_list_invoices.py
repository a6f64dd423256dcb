"""ListInvoices: every begun period of a customer, newest first, a page at a time."""

from __future__ import annotations

import grpc

from services.api.accrual.v1 import invoices_pb2
from tests.e2e.conftest import RunningServer, bearer, issue
from tests.e2e.helpers import Errors, World, setup_world

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def listing(world: World, **fields: object) -> invoices_pb2.ListInvoicesResponse:
    request = invoices_pb2.ListInvoicesRequest(**fields)
    response: invoices_pb2.ListInvoicesResponse = world.api.invoices.ListInvoices(request)
    return response


def test_lists_finalized_and_draft_invoices_newest_first_in_pages(server: RunningServer) -> None:
    world = setup_world(server, name="lister")
    first = world.first_period_instant
    world.record(world.event("t-1", "1000", first), world.event("t-2", "500", world.now))
    finalized = world.api.invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=world.invoice_at(first).invoice_id)
    )
    current = world.invoice_at(world.now)

    everything = listing(world, customer_id=world.customer_id, page_size=100)
    assert everything.next_page_token == ""
    invoices = list(everything.invoices)
    # The contract began ~40 days ago: its first period and every later one up to now.
    assert invoices[0].invoice_id == current.invoice_id
    assert (invoices[0].status, invoices[0].total.amount) == ("DRAFT", current.total.amount)
    assert invoices[-1].invoice_id == finalized.invoice_id
    assert invoices[-1].status == "FINALIZED"
    assert invoices[-1].content_sha256 == finalized.content_sha256
    assert invoices[-1].total.amount == "1.50"
    starts = [i.period_start.ToDatetime() for i in invoices]
    assert starts == sorted(starts, reverse=True)
    assert all(i.period_start.ToDatetime() <= world.now.replace(tzinfo=None) for i in invoices)

    walked, token = [], ""
    while True:
        page = listing(world, customer_id=world.customer_id, page_size=1, page_token=token)
        assert len(page.invoices) == 1
        walked += [i.invoice_id for i in page.invoices]
        token = page.next_page_token
        if not token:
            break
    assert walked == [i.invoice_id for i in invoices]


def test_bad_list_requests_are_refused_clearly(server: RunningServer) -> None:
    world = setup_world(server, name="lister")
    errors = Errors()
    missing = errors.expect(INVALID, lambda: listing(world, customer_id=""))
    assert missing.fields == ["customer_id"]
    bad_token = errors.expect(
        INVALID, lambda: listing(world, customer_id=world.customer_id, page_token="x")
    )
    assert bad_token.fields == ["page_token"]
    errors.expect(INVALID, lambda: listing(world, customer_id=world.customer_id, page_size=-1))
    errors.expect(grpc.StatusCode.NOT_FOUND, lambda: listing(world, customer_id="nobody"))
    errors.assert_no_internals_leaked()

    # A reader scoped to another customer may not list this one's invoices.
    scoped = bearer(issue(server.database_url, "other-reader", "reader", customers=["other"]))
    request = invoices_pb2.ListInvoicesRequest(customer_id=world.customer_id)
    denied = errors.expect(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: world.api.invoices.ListInvoices(request, metadata=scoped),
    )
    assert "'lister'" in denied.message
