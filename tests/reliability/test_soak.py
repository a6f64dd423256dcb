"""A bounded soak: `accrual serve` under a steady ingest rate stays flat.

The real command runs as a subprocess on its own embedded PostgreSQL. Four
client threads send usage at a paced, steady rate (default 200 events/s in
batches of 20) for ``ACCRUAL_SOAK_SECONDS`` (default 120) while a sampler reads,
every ~2 s, the server's resident memory (``/proc/<pid>/status`` VmRSS), the
number of PostgreSQL client connections (``pg_stat_activity``) and the
RecordUsage latency of the window; a draft invoice is read now and then.

"Flat" means, after a warm-up of the first 20% of samples: memory grows at most
15% (or 30 MB) from the first post-warm-up sample to the last; the connection
count never exceeds the pools' configured maximum plus a small constant; the
median of the windows' p99 latency in the last third is at most twice that of
the first third (plus a 20 ms floor against noise), and no window's p99 exceeds
1 s; no call fails; and every acknowledged event is in
the ledger exactly once at the end.

Knobs: ACCRUAL_SOAK_SECONDS, ACCRUAL_SOAK_RATE (events/s), ACCRUAL_SOAK_BATCH,
ACCRUAL_SOAK_THREADS. A summary goes to tests/reliability/results/.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import psycopg
import pytest

from services.api.accrual.v1 import invoices_pb2, usage_pb2
from services.bootstrap import PROJECTOR_POOL_MAX
from tests.e2e.conftest import RunningServer, WithToken
from tests.e2e.helpers import ACCEPTED, World, setup_world, ts
from tests.reliability.workload import running_node


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


SOAK_SECONDS = _env_int("ACCRUAL_SOAK_SECONDS", 120)
RATE = _env_int("ACCRUAL_SOAK_RATE", 200)  # events per second, all threads together
BATCH = _env_int("ACCRUAL_SOAK_BATCH", 20)
THREADS = _env_int("ACCRUAL_SOAK_THREADS", 4)
POOL_MAX = 10  # ACCRUAL_DB_POOL_MAX given to the server
SAMPLE_EVERY_S = 2.0
INVOICE_EVERY_S = 5.0
WARM_UP = 0.2
RSS_GROWTH_RATIO = 0.15
RSS_GROWTH_BYTES = 30 * 1024 * 1024
# The service's pool, the projection runner's pool, and a little slack (a connection
# being replaced while its predecessor's backend is still exiting).
CONNECTIONS_ALLOWED = POOL_MAX + PROJECTOR_POOL_MAX + 2
P99_FACTOR = 2.0
P99_FLOOR_S = 0.020
STALL_MS = 1000.0  # any window slower than this is a stall, not noise
CALL_TIMEOUT_S = 10.0
QUANTITY = "10"
RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------------------
# Load and measurement


@dataclass
class Calls:
    """Everything the clients saw, shared between threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acked: list[str] = field(default_factory=list)
    # (when the call completed, how long it took)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    invoice_calls: int = 0
    invoice_latencies: list[float] = field(default_factory=list)


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    connections: int
    by_role: dict[str, int]
    calls: int
    p50_ms: float
    p99_ms: float
    acked: int


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def connection_counts(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    """Client connections to the server by role, this monitoring one left out."""
    rows = conn.execute(
        "SELECT coalesce(usename, '?'), count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " GROUP BY 1"
    ).fetchall()
    return {str(name): int(str(count)) for name, count in rows}


def send_steadily(
    worker: int, world: World, calls: Calls, start: float, stop: threading.Event
) -> None:
    """Batches at this worker's share of the rate, each on its own schedule slot."""
    interval = BATCH * THREADS / RATE
    used_at = datetime.now(UTC) - timedelta(minutes=1)
    batch = 0
    # Workers are spread over the interval so the server sees an even stream.
    due = start + worker * interval / THREADS
    while not stop.is_set():
        wait = due - time.monotonic()
        if wait > 0 and stop.wait(wait):
            return
        ids = [f"soak-w{worker}-b{batch}-e{n}" for n in range(BATCH)]
        events = [world.event(tx, QUANTITY, used_at) for tx in ids]
        batch += 1
        due += interval
        began = time.monotonic()
        try:
            reply = world.api.usage.RecordUsage(
                usage_pb2.RecordUsageRequest(events=events), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as error:
            with calls.lock:
                calls.sent += BATCH
                calls.failures.append(f"RecordUsage {error.code()}: {error.details()}")
            continue
        ended = time.monotonic()
        accepted = [r.transaction_id for r in reply.results if r.status == ACCEPTED]
        others = [(r.transaction_id, r.status) for r in reply.results if r.status != ACCEPTED]
        with calls.lock:
            calls.sent += BATCH
            calls.acked.extend(accepted)
            calls.latencies.append((ended, ended - began))
            if others or len(reply.results) != BATCH:
                calls.failures.append(f"RecordUsage results not all ACCEPTED: {others[:3]}")


def read_invoices(world: World, calls: Calls, stop: threading.Event) -> None:
    while not stop.wait(INVOICE_EVERY_S):
        began = time.monotonic()
        try:
            world.api.invoices.GetInvoice(
                invoices_pb2.GetInvoiceRequest(
                    customer_id=world.customer_id, at=ts(datetime.now(UTC))
                ),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            with calls.lock:
                calls.failures.append(f"GetInvoice {error.code()}: {error.details()}")
            continue
        with calls.lock:
            calls.invoice_calls += 1
            calls.invoice_latencies.append(time.monotonic() - began)


def guarded(target: object, crashes: list[BaseException], *args: object) -> threading.Thread:
    def run() -> None:
        try:
            target(*args)  # type: ignore[operator]
        except BaseException as error:  # reported by the main thread
            crashes.append(error)

    return threading.Thread(target=run, daemon=True)


def machine() -> dict[str, object]:
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        "0",
    )
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_total_mb": round(int(memory) / 1024),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }


def print_table(samples: list[Sample], warm_up: int) -> None:
    print(
        f"\n{'t(s)':>6} {'rss(MB)':>8} {'conns':>5} {'calls':>5} {'p50(ms)':>8}"
        f" {'p99(ms)':>8} {'acked':>7}"
    )
    for n, s in enumerate(samples):
        mark = " warm-up" if n < warm_up else ""
        print(
            f"{s.t_s:6.1f} {s.rss_mb:8.1f} {s.connections:5d} {s.calls:5d} {s.p50_ms:8.1f}"
            f" {s.p99_ms:8.1f} {s.acked:7d}{mark}"
        )


# ---------------------------------------------------------------------------------------
# The soak


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_steady_ingest_keeps_memory_connections_and_latency_flat(tmp_path: Path) -> None:
    pool = {"ACCRUAL_DB_POOL_MAX": str(POOL_MAX)}
    with (
        running_node(tmp_path, extra_env=pool) as server,
        grpc.insecure_channel(server.address) as plain,
    ):
        admin, approver = server.token("admin"), server.token("approver")
        channel = grpc.intercept_channel(plain, WithToken(admin))
        running = RunningServer(server.address, server.database.url, channel, admin, approver)
        world = setup_world(running, name="soak")
        assert server.process is not None
        pid = server.process.pid
        calls = Calls()
        stop = threading.Event()
        crashes: list[BaseException] = []
        samples: list[Sample] = []

        with psycopg.connect(server.database.url, autocommit=True) as monitor:
            began = time.monotonic()
            threads = [
                guarded(send_steadily, crashes, n, world, calls, began, stop)
                for n in range(THREADS)
            ]
            threads.append(guarded(read_invoices, crashes, world, calls, stop))
            for thread in threads:
                thread.start()
            try:
                window_from = began
                next_sample = began + SAMPLE_EVERY_S
                while (now := time.monotonic()) < began + SOAK_SECONDS:
                    time.sleep(max(0.0, next_sample - now))
                    next_sample += SAMPLE_EVERY_S
                    assert server.process.poll() is None, server.log_tail()
                    by_role = connection_counts(monitor)
                    sampled_at = time.monotonic()
                    with calls.lock:
                        window = [d for at, d in calls.latencies if window_from < at <= sampled_at]
                        acked = len(calls.acked)
                    window_from = sampled_at
                    samples.append(
                        Sample(
                            t_s=round(sampled_at - began, 2),
                            rss_mb=round(rss_bytes(pid) / 2**20, 1),
                            connections=sum(by_role.values()),
                            by_role=by_role,
                            calls=len(window),
                            p50_ms=round(percentile(window, 50) * 1000, 1),
                            p99_ms=round(percentile(window, 99) * 1000, 1),
                            acked=acked,
                        )
                    )
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=CALL_TIMEOUT_S + 5)
            elapsed = time.monotonic() - began
            assert not any(t.is_alive() for t in threads), "a client thread hung"

            rows = monitor.execute(
                "SELECT convert_from(payload, 'UTF8')::jsonb->>'transaction_id'"
                " FROM events WHERE event_type = 'UsageRecorded'"
            ).fetchall()
        in_ledger = Counter(str(row[0]) for row in rows)

        acked_ids = calls.acked
        expected_quantity = Decimal(QUANTITY) * len(acked_ids)

        def invoiced_quantity() -> Decimal:
            invoice = world.api.invoices.GetInvoice(
                invoices_pb2.GetInvoiceRequest(
                    customer_id=world.customer_id, at=ts(datetime.now(UTC))
                ),
                timeout=CALL_TIMEOUT_S,
            )
            return sum((Decimal(line.quantity or "0") for line in invoice.lines), Decimal(0))

        # The draft invoice is a projection: give it a moment to catch up.
        deadline = time.monotonic() + 30
        invoiced = invoiced_quantity()
        while invoiced != expected_quantity and time.monotonic() < deadline:
            time.sleep(0.5)
            invoiced = invoiced_quantity()

        assert server.process.poll() is None, server.log_tail()
        exit_code = server.terminate(timeout=30)

    # -- figures ----------------------------------------------------------------------
    warm_up = max(1, int(len(samples) * WARM_UP))
    post = samples[warm_up:]
    third = max(1, len(post) // 3)
    first_third, last_third = post[:third], post[-third:]

    def pooled(window: list[Sample]) -> list[float]:
        start = window[0].t_s - SAMPLE_EVERY_S
        end = window[-1].t_s
        return [d for at, d in calls.latencies if start < at - began <= end]

    first_latencies, last_latencies = pooled(first_third), pooled(last_third)
    p99_first, p99_last = percentile(first_latencies, 99), percentile(last_latencies, 99)
    p50_first, p50_last = percentile(first_latencies, 50), percentile(last_latencies, 50)
    rss_first, rss_last = post[0].rss_mb, post[-1].rss_mb
    rss_max = max(s.rss_mb for s in samples)
    connections_max = max(s.connections for s in samples)
    missing = [tx for tx in acked_ids if in_ledger[tx] == 0]
    doubled = [tx for tx, n in in_ledger.items() if n > 1]
    unacknowledged = sorted(set(in_ledger) - set(acked_ids))

    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "seconds": SOAK_SECONDS,
            "target_rate_per_s": RATE,
            "batch": BATCH,
            "threads": THREADS,
            "pool_max": POOL_MAX,
            "projector_pool_max": PROJECTOR_POOL_MAX,
            "sample_every_s": SAMPLE_EVERY_S,
            "warm_up_samples": warm_up,
        },
        "events_sent": calls.sent,
        "events_acked": len(acked_ids),
        "events_in_ledger": sum(in_ledger.values()),
        "invoiced_quantity": str(invoiced),
        "elapsed_s": round(elapsed, 2),
        "rate_achieved_per_s": round(len(acked_ids) / elapsed, 1),
        "failures": len(calls.failures),
        "record_usage_calls": len(calls.latencies),
        "get_invoice_calls": calls.invoice_calls,
        "get_invoice_p99_ms": round(percentile(calls.invoice_latencies, 99) * 1000, 1),
        "rss_mb": {"first": rss_first, "last": rss_last, "max": rss_max},
        "connections_max": connections_max,
        "connections_allowed": CONNECTIONS_ALLOWED,
        "latency_ms": {
            "p50_first_third": round(p50_first * 1000, 1),
            "p99_first_third": round(p99_first * 1000, 1),
            "p50_last_third": round(p50_last * 1000, 1),
            "p99_last_third": round(p99_last * 1000, 1),
        },
        "server_exit_code": exit_code,
        "samples": [asdict(s) for s in samples],
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=2) + "\n")

    print_table(samples, warm_up)
    print(
        f"soak: sent {calls.sent}, acked {len(acked_ids)} in {elapsed:.1f}s"
        f" ({summary['rate_achieved_per_s']}/s of {RATE}/s);"
        f" rss first/last/max {rss_first}/{rss_last}/{rss_max} MB;"
        f" connections max {connections_max} (allowed {CONNECTIONS_ALLOWED});"
        f" p50 first/last {p50_first * 1000:.1f}/{p50_last * 1000:.1f} ms;"
        f" p99 first/last {p99_first * 1000:.1f}/{p99_last * 1000:.1f} ms;"
        f" failures {len(calls.failures)}"
    )

    # -- verdict ----------------------------------------------------------------------
    assert not crashes, crashes
    assert not calls.failures, calls.failures[:10]
    assert len(samples) >= 5, f"too few samples for a verdict: {len(samples)}"
    assert acked_ids, "nothing was acknowledged"
    assert len(set(acked_ids)) == len(acked_ids), "an event was acknowledged twice"
    assert calls.sent == len(acked_ids)
    achieved = len(acked_ids) / elapsed
    assert achieved >= 0.9 * RATE, f"the steady rate was not held: {achieved:.1f}/s of {RATE}/s"
    assert not missing, f"{len(missing)} acknowledged events not in the ledger: {missing[:5]}"
    assert not doubled, f"{len(doubled)} events in the ledger more than once: {doubled[:5]}"
    assert not unacknowledged, f"events in the ledger never acknowledged: {unacknowledged[:5]}"
    assert invoiced == expected_quantity, (invoiced, expected_quantity)
    growth_mb = rss_last - rss_first
    assert growth_mb <= max(rss_first * RSS_GROWTH_RATIO, RSS_GROWTH_BYTES / 2**20), (
        f"memory grew {growth_mb:.1f} MB ({rss_first} -> {rss_last} MB) after warm-up"
    )
    assert connections_max <= CONNECTIONS_ALLOWED, (
        f"{connections_max} connections, more than {CONNECTIONS_ALLOWED}",
        [s.by_role for s in samples],
    )
    assert first_latencies and last_latencies
    # The trend, not one window: a single slow window (seen when the pool opens a
    # connection under load) must not fail a soak, a rising latency must.
    trend_first = statistics.median(w.p99_ms for w in first_third) / 1000
    trend_last = statistics.median(w.p99_ms for w in last_third) / 1000
    assert trend_last <= P99_FACTOR * trend_first + P99_FLOOR_S, (
        f"windows' p99 rose from {trend_first * 1000:.1f} ms to {trend_last * 1000:.1f} ms"
    )
    worst = max(w.p99_ms for w in post)
    assert worst <= STALL_MS, f"a window's p99 reached {worst} ms: a stall"
    assert exit_code == 0, "accrual serve did not stop cleanly on SIGTERM"
