"""``BlockingTransport``: the one ``Transport`` called from synchronous code (the learner, the launcher,
tools and tests).

It holds no transport logic of its own: every coroutine method of the wrapped transport is run to
completion on a private event loop in a daemon thread, and the caller waits for it with a timeout, so a
dead server can never hang a synchronous caller forever. Plain attributes and methods (``stream()``,
``namespace``, ``dead_stream``) pass through as they are.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from typing import Any, Optional

from antiphon.transport.base import Transport, TransportError

_CLOSE_S = 10.0  # how long close() waits for the client to shut its connections


class BlockingTransport:
    """``BlockingTransport(from_config(cfg))``: the same operations, returning their results.

    ``timeout_s`` bounds each call; the default covers the longest an operation may legitimately take:
    a ``publish`` waiting ``publish_timeout_s`` for room (or for a restarting server) plus a command
    that runs into the socket timeout. Calls from several threads are fine: they run concurrently on
    the loop, each on its own connection. The wrapped transport's connections belong to that loop: use
    it only through this adapter."""

    def __init__(self, transport: Transport, timeout_s: Optional[float] = None):
        if not isinstance(transport, Transport):
            raise TypeError(f"BlockingTransport wraps a Transport, not {type(transport).__name__}")
        self.transport = transport
        self.timeout_s = float(timeout_s if timeout_s is not None
                               else transport.publish_timeout_s + 2 * (transport.socket_timeout_s or 60.0))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"transport:{transport.namespace}")
        self._thread.start()
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the adapter itself does not have: the wrapped transport's public ones.
        if name.startswith("_") or name == "transport":
            raise AttributeError(name)
        attr = getattr(self.transport, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            return self._run(attr(*args, **kwargs), name, self.timeout_s)

        return call

    def _run(self, coro, what: str, timeout_s: float) -> Any:
        if self._closed:
            coro.close()
            raise TransportError(f"{what}: {self.transport!r} is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TransportError(f"{what} on {self.transport!r} did not finish within {timeout_s:g} s") from None

    def close(self) -> None:
        """Closes the transport's connections and stops the loop thread. Idempotent."""
        if self._closed:
            return
        try:
            self._run(self.transport.close(), "close", _CLOSE_S)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CLOSE_S)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "BlockingTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BlockingTransport({self.transport!r})"
