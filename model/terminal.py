"""A status line for the model's commands that take seconds without a natural count
(``phantom``, ``model predict``): shown on standard error while it is a terminal, erased when the
work is done, nothing at all when piped or logged."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def status(text: str) -> Iterator[None]:
    shown = sys.stderr.isatty()
    if shown:
        print(f"{text}…", end="", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        if shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
