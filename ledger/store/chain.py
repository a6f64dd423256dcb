"""The SHA-256 hash chain over ledger rows.

Each row's hash covers its header fields, the SHA-256 of its payload and
metadata bytes (exactly as stored), and the previous row's hash. Changing,
removing or reordering any row breaks every hash after it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Final

from ledger.core.canonical import canonical_dumps, format_instant

GENESIS_HASH: Final = bytes(32)


def row_hash(
    *,
    prev_hash: bytes,
    seq: int,
    partition: int,
    stream_id: str,
    stream_version: int,
    event_type: str,
    schema_version: int,
    payload: bytes,
    metadata: bytes,
    occurred_at: datetime,
    recorded_at: datetime,
    idempotency_key: str | None,
    request_hash: str | None,
) -> bytes:
    """The chain hash of one row given its predecessor's hash."""
    # Every value is already JSON-ready but the two instants, so the header is
    # dumped directly: the same bytes canonical_json would give (a test checks),
    # without walking each value on the append path.
    header = canonical_dumps(
        {
            "seq": seq,
            "partition": partition,
            "stream_id": stream_id,
            "stream_version": stream_version,
            "event_type": event_type,
            "schema_version": schema_version,
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "metadata_sha256": hashlib.sha256(metadata).hexdigest(),
            "occurred_at": format_instant(occurred_at),
            "recorded_at": format_instant(recorded_at),
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
        }
    )
    return hashlib.sha256(prev_hash + header).digest()
