"""A received data set as its fragments arrive, in bounded memory.

The listener (dicom_node.listener.fastlane) writes each P-DATA fragment of a C-STORE's data set
here as it comes. Up to ``memory_bytes`` stay in memory (a CT image: stored as before, in one
write); beyond that the data set goes to a temporary file in the storage's ``.incoming/`` that
starts with the Part 10 header, so that storing it is an fsync and a rename
(dicom_node.storage.files.Storage.write), never a copy. A data set longer than ``max_bytes``
(``listener.max_dataset_bytes``), or one that would take the disk under its watermark
(``has_room``), is counted and dropped as it arrives: nothing more is kept, the file is removed, and
:attr:`Spool.refusal` says why (the C-STORE is then answered with a failure status).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

# How often (in bytes written to the file) the free disk space is looked at again.
DISK_CHECK_BYTES = 64 * 1024 * 1024
MEMORY_BYTES = 2 * 1024 * 1024


class Spool:
    def __init__(
        self,
        incoming: Path,
        prefix: bytes,
        *,
        max_bytes: int,
        memory_bytes: int = MEMORY_BYTES,
        has_room: Callable[[int], bool] | None = None,
    ) -> None:
        self.incoming = incoming
        self.prefix = prefix  # written before the data set when it goes to a file (the Part 10 header)
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.has_room = has_room  # has_room(n): n more bytes leave the disk above its watermark
        self.size = 0  # data set bytes received (kept or not)
        self.refusal: str | None = None
        self.path: Path | None = None  # the temporary file, once the data set went there
        self._parts: list[bytes] = []
        self._on_file = False
        self._fd: int | None = None
        self._written_since_check = 0

    @classmethod
    def of_bytes(cls, data: bytes | memoryview) -> "Spool":
        """A whole data set already in memory (pynetdicom's own C-STORE path)."""
        spool = cls(Path("."), b"", max_bytes=len(data), memory_bytes=len(data))
        spool.write(data)
        return spool

    def write(self, fragment: bytes | memoryview) -> None:
        n = len(fragment)
        self.size += n
        if self.refusal is not None:
            return
        if self.size > self.max_bytes:
            self._refuse(f"data set of more than {self.max_bytes} bytes (listener.max_dataset_bytes)")
            return
        if self._fd is None:
            self._parts.append(bytes(fragment))
            if self.size > self.memory_bytes:
                self._to_file()
            return
        self._check_disk(n)
        if self.refusal is None:
            self._write_all(fragment)

    def _to_file(self) -> None:
        self._check_disk(self.size)
        if self.refusal is not None:
            return
        self.path = self.incoming / f"{uuid.uuid4().hex}.part"
        self._on_file = True
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        parts, self._parts = self._parts, []
        try:
            self._write_all(self.prefix)
            for part in parts:
                self._write_all(part)
        except OSError as exc:
            self._refuse(f"cannot write the data set: {exc}")

    def _write_all(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._refuse(f"cannot write the data set: {exc}")

    def _check_disk(self, n: int) -> None:
        if self.has_room is None:
            return
        self._written_since_check += n
        if self._fd is not None and self._written_since_check < DISK_CHECK_BYTES:
            return
        self._written_since_check = 0
        if not self.has_room(DISK_CHECK_BYTES):
            self._refuse("free disk space below the watermark (listener.min_free_disk_mb)")

    def _refuse(self, reason: str) -> None:
        self.refusal = reason
        self.discard()

    @property
    def in_memory(self) -> bool:
        return not self._on_file

    def memory(self) -> bytes:
        """The data set, when it stayed in memory."""
        assert self.in_memory
        if len(self._parts) != 1:
            self._parts = [b"".join(self._parts)]
        return self._parts[0] if self._parts else b""

    def finish(self) -> None:
        """The data set is whole: make the file durable (fdatasync) and close it."""
        if self._fd is not None:
            try:
                os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def open_data(self) -> tuple[int, int]:
        """(a new read-only descriptor of the file, where the data set starts in it); the caller closes it."""
        assert self.path is not None
        return os.open(self.path, os.O_RDONLY), len(self.prefix)

    def moved(self) -> None:
        """The file was renamed into the storage layout: nothing to remove any more."""
        self.path = None

    def discard(self) -> None:
        """Forget the data set: memory released, temporary file removed (safe to call twice)."""
        self._parts = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
