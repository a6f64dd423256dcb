"""The append path's encoding shortcuts write exactly what the generic encoders do.

Ingest builds usage keys and row-hash headers without walking each value; a
stored row's hash, and every idempotency key, must not depend on which path
encoded it, or verifying an older ledger (or a retry) would fail. Likewise a
usage event's timestamp, converted without protobuf's own (slower) method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from ledger.app.usage import usage_key
from ledger.core.canonical import canonical_json, format_instant, parse_instant
from ledger.core.events import (
    UsageRecorded,
    from_payload,
    to_payload,
    usage_from_bytes,
    usage_from_payload,
    usage_payload_bytes,
)
from ledger.store.chain import row_hash
from services.api.accrual.v1 import usage_pb2
from services.convert import to_datetime, usage_inputs

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=16)
instants = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=45))]),
)


@given(customer_id=texts, transaction_id=texts)
def test_usage_keys_are_the_canonical_json_of_the_pair(
    customer_id: str, transaction_id: str
) -> None:
    expected = "usage:" + canonical_json([customer_id, transaction_id]).decode()
    assert usage_key(customer_id, transaction_id) == expected


@given(
    seq=st.integers(1, 2**62),
    stream_id=texts,
    event_type=texts,
    occurred_at=instants,
    recorded_at=instants,
    idempotency_key=st.one_of(st.none(), texts),
    request_hash=st.one_of(st.none(), texts),
    payload=st.binary(max_size=64),
)
def test_row_hashes_equal_the_canonical_header_hash(
    seq: int,
    stream_id: str,
    event_type: str,
    occurred_at: datetime,
    recorded_at: datetime,
    idempotency_key: str | None,
    request_hash: str | None,
    payload: bytes,
) -> None:
    prev, metadata = bytes(range(32)), b'{"actor":"a"}'
    header = canonical_json(
        {
            "seq": seq,
            "partition": 0,
            "stream_id": stream_id,
            "stream_version": seq,
            "event_type": event_type,
            "schema_version": 1,
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "metadata_sha256": hashlib.sha256(metadata).hexdigest(),
            "occurred_at": occurred_at,
            "recorded_at": recorded_at,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
        }
    )
    assert (
        row_hash(
            prev_hash=prev,
            seq=seq,
            partition=0,
            stream_id=stream_id,
            stream_version=seq,
            event_type=event_type,
            schema_version=1,
            payload=payload,
            metadata=metadata,
            occurred_at=occurred_at,
            recorded_at=recorded_at,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        == hashlib.sha256(prev + header).digest()
    )


@given(instant=instants)
def test_instants_format_as_strftime_would(instant: datetime) -> None:
    utc = instant.astimezone(UTC)
    assert format_instant(instant) == f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")
    assert parse_instant(format_instant(instant)) == utc


properties = st.dictionaries(texts, texts, max_size=6)


@given(
    customer_id=texts,
    transaction_id=texts,
    event_type=texts,
    occurred_at=instants,
    properties=properties,
)
def test_usage_is_encoded_as_the_generic_encoder_does(
    customer_id: str,
    transaction_id: str,
    event_type: str,
    occurred_at: datetime,
    properties: dict[str, str],
) -> None:
    event = UsageRecorded(customer_id, transaction_id, event_type, occurred_at, properties)
    assert usage_payload_bytes(event) == canonical_json(to_payload(event))
    # RecordUsage passes the instant it already formatted for the chain's header.
    formatted = format_instant(occurred_at)
    assert usage_payload_bytes(event, formatted) == canonical_json(to_payload(event))


@given(
    customer_id=texts,
    transaction_id=texts,
    event_type=texts,
    occurred_at=instants,
    properties=properties,
)
def test_usage_is_decoded_as_the_generic_decoder_does(
    customer_id: str,
    transaction_id: str,
    event_type: str,
    occurred_at: datetime,
    properties: dict[str, str],
) -> None:
    event = UsageRecorded(customer_id, transaction_id, event_type, occurred_at, properties)
    payload = json.loads(usage_payload_bytes(event))
    fast = usage_from_payload(UsageRecorded.SCHEMA_VERSION, payload)
    assert fast == from_payload(UsageRecorded.EVENT_TYPE, UsageRecorded.SCHEMA_VERSION, payload)
    assert fast == event
    assert isinstance(fast, UsageRecorded) and fast.occurred_at.tzinfo is UTC
    # From the stored bytes, as replays and rollups read them.
    assert usage_from_bytes(UsageRecorded.SCHEMA_VERSION, usage_payload_bytes(event)) == event


@given(
    seconds=st.integers(-62_135_596_800, 253_402_300_799),
    nanos=st.integers(0, 999_999_999),
)
def test_timestamps_convert_as_protobuf_does(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    converted = to_datetime(ts)
    assert converted == ts.ToDatetime(tzinfo=UTC)
    assert converted is not None and converted.tzinfo is UTC


def test_timestamps_out_of_range_convert_to_none() -> None:
    assert to_datetime(Timestamp(seconds=253_402_300_800)) is None
    assert to_datetime(Timestamp(seconds=0, nanos=1_000_000_000)) is None
    assert to_datetime(Timestamp(seconds=-62_135_596_801)) is None


def test_usage_events_hand_written_init_sets_the_dataclass_fields_in_order() -> None:
    """UsageRecorded writes its fields itself, for speed: it must write every
    field the dataclass declares, under the same names, in the same order."""
    names = [f.name for f in dataclasses.fields(UsageRecorded)]
    parameters = list(inspect.signature(UsageRecorded.__init__).parameters)[1:]
    assert parameters == names
    at = datetime(2026, 3, 1, tzinfo=UTC)
    event = UsageRecorded("acme", "t1", "completion", at, {"tokens": "5"})
    assert dataclasses.asdict(event) == {
        "customer_id": "acme",
        "transaction_id": "t1",
        "event_type": "completion",
        "occurred_at": at,
        "properties": {"tokens": "5"},
    }
    assert event == UsageRecorded(
        customer_id="acme",
        transaction_id="t1",
        event_type="completion",
        occurred_at=at,
        properties={"tokens": "5"},
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.customer_id = "other"  # type: ignore[misc]


@given(properties=st.dictionaries(texts, texts, max_size=8))
def test_usage_properties_convert_to_a_plain_dict(properties: dict[str, str]) -> None:
    request = usage_pb2.RecordUsageRequest(events=[usage_pb2.UsageEvent(properties=properties)])
    (converted,) = usage_inputs(request.events)
    assert type(converted.properties) is dict
    assert converted.properties == properties
