"""The "open in viewer" link of a study: the site's URL template (``triage.viewer_url``, e.g.
OHIF's ``http://viewer:3000/viewer?StudyInstanceUIDs={study_uid}``) filled in with the study's
identifiers, each URL-quoted."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


def viewer_link(template: str | None, job: dict[str, Any]) -> str | None:
    """The link for ``job`` (a dicom_node.jobs.queries.job_dict); None without a template."""
    if not template:
        return None
    return template.format(
        study_uid=quote(str(job.get("study_uid") or ""), safe=""),
        series_uid=quote(str(job.get("series_uid") or ""), safe=""),
        accession_number=quote(str(job.get("accession_number") or ""), safe=""),
        patient_id=quote(str(job.get("patient_id") or ""), safe=""),
    )
