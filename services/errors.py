"""Domain errors to gRPC status, in one table; everything else becomes INTERNAL.

Each broken rule maps to a status code by its kind and travels with
``google.rpc`` details: ``ErrorInfo`` names the rule, ``BadRequest`` lists
field violations, ``RetryInfo`` says when a retry may succeed. Unexpected
exceptions are logged with their stack and answered with a generic message:
no SQL, stack trace or other customer's data ever reaches a caller.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import grpc
import psycopg
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from psycopg_pool import PoolTimeout

from ledger.core.errors import DomainError, FieldViolation, Kind, Rule
from services.observe import observed_call

ERROR_DOMAIN: Final = "accrual.v1"

STATUS_BY_KIND: Final[dict[Kind, grpc.StatusCode]] = {
    Kind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Kind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.CONFLICT: grpc.StatusCode.ABORTED,
    Kind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

_log = structlog.get_logger("accrual.errors")

Request = TypeVar("Request")
Response = TypeVar("Response")


# Errors echo request values, and a client refuses a reply whose headers pass
# 8 KiB (gRPC's default soft limit, past which it drops replies at random). The
# message travels twice: percent-encoded in grpc-message (up to three bytes a
# byte) and inside the serialized status, base64-encoded (four bytes for three)
# in grpc-status-details-bin. So the limits are in UTF-8 bytes, not characters:
# 500 characters of emoji once made 8,326 bytes of headers.
MESSAGE_BYTES_MAX: Final = 900  # at most 2,700 bytes in grpc-message
VIOLATION_TEXT_BYTES_MAX: Final = 200  # a violation's field, and its description
VIOLATIONS_BYTES_MAX: Final = 2_000  # at most 4,000 bytes of status in base64
VIOLATIONS_MAX: Final = 50


def _cut(text: str, limit: int = MESSAGE_BYTES_MAX) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8, marked "…" where it was cut."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - len("…".encode())].decode("utf-8", "ignore") + "…"


def _bad_request(violations: Sequence[FieldViolation]) -> error_details_pb2.BadRequest:
    """The first violations, as many as fit the status's budget."""
    bad_request = error_details_pb2.BadRequest()
    budget = VIOLATIONS_BYTES_MAX
    for v in violations[:VIOLATIONS_MAX]:
        item = error_details_pb2.BadRequest.FieldViolation(
            field=_cut(v.field, VIOLATION_TEXT_BYTES_MAX),
            description=_cut(v.description, VIOLATION_TEXT_BYTES_MAX),
        )
        budget -= item.ByteSize() + 3  # its tag and length in the list
        if budget < 0:
            break
        bad_request.field_violations.append(item)
    return bad_request


def status_for(error: DomainError) -> status_pb2.Status:
    """The rich status of a domain error."""
    code = STATUS_BY_KIND[error.rule.kind]
    details = [
        error_details_pb2.ErrorInfo(reason=error.rule.code.upper(), domain=ERROR_DOMAIN),
    ]
    if error.violations:
        details.append(_bad_request(error.violations))
    if error.rule.kind in (Kind.CONFLICT, Kind.EXHAUSTED, Kind.UNAVAILABLE):
        details.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=50_000_000))
        )
    return _status(code.value[0], _cut(error.message), details)


def _status(code: int, message: str, details: list[Any]) -> status_pb2.Status:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code, message=message, details=packed)


_UNSTORABLE: Final = DomainError(
    Rule.REQUEST_INVALID,
    "a value in the request cannot be stored (for example a NUL character)",
    (FieldViolation("request", "contains a value the ledger cannot store"),),
)
_INTERNAL: Final = _status(code_pb2.INTERNAL, "internal error; details are in the server log", [])
_UNAVAILABLE: Final = _status(
    code_pb2.UNAVAILABLE,
    "the ledger database is unavailable; retry with backoff",
    [error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))],
)


def _status_of(error: Exception, method: str) -> status_pb2.Status:
    """The status that answers ``error``; unexpected errors are logged with their stack."""
    if isinstance(error, DomainError):
        return status_for(error)
    if _database_unreachable(error):
        _log.warning("database unavailable", exc_info=error)
        return _UNAVAILABLE
    if isinstance(error, psycopg.errors.DataError):
        # A value PostgreSQL cannot hold (a NUL character, say) that no earlier
        # check caught: the request is at fault, and nothing was written.
        _log.warning("value refused by the database", exc_info=error)
        return status_for(_UNSTORABLE)
    if isinstance(error, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return status_for(
            DomainError(Rule.STREAM_VERSION_CONFLICT, "a concurrent write won; retry")
        )
    _log.error("unexpected error", method=method, exc_info=error)
    return _INTERNAL


# SQLSTATE classes of a database that cannot be reached or is going away.
_UNREACHABLE_SQLSTATES: Final = ("08", "57P01", "57P02", "57P03")


def _database_unreachable(error: Exception) -> bool:
    """Connection failures only: other OperationalErrors (limits) are not retryable."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate
    return state is None or state.startswith(_UNREACHABLE_SQLSTATES)


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message."""


UNDECODABLE: Final = _Undecodable()
_UNDECODABLE_STATUS: Final = DomainError(
    Rule.REQUEST_INVALID,
    "the request is not a valid protobuf message (a string field with bad UTF-8?)",
    (FieldViolation("request", "cannot be decoded"),),
)


class DecodeRequests:
    """Undecodable requests reach the servicer as :data:`UNDECODABLE`, answered
    INVALID_ARGUMENT, instead of gRPC's own UNKNOWN. A
    :class:`~services.handlers.HandlerWrapper`."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        decode = handler.request_deserializer
        if decode is None:
            return handler

        def tolerant(data: bytes) -> object:
            try:
                return decode(data)
            except Exception:
                return UNDECODABLE

        return handler._replace(request_deserializer=tolerant)


def rpc(
    method: Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Wrap a servicer method: observed (logs, metrics), and every error a proper status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        with observed_call(context, method.__name__) as call:
            try:
                if request is UNDECODABLE:
                    raise _UNDECODABLE_STATUS
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                status = _status_of(error, method.__qualname__)
                call.code = code_pb2.Code.Name(status.code)
                await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status always raises")

    return wrapper


def rpc_stream(
    method: Callable[[Any, Request, grpc.aio.ServicerContext], AsyncIterator[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], AsyncIterator[Response]]:
    """:func:`rpc` for server-streaming methods (async generators)."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Response]:
        with observed_call(context, method.__name__) as call:
            try:
                if request is UNDECODABLE:
                    raise _UNDECODABLE_STATUS
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                status = _status_of(error, method.__qualname__)
                call.code = code_pb2.Code.Name(status.code)
                await context.abort_with_status(rpc_status.to_status(status))

    return wrapper
