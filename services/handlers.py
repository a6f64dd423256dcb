"""What runs around every Accrual call, wrapped once per method when it is registered.

gRPC's aio interceptors run on every call: each is awaited in turn and builds
the next handler anew. What Accrual does around a call (count it, decode its
request tolerantly, admit its caller) depends only on the method, so each
:class:`HandlerWrapper` wraps a method's handler once, here, and a call only
runs the wrapped functions (single-event RecordUsage calls went about 3%
faster, in eight alternating pairs of runs). Health checking and reflection
are registered here with no wrappers: they are open, and not counted.

Every method is registered as a generic handler only, never by name. gRPC's
aio server keeps one pending request per method registered by name, plus one
for the rest, and waits for the next call with ``asyncio.wait`` over all of
them: a cost per call that grows with the methods served (Accrual's 35, and
health checking's and reflection's). That wait took 30 us a call over 45
pending requests against 10 us over one, in a loop that did nothing else; in
a profile of the server under 64 single-event callers it was 4% of all
samples. A generic handler costs instead a dictionary lookup for each service
registered before the call's (UsageService is registered first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import grpc

Servicer = TypeVar("Servicer")


class HandlerWrapper(Protocol):
    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` of ``method`` (``/package.Service/Method``), with this wrapper's
        work around it."""
        ...


class GenericHandlerRegistry(Protocol):
    """Where generic handlers go: a ``grpc.aio.Server``, or a bench's stand-in."""

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...


class WrappedRegistration:
    """Registers services on ``server`` with each method's handler wrapped by
    ``wrappers``, the first outermost (it sees a call first).

    It stands in for the server while the generated ``add_*Servicer_to_server``
    function registers a service: that function passes its handlers twice, as a
    generic handler (opaque) and by name, and only the second can be wrapped, so
    the wrapped handlers are registered from it, as a generic handler (see the
    module's docstring for why not by name).
    """

    def __init__(self, server: GenericHandlerRegistry, wrappers: Sequence[HandlerWrapper]) -> None:
        self._server = server
        self._wrappers = tuple(reversed(wrappers))  # innermost first
        self._registered: list[str] = []

    def register(self, add: Callable[[Servicer, Any], None], servicer: Servicer) -> None:
        """``add(servicer, server)``, the generated function, with wrapped handlers."""
        before = len(self._registered)
        add(servicer, self)
        if len(self._registered) == before:
            raise RuntimeError(f"{add.__name__} registered no method handlers by name")

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Ignored: the same handlers come to :meth:`add_registered_method_handlers`."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        generic = grpc.method_handlers_generic_handler(service, wrapped)
        self._server.add_generic_rpc_handlers((generic,))
        self._registered.append(service)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        for wrapper in self._wrappers:
            handler = wrapper.wrap(method, handler)
        return handler
