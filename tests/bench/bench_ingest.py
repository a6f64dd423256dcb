"""Benchmark: usage ingest against the limit (raw COPY), a peer library and gRPC's ceiling.

Run with ``.venv/bin/python tests/bench/bench_ingest.py`` (not part of ``make test``).
It starts its own embedded PostgreSQL (fsync on) and, in one run, measures:

1. the limit: binary COPY of N usage-event-shaped rows into a scratch copy of
   ``events`` (batches of 5,000 per transaction), rows/s;
2. the peer: the ``eventsourcing`` library's PostgreSQL application recorder
   appending the same usage payloads in batches of 1,000 from 8 threads,
   in-process (no RPC at all), events/s;
3. the Python gRPC ceiling: a grpc.aio echo service in its own process, called
   with 64 calls in flight, calls/s and p50/p99;
4. Accrual's RecordUsage through a real ``accrual serve`` on the same database:
   (a) batches of 1,000 events from 8 concurrent clients, (b) single events with
   64 calls in flight; events/s, p50/p99, the server's peak RSS and CPU, and
   p50/p99 of the time each call spent in Accrual's handler (the ``duration_ms``
   of its log line), against which the client's latency shows what gRPC's
   queues and transport add;
5. the same two loads with the projector in its own ``accrual project`` process
   (``ACCRUAL_RUN_PROJECTOR=false`` for the server), as one deploys for heavy
   ingest; the projector's CPU is reported beside the server's.

Each Accrual phase starts once the projections have applied the whole ledger,
so that none pays for applying the phase before's events (how long that took
after the batched phase is printed). Each measured phase, the limit and the
peer's too, starts after a CHECKPOINT, so that none pays for writing out the
pages the phase before left dirty either: a checkpoint that began during the
single-event phase slowed its commits to about 46 ms every half second.

Load comes from a separate process (grpc.aio, N coroutines, requests serialized
before the clock starts) whose own CPU use is reported. Each Accrual row is set
against the reference measured in the same run. Prints one table and writes it
with the machine and versions to tests/bench/results/ingest-<UTC>.json.

Knobs: ACCRUAL_BENCH_SECONDS (per phase, default 10), ACCRUAL_BENCH_COPY_ROWS
(default 200000), ACCRUAL_BENCH_PYSPY=1 (record py-spy profiles of the server
during the Accrual phases, written beside the results).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import psycopg  # noqa: E402
from embedded import cpu_seconds_of, postgres_cpu_seconds  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402
from results_file import RESULTS, write_result  # noqa: E402

from ledger.store import migrate  # noqa: E402
from services.api.accrual.v1 import (  # noqa: E402
    catalog_pb2,
    catalog_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    usage_pb2,
)
from services.embedded_db import EmbeddedPostgres  # noqa: E402

SECONDS = float(os.environ.get("ACCRUAL_BENCH_SECONDS", "10"))
COPY_ROWS = int(os.environ.get("ACCRUAL_BENCH_COPY_ROWS", "200000"))
PYSPY = os.environ.get("ACCRUAL_BENCH_PYSPY", "") not in ("", "0")
WARMUP_S = 1.0
COPY_BATCH = 5_000
USAGE_BATCH = 1_000
BATCH_CLIENTS = 8
SINGLE_CLIENTS = 64
CUSTOMERS = 100
ECHO_METHOD = "/bench.Echo/Echo"
USAGE_METHOD = "/accrual.v1.UsageService/RecordUsage"
# Fixed-width placeholders, replaced in the serialized bytes (lengths must not change).
TX_PLACEHOLDER = b"TXID0000000000000"  # prefix letter + 16 digits after "TX"
CUSTOMER_PLACEHOLDER = b"cust-000"

COPY_TYPES = [
    "int8",
    "int4",
    "text",
    "int8",
    "text",
    "int4",
    "bytea",
    "bytea",
    "timestamptz",
    "timestamptz",
    "text",
    "text",
    "bytea",
    "bytea",
]
COPY_COLUMNS = (
    "seq, partition, stream_id, stream_version, event_type, schema_version, payload,"
    " metadata, occurred_at, recorded_at, idempotency_key, request_hash, prev_hash, hash"
)


# ---------------------------------------------------------------------------------------
# Helpers shared by the processes


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def handler_times(log: Path, window: tuple[float, float]) -> dict[str, int | float]:
    """p50/p99 of RecordUsage's time in Accrual's handler, from the ``duration_ms``
    the server logs for each call, over the successful calls that ended in
    ``window`` (the client times only those). Set beside the client's latency, it
    shows how much of that is spent outside the handler: in gRPC's queues and
    transport, both sides, and in the checks and decoding that come before it."""
    durations = []
    with log.open("rb") as lines:
        for line in lines:
            if b'"method":"RecordUsage"' not in line:
                continue
            entry = json.loads(line)
            ended = datetime.fromisoformat(entry["timestamp"]).timestamp()
            served = entry.get("event") == "rpc" and entry.get("code") == "OK"
            if served and window[0] <= ended <= window[1]:
                durations.append(float(entry["duration_ms"]))
    durations.sort()
    return {
        "handler_calls": len(durations),
        "handler_p50_ms": percentile(durations, 0.50),
        "handler_p99_ms": percentile(durations, 0.99),
    }


def customer_id(n: int) -> str:
    return f"cust-{n % CUSTOMERS:03d}"


def single_event_request() -> bytes:
    """One serialized RecordUsageRequest with one event, with placeholders to fill."""
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(seconds=30))
    request = usage_pb2.RecordUsageRequest(
        events=[
            usage_pb2.UsageEvent(
                transaction_id=TX_PLACEHOLDER.decode(),
                customer_id=CUSTOMER_PLACEHOLDER.decode(),
                event_type="completion",
                timestamp=stamp,
                properties={"model": "small", "tokens": "1234"},
            )
        ]
    )
    data = request.SerializeToString(deterministic=True)
    assert data.count(TX_PLACEHOLDER) == 1 and data.count(CUSTOMER_PLACEHOLDER) == 1
    return data


def event_bytes(template: bytes, prefix: str, n: int) -> bytes:
    """A single-event request for transaction ``n``: repeated fields concatenate, so
    joining k of these is a valid k-event request."""
    tx = b"TX" + prefix.encode() + b"%014d" % n
    assert len(tx) == len(TX_PLACEHOLDER)
    return template.replace(TX_PLACEHOLDER, tx).replace(
        CUSTOMER_PLACEHOLDER, customer_id(n).encode()
    )


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------
# Child process: the echo server


def echo_server(port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Child process: the load generator


def load_generator(config: dict[str, Any]) -> None:
    """Prints START and STOP around the measured window, then one JSON line."""
    template = single_event_request()
    per_call = int(config["events_per_call"])
    prefix = str(config["prefix"])
    budget = int(config["budget_calls"])
    if config["kind"] == "echo":
        requests = [template] * budget
    else:
        requests = [
            b"".join(event_bytes(template, prefix, c * per_call + i) for i in range(per_call))
            for c in range(budget)
        ]
    metadata = tuple(tuple(pair) for pair in config["metadata"])
    concurrency = int(config["concurrency"])
    seconds = float(config["seconds"])

    async def main() -> dict[str, Any]:
        channels = [
            grpc.aio.insecure_channel(config["target"]) for _ in range(int(config["channels"]))
        ]
        calls = [ch.unary_unary(config["method"]) for ch in channels]
        for ch in channels:
            await ch.channel_ready()
        latencies: list[float] = []
        errors: dict[str, int] = {}
        state = {"next": 0, "ok": 0, "measuring": False, "stop": False}

        async def client(k: int) -> None:
            call = calls[k % len(calls)]
            while not state["stop"]:
                index = state["next"]
                if index >= len(requests):
                    return
                state["next"] = index + 1
                started = time.perf_counter()
                try:
                    await call(requests[index], metadata=metadata, timeout=60)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                    continue
                state["ok"] += 1
                if state["measuring"]:
                    latencies.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(client(k)) for k in range(concurrency)]
        await asyncio.sleep(WARMUP_S)
        state["measuring"] = True
        print("START", flush=True)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds and state["next"] < len(requests):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        state["measuring"] = False
        measured = len(latencies)
        print("STOP", flush=True)
        state["stop"] = True
        await asyncio.gather(*tasks)
        for ch in channels:
            await ch.close()
        latencies.sort()
        cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        return {
            "calls": measured,
            "seconds": elapsed,
            "calls_per_s": measured / elapsed,
            "events_per_s": measured * per_call / elapsed,
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "client_cpu_pct": 100 * cpu / elapsed,
            "ok_calls_total": state["ok"],
            "errors": errors,
            "budget_exhausted": state["next"] >= len(requests),
        }

    print(json.dumps(asyncio.run(main())), flush=True)


# ---------------------------------------------------------------------------------------
# The driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(address: str, process: subprocess.Popen[bytes], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{process.args} exited"
            with contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
    raise RuntimeError(f"nothing serving on {address}")


class Sampler:
    """Peak VmRSS every 0.2 s and CPU seconds of a process (and PostgreSQL) in a window."""

    def __init__(self, pid: int, postmaster: int | None = None, extra: int | None = None) -> None:
        self.pid, self.postmaster, self.extra = pid, postmaster, extra
        self.peak_rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu: dict[str, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                self.peak_rss_kb = max(self.peak_rss_kb, status_kb(self.pid, "VmRSS"))
            self._stop.wait(0.2)

    def mark(self, name: str) -> None:
        self.cpu[f"{name}_wall"] = time.time()  # first: the window's log lines are read by it
        self.cpu[f"{name}_server"] = cpu_seconds_of(self.pid)
        if self.postmaster is not None:
            self.cpu[f"{name}_postgres"] = postgres_cpu_seconds(self.postmaster)
        if self.extra is not None:
            self.cpu[f"{name}_extra"] = cpu_seconds_of(self.extra)
        self.cpu[f"{name}_t"] = time.perf_counter()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def window(self) -> tuple[float, float]:
        """The measured span, START to STOP, in seconds since the epoch."""
        return self.cpu["START_wall"], self.cpu["STOP_wall"]

    def cpu_pct(self, who: str) -> float:
        if f"STOP_{who}" not in self.cpu:
            return float("nan")
        wall = self.cpu["STOP_t"] - self.cpu["START_t"]
        return 100 * (self.cpu[f"STOP_{who}"] - self.cpu[f"START_{who}"]) / wall


def run_load(config: dict[str, Any], sampler: Sampler | None, profile: Path | None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    spy: subprocess.Popen[bytes] | None = None
    try:
        process = subprocess.Popen(
            [sys.executable, __file__, "load", handle.name],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert process.stdout is not None
        result: dict[str, Any] = {}
        for line in process.stdout:
            word = line.strip()
            if word in ("START", "STOP") and sampler is not None:
                sampler.mark(word)
            if word == "START" and profile is not None and sampler is not None:
                spy = start_pyspy(sampler.pid, profile, config["seconds"])
            elif word.startswith("{"):
                result = json.loads(word)
        if process.wait() != 0 or not result:
            raise RuntimeError(f"load generator failed ({process.returncode})")
        return result
    finally:
        os.unlink(handle.name)
        if spy is not None:
            spy.wait(timeout=60)


def start_pyspy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    binary = Path(sys.executable).with_name("py-spy")
    found = str(binary) if binary.exists() else shutil.which("py-spy")
    if found is None:
        print("  (py-spy not found; no profile)")
        return None
    return subprocess.Popen(
        [
            *(found, "record", "--format", "raw", "--rate", "200"),
            *("--duration", str(int(seconds)), "--pid", str(pid), "--output", str(out)),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def copy_limit(url: str) -> dict[str, float]:
    """Binary COPY of usage-shaped rows into a scratch copy of ``events``."""
    now = datetime.now(UTC)
    rows = []
    versions: dict[str, int] = {}
    prev = b"\0" * 32
    for n in range(COPY_ROWS):
        customer = customer_id(n)
        stream = f"usage-{customer}"
        versions[stream] = versions.get(stream, 0) + 1
        occurred = now - timedelta(seconds=n % 86_400)
        payload = (
            f'{{"customer_id":"{customer}","event_type":"completion","occurred_at":'
            f'"{occurred.isoformat()}","properties":{{"model":"small","tokens":"{n % 5000}"}},'
            f'"transaction_id":"copy-{n:016d}"}}'
        ).encode()
        digest = hashlib.sha256(payload).hexdigest()
        row_hash = hashlib.sha256(prev + payload).digest()
        rows.append(
            (
                n + 1,
                0,
                stream,
                versions[stream],
                "UsageRecorded",
                1,
                payload,
                b'{"actor":"bench","request_id":"0123456789abcdef"}',
                occurred,
                now,
                f"usage:{customer}:copy-{n:016d}",
                digest,
                prev,
                row_hash,
            )
        )
        prev = row_hash
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE copy_limit"
            " (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
        )
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, COPY_ROWS, COPY_BATCH):
                with conn.transaction():
                    command = f"COPY copy_limit ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                    with cur.copy(command) as copy:
                        copy.set_types(COPY_TYPES)
                        for row in rows[start : start + COPY_BATCH]:
                            copy.write_row(row)
        elapsed = time.perf_counter() - started
        count = conn.execute("SELECT count(*) FROM copy_limit").fetchone()
        assert count is not None and count[0] == COPY_ROWS, count
        conn.execute("DROP TABLE copy_limit")
        conn.commit()
    return {"rows": COPY_ROWS, "seconds": elapsed, "rows_per_s": COPY_ROWS / elapsed}


def eventsourcing_peer(url: str) -> dict[str, float]:
    """The same usage payloads appended by the ``eventsourcing`` library's PostgreSQL
    application recorder, 1,000 per transaction (one aggregate each) from 8 threads."""
    from eventsourcing.persistence import StoredEvent  # noqa: PLC0415 - bench only
    from eventsourcing.postgres import (  # noqa: PLC0415
        PostgresApplicationRecorder,
        PostgresDatastore,
    )

    info = psycopg.conninfo.conninfo_to_dict(url)
    datastore = PostgresDatastore(
        dbname=str(info.get("dbname", "postgres")),
        host=str(info.get("host", "127.0.0.1")),
        port=str(info.get("port", "5432")),
        user=str(info.get("user", "postgres")),
        password=str(info.get("password", "")),
        pool_size=BATCH_CLIENTS,
    )
    recorder = PostgresApplicationRecorder(datastore, events_table_name="peer_events")
    recorder.create_table()
    stop = time.perf_counter() + SECONDS

    def append(worker: int) -> int:
        written = 0
        while time.perf_counter() < stop:
            originator = uuid.uuid4()
            batch = [
                StoredEvent(originator, v + 1, "accrual.usage:UsageRecorded", _payload(worker, n))
                for v, n in enumerate(range(written, written + USAGE_BATCH))
            ]
            recorder.insert_events(batch)
            written += USAGE_BATCH
        return written

    started = time.perf_counter()
    with ThreadPoolExecutor(BATCH_CLIENTS) as pool:
        total = sum(pool.map(append, range(BATCH_CLIENTS)))
    elapsed = time.perf_counter() - started
    datastore.close()
    return {"events": total, "seconds": elapsed, "events_per_s": total / elapsed}


def _payload(worker: int, n: int) -> bytes:
    """A usage payload shaped like Accrual's (canonical JSON, about 180 bytes)."""
    return (
        f'{{"customer_id":"{customer_id(n)}","event_type":"completion","occurred_at":'
        f'"2026-11-24T00:00:00.000000Z","properties":{{"model":"small","tokens":"{n % 5000}"}},'
        f'"transaction_id":"peer-{worker}-{n:012d}"}}'
    ).encode()


def setup_world(address: str, admin: tuple[tuple[str, str], ...]) -> None:
    """A metric, a product and the customers: all RecordUsage needs is a known customer
    (and a metric to check quantities against); no rate card or contract is read."""
    with grpc.insecure_channel(address) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        contracts = contracts_pb2_grpc.ContractServiceStub(channel)
        catalog.CreateBillableMetric(
            catalog_pb2.CreateBillableMetricRequest(
                metric=catalog_pb2.BillableMetric(
                    metric_id="tokens",
                    name="LLM tokens",
                    event_type="completion",
                    aggregation="SUM",
                    property="tokens",
                )
            ),
            metadata=admin,
            timeout=30,
        )
        catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(
                product=catalog_pb2.Product(product_id="llm", name="LLM", metric_id="tokens")
            ),
            metadata=admin,
            timeout=30,
        )
        for n in range(CUSTOMERS):
            contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(
                    customer=contracts_pb2.Customer(customer_id=customer_id(n), name=f"C {n}")
                ),
                metadata=admin,
                timeout=30,
            )


def projections_caught_up(url: str, within_s: float = 300) -> float:
    """Wait until every live projection has applied the whole ledger; return how
    long that took. Each phase starts from there: otherwise the projector would
    still be applying the phase before's events during it."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - started < within_s:
            row = conn.execute(
                "SELECT (SELECT last_seq FROM ledger_heads WHERE partition = 0)"
                " - coalesce(min(c.seq), 0) FROM projection_checkpoints c"
                " JOIN projection_registry r USING (name, version) WHERE r.state = 'live'"
            ).fetchone()
            if row is not None and row[0] <= 0:
                return time.monotonic() - started
            time.sleep(0.1)
    raise RuntimeError(f"the projections did not catch up within {within_s:.0f} s")


def checkpoint(url: str) -> None:
    """Write out every dirty page now, so that the next phase pays only for its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def usage_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE event_type = 'UsageRecorded'")
        found = row.fetchone()
    assert found is not None
    return int(found[0])


@contextlib.contextmanager
def accrual_serve(
    data_dir: Path, pg_port: int, grpc_port: int, projector: str | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None]]:
    """``accrual serve`` and, when ``projector`` names its command, ``accrual
    project`` beside it, with the server's own projector off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCRUAL_", "OTEL_"))}
    env |= {
        "ACCRUAL_DATA_DIR": str(data_dir),
        "ACCRUAL_EMBEDDED_PG_PORT": str(pg_port),
        "ACCRUAL_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "ACCRUAL_LOG_FORMAT": "json",
        "ACCRUAL_RUN_PROJECTOR": "false" if projector else "true",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    commands = [["serve"]] + ([[projector]] if projector else [])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            with (data_dir / f"{command[0]}.log").open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.cli", *command],
                        env=env,
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        yield processes[0], processes[1] if projector else None
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def accrual_phases(
    data_dir: Path,
    pg_port: int,
    postmaster: int,
    stamp: str,
    url: str,
    *,
    separate_projector: bool = False,
) -> dict[str, Any]:
    """RecordUsage batched and single through a real ``accrual serve``: with its
    projector in the server, or (the deployment for heavy ingest) with the
    projector in its own ``accrual project`` process, whose CPU is reported too."""
    grpc_port = free_port()
    figures: dict[str, Any] = {}
    projector = "project" if separate_projector else None
    with accrual_serve(data_dir, pg_port, grpc_port, projector) as (serve, project):
        address = f"127.0.0.1:{grpc_port}"
        wait_port(address, serve)
        deadline = time.monotonic() + 60
        while not (data_dir / "admin-token").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        token = (data_dir / "admin-token").read_text().strip()
        admin = (("authorization", f"Bearer {token}"),)
        if not separate_projector:
            setup_world(address, admin)  # the second topology finds it in place
        rows_before = usage_rows(url)
        acknowledged = 0
        tag = "p" if separate_projector else ""
        phases = [
            ("batched", "d" if separate_projector else "b", USAGE_BATCH, BATCH_CLIENTS, 60),
            ("single", "t" if separate_projector else "s", 1, SINGLE_CLIENTS, 20_000),
        ]
        with Sampler(serve.pid, postmaster) as whole:
            for name, prefix, per_call, clients, rate_guess in phases:
                drained_s = projections_caught_up(url)
                checkpoint(url)
                print(f"   RecordUsage {name}: {per_call}/call, {clients} clients", flush=True)
                profile = RESULTS / f"ingest-{stamp}-{name}{tag}.pyspy.txt" if PYSPY else None
                extra = project.pid if project is not None else None
                with Sampler(serve.pid, postmaster, extra) as sampler:
                    config = {
                        "kind": "usage",
                        "target": address,
                        "method": USAGE_METHOD,
                        "metadata": [list(pair) for pair in admin],
                        "events_per_call": per_call,
                        "prefix": prefix,
                        "budget_calls": budget(rate_guess),
                        "concurrency": clients,
                        "channels": min(clients, 4),
                        "seconds": SECONDS,
                    }
                    result = run_load(config, sampler, profile)
                result["server_cpu_pct"] = sampler.cpu_pct("server")
                result["postgres_cpu_pct"] = sampler.cpu_pct("postgres")
                result["projector_cpu_pct"] = sampler.cpu_pct("extra")
                result["server_peak_rss_kb"] = sampler.peak_rss_kb
                result["projections_caught_up_before_s"] = drained_s
                result |= handler_times(data_dir / "serve.log", sampler.window())
                if profile is not None:
                    result["pyspy_profile"] = profile.name
                figures[name] = result
                acknowledged += result["ok_calls_total"] * per_call
            figures["server_vmhwm_kb"] = status_kb(serve.pid, "VmHWM")
            if project is not None:
                figures["projector_vmhwm_kb"] = status_kb(project.pid, "VmHWM")
        figures["server_peak_rss_kb"] = whole.peak_rss_kb
        figures["ledger_check"] = {
            "acknowledged": acknowledged,
            "written": usage_rows(url) - rows_before,
        }
    return figures


def _handler_share(row: dict[str, Any]) -> str:
    return (
        f"{row['handler_p50_ms']:.1f}/{row['handler_p99_ms']:.1f} ms"
        f" of the client's {row['p50_ms']:.1f}/{row['p99_ms']:.1f}"
    )


def pg_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def budget(rate_guess: float) -> int:
    return int(rate_guess * (SECONDS + WARMUP_S + 2))


def main() -> int:
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        pg_port = free_port()
        embedded = EmbeddedPostgres(data_dir / "pgdata", pg_port, fsync=True)
        url = embedded.start()
        try:
            migrate.upgrade(url)
            version = pg_version(url)
            postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])

            print(f"1. raw binary COPY of {COPY_ROWS:,} rows ...", flush=True)
            checkpoint(url)
            figures["copy_limit"] = copy_limit(url)

            print("2. eventsourcing peer, 8 threads x 1,000/txn ...", flush=True)
            checkpoint(url)
            figures["peer"] = eventsourcing_peer(url)

            print("3. gRPC echo, 64 in flight ...", flush=True)
            checkpoint(url)
            echo_port = free_port()
            echo = subprocess.Popen([sys.executable, __file__, "echo", str(echo_port)], cwd=ROOT)
            try:
                wait_port(f"127.0.0.1:{echo_port}", echo)
                with Sampler(echo.pid) as sampler:
                    result = run_load(
                        {
                            "kind": "echo",
                            "target": f"127.0.0.1:{echo_port}",
                            "method": ECHO_METHOD,
                            "metadata": [],
                            "events_per_call": 1,
                            "prefix": "e",
                            "budget_calls": budget(40_000),
                            "concurrency": SINGLE_CLIENTS,
                            "channels": 4,
                            "seconds": SECONDS,
                        },
                        sampler,
                        None,
                    )
                result["server_cpu_pct"] = sampler.cpu_pct("server")
                result["server_peak_rss_kb"] = sampler.peak_rss_kb
                figures["echo"] = result
            finally:
                echo.terminate()
                echo.wait(timeout=30)

            print("4. accrual serve, projector in the server ...", flush=True)
            figures["in_process"] = accrual_phases(data_dir, pg_port, postmaster, stamp, url)
            print("5. accrual serve and accrual project, separate processes ...", flush=True)
            figures["split"] = accrual_phases(
                data_dir, pg_port, postmaster, stamp, url, separate_projector=True
            )
        finally:
            embedded.stop()

    copy_rate = figures["copy_limit"]["rows_per_s"]
    echo_r = figures["echo"]
    peer_rate = figures["peer"]["events_per_s"]
    for topology in ("in_process", "split"):
        batched, single = figures[topology]["batched"], figures[topology]["single"]
        figures[topology]["ratios"] = {
            "batched_vs_copy": batched["events_per_s"] / copy_rate,
            "batched_vs_peer": batched["events_per_s"] / peer_rate,
            "single_vs_echo": single["events_per_s"] / echo_r["calls_per_s"],
            "single_p99_vs_echo_p99": single["p99_ms"] / echo_r["p99_ms"],
            "batched_p99_vs_echo_p99": batched["p99_ms"] / echo_r["p99_ms"],
        }

    def mb(kb: float) -> str:
        return f"{kb / 1024:,.0f}"

    print(
        f"\nAccrual ingest benchmark: {SECONDS:g} s per phase, "
        f"{os.cpu_count()} CPUs, PostgreSQL {version} (fsync on)"
    )
    head = (
        f"  {'phase':<46} {'rate/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs ref':>22} {'srv CPU%':>8} {'prj CPU%':>8} {'pg CPU%':>8} {'cli CPU%':>8}"
        f" {'RSS MB':>7}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    print(f"  {'limit: binary COPY, 5,000/txn (rows)':<46} {copy_rate:>10,.0f}")
    print(f"  {'peer: eventsourcing, 1,000/txn x 8 (events)':<46} {peer_rate:>10,.0f}")
    print(
        f"  {'ceiling: gRPC echo, 64 in flight (calls)':<46} {echo_r['calls_per_s']:>10,.0f} "
        f"{echo_r['p50_ms']:>8.2f} {echo_r['p99_ms']:>8.2f} {'':>22} "
        f"{echo_r['server_cpu_pct']:>8.0f} {'':>8} {'':>8} {echo_r['client_cpu_pct']:>8.0f} "
        f"{mb(echo_r['server_peak_rss_kb']):>7}"
    )
    for topology, where in (("in_process", "projector in server"), ("split", "own projector")):
        run, ratios = figures[topology], figures[topology]["ratios"]
        batch_versus = f"{ratios['batched_vs_copy']:.1%} COPY {ratios['batched_vs_peer']:.1f}x peer"
        for label, row, versus in (
            (f"RecordUsage 1,000/call x 8, {where}", run["batched"], batch_versus),
            (
                f"RecordUsage 1/call x 64, {where}",
                run["single"],
                f"{ratios['single_vs_echo']:.1%} of echo",
            ),
        ):
            projector_cpu = row["projector_cpu_pct"]
            print(
                f"  {label:<46} {row['events_per_s']:>10,.0f} {row['p50_ms']:>8.2f} "
                f"{row['p99_ms']:>8.2f} {versus:>22} {row['server_cpu_pct']:>8.0f} "
                f"{'' if math.isnan(projector_cpu) else f'{projector_cpu:.0f}':>8} "
                f"{row['postgres_cpu_pct']:>8.0f} {row['client_cpu_pct']:>8.0f} "
                f"{mb(row['server_peak_rss_kb']):>7}"
            )
        print(
            f"  {where}: single-event p99 / echo p99 {ratios['single_p99_vs_echo_p99']:.1f}x;"
            f" server VmHWM {mb(run['server_vmhwm_kb'])} MB;"
            f" ledger rows written {run['ledger_check']['written']:,}"
            f" / acknowledged {run['ledger_check']['acknowledged']:,};"
            f" projections caught up {run['single']['projections_caught_up_before_s']:.1f} s"
            " after the batched phase"
        )
        print(
            f"  {where}: in Accrual's handler (p50/p99 of its logged duration_ms),"
            f" batched {_handler_share(run['batched'])}; single {_handler_share(run['single'])}"
        )
    for name, row in (
        ("echo", echo_r),
        *(
            (f"{t} {k}", figures[t][k])
            for t in ("in_process", "split")
            for k in ("batched", "single")
        ),
    ):
        if row["errors"] or row["budget_exhausted"]:
            print(
                f"  NOTE {name}: errors {row['errors']}, budget exhausted {row['budget_exhausted']}"
            )

    details = {
        "postgres": version,
        "grpc": grpc.__version__,
        "seconds_per_phase": SECONDS,
        "copy_rows": COPY_ROWS,
        # Runs before 2026-11-24T14:06 started each phase with the projector
        # possibly still applying the phase before's events.
        "phases_start_with_projections_caught_up": True,
        # Results without this field did not start each phase with a CHECKPOINT.
        "phases_start_after_checkpoint": True,
        "figures": figures,
    }
    write_result("ingest", details, stamp)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "echo":
        echo_server(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        load_generator(json.loads(Path(sys.argv[2]).read_text()))
    else:
        sys.exit(main())
