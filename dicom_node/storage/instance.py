"""What the node keeps of a received instance: its :class:`Header` (UIDs checked, the few
attributes the index records), read from a pydicom data set or from the listener's fast reader.

The listener reads it before storing (dicom_node.listener.scp) and index recovery after a crash
(dicom_node.storage.recovery), so both record the same thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.errors import NodeError
from dicom_node.storage.index import ReceivedInstance
from model.contract.uids import check_received_uid, check_uid

log = logging.getLogger(__name__)


class InvalidHeader(NodeError, ValueError):
    """A UID is missing or unsafe: the instance can not be stored."""


@dataclass(frozen=True)
class Header:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frames: int
    instance_number: int | None
    patient_id: str
    modality: str
    body_part: str
    series_description: str
    series_number: int | None
    image_type: str

    def received(
        self,
        *,
        local_ae_id: int | None,
        calling_ae: str,
        calling_host: str,
        transfer_syntax_uid: str,
        path: str,
        size_bytes: int,
        store_priority: int = 1,
    ) -> ReceivedInstance:
        return ReceivedInstance(
            local_ae_id=local_ae_id,
            calling_ae=calling_ae,
            calling_host=calling_host,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            path=path,
            size_bytes=size_bytes,
            frames=self.frames,
            instance_number=self.instance_number,
            patient_id=self.patient_id,
            modality=self.modality,
            body_part=self.body_part,
            series_description=self.series_description,
            series_number=self.series_number,
            image_type=self.image_type,
            store_priority=store_priority,
        )


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).rstrip("\x00 ")


def _int(text: str) -> int | None:
    try:
        return int(text.split("\\")[0]) if text else None
    except ValueError:
        return None


def header_of(ds: Dataset) -> Header:
    """What the index keeps of an instance read by pydicom; its UIDs checked. Raises
    InvalidHeader."""
    return make_header(lambda k: _text(ds, k))


def make_header(text: Callable[[str], str]) -> Header:
    """The header from ``text(keyword)`` (the value as text, "" when absent); its UIDs checked
    (model.contract.uids). Raises InvalidHeader naming the attribute."""
    uids: dict[str, str] = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = text(keyword).rstrip("\x00").strip()
        if not value:
            raise InvalidHeader(f"{keyword} is missing")
        ok, reason = check_received_uid(value)
        if not ok:
            raise InvalidHeader(f"{keyword}: {reason}")
        uids[keyword] = value
        if not check_uid(value)[0]:
            log.warning("%s %r does not conform to PS3.5 9.1; stored as sent", keyword, value[:80])
    return Header(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        frames=max(1, _int(text("NumberOfFrames")) or 1),
        instance_number=_int(text("InstanceNumber")),
        patient_id=text("PatientID"),
        modality=text("Modality"),
        body_part=text("BodyPartExamined"),
        series_description=text("SeriesDescription"),
        series_number=_int(text("SeriesNumber")),
        image_type=text("ImageType"),
    )
