"""An error's status fits the 8 KiB of headers a gRPC client accepts by default,
whatever request values it echoes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.errors import DomainError, FieldViolation, Rule
from services.errors import MESSAGE_BYTES_MAX, _cut, status_for

CLIENT_HEADERS_MAX = 8 * 1024
# :status, content-type, grpc-status and the two names: 146 bytes in the failure
# that prompted this, with room to spare.
OTHER_HEADERS = 400


def header_bytes(error: DomainError) -> int:
    status = status_for(error)
    # grpc-message is percent-encoded: bytes outside printable ASCII, and "%".
    message = sum(3 if b < 0x20 or b > 0x7E or b == 0x25 else 1 for b in status.message.encode())
    details = len(base64.b64encode(status.SerializeToString()))
    return message + details + OTHER_HEADERS


WIDE = "\U0001f642"  # four bytes of UTF-8, twelve percent-encoded


def test_the_failure_found_by_the_hostile_input_test_now_fits() -> None:
    """VerifyInvoice of an id of emoji: 500 characters made 8,326 bytes of headers."""
    error = DomainError(
        Rule.REQUEST_INVALID,
        f"invoice {WIDE * 600!r} is not known",
        (FieldViolation("invoice_id", WIDE * 600),),
    )
    assert header_bytes(error) < CLIENT_HEADERS_MAX


def test_many_wide_violations_fit() -> None:
    violations = tuple(FieldViolation(f"events[{n}].{WIDE * 600}", WIDE * 600) for n in range(60))
    error = DomainError(Rule.REQUEST_INVALID, WIDE * 3_000, violations)
    assert header_bytes(error) < CLIENT_HEADERS_MAX
    assert status_for(error).details, "the first violations are still reported"


@given(
    message=st.text(max_size=3_000),
    violations=st.lists(
        st.builds(FieldViolation, st.text(max_size=600), st.text(max_size=600)), max_size=60
    ),
)
def test_any_status_fits_the_clients_header_limit(
    message: str, violations: list[FieldViolation]
) -> None:
    error = DomainError(Rule.REQUEST_INVALID, message, tuple(violations))
    assert header_bytes(error) < CLIENT_HEADERS_MAX
    status = status_for(error)
    assert status.message == message or status.message.endswith("…")


@pytest.mark.parametrize("text", ["plain", "é" * 1_000, WIDE * 1_000, "a" * 2_000])
def test_cut_keeps_whole_characters_within_the_byte_limit(text: str) -> None:
    cut = _cut(text)
    assert len(cut.encode()) <= MESSAGE_BYTES_MAX
    assert cut == text or (cut.endswith("…") and text.startswith(cut[:-1]))
