"""A stopping server waits for Accrual's calls in flight, and for nothing else."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.accrual.v1 import contracts_pb2, contracts_pb2_grpc, usage_pb2, usage_pb2_grpc
from services.bootstrap import running_app
from services.draining import CallsInFlight
from services.server import Server, create_server
from tests.e2e.conftest import bearer, issue
from tests.e2e.conftest import test_settings as default_settings

GRACE_S = 30.0  # far longer than any of these stops may take
SLOW_S = 1.0


class SlowCreateCustomer:
    """Holds each customer's creation for SLOW_S, inside the handler (so counted)."""

    def __init__(self, customers: Any) -> None:
        self.entered = asyncio.Event()
        self._create = customers.create_customer

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await asyncio.sleep(SLOW_S)
        return await self._create(*args, **kwargs)


Body = Callable[[Server, grpc.aio.Channel, str, SlowCreateCustomer], Awaitable[None]]


def serve_and_stop(database_url: str, body: Body) -> None:
    """Serve in this test's own loop, so that the body can stop the server itself."""
    token = issue(database_url, "drain-admin", "admin")

    async def main() -> None:
        async with running_app(default_settings(), database_url) as app:
            slow = SlowCreateCustomer(app.customers)
            app.customers.create_customer = slow  # type: ignore[method-assign]
            server = create_server(app, "127.0.0.1:0")
            await server.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await body(server, channel, token, slow)

    asyncio.run(main())


async def read_to_the_end(stream: Any) -> None:
    while True:
        await stream.read()


def test_a_health_watch_does_not_hold_up_the_stop(database_url: str) -> None:
    async def body(
        server: Server, channel: grpc.aio.Channel, token: str, slow: SlowCreateCustomer
    ) -> None:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.stop(GRACE_S)
        assert loop.time() - started < GRACE_S / 3  # not the grace: no call of ours ran
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_to_the_end(watch)  # NOT_SERVING, then the stream is cut
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable

    serve_and_stop(database_url, body)


def test_a_call_in_flight_finishes_before_the_server_stops(database_url: str) -> None:
    async def body(
        server: Server, channel: grpc.aio.Channel, token: str, slow: SlowCreateCustomer
    ) -> None:
        stub = contracts_pb2_grpc.ContractServiceStub(channel)
        customer = contracts_pb2.Customer(customer_id="drained", name="Drained")
        request = contracts_pb2.CreateCustomerRequest(customer=customer)
        call = asyncio.ensure_future(stub.CreateCustomer(request, metadata=bearer(token)))
        await asyncio.wait_for(slow.entered.wait(), 10)
        assert server.calls.running == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.stop(GRACE_S)
        stopped_after = loop.time() - started
        reply = await call  # answered, not cancelled
        assert reply.customer_id == "drained"
        assert server.calls.running == 0
        assert SLOW_S / 2 < stopped_after < GRACE_S / 3  # waited for it, then no longer

    serve_and_stop(database_url, body)


def test_answered_calls_leave_no_context_for_the_cycle_collector(database_url: str) -> None:
    """gRPC keeps a call's done callbacks in a reference cycle with its context.
    Counting a unary call must not add one: at thousands of calls a second, the
    cyclic collector's pauses over those contexts were the slowest calls."""

    async def body(
        server: Server, channel: grpc.aio.Channel, token: str, slow: SlowCreateCustomer
    ) -> None:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        # Answered OK, the event refused inside (no such customer): as cheap a
        # call as there is down RecordUsage's whole path.
        event = usage_pb2.UsageEvent(
            transaction_id="t-1", customer_id="nobody", event_type="completion"
        )
        request = usage_pb2.RecordUsageRequest(events=[event])
        gc.collect()
        gc.disable()  # what the calls leave in cycles stays, to be counted
        try:
            for _ in range(20):
                reply = await stub.RecordUsage(request, metadata=bearer(token))
                assert reply.results[0].status == usage_pb2.UsageEventResult.REJECTED
            await asyncio.sleep(0.2)  # the server finishes the last call after its reply
            contexts = [o for o in gc.get_objects() if type(o).__name__ == "_ServicerContext"]
        finally:
            gc.enable()
            await server.stop(0)
        assert contexts == []  # each freed by reference counting as its call ended

    serve_and_stop(database_url, body)


class EndingContext:
    """The part of a servicer context the counter uses: gRPC ends the call later."""

    def __init__(self) -> None:
        self.done: list[Callable[[object], None]] = []

    def add_done_callback(self, callback: Callable[[object], None]) -> None:
        self.done.append(callback)

    def end(self) -> None:
        for callback in self.done:
            callback(self)


def test_streamed_calls_count_until_grpc_ends_them() -> None:
    """From the handler's start until gRPC ends the call (its status sent, or the
    client gone), not until the handler's generator is cleaned up."""
    calls = CallsInFlight()
    seen: list[int] = []

    async def stream(request: object, context: object) -> AsyncIterator[int]:
        for n in range(3):
            seen.append(calls.running)
            yield n

    async def main() -> list[int]:
        context = EndingContext()
        counted = calls._stream(stream)
        responses = counted(None, context)
        first = await anext(responses)  # the client goes away after one message
        assert calls.running == 1
        context.end()
        return [first]

    assert asyncio.run(main()) == [0]
    assert seen == [1]
    assert calls.running == 0


def test_unary_calls_count_until_their_handler_ends_and_while_stopping_until_sent() -> None:
    """Before the stop, a unary call is counted until its handler returns, raises
    or is cancelled, with no done callback (whose cycle only the collector frees);
    once the stop has begun, until gRPC has sent its reply."""
    calls = CallsInFlight()

    async def answer(request: object, context: object) -> str:
        return "reply"

    async def fail(request: object, context: object) -> str:
        raise RuntimeError("handler failed")

    async def hang(request: object, context: object) -> str:
        await asyncio.sleep(60)
        return "never"

    async def main() -> None:
        context = EndingContext()
        assert await calls._unary(answer)(None, context) == "reply"
        assert (calls.running, context.done) == (0, [])
        with pytest.raises(RuntimeError):
            await calls._unary(fail)(None, EndingContext())
        assert calls.running == 0
        hanging = asyncio.ensure_future(calls._unary(hang)(None, EndingContext()))
        await asyncio.sleep(0)
        assert calls.running == 1
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert calls.running == 0

        calls.stopping = True
        context = EndingContext()
        assert await calls._unary(answer)(None, context) == "reply"
        assert calls.running == 1  # its reply is not sent yet
        context.end()
        assert calls.running == 0

    asyncio.run(main())


def test_stopping_waits_for_calls_that_begin_and_end_between_looks() -> None:
    """A call that begins and ends between two polls still restarts the quiet time."""
    calls = CallsInFlight()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.ensure_future(calls.settled(0.25))
        await asyncio.sleep(0.2)
        context = EndingContext()
        calls._begin(context)  # type: ignore[arg-type]
        context.end()  # at once: no poll sees it running
        await waiting
        return loop.time() - started

    assert asyncio.run(main()) >= 0.2 + 0.25
