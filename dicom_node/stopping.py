"""A stop request that a signal handler may make.

``threading.Event.set`` takes the event's lock. A Python signal handler runs in the main thread
between two bytecodes, so it can run while that thread holds the same lock inside ``Event.wait``:
the handler then waits for ever on a lock its own thread holds, and every other thread that
touches the event (a watchdog that would end the process) hangs with it. ``StopRequest.set``
takes no lock: it sets a flag and writes a byte to a pipe (both safe in a handler); ``wait``
sleeps in ``select`` on that pipe, so it wakes at once.
"""

from __future__ import annotations

import os
import select
import time


class StopRequest:
    def __init__(self) -> None:
        self._requested = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def set(self) -> None:
        self._requested = True
        try:
            os.write(self._write, b"x")
        except OSError:  # the pipe is full (a waiter is woken already) or closed
            pass

    def is_set(self) -> bool:
        return self._requested

    def wait(self, timeout: float | None = None) -> bool:
        """Until the stop is requested or ``timeout`` seconds have passed; returns is_set()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._requested:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            select.select([self._read], [], [], left)
        return self._requested

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
