"""Four eyes on every price: a rate card change is drafted, approved by someone
else, then published. A rollback is the same flow with an earlier version's rates.

Drafts live in their own stream, so nothing priced ever reads them: only the
``RateCardPublished`` written when an approved draft is published changes a bill.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from ledger.core.catalog import RateCardVersion
from ledger.core.errors import DomainError, Rule
from ledger.core.events import (
    DomainEvent,
    RateCardDraftApproved,
    RateCardDrafted,
    RateCardDraftPublished,
    RateCardPublished,
)


class DraftStatus(Enum):
    DRAFTED = "drafted"
    APPROVED = "approved"
    PUBLISHED = "published"


@dataclass(frozen=True)
class RateCardDraft:
    """A draft as its events leave it."""

    draft: int
    rate_card: RateCardVersion
    drafted_by: str
    copy_of_version: int = 0
    effective_at_publish: bool = False
    status: DraftStatus = DraftStatus.DRAFTED
    approved_by: str = ""
    published_version: int = 0


def drafts_of(events: Iterable[DomainEvent]) -> dict[int, RateCardDraft]:
    """Every draft of one rate card, by number, from its drafts stream."""
    drafts: dict[int, RateCardDraft] = {}
    for event in events:
        if isinstance(event, RateCardDrafted):
            drafts[event.draft] = RateCardDraft(
                event.draft,
                event.rate_card,
                event.drafted_by,
                event.copy_of_version,
                event.effective_at_publish,
            )
        elif isinstance(event, RateCardDraftApproved):
            drafts[event.draft] = dataclasses.replace(
                drafts[event.draft], status=DraftStatus.APPROVED, approved_by=event.approved_by
            )
        elif isinstance(event, RateCardDraftPublished):
            drafts[event.draft] = dataclasses.replace(
                drafts[event.draft], status=DraftStatus.PUBLISHED, published_version=event.version
            )
    return drafts


def find_draft(drafts: dict[int, RateCardDraft], rate_card_id: str, number: int) -> RateCardDraft:
    if number not in drafts:
        raise DomainError(Rule.DRAFT_NOT_FOUND, f"rate card {rate_card_id!r} has no draft {number}")
    return drafts[number]


def approve(draft: RateCardDraft, approver: str) -> RateCardDraftApproved:
    """The approval event, if ``approver`` may approve ``draft`` now."""
    card = draft.rate_card.rate_card_id
    if draft.status is DraftStatus.PUBLISHED:
        message = f"draft {draft.draft} of {card!r} is already published"
        raise DomainError(Rule.DRAFT_ALREADY_PUBLISHED, message)
    if draft.status is DraftStatus.APPROVED:
        message = f"draft {draft.draft} of {card!r} was already approved by {draft.approved_by!r}"
        raise DomainError(Rule.DRAFT_ALREADY_APPROVED, message)
    if approver == draft.drafted_by:
        message = f"{approver!r} drafted this change and cannot also approve it"
        raise DomainError(Rule.SELF_APPROVAL, message)
    return RateCardDraftApproved(card, draft.draft, approver)


def publish(
    draft: RateCardDraft, version: int, publisher: str, now: datetime
) -> tuple[RateCardPublished, RateCardDraftPublished]:
    """The published version and the draft's closing event, if it is approved.

    A draft made without an ``effective_from`` takes effect ``now``, when published.
    """
    card = draft.rate_card.rate_card_id
    if draft.status is DraftStatus.PUBLISHED:
        message = f"draft {draft.draft} of {card!r} is already version {draft.published_version}"
        raise DomainError(Rule.DRAFT_ALREADY_PUBLISHED, message)
    if draft.status is not DraftStatus.APPROVED:
        message = f"draft {draft.draft} of {card!r} needs approval by a second person first"
        raise DomainError(Rule.DRAFT_NOT_APPROVED, message)
    effective_from = now if draft.effective_at_publish else draft.rate_card.effective_from
    published = dataclasses.replace(draft.rate_card, version=version, effective_from=effective_from)
    return (
        RateCardPublished(published),
        RateCardDraftPublished(card, draft.draft, version, publisher),
    )
