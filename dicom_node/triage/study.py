"""What triage reads of a study from one of its stored instances, when the series completes:
the names shown on the worklist and the attributes the priority rules look at.

One header read per series (pydicom, up to the pixel data), by series completion in ``serve``
(dicom_node.jobs.completion), outside its transaction. A file that can not be read leaves the
attributes empty: the series is analysed all the same, at the priority the rest decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

_KEYWORDS = (
    "PatientName",
    "AccessionNumber",
    "StudyDescription",
    "RequestedProcedurePriority",
    "RequestAttributesSequence",
    "CurrentPatientLocation",
    "PatientInstitutionResidence",
    "AdmissionID",
)


@dataclass(frozen=True)
class StudyAttributes:
    patient_name: str = ""
    accession_number: str = ""
    study_description: str = ""
    requested_procedure_priority: str = ""
    patient_location: str = ""
    admission_id: str = ""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def attributes_of(ds: Dataset) -> StudyAttributes:
    """The attributes from a data set. Requested Procedure Priority is read at the top level, or
    else from the first Request Attributes Sequence item that has it."""
    requested = _text(ds, "RequestedProcedurePriority")
    if not requested:
        for item in ds.get("RequestAttributesSequence") or []:
            requested = _text(item, "RequestedProcedurePriority")
            if requested:
                break
    return StudyAttributes(
        patient_name=_text(ds, "PatientName")[:200],
        accession_number=_text(ds, "AccessionNumber")[:64],
        study_description=_text(ds, "StudyDescription")[:64],
        requested_procedure_priority=requested.upper()[:16],
        patient_location=(_text(ds, "CurrentPatientLocation") or _text(ds, "PatientInstitutionResidence"))[:64],
        admission_id=_text(ds, "AdmissionID")[:64],
    )


def read_attributes(path: Path) -> StudyAttributes:
    """The attributes of the stored instance at ``path``; empty ones (and a log line) when it can
    not be read."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(_KEYWORDS))
    except (OSError, InvalidDicomError, ValueError) as exc:
        log.warning("could not read the study attributes of %s: %s", path, exc)
        return StudyAttributes()
    return attributes_of(ds)
