"""Offset pages over a list the service computes: the token is the next offset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ledger.core.errors import invalid

T = TypeVar("T")


def page_of(
    items: Sequence[T], page_size: int, page_token: str, *, default: int, most: int
) -> tuple[list[T], str]:
    """``page_size`` items (``default`` if 0, at most ``most``) from the token's offset,
    and the token of the next page ("" after the last)."""
    if page_size < 0:
        raise invalid("page_size", "must not be negative")
    if page_token and not (page_token.isascii() and page_token.isdigit() and len(page_token) <= 9):
        raise invalid("page_token", "is not a token this service issued")
    after = int(page_token) if page_token else 0
    size = min(page_size or default, most)
    more = after + size < len(items)
    return list(items[after : after + size]), str(after + size) if more else ""
