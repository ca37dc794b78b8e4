"""model.terminal.status: a status line on a terminal, erased afterwards; nothing when standard
error is a pipe or a file (logs and CI output stay clean).

Not covered: how long the commands that use it take (README, "Send a study")."""

from __future__ import annotations

import io
import os
import sys

import pytest

from model.terminal import status


def test_nothing_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with status("writing 96 slices"):
        pass
    assert err.getvalue() == ""


def test_shown_then_erased_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        with status("writing 96 slices"):
            pass
    # Read all of it: one read may return the first write alone. With the terminal's other end
    # closed, the reads end with EIO (Linux) or an empty read.
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1024)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    shown = b"".join(chunks).decode()
    assert shown == "writing 96 slices…\r\x1b[K"
