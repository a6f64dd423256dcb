"""The SHA-256 hash chain over ledger rows.

Each row's hash covers its header fields, the SHA-256 of its payload and
metadata bytes (exactly as stored), and the previous row's hash. Changing,
removing or reordering any row breaks every hash after it.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Final

from ledger.core.canonical import format_instant

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
    return header_hash(
        prev_hash,
        seq,
        partition,
        stream_id,
        stream_version,
        event_type,
        schema_version,
        hashlib.sha256(payload).hexdigest(),
        hashlib.sha256(metadata).hexdigest(),
        format_instant(occurred_at),
        recorded_text(recorded_at),
        idempotency_key,
        request_hash,
    )


def header_hash(  # noqa: PLR0917 - the header's fields, positional on the append path
    prev_hash: bytes,
    seq: int,
    partition: int,
    stream_id: str,
    stream_version: int,
    event_type: str,
    schema_version: int,
    payload_sha256: str,
    metadata_sha256: str,
    occurred_at_text: str,
    recorded_at_text: str,
    idempotency_key: str | None,
    request_hash: str | None,
) -> bytes:
    """:func:`row_hash` from the header's parts, digests and instants already text:
    an append shares one metadata digest and one ``recorded_at`` across its rows,
    and usage hashes its payload once, for its request hash."""
    # The header is the canonical JSON of the fields (sorted keys, no spaces),
    # written out directly: a test holds it byte-equal to canonical_json. On the
    # append path a JSON encoder cost half of building a row.
    header = (
        f'{{"event_type":{_text(event_type)},"idempotency_key":{_text(idempotency_key)},'
        f'"metadata_sha256":"{metadata_sha256}",'
        f'"occurred_at":"{occurred_at_text}","partition":{partition:d},'
        f'"payload_sha256":"{payload_sha256}",'
        f'"recorded_at":"{recorded_at_text}","request_hash":{_text(request_hash)},'
        f'"schema_version":{schema_version:d},"seq":{seq:d},"stream_id":{_text(stream_id)},'
        f'"stream_version":{stream_version:d}}}'
    )
    return hashlib.sha256(prev_hash + header.encode()).digest()


def _text(value: str | None) -> str:
    """A JSON string as canonical JSON writes it (non-ASCII kept), or null."""
    return "null" if value is None else encode_basestring(value)


def recorded_text(recorded_at: datetime) -> str:
    """``recorded_at`` as the header writes it, cached: rows of one append share it.

    Keyed in UTC, since two local times either side of a DST fall-back compare
    (and hash) equal."""
    return _recorded_utc_text(recorded_at.astimezone(UTC))


@functools.lru_cache(maxsize=16)
def _recorded_utc_text(recorded_at: datetime) -> str:
    return format_instant(recorded_at)
