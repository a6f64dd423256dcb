"""Faults injected into a running `Node` while the workload runs; each is logged."""

from __future__ import annotations

import time

import psycopg

from tests.reliability.workload import History, Node


def kill_and_restart(node: Node, history: History, down_s: float = 0.5) -> float:
    """SIGKILL serve mid-batch, then start it again on the same data dir and port.

    Returns the seconds from the restart until it answered SERVING.
    """
    history.fault("SIGKILL accrual serve")
    node.kill()
    time.sleep(down_s)
    node.start()
    history.fault("accrual serve restarted")
    return node.wait_serving()


def postgres_immediate_restart(node: Node, history: History, down_s: float = 2.0) -> None:
    """`pg_ctl stop -m immediate` under the running service, then start it again."""
    history.fault("postgres stop -m immediate")
    node.database.stop(mode="immediate")
    assert not node.database.is_running()
    time.sleep(down_s)
    node.database.start()
    history.fault("postgres started")


def terminate_backends(node: Node, history: History) -> int:
    """pg_terminate_backend on every other connection to the service's database."""
    with psycopg.connect(node.owner_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    killed = sum(1 for _, done in rows if done)
    history.fault(f"pg_terminate_backend x{killed}")
    return killed
