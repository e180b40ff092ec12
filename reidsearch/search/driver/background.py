"""A worker thread for the driver's writes that must not hold up Tune's event loop.

Tune runs every callback inside its one event loop: while a callback waits on MLflow or a
bucket, no result is taken and no trial is started. Measured on a search of short trials, the
tracker's MLflow writes were most of what was left between one trial's end and the next one's
first step (``benchmarks/README.md``, "Between trials"). Calls submitted here run one at a time,
in the order submitted, in one daemon thread:

- the queue is bounded: when it is full, ``submit`` waits (memory stays bounded and a store
  slower than the search slows the search down, as the synchronous writes did);
- ``flush`` waits until everything submitted has run, then raises the first error a call
  raised, as that call would have raised in the event loop (the search fails, as before);
- a ``key`` makes a call that is already queued (not started) absorb a new one: for a copy of
  a file whose newest content is all that matters;
- at interpreter exit (a driver interrupted before Tune could end the search) what was submitted
  still runs, for at most ``EXIT_WAIT_S``.

``inline=True`` runs every call at once in the caller's thread (the synchronous behaviour).
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

MAX_QUEUED = 1024  # calls waiting at most (a few per trial event)
EXIT_WAIT_S = 120.0  # an exiting interpreter waits this long for pending calls at most


class BackgroundWriter:
    """Runs submitted calls in order in one daemon thread (see the module's docstring)."""

    def __init__(self, name: str, *, inline: bool = False, max_queued: int = MAX_QUEUED) -> None:
        self.name = name
        self.inline = inline
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], str | None] | None] = (
            queue.Queue(maxsize=max_queued)
        )
        self._done = threading.Condition()
        self._submitted = 0
        self._finished = 0
        self._queued_keys: set[str] = set()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Calls submitted and not yet finished."""
        with self._done:
            return self._submitted - self._finished

    def submit(self, fn: Callable[..., Any], *args: Any, key: str | None = None) -> None:
        """Run ``fn(*args)`` after every call submitted before it; returns at once unless the
        queue is full. Raises the first error of an earlier call, if one is not raised yet."""
        self._raise_error()
        if self.inline:
            fn(*args)
            return
        with self._done:
            if key is not None:
                if key in self._queued_keys:
                    return  # the queued call will do it, with what is newest when it runs
                self._queued_keys.add(key)
            self._submitted += 1
            self._start()
        self._queue.put((fn, args, key))  # outside the lock: a full queue waits here

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted call has run (False: ``timeout`` passed first), then
        raise the first error one raised."""
        with self._done:
            finished = self._done.wait_for(lambda: self._finished == self._submitted, timeout)
        self._raise_error()
        return finished

    def close(self) -> None:
        """Run what was submitted (raising the first error) and end the thread; a later
        ``submit`` starts a new one."""
        try:
            self.flush()
        finally:
            with self._done:
                thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)  # the thread's last item
                thread.join()
                atexit.unregister(self._at_exit)

    def _raise_error(self) -> None:
        with self._done:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args, key = item
            if key is not None:
                with self._done:
                    self._queued_keys.discard(key)
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - kept, raised in the caller's thread
                with self._done:
                    self._error = self._error or exc
            finally:
                with self._done:
                    self._finished += 1
                    self._done.notify_all()

    def _at_exit(self) -> None:
        if not self.pending:
            return
        print(f"reidsearch: {self.name}: finishing {self.pending} pending writes", flush=True)
        try:
            if not self.flush(EXIT_WAIT_S):
                print(f"reidsearch: {self.name}: gave up after {EXIT_WAIT_S:.0f} s", flush=True)
        except BaseException as exc:  # noqa: BLE001 - exiting: say it, do not raise
            print(f"reidsearch: {self.name}: a write failed: {exc}", file=sys.stderr, flush=True)
