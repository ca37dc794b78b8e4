"""pydicom's own test files, as paths, and the folder of the pydicom-data package (real files of
many vendors and transfer syntaxes)."""

from __future__ import annotations

from pathlib import Path

import data_store
from pydicom.data import get_testdata_file

PYDICOM_DATA = Path(data_store.__file__).parent / "data"


def pydicom_file(name: str) -> Path:
    """The path of one of pydicom's test files (get_testdata_file also answers None or a data set)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom has no test file {name}"
    return Path(path)
