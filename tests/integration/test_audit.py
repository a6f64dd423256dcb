"""Audit and tamper evidence in-process, on real PostgreSQL: deterministic replays,
tampering caught by the chain check or only by a signed digest, and simulations that
price exactly as finalization would.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import itertools
import json
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from ledger.app.audit import SimulationRow, simulate_pricing
from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput, OverrideSpec
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.canonical import canonical_json, format_decimal, format_instant
from ledger.core.catalog import Product
from ledger.core.rate_specs import RateSpec, TierSpec
from ledger.store.chain import GENESIS_HASH
from ledger.store.records import StoredEvent
from ledger.store.verify import recompute_hash
from projections.invoicing import InvoiceStatus
from services import cli
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.pricing import publish_approved

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
START = datetime(2026, 2, 10, 10, 30, tzinfo=UTC)  # period 1 ends 2026-03-10 10:30
PERIOD_1_END = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)
PRICE_CHANGE = datetime(2026, 3, 15, 7, 45, tzinfo=UTC)  # v2 takes effect inside period 2
CTX = RequestContext(actor="audit-test", reason="audit integration test")
PRODUCTS = {"llm", "api", "users", "level", "peak", "platform"}
COLUMNS = (
    "seq, partition, stream_id, stream_version, event_type, schema_version, payload, metadata,"
    " occurred_at, recorded_at, idempotency_key, request_hash, prev_hash, hash"
)


class TickingClock:
    """A controlled clock: starts at NOW and moves one millisecond each time it is read."""

    def __init__(self, start: datetime = NOW) -> None:
        self._now = start

    def __call__(self) -> datetime:
        self._now += timedelta(milliseconds=1)
        return self._now


def run(database_url: str, body: Callable[[App], Awaitable[T]], clock: Any = None) -> T:
    """Run ``body`` against the app wired on the test database, without the projector."""
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def main() -> T:
        async with running_app(settings, database_url, clock=clock or TickingClock()) as app:
            return await body(app)

    return asyncio.run(main())


def accrual(*argv: str) -> tuple[int, str]:
    """``accrual <argv>`` in this process: its exit code and what it printed on stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def subprocess_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCRUAL_")}
    return env | {"ACCRUAL_DATABASE_URL": database_url}


# ---------------------------------------------------------------------------------------
# A history of mixed kinds


def rates(tokens: str, calls: str, platform: str) -> list[RateSpec]:
    return [
        RateSpec("llm", "per_unit", tokens),
        RateSpec("llm", "per_unit", "0.000004", group_values={"model": "large"}),
        RateSpec("api", "per_unit", calls, minimum="0.50"),
        RateSpec("users", "graduated", tiers=[TierSpec("2", "0"), TierSpec("", "1.5")]),
        RateSpec("level", "volume", tiers=[TierSpec("10", "2", "1"), TierSpec("", "1")]),
        RateSpec("peak", "package", unit_price="3", package_size="10"),
        RateSpec("platform", "flat", flat_amount=platform),
    ]


async def catalog(app: App) -> None:
    metrics = [
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens", group_by=["model"]),
        MetricInput("calls", "Calls", "api_call", "COUNT", "", group_by=["region"]),
        MetricInput("users", "Users", "api_call", "UNIQUE", "user"),
        MetricInput("level", "Level", "gauge", "LATEST", "level"),
        MetricInput("peak", "Peak", "gauge", "MAX", "level"),
    ]
    for metric in metrics:
        await app.catalog.create_metric(metric, CTX)
    for product in (
        Product("llm", "LLM", "tokens"),
        Product("api", "API", "calls"),
        Product("users", "Active users", "users"),
        Product("level", "Level", "level"),
        Product("peak", "Peak", "peak"),
        Product("platform", "Platform fee"),
    ):
        await app.catalog.create_product(product, CTX)
    for effective_from, version_rates in (
        (START - timedelta(days=9), rates("0.000002", "0.01", "49.99")),
        (PRICE_CHANGE, rates("0.0000025", "0.012", "59.99")),
    ):
        card = RateCardInput("list", "List", "USD", None, effective_from, version_rates)
        await publish_approved(app.catalog, card, CTX)


async def customers(app: App) -> None:
    await app.customers.create_customer("acme", "Acme Zoë GmbH", CTX)
    await app.customers.create_customer("beta", "Beta", CTX)
    await app.customers.create_customer("gamma", "Gamma", CTX)
    contracts = [
        ContractInput("acme-1", "acme", "list", None, START, None, None),
        ContractInput("beta-1", "beta", "list", 1, START, None, None),  # grandfathered on v1
        ContractInput(
            "gamma-1",
            "gamma",
            "list",
            None,
            START,
            None,
            None,
            overrides=[OverrideSpec("ten-off", "llm", "multiplier", multiplier="0.9")],
        ),
    ]
    for contract in contracts:
        await app.customers.create_contract(contract, CTX)


def usage(rng: random.Random, first: int, count: int, *, late: bool = False) -> list[UsageInput]:
    """Usage of every kind for three customers (acme the most) inside the late window.

    ``late``: only period-1 times, for usage that arrives after period 1 was finalized.
    """
    earliest = NOW - timedelta(days=33)
    latest = PERIOD_1_END if late else NOW - timedelta(minutes=1)
    span = int((latest - earliest).total_seconds())
    events = []
    for n in range(first, first + count):
        customer = "acme" if n % 5 < 3 else ("beta" if n % 2 else "gamma")
        at = earliest + timedelta(seconds=rng.randrange(span))
        if n % 4 in (0, 1):
            model = rng.choice(["small", "small", "large"])
            props = {"model": model, "tokens": str(rng.randrange(1, 10**6))}
            events.append(UsageInput(f"t{n}", customer, "completion", at, props))
        elif n % 4 == 2:
            props = {"region": rng.choice(["eu", "us"]), "user": rng.choice("abcdefgh")}
            events.append(UsageInput(f"t{n}", customer, "api_call", at, props))
        else:
            whole = at.replace(second=0, microsecond=0)  # shared instants: ledger order decides
            props = {"level": str(rng.randrange(0, 40))}
            events.append(UsageInput(f"t{n}", customer, "gauge", whole, props))
    return events


async def record(app: App, events: list[UsageInput]) -> None:
    for at in range(0, len(events), 1_000):
        results = await app.record_usage(events[at : at + 1_000], CTX)
        assert all(r.status is UsageStatus.ACCEPTED for r in results), results


async def build_history(app: App) -> str:
    """Catalog, two versions, three contracts, ~4,000 usage events over two periods, one
    finalized invoice followed by late usage for its period. Returns the finalized sha."""
    rng = random.Random(20261123)
    await catalog(app)
    await customers(app)
    await record(app, usage(rng, 0, 2_000))
    final = await app.invoicing.finalize("in-acme-1-1", CTX)
    await record(app, usage(rng, 2_000, 1_900))
    await record(app, usage(rng, 3_900, 100, late=True))  # kept, not billed on invoice 1
    return final.content_sha256


def ledger_head(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT last_seq FROM ledger_heads WHERE partition = 0").fetchone()
    assert row is not None
    return int(row[0])


def replay_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def test_replay_is_byte_identical_twice_and_in_another_process(
    database_url: str, accrual_env: str
) -> None:
    finalized_sha = run(database_url, build_history)

    code, first = accrual("replay", "--customer", "acme", "--json")
    assert code == 0
    code, second = accrual("replay", "--customer", "acme", "--json")
    assert code == 0
    other = subprocess.run(
        [sys.executable, "-m", "services.cli", "replay", "--customer", "acme", "--json"],
        env=subprocess_env(database_url),
        cwd=REPO,
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert other.returncode == 0, other.stderr.decode()[-2000:]

    assert first.encode() == second.encode() == other.stdout
    items = replay_lines(first)
    assert len(items) > 2_000, "thousands of lines"
    events = [item["event"] for item in items if "event" in item]
    invoices = [item["invoice"] for item in items if "invoice" in item]
    assert items[: len(events)] == [{"event": e} for e in events], "events first, then invoices"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    kinds = {e["event_type"] for e in events}
    assert kinds >= {
        "BillableMetricCreated",
        "ProductCreated",
        "RateCardPublished",
        "CustomerCreated",
        "ContractCreated",
        "UsageRecorded",
        "InvoiceFinalized",
    }
    assert not [e for e in events if "beta" in e["stream_id"] or "gamma" in e["stream_id"]]
    assert [(i["status"], i["invoice"]["invoice_id"]) for i in invoices] == [
        ("FINALIZED", "in-acme-1-1"),
        ("DRAFT", "in-acme-1-2"),
    ]
    final, draft = invoices
    assert final["matches"] is True
    assert final["replayed_sha256"] == final["recorded_sha256"] == finalized_sha
    assert draft["matches"] is None
    head = ledger_head(database_url)
    assert draft["invoice"]["computed_through_seq"] == head  # a draft as of the replay position
    assert {line["product_id"] for line in draft["invoice"]["lines"]} == PRODUCTS

    # The replay is a function of the ledger position: later events of other customers,
    # written an hour later by the clock, leave acme's replay cut at the old head unchanged.
    async def more(app: App) -> None:
        await record(
            app, [e for e in usage(random.Random(7), 5_000, 50) if e.customer_id != "acme"]
        )

    run(database_url, more, clock=TickingClock(NOW + timedelta(hours=1)))
    code, cut = accrual("replay", "--customer", "acme", "--json", "--up-to-seq", str(head))
    assert code == 0
    assert cut == first


# ---------------------------------------------------------------------------------------
# Tampering as a database superuser (the append-only trigger bypassed)


async def small_ledger(app: App) -> None:
    """A few hundred events: catalog, three customers, usage, one finalized invoice."""
    rng = random.Random(11)
    await catalog(app)
    await customers(app)
    await record(app, usage(rng, 0, 250))
    await app.invoicing.finalize("in-acme-1-1", CTX)
    await record(app, usage(rng, 250, 50))


@contextlib.contextmanager
def superuser(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """One transaction as the tests' superuser, with the append-only triggers off."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        yield conn


def usage_seqs(database_url: str, customer_id: str, event_type: str = "") -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT seq, payload FROM events WHERE stream_id = %s ORDER BY seq",
            (f"usage-{customer_id}",),
        ).fetchall()
    return [
        seq
        for seq, payload in rows
        if not event_type or json.loads(bytes(payload))["event_type"] == event_type
    ]


def finalized_through(database_url: str, invoice_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM events WHERE event_type = 'InvoiceFinalized'"
        ).fetchall()
    for (payload,) in rows:
        invoice = json.loads(bytes(payload))["invoice"]
        if invoice["invoice_id"] == invoice_id:
            return int(invoice["computed_through_seq"])
    raise AssertionError(f"{invoice_id} is not finalized")


def rechain(conn: psycopg.Connection[Any], from_seq: int) -> None:
    """Recompute prev_hash and hash of every row from ``from_seq``, and the head's hash:
    what a superuser covering their tracks would do."""
    prev = GENESIS_HASH
    if from_seq > 1:
        row = conn.execute("SELECT hash FROM events WHERE seq = %s", (from_seq - 1,)).fetchone()
        assert row is not None
        prev = bytes(row[0])
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM events WHERE seq >= %s ORDER BY seq", (from_seq,)
    ).fetchall()
    for row in rows:
        event = StoredEvent(*row)
        new = recompute_hash(event, prev)
        conn.execute(
            "UPDATE events SET prev_hash = %s, hash = %s WHERE seq = %s", (prev, new, event.seq)
        )
        prev = new
    conn.execute("UPDATE ledger_heads SET last_hash = %s WHERE partition = 0", (prev,))


def swap_events(conn: psycopg.Connection[Any], a: int, b: int) -> None:
    """Reorder two events of one stream: each row takes the other's content."""
    content = "payload, metadata, occurred_at, idempotency_key, request_hash"
    rows = {
        row[0]: row[1:]
        for row in conn.execute(
            f"SELECT seq, {content} FROM events WHERE seq IN (%s, %s)", (a, b)
        ).fetchall()
    }
    assert rows[a] != rows[b]
    conn.execute("UPDATE events SET idempotency_key = NULL WHERE seq IN (%s, %s)", (a, b))
    for target, source in ((a, b), (b, a)):
        conn.execute(
            "UPDATE events SET payload = %s, metadata = %s, occurred_at = %s,"
            " idempotency_key = %s, request_hash = %s WHERE seq = %s",
            (*rows[source], target),
        )


def test_altered_payload_is_caught_by_verify_replay_and_digest(
    database_url: str, accrual_env: str, tmp_path: Path
) -> None:
    run(database_url, small_ledger)
    key, digest = tmp_path / "key.pem", tmp_path / "digest.json"
    assert accrual("digest", "keygen", "--algorithm", "ed25519", "--out", str(key))[0] == 0
    assert accrual("digest", "export", "--key", str(key), "--out", str(digest))[0] == 0
    assert accrual("verify")[0] == 0
    assert accrual("replay", "--invoice", "in-acme-1-1")[0] == 0

    through = finalized_through(database_url, "in-acme-1-1")
    target = [s for s in usage_seqs(database_url, "acme", "completion") if s < through][5]
    with superuser(database_url) as conn:
        row = conn.execute("SELECT payload FROM events WHERE seq = %s", (target,)).fetchone()
        assert row is not None
        payload = json.loads(bytes(row[0]))
        payload["properties"]["tokens"] = str(int(payload["properties"]["tokens"]) + 10**9)
        altered = canonical_json(payload)
        cur = conn.execute("UPDATE events SET payload = %s WHERE seq = %s", (altered, target))
        assert cur.rowcount == 1

    code, out = accrual("verify")
    assert code == 1
    assert f"BROKEN at seq {target}:" in out
    assert "hash" in out
    code, out = accrual("replay", "--invoice", "in-acme-1-1")
    assert code == 1
    assert "MISMATCH" in out
    code, out = accrual("digest", "verify", "--key", str(key), str(digest))
    assert code == 1
    assert f"BROKEN at seq {target}:" in out


def test_deleted_middle_event_is_named_by_verify(
    database_url: str, accrual_env: str, tmp_path: Path
) -> None:
    run(database_url, small_ledger)
    key, digest = tmp_path / "key", tmp_path / "digest.json"
    assert accrual("digest", "keygen", "--algorithm", "hmac-sha256", "--out", str(key))[0] == 0
    code, _ = accrual(
        "digest", "export", "--algorithm", "hmac-sha256", "--key", str(key), "--out", str(digest)
    )
    assert code == 0
    target = usage_seqs(database_url, "beta")[10]
    with superuser(database_url) as conn:
        cur = conn.execute("DELETE FROM events WHERE seq = %s", (target,))
        assert cur.rowcount == 1

    code, out = accrual("verify")
    assert code == 1
    assert f"ledger BROKEN at seq {target}:" in out
    code, out = accrual(
        "digest", "verify", "--algorithm", "hmac-sha256", "--key", str(key), str(digest)
    )
    assert code == 1
    assert f"BROKEN at seq {target}:" in out
    # A range that ends before the hole is still sound.
    assert accrual("verify", "--from", "1", "--to", str(target - 1))[0] == 0


@pytest.mark.parametrize("bounds", [("10", "5"), ("100000", "")])
def test_verify_of_an_empty_range_reports_no_breach(
    database_url: str, accrual_env: str, bounds: tuple[str, str]
) -> None:
    """``verify --from 10 --to 5`` or ``--from`` past the head checks nothing: a usage error
    (exit 2) or a pass, never ``BROKEN`` for an intact ledger."""
    run(database_url, small_ledger)
    start, end = bounds
    code, out = accrual("verify", "--from", start, *(["--to", end] if end else []))
    assert "BROKEN" not in out
    assert code in (0, 2)


def test_digest_export_with_a_key_of_the_other_algorithm_is_a_usage_error(
    database_url: str, accrual_env: str, tmp_path: Path
) -> None:
    """An hmac key read as ed25519 (the default): a message and exit 2, no traceback."""
    run(database_url, small_ledger)
    key, digest = tmp_path / "key", tmp_path / "digest.json"
    assert accrual("digest", "keygen", "--algorithm", "hmac-sha256", "--out", str(key))[0] == 0

    code, out = accrual("digest", "export", "--key", str(key), "--out", str(digest))

    assert code == 2
    assert out == ""
    assert not digest.exists()


def swap_positions(conn: psycopg.Connection[Any], a: int) -> None:
    """Reorder the events at ``a`` and ``a + 1`` (of two streams) by swapping their seqs."""
    conn.execute("UPDATE events SET seq = -1 WHERE seq = %s", (a,))
    conn.execute("UPDATE events SET seq = %s WHERE seq = %s", (a, a + 1))
    conn.execute("UPDATE events SET seq = %s WHERE seq = -1", (a + 1,))


def adjacent_usage_of_two_customers(database_url: str) -> int:
    """A seq whose event and its successor are usage of two different customers."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT seq, stream_id FROM events ORDER BY seq").fetchall()
    for (seq, stream), (_, following) in itertools.pairwise(rows[100:]):
        if stream.startswith("usage-") and following.startswith("usage-") and stream != following:
            return int(seq)
    raise AssertionError("no adjacent usage of two customers")


@pytest.mark.parametrize("how", ["swap-content", "swap-seq"])
@pytest.mark.parametrize("algorithm", ["ed25519", "hmac-sha256"])
def test_reorder_with_recomputed_chain_is_caught_only_by_the_exported_digest(
    database_url: str, accrual_env: str, tmp_path: Path, algorithm: str, how: str
) -> None:
    run(database_url, small_ledger)
    key, digest = tmp_path / "key", tmp_path / "digest.json"
    code, out = accrual("digest", "keygen", "--algorithm", algorithm, "--out", str(key))
    assert code == 0
    assert algorithm in out
    code, exported = accrual(
        "digest", "export", "--algorithm", algorithm, "--key", str(key), "--out", str(digest)
    )
    assert code == 0
    assert exported == digest.read_text()
    signed = json.loads(exported)
    assert signed["algorithm"] == algorithm
    verify_digest = ("digest", "verify", "--algorithm", algorithm, "--key", str(key))
    code, out = accrual(*verify_digest, str(digest))
    assert code == 0, out
    assert f"ok, the ledger reproduces seq {signed['seq']}" in out

    if how == "swap-content":  # two events of one stream trade places
        seqs = usage_seqs(database_url, "acme")
        first = seqs[20]
        with superuser(database_url) as conn:
            swap_events(conn, first, seqs[60])
            rechain(conn, first)
    else:  # two neighbours of different streams trade positions; each stream stays in order
        first = adjacent_usage_of_two_customers(database_url)
        with superuser(database_url) as conn:
            swap_positions(conn, first)
            rechain(conn, first)

    code, out = accrual("verify")
    assert code == 0, out  # the chain alone is self-consistent again
    code, out = accrual(*verify_digest, str(digest))
    assert code == 1
    assert f"BROKEN at seq {signed['seq']}:" in out
    assert "rewritten" in out
    # A digest signed now, over the rewritten chain, would verify: only the older one,
    # kept outside the database, proves the rewrite.
    fresh = tmp_path / "fresh.json"
    code, _ = accrual(
        "digest", "export", "--algorithm", algorithm, "--key", str(key), "--out", str(fresh)
    )
    assert code == 0
    assert json.loads(fresh.read_text())["hash"] != signed["hash"]
    assert accrual(*verify_digest, str(fresh))[0] == 0


@pytest.mark.parametrize("algorithm", ["ed25519", "hmac-sha256"])
def test_forged_or_foreign_digests_fail(
    database_url: str, accrual_env: str, tmp_path: Path, algorithm: str
) -> None:
    run(database_url, small_ledger)
    key, other_key = tmp_path / "key", tmp_path / "other"
    for path in (key, other_key):
        assert accrual("digest", "keygen", "--algorithm", algorithm, "--out", str(path))[0] == 0
    digest = tmp_path / "digest.json"
    export = ("digest", "export", "--algorithm", algorithm, "--key", str(key))
    assert accrual(*export, "--out", str(digest))[0] == 0
    signed = json.loads(digest.read_text())
    verify_with = ("digest", "verify", "--algorithm", algorithm, "--key")
    assert accrual(*verify_with, str(key), str(digest))[0] == 0

    code, out = accrual(*verify_with, str(other_key), str(digest))
    assert code == 1
    assert f"BROKEN at seq {signed['seq']}:" in out
    assert "signature" in out

    forged = tmp_path / "forged.json"
    signature = signed["signature"]
    flipped = ("0" if signature[10] != "0" else "1").join((signature[:10], signature[11:]))
    forged.write_text(json.dumps({**signed, "signature": flipped}))
    code, out = accrual(*verify_with, str(key), str(forged))
    assert code == 1
    assert "signature" in out

    # The signature covers the content: a digest claiming another position fails too.
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps({**signed, "seq": signed["seq"] - 1}))
    code, out = accrual(*verify_with, str(key), str(moved))
    assert code == 1
    assert "signature" in out
    # One bad digest among good ones fails the run, and names the bad file.
    code, out = accrual(*verify_with, str(key), str(digest), str(forged))
    assert code == 1
    assert f"{digest}: ok" in out
    assert f"{forged}: BROKEN" in out


# ---------------------------------------------------------------------------------------
# Simulation equals finalization


SIM_START = datetime(2026, 2, 16, 0, 0, tzinfo=UTC)  # inside the late window from NOW


def sim_rates(tokens: str, top_tier: str, platform: str) -> list[RateSpec]:
    return [
        RateSpec("llm", "per_unit", tokens, minimum="1.00"),
        RateSpec("api", "graduated", tiers=[TierSpec("100", "0.02"), TierSpec("", top_tier)]),
        RateSpec("platform", "flat", flat_amount=platform),
    ]


def twin_usage(rng: random.Random, count: int) -> list[UsageInput]:
    """The same usage for customers a and b (each with its own transaction ids)."""
    events = []
    for n in range(count):
        at = SIM_START + timedelta(minutes=rng.randrange(60 * 24 * 22))
        if n % 3:
            props = {"tokens": str(rng.randrange(1, 10**6))}
            kind = "completion"
        else:
            props = {}
            kind = "api_call"
        events += [UsageInput(f"t{n}", c, kind, at, props) for c in ("a", "b")]
    return events


async def simulation_world(app: App) -> None:
    await app.catalog.create_metric(
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens"), CTX
    )
    await app.catalog.create_metric(MetricInput("calls", "Calls", "api_call", "COUNT", ""), CTX)
    await app.catalog.create_product(Product("llm", "LLM", "tokens"), CTX)
    await app.catalog.create_product(Product("api", "API", "calls"), CTX)
    await app.catalog.create_product(Product("platform", "Platform"), CTX)
    v1 = RateCardInput("list", "List", "USD", None, START, sim_rates("0.0000015", "0.01", "20"))
    await publish_approved(app.catalog, v1, CTX)
    # v2 takes effect only after NOW: a contract that follows the card stays on v1.
    v2_rates = sim_rates("0.0000021", "0.015", "25")
    v2 = RateCardInput("list", "List", "USD", None, NOW + timedelta(days=30), v2_rates)
    await publish_approved(app.catalog, v2, CTX)
    for customer, pinned in (("a", None), ("b", 2)):
        await app.customers.create_customer(customer, customer.upper(), CTX)
        contract = ContractInput(f"{customer}-1", customer, "list", pinned, START, None, None)
        await app.customers.create_contract(contract, CTX)
    await record(app, twin_usage(random.Random(5), 600))


def by_customer(rows: list[SimulationRow]) -> dict[str, SimulationRow]:
    assert len({row.customer_id for row in rows}) == len(rows)
    return {row.customer_id: row for row in rows}


def test_simulating_a_version_gives_what_finalizing_under_it_gives(
    database_url: str, accrual_env: str
) -> None:
    async def body(app: App) -> dict[str, Any]:
        await simulation_world(app)
        b_final = await app.invoicing.finalize("in-b-1-1", CTX)
        a_draft = await app.invoicing.get(invoice_id="in-a-1-1")
        assert a_draft.status is InvoiceStatus.DRAFT
        assert a_draft.invoice.rate_card_versions == (1,)
        assert b_final.invoice.rate_card_versions == (2,)
        period = (a_draft.invoice.period_start, a_draft.invoice.period_end)
        v2 = await app.catalog.get_rate_card("list", 2)

        rows = by_customer(await simulate_pricing(app.pool, v2, *period))
        assert set(rows) == {"a", "b"}
        a, b = rows["a"], rows["b"]
        assert (a.invoice_id, a.status, a.currency) == ("in-a-1-1", "DRAFT", "USD")
        assert (a.period_start, a.period_end) == period
        assert a.simulated_total == b_final.invoice.total
        assert a.current_total == a_draft.invoice.total
        assert a.current_total != a.simulated_total, "the two versions price differently"
        assert a.delta == b_final.invoice.total - a_draft.invoice.total
        assert (b.invoice_id, b.status) == ("in-b-1-1", "FINALIZED")
        assert b.current_total == b.simulated_total == b_final.invoice.total
        assert b.delta == 0

        simulation = await app.auditing.simulate("list", 2, *period)
        assert by_customer(simulation.rows) == rows
        total = a_draft.invoice.total + b_final.invoice.total
        assert simulation.totals() == {"USD": (total, 2 * b_final.invoice.total)}

        # Finalized under v1, a's current total is that invoice; late usage after
        # finalization does not move either number.
        a_final = await app.invoicing.finalize("in-a-1-1", CTX)
        assert a_final.invoice.total == a_draft.invoice.total
        late = [UsageInput("late-1", "a", "completion", SIM_START, {"tokens": "999999"})]
        await record(app, late)
        after = by_customer(await simulate_pricing(app.pool, v2, *period))
        assert after["a"].status == "FINALIZED"
        assert after["a"].current_total == a_final.invoice.total
        assert after["a"].simulated_total == b_final.invoice.total
        return {
            "period": period,
            "a": (a_final.invoice.total, b_final.invoice.total),
            "b": b_final.invoice.total,
        }

    seen = run(database_url, body)

    start, end = seen["period"]
    code, out = accrual(
        "simulate", "--rate-card", "list", "--version", "2", "--from", start.isoformat(),
        "--to", end.isoformat(), "--csv",
    )  # fmt: skip
    assert code == 0
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == [
        "customer_id",
        "invoice_id",
        "period_start",
        "period_end",
        "status",
        "currency",
        "current_total",
        "simulated_total",
        "delta",
    ]
    a_current, a_simulated = seen["a"]
    b_total = seen["b"]
    begins, ends = format_instant(start), format_instant(end)
    assert sorted(table[1:]) == [
        [
            "a",
            "in-a-1-1",
            begins,
            ends,
            "FINALIZED",
            "USD",
            format_decimal(a_current),
            format_decimal(a_simulated),
            format_decimal(a_simulated - a_current),
        ],
        [
            "b",
            "in-b-1-1",
            begins,
            ends,
            "FINALIZED",
            "USD",
            format_decimal(b_total),
            format_decimal(b_total),
            format_decimal(b_total - b_total),
        ],
    ]
    assert Decimal(table[1][8]) + Decimal(table[2][8]) == a_simulated - a_current
