"""Validation of commands: every rule a request must meet before it becomes an event.

Functions collect every violation of a request and raise them together, named
by field path, so a caller fixes a request in one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from ledger.core.catalog import Aggregation, FilterOp
from ledger.core.errors import Violations

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+=-]{0,127}")
NAME_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
PROPERTIES_MAX: Final = 64
# Values become parts of index keys (pricing groups, distinct values): keep them short.
PROPERTY_VALUE_CHARS_MAX: Final = 200
GROUP_BY_MAX: Final = 8
TEXT_CHARS_MAX: Final = 512
_CONTROL_CHAR: Final = re.compile(r"[\x00-\x1f]")


@dataclass(frozen=True)
class UsagePolicy:
    """How old and how far ahead usage may be (PRICING.md: late and future usage)."""

    late_window: timedelta = timedelta(days=34)
    future_tolerance: timedelta = timedelta(minutes=5)


def check_id(violations: Violations, field: str, value: str) -> None:
    """Ids are 1-128 chars of letters, digits and ``_ . : @ + = -``."""
    if not value:
        violations.add(field, "is required")
    elif not ID_PATTERN.fullmatch(value):
        violations.add(field, "must be 1-128 letters, digits or _.:@+=- starting alphanumeric")


IDS_MAX: Final = 1_000


def check_ids(violations: Violations, field: str, ids: Sequence[str]) -> None:
    """A filter naming ids: each a valid id, and not too many of them."""
    if len(ids) > IDS_MAX:
        violations.add(field, f"names more than {IDS_MAX}")
    seen: set[str] = set()
    for index, value in enumerate(ids[:IDS_MAX]):
        check_id(violations, f"{field}[{index}]", value)
        if value in seen:  # a customer named twice would be counted twice
            violations.add(f"{field}[{index}]", f"{value[:40]!r} is named twice")
        seen.add(value)


def check_name(violations: Violations, field: str, value: str) -> None:
    """Event types and property names: identifiers such as ``tokens`` or ``api.call``."""
    if not value:
        violations.add(field, "is required")
    elif not NAME_PATTERN.fullmatch(value):
        violations.add(field, "must be an identifier (letters, digits, _ . : -), max 128")


def check_text(violations: Violations, field: str, value: str, *, required: bool = True) -> None:
    if required and not value.strip():
        violations.add(field, "is required")
    elif len(value) > TEXT_CHARS_MAX or _CONTROL_CHAR.search(value):
        violations.add(field, f"must be at most {TEXT_CHARS_MAX} printable characters")


class UsageScreen:
    """Why usage events cannot be accepted, judged at one moment (``now``): the
    window of acceptable timestamps is worked out once for a call's events."""

    def __init__(self, policy: UsagePolicy, now: datetime) -> None:
        self._policy = policy
        self._earliest = now - policy.late_window
        self._latest = now + policy.future_tolerance

    def rejection(
        self,
        customer_id: str,
        transaction_id: str,
        event_type: str,
        occurred_at: datetime | None,
        properties: Mapping[str, str],
    ) -> str | None:
        """Why the event cannot be accepted, or None when it can."""
        # Nearly every event passes: it is let through without a report built.
        if (
            occurred_at is not None
            and self._earliest <= occurred_at <= self._latest
            and ID_PATTERN.fullmatch(customer_id)
            and ID_PATTERN.fullmatch(transaction_id)
            and NAME_PATTERN.fullmatch(event_type)
            and _plain_properties(properties)
        ):
            return None
        return self._report(customer_id, transaction_id, event_type, occurred_at, properties)

    def _report(
        self,
        customer_id: str,
        transaction_id: str,
        event_type: str,
        occurred_at: datetime | None,
        properties: Mapping[str, str],
    ) -> str | None:
        violations = Violations()
        check_id(violations, "transaction_id", transaction_id)
        check_id(violations, "customer_id", customer_id)
        check_name(violations, "event_type", event_type)
        if len(properties) > PROPERTIES_MAX:
            violations.add("properties", f"at most {PROPERTIES_MAX} properties")
        for key, value in properties.items():
            if not NAME_PATTERN.fullmatch(key):
                check_name(violations, _property_field(key), key)
            if not _plain_value(value):
                violations.add(_property_field(key), "value too long or has control characters")
        policy = self._policy
        if occurred_at is None:
            violations.add("timestamp", "is required (and must be a valid instant)")
        elif occurred_at > self._latest:
            violations.add("timestamp", f"is more than {policy.future_tolerance} in the future")
        elif occurred_at < self._earliest:
            violations.add(
                "timestamp", f"is older than the {policy.late_window.days}-day late window"
            )
        if not violations.items:
            return None
        return "; ".join(f"{v.field} {v.description}" for v in violations.items)


def _plain_properties(properties: Mapping[str, str]) -> bool:
    """Whether every property's name and value pass, and there are not too many."""
    if len(properties) > PROPERTIES_MAX:
        return False
    for key, value in properties.items():
        if not (NAME_PATTERN.fullmatch(key) and _plain_value(value)):
            return False
    return True


def _plain_value(value: str) -> bool:
    return len(value) <= PROPERTY_VALUE_CHARS_MAX and not _CONTROL_CHAR.search(value)


def _property_field(key: str) -> str:
    return f"properties[{key[:40]!r}]"


def check_metric(
    violations: Violations,
    *,
    event_type: str,
    aggregation: str,
    property_name: str,
    filters: list[tuple[str, str, list[str]]],
    group_by: list[str],
) -> None:
    """A billable metric's definition (the id and name are checked by the caller)."""
    check_name(violations, "metric.event_type", event_type)
    if aggregation not in Aggregation.__members__:
        violations.add("metric.aggregation", f"must be one of {', '.join(Aggregation.__members__)}")
    elif Aggregation[aggregation].needs_property:
        check_name(violations, "metric.property", property_name)
    elif property_name:
        violations.add("metric.property", "COUNT takes no property")
    for i, (prop, op, values) in enumerate(filters):
        check_name(violations, f"metric.filters[{i}].property", prop)
        if op not in {o.value for o in FilterOp}:
            violations.add(f"metric.filters[{i}].op", "must be 'in' or 'exists'")
        elif op == FilterOp.IN.value and not values:
            violations.add(f"metric.filters[{i}].values", "'in' needs at least one value")
    if len(group_by) > GROUP_BY_MAX:
        violations.add("metric.group_by", f"at most {GROUP_BY_MAX} properties")
    for i, name in enumerate(group_by):
        check_name(violations, f"metric.group_by[{i}]", name)
    if len(set(group_by)) != len(group_by):
        violations.add("metric.group_by", "must not repeat a property")
