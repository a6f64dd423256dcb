"""Contract amendments: effective-dated changes to a contract's terms.

An amendment never rewrites the past: a new plan takes over from its
``effective_at``, an ended override stops there, and a term change moves the
contract's end. Invoices split their periods at these instants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from ledger.core.catalog import Contract, Override, PlanChange


@dataclass(frozen=True)
class Amendment:
    """What changes in a contract from ``effective_at`` on; empty parts change nothing."""

    contract_id: str
    effective_at: datetime
    plan: PlanChange | None = None
    add_overrides: tuple[Override, ...] = ()
    end_overrides: tuple[str, ...] = ()
    change_term: bool = False
    ends_at: datetime | None = None  # the new end when ``change_term`` (None: open-ended)


def amend(contract: Contract, amendment: Amendment) -> Contract:
    """The contract with ``amendment`` applied; a new plan supersedes later ones."""
    at = amendment.effective_at
    plan_changes = contract.plan_changes
    if amendment.plan is not None:
        plan_changes = (*(c for c in plan_changes if c.effective_at < at), amendment.plan)
    overrides = tuple(
        _ended(o, at) if o.override_id in amendment.end_overrides else o for o in contract.overrides
    )
    return dataclasses.replace(
        contract,
        plan_changes=plan_changes,
        overrides=(*overrides, *amendment.add_overrides),
        ends_at=amendment.ends_at if amendment.change_term else contract.ends_at,
    )


def _ended(override: Override, at: datetime) -> Override:
    ends_at = at if override.ends_at is None else min(override.ends_at, at)
    return dataclasses.replace(override, ends_at=ends_at)
