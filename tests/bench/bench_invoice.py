"""Benchmark: GetInvoice (draft) latency with 10 thousand and 10 million events in the period.

Run with ``make bench`` (not part of ``make test``). It starts its own embedded
PostgreSQL (fsync on) and ``accrual serve`` on it, then:

1. sets up a metric, a product, a rate card and two customers whose contracts
   start on the first of this month (of last month on the 1st and 2nd), through
   the service's own commands;
2. appends their usage in that period, up to now, through the ledger's append
   path as RecordUsage writes it (hash chain, idempotency keys, ages RecordUsage
   accepts): ``small`` gets 10,000 events, ``big`` ACCRUAL_BENCH_INVOICE_EVENTS
   (default 10,000,000);
3. waits for the served projector to bring every projection to the head;
4. times GetInvoice for each customer's draft over gRPC, one call at a time
   (ACCRUAL_BENCH_INVOICE_CALLS, default 500, after 50 to warm up), and checks
   both drafts' quantities and amounts against the usage loaded.

It prints one table and writes it with the machine and versions to
tests/bench/results/. Target: p99 at the big customer within 2x the small
one's, and under 20 ms.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import psycopg
from bench_ingest import Sampler, accrual_serve, free_port, pg_version, status_kb, wait_port
from results_file import print_figures, write_result

from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput
from ledger.app.usage import usage_to_append
from ledger.core.catalog import Product
from ledger.core.events import UsageRecorded
from ledger.core.rate_specs import RateSpec
from ledger.store import migrate
from ledger.store.records import NewEvent
from services.api.accrual.v1 import invoices_pb2, invoices_pb2_grpc
from services.bootstrap import running_app
from services.config import Settings
from services.embedded_db import EmbeddedPostgres

BIG_EVENTS = int(os.environ.get("ACCRUAL_BENCH_INVOICE_EVENTS", "10000000"))
SMALL_EVENTS = 10_000
CALLS = int(os.environ.get("ACCRUAL_BENCH_INVOICE_CALLS", "500"))
WARMUP_CALLS = 50
BATCH = 5_000
NOW = datetime.now(UTC)
# The period: this month, or last month in the first two days of this one (so it
# holds at least two days of usage, none older than RecordUsage's 34-day window).
PERIOD_START = (NOW - timedelta(days=2)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
USAGE_SPAN = (
    PERIOD_START,
    min(NOW - timedelta(minutes=1), (PERIOD_START + timedelta(days=32)).replace(day=1)),
)
PRICE = Decimal("0.00002")  # per token
CTX = RequestContext(actor="bench", reason="benchmark")
METADATA = {"actor": "bench"}


def tokens_of(n: int) -> int:
    return n % 5_000 + 1


def period_usage(customer: str, count: int) -> Iterator[list[NewEvent]]:
    """``count`` events spread evenly over the usage span, in batches, as RecordUsage
    writes them."""
    span = (USAGE_SPAN[1] - USAGE_SPAN[0]) / count
    batch: list[NewEvent] = []
    for n in range(count):
        event = UsageRecorded(
            customer,
            f"t{n}",
            "completion",
            USAGE_SPAN[0] + span * n,
            {"model": "large" if n % 3 == 0 else "small", "tokens": str(tokens_of(n))},
        )
        batch.append(usage_to_append(event, METADATA))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def set_up_and_load(url: str) -> dict[str, float]:
    """The catalog, two customers on contracts from the period's start, and their usage."""
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)
    async with running_app(settings, url) as app:
        await app.catalog.create_metric(
            MetricInput("tokens", "Tokens", "completion", "SUM", "tokens", group_by=["model"]), CTX
        )
        await app.catalog.create_product(Product("llm", "LLM", "tokens"), CTX)
        card = RateCardInput(
            "list", "List", "USD", None, datetime(2026, 1, 1, tzinfo=UTC),
            [RateSpec("llm", "per_unit", str(PRICE))],
        )  # fmt: skip
        draft, _ = await app.catalog.draft_rate_card(card, CTX)
        approver = dataclasses.replace(CTX, actor="bench-approver")  # prices need two people
        await app.catalog.approve_draft("list", draft.draft, approver)
        await app.catalog.publish_draft("list", draft.draft, CTX)
        for customer in ("small", "big"):
            await app.customers.create_customer(customer, customer.title(), CTX)
            contract = ContractInput(
                f"{customer}-c", customer, "list", None, PERIOD_START, None, None
            )
            await app.customers.create_contract(contract, CTX)
        figures: dict[str, float] = {}
        for customer, count in (("small", SMALL_EVENTS), ("big", BIG_EVENTS)):
            started = time.perf_counter()
            for batch in period_usage(customer, count):
                await app.store.append(batch)
            figures[f"append {customer}, events/s"] = count / (time.perf_counter() - started)
        return figures


def check_draft(invoice: invoices_pb2.Invoice, count: int) -> None:
    """The draft bills every token loaded, and its total is its lines' amounts."""
    assert invoice.status == "DRAFT", invoice.status
    quantities = sum(Decimal(line.quantity) for line in invoice.lines)
    assert quantities == sum(tokens_of(n) for n in range(count)), (quantities, count)
    amounts = sum(Decimal(line.amount.amount) for line in invoice.lines)
    assert Decimal(invoice.total.amount) == amounts > 0, (invoice.total, amounts)


def projections_behind(url: str) -> int:
    """How many events the furthest-behind live projection still has to apply."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT last_seq FROM ledger_heads WHERE partition = 0) - min(c.seq)"
            " FROM projection_checkpoints c JOIN projection_registry r USING (name, version)"
            " WHERE r.state = 'live'"
        ).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def wait_caught_up(url: str, within_s: float) -> float:
    """Seconds until every live projection of the served projector reached the head."""
    started = time.perf_counter()
    while (behind := projections_behind(url)) > 0:
        if time.perf_counter() - started > within_s:
            raise RuntimeError(f"projections still {behind:,} events behind after {within_s} s")
        time.sleep(0.5)
    return time.perf_counter() - started


def time_get_invoice(
    stub: invoices_pb2_grpc.InvoiceServiceStub, invoice_id: str, admin: tuple[tuple[str, str]]
) -> tuple[list[float], invoices_pb2.Invoice]:
    request = invoices_pb2.GetInvoiceRequest(invoice_id=invoice_id)
    invoice = stub.GetInvoice(request, metadata=admin, timeout=60)
    for _ in range(WARMUP_CALLS):
        stub.GetInvoice(request, metadata=admin, timeout=60)
    latencies = []
    for _ in range(CALLS):
        started = time.perf_counter()
        stub.GetInvoice(request, metadata=admin, timeout=60)
        latencies.append((time.perf_counter() - started) * 1_000)
    return sorted(latencies), invoice


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(data_dir: Path, pg_port: int, url: str) -> dict[str, object]:
    figures: dict[str, object] = {"postgres": pg_version(url)}
    grpc_port = free_port()
    with accrual_serve(data_dir, pg_port, grpc_port) as (serve, _):
        address = f"127.0.0.1:{grpc_port}"
        wait_port(address, serve)
        # The served projector applies the usage while it is appended.
        with Sampler(serve.pid) as sampler:
            started = time.perf_counter()
            figures.update(asyncio.run(set_up_and_load(url)))
            figures["projections at the head, s after the last append"] = wait_caught_up(
                url, within_s=7_200
            )
            loaded = SMALL_EVENTS + BIG_EVENTS
            figures["appended and projected, events/s"] = loaded / (time.perf_counter() - started)
        figures["server peak RSS while projecting, MB"] = sampler.peak_rss_kb / 1024
        token = (data_dir / "admin-token").read_text().strip()
        admin = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(address) as channel:
            stub = invoices_pb2_grpc.InvoiceServiceStub(channel)
            for customer, count in (("small", SMALL_EVENTS), ("big", BIG_EVENTS)):
                latencies, invoice = time_get_invoice(stub, f"in-{customer}-c-1", admin)
                check_draft(invoice, count)
                figures[f"GetInvoice {customer} ({count:,} events) p50, ms"] = percentile(
                    latencies, 0.50
                )
                figures[f"GetInvoice {customer} ({count:,} events) p99, ms"] = percentile(
                    latencies, 0.99
                )
        figures["server VmHWM, MB"] = status_kb(serve.pid, "VmHWM") / 1024
    return figures


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        pg_port = free_port()
        embedded = EmbeddedPostgres(data_dir / "pgdata", pg_port, fsync=True)
        url = embedded.start()
        try:
            migrate.upgrade(url)
            figures = measure(data_dir, pg_port, url)
        finally:
            embedded.stop()
    small_p99 = figures[f"GetInvoice small ({SMALL_EVENTS:,} events) p99, ms"]
    big_p99 = figures[f"GetInvoice big ({BIG_EVENTS:,} events) p99, ms"]
    assert isinstance(small_p99, float) and isinstance(big_p99, float)
    figures["p99 big / p99 small (target <= 2)"] = big_p99 / small_p99
    print_figures(
        f"GetInvoice benchmark: draft of {SMALL_EVENTS:,} and of {BIG_EVENTS:,} events", figures
    )
    write_result("invoice", {"calls": CALLS, "figures": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
