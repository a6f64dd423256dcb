"""Graceful shutdown that ends when Accrual's own calls have finished.

gRPC's graceful stop waits until every call is over or the grace runs out.
Calls that no handler of ours is serving can hold it for the whole grace:
long-lived health watches, and, we suspect from one failed test, a call that
crosses the shutdown in flight, accepted by gRPC but never handed on. So the
server counts its calls under way, from the handler's start until the reply
is sent, and once none has begun or ended for a moment after the stop began,
it stops at once: the calls left, which no handler of ours began, are refused
UNAVAILABLE and safe to retry. (Before the stop, a unary call is counted only
until its handler returns, which leaves gRPC's per-call state no reference
cycle: see ``CallsInFlight._unary``.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc

# How long no call may have begun or ended before the rest is refused: long
# enough for a call gRPC handed on just before the stop to reach its handler.
SETTLE_S: Final = 0.25


class CallsInFlight:
    """Counts the Accrual calls under way (not health or reflection, which it does
    not wrap): from the handler's start until gRPC has ended the call, its reply
    sent or the client gone; a unary call that ends before the stop began, until
    its handler returns. A :class:`~services.handlers.HandlerWrapper`."""

    def __init__(self) -> None:
        self.running = 0
        self.changed_at = 0.0  # when a call last began or ended (monotonic seconds)
        self.stopping = False  # set by stop_when_drained: count replies until sent

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(handler.unary_stream))
        return handler

    def _unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        # Ended when the handler returns, not by a done callback: gRPC keeps a
        # call's callbacks in a cycle with its context, which only the cyclic
        # collector frees. Under 64 single-event callers those cycles made its
        # collections long pauses (30-85 ms every 2 s), the slowest 1% of calls.
        # While stopping, a call is counted until gRPC has sent its reply, as a
        # stream is: a large reply to a slow client may take longer than SETTLE_S.
        async def counted(request: object, context: grpc.aio.ServicerContext) -> Any:
            self._started()
            try:
                return await behavior(request, context)
            finally:
                if self.stopping:
                    context.add_done_callback(self._end)
                else:
                    self._end(context)

        return counted

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        async def counted(request: object, context: grpc.aio.ServicerContext) -> Any:
            self._begin(context)
            async for response in behavior(request, context):
                yield response

        return counted

    def _begin(self, context: grpc.aio.ServicerContext) -> None:
        # A stream is ended by gRPC when the call is over: after its last reply is
        # sent, and also when the client goes away mid-stream (a generator's own
        # cleanup can wait for the garbage collector).
        self._started()
        context.add_done_callback(self._end)

    def _started(self) -> None:
        self.running += 1
        self.changed_at = time.monotonic()

    def _end(self, _: object) -> None:
        self.running -= 1
        self.changed_at = time.monotonic()

    async def settled(self, settle_s: float = SETTLE_S) -> None:
        """Return once, for ``settle_s`` since this was called, no call has been
        under way, begun or ended (polled: it is only awaited while stopping)."""
        called_at = time.monotonic()
        while self.running or time.monotonic() - max(self.changed_at, called_at) < settle_s:
            await asyncio.sleep(settle_s / 5)


async def stop_when_drained(server: grpc.aio.Server, calls: CallsInFlight, grace_s: float) -> None:
    """Stop ``server`` gracefully, and at once when no call of ours is left under way."""
    calls.stopping = True
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
