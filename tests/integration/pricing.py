"""Publishing prices the only way there is: drafted by one principal, approved by another."""

from __future__ import annotations

import dataclasses

from ledger.app.catalog import CatalogCommands, RateCardInput
from ledger.app.context import RequestContext
from ledger.core.catalog import RateCardVersion


async def publish_approved(
    catalog: CatalogCommands, card: RateCardInput, author: RequestContext
) -> tuple[RateCardVersion, int]:
    """Draft and publish as ``author``, approved in between by a second principal."""
    draft, _ = await catalog.draft_rate_card(card, author)
    approver = dataclasses.replace(author, actor=f"{author.actor}-approver", request_id="")
    await catalog.approve_draft(card.rate_card_id, draft.draft, approver)
    return await catalog.publish_draft(card.rate_card_id, draft.draft, author)
