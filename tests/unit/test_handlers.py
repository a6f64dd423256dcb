"""Accrual's handlers are wrapped once, at registration, first wrapper outermost."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from services.handlers import WrappedRegistration


class RecordingServer:
    """The two registration calls a grpc.aio.Server takes, recorded."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.by_name: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.by_name[service] = dict(handlers)


class Tag:
    """Wraps a unary handler so that a call records this wrapper's name."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name, self.trail, self.methods = name, trail, list[str]()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.methods.append(method)
        inner = handler.unary_unary

        async def tagged(request: Any, context: Any) -> Any:
            self.trail.append(self.name)
            return await inner(request, context)

        return handler._replace(unary_unary=tagged)


def add_echo_service(servicer: Any, server: Any) -> None:
    """Registers like generated code: generic handler first, then by name."""
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(servicer.Echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Svc", handlers),))
    server.add_registered_method_handlers("t.Svc", handlers)


class EchoServicer:
    def __init__(self, trail: list[str]) -> None:
        self.trail = trail

    async def Echo(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
        self.trail.append("handler")
        return request


def test_each_method_is_wrapped_once_with_the_first_wrapper_outermost() -> None:
    server, trail = RecordingServer(), list[str]()
    outer, inner = Tag("outer", trail), Tag("inner", trail)
    WrappedRegistration(server, [outer, inner]).register(add_echo_service, EchoServicer(trail))  # type: ignore[arg-type]

    assert outer.methods == inner.methods == ["/t.Svc/Echo"]
    (generic,) = server.generic
    details = type("Details", (), {"method": "/t.Svc/Echo", "invocation_metadata": ()})()
    handler = generic.service(details)
    assert asyncio.run(handler.unary_unary(b"x", None)) == b"x"
    assert trail == ["outer", "inner", "handler"]


def test_methods_are_registered_only_as_a_generic_handler() -> None:
    """Not by name: gRPC's aio server waits for the next call on one pending
    request per method registered by name, a cost on every call."""
    server = RecordingServer()
    WrappedRegistration(server, []).register(add_echo_service, EchoServicer([]))  # type: ignore[arg-type]
    assert server.by_name == {}
    assert len(server.generic) == 1


def test_a_service_registered_only_as_a_generic_handler_is_refused() -> None:
    def add_opaquely(servicer: Any, server: Any) -> None:
        handlers = {"Echo": grpc.unary_unary_rpc_method_handler(servicer.Echo)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Svc", handlers),))

    server = RecordingServer()
    with pytest.raises(RuntimeError, match="add_opaquely registered no method handlers"):
        WrappedRegistration(server, []).register(add_opaquely, EchoServicer([]))  # type: ignore[arg-type]
    assert server.generic == [] and server.by_name == {}  # nothing unwrapped got through
