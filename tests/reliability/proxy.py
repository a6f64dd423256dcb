"""A TCP proxy that injects faults between a client (the service) and PostgreSQL.

``FaultyProxy`` listens on an ephemeral loopback port and forwards every
connection to an upstream host and port. Its asyncio loop runs in a background
thread, so a test drives it from ordinary (synchronous) code:

    with FaultyProxy("127.0.0.1", pg_port) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        proxy.delay(0.2)      # every chunk, both directions, arrives 0.2 s late
        proxy.blackhole(True) # bytes are read and dropped; connections stay open
        proxy.cut()           # every open connection is reset (RST)
        proxy.heal()          # no delay, no blackhole

Every method is thread-safe. Leaving the block closes the listener and every
connection and stops the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

CHUNK = 64 * 1024
_START_TIMEOUT_S = 10.0
_CALL_TIMEOUT_S = 10.0
_CLOSE = object()  # the queue's end-of-stream marker


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyProxy:
    """A loopback TCP proxy to ``upstream_host:upstream_port`` with injectable faults."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._delay = 0.0
        self._blackhole = False
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._port: int | None = None

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        ready: Future[int] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="faulty-proxy", daemon=True
        )
        self._thread.start()
        self._port = ready.result(timeout=_START_TIMEOUT_S)

    def close(self) -> None:
        """Stop listening, close every connection abruptly and stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(RuntimeError):
                self._call(self._shutdown)
        thread.join(timeout=_CALL_TIMEOUT_S)
        self._loop = None
        self._thread = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    # -- faults ---------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Hold every chunk, in both directions, ``seconds`` before passing it on."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        with self._lock:
            self._delay = float(seconds)

    def blackhole(self, on: bool) -> None:
        """While on, read and drop every byte; connections (new ones too) stay open."""
        with self._lock:
            self._blackhole = bool(on)

    def heal(self) -> None:
        """No delay and no blackhole (connections already cut stay cut)."""
        with self._lock:
            self._delay = 0.0
            self._blackhole = False

    def cut(self) -> int:
        """Reset every open connection (both sides); the number of connections cut."""
        return self._call(self._cut_all)

    @property
    def connections(self) -> int:
        """Open proxied connections."""
        with self._lock:
            return len(self._links)

    def _settings(self) -> tuple[float, bool]:
        with self._lock:
            return self._delay, self._blackhole

    # -- the loop's thread ----------------------------------------------------------

    def _call(self, make: object) -> int:
        """Run coroutine function ``make`` on the proxy's loop and wait for it."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")
        future = asyncio.run_coroutine_threadsafe(make(), loop)  # type: ignore[operator]
        result: int = future.result(timeout=_CALL_TIMEOUT_S)
        return result

    def _run(self, ready: Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=2))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, ready: Future[int]) -> None:
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        ready.set_result(int(self._server.sockets[0].getsockname()[1]))
        await self._stopped.wait()

    async def _shutdown(self) -> int:
        if self._server is not None:
            self._server.close()
        count = await self._cut_all()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        assert self._stopped is not None
        self._stopped.set()
        return count

    async def _cut_all(self) -> int:
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            self._abort(link)
        tasks = [task for link in links for task in link.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        return len(links)

    def _abort(self, link: _Link) -> None:
        link.closed = True
        for writer in link.writers():
            with contextlib.suppress(Exception):
                _reset(writer)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current and not task.done():
                task.cancel()

    def _finish(self, link: _Link) -> None:
        """Close both sides normally (one side ended) and forget the link."""
        with self._lock:
            self._links.discard(link)
        if link.closed:
            return
        link.closed = True
        for writer in link.writers():
            with contextlib.suppress(Exception):
                writer.close()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current and not task.done():
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(client=writer)
        with self._lock:
            self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), 10
            )
        except (OSError, TimeoutError):
            with self._lock:
                self._links.discard(link)
            _reset(writer)
            return
        link.upstream = up_writer
        if link.closed:  # cut while connecting
            _reset(up_writer)
            return
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*link.tasks, return_exceptions=True)
        with self._lock:
            self._links.discard(link)

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, target: asyncio.StreamWriter
    ) -> None:
        """Copy ``source`` to ``target`` chunk by chunk, each held for the delay.

        A reader stamps each chunk on arrival and a writer lets it go ``delay``
        later, so latency is added without throttling a busy stream.
        """
        queue: asyncio.Queue[tuple[float, bytes] | object] = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    data = await source.read(CHUNK)
                    if not data:
                        break
                    if self._settings()[1]:
                        continue  # blackholed: read and dropped
                    queue.put_nowait((time.monotonic(), data))
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                queue.put_nowait(_CLOSE)

        reading = asyncio.create_task(read())
        try:
            while True:
                item = await queue.get()
                if item is _CLOSE:
                    break
                arrived, data = item  # type: ignore[misc]
                delay, blackholed = self._settings()
                wait = arrived + delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    blackholed = self._settings()[1]
                if blackholed:
                    continue
                target.write(data)
                await target.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
            self._finish(link)
