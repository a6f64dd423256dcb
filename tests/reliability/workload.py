"""A Jepsen-style workload against a real `accrual serve` process, and its history.

`Node` runs `accrual serve` as a subprocess on its own embedded PostgreSQL (or on a
database URL that may point through a faulty proxy), on fixed ports so that it can
be killed and restarted in place. `Workload` runs concurrent clients that record
usage in small batches, retry the *same* transaction ids after every
indeterminate outcome, publish new price versions (four eyes) and finalize
invoices; every invocation is logged as an `Op` for the checker.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.accrual.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from services.auth.credentials import issue_token
from services.embedded_db import EmbeddedPostgres, free_port

STARTUP_S = 60
SERVING = health_pb2.HealthCheckResponse.SERVING
ROOT = Path(__file__).resolve().parents[2]

# Definite refusals: the call did not happen.
FAILED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
    }
)
# The call may or may not have happened.
INDETERMINATE_CODES = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# A service must never answer these; they are counted and asserted absent.
BUG_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]

ACCEPTED = usage_pb2.UsageEventResult.ACCEPTED
DUPLICATE = usage_pb2.UsageEventResult.DUPLICATE
REJECTED = usage_pb2.UsageEventResult.REJECTED


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def ts(instant: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


# ---------------------------------------------------------------------------------------
# The service under test


@dataclass
class Node:
    """One `accrual serve` process on fixed ports; restartable in place.

    Without ``database_url`` serve starts (and owns) the embedded PostgreSQL in
    ``data_dir/pgdata`` and writes the local admin and approver tokens. With it,
    the database was started by the test (``pg_port`` is its real port) and serve
    connects through ``database_url`` (a proxy, say); tokens are issued directly.
    """

    data_dir: Path
    pg_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def database(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.data_dir / "pgdata", self.pg_port)

    @property
    def owner_url(self) -> str:
        """The owner's URL on the real port (never through a proxy)."""
        return self.database.url

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCRUAL_", "OTEL_"))}
        env |= {
            "ACCRUAL_DATA_DIR": str(self.data_dir),
            "ACCRUAL_EMBEDDED_PG_PORT": str(self.pg_port),
            "ACCRUAL_GRPC_ADDRESS": self.address,
            "ACCRUAL_LOG_FORMAT": "json",
            "ACCRUAL_FINALIZE_GRACE_MINUTES": "0",
            "ACCRUAL_HEALTH_CHECK_INTERVAL_S": "1",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
        }
        if self.database_url:
            env["ACCRUAL_DATABASE_URL"] = self.database_url
        return env | self.extra_env

    def cli_env(self) -> dict[str, str]:
        """Environment for one-off CLI commands: the owner's URL on the real port."""
        env = self.env()
        env["ACCRUAL_DATABASE_URL"] = self.owner_url
        return env

    def prepare_external(self) -> None:
        """For a given database URL: start the embedded server, migrate, issue tokens."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database.start()
        subprocess.run(
            [sys.executable, "-m", "services.cli", "migrate"],
            env=self.cli_env(),
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
        with psycopg.connect(self.owner_url) as conn:
            self._tokens["admin"] = issue_token(conn, "rel-admin", ["admin"]).token
            self._tokens["approver"] = issue_token(conn, "rel-approver", ["pricing-approver"]).token

    def token(self, who: str) -> str:
        if who in self._tokens:
            return self._tokens[who]
        return (self.data_dir / f"{who}-token").read_text().strip()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve"],
                env=self.env(),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.starts += 1
        self.wait_serving()

    def health(self, channel: grpc.Channel, timeout: float = 1.0) -> int:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return int(reply.status)

    def wait_serving(self, within_s: float = STARTUP_S) -> float:
        """Wait until health says SERVING; return the seconds it took."""
        started = time.monotonic()
        deadline = started + within_s
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            while time.monotonic() < deadline:
                assert self.process is not None
                assert self.process.poll() is None, f"serve exited\n{self.log_tail()}"
                try:
                    if self.health(channel) == SERVING:
                        return time.monotonic() - started
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"accrual serve not SERVING within {within_s}s\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no pool close; the embedded database keeps running."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            return int(self.process.returncode)
        self.process.send_signal(signal.SIGTERM)
        try:
            return int(self.process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"accrual serve did not exit {timeout}s after SIGTERM\n{self.log_tail()}"
            ) from None

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.database.is_running():
            self.database.stop(mode="immediate")


@contextlib.contextmanager
def running_node(data_dir: Path, **kwargs: object) -> Iterator[Node]:
    node = Node(data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        if node.database_url:
            node.prepare_external()
        node.start()
        yield node
    finally:
        node.cleanup()


# ---------------------------------------------------------------------------------------
# The billable world


@dataclass(frozen=True)
class World:
    now: datetime
    start: datetime
    metric_id: str
    product_id: str
    rate_card_id: str
    customers: tuple[str, ...]

    def contract_id(self, customer: str) -> str:
        return f"{customer}-c1"

    def first_invoice_id(self, customer: str) -> str:
        return f"in-{self.contract_id(customer)}-1"

    @property
    def first_period_instant(self) -> datetime:
        return self.now - timedelta(days=20)


@dataclass(frozen=True)
class Api:
    catalog: catalog_pb2_grpc.CatalogServiceStub
    contracts: contracts_pb2_grpc.ContractServiceStub
    usage: usage_pb2_grpc.UsageServiceStub
    invoices: invoices_pb2_grpc.InvoiceServiceStub
    admin: list[tuple[str, str]]
    approver: list[tuple[str, str]]

    @classmethod
    def of(cls, channel: grpc.Channel, node: Node) -> Api:
        return cls(
            catalog_pb2_grpc.CatalogServiceStub(channel),
            contracts_pb2_grpc.ContractServiceStub(channel),
            usage_pb2_grpc.UsageServiceStub(channel),
            invoices_pb2_grpc.InvoiceServiceStub(channel),
            bearer(node.token("admin")),
            bearer(node.token("approver")),
        )


def rate_card_request(world: World, price: str, effective_from: datetime) -> object:
    return catalog_pb2.DraftRateCardRequest(
        rate_card_id=world.rate_card_id,
        name="List prices",
        currency="USD",
        effective_from=ts(effective_from),
        rates=[catalog_pb2.Rate(product_id=world.product_id, model="per_unit", unit_price=price)],
        reason="reliability price change",
        request_id=uuid.uuid4().hex,
    )


def publish(api: Api, request: object, timeout: float) -> int:
    """Draft as admin, approve as the approver, publish as admin: the new version."""
    draft = api.catalog.DraftRateCard(request, metadata=api.admin, timeout=timeout)
    api.catalog.ApproveRateCardDraft(
        catalog_pb2.ApproveRateCardDraftRequest(
            rate_card_id=draft.rate_card_id, draft=draft.draft, reason="reviewed"
        ),
        metadata=api.approver,
        timeout=timeout,
    )
    card = api.catalog.PublishRateCardDraft(
        catalog_pb2.PublishRateCardDraftRequest(
            rate_card_id=draft.rate_card_id,
            draft=draft.draft,
            reason="reliability price change",
            request_id=request.request_id,  # type: ignore[attr-defined]
        ),
        metadata=api.admin,
        timeout=timeout,
    )
    return int(card.consistency_token)


def setup_world(node: Node, customers: int = 3) -> World:
    """A metric, a product, a four-eyes rate card and customers on contracts ~40 days old."""
    now = datetime.now(UTC)
    start = (now - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
    world = World(
        now,
        start,
        "tokens",
        "llm",
        "list",
        tuple(f"cust{n}" for n in range(customers)),
    )
    with grpc.insecure_channel(node.address, options=CHANNEL_OPTIONS) as channel:
        api = Api.of(channel, node)
        api.catalog.CreateBillableMetric(
            catalog_pb2.CreateBillableMetricRequest(
                metric=catalog_pb2.BillableMetric(
                    metric_id=world.metric_id,
                    name="LLM tokens",
                    event_type="completion",
                    aggregation="SUM",
                    property="tokens",
                )
            ),
            metadata=api.admin,
            timeout=10,
        )
        api.catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(
                product=catalog_pb2.Product(
                    product_id=world.product_id, name="LLM", metric_id=world.metric_id
                )
            ),
            metadata=api.admin,
            timeout=10,
        )
        publish(api, rate_card_request(world, "0.0015", start), timeout=10)
        for customer in world.customers:
            api.contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(
                    customer=contracts_pb2.Customer(customer_id=customer, name=f"{customer} corp")
                ),
                metadata=api.admin,
                timeout=10,
            )
            api.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    contract=contracts_pb2.Contract(
                        contract_id=world.contract_id(customer),
                        customer_id=customer,
                        rate_card_id=world.rate_card_id,
                        starts_at=ts(start),
                    )
                ),
                metadata=api.admin,
                timeout=10,
            )
    return world


# ---------------------------------------------------------------------------------------
# The history


@dataclass(frozen=True)
class Op:
    """One invocation (each retry is its own op), as a Jepsen history records it."""

    client: int
    kind: str  # usage, publish, finalize
    ids: tuple[str, ...]  # usage: "customer/transaction"; finalize: the invoice id
    invoked_at: float  # time.monotonic()
    completed_at: float
    outcome: str  # ok, failed, indeterminate
    code: str = "OK"
    # usage: (key, status name, seq) per event of an ok call
    results: tuple[tuple[str, str, int], ...] = ()
    token: int = 0  # the consistency token of an ok reply


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def fault(self, what: str) -> None:
        with self.lock:
            self.faults.append((time.monotonic(), what))


def classify(error: grpc.RpcError) -> tuple[str, str]:
    code = error.code()  # type: ignore[attr-defined]
    name = code.name if code is not None else "NONE"
    if code in FAILED_CODES:
        return "failed", name
    return "indeterminate", name


class Workload:
    """Concurrent clients until ``stop()``; every invocation logged in ``history``."""

    def __init__(
        self,
        node: Node,
        world: World,
        *,
        clients: int = 6,
        batch: int = 5,
        deadline_s: float = 3.0,
        seed: int = 1,
        publish_every: float = 0.03,
        finalize_every: float = 0.03,
    ) -> None:
        self.node, self.world = node, world
        self.clients, self.batch, self.deadline_s = clients, batch, deadline_s
        self.seed = seed
        self.publish_every, self.finalize_every = publish_every, finalize_every
        self.history = History()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._finalized: set[str] = set()
        self._finalize_lock = threading.Lock()
        self.started_at = 0.0
        self.stopped_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True)
            for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, within_s: float = 30) -> History:
        self._stop.set()
        deadline = time.monotonic() + within_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in self._threads if t.is_alive()]
        assert not hung, f"client threads hung after stop: {hung}"
        self.stopped_at = time.monotonic()
        return self.history

    def run_for(self, seconds: float) -> None:
        time.sleep(seconds)

    # --- one client ---------------------------------------------------------------

    def _client(self, client: int) -> None:
        try:
            with grpc.insecure_channel(self.node.address, options=CHANNEL_OPTIONS) as channel:
                self._loop(client, Api.of(channel, self.node))
        except BaseException as error:  # reported by the checker
            self.history.crashes.append(f"client {client}: {error!r}")

    def _loop(self, client: int, api: Api) -> None:
        rng = random.Random(self.seed * 1000 + client)
        batch_no = 0
        # An indeterminate call is retried with the very same request until definite.
        pending: tuple[str, object, tuple[str, ...]] | None = None
        while not self._stop.is_set():
            if pending is None:
                roll = rng.random()
                if client == 0 and roll < self.publish_every:
                    price = f"0.00{rng.randrange(10, 99)}"
                    at = self.world.now - timedelta(days=rng.randrange(1, 5))
                    pending = ("publish", rate_card_request(self.world, price, at), ())
                elif client == 1 and roll < self.finalize_every and self._unfinalized():
                    customer = self._unfinalized()[0]
                    invoice_id = self.world.first_invoice_id(customer)
                    request = invoices_pb2.FinalizeInvoiceRequest(
                        invoice_id=invoice_id, request_id=uuid.uuid4().hex
                    )
                    pending = ("finalize", request, (invoice_id,))
                else:
                    customer = rng.choice(self.world.customers)
                    events, keys = [], []
                    for n in range(self.batch):
                        tx = f"c{client}-b{batch_no}-e{n}"
                        if rng.random() < 0.5:
                            at = self.world.first_period_instant + timedelta(
                                minutes=rng.randrange(0, 60 * 24 * 5)
                            )
                        else:
                            at = datetime.now(UTC) - timedelta(seconds=rng.randrange(1, 120))
                        events.append(
                            usage_pb2.UsageEvent(
                                transaction_id=tx,
                                customer_id=customer,
                                event_type="completion",
                                timestamp=ts(at),
                                properties={"tokens": str(rng.randrange(1, 1000))},
                            )
                        )
                        keys.append(f"{customer}/{tx}")
                    batch_no += 1
                    pending = ("usage", usage_pb2.RecordUsageRequest(events=events), tuple(keys))
            kind, request, keys = pending
            op = self._invoke(client, api, kind, request, keys)
            self.history.add(op)
            if op.outcome == "indeterminate":
                time.sleep(rng.uniform(0.05, 0.2))
                continue
            if kind == "finalize":
                with self._finalize_lock:
                    self._finalized.add(keys[0])
            pending = None

    def _unfinalized(self) -> list[str]:
        with self._finalize_lock:
            return [
                c
                for c in self.world.customers[:2]
                if self.world.first_invoice_id(c) not in self._finalized
            ]

    def _invoke(
        self, client: int, api: Api, kind: str, request: object, keys: tuple[str, ...]
    ) -> Op:
        invoked = time.monotonic()
        try:
            if kind == "usage":
                reply = api.usage.RecordUsage(request, metadata=api.admin, timeout=self.deadline_s)
                results = tuple(
                    (
                        f"{event.customer_id}/{result.transaction_id}",
                        usage_pb2.UsageEventResult.Status.Name(result.status),
                        int(result.seq),
                    )
                    for event, result in zip(request.events, reply.results, strict=True)  # type: ignore[attr-defined]
                )
                token = int(reply.consistency_token)
            elif kind == "publish":
                token, results = publish(api, request, self.deadline_s), ()
            else:
                invoice = api.invoices.FinalizeInvoice(
                    request, metadata=api.admin, timeout=self.deadline_s
                )
                token, results = int(invoice.computed_through_seq), ()
        except grpc.RpcError as error:
            outcome, code = classify(error)
            return Op(client, kind, keys, invoked, time.monotonic(), outcome, code)
        return Op(client, kind, keys, invoked, time.monotonic(), "ok", "OK", results, token)
