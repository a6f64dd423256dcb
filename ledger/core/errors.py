"""The closed set of domain errors, each named after the rule it enforces.

A :class:`Rule` carries its kind; the service layer maps kinds to gRPC status
codes in one table. Programmer errors are assertions, not domain errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """How the caller should read a broken rule."""

    INVALID = "invalid"  # the request itself is malformed
    NOT_FOUND = "not_found"
    EXISTS = "exists"
    PRECONDITION = "precondition"  # valid request, wrong state of the world
    CONFLICT = "conflict"  # concurrent writer won; retry may succeed
    EXHAUSTED = "exhausted"  # a limit was hit; retry later
    UNAVAILABLE = "unavailable"  # not right now; retry with backoff


class Rule(Enum):
    """Every rule a request can break. Adding one is an API decision."""

    REQUEST_INVALID = ("request_invalid", Kind.INVALID)
    CUSTOMER_NOT_FOUND = ("customer_not_found", Kind.NOT_FOUND)
    CUSTOMER_EXISTS = ("customer_exists", Kind.EXISTS)
    METRIC_NOT_FOUND = ("metric_not_found", Kind.NOT_FOUND)
    METRIC_EXISTS = ("metric_exists", Kind.EXISTS)
    PRODUCT_NOT_FOUND = ("product_not_found", Kind.NOT_FOUND)
    PRODUCT_EXISTS = ("product_exists", Kind.EXISTS)
    RATE_CARD_NOT_FOUND = ("rate_card_not_found", Kind.NOT_FOUND)
    RATE_CARD_VERSION_NOT_FOUND = ("rate_card_version_not_found", Kind.NOT_FOUND)
    DRAFT_NOT_FOUND = ("rate_card_draft_not_found", Kind.NOT_FOUND)
    SELF_APPROVAL = ("draft_author_cannot_approve", Kind.PRECONDITION)
    DRAFT_ALREADY_APPROVED = ("draft_already_approved", Kind.PRECONDITION)
    DRAFT_NOT_APPROVED = ("draft_not_approved", Kind.PRECONDITION)
    DRAFT_ALREADY_PUBLISHED = ("draft_already_published", Kind.PRECONDITION)
    DRAFT_STALE = ("draft_conflicts_with_published_version", Kind.PRECONDITION)
    CONTRACT_NOT_FOUND = ("contract_not_found", Kind.NOT_FOUND)
    CONTRACT_EXISTS = ("contract_exists", Kind.EXISTS)
    CONTRACT_OVERLAPS = ("contract_overlaps", Kind.PRECONDITION)
    CONTRACT_ENDED = ("contract_ended", Kind.PRECONDITION)
    AMENDMENT_INTO_FINALIZED_PERIOD = ("amendment_into_finalized_period", Kind.PRECONDITION)
    INVOICE_NOT_FOUND = ("invoice_not_found", Kind.NOT_FOUND)
    INVOICE_ALREADY_FINALIZED = ("invoice_already_finalized", Kind.PRECONDITION)
    PERIOD_NOT_ENDED = ("period_not_ended", Kind.PRECONDITION)
    EARLIER_PERIOD_OPEN = ("earlier_period_not_finalized", Kind.PRECONDITION)
    INVOICE_VOIDED = ("invoice_voided", Kind.PRECONDITION)
    INVOICE_ALREADY_VOIDED = ("invoice_already_voided", Kind.PRECONDITION)
    INVOICE_NOT_FINALIZED = ("invoice_not_finalized", Kind.PRECONDITION)
    INVOICE_NOT_LATEST = ("invoice_not_latest_finalized", Kind.PRECONDITION)
    IDEMPOTENCY_KEY_REUSED = ("idempotency_key_reused_with_different_request", Kind.EXISTS)
    STREAM_VERSION_CONFLICT = ("stream_version_conflict", Kind.CONFLICT)
    METRICS_CHANGING = ("metrics_changing", Kind.CONFLICT)
    BATCH_TOO_LARGE = ("batch_too_large", Kind.INVALID)
    PROJECTION_VERSION_EXISTS = ("projection_version_exists", Kind.EXISTS)
    PROJECTION_NOT_BUILDING = ("projection_not_building", Kind.PRECONDITION)
    PROJECTION_NOT_RETIRED = ("projection_not_retired", Kind.PRECONDITION)
    NOT_CAUGHT_UP = ("read_model_not_caught_up", Kind.UNAVAILABLE)
    INGEST_QUEUE_FULL = ("ingest_queue_full", Kind.EXHAUSTED)
    SHUTTING_DOWN = ("shutting_down", Kind.UNAVAILABLE)
    GRANT_EXISTS = ("grant_exists", Kind.EXISTS)
    CONTRACT_REQUIRED = ("customer_has_no_contract", Kind.PRECONDITION)
    SPEND_ALERT_EXISTS = ("spend_alert_exists", Kind.EXISTS)
    REPORT_TOO_LARGE = ("report_too_large", Kind.PRECONDITION)

    def __init__(self, code: str, kind: Kind) -> None:
        self.code = code
        self.kind = kind


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: ``field`` is a path such as ``events[3].timestamp``."""

    field: str
    description: str


class DomainError(Exception):
    """A request broke ``rule``; nothing was written."""

    def __init__(
        self, rule: Rule, message: str, violations: tuple[FieldViolation, ...] = ()
    ) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.violations = violations

    def within(self, parent: str) -> DomainError:
        """The same error with field paths under ``parent`` (a nested message)."""
        violations = tuple(
            FieldViolation(f"{parent}.{v.field}", v.description) for v in self.violations
        )
        return DomainError(self.rule, self.message, violations)


def invalid(field: str, description: str) -> DomainError:
    """Shorthand for a request with one bad field."""
    return DomainError(
        Rule.REQUEST_INVALID,
        f"{field}: {description}",
        (FieldViolation(field, description),),
    )


class Violations:
    """Collects field violations so a request reports all of them at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items)
            raise DomainError(Rule.REQUEST_INVALID, summary, tuple(self.items))
