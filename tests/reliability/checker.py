"""The history checker: what the clients saw against what the ledger holds.

Run after the faults have ended and the service is back up. Each check adds its
violations to the report; a clean run has none. The checks:

1. every acknowledged usage event (ACCEPTED or DUPLICATE) is in the ledger exactly
   once, at the seq it was acknowledged with; every indeterminate one at most once;
   none appears that no client sent; none whose every attempt failed definitely;
2. seq is gapless from 1 to the head, and ledger_heads.last_seq is max(seq);
3. seq respects real time: if acknowledged op A completed before acknowledged op B
   was invoked, every seq B wrote is above every seq A wrote, and consistency
   tokens never go backwards across such a pair;
4. every stream's versions are 1..n, and the streams table agrees;
5. projections equal a from-scratch replay: each draft invoice from GetInvoice
   equals the audit replay of raw events at the same position, and a second
   usage_rollups version rebuilt from seq 0 has the live version's rows;
6. every finalized invoice verifies (AuditService.VerifyInvoice);
7. `accrual verify` (the hash chain) passes;
8. `pg_amcheck --heapallindexed` reports nothing;
and no call was ever answered INTERNAL/UNKNOWN, no client thread crashed.
"""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import psycopg

from services.api.accrual.v1 import audit_pb2, audit_pb2_grpc, invoices_pb2, invoices_pb2_grpc
from services.embedded_db import pg_binary
from tests.reliability.workload import (
    BUG_CODES,
    CHANNEL_OPTIONS,
    ROOT,
    History,
    Node,
    World,
    bearer,
    ts,
)

ACKED = ("ACCEPTED", "DUPLICATE")
ROLLUP_TABLES = ("usage_rollups", "usage_unbilled", "usage_rollup_metrics", "usage_distinct")


@dataclass
class Report:
    ops: int = 0
    ok_ops: int = 0
    failed_ops: int = 0
    indeterminate_ops: int = 0
    usage_keys_sent: int = 0
    acknowledged: int = 0
    duplicates: int = 0  # acknowledged keys answered DUPLICATE: a retry of a written event
    indeterminate: int = 0  # keys never acknowledged, with at least one indeterminate attempt
    indeterminate_written: int = 0  # of those, how many the ledger holds (at most once each)
    events: int = 0
    usage_events: int = 0
    head: int = 0
    streams: int = 0
    publishes_ok: int = 0
    finalized_invoices: int = 0
    drafts_compared: int = 0
    rollup_rows_compared: int = 0
    faults: int = 0
    fault_log: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    doubled: int = 0
    phantom: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def summary(self) -> str:
        keys = (
            "ops",
            "ok_ops",
            "failed_ops",
            "indeterminate_ops",
            "usage_keys_sent",
            "acknowledged",
            "duplicates",
            "indeterminate",
            "indeterminate_written",
            "events",
            "usage_events",
            "head",
            "streams",
            "publishes_ok",
            "finalized_invoices",
            "drafts_compared",
            "rollup_rows_compared",
            "faults",
            "lost",
            "doubled",
            "phantom",
        )
        figures = ", ".join(f"{key}={getattr(self, key)}" for key in keys)
        return (
            f"{figures}; codes={dict(sorted(self.codes.items()))};"
            f" faults: {self.fault_log}; violations={len(self.violations)}"
        )


def check(node: Node, world: World, history: History, *, rebuild: bool = True) -> Report:
    started = time.monotonic()
    report = Report()
    report.faults = len(history.faults)
    report.fault_log = [what for _, what in history.faults]
    for crash in history.crashes:
        report.violation(f"client crashed: {crash}")
    _summarise_ops(history, report)
    with psycopg.connect(node.owner_url, autocommit=True) as conn:
        _check_usage(conn, history, report)
        _check_seqs(conn, report)
        _check_streams(conn, report)
    _check_real_time(history, report)
    _wait_projector_caught_up(node, report)
    with grpc.insecure_channel(node.address, options=CHANNEL_OPTIONS) as channel:
        _check_drafts_equal_replay(channel, node, world, report)
        _check_finalized_verify(channel, node, report)
    if rebuild:
        _check_rebuilt_rollups(node, report)
    _check_chain(node, report)
    _check_amcheck(node, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


# --- the history ------------------------------------------------------------------------


def _summarise_ops(history: History, report: Report) -> None:
    codes: Counter[str] = Counter()
    for op in history.ops:
        codes[op.code] += 1
        report.ops += 1
        if op.outcome == "ok":
            report.ok_ops += 1
            report.publishes_ok += op.kind == "publish"
        elif op.outcome == "failed":
            report.failed_ops += 1
        else:
            report.indeterminate_ops += 1
        if op.code in {c.name for c in BUG_CODES}:
            report.violation(f"{op.kind} answered {op.code}: {op.ids[:3]}")
    report.codes = dict(codes)


def _check_usage(conn: psycopg.Connection, history: History, report: Report) -> None:  # type: ignore[type-arg]
    """Check 1: acknowledged exactly once at its seq, indeterminate at most once, no phantoms."""
    acked: dict[str, set[int]] = defaultdict(set)  # key -> seqs it was acknowledged with
    attempts: dict[str, Counter[str]] = defaultdict(Counter)
    for op in history.ops:
        if op.kind != "usage":
            continue
        for key in op.ids:
            attempts[key][op.outcome] += 1
        for key, status, seq in op.results:
            if status in ACKED:
                acked[key].add(seq)
                report.duplicates += status == "DUPLICATE"
            else:
                report.violation(f"usage {key} answered {status} in an ok call")
    rows = conn.execute(
        "SELECT seq, convert_from(payload, 'UTF8') FROM events"
        " WHERE event_type = 'UsageRecorded' ORDER BY seq"
    ).fetchall()
    in_ledger: dict[str, list[int]] = defaultdict(list)
    for seq, payload in rows:
        body = json.loads(payload)
        in_ledger[f"{body['customer_id']}/{body['transaction_id']}"].append(int(seq))
    report.usage_events = len(rows)
    report.usage_keys_sent = len(attempts)
    report.acknowledged = len(acked)
    for key, seqs in acked.items():
        found = in_ledger.get(key, [])
        if not found:
            report.lost += 1
            report.violation(f"acknowledged {key} (seq {sorted(seqs)}) is not in the ledger")
        elif len(found) > 1:
            report.doubled += 1
            report.violation(f"acknowledged {key} is in the ledger {len(found)} times: {found}")
        elif seqs != {found[0]}:
            report.violation(f"{key} acknowledged at seqs {sorted(seqs)}, ledger has {found[0]}")
    for key, outcomes in attempts.items():
        if key in acked:
            continue
        found = in_ledger.get(key, [])
        if len(found) > 1:
            report.doubled += 1
            report.violation(f"unacknowledged {key} is in the ledger {len(found)} times")
        if outcomes["indeterminate"]:
            report.indeterminate += 1
            report.indeterminate_written += bool(found)
        elif found:
            report.violation(
                f"{key} was refused every time ({dict(outcomes)}) but is in the ledger"
            )
    for key, found in in_ledger.items():
        if key not in attempts:
            report.phantom += 1
            report.violation(f"{key} is in the ledger (seqs {found}) but no client sent it")


def _check_real_time(history: History, report: Report) -> None:
    """Check 3: an op acknowledged before another was invoked wrote lower seqs, and its
    consistency token is not above the later op's."""
    writes = []  # (completed_at, invoked_at, min seq, max seq)
    tokens = []  # (completed_at, invoked_at, token)
    seen: set[tuple[int, str, tuple[str, ...]]] = set()
    for op in history.ops:
        # A retry answers with the position of what an earlier attempt wrote (its
        # DUPLICATEs' seqs, a finalization's original event), which may precede ops
        # that finished in between: only first attempts' tokens must follow real time.
        first_attempt = (op.client, op.kind, op.ids) not in seen
        seen.add((op.client, op.kind, op.ids))
        if op.outcome != "ok":
            continue
        replayed = any(status == "DUPLICATE" for _, status, _ in op.results)
        if op.token and first_attempt and not replayed:
            tokens.append((op.completed_at, op.invoked_at, op.token))
        seqs = [seq for _, status, seq in op.results if status == "ACCEPTED"]
        if seqs:
            writes.append((op.completed_at, op.invoked_at, min(seqs), max(seqs)))
            if op.token and op.token < max(seqs):
                report.violation(f"consistency token {op.token} below its own seq {max(seqs)}")
    for name, items, low, high in (("seq", writes, 2, 3), ("token", tokens, 2, 2)):
        items.sort()
        completions = [item[0] for item in items]
        prefix_max: list[int] = []
        running = 0
        for item in items:
            running = max(running, item[high])
            prefix_max.append(running)
        bad = 0
        for item in items:
            earlier = bisect.bisect_left(completions, item[1])  # completed before invoked
            if earlier and prefix_max[earlier - 1] > item[low]:
                bad += 1
                if bad <= 3:
                    report.violation(
                        f"real-time order broken ({name}): an op acknowledged earlier reached"
                        f" {prefix_max[earlier - 1]}, a later op has {item[low]}"
                    )
        if bad > 3:
            report.violation(f"... {bad} real-time {name} violations in all")


# --- the ledger -------------------------------------------------------------------------


def _check_seqs(conn: psycopg.Connection, report: Report) -> None:  # type: ignore[type-arg]
    """Check 2: seq gapless 1..head, ledger_heads.last_seq = max(seq)."""
    count, low, high, distinct = conn.execute(
        "SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM events"
    ).fetchone()  # type: ignore[misc]
    head = conn.execute("SELECT last_seq FROM ledger_heads WHERE partition = 0").fetchone()
    report.events = int(count)
    report.head = int(head[0]) if head else -1
    if count and (low != 1 or high != count or distinct != count):
        report.violation(f"seq not gapless: {count} events, min {low}, max {high}")
    if report.head != (high or 0):
        report.violation(f"ledger_heads.last_seq {report.head} != max(seq) {high}")


def _check_streams(conn: psycopg.Connection, report: Report) -> None:  # type: ignore[type-arg]
    """Check 4: every stream's versions are 1..n and streams.version is n."""
    rows = conn.execute(
        "SELECT e.stream_id, count(*), min(stream_version), max(stream_version),"
        " count(DISTINCT stream_version), s.version"
        " FROM events e LEFT JOIN streams s USING (stream_id) GROUP BY e.stream_id, s.version"
    ).fetchall()
    report.streams = len(rows)
    for stream, count, low, high, distinct, recorded in rows:
        if low != 1 or high != count or distinct != count:
            report.violation(f"stream {stream}: {count} events, versions {low}..{high}")
        if recorded != high:
            report.violation(f"stream {stream}: streams.version {recorded}, events reach {high}")


# --- projections and audit --------------------------------------------------------------


def _wait_projector_caught_up(node: Node, report: Report, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    last: object = None
    while time.monotonic() < deadline:
        with psycopg.connect(node.owner_url, autocommit=True) as conn:
            head = conn.execute("SELECT last_seq FROM ledger_heads WHERE partition = 0").fetchone()
            rows = conn.execute(
                "SELECT c.name, c.version, c.seq FROM projection_checkpoints c"
                " JOIN projection_registry r USING (name, version) WHERE r.state = 'live'"
            ).fetchall()
        last = (head, rows)
        if head and rows and all(seq == head[0] for _, _, seq in rows):
            return
        time.sleep(0.3)
    report.violation(f"projections did not catch up within {within_s}s: {last}")


def _check_drafts_equal_replay(
    channel: grpc.Channel, node: Node, world: World, report: Report
) -> None:
    """Check 5a: each draft from GetInvoice (rollups + raw edges) equals the replay."""
    invoices = invoices_pb2_grpc.InvoiceServiceStub(channel)
    audit = audit_pb2_grpc.AuditServiceStub(channel)
    admin = bearer(node.token("admin"))
    for customer in world.customers:
        drafts: dict[str, invoices_pb2.Invoice] = {}
        for at in (world.first_period_instant, world.now + timedelta(minutes=1)):
            invoice = invoices.GetInvoice(
                invoices_pb2.GetInvoiceRequest(customer_id=customer, at=ts(at)),
                metadata=admin,
                timeout=30,
            )
            if invoice.status == "DRAFT":
                drafts[invoice.invoice_id] = invoice
        if not drafts:
            continue
        through = {d.computed_through_seq for d in drafts.values()}
        if len(through) != 1:
            report.violation(f"{customer}: drafts computed through different seqs {through}")
            continue
        replayed = {}
        for item in audit.ReplayCustomer(
            audit_pb2.ReplayCustomerRequest(customer_id=customer, up_to_seq=through.pop()),
            metadata=admin,
            timeout=60,
        ):
            if item.WhichOneof("item") == "invoice" and item.invoice.status == "DRAFT":
                replayed[item.invoice.invoice.invoice_id] = item.invoice.invoice
        for invoice_id, draft in drafts.items():
            again = replayed.get(invoice_id)
            report.drafts_compared += 1
            if again is None:
                report.violation(f"{invoice_id}: no replayed draft")
            elif again != draft:
                report.violation(f"{invoice_id}: draft differs from replay:\n{draft}\n{again}")


def _check_finalized_verify(channel: grpc.Channel, node: Node, report: Report) -> None:
    """Check 6: every finalized invoice recomputes to its recorded hash."""
    with psycopg.connect(node.owner_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT convert_from(payload, 'UTF8') FROM events"
            " WHERE event_type = 'InvoiceFinalized' ORDER BY seq"
        ).fetchall()
    audit = audit_pb2_grpc.AuditServiceStub(channel)
    ids = [json.loads(payload)["invoice"]["invoice_id"] for (payload,) in rows]
    if len(set(ids)) != len(ids):
        report.violation(f"an invoice was finalized twice: {Counter(ids).most_common(3)}")
    report.finalized_invoices = len(set(ids))
    for invoice_id in sorted(set(ids)):
        reply = audit.VerifyInvoice(
            audit_pb2.VerifyInvoiceRequest(invoice_id=invoice_id),
            metadata=bearer(node.token("admin")),
            timeout=30,
        )
        if not reply.matches or reply.recorded_sha256 != reply.replayed_sha256:
            report.violation(
                f"{invoice_id} does not verify: {reply.recorded_sha256} vs {reply.replayed_sha256}"
            )


def _cli(node: Node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=node.cli_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check_rebuilt_rollups(node: Node, report: Report) -> None:
    """Check 5b: usage_rollups rebuilt from seq 0 as v2 has the live v1's rows."""
    done = _cli(node, "projections", "rebuild", "usage_rollups", "--version", "2")
    if done.returncode != 0:
        report.violation(f"projections rebuild failed: {done.stdout}{done.stderr[-2000:]}")
        return
    with psycopg.connect(node.owner_url, autocommit=True) as conn:
        checkpoints = dict(
            conn.execute(
                "SELECT version, seq FROM projection_checkpoints WHERE name = 'usage_rollups'"
            ).fetchall()
        )
        if checkpoints.get(1) != checkpoints.get(2):
            report.violation(f"usage_rollups checkpoints differ after rebuild: {checkpoints}")
        for table in ROLLUP_TABLES:
            live, rebuilt = f"{table}_v1", f"{table}_v2"
            rows = conn.execute(f"SELECT count(*) FROM {live}").fetchone()
            report.rollup_rows_compared += int(rows[0]) if rows else 0
            for one, other in ((live, rebuilt), (rebuilt, live)):
                diff = conn.execute(
                    f"SELECT count(*) FROM (SELECT * FROM {one} EXCEPT ALL SELECT * FROM {other}) d"
                ).fetchone()
                if diff and diff[0]:
                    report.violation(f"{one} has {diff[0]} rows that {other} has not")


def _check_chain(node: Node, report: Report) -> None:
    """Check 7: `accrual verify` walks the hash chain."""
    done = _cli(node, "verify")
    if done.returncode != 0 or "ledger ok" not in done.stdout:
        report.violation(f"accrual verify failed ({done.returncode}): {done.stdout}{done.stderr}")


def _check_amcheck(node: Node, report: Report) -> None:
    """Check 8: heap and every B-tree index of the database are consistent."""
    done = subprocess.run(
        [
            str(pg_binary("pg_amcheck")),
            "-h",
            "127.0.0.1",
            "-p",
            str(node.pg_port),
            "-U",
            "postgres",
            "--heapallindexed",
            "--install-missing",
            "postgres",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or done.stdout.strip():
        report.violation(f"pg_amcheck ({done.returncode}): {done.stdout[-2000:]}{done.stderr}")
