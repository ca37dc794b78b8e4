"""What a notification says: one document per finished job, the same for every channel.

:func:`payload` builds it from the job as the read model serialises it (dicom_node.jobs.queries);
it is the webhook's JSON body (schema :data:`SCHEMA`, documented in docs/triage.md), the context of
every template (``{{ decision }}``, ``{{ probabilities.covid }}`` ...) and what the HL7 message is
made of. Nothing clinical: the notice says so in every form.
"""

from __future__ import annotations

from typing import Any

from model.contract.notice import NOT_FOR_CLINICAL_USE
from model.contract.result import CLASSES

SCHEMA_ID = "https://covid-ct-node.example/schemas/notification-1.json"
# "failed" stands beside the model's decisions for a job whose analysis failed.
EVENTS = ("result", "failed")

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "COVID-CT AI node notification",
    "type": "object",
    "required": [
        "schema",
        "delivery_id",
        "event",
        "job_id",
        "decision",
        "probabilities",
        "priority",
        "study_instance_uid",
        "series_instance_uid",
        "finished_at",
        "notice",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "delivery_id": {"type": "string", "description": "the same on every attempt of this notification"},
        "event": {"enum": list(EVENTS)},
        "job_id": {"type": "integer"},
        "decision": {
            "enum": ["covid", "cap", "normal", "indeterminate", "no_decision", "failed"],
            "description": "the model's decision, or failed when the analysis failed",
        },
        "reason": {"type": "string"},
        "probabilities": {
            "type": "object",
            "properties": {c: {"type": "number", "minimum": 0, "maximum": 1} for c in CLASSES},
            "additionalProperties": False,
        },
        "lung_involvement_percent": {"type": ["number", "null"]},
        "priority": {"enum": ["stat", "high", "routine", "low"]},
        "priority_reason": {"type": "string"},
        "patient_id": {"type": "string"},
        "patient_name": {"type": "string"},
        "accession_number": {"type": "string"},
        "study_description": {"type": "string"},
        "study_instance_uid": {"type": "string"},
        "series_instance_uid": {"type": "string"},
        "local_ae": {"type": "string"},
        "calling_ae": {"type": "string"},
        "last_image_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "model": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        "job_url": {"type": ["string", "null"], "format": "uri"},
        "viewer_url": {"type": ["string", "null"], "format": "uri"},
        "notice": {"const": NOT_FOR_CLINICAL_USE},
    },
    "additionalProperties": False,
}


def payload(
    job: dict[str, Any],
    *,
    delivery_id: str,
    last_image_at: str | None = None,
    node_url: str | None = None,
    viewer_url: str | None = None,
) -> dict[str, Any]:
    """The notification of ``job`` (a dicom_node.jobs.queries.job_dict)."""
    failed = job["status"] == "failed"
    return {
        "schema": SCHEMA_ID,
        "delivery_id": delivery_id,
        "event": "failed" if failed else "result",
        "job_id": job["id"],
        "decision": "failed" if failed else job["decision"],
        "reason": job["reason"] if failed else job.get("result_reason", ""),
        "probabilities": {c: float(p) for c, p in (job.get("probabilities") or {}).items() if c in CLASSES},
        "lung_involvement_percent": job.get("lung_involvement_percent"),
        "priority": job["priority"],
        "priority_reason": job.get("priority_reason", ""),
        "patient_id": job.get("patient_id", ""),
        "patient_name": job.get("patient_name", ""),
        "accession_number": job.get("accession_number", ""),
        "study_description": job.get("study_description", ""),
        "study_instance_uid": job["study_uid"],
        "series_instance_uid": job["series_uid"],
        "local_ae": job.get("local_ae", ""),
        "calling_ae": job.get("calling_ae", ""),
        "last_image_at": last_image_at,
        "finished_at": job.get("finished_at"),
        "model": dict(job.get("model") or {}),
        "job_url": f"{node_url.rstrip('/')}/jobs/{job['id']}" if node_url else None,
        "viewer_url": viewer_url,
        "notice": NOT_FOR_CLINICAL_USE,
    }


def sample() -> dict[str, Any]:
    """A payload to check templates against when a channel is saved."""
    return payload(
        {
            "id": 1,
            "status": "done",
            "reason": "",
            "decision": "covid",
            "result_reason": "sample",
            "probabilities": {"covid": 0.9, "cap": 0.05, "normal": 0.05},
            "lung_involvement_percent": 12.5,
            "priority": "stat",
            "priority_reason": "rule sample",
            "patient_id": "P1",
            "patient_name": "Doe^Jane",
            "accession_number": "A1",
            "study_description": "CT CHEST",
            "study_uid": "1.2.3",
            "series_uid": "1.2.3.4",
            "local_ae": "NODE",
            "calling_ae": "CT",
            "finished_at": "2026-01-01T00:00:00+00:00",
            "model": {"name": "model", "version": "1"},
        },
        delivery_id="sample",
        last_image_at="2026-01-01T00:00:00+00:00",
        node_url="http://node:8080",
        viewer_url="http://viewer/1.2.3",
    )
