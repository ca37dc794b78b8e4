"""The one storage layout, and durable writes into it.

Layout under the storage root: ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
Every UID is checked by dicom_node.uids.check_uid before it becomes part of a path, so a UID such
as ``../../x`` can never leave the root. Files are DICOM Part 10: a preamble, the File Meta
Information we write, then the data set exactly as received (in the negotiated transfer syntax).

A write is durable before it returns: temporary file in ``.incoming/`` on the same file system,
flushed and fsync'ed, renamed into place, directory fsync'ed. A crash leaves either the whole file or
nothing under the layout (stale temporaries in ``.incoming/`` are removed at start-up).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from dicom_node import __version__
from dicom_node.uids import clean_uid, derived_uid

IMPLEMENTATION_CLASS_UID = derived_uid("implementation-class")
IMPLEMENTATION_VERSION_NAME = f"COVIDCT_{__version__}"[:16]
INCOMING = ".incoming"


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

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """The layout. Raises ValueError naming the bad UID."""
        parts = []
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid), ("SOPInstanceUID", sop_instance_uid)):
            try:
                parts.append(clean_uid(uid))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def write(
        self,
        relative: str,
        dataset_bytes: bytes | memoryview,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae_title: str = "",
    ) -> StoredFile:
        """Write a Part 10 file durably and atomically; return where it is."""
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
            self._ensure_dir(target.parent)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredFile(target, relative, len(header) + len(dataset_bytes))

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            # The new directory entries must be durable too.
            _fsync_dir(directory.parent)
            _fsync_dir(directory.parent.parent)
        if len(self._known_dirs) > 10000:
            self._known_dirs.clear()
        self._known_dirs.add(directory)

    def remove_stale_incoming(self) -> int:
        """Remove temporaries left by a crash (nothing was acknowledged for them)."""
        count = 0
        for path in self.incoming.glob("*.part"):
            path.unlink(missing_ok=True)
            count += 1
        return count


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str = "") -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae_title:
        meta.SourceApplicationEntityTitle = source_ae_title
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    return buf.getvalue()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
