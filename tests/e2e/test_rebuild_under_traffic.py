"""A projection rebuilt and swapped while RecordUsage and GetInvoice traffic continues."""

from __future__ import annotations

import contextlib
import io
import threading
from datetime import timedelta

import grpc
import psycopg
import pytest

from projections import engine
from services import cli
from services.api.accrual.v1 import invoices_pb2
from tests.e2e.conftest import RunningServer
from tests.e2e.helpers import setup_world


def live_version(database_url: str, name: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT version FROM projection_registry WHERE name = %s AND state = 'live'", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_rebuild_and_swap_under_traffic_fail_no_call(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rebuilding = threading.Event()
    flowed = threading.Event()  # a traffic call completed while the rebuild ran
    waited = threading.Event()

    def batch_events(*_: object) -> int:
        # Batches of 500 after the first rather than of 50,000, so that traffic runs
        # between them; and the rebuild waits for a traffic call to complete while
        # it runs, however fast this machine rebuilds or slow the first drafts are.
        if not waited.is_set():  # once: traffic that never flows fails the test below
            waited.set()
            flowed.wait(timeout=60)
        return 500

    monkeypatch.setattr(engine, "rebuild_batch_events", batch_events)
    world = setup_world(server)
    at = world.first_period_instant
    history = 20_000  # enough history that the rebuild takes a while
    for batch in range(history // 1_000):
        events = [
            world.event(f"history-{batch}-{i}", "1", world.now - timedelta(days=26))
            for i in range(1_000)
        ]
        assert all(r.status == 1 for r in world.record(*events).results)
    failures: list[grpc.RpcError] = []
    calls = {"record": 0, "read": 0}
    counting = threading.Lock()
    stop = threading.Event()

    def traffic(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                event = world.event(f"traffic-{worker}-{n}", "10", world.now - timedelta(days=25))
                result = world.record(event).results[0]
                assert result.status == 1, result.reason  # ACCEPTED
                world.invoice_at(at)
                with counting:
                    calls["record"] += 1
                    calls["read"] += 1
                if rebuilding.is_set():
                    flowed.set()
            except grpc.RpcError as error:
                failures.append(error)

    workers = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    monkeypatch.setenv("ACCRUAL_DATABASE_URL", server.database_url)
    with counting:
        before_rebuild = calls["record"]
        rebuilding.set()
    try:
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(["projections", "rebuild", "usage_rollups", "--version", "2"]) == 0
            assert cli.main(["projections", "swap", "usage_rollups", "--version", "2"]) == 0
        with counting:
            during_rebuild = calls["record"] - before_rebuild
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)

    assert failures == []
    assert during_rebuild > 0, "traffic flowed during the rebuild and swap"
    assert "usage_rollups v2 is live; v1 retired" in output.getvalue()
    assert live_version(server.database_url, "usage_rollups") == 2

    # After the swap the new version serves drafts, and they still equal replays.
    draft = world.invoice_at(at)
    recorded = calls["record"]
    assert draft.status == "DRAFT"
    assert draft.lines[0].quantity == str(10 * recorded + history)
    preview = world.api.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(invoice_id=draft.invoice_id)
    )
    assert preview.total.amount == draft.total.amount
