"""StopRequest: what the signal handlers of serve, its listeners and the viewer set. A handler
that called threading.Event.set while the interrupted main thread held that event's lock hung the
process (a listener outlived its killed parent that way)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from dicom_node.stopping import StopRequest
from tests.harness.hostile import exited
from tests.harness.peers import wait_until


@pytest.fixture
def usr1() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_a_handler_wakes_the_waiting_main_thread_at_once(usr1: None) -> None:
    stop = StopRequest()
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    started = time.monotonic()
    assert stop.wait(30) is True
    assert time.monotonic() - started < 20  # woken by the handler, not by the timeout
    stop.close()


def test_a_handler_may_set_it_while_the_main_thread_is_inside_its_methods(usr1: None) -> None:
    # The main thread is interrupted in wait() and is_set() thousands of times (short waits, so
    # that the signal also lands between two of its bytecodes); each handler call must return.
    stop = StopRequest()
    calls = 0

    def handler(*_: object) -> None:
        nonlocal calls
        calls += 1
        stop.set()

    signal.signal(signal.SIGUSR1, handler)
    done = threading.Event()

    def send() -> None:
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.0005)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            stop.wait(0.0001)
            stop.is_set()
    finally:
        done.set()
        sender.join(10)
    assert calls > 0 and stop.is_set()
    stop.close()


def test_set_never_blocks_however_often_it_is_called() -> None:
    stop = StopRequest()
    for _ in range(200_000):  # far more than a pipe holds
        stop.set()
    assert stop.wait(0) is True
    stop.close()


def test_wait_times_out_when_nothing_is_requested() -> None:
    stop = StopRequest()
    assert stop.wait(0.05) is False
    assert stop.is_set() is False
    stop.close()


_ORPHAN = """
import os, threading
from dicom_node.listener.servers import _watch_parent

parent = os.getppid()
print(os.getpid(), flush=True)  # imported: the watch starts now

class Stuck:  # a stop that never returns, as when the dead parent held a lock the stop needs
    def stop(self):
        threading.Event().wait()

_watch_parent(parent, Stuck(), poll=0.05, grace=1.0)
"""

_PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
time.sleep(600)
"""


def test_an_orphaned_listener_exits_even_when_its_stop_hangs() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _ORPHAN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running()
        parent.kill()  # as an OOM killer would: the child is orphaned
        parent.wait(10)
        wait_until(lambda: exited([child]), 30, "the orphan to exit")
        assert parent.stderr is not None
        assert "did not stop within 1 s of its parent's death; exiting" in parent.stderr.read()
    finally:
        parent.kill()
