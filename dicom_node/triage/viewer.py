"""The "open in viewer" link of a study: the site's URL template (``triage.viewer_url``, e.g.
OHIF's ``http://viewer:3000/viewer?StudyInstanceUIDs={study_uid}``) filled in with the study's
identifiers, each URL-quoted.

``{key_sop_uid}`` is the SOP Instance UID of the CT image of the result's first key slice (its
strongest finding), "" without a finding. OHIF opens a series at an image with
``&initialSeriesInstanceUID={series_uid}&initialSOPInstanceUID={key_sop_uid}``; an empty
``initialSOPInstanceUID`` matches no image, and OHIF then opens the series at its first image."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

# The fields a template may use (dicom_node.settings checks a template against these).
FIELDS = ("study_uid", "series_uid", "accession_number", "patient_id", "key_sop_uid")


def viewer_link(template: str | None, job: dict[str, Any]) -> str | None:
    """The link for ``job`` (a dicom_node.jobs.queries.job_dict); None without a template."""
    if not template:
        return None
    return template.format(**{name: quote(str(job.get(name) or ""), safe="") for name in FIELDS})
