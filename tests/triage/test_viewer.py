"""The "open in viewer" link (dicom_node.triage.viewer.viewer_link) from a job as the worklist and
notifications serialise it (dicom_node.jobs.queries.job_dict): every field URL-quoted, the first key
slice's SOP Instance UID as ``{key_sop_uid}``, empty without a finding, and the settings accepting a
template with it. Not covered here: OHIF opening the link (tests/viewer/test_ohif.py)."""

from __future__ import annotations

from typing import Any

import pytest

from dicom_node.db.models import Job, Series
from dicom_node.jobs.queries import job_dict
from dicom_node.settings import TriageSettings
from dicom_node.triage.viewer import viewer_link

OHIF = (
    "http://viewer:3000/viewer?StudyInstanceUIDs={study_uid}"
    "&initialSeriesInstanceUID={series_uid}&initialSOPInstanceUID={key_sop_uid}"
)
UIDS = ["1.2.3.10", "1.2.3.11", "1.2.3.12", "1.2.3.13"]


def job(result: dict[str, Any] | None) -> dict[str, Any]:
    series = Series(
        study_uid="1.2.3", series_uid="1.2.3.1", patient_id="P 1/2", accession_number="A&1", instances=len(UIDS)
    )
    return job_dict(Job(status="done", result=result, outputs=[]), series, exports=[])


def test_the_link_opens_at_the_first_key_slice() -> None:
    finding = job({"decision": "covid", "key_slices": [2, 1], "sop_instance_uids": UIDS})
    assert finding["key_sop_uid"] == "1.2.3.12"
    assert viewer_link(OHIF, finding) == (
        "http://viewer:3000/viewer?StudyInstanceUIDs=1.2.3"
        "&initialSeriesInstanceUID=1.2.3.1&initialSOPInstanceUID=1.2.3.12"
    )
    assert viewer_link("http://pacs/{patient_id}/{accession_number}", finding) == "http://pacs/P%201%2F2/A%261"
    assert viewer_link(None, finding) is None


@pytest.mark.parametrize(
    "result",
    [
        {"decision": "normal", "key_slices": [], "sop_instance_uids": UIDS},
        {"decision": "no_decision", "sop_instance_uids": []},
        {"decision": "covid", "key_slices": [7], "sop_instance_uids": UIDS},  # not in the series
        None,  # failed: no result
    ],
    ids=["no-finding", "no-decision", "outside", "no-result"],
)
def test_without_a_finding_the_sop_is_empty_and_the_rest_of_the_link_stays(result: dict[str, Any] | None) -> None:
    found = job(result)
    assert found["key_sop_uid"] == ""
    assert viewer_link(OHIF, found) == (
        "http://viewer:3000/viewer?StudyInstanceUIDs=1.2.3&initialSeriesInstanceUID=1.2.3.1&initialSOPInstanceUID="
    )


def test_the_settings_take_key_sop_uid_and_refuse_unknown_fields() -> None:
    assert TriageSettings(viewer_url=OHIF).viewer_url == OHIF
    with pytest.raises(ValueError, match=r"\{key_sop_uid\}"):
        TriageSettings(viewer_url="http://viewer/{sop_uid}")
