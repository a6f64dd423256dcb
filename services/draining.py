"""Graceful shutdown that ends when Accrual's own calls have finished.

gRPC's graceful stop waits until every call is over or the grace runs out.
Calls that no handler of ours is serving can hold it for the whole grace:
long-lived health watches, and, we suspect from one failed test, a call that
crosses the shutdown in flight, accepted by gRPC but never handed on. So the
server counts the calls its handlers are running, and once none has run for
a moment after the stop began, it stops at once: the calls left are refused
UNAVAILABLE, never acknowledged, and safe to retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc

# How long no handler must have run before the rest is refused: long enough for
# a call matched just before the stop to reach its handler, and for a finished
# handler's reply to be sent.
SETTLE_S: Final = 0.25
_OURS: Final = "/accrual.v1."


class CallsInFlight(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts the Accrual calls whose handlers are running (not health or reflection)."""

    def __init__(self) -> None:
        self.running = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not getattr(handler_call_details, "method", "").startswith(_OURS):
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(handler.unary_stream))
        return handler

    def _unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(request: object, context: grpc.aio.ServicerContext) -> Any:
            self.running += 1
            try:
                return await behavior(request, context)
            finally:
                self.running -= 1

        return counted

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        async def counted(request: object, context: grpc.aio.ServicerContext) -> Any:
            self.running += 1
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                self.running -= 1

        return counted

    async def settled(self, settle_s: float = SETTLE_S) -> None:
        """Return once no handler has run for ``settle_s`` (polled: it is only
        awaited while the server stops)."""
        quiet_since = asyncio.get_running_loop().time()
        while True:
            now = asyncio.get_running_loop().time()
            if self.running:
                quiet_since = now
            elif now - quiet_since >= settle_s:
                return
            await asyncio.sleep(settle_s / 5)


async def stop_when_drained(server: grpc.aio.Server, calls: CallsInFlight, grace_s: float) -> None:
    """Stop ``server`` gracefully, and at once when its handlers have all finished."""
    stopping = asyncio.ensure_future(server.stop(grace_s))
    settled = asyncio.ensure_future(calls.settled())
    try:
        await asyncio.wait({stopping, settled}, return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            # A smaller grace in a later call stops the server sooner (gRPC's docs).
            await server.stop(None)
        await stopping
    finally:
        settled.cancel()
