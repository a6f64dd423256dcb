"""Stream naming: one place that says which events live in which stream."""

from __future__ import annotations


def metric_stream(metric_id: str) -> str:
    return f"metric-{metric_id}"


def product_stream(product_id: str) -> str:
    return f"product-{product_id}"


def product_cost_stream(product_id: str) -> str:
    """The unit costs set for a product over time."""
    return f"productcost-{product_id}"


def rate_card_stream(rate_card_id: str) -> str:
    """Stream version n is rate card version n."""
    return f"ratecard-{rate_card_id}"


def draft_stream(rate_card_id: str) -> str:
    """A rate card's drafts (numbered from 1), their approvals and publishes."""
    return f"pricingdrafts-{rate_card_id}"


def customer_stream(customer_id: str) -> str:
    """The customer, its contracts and its finalized invoices."""
    return f"customer-{customer_id}"


def contract_stream(contract_id: str) -> str:
    """Claims a contract id and names its customer."""
    return f"contract-{contract_id}"


def usage_stream(customer_id: str) -> str:
    return f"usage-{customer_id}"


def usage_stream_customer(stream_id: str) -> str:
    """The customer whose usage stream this is."""
    prefix, _, customer_id = stream_id.partition("-")
    assert prefix == "usage", stream_id
    return customer_id


def access_stream(principal: str) -> str:
    """Denied calls of one principal, for the audit trail."""
    return f"access-{principal}"


def alerts_stream(customer_id: str) -> str:
    """The spend alerts set for a customer."""
    return f"alerts-{customer_id}"


def alert_crossing_stream(customer_id: str, alert_id: str, crossing_key: str) -> str:
    """One crossing of one alert: created once, so it is recorded once.

    ``/`` separates the parts because ids never contain it, while they may contain
    ``-``: "a-b" + "1" and "a" + "b-1" must not name the same stream.
    """
    return f"alert-{customer_id}/{alert_id}/{crossing_key}"
