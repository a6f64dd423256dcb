"""Who asked, why, and under which request: recorded on every event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.core.canonical import canonical_json, sha256_hex


@dataclass(frozen=True)
class RequestContext:
    """The caller's identity and the request's ids, carried into event metadata."""

    actor: str
    request_id: str = ""
    trace_id: str = ""
    span_id: str = ""
    reason: str = ""

    def metadata(self) -> dict[str, str]:
        fields = {
            "actor": self.actor,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "reason": self.reason,
        }
        return {key: value for key, value in fields.items() if value}

    def idempotency_key(self, command: str) -> str | None:
        """The key that makes a retried command return its first result."""
        return f"{command}:{self.request_id}" if self.request_id else None


def request_hash(command: Any) -> str:
    """Hash of a command's content; a reused key with another hash is refused."""
    return sha256_hex(canonical_json(command))
