"""Jepsen-style histories: a real `accrual serve` under concurrent clients, with faults.

Each test runs the workload (clients that retry the same transaction ids after
every indeterminate outcome), injects its fault mid-way, lets the service
recover, stops the clients and runs the checker over the history and the
database. The report is printed (run with -s to see it) and asserted on.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability import faults
from tests.reliability.checker import Report, check
from tests.reliability.proxy import FaultyProxy
from tests.reliability.workload import Node, Workload, running_node, setup_world

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(150)]

Fault = Callable[[Node, Workload], None]


def run_history(
    node: Node,
    inject: Fault | None,
    *,
    before_s: float = 4.0,
    after_s: float = 5.0,
    name: str,
) -> Report:
    world = setup_world(node)
    workload = Workload(node, world, clients=6, seed=zlib.crc32(name.encode()) % 1000)
    started = time.monotonic()
    workload.start()
    try:
        time.sleep(before_s)
        if inject is not None:
            inject(node, workload)
        # Recovered: the service answers again, and clients resolve their retries.
        node.wait_serving(30)
        time.sleep(after_s)
    finally:
        history = workload.stop()
    workload_s = time.monotonic() - started
    report = check(node, world, history)
    print(f"\n[{name}] workload {workload_s:.1f}s, checker {report.seconds}s: {report.summary()}")
    for violation in report.violations[:20]:
        print(f"  VIOLATION {violation}")
    return report


def assert_clean(report: Report, *, faults_at_least: int) -> None:
    assert not report.violations, report.violations[:20]
    assert report.lost == report.doubled == report.phantom == 0
    assert report.faults >= faults_at_least, report.fault_log
    assert report.acknowledged > 100, report.summary()
    assert report.ok_ops > 50, report.summary()
    assert report.finalized_invoices >= 1, report.summary()
    assert report.publishes_ok >= 1, report.summary()
    assert report.drafts_compared >= 3, report.summary()
    assert report.rollup_rows_compared > 0, report.summary()


def test_no_faults_baseline(tmp_path: Path) -> None:
    with running_node(tmp_path) as node:
        report = run_history(node, None, before_s=8, after_s=0, name="baseline")
        assert_clean(report, faults_at_least=0)
        assert report.indeterminate_ops == 0, report.codes
        assert report.failed_ops == 0, report.codes
        assert node.terminate() == 0


def test_sigkill_of_the_server_mid_batch(tmp_path: Path) -> None:
    def inject(node: Node, workload: Workload) -> None:
        faults.kill_and_restart(node, workload.history)
        time.sleep(3)
        faults.kill_and_restart(node, workload.history, down_s=0.0)

    with running_node(tmp_path) as node:
        report = run_history(node, inject, name="sigkill")
        assert_clean(report, faults_at_least=4)
        assert report.indeterminate_ops > 0, "the kill must catch calls in flight"
        assert node.starts == 3
        assert node.terminate() == 0


def test_postgres_immediate_stop_and_restart_under_the_service(tmp_path: Path) -> None:
    def inject(node: Node, workload: Workload) -> None:
        faults.postgres_immediate_restart(node, workload.history)
        time.sleep(3)
        faults.postgres_immediate_restart(node, workload.history, down_s=0.5)

    with running_node(tmp_path) as node:
        report = run_history(node, inject, after_s=6, name="pg-immediate")
        assert_clean(report, faults_at_least=4)
        assert report.indeterminate_ops > 0
        assert node.starts == 1, "the service recovers without a restart"
        assert node.process is not None and node.process.poll() is None
        assert node.terminate() == 0


def test_pg_terminate_backend_of_every_service_connection(tmp_path: Path) -> None:
    def inject(node: Node, workload: Workload) -> None:
        for _ in range(4):
            faults.terminate_backends(node, workload.history)
            time.sleep(1.0)

    with running_node(tmp_path) as node:
        report = run_history(node, inject, name="terminate-backend")
        assert_clean(report, faults_at_least=4)
        assert node.starts == 1
        assert node.process is not None and node.process.poll() is None
        assert node.terminate() == 0


def test_faulty_network_between_service_and_database(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    probe = Node(node_dir)
    with FaultyProxy("127.0.0.1", probe.pg_port) as proxy:

        def inject(node: Node, workload: Workload) -> None:
            log = workload.history.fault
            log("delay 0.2s")
            proxy.delay(0.2)
            time.sleep(2)
            log("delay 1.5s")
            proxy.delay(1.5)
            time.sleep(2)
            proxy.heal()
            log(f"cut x{proxy.cut()}")
            time.sleep(1.5)
            log("blackhole")
            proxy.blackhole(True)
            time.sleep(2)
            log(f"heal and cut x{proxy.cut()}")
            proxy.heal()
            time.sleep(1.5)
            log(f"cut x{proxy.cut()}")

        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        with running_node(
            node_dir, pg_port=probe.pg_port, grpc_port=probe.grpc_port, database_url=url
        ) as node:
            report = run_history(node, inject, name="faulty-proxy")
            assert_clean(report, faults_at_least=5)
            assert report.indeterminate_ops > 0
            assert node.starts == 1
            assert node.process is not None and node.process.poll() is None
            assert node.terminate() == 0
