"""The fault-injecting proxy, against a real PostgreSQL: it passes queries through,
delays them, cuts connections and swallows traffic, each on demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.reliability.proxy import FaultyProxy

pytestmark = pytest.mark.reliability


@pytest.fixture
def proxy(server_url: str) -> Iterator[FaultyProxy]:
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    host = str(info.get("host") or "127.0.0.1")
    port = int(info.get("port") or 5432)
    with FaultyProxy(host, port) as running:
        yield running


def _via(server_url: str, proxy: FaultyProxy, **params: object) -> str:
    """The server's URL, pointed at the proxy."""
    return psycopg.conninfo.make_conninfo(server_url, host="127.0.0.1", port=proxy.port, **params)


def _select_one(conn: psycopg.Connection[tuple[object, ...]]) -> object:
    row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return row[0]


def _eventually(what: str, within_s: float, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not seen within {within_s}s")


def test_queries_pass_through_and_connections_are_counted(
    server_url: str, proxy: FaultyProxy
) -> None:
    assert proxy.connections == 0
    with (
        psycopg.connect(_via(server_url, proxy), autocommit=True) as one,
        psycopg.connect(_via(server_url, proxy), autocommit=True) as two,
    ):
        assert _select_one(one) == 1
        # A large result crosses the proxy in many chunks, intact.
        row = two.execute("SELECT string_agg(md5(g::text), '') FROM generate_series(1, 20000) g")
        text = row.fetchone()
        assert text is not None and len(str(text[0])) == 32 * 20000
        port = one.execute("SELECT inet_server_port()").fetchone()
        assert port is not None
        assert port[0] == proxy.upstream_port, "the backend is the upstream server"
        assert proxy.connections == 2
    _eventually("both connections closed", 5, lambda: proxy.connections == 0)


def test_delay_adds_latency_to_each_query_and_heal_removes_it(
    server_url: str, proxy: FaultyProxy
) -> None:
    with psycopg.connect(_via(server_url, proxy), autocommit=True) as conn:
        assert _select_one(conn) == 1
        started = time.monotonic()
        _select_one(conn)
        undelayed = time.monotonic() - started

        proxy.delay(0.2)
        started = time.monotonic()
        assert _select_one(conn) == 1
        delayed = time.monotonic() - started
        # The query is held 0.2 s on the way in and its answer 0.2 s on the way out.
        assert delayed >= 0.4, delayed

        proxy.heal()
        started = time.monotonic()
        assert _select_one(conn) == 1
        healed = time.monotonic() - started
        assert healed < 0.2, (undelayed, delayed, healed)


def test_cut_breaks_open_connections_and_new_ones_work(server_url: str, proxy: FaultyProxy) -> None:
    with psycopg.connect(_via(server_url, proxy), autocommit=True) as conn:
        assert _select_one(conn) == 1
        assert proxy.connections == 1

        assert proxy.cut() == 1
        assert proxy.connections == 0
        with pytest.raises(psycopg.OperationalError):
            _select_one(conn)
        assert conn.broken

    with psycopg.connect(_via(server_url, proxy), autocommit=True) as fresh:
        assert _select_one(fresh) == 1
        assert proxy.connections == 1


def test_blackhole_swallows_traffic_until_healed(server_url: str, proxy: FaultyProxy) -> None:
    with psycopg.connect(_via(server_url, proxy), autocommit=True) as conn:
        assert _select_one(conn) == 1
        proxy.blackhole(True)

        # A query on an open connection gets no answer: it is still waiting a second later.
        outcome: list[object] = []

        def query() -> None:
            try:
                outcome.append(_select_one(conn))
            except psycopg.Error as error:
                outcome.append(error)

        waiting = threading.Thread(target=query, daemon=True)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive(), f"the query was answered through a blackhole: {outcome}"
        assert proxy.connections == 1, "a blackhole keeps the connection open"

        # A new connection is accepted but its startup goes nowhere: connect_timeout fires.
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(_via(server_url, proxy, connect_timeout=2), autocommit=True)
        assert time.monotonic() - started >= 1.5

        proxy.heal()
        # The swallowed query's connection is out of step for good; cutting it frees
        # the waiting thread with an error rather than an answer.
        proxy.cut()
        waiting.join(timeout=5)
        assert not waiting.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError), outcome

    with psycopg.connect(_via(server_url, proxy, connect_timeout=2), autocommit=True) as fresh:
        fresh.execute("SET statement_timeout = '1s'")
        assert _select_one(fresh) == 1


def test_closing_the_proxy_closes_its_connections(server_url: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    with FaultyProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)) as p:
        conn = psycopg.connect(_via(server_url, p), autocommit=True)
        assert _select_one(conn) == 1
    try:
        with pytest.raises(psycopg.OperationalError):
            _select_one(conn)
    finally:
        conn.close()
