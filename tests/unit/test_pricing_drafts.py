"""Four eyes, as pure rules: who may approve and when a draft may be published."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from ledger.core.catalog import RateCardVersion
from ledger.core.errors import DomainError, Rule
from ledger.core.events import (
    RateCardDraftApproved,
    RateCardDrafted,
    RateCardDraftPublished,
    RateCardPublished,
)
from ledger.core.pricing_drafts import DraftStatus, approve, drafts_of, find_draft, publish

CARD = RateCardVersion(
    rate_card_id="list",
    version=0,
    name="List",
    currency="USD",
    currency_decimals=2,
    effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    rates=(),
)


NOW = datetime(2026, 2, 1, tzinfo=UTC)


def broken_rule(action: object) -> Rule:
    with pytest.raises(DomainError) as raised:
        action()  # type: ignore[operator]
    return raised.value.rule


def test_a_draft_moves_from_drafted_to_approved_to_published() -> None:
    drafted = drafts_of([RateCardDrafted(1, CARD, "pat")])[1]
    assert drafted.status is DraftStatus.DRAFTED

    approval = approve(drafted, "quinn")
    assert approval == RateCardDraftApproved("list", 1, "quinn")
    approved = drafts_of([RateCardDrafted(1, CARD, "pat"), approval])[1]
    assert (approved.status, approved.approved_by) == (DraftStatus.APPROVED, "quinn")

    published, closed = publish(approved, 4, "pat", NOW)
    assert published == RateCardPublished(dataclasses.replace(CARD, version=4))
    assert closed == RateCardDraftPublished("list", 1, 4, "pat")
    done = drafts_of([RateCardDrafted(1, CARD, "pat"), approval, closed])[1]
    assert (done.status, done.published_version) == (DraftStatus.PUBLISHED, 4)


def test_the_author_cannot_approve_and_nothing_happens_twice() -> None:
    events = [RateCardDrafted(1, CARD, "pat")]
    drafted = drafts_of(events)[1]
    assert broken_rule(lambda: approve(drafted, "pat")) is Rule.SELF_APPROVAL
    assert broken_rule(lambda: publish(drafted, 2, "quinn", NOW)) is Rule.DRAFT_NOT_APPROVED

    approved = drafts_of([*events, RateCardDraftApproved("list", 1, "quinn")])[1]
    assert broken_rule(lambda: approve(approved, "sam")) is Rule.DRAFT_ALREADY_APPROVED

    published = drafts_of(
        [
            *events,
            RateCardDraftApproved("list", 1, "quinn"),
            RateCardDraftPublished("list", 1, 2, "pat"),
        ]
    )[1]
    assert broken_rule(lambda: approve(published, "sam")) is Rule.DRAFT_ALREADY_PUBLISHED
    assert broken_rule(lambda: publish(published, 3, "pat", NOW)) is Rule.DRAFT_ALREADY_PUBLISHED


def test_drafts_are_found_by_number() -> None:
    drafts = drafts_of([RateCardDrafted(1, CARD, "pat"), RateCardDrafted(2, CARD, "sam")])
    assert find_draft(drafts, "list", 2).drafted_by == "sam"
    assert broken_rule(lambda: find_draft(drafts, "list", 3)) is Rule.DRAFT_NOT_FOUND


def test_a_draft_without_a_date_takes_effect_when_published_not_when_drafted() -> None:
    undated = RateCardDrafted(1, CARD, "pat", effective_at_publish=True)
    approved = drafts_of([undated, RateCardDraftApproved("list", 1, "quinn")])[1]
    published, _ = publish(approved, 2, "pat", NOW)
    assert published.rate_card.effective_from == NOW != CARD.effective_from

    dated = drafts_of([RateCardDrafted(1, CARD, "pat"), RateCardDraftApproved("list", 1, "q")])
    kept, _ = publish(dated[1], 2, "pat", NOW)
    assert kept.rate_card.effective_from == CARD.effective_from
