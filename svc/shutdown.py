"""Graceful shutdown: on SIGTERM (or SIGHUP), readiness fails at once; then the server drains and stops as usual."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from svc.runtime import Phase

if TYPE_CHECKING:
    from svc.runtime import Runtime

__all__ = ["DrainHook", "drain_on_signals"]

logger = logging.getLogger("svc")

Handler = Callable[[int, FrameType | None], Any]
# The server's own stop signals: the hook chains to its handlers.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Signals that drain first. A single uvicorn process leaves SIGHUP at its default, which ends the process
# at once, mid-request; a container platform or a terminal that sends it means "stop", so it stops as
# SIGTERM does. (uvicorn's --workers supervisor handles SIGHUP itself: it replaces its workers, stopping
# each old one with SIGTERM.)
DRAINED = (signal.SIGTERM, signal.SIGHUP)


class DrainHook:
    """Stands in front of the server's own SIGTERM and SIGINT handlers for the lifespan's duration, and handles SIGHUP.

    On the first signal the runtime's phase becomes `DRAINING`, so `/health/ready` answers 503
    'Shutting down.' while everything else is still served. Then, after `delay` seconds for
    SIGTERM and SIGHUP (the time a load balancer or Kubernetes needs to stop sending new requests)
    and at once for SIGINT or a second signal, the server's handler runs: uvicorn stops accepting,
    lets the requests in flight finish (within `--timeout-graceful-shutdown`) and runs the
    lifespan's shutdown, which disposes of the engine. SIGHUP is taken only while it has its
    default action (not when ignored, as under `nohup`).

    uvicorn installs its handlers with `signal.signal` before the lifespan starts, so they are
    there to chain to; without such a handler (an in-process test, a server that handles signals
    in its event loop) the hook stays out of the way.
    """

    def __init__(self, runtime: Runtime, delay: float) -> None:
        self.runtime = runtime
        self.delay = delay
        self._previous: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._signalled = False
        self._stopped = False
        self._hangup = False  # SIGHUP is ours (its previous action was the default)

    def install(self) -> None:
        """Take over SIGTERM and SIGINT, and SIGHUP; call from the lifespan, on the event loop's (main) thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        if not callable(signal.getsignal(signal.SIGTERM)):
            return
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):
                self._previous[sig] = previous
                signal.signal(sig, self._handle)
        if signal.SIGTERM in self._previous and signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            self._hangup = True
            signal.signal(signal.SIGHUP, self._handle)

    def uninstall(self) -> None:
        """Give the signals back to the server's handlers (SIGHUP to its default action)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sig, previous in self._previous.items():
            # Only if still ours: a handler installed over this one since stays in place.
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)
        self._previous.clear()
        if self._hangup and signal.getsignal(signal.SIGHUP) == self._handle:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self._hangup = False

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only attribute writes here, and the event loop is reached thread-safely.
        first, self._signalled = not self._signalled, True
        self.runtime.phase = Phase.DRAINING
        assert self._loop is not None  # installed only with a running loop
        if first and sig in DRAINED and self.delay > 0:
            self._loop.call_soon_threadsafe(self._drain, sig, context=contextvars.Context())
            return
        if first:
            name = signal.Signals(sig).name
            # A fresh context: the interrupted frame may be inside a request, whose id is not this line's.
            self._loop.call_soon_threadsafe(
                logger.info, "%s received: shutting down", name, context=contextvars.Context()
            )
        self._stop(sig, frame)

    def _drain(self, sig: int) -> None:
        if self._stopped:  # a second signal came first
            return
        logger.info("%s received: readiness fails now; shutting down in %g s", signal.Signals(sig).name, self.delay)
        assert self._loop is not None
        self._timer = self._loop.call_later(self.delay, self._stop, sig, None)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # uvicorn re-raises the signal it handled once its shutdown is complete, under the process's
        # original handler: for SIGTERM that is the default action, and a clean drain would end as
        # "killed by SIGTERM" (exit status 143). Told SIGINT instead, uvicorn ends in its
        # KeyboardInterrupt path and exits 0; a second signal still forces the exit, as uvicorn's does.
        # SIGHUP has no handler of the server's: its stop handler (SIGTERM's) is told, like the others.
        self._previous.get(sig, self._previous[signal.SIGTERM])(signal.SIGINT, frame)


@contextmanager
def drain_on_signals(runtime: Runtime, delay: float) -> Iterator[DrainHook]:
    """A `DrainHook` installed for the duration of the block."""
    hook = DrainHook(runtime, delay)
    hook.install()
    try:
        yield hook
    finally:
        hook.uninstall()
