"""Which data dir is this? A random id kept in ``<data dir>/node-id``, written by the node
(``serve``, ``up``) when it starts. A worker asks the node for its id (dicom_node.pipeline.remote)
and compares it with the one in its own data dir: the same id means one shared volume, so the
worker reads the series and writes the results in place and fetches nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from dicom_node.storage.files import write_file_atomic

IDENTITY_FILE = "node-id"


def data_dir_id(data_dir: Path, *, create: bool = False) -> str | None:
    """The data dir's id; with ``create``, one is made if it has none (the node's side only)."""
    path = Path(data_dir) / IDENTITY_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value or not create:
        return value or None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = uuid.uuid4().hex
    write_file_atomic(path, value.encode(), tmp=path.with_name(f".{IDENTITY_FILE}.{uuid.uuid4().hex}.tmp"))
    return value
