"""The benchmarks' own PostgreSQL: an embedded server, migrated, for one run."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
