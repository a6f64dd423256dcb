"""The gate every Accrual call passes: authenticate, rate-limit, authorize.

Health checking and reflection are open (probes and tools carry no
credential); every ``accrual.v1`` method needs a bearer token
(``authorization: Bearer acr_…``) or, over mutual TLS, a client certificate
whose common name is an allowed principal. The principal is then the actor
on every event the call writes.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import grpc
import structlog
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.auth.limits import RateLimiter
from services.auth.policy import allows
from services.auth.principals import Principal

_ERROR_DOMAIN: Final = "accrual.dev"

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "accrual_caller", default=None
)
_log = structlog.get_logger("accrual.auth")


def current_principal() -> Principal | None:
    """The authenticated caller of the call being served (None outside a call)."""
    return _caller.get()


class Credentials(Protocol):
    async def principal_for_token(self, token: str) -> Principal | None: ...

    async def principal_for_certificate(self, common_name: str) -> Principal | None: ...


class DenialLog(Protocol):
    async def __call__(self, principal: Principal, method: str, reason: str) -> None: ...


class Guard:
    """Wraps each Accrual handler so it runs only for an admitted principal (a
    :class:`~services.handlers.HandlerWrapper`)."""

    def __init__(
        self, credentials: Credentials, limiter: RateLimiter, record_denial: DenialLog
    ) -> None:
        self._credentials = credentials
        self._limiter = limiter
        self._record_denial = record_denial

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streaming(method, handler.unary_stream))
        raise AssertionError(f"{method}: no policy for client-streaming calls")

    def _unary(self, method: str, behaviour: Any) -> Any:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = _caller.set(await self._admit(method, request, context))
            try:
                return await behaviour(request, context)
            finally:
                _caller.reset(token)

        return guarded

    def _streaming(self, method: str, behaviour: Any) -> Any:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = _caller.set(await self._admit(method, request, context))
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                _caller.reset(token)

        return guarded

    async def _admit(
        self, method: str, request: Any, context: grpc.aio.ServicerContext
    ) -> Principal:
        try:
            principal = await self._authenticate(context)
        except Exception:  # the credential tables are out of reach (database away)
            _log.warning("credentials could not be checked", method=method, exc_info=True)
            await _abort(context, code_pb2.UNAVAILABLE, "credentials cannot be checked now")
            raise AssertionError("abort raises") from None
        if principal is None:
            _log.warning("unauthenticated call", method=method, peer=context.peer())
            await _abort(context, code_pb2.UNAUTHENTICATED, "a valid credential is required")
            raise AssertionError("abort raises")
        wait_s = self._limiter.admit(principal.name)
        if wait_s > 0:
            message = f"rate limit for {principal.name!r} exceeded; retry in {wait_s:.3f}s"
            await _abort(context, code_pb2.RESOURCE_EXHAUSTED, message, retry_after_s=wait_s)
        if not allows(principal, method):
            await self.deny(principal, method, "role does not allow this call", context)
        if (outside := _out_of_scope(principal, request)) is not None:
            await self.deny(principal, method, outside, context)
        return principal

    async def deny(
        self, principal: Principal, method: str, reason: str, context: grpc.aio.ServicerContext
    ) -> None:
        """Refuse the call as PERMISSION_DENIED, after recording the refusal."""
        _log.warning("permission denied", principal=principal.name, method=method, why=reason)
        await self._record_denial(principal, method, reason)
        roles = ", ".join(sorted(principal.roles))
        message = f"{principal.name!r} ({roles}) may not call {method}: {reason}"
        await _abort(context, code_pb2.PERMISSION_DENIED, message)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """A bearer token if one is sent (a bad one is not excused by a certificate),
        else the verified client certificate's common name."""
        metadata = dict(context.invocation_metadata() or ())
        authorization = str(metadata.get("authorization") or "")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            return await self._credentials.principal_for_token(token.strip())
        names = (context.auth_context() or {}).get("x509_common_name") or []
        if len(names) != 1:
            return None
        try:
            common_name = names[0].decode()
        except UnicodeDecodeError:
            return None
        return await self._credentials.principal_for_certificate(common_name)


def _out_of_scope(principal: Principal, request: Any) -> str | None:
    """Why a customer-scoped principal may not make this request (None: it may).

    The scope is checked against every customer the request names: each usage
    event's, the customer or contract being created, or ``customer_id``. A
    request whose customer is not in it (an invoice by id, a ledger-wide audit)
    is refused to a scoped principal rather than looked up.
    """
    if principal.customers is None:
        return None
    named = _customers_named(request)
    if not named:
        return "a customer-scoped credential must name the customer (not an invoice id)"
    outside = sorted(named - principal.customers)
    if outside:
        return f"not allowed for customer {', '.join(map(repr, outside[:3]))}"
    return None


def _customers_named(request: Any) -> set[str]:
    """The customers a request acts on; empty if any part of it is not a customer id."""
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    if "invoice_id" in fields and request.invoice_id:
        return set()  # the invoice's own customer decides, and the request does not say it
    named: set[str] = set()
    if "events" in fields:
        named |= {event.customer_id for event in request.events}
    for holder in ("customer", "contract"):  # CreateCustomer, CreateContract
        if holder in fields and request.HasField(holder):
            named.add(getattr(request, holder).customer_id)
    if "customer_id" in fields and request.customer_id:
        named.add(request.customer_id)
    if "customer_ids" in fields:  # reports: a scoped principal must name its customers
        named |= set(request.customer_ids)
    return named


async def _abort(
    context: grpc.aio.ServicerContext, code: int, message: str, retry_after_s: float = 0.0
) -> None:
    status = status_pb2.Status(code=code, message=message)
    reason = code_pb2.Code.Name(code).lower()
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=_ERROR_DOMAIN))
    if retry_after_s > 0:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    await context.abort_with_status(rpc_status.to_status(status))
