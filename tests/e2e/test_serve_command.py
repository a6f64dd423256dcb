"""`accrual serve` as `make run` starts it: embedded PostgreSQL, migrations, gRPC, health."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.accrual.v1 import contracts_pb2, contracts_pb2_grpc
from services.embedded_db import EmbeddedPostgres, free_port

STARTUP_S = 60


def start_serving(data_dir: Path, pg_port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACCRUAL_")}
    env |= {
        "ACCRUAL_DATA_DIR": str(data_dir),
        "ACCRUAL_EMBEDDED_PG_PORT": str(pg_port),
        "ACCRUAL_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "ACCRUAL_LOG_FORMAT": "json",
    }
    with (data_dir / "serve.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def wait_serving(channel: grpc.Channel, process: subprocess.Popen[bytes], log: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            time.sleep(0.2)
            continue
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return
    raise AssertionError("accrual serve did not become healthy")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def admin(data_dir: Path) -> list[tuple[str, str]]:
    """The local admin token `make run` leaves in the data folder, as call metadata."""
    token_file = data_dir / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600, "readable by its owner only"
    return [("authorization", f"Bearer {token_file.read_text().strip()}")]


def test_serve_starts_embedded_postgres_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    pg_port, grpc_port = free_port(), free_port()
    address = f"127.0.0.1:{grpc_port}"
    acme = contracts_pb2.CreateCustomerRequest(
        customer=contracts_pb2.Customer(customer_id="acme", name="Acme")
    )

    process = start_serving(tmp_path, pg_port, grpc_port)
    try:
        with grpc.insecure_channel(address) as channel:
            wait_serving(channel, process, tmp_path / "serve.log")
            customers = contracts_pb2_grpc.ContractServiceStub(channel)
            with pytest.raises(grpc.RpcError) as anonymous:
                customers.CreateCustomer(acme)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            created = customers.CreateCustomer(acme, metadata=admin(tmp_path))
            assert created.consistency_token == 1
    finally:
        assert stop(process) == 0
    assert not EmbeddedPostgres(tmp_path / "pgdata", pg_port).is_running()

    process = start_serving(tmp_path, pg_port, grpc_port)
    try:
        with grpc.insecure_channel(address) as channel:
            wait_serving(channel, process, tmp_path / "serve.log")
            customers = contracts_pb2_grpc.ContractServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                customers.CreateCustomer(acme, metadata=admin(tmp_path))
            assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        assert stop(process) == 0
    log = (tmp_path / "serve.log").read_text()
    assert str(tmp_path / "admin-token") in log, "the log says where the token is"
    assert (tmp_path / "admin-token").read_text().strip() not in log, "but never the token"
