"""The benchmarks' own PostgreSQL: an embedded server, migrated, for one run, and
the CPU its processes use."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from ledger.store import migrate
from services.embedded_db import EmbeddedPostgres, free_port


@contextlib.contextmanager
def migrated_embedded_database(*, fsync: bool = True) -> Iterator[str]:
    """The URL of a fresh, migrated database on an embedded server, stopped after."""
    with tempfile.TemporaryDirectory() as folder:
        embedded = EmbeddedPostgres(Path(folder) / "pg", free_port(), fsync=fsync)
        url = embedded.start()
        try:
            migrate.upgrade(url)
            yield url
        finally:
            embedded.stop()


def cpu_seconds_of(pid: int) -> float:
    """User and system CPU of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU of the postmaster and its children (backends, walwriter, checkpointer...),
    with that of children already gone (a closed connection's backend)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == postmaster:
                ticks += sum(int(field) for field in stat[11:15])  # with reaped children's
            elif int(stat[1]) == postmaster:
                ticks += int(stat[11]) + int(stat[12])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_of(url: str) -> int:
    """The pid of the server behind ``url``, which must run on this machine."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
