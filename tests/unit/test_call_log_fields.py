"""A call's log fields: on every line of the call, the line's own first, and
unbound cleanly even when the call ends in another context."""

from __future__ import annotations

import contextvars

from services.logs import add_call_fields, bind_call_fields, unbind_call_fields


def test_lines_carry_the_calls_fields_and_their_own_win() -> None:
    token = bind_call_fields({"method": "RecordUsage", "principal": "svc"})
    try:
        line = add_call_fields(None, "info", {"event": "rpc", "principal": "other"})
    finally:
        unbind_call_fields(token)
    assert line == {"method": "RecordUsage", "principal": "other", "event": "rpc"}
    assert add_call_fields(None, "info", {"event": "after"}) == {"event": "after"}


def test_unbinding_in_another_context_clears_the_fields_there() -> None:
    """A server stream bound in one context may be closed in another (by the
    collector, after a cancelled call): unbinding must not raise there."""
    bound = contextvars.copy_context().run(bind_call_fields, {"method": "VerifyLedger"})
    elsewhere = contextvars.copy_context()
    elsewhere.run(bind_call_fields, {"method": "Other"})
    elsewhere.run(unbind_call_fields, bound)
    assert elsewhere.run(add_call_fields, None, "info", {"event": "x"}) == {"event": "x"}
