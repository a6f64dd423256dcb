"""A principal: an authenticated caller, its roles and (optionally) its customers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The least privilege each kind of caller needs; `admin` holds every permission
# but, like anyone, cannot approve its own pricing draft.
ROLES: Final = frozenset(
    {
        "ingest",
        "pricing-author",
        "pricing-approver",
        "billing-operator",
        "auditor",
        "reader",
        "admin",
    }
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``customers`` limits the customers the principal may act for (None: all);
    an ``ingest`` token for one tenant's gateway, say.
    """

    name: str
    roles: frozenset[str]
    customers: frozenset[str] | None = None

    def may_act_for(self, customer_id: str) -> bool:
        return self.customers is None or customer_id in self.customers
