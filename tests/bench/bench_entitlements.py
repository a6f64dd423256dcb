"""Benchmark: the database work of one CheckEntitlement, with ~10,000 customers.

Run with ``.venv/bin/python tests/bench/bench_entitlements.py`` (not part of
``make test``). It loads a ledger of N customers (ACCRUAL_BENCH_CUSTOMERS,
default 10,000), each on a contract to one of a few rate cards with several
versions, a tenth of them amended onto another card, a third with a hard-limit
grant (some of them spent), and projects it. Then it asks random questions
(customer, product, instant; ACCRUAL_BENCH_CHECKS, default 5,000) and measures
each answer's query twice:

- server-side: ``EXPLAIN (ANALYZE, FORMAT JSON)`` of the check statement, its
  "Execution Time" (and "Planning Time"), which is the database work;
- client-side: the check as the service makes it, round trip included.

It prints median and p99 and writes them with the machine to
tests/bench/results/entitlements-<UTC>.json. The database is a fresh one on
the server ACCRUAL_TEST_DATABASE_URL names (dropped afterwards), or else an
embedded PostgreSQL started for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from results_file import write_result

from ledger.app.streams import contract_stream, customer_stream, rate_card_stream
from ledger.core.catalog import Contract, PlanChange, Rate, RateCardVersion, RateModel
from ledger.core.contracts import Amendment
from ledger.core.credits import Grant, GrantKind
from ledger.core.events import (
    ContractAmended,
    ContractCreated,
    ContractRegistered,
    CreditDrawnDown,
    CreditGranted,
    CustomerCreated,
    DomainEvent,
    RateCardPublished,
)
from ledger.store import migrate
from ledger.store.records import NewEvent
from projections.entitlements import EntitlementProjection
from projections.registry import live_version
from services.bootstrap import App, running_app
from services.config import Settings
from services.embedded_db import EmbeddedPostgres, free_port

CUSTOMERS = int(os.environ.get("ACCRUAL_BENCH_CUSTOMERS", "10000"))
CHECKS = int(os.environ.get("ACCRUAL_BENCH_CHECKS", "5000"))
APPEND_BATCH = 2_000
NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
START = datetime(2025, 1, 1, tzinfo=UTC)
CARDS = {f"card-{n}": [f"p{n}-{i}" for i in range(20)] for n in range(4)}
VERSIONS = 6  # per card, a month apart; each adds a product


def card_versions() -> list[tuple[str, DomainEvent]]:
    events: list[tuple[str, DomainEvent]] = []
    for card_id, products in CARDS.items():
        for version in range(1, VERSIONS + 1):
            on_card = [*products, *(f"{card_id}-extra-{v}" for v in range(version))]
            rates = tuple(Rate(p, RateModel.PER_UNIT, Decimal("0.001")) for p in on_card)
            card = RateCardVersion(
                card_id, version, card_id, "USD", 2, START + timedelta(days=30 * version), rates
            )
            events.append((rate_card_stream(card_id), RateCardPublished(card)))
    return events


def customer_events(rng: random.Random, n: int) -> list[tuple[str, DomainEvent]]:
    """A customer, its contract (sometimes pinned, ended or amended), maybe a hard limit."""
    customer_id, contract_id = f"c{n}", f"c{n}-k1"
    card_id = rng.choice(list(CARDS))
    starts_at = START + timedelta(days=rng.randrange(300))
    contract = Contract(
        contract_id=contract_id,
        customer_id=customer_id,
        rate_card_id=card_id,
        pinned_version=rng.choice((None, None, None, rng.randrange(1, VERSIONS + 1))),
        starts_at=starts_at,
        ends_at=rng.choice((None, None, None, starts_at + timedelta(days=200))),
        billing_anchor=starts_at,
        currency="USD",
    )
    stream = customer_stream(customer_id)
    events: list[tuple[str, DomainEvent]] = [
        (stream, CustomerCreated(customer_id, customer_id)),
        (stream, ContractCreated(contract)),
        (contract_stream(contract_id), ContractRegistered(contract_id, customer_id)),
    ]
    if rng.random() < 0.1:
        switch = starts_at + timedelta(days=rng.randrange(1, 100))
        other = rng.choice([c for c in CARDS if c != card_id])
        amendment = Amendment(contract_id, switch, plan=PlanChange(switch, other, None))
        events.append((stream, ContractAmended(amendment)))
    if rng.random() < 0.33:
        products = tuple(rng.sample(CARDS[card_id], 3)) if rng.random() < 0.5 else ()
        grant = Grant(
            f"g{n}", customer_id, GrantKind.PREPAID_COMMIT, Decimal("50.00"), "USD",
            starts_at, None, products, hard_limit=True,
        )  # fmt: skip
        events.append((stream, CreditGranted(grant)))
        if rng.random() < 0.5:
            events.append((stream, CreditDrawnDown(f"g{n}", "in-x-1", Decimal("50.00"), NOW)))
    return events


def batches(events: Sequence[tuple[str, DomainEvent]]) -> Iterator[list[NewEvent]]:
    for start in range(0, len(events), APPEND_BATCH):
        chunk = events[start : start + APPEND_BATCH]
        yield [NewEvent(stream, event, NOW, {"actor": "bench"}) for stream, event in chunk]


async def load(app: App) -> float:
    rng = random.Random(20260320)
    events = card_versions()
    for n in range(CUSTOMERS):
        events += customer_events(rng, n)
    for batch in batches(events):
        await app.store.append(batch)
    started = time.perf_counter()
    await app.runner.catch_up({EntitlementProjection.name})
    elapsed = time.perf_counter() - started
    async with app.pool.connection() as conn:
        await conn.set_autocommit(True)
        await conn.execute("ANALYZE")
    return len(events) / elapsed


def question(rng: random.Random) -> dict[str, Any]:
    card_id = rng.choice(list(CARDS))
    product = rng.choice([*CARDS[card_id], f"{card_id}-extra-3", "not-sold"])
    at = START + timedelta(seconds=rng.randrange(int((NOW - START).total_seconds())))
    return {"customer": f"c{rng.randrange(CUSTOMERS)}", "product": product, "at": at}


async def measure(app: App) -> dict[str, Any]:
    rng = random.Random(7)
    questions = [question(rng) for _ in range(CHECKS)]
    server_ms: list[float] = []
    planning_ms: list[float] = []
    client_ms: list[float] = []
    outcomes: dict[str, int] = {}
    async with app.pool.connection() as conn:
        projection = EntitlementProjection(await live_version(conn, EntitlementProjection.name))
        explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + projection.check_sql()
        for params in questions:
            cur = await conn.execute(explain, params)
            row = await cur.fetchone()
            assert row is not None
            plan = row[0][0]
            server_ms.append(float(plan["Execution Time"]))
            planning_ms.append(float(plan["Planning Time"]))
        for params in questions:
            started = time.perf_counter()
            answer = await projection.check(
                conn, params["customer"], params["product"], params["at"]
            )
            client_ms.append((time.perf_counter() - started) * 1_000)
            key = answer.refusal.value if answer.refusal else "allowed"
            outcomes[key] = outcomes.get(key, 0) + 1
        version = await conn.execute("SHOW server_version")
        server_version = str((await version.fetchone() or ("?",))[0])
        sample = await conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + projection.check_sql(), questions[0]
        )
        plan_text = "\n".join(str(line[0]) for line in await sample.fetchall())
    return {
        "postgres": server_version,
        "execution ms": summary(server_ms),
        "planning ms": summary(planning_ms),
        "client round trip ms": summary(client_ms),
        "answers": outcomes,
        "sample plan": plan_text,
    }


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"median": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


@contextlib.contextmanager
def bench_database() -> Iterator[str]:
    """A fresh database on ACCRUAL_TEST_DATABASE_URL's server, else an embedded server."""
    server = os.environ.get("ACCRUAL_TEST_DATABASE_URL")
    if not server:
        with tempfile.TemporaryDirectory() as folder:
            embedded = EmbeddedPostgres(Path(folder) / "pg", free_port(), fsync=False)
            try:
                yield embedded.start()
            finally:
                embedded.stop()
        return
    name = f"accrual_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server)
    password = f":{info['password']}" if info.get("password") else ""
    host, port = info.get("host") or "127.0.0.1", info.get("port") or 5432
    # A URL, as the migrations (SQLAlchemy) need.
    url = f"postgresql://{info.get('user') or 'postgres'}{password}@{host}:{port}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


def main() -> int:
    with bench_database() as url:
        migrate.upgrade(url)
        settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

        async def run() -> tuple[float, dict[str, Any]]:
            async with running_app(settings, url, clock=lambda: NOW) as app:
                return await load(app), await measure(app)

        projected_per_s, figures = asyncio.run(run())
    print(f"\nCheckEntitlement: {CUSTOMERS:,} customers, {CHECKS:,} random checks")
    print(f"  PostgreSQL {figures['postgres']}")
    print(f"  projected at {projected_per_s:,.0f} events/s; answers: {figures['answers']}")
    for label in ("execution ms", "planning ms", "client round trip ms"):
        row = figures[label]
        print(
            f"  {label:<22} median {row['median']:.3f}  p99 {row['p99']:.3f}  max {row['max']:.3f}"
        )
    print(figures["sample plan"])
    measured = {k: v for k, v in figures.items() if k != "sample plan"}
    write_result("entitlements", {"customers": CUSTOMERS, "checks": CHECKS, "figures": measured})
    return 0


if __name__ == "__main__":
    sys.exit(main())
