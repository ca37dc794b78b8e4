"""HL7 v2.5.1 ORU^R01 over MLLP to a RIS: the message built with hl7apy, framed and sent over a
TCP connection, its acknowledgement read and judged.

The message (docs/conformance.md, "HL7 messages sent"): MSH (the node as sending application,
MSH-10 the notification's message id, the same on every attempt, so a receiver can drop a repeat),
PID (patient ID and name), OBR (placer order number = accession number, filler order number = the
node's job, universal service ``COVIDCT^COVID-CT AI triage^L``, result status F, or X for a failed
analysis), an NTE with the not-for-clinical-use notice, then one OBX per observation: the decision
(CWE), each class probability (NM), the lung involvement (NM, %), the priority (ST), the Study
Instance UID (ST), and for a failed analysis its reason (ST).

Acknowledgement (original or enhanced mode): AA or CA delivered; AR or CR refused for good (not
sent again); AE or CE, an ACK for another message, no answer within the time-out or a closed
connection: tried again later.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from typing import Any

from hl7apy.base_datatypes import FT
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from dicom_node.errors import Invalid
from model.contract.notice import NOT_FOR_CLINICAL_USE
from model.contract.result import CLASSES

VERSION = "2.5.1"
START, END = b"\x0b", b"\x1c\x0d"
SERVICE = "COVIDCT^COVID-CT AI triage^L"
# OBX-3 of each observation (local codes, coding system L).
DECISION_CODE = "DECISION^AI decision^L"
PROBABILITY_CODES = {
    "covid": "P_COVID^Probability of COVID-19 pneumonia^L",
    "cap": "P_CAP^Probability of community-acquired pneumonia^L",
    "normal": "P_NORMAL^Probability of no pneumonia^L",
}
INVOLVEMENT_CODE = "LUNG_INV^Lung involvement^L"
PRIORITY_CODE = "PRIORITY^Triage priority^L"
STUDY_CODE = "STUDY_UID^Study Instance UID^L"
FAILURE_CODE = "FAILURE^Analysis failed^L"
DECISION_TEXT = {
    "covid": "COVID-19 pneumonia pattern",
    "cap": "community-acquired pneumonia pattern",
    "normal": "no pneumonia",
    "indeterminate": "indeterminate",
    "no_decision": "no decision",
}
# OBX-8 abnormal flags of the decision.
ABNORMAL = {"covid": "A", "cap": "A", "normal": "N"}


class HL7Error(Invalid):
    """The message could not be built (a value HL7 can not carry)."""


def text(value: object) -> str:
    """A value as HL7 text: its separators and escape character escaped."""
    return str(FT(str(value)[:60000]).to_er7())


def person_name(dicom_name: str) -> str:
    """A DICOM Person Name (family^given^middle^prefix^suffix, its alphabetic group) as an XPN,
    whose first five components are the same; each component escaped."""
    alphabetic = dicom_name.split("=")[0]
    return "^".join(text(part) for part in alphabetic.split("^")[:5])


def _hl7_time(value: str | None) -> str:
    if not value:
        return ""
    when = dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc)
    return when.strftime("%Y%m%d%H%M%S+0000")


def oru_r01(
    note: dict[str, Any],
    *,
    control_id: str,
    sending_application: str,
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    processing_id: str = "P",
    now: dt.datetime | None = None,
) -> str:
    """The ORU^R01 of a notification (dicom_node.notify.payload) as ER7 text (segments ended by
    carriage returns)."""
    try:
        m = Message("ORU_R01", version=VERSION)
        m.msh.msh_3 = text(sending_application)
        m.msh.msh_4 = text(sending_facility)
        m.msh.msh_5 = text(receiving_application)
        m.msh.msh_6 = text(receiving_facility)
        m.msh.msh_7 = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d%H%M%S+0000")
        m.msh.msh_9 = "ORU^R01^ORU_R01"
        m.msh.msh_10 = text(control_id)
        m.msh.msh_11 = processing_id
        m.msh.msh_12 = VERSION
        result = m.add_group("ORU_R01_PATIENT_RESULT")
        patient = result.add_group("ORU_R01_PATIENT")
        patient.pid.pid_1 = "1"
        patient.pid.pid_3 = text(note.get("patient_id") or "")
        patient.pid.pid_5 = person_name(note.get("patient_name") or "")
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        failed = note["event"] == "failed"
        order.obr.obr_1 = "1"
        order.obr.obr_2 = text(note.get("accession_number") or "")
        order.obr.obr_3 = text(f"JOB{note['job_id']}")
        order.obr.obr_4 = SERVICE
        order.obr.obr_7 = _hl7_time(note.get("last_image_at"))
        order.obr.obr_22 = _hl7_time(note.get("finished_at"))
        order.obr.obr_25 = "X" if failed else "F"
        note_segment = order.add_segment("NTE")
        note_segment.nte_1 = "1"
        note_segment.nte_3 = text(f"{NOT_FOR_CLINICAL_USE} Research software: results unverified.")
        observations: list[tuple[str, str, str, str, str]] = []
        if failed:
            observations.append(("ST", FAILURE_CODE, text(note.get("reason") or "failed"), "", ""))
        else:
            decision = str(note["decision"])
            observations.append(
                (
                    "CWE",
                    DECISION_CODE,
                    f"{text(decision)}^{text(DECISION_TEXT.get(decision, decision))}^L",
                    "",
                    ABNORMAL.get(decision, ""),
                )
            )
            for cls in CLASSES:
                p = (note.get("probabilities") or {}).get(cls)
                if p is not None:
                    observations.append(("NM", PROBABILITY_CODES[cls], f"{float(p):.4f}", "1", ""))
            involvement = note.get("lung_involvement_percent")
            if involvement is not None:
                observations.append(("NM", INVOLVEMENT_CODE, f"{float(involvement):.2f}", "%", ""))
        observations.append(("ST", PRIORITY_CODE, text(note["priority"]), "", ""))
        observations.append(("ST", STUDY_CODE, text(note["study_instance_uid"]), "", ""))
        for n, (value_type, code, value, units, flag) in enumerate(observations, start=1):
            obx = order.add_group("ORU_R01_OBSERVATION").obx
            obx.obx_1 = str(n)
            obx.obx_2 = value_type
            obx.obx_3 = code
            obx.obx_5 = value
            if units:
                obx.obx_6 = units
            if flag:
                obx.obx_8 = flag
            obx.obx_11 = "X" if failed else "F"
        return str(m.to_er7())
    except HL7apyException as exc:
        raise HL7Error(f"the HL7 message could not be built: {exc}") from exc


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3 / ERR, when given


def parse_ack(er7: str) -> Ack:
    """MSA of an acknowledgement; ValueError when it is not one."""
    try:
        message = parse_message(er7.replace("\n", "\r").strip("\r"), find_groups=False)
        msa = message.msa
        return Ack(str(msa.msa_1.value), str(msa.msa_2.value), str(msa.msa_3.value) if msa.msa_3 else "")
    except (HL7apyException, AttributeError, IndexError) as exc:
        raise ValueError(f"not an HL7 acknowledgement: {exc}") from exc


def frame(er7: str) -> bytes:
    """MLLP: start block, the message, end block and carriage return."""
    return START + er7.encode("utf-8") + END


def send_mllp(host: str, port: int, er7: str, *, timeout: float) -> str:
    """Send one message over a new connection and return the acknowledgement's ER7 text. Raises
    OSError (socket.timeout included) when the receiver can not be reached or does not answer."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        conn.sendall(frame(er7))
        data = b""
        while END not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the receiver closed the connection without an acknowledgement")
            data += chunk
    start = data.find(START)
    return data[start + 1 if start >= 0 else 0 : data.find(END)].decode("utf-8", errors="replace")
