"""Canonical JSON: the one byte form that is stored, hashed and compared.

Sorted keys, no insignificant whitespace, UTF-8, decimals as plain strings (never
exponent notation, never floats) and instants as UTC RFC 3339 with microseconds.
The same value always encodes to the same bytes, which is what makes hashes over
events and invoices verifiable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]


INSTANT_CHARS = len("2026-01-01T00:00:00.000000Z")


def format_instant(instant: datetime) -> str:
    """Render an aware instant as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    assert instant.tzinfo is not None, "instants must be timezone-aware"
    utc = instant if instant.tzinfo is UTC else instant.astimezone(UTC)
    # Formatted field by field: strftime is slow on the append path, and its %Y
    # does not pad years below 1000 on every platform. %-formatting, since an
    # f-string calls __format__ per field: twice the cost, twice per appended row.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
    )


def parse_instant(text: str) -> datetime:
    """Inverse of :func:`format_instant` (strict about the format it accepts)."""
    if len(text) != INSTANT_CHARS or text[-1] != "Z" or text[10] != "T" or text[19] != ".":
        raise ValueError(f"not a canonical instant: {text!r}")
    # Ending in "Z", it parses as UTC already: no astimezone, which made a second
    # datetime for each of the millions of instants a replay or rebuild reads.
    return datetime.fromisoformat(text)


def format_decimal(value: Decimal) -> str:
    """Plain positional notation: ``Decimal('1E+3')`` is ``'1000'``."""
    assert value.is_finite(), "only finite decimals are representable"
    return format(value, "f")


def to_json_value(value: Any) -> JsonValue:  # noqa: PLR0911 - one branch per shape
    """Convert plain domain values into JSON-ready values, refusing floats."""
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, Enum):
            return str(value.value)
        return value
    if isinstance(value, Enum):
        return to_json_value(value.value)
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return format_instant(value)
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, Sequence):
        return [to_json_value(item) for item in value]
    raise TypeError(f"not canonically encodable: {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` to canonical JSON bytes."""
    return canonical_dumps(to_json_value(value))


# One encoder for every call: json.dumps with options builds a new encoder each
# time, which cost more than the encoding itself for a row-hash header.
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_dumps(value: JsonValue) -> bytes:
    """Canonical JSON bytes of a value that is already JSON-ready (strings, ints,
    None, lists and string-keyed dicts of them): the hot paths' shortcut."""
    return _CANONICAL.encode(value).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
