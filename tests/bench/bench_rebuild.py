"""Benchmark: ledger append, projection rebuild and chain verification on N events.

Run with ``make bench`` (not part of ``make test``). It starts its own
embedded PostgreSQL (fsync on), loads N usage events with a fixed seed,
rebuilds every projection from seq 0, verifies the chain, and verifies one big
invoice by replay (half of all usage is one customer's), then prints one table
and writes it with the machine and versions to tests/bench/results/.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import resource
import sys
import time
from datetime import UTC, datetime, timedelta

from embedded import migrated_embedded_database
from results_file import write_result

from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput
from ledger.app.streams import usage_stream
from ledger.app.usage import usage_to_append
from ledger.core.catalog import Product
from ledger.core.events import UsageRecorded
from ledger.core.rate_specs import RateSpec
from ledger.store.records import NewEvent
from ledger.store.verify import verify_ledger
from services.bootstrap import PROJECTIONS, App, running_app
from services.config import Settings
from services.server import tune_garbage_collector

EVENTS = int(os.environ.get("ACCRUAL_BENCH_EVENTS", "1000000"))
BATCH = 5_000
CUSTOMERS = 100
NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
# The app's clock: past the end of March (and its grace), so March can be finalized.
CLOCK = datetime(2026, 4, 2, tzinfo=UTC)
BIG = "c0"  # half of all usage: the invoice VerifyInvoice replays
BIG_INVOICE = "in-c0-c-2"  # its March, the contract starting on 1 February
MARCH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
CTX = RequestContext(actor="bench", reason="benchmark")
METADATA = {"actor": "bench"}  # one call's events share their metadata


def usage(rng: random.Random, n: int) -> NewEvent:
    customer = BIG if n % 2 == 0 else f"c{n % CUSTOMERS}"
    event = UsageRecorded(
        customer,
        f"t{n}",
        "completion",
        NOW - timedelta(seconds=rng.randrange(30 * 86_400)),
        {"model": rng.choice(("small", "large")), "tokens": str(rng.randrange(1, 5_000))},
    )
    return usage_to_append(event, METADATA)  # as RecordUsage appends it


async def load(app: App) -> float:
    await app.catalog.create_metric(
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens", group_by=["model"]), CTX
    )
    for n in range(CUSTOMERS):
        await app.customers.create_customer(f"c{n}", f"Customer {n}", CTX)
    rng = random.Random(20261123)
    started = time.perf_counter()
    for start in range(0, EVENTS, BATCH):
        await app.store.append([usage(rng, n) for n in range(start, min(start + BATCH, EVENTS))])
    return EVENTS / (time.perf_counter() - started)


async def rebuild(app: App, name: str) -> float:
    projection = await app.runner.start_rebuild(name, 2)
    started = time.perf_counter()
    async for _ in app.runner.build(projection):
        pass
    return EVENTS / (time.perf_counter() - started)


async def measure(app: App) -> dict[str, float]:
    figures = {"append (batches of 5,000), events/s": await load(app)}
    figures["peak RSS after loading, MB"] = peak_rss_mb()
    for name in PROJECTIONS:
        # A projection of a few non-usage types reads only those, through an index,
        # and moves over the usage: its rate counts the ledger events it passed.
        selective = app.runner.projection(name, 1).event_types is not None
        label = f"rebuild {name}" + (" (own types only)" if selective else "")
        figures[f"{label}, events/s"] = await rebuild(app, name)
    figures["peak RSS after the rebuilds, MB"] = peak_rss_mb()
    started = time.perf_counter()
    report = await verify_ledger(app.store)
    assert report.ok, report.breach
    figures["verify chain, events/s"] = report.events_checked / (time.perf_counter() - started)
    figures["peak RSS after verifying the chain, MB"] = peak_rss_mb()
    figures.update(await verify_invoice(app))
    figures["peak RSS after finalizing and VerifyInvoice, MB"] = peak_rss_mb()
    return figures


def peak_rss_mb() -> float:
    """This process's peak RSS so far: every phase runs in it (Linux counts in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def verify_invoice(app: App) -> dict[str, float]:
    """Finalize the big customer's March, then time VerifyInvoice's replay of it."""
    await app.catalog.create_product(Product("llm", "LLM", "tokens"), CTX)
    card = RateCardInput(
        "list", "List", "USD", None, datetime(2026, 1, 1, tzinfo=UTC),
        [RateSpec("llm", "per_unit", "0.00002")],
    )  # fmt: skip
    draft, _ = await app.catalog.draft_rate_card(card, CTX)
    approver = dataclasses.replace(CTX, actor="bench-approver")  # prices need two people
    await app.catalog.approve_draft("list", draft.draft, approver)
    await app.catalog.publish_draft("list", draft.draft, CTX)
    starts = datetime(2026, 2, 1, tzinfo=UTC)
    contract = ContractInput("c0-c", BIG, "list", None, starts, None, None)
    await app.customers.create_contract(contract, CTX)
    await app.invoicing.finalize("in-c0-c-1", CTX)  # February first: periods close in order
    await app.invoicing.finalize(BIG_INVOICE, CTX)
    async with app.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM events WHERE stream_id = %s"
            " AND occurred_at >= %s AND occurred_at < %s",
            (usage_stream(BIG), *MARCH),
        )
        row = await cur.fetchone()
    assert row is not None
    started = time.perf_counter()
    check = await app.invoicing.verify_finalized(BIG_INVOICE)
    elapsed = time.perf_counter() - started
    assert check.matches
    return {
        "verify invoice: events in its period": float(row[0]),
        "verify invoice, events/s": row[0] / elapsed,
    }


def main() -> int:
    tune_garbage_collector()  # the collector settings `accrual rebuild` runs with
    with migrated_embedded_database() as url:
        settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

        async def run() -> dict[str, float]:
            async with running_app(settings, url, clock=lambda: CLOCK) as app:
                return await measure(app)

        figures = asyncio.run(run())
    print(f"\nAccrual benchmark: {EVENTS:,} usage events, {CUSTOMERS} customers")
    for label, value in figures.items():
        print(f"  {label:<44} {value:>12,.0f}")
    write_result("rebuild", {"events": EVENTS, "figures": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
