"""A projection batch's span links to the calls that wrote its first events."""

from __future__ import annotations

import json
from dataclasses import dataclass

from projections.engine import LINK_EVENTS_SCANNED_MAX, LINKS_MAX, _call_links

UNTRACED = json.dumps({"actor": "bench"}).encode()


@dataclass
class Row:
    metadata: bytes


def traced(n: int) -> bytes:
    return json.dumps(
        {"actor": "a", "trace_id": f"{n + 1:032x}", "span_id": f"{n + 1:016x}"}
    ).encode()


def test_each_calls_trace_is_linked_once() -> None:
    rows = [Row(traced(0)), Row(traced(0)), Row(UNTRACED), Row(traced(1))]
    links = _call_links(rows)  # type: ignore[arg-type]
    assert [link.context.trace_id for link in links] == [1, 2]
    assert all(link.context.is_remote for link in links)


def test_links_come_from_the_batchs_first_events_only() -> None:
    """A big batch of one untraced call is not scanned to its end for metadata."""
    first = [Row(UNTRACED)] * (LINK_EVENTS_SCANNED_MAX - 1)
    assert len(_call_links([*first, Row(traced(0))])) == 1  # type: ignore[arg-type]
    assert _call_links([*first, Row(UNTRACED), Row(traced(0))]) == []  # type: ignore[arg-type]


def test_links_are_bounded() -> None:
    rows = [Row(traced(n)) for n in range(LINKS_MAX * 2)]
    assert len(_call_links(rows)) == LINKS_MAX  # type: ignore[arg-type]
