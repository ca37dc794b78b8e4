"""The one storage layout, and durable writes into it.

Layout under the storage root: ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
Every UID is checked by model.contract.uids.check_uid before it becomes part of a path, so a UID such
as ``../../x`` can never leave the root. Files are DICOM Part 10: a preamble, the File Meta
Information we write, then the data set exactly as received (in the negotiated transfer syntax).

A write is durable before it returns: temporary file in ``.incoming/`` on the same file system,
flushed and fsync'ed, renamed into place, directory fsync'ed. A crash leaves either the whole file or
nothing under the layout (stale temporaries in ``.incoming/`` are removed at start-up).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dicom_node import __version__
from dicom_node.storage.spool import Spool
from model.contract.uids import clean_uid, derived_uid

IMPLEMENTATION_CLASS_UID = derived_uid("implementation-class")
IMPLEMENTATION_VERSION_NAME = f"COVIDCT_{__version__}"[:16]
INCOMING = ".incoming"
SERIES_RECORD = "series.json"


@dataclass(frozen=True)
class StoredFile:
    path: Path  # absolute
    relative: str  # relative to the storage root, as kept in the index
    size: int


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        # Asked to free at least this many bytes when a write would take the disk under its
        # watermark (dicom_node.storage.retention.Retention.make_room, set by the listeners).
        self.make_room: Callable[[int], object] | None = None

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """The layout. Raises ValueError naming the bad UID."""
        parts = []
        for name, uid in (
            ("StudyInstanceUID", study_uid),
            ("SeriesInstanceUID", series_uid),
            ("SOPInstanceUID", sop_instance_uid),
        ):
            try:
                parts.append(clean_uid(uid, received=True))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def exists(self, relative: str) -> bool:
        return (self.root / relative).is_file()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self, n: int, min_free: int) -> bool:
        """Whether ``n`` more bytes leave at least ``min_free`` free; if not, :attr:`make_room`
        is asked first."""
        if self.free_bytes() >= min_free + n:
            return True
        if self.make_room is None:
            return False
        self.make_room(min_free + n)
        return self.free_bytes() >= min_free + n

    def spool(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae_title: str = "",
        max_bytes: int,
        min_free_bytes: int = 0,
    ) -> Spool:
        """Where a data set being received goes (dicom_node.storage.spool): in memory, then a
        temporary file of ``.incoming/`` that :meth:`write` renames into place."""
        return Spool(
            self.incoming,
            part10_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae_title),
            max_bytes=max_bytes,
            has_room=lambda n: self.has_room(n, min_free_bytes),
        )

    def write(
        self,
        relative: str,
        dataset_bytes: bytes | memoryview | Spool,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae_title: str = "",
        series_record: dict[str, Any] | None = None,
    ) -> StoredFile:
        """Write a Part 10 file durably and atomically; return where it is.

        ``series_record`` is kept as ``series.json`` beside the first instance of a series (who
        sent it, to which local AE), so that the index can be rebuilt from the files alone. A
        spool that went to a file (its Part 10 header made by :meth:`spool` with the same
        arguments) is made durable and renamed into place.
        """
        if isinstance(dataset_bytes, Spool):
            if dataset_bytes.in_memory:
                dataset_bytes = dataset_bytes.memory()
            else:
                return self._move_spool(relative, dataset_bytes, series_record)
        header = part10_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae_title)
        target = self.root / relative
        tmp = self.incoming / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, header)
            view = memoryview(dataset_bytes)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            self._place(tmp, target, series_record)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredFile(target, relative, len(header) + len(dataset_bytes))

    def _place(self, tmp: Path, target: Path, series_record: dict[str, Any] | None) -> None:
        """Rename a written file into the layout, making its folder (and series record) when new.
        A folder retention removed since this process last wrote there is made again."""
        for attempt in (1, 2):
            if self._ensure_dir(target.parent) and series_record is not None:
                self._write_small(target.parent / SERIES_RECORD, json.dumps(series_record).encode())
            try:
                os.replace(tmp, target)
                break
            except FileNotFoundError:
                self._known_dirs.discard(target.parent)
                if attempt == 2 or not tmp.exists():
                    raise
        fsync_dir(target.parent)

    def _move_spool(self, relative: str, spool: Spool, series_record: dict[str, Any] | None) -> StoredFile:
        assert spool.path is not None
        spool.finish()
        target = self.root / relative
        self._place(spool.path, target, series_record)
        spool.moved()
        return StoredFile(target, relative, len(spool.prefix) + spool.size)

    def _ensure_dir(self, directory: Path) -> bool:
        """Create the directory (durably) if needed; True if it is new."""
        if directory in self._known_dirs:
            return False
        created = False
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            # The new directory entries must be durable too.
            fsync_dir(directory.parent)
            fsync_dir(directory.parent.parent)
            created = True
        if len(self._known_dirs) > 10000:
            self._known_dirs.clear()
        self._known_dirs.add(directory)
        return created

    def _write_small(self, target: Path, data: bytes) -> None:
        write_file_atomic(target, data, tmp=self.incoming / f"{uuid.uuid4().hex}.part")

    def series_dirs(self) -> Iterator[Path]:
        """Every series directory of the layout."""
        for study in sorted(self.root.iterdir()):
            if study.name == INCOMING or not study.is_dir():
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir():
                    yield series

    def series_record(self, series_dir: Path) -> dict[str, Any]:
        path = series_dir / SERIES_RECORD
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def relative_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def remove_stale_incoming(self) -> int:
        """Remove temporaries left by a crash (nothing was acknowledged for them)."""
        count = 0
        for path in self.incoming.glob("*.part"):
            path.unlink(missing_ok=True)
            count += 1
        return count


def part10_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str = ""
) -> bytes:
    """Preamble, "DICM" and the File Meta Information (PS3.10 7.1), explicit VR little endian.

    Encoded here rather than with pydicom: this runs once per received instance and pydicom's
    general writer costs more than the rest of the header work together.
    """
    elements = [
        _long_element(0x0001, b"OB", b"\x00\x01"),
        _short_element(0x0002, b"UI", _ui(sop_class_uid)),
        _short_element(0x0003, b"UI", _ui(sop_instance_uid)),
        _short_element(0x0010, b"UI", _ui(transfer_syntax_uid)),
        _short_element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
        _short_element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
    ]
    if source_ae_title:
        elements.append(_short_element(0x0016, b"AE", _text(source_ae_title[:16])))
    body = b"".join(elements)
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def _short_element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _long_element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(target: Path, data: bytes, *, tmp: Path | None = None) -> None:
    """Write ``data`` to ``target`` durably and atomically: a temporary file on the same file
    system (``tmp``, default beside the target), fsync'ed, renamed, the directory fsync'ed."""
    tmp = tmp or target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fdatasync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
