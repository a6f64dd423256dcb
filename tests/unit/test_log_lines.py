"""Log lines as machines read them: one JSON object a line, stamped in UTC to the
microsecond, whatever values a line carries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import structlog

from services import logs
from services.logs import json_line


def test_a_line_is_one_json_object_stamped_now_in_utc(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging("json")
    before = datetime.now(UTC)
    structlog.get_logger("accrual.test").info("rpc", code="OK", duration_ms=1.25)
    after = datetime.now(UTC)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert (line["event"], line["level"], line["code"], line["duration_ms"]) == (
        "rpc",
        "info",
        "OK",
        1.25,
    )
    stamp = line["timestamp"]
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-11-25T01:02:03.123456Z")
    at = datetime.fromisoformat(stamp)
    assert before - timedelta(microseconds=1) <= at <= after


def test_the_stamp_follows_the_clock_across_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The date and time of day are formatted once a second: a line in the next
    second must not keep the last one's."""
    stamper = logs._UtcStamper()
    clock = iter([1_700_000_000_999_999_000, 1_700_000_001_000_001_999, 1_700_000_061_500_000_000])
    monkeypatch.setattr(logs.time, "time_ns", lambda: next(clock))
    stamps = [stamper(None, "info", {})["timestamp"] for _ in range(3)]
    assert stamps == [
        "2023-11-14T22:13:20.999999Z",
        "2023-11-14T22:13:21.000001Z",
        "2023-11-14T22:14:21.500000Z",
    ]


RENDER = structlog.processors.JSONRenderer(serializer=json_line)


def test_lines_are_compact_json() -> None:
    assert RENDER(None, "info", {"event": "rpc", "n": 3, "ok": True}) == (
        '{"event":"rpc","n":3,"ok":true}'
    )


def test_values_json_cannot_hold_natively_are_still_written() -> None:
    line = json.loads(RENDER(None, "info", {"amount": Decimal("1.20"), "slot": {3: "x"}}))
    assert line == {"amount": "Decimal('1.20')", "slot": {"3": "x"}}
    beyond_64_bits = RENDER(None, "info", {"seq": 2**70})
    assert beyond_64_bits == '{"seq":1180591620717411303424}'  # compact, like the rest


def test_a_line_stays_ascii_so_no_reader_splits_it() -> None:
    text = RENDER(None, "info", {"principal": "ops\u2028team", "customer": "Zürich"})
    assert text.isascii()
    assert len(text.splitlines()) == 1
    assert json.loads(text) == {"principal": "ops\u2028team", "customer": "Zürich"}
