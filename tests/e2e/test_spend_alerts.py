"""Spend alerts over real gRPC: each threshold crossing is recorded exactly once, however
many evaluators race for it, and only crossings are recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import psycopg
import pytest

from ledger.app.streams import customer_stream
from ledger.core.credits import Grant, GrantKind
from ledger.core.events import CreditDrawnDown, CreditGranted, DomainEvent
from ledger.store.event_store import PostgresEventStore
from ledger.store.records import NewEvent
from services.api.accrual.v1 import alerts_pb2, alerts_pb2_grpc, audit_pb2, audit_pb2_grpc
from services.bootstrap import open_pool, wire
from tests.e2e.conftest import RunningServer
from tests.e2e.conftest import test_settings as default_settings
from tests.e2e.helpers import ACCEPTED, Errors, World, head_seq, setup_world

SETTLE_S = 1.5  # several polls of every evaluator: long enough for a wrong second firing
WAIT_S = 20.0
CALLERS = 8


def alert_api(server: RunningServer) -> alerts_pb2_grpc.AlertServiceStub:
    return alerts_pb2_grpc.AlertServiceStub(server.channel)


def set_alert(
    server: RunningServer, customer_id: str, alert_id: str, kind: str, threshold: str, **extra: Any
) -> alerts_pb2.SpendAlert:
    request = alerts_pb2.SetSpendAlertRequest(
        customer_id=customer_id,
        alert_id=alert_id,
        kind=kind,
        threshold=threshold,
        currency="USD",
        **extra,
    )
    reply: alerts_pb2.SpendAlert = alert_api(server).SetSpendAlert(request)
    return reply


def crossings_listed(server: RunningServer, customer_id: str) -> dict[str, list[str]]:
    """Each alert's crossing keys, as ListSpendAlerts shows them."""
    reply = alert_api(server).ListSpendAlerts(
        alerts_pb2.ListSpendAlertsRequest(customer_id=customer_id)
    )
    return {a.alert_id: [c.crossing_key for c in a.crossings] for a in reply.alerts}


def triggered(server: RunningServer, alert_id: str) -> list[dict[str, Any]]:
    """Every SpendAlertTriggered of an alert in the ledger itself, in ledger order."""
    with psycopg.connect(server.database_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM events WHERE event_type = 'SpendAlertTriggered' ORDER BY seq"
        ).fetchall()
    payloads = [json.loads(bytes(row[0])) for row in rows]
    return [p for p in payloads if p["alert_id"] == alert_id]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def extra_evaluators(database_url: str, customer_id: str, count: int = 3) -> Iterator[None]:
    """Evaluators of other server processes on the same database: each runs its own
    ledger watch and evaluates the customer in a tight loop, racing every other."""
    stop = threading.Event()
    errors: list[BaseException] = []

    async def evaluate_until_stopped() -> None:
        async with open_pool(database_url, 4) as pool:
            await pool.wait(timeout=30)
            app = wire(default_settings(), pool)
            app.alerting.start()
            try:
                while not stop.is_set():
                    await app.alerts.evaluate(customer_id)
                    await asyncio.sleep(0.02)
            finally:
                await app.alerting.stop()

    def run() -> None:
        try:
            asyncio.run(evaluate_until_stopped())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors


def record_concurrently(world: World, tag: str, calls_per_caller: int, tokens: str) -> None:
    """``CALLERS`` threads each record ``calls_per_caller`` events of ``tokens`` tokens."""
    at = world.now - timedelta(minutes=1)

    def caller(index: int) -> None:
        for call in range(calls_per_caller):
            reply = world.record(world.event(f"{tag}-{index}-{call}", tokens, at))
            assert reply.results[0].status == ACCEPTED

    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(caller, range(CALLERS)))


def test_an_alert_fires_exactly_once_per_threshold_crossing_under_concurrent_usage(
    server: RunningServer,
) -> None:
    world = setup_world(server, name="spend")  # 0.0015 USD per token
    invoice_id = world.invoice_at(world.now).invoice_id
    set_alert(server, "spend", "over-10", "period_spend", "10.00")
    set_alert(server, "spend", "over-15", "period_spend", "15.00")
    with extra_evaluators(server.database_url, "spend"):
        record_concurrently(world, "a", calls_per_caller=10, tokens="100")  # 12.00
        wait_until(lambda: len(triggered(server, "over-10")) == 1, "the first crossing")
        time.sleep(SETTLE_S)
        [first] = triggered(server, "over-10")
        assert first["crossing_key"] == invoice_id
        assert Decimal("10.00") <= Decimal(first["value"]) <= Decimal("12.00")
        assert first["threshold"] == "10.00"
        assert triggered(server, "over-15") == []

        record_concurrently(world, "b", calls_per_caller=5, tokens="100")  # 18.00
        wait_until(lambda: len(triggered(server, "over-15")) == 1, "the second threshold")
        time.sleep(SETTLE_S)
    assert world.invoice_at(world.now).subtotal.amount == "18.00"
    assert triggered(server, "over-10") == [first], "more usage fired it again"
    [second] = triggered(server, "over-15")
    assert (second["crossing_key"], second["threshold"]) == (invoice_id, "15.00")
    assert Decimal("15.00") <= Decimal(second["value"]) <= Decimal("18.00")
    assert crossings_listed(server, "spend") == {"over-10": [invoice_id], "over-15": [invoice_id]}


def test_an_alert_set_past_its_threshold_fires_at_once_and_is_audited(
    server: RunningServer,
) -> None:
    world = setup_world(server, name="late")
    world.record(world.event("t-1", "5000", world.now - timedelta(minutes=1)))  # 7.50
    reply = set_alert(server, "late", "over-5", "period_spend", "5")
    [crossing] = reply.crossings
    assert (crossing.value, crossing.threshold) == ("7.50", "5")
    assert crossing.crossing_key == world.invoice_at(world.now).invoice_id
    assert reply.consistency_token < crossing.seq <= head_seq(server)
    entries = audit_pb2_grpc.AuditServiceStub(server.channel).ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(customer_id="late", consistency_token=crossing.seq)
    )
    kinds = {e.kind: e for e in entries.entries}
    assert kinds["SpendAlertSet"].subject == "over-5"
    assert kinds["SpendAlertTriggered"].actor == "accrual-alerts"
    assert "7.50 against threshold 5" in kinds["SpendAlertTriggered"].summary


# ---------------------------------------------------------------------------------------
# Remaining balance


def append(server: RunningServer, customer_id: str, *events: DomainEvent) -> None:
    """Balance events straight into the customer's stream, as grants and invoices do."""

    async def main() -> None:
        async with open_pool(server.database_url, 2) as pool:
            store = PostgresEventStore(pool, lambda: datetime.now(UTC))
            await store.append(
                [
                    NewEvent(
                        customer_stream(customer_id),
                        event,
                        occurred_at=datetime.now(UTC),
                        metadata={"actor": "test"},
                    )
                    for event in events
                ]
            )

    asyncio.run(main())


def credit(world: World, grant_id: str, amount: str) -> CreditGranted:
    return CreditGranted(
        Grant(
            grant_id=grant_id,
            customer_id=world.customer_id,
            kind=GrantKind.CREDIT,
            amount=Decimal(amount),
            currency="USD",
            starts_at=world.start,
            expires_at=None,
        )
    )


def drawdown(grant_id: str, amount: str) -> CreditDrawnDown:
    return CreditDrawnDown(grant_id, "in-x-1", Decimal(amount), datetime.now(UTC))


def test_a_balance_alert_fires_once_re_arms_on_a_grant_and_fires_again(
    server: RunningServer,
) -> None:
    world = setup_world(server, name="prepaid")
    append(server, "prepaid", credit(world, "g-1", "300.00"))
    reply = set_alert(server, "prepaid", "low", "remaining_balance", "100")
    assert list(reply.crossings) == []  # 300 left
    with extra_evaluators(server.database_url, "prepaid"):
        append(server, "prepaid", drawdown("g-1", "220.00"))  # 80 left
        wait_until(lambda: len(triggered(server, "low")) == 1, "the first crossing")
        append(server, "prepaid", drawdown("g-1", "30.00"))  # 50: still below, no crossing
        time.sleep(SETTLE_S)
        assert len(triggered(server, "low")) == 1
        append(server, "prepaid", credit(world, "g-2", "200.00"))  # 250: re-armed
        time.sleep(SETTLE_S)
        assert len(triggered(server, "low")) == 1
        append(server, "prepaid", drawdown("g-2", "200.00"))  # 50: the second crossing
        wait_until(lambda: len(triggered(server, "low")) == 2, "the second crossing")
        time.sleep(SETTLE_S)
    first, second = triggered(server, "low")
    assert (first["crossing_key"], first["value"]) == ("1", "80.00")
    assert (second["crossing_key"], second["value"]) == ("2", "50.00")
    assert crossings_listed(server, "prepaid") == {"low": ["1", "2"]}


# ---------------------------------------------------------------------------------------
# Refusals


def test_bad_alerts_are_refused_with_every_field_named_and_nothing_written(
    server: RunningServer,
) -> None:
    setup_world(server, name="picky")
    api, errors = alert_api(server), Errors()
    set_alert(server, "picky", "budget", "period_spend", "100")
    before = head_seq(server)

    def setting(**fields: str) -> Callable[[], object]:
        values = {"customer_id": "picky", "alert_id": "new", "kind": "period_spend"}
        values |= {"threshold": "1", "currency": "USD", **fields}
        return lambda: api.SetSpendAlert(alerts_pb2.SetSpendAlertRequest(**values))

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    everything = errors.expect(
        invalid, setting(alert_id="", kind="daily", threshold="-5", currency="US Dollar")
    )
    assert sorted(everything.fields) == ["alert_id", "currency", "kind", "threshold"]
    for fields, field in [
        ({"threshold": "NaN"}, "threshold"),
        ({"threshold": "1e6"}, "threshold"),
        ({"threshold": "0"}, "threshold"),  # a period spend of zero is always crossed
        ({"customer_id": "picky\x00"}, "customer_id"),
        ({"alert_id": "a/b"}, "alert_id"),
        ({"currency": ""}, "currency"),
    ]:
        assert errors.expect(invalid, setting(**fields)).fields == [field], fields
    errors.expect(grpc.StatusCode.NOT_FOUND, setting(customer_id="nobody"))
    duplicate = errors.expect(grpc.StatusCode.ALREADY_EXISTS, setting(alert_id="budget"))
    assert duplicate.reasons == ["SPEND_ALERT_EXISTS"]
    for customer_id, code in (("", invalid), ("nobody", grpc.StatusCode.NOT_FOUND)):
        request = alerts_pb2.ListSpendAlertsRequest(customer_id=customer_id)
        errors.expect(code, lambda request=request: api.ListSpendAlerts(request))
    assert head_seq(server) == before
    errors.assert_no_internals_leaked()


def test_a_retried_setting_answers_as_the_first_and_writes_once(server: RunningServer) -> None:
    setup_world(server, name="retry")
    first = set_alert(server, "retry", "cap", "remaining_balance", "0", request_id="r-1")
    again = set_alert(server, "retry", "cap", "remaining_balance", "0", request_id="r-1")
    assert again.consistency_token == first.consistency_token
    # No grants: nothing is left, which is at the threshold of zero.
    assert [c.crossing_key for c in again.crossings] == ["1"]
    with pytest.raises(grpc.RpcError) as raised:
        set_alert(server, "retry", "cap", "remaining_balance", "5", request_id="r-1")
    failed: Any = raised.value
    assert failed.code() == grpc.StatusCode.ALREADY_EXISTS  # same key, other request
    assert len(triggered(server, "cap")) == 1
