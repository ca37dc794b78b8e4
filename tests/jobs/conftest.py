"""Fixtures of the job tests: a local AE in the migrated test database (``db``, tests/conftest.py)."""

from __future__ import annotations

import pytest

from dicom_node.db import Database
from dicom_node.db.models import LocalAE


@pytest.fixture
def ae_id(db: Database) -> int:
    with db.session() as s:
        ae = LocalAE(title="COVIDNODE", port=11112, quiet_seconds=5.0, max_wait_seconds=60.0, filters={})
        s.add(ae)
        s.flush()
        return ae.id
