"""A structured diff between two rate card versions: what a price change changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ledger.core.canonical import canonical_json, to_json_value
from ledger.core.catalog import Rate, RateCardVersion
from ledger.core.codec import encode

RateKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str
    after: str


@dataclass(frozen=True)
class RateChange:
    """One rate added, removed or changed, identified by product and group values."""

    product_id: str
    group_values: Mapping[str, str]
    change: str  # "added", "removed" or "changed"
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class RateCardDiff:
    rate_card_id: str
    from_version: int
    to_version: int
    card_fields: tuple[FieldChange, ...]
    rates: tuple[RateChange, ...]


def diff_versions(before: RateCardVersion, after: RateCardVersion) -> RateCardDiff:
    """What changes from ``before`` to ``after``, rate by rate and field by field."""
    card_fields = _field_changes(
        {"name": before.name, "currency": before.currency, "effective_from": before.effective_from},
        {"name": after.name, "currency": after.currency, "effective_from": after.effective_from},
    )
    old, new = _by_key(before), _by_key(after)
    changes: list[RateChange] = []
    for key in sorted(old.keys() | new.keys()):
        product_id, groups = key
        if key not in new:
            changes.append(RateChange(product_id, dict(groups), "removed"))
        elif key not in old:
            changes.append(RateChange(product_id, dict(groups), "added"))
        else:
            fields = _field_changes(encode(old[key]), encode(new[key]))
            if fields:
                changes.append(RateChange(product_id, dict(groups), "changed", fields))
    return RateCardDiff(
        before.rate_card_id, before.version, after.version, card_fields, tuple(changes)
    )


def _by_key(card: RateCardVersion) -> dict[RateKey, Rate]:
    return {(r.product_id, tuple(sorted(r.group_values.items()))): r for r in card.rates}


def _field_changes(
    before: Mapping[str, object], after: Mapping[str, object]
) -> tuple[FieldChange, ...]:
    changes = []
    for name in sorted(before.keys() | after.keys()):
        old, new = _text(before.get(name)), _text(after.get(name))
        if old != new:
            changes.append(FieldChange(name, old, new))
    return tuple(changes)


def _text(value: object) -> str:
    """A field's value as text: strings as they are, anything else as canonical JSON."""
    json_value = to_json_value(value)
    return json_value if isinstance(json_value, str) else canonical_json(json_value).decode()
