"""Who may do what, over real gRPC: authentication, the role matrix, customer scopes,
rate limits and four eyes on every price."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from services.api.accrual.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    catalog_pb2,
    contracts_pb2,
    invoices_pb2,
    usage_pb2,
)
from services.auth.policy import PERMISSIONS
from services.auth.principals import ROLES
from services.server import SERVICE_NAMES
from tests.e2e.conftest import RunningServer, bearer, issue, serving
from tests.e2e.conftest import test_settings as default_settings
from tests.e2e.helpers import ACCEPTED, head_seq, setup_world, ts

DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
STREAMING = {"ReplayCustomer", "VerifyLedger"}


def every_method() -> list[str]:
    """Every RPC the server offers, from the protos themselves."""
    pool = descriptor_pool.Default()
    return sorted(
        f"/{service}/{method.name}"
        for service in SERVICE_NAMES
        for method in pool.FindServiceByName(service).methods
    )


def call(channel: grpc.Channel, method: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """Call ``method`` with its empty request; the status code it ends with."""
    service, name = method.rsplit("/", 1)
    descriptor = descriptor_pool.Default().FindServiceByName(service.strip("/"))
    request_type = descriptor.methods_by_name[name].input_type
    request = message_factory.GetMessageClass(request_type)()
    raw = request.SerializeToString()
    try:
        if name in STREAMING:
            list(channel.unary_stream(method)(raw, metadata=metadata, timeout=10))
        else:
            channel.unary_unary(method)(raw, metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        failed: Any = error
        code: grpc.StatusCode = failed.code()
        return code
    return grpc.StatusCode.OK


def test_every_rpc_has_an_access_decision() -> None:
    """A new RPC cannot ship without a row in the policy table (the server also refuses
    to start without one)."""
    assert sorted(PERMISSIONS) == every_method()
    assert all(roles <= ROLES for roles in PERMISSIONS.values())


@pytest.fixture
def role_tokens(server: RunningServer) -> dict[str, str]:
    return {role: issue(server.database_url, f"only-{role}", role) for role in sorted(ROLES)}


def test_authorization_matrix_every_rpc_for_every_role(
    server: RunningServer, role_tokens: dict[str, str]
) -> None:
    """Each role is let through exactly where the table says; elsewhere PERMISSION_DENIED.

    Calls carry empty requests, so an allowed call ends in a validation or lookup
    error (or OK), never in a write.
    """
    with grpc.insecure_channel(server.address) as channel:
        outcomes = {
            (method, role): call(channel, method, bearer(token))
            for method in every_method()
            for role, token in role_tokens.items()
        }
    for (method, role), code in outcomes.items():
        allowed = role == "admin" or role in PERMISSIONS[method]
        if allowed:
            assert code not in (DENIED, UNAUTHENTICATED), (method, role, code)
        else:
            assert code == DENIED, (method, role, code)


def test_calls_without_a_valid_credential_are_unauthenticated(server: RunningServer) -> None:
    revoked_shape = "acr_000000000000_" + "x" * 43
    credentials: list[list[tuple[str, str]]] = [
        [],
        bearer("not-a-token"),
        bearer(revoked_shape),
        [("authorization", f"Basic {server.admin_token}")],
        bearer(server.admin_token[:-1] + ("A" if server.admin_token[-1] != "A" else "B")),
    ]
    with grpc.insecure_channel(server.address) as channel:
        for metadata in credentials:
            for method in every_method():
                assert call(channel, method, metadata) == UNAUTHENTICATED, (method, metadata)
        # Probes and tools need no credential.
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert reflected_services(channel) == {
            *SERVICE_NAMES,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }


def test_no_method_is_registered_by_name(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC's aio server waits for each call on one pending request per method
    registered by name, so the server registers every service, health checking
    and reflection too, as a generic handler only."""
    by_name: list[str] = []

    def record(_: object, service: str, handlers: object) -> None:
        by_name.append(service)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", record)
    running = serving(database_url)
    server = next(running)
    try:
        health = health_pb2_grpc.HealthStub(server.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        next(running, None)  # stops the server
    assert by_name == []


def reflected_services(channel: grpc.Channel) -> set[str]:
    """The services the server lists over gRPC reflection, as grpcurl asks."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = stub.ServerReflectionInfo(iter([ask]), timeout=5)
    return {service.name for service in reply.list_services_response.service}


def test_a_denial_is_audited_with_its_principal_and_method(server: RunningServer) -> None:
    reader = bearer(issue(server.database_url, "nosy-reader", "reader"))
    with grpc.insecure_channel(server.address) as channel:
        assert call(channel, "/accrual.v1.InvoiceService/FinalizeInvoice", reader) == DENIED
    entries = audit_pb2_grpc.AuditServiceStub(server.channel).ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(kind="AccessDenied", consistency_token=head_seq(server))
    )
    assert [(e.actor, e.subject) for e in entries.entries] == [
        ("nosy-reader", "/accrual.v1.InvoiceService/FinalizeInvoice")
    ]
    assert "role does not allow" in entries.entries[0].summary


def test_an_ingest_token_for_some_customers_cannot_record_for_others(
    server: RunningServer,
) -> None:
    world = setup_world(server, name="scoped")
    other = setup_world(server, name="other")
    gateway = bearer(issue(server.database_url, "eu-gateway", "ingest", customers=["scoped"]))
    at = world.now - timedelta(days=1)

    own = world.api.usage.RecordUsage(
        usage_pb2.RecordUsageRequest(events=[world.event("s-1", "10", at)]), metadata=gateway
    )
    assert own.results[0].status == ACCEPTED

    before = head_seq(server)
    mixed = usage_pb2.RecordUsageRequest(
        events=[world.event("s-2", "10", at), other.event("o-1", "10", at)]
    )
    with pytest.raises(grpc.RpcError) as raised:
        world.api.usage.RecordUsage(mixed, metadata=gateway)
    failed: Any = raised.value
    assert failed.code() == DENIED
    assert "'other'" in failed.details()
    # Nothing of the batch was written; the refusal itself is the only new entry.
    assert head_seq(server) == before + 1
    invoice = other.api.invoices.GetInvoice(
        invoices_pb2.GetInvoiceRequest(customer_id="other", at=ts(at))
    )
    assert invoice.total.amount == "0.00"
    # Reads are outside an ingest token's role, even for its own customer.
    with pytest.raises(grpc.RpcError) as read:
        world.api.invoices.GetInvoice(
            invoices_pb2.GetInvoiceRequest(customer_id="scoped", at=ts(at)), metadata=gateway
        )
    read_failure: Any = read.value
    assert read_failure.code() == DENIED


@pytest.fixture
def limited_server(database_url: str) -> Iterator[RunningServer]:
    settings = dataclasses.replace(default_settings(), rate_limit_per_s=1, rate_limit_burst=3)
    yield from serving(database_url, settings=settings)


def test_a_principal_over_its_rate_limit_is_told_when_to_retry(
    limited_server: RunningServer,
) -> None:
    first = bearer(issue(limited_server.database_url, "busy", "reader"))
    second = bearer(issue(limited_server.database_url, "calm", "reader"))
    with grpc.insecure_channel(limited_server.address) as channel:
        get_card = "/accrual.v1.CatalogService/GetRateCard"
        codes = [call(channel, get_card, first) for _ in range(4)]
        limited = grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limited not in codes[:3], codes  # within the burst
        assert codes[3] == limited
        # Another principal has its own allowance.
        assert call(channel, get_card, second) == codes[0]
        try:
            channel.unary_unary(get_card)(b"", metadata=first, timeout=5)
            raise AssertionError("the fifth call must be limited too")
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 1


# ---------------------------------------------------------------------------------------
# Four eyes


def draft_request(world: Any, unit_price: str, **fields: Any) -> catalog_pb2.DraftRateCardRequest:
    return catalog_pb2.DraftRateCardRequest(
        rate_card_id=world.rate_card_id,
        name="List prices",
        currency="USD",
        effective_from=ts(world.start),
        rates=[
            catalog_pb2.Rate(product_id=world.product_id, model="per_unit", unit_price=unit_price)
        ],
        reason="price change",
        **fields,
    )


def test_a_price_needs_a_second_person_and_prices_nothing_until_published(
    server: RunningServer,
) -> None:
    world = setup_world(server, unit_price="0.0015")
    at = world.first_period_instant
    world.record(world.event("t-1", "1000", at))
    assert world.invoice_at(at).total.amount == "1.50"

    author = bearer(issue(server.database_url, "pat", "pricing-author"))
    approver = bearer(issue(server.database_url, "quinn", "pricing-approver"))
    catalog = world.api.catalog
    draft = catalog.DraftRateCard(draft_request(world, "0.003"), metadata=author)
    assert (draft.status, draft.drafted_by, draft.rate_card.version) == ("drafted", "pat", 0)
    ref = {"rate_card_id": world.rate_card_id, "draft": draft.draft}

    def refused(rpc: Any, request: Any, metadata: list[tuple[str, str]]) -> Any:
        with pytest.raises(grpc.RpcError) as raised:
            rpc(request, metadata=metadata)
        failure: Any = raised.value
        return failure

    # The author cannot approve, even holding the approver role as well.
    both = bearer(issue(server.database_url, "pat", "pricing-author", "pricing-approver"))
    approve = catalog_pb2.ApproveRateCardDraftRequest(**ref, reason="looks right")
    self_approval = refused(catalog.ApproveRateCardDraft, approve, both)
    assert self_approval.code() == PRECONDITION
    assert "cannot also approve" in self_approval.details()
    publish = catalog_pb2.PublishRateCardDraftRequest(**ref, reason="go")
    assert refused(catalog.PublishRateCardDraft, publish, author).code() == PRECONDITION
    assert world.invoice_at(at).total.amount == "1.50", "a draft prices nothing"

    approved = catalog.ApproveRateCardDraft(approve, metadata=approver)
    assert (approved.status, approved.approved_by) == ("approved", "quinn")
    assert refused(catalog.ApproveRateCardDraft, approve, approver).code() == PRECONDITION
    assert world.invoice_at(at).total.amount == "1.50", "an approval alone prices nothing"

    card = catalog.PublishRateCardDraft(publish, metadata=author)
    assert card.version == 2
    assert world.invoice_at(at).total.amount == "3.00"
    assert refused(catalog.PublishRateCardDraft, publish, author).code() == PRECONDITION
    shown = catalog.GetRateCardDraft(catalog_pb2.GetRateCardDraftRequest(**ref))
    assert (shown.status, shown.published_version) == ("published", 2)

    # A rollback is the same flow: a draft copying version 1.
    rollback = catalog.DraftRateCard(
        catalog_pb2.DraftRateCardRequest(
            rate_card_id=world.rate_card_id,
            copy_of_version=1,
            effective_from=ts(world.start),
            reason="roll back",
        ),
        metadata=author,
    )
    assert rollback.copy_of_version == 1
    assert rollback.rate_card.rates[0].unit_price == "0.0015"
    back = {"rate_card_id": world.rate_card_id, "draft": rollback.draft}
    catalog.ApproveRateCardDraft(
        catalog_pb2.ApproveRateCardDraftRequest(**back, reason="ok"), metadata=approver
    )
    restored = catalog.PublishRateCardDraft(
        catalog_pb2.PublishRateCardDraftRequest(**back, reason="roll back"), metadata=approver
    )
    assert restored.version == 3
    assert world.invoice_at(at).total.amount == "1.50"

    # Every step is in the audit trail with its actor and reason.
    trail = audit_pb2_grpc.AuditServiceStub(server.channel).ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(consistency_token=head_seq(server))
    )
    steps = [
        (e.kind, e.actor, e.reason)
        for e in trail.entries
        if e.subject in (f"{world.rate_card_id} draft {draft.draft}", f"{world.rate_card_id} v2")
    ]
    assert steps == [
        ("RateCardDrafted", "pat", "price change"),
        ("RateCardDraftApproved", "quinn", "looks right"),
        ("RateCardPublished", "pat", "go"),
    ]


def test_tokens_never_reach_the_logs_or_errors(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    good = issue(server.database_url, "logged", "reader")
    wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    with grpc.insecure_channel(server.address) as channel:
        codes = [
            call(channel, "/accrual.v1.InvoiceService/GetInvoice", bearer(token))
            for token in (good, wrong_secret, good)
        ]
        # Denied (and logged, and audited) with the good token, too.
        denied = call(channel, "/accrual.v1.InvoiceService/FinalizeInvoice", bearer(good))
    assert codes[1] == UNAUTHENTICATED and UNAUTHENTICATED not in (codes[0], codes[2])
    assert denied == DENIED
    logged = capsys.readouterr()
    # acr_<id>_<secret>: the secret is base64url, so it may itself hold "_".
    secret = good.split("_", 2)[2]
    lines = [json.loads(line) for line in logged.err.splitlines() if line.startswith("{")]
    assert any(line.get("principal") == "logged" for line in lines), "the calls were logged"
    for text in (logged.out, logged.err):
        assert secret not in text
        assert wrong_secret.split("_", 2)[2] not in text


def test_a_scoped_principal_reaches_only_its_customers_however_a_request_names_them(
    server: RunningServer,
) -> None:
    mine = setup_world(server, name="mine")
    victim = setup_world(server, name="victim")
    victims_invoice = victim.invoice_at(victim.first_period_instant).invoice_id
    reader = bearer(issue(server.database_url, "mine-reader", "reader", customers=["mine"]))
    own = mine.api.invoices.GetInvoice(
        invoices_pb2.GetInvoiceRequest(customer_id="mine", at=ts(mine.first_period_instant)),
        metadata=reader,
    )
    assert own.customer_id == "mine"
    # An invoice id names no customer in the request: refused, not looked up, even
    # when a customer_id inside the scope rides along.
    for request in (
        invoices_pb2.GetInvoiceRequest(invoice_id=victims_invoice, customer_id="mine"),
        invoices_pb2.GetInvoiceRequest(invoice_id=own.invoice_id),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            mine.api.invoices.GetInvoice(request, metadata=reader)
        failed: Any = raised.value
        assert failed.code() == DENIED, request

    # Creating customers and contracts names the customer inside the message.
    operator = bearer(issue(server.database_url, "mine-ops", "billing-operator", customers=["m2"]))
    contracts = mine.api.contracts
    created = contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="m2", name="M2")
        ),
        metadata=operator,
    )
    assert created.customer_id == "m2"
    with pytest.raises(grpc.RpcError) as outside:
        contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(
                customer=contracts_pb2.Customer(customer_id="x", name="X")
            ),
            metadata=operator,
        )
    refused: Any = outside.value
    assert refused.code() == DENIED
    assert "'x'" in refused.details()


def test_a_scoped_principal_sets_and_reads_alerts_only_for_its_customers(
    server: RunningServer,
) -> None:
    setup_world(server, name="mine")
    setup_world(server, name="victim")
    alerts = alerts_pb2_grpc.AlertServiceStub(server.channel)
    operator = bearer(
        issue(server.database_url, "mine-ops", "billing-operator", customers=["mine"])
    )
    reader = bearer(issue(server.database_url, "mine-reader", "reader", customers=["mine"]))

    def setting(customer_id: str) -> alerts_pb2.SetSpendAlertRequest:
        return alerts_pb2.SetSpendAlertRequest(
            customer_id=customer_id,
            alert_id="budget",
            kind="period_spend",
            threshold="100",
            currency="USD",
        )

    assert alerts.SetSpendAlert(setting("mine"), metadata=operator).customer_id == "mine"
    listed = alerts.ListSpendAlerts(
        alerts_pb2.ListSpendAlertsRequest(customer_id="mine"), metadata=reader
    )
    assert [a.alert_id for a in listed.alerts] == ["budget"]
    for rpc, request, metadata in (
        (alerts.SetSpendAlert, setting("victim"), operator),
        (alerts.SetSpendAlert, setting("mine"), reader),  # a reader never writes
        (alerts.ListSpendAlerts, alerts_pb2.ListSpendAlertsRequest(customer_id="victim"), reader),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            rpc(request, metadata=metadata)
        failed: Any = raised.value
        assert failed.code() == DENIED, request
