"""Which roles may call which RPC: one table, checked complete at start-up.

Every method of every Accrual service must have a row; a server with an RPC
nobody decided on refuses to start (:func:`undecided`), and the authorization
matrix test is generated from this same table. ``admin`` may call everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from services.auth.principals import Principal

# Reading the catalog, contracts and invoices: anyone who works with prices or bills.
_READERS: Final = frozenset(
    {"reader", "auditor", "billing-operator", "pricing-author", "pricing-approver"}
)
_PRICING: Final = frozenset({"pricing-author", "pricing-approver"})

PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "/accrual.v1.UsageService/RecordUsage": frozenset({"ingest"}),
    "/accrual.v1.CatalogService/CreateBillableMetric": frozenset({"pricing-author"}),
    "/accrual.v1.CatalogService/CreateProduct": frozenset({"pricing-author"}),
    "/accrual.v1.CatalogService/DraftRateCard": frozenset({"pricing-author"}),
    "/accrual.v1.CatalogService/ApproveRateCardDraft": frozenset({"pricing-approver"}),
    # Publishing only releases what two people already agreed on.
    "/accrual.v1.CatalogService/PublishRateCardDraft": _PRICING,
    "/accrual.v1.CatalogService/GetRateCardDraft": _READERS,
    "/accrual.v1.CatalogService/GetRateCard": _READERS,
    "/accrual.v1.CatalogService/ListRateCardVersions": _READERS,
    "/accrual.v1.CatalogService/DiffRateCardVersions": _READERS,
    "/accrual.v1.ContractService/CreateCustomer": frozenset({"billing-operator"}),
    "/accrual.v1.ContractService/CreateContract": frozenset({"billing-operator"}),
    "/accrual.v1.ContractService/GetContract": _READERS,
    "/accrual.v1.ContractService/AmendContract": frozenset({"billing-operator"}),
    "/accrual.v1.ContractService/EndContract": frozenset({"billing-operator"}),
    "/accrual.v1.InvoiceService/GetInvoice": _READERS,
    "/accrual.v1.InvoiceService/ListInvoices": _READERS,
    "/accrual.v1.InvoiceService/FinalizeInvoice": frozenset({"billing-operator"}),
    "/accrual.v1.InvoiceService/VoidInvoice": frozenset({"billing-operator"}),
    # Writes nothing, but shows any customer's bill under any price.
    "/accrual.v1.InvoiceService/PreviewInvoice": _PRICING | {"billing-operator", "auditor"},
    "/accrual.v1.AuditService/ReplayCustomer": frozenset({"auditor"}),
    "/accrual.v1.AuditService/VerifyInvoice": frozenset({"auditor", "billing-operator"}),
    "/accrual.v1.AuditService/VerifyLedger": frozenset({"auditor"}),
    "/accrual.v1.AuditService/ListAuditEntries": frozenset({"auditor"}),
    "/accrual.v1.AuditService/SimulatePricing": _PRICING | {"auditor"},
    "/accrual.v1.AlertService/SetSpendAlert": frozenset({"billing-operator"}),
    "/accrual.v1.AlertService/ListSpendAlerts": _READERS,
    "/accrual.v1.BalanceService/GrantCredit": frozenset({"billing-operator"}),
    "/accrual.v1.BalanceService/GetBalances": _READERS,
    # Ingest services ask before serving usage.
    "/accrual.v1.BalanceService/CheckEntitlement": _READERS | {"ingest"},
    "/accrual.v1.ReportingService/GetRevenueReport": _READERS,
    "/accrual.v1.ReportingService/GetUsageReport": _READERS,
    "/accrual.v1.ReportingService/GetForecasts": _READERS,
    "/accrual.v1.ReportingService/GetStatement": _READERS,
    # Costs of goods are finance's figures, kept beside the prices they set.
    "/accrual.v1.ReportingService/SetProductCost": frozenset(
        {"pricing-author", "billing-operator"}
    ),
}


def allows(principal: Principal, method: str) -> bool:
    """Whether ``principal`` may call ``method`` (a full gRPC method path)."""
    if "admin" in principal.roles:
        return method in PERMISSIONS
    return bool(principal.roles & PERMISSIONS.get(method, frozenset()))


def undecided(methods: Iterable[str]) -> list[str]:
    """The methods that have no row in :data:`PERMISSIONS`."""
    return sorted(set(methods) - PERMISSIONS.keys())
