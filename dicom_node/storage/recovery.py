"""Rebuild the index from the stored files after an unclean stop.

The files are the source of truth: each was fsync'ed before its C-STORE was acknowledged. The
index (SQLite in WAL mode with synchronous=NORMAL) may lose its last commits in a power cut; here
every file under the storage layout that the index does not know is indexed again, with the
series record kept beside it (dicom_node.storage.files). ``dicom-node serve`` runs this when the
previous run did not stop cleanly; ``dicom-node db reindex`` runs it on demand.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Instance, LocalAE, Series
from dicom_node.storage.files import Storage
from dicom_node.storage.index import Index, ReceivedInstance
from dicom_node.storage.instance import header_of

log = logging.getLogger(__name__)

RUNNING_MARKER = "node.running"


def recover_index(storage: Storage, db: Database, progress: Callable[[int, int], None] | None = None) -> int:
    """Index every stored file the index lacks; return how many were added. ``progress(n,
    total)`` is called as the n-th series folder is checked (``db reindex`` shows a bar with it)."""
    index = Index(db)
    with db.reader() as conn:
        ae_ids = set(conn.scalars(select(LocalAE.id)))
    added = 0
    series_dirs = list(storage.series_dirs())
    for done, series_dir in enumerate(series_dirs, 1):
        if progress is not None:
            progress(done, len(series_dirs))
        files = {p.stem: p for p in series_dir.glob("*.dcm")}
        if not files:
            continue
        with db.reader() as conn:
            known = set(
                conn.scalars(
                    select(Instance.sop_instance_uid)
                    .join(Series, Series.id == Instance.series_id)
                    .where(Series.series_uid == series_dir.name)
                )
            )
        missing = [p for uid, p in files.items() if uid not in known]
        if not missing:
            continue
        record = storage.series_record(series_dir)
        local_ae_id = record.get("local_ae_id") if record.get("local_ae_id") in ae_ids else None
        for path in missing:
            item = _received(storage, path, local_ae_id, record)
            if item is not None and index.record(item):
                added += 1
        log.warning("recovered %d instance(s) of series %s into the index", len(missing), series_dir.name)
    return added


def _received(
    storage: Storage, path: Path, local_ae_id: int | None, record: dict[str, object]
) -> ReceivedInstance | None:
    try:
        ds = dcmread(path, stop_before_pixels=True)
        header = header_of(ds)
    except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError) as exc:  # InvalidHeader is a ValueError
        log.error("cannot index %s: %s", path, exc)
        return None
    return header.received(
        local_ae_id=local_ae_id,
        calling_ae=str(record.get("calling_ae", "")),
        calling_host=str(record.get("calling_host", "")),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        path=storage.relative_of(path),
        size_bytes=os.path.getsize(path),
    )


def unclean_start(data_dir: Path) -> bool:
    """Mark the node as running; True if the previous run did not stop cleanly."""
    marker = data_dir / RUNNING_MARKER
    unclean = marker.exists()
    marker.write_text(str(os.getpid()))
    return unclean


def clean_stop(data_dir: Path) -> None:
    (data_dir / RUNNING_MARKER).unlink(missing_ok=True)
