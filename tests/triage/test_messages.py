"""What a notification says, without a network: the payload against its JSON Schema (and the
schema as docs/triage.md prints it), the ORU^R01 as python-hl7 (another library than the
sender's hl7apy) reads it, for a result and for a failed analysis, text with HL7's separators in it
escaped; acknowledgements judged; the webhook's signature; the rules' conditions; channel settings
and templates refused with the field and the reason.

Not covered: sending to real receivers (test_notifications.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hl7
import jsonschema
import pytest

from dicom_node.errors import Refused
from dicom_node.notify.channels import parse_settings, render, sign
from dicom_node.notify.hl7v2 import oru_r01, parse_ack
from dicom_node.notify.payload import SCHEMA, sample
from dicom_node.triage.alerts import JobFacts, NotifyConditions, matches
from dicom_node.triage.rules import _valid_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_payload_follows_its_schema_and_the_docs_print_it() -> None:
    jsonschema.validate(sample(), SCHEMA)
    failed = {**sample(), "event": "failed", "decision": "failed", "probabilities": {}}
    jsonschema.validate(failed, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**sample(), "decision": "maybe"}, SCHEMA)
    text = (ROOT / "docs" / "triage.md").read_text()
    block = text.split("*(checked: dicom_node.notify.payload.SCHEMA)*", 1)[1]
    documented = json.loads(re.search(r"```json\n(.*?)```", block, re.S).group(1))  # type: ignore[union-attr]
    assert documented == SCHEMA


def test_the_oru_r01_as_another_library_reads_it() -> None:
    note = {**sample(), "patient_name": "O'Hara^Mary|Ann", "accession_number": "A^1", "delivery_id": "DNN1"}
    msg = hl7.parse(oru_r01(note, control_id="DNN1", sending_application="COVIDCTNODE", receiving_application="RIS"))
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "OBR", "NTE", *["OBX"] * 7]
    assert str(msg.segment("MSH")[10]) == "DNN1" and str(msg.segment("MSH")[3]) == "COVIDCTNODE"
    assert msg.unescape(str(msg.segment("PID")[5][0][1])) == "Mary|Ann", "a separator in a name is escaped"
    assert msg.unescape(str(msg.segment("OBR")[2])) == "A^1"
    obx = {str(o[3][0][0]): o for o in msg.segments("OBX")}
    assert sorted(obx) == ["DECISION", "LUNG_INV", "PRIORITY", "P_CAP", "P_COVID", "P_NORMAL", "STUDY_UID"]
    assert {str(o[11]) for o in msg.segments("OBX")} == {"F"} and str(msg.segment("OBR")[25]) == "F"
    assert float(str(obx["P_COVID"][5])) == pytest.approx(note["probabilities"]["covid"], abs=1e-4)


def test_a_failed_analysis_says_why_and_nothing_else() -> None:
    note = {**sample(), "event": "failed", "decision": "failed", "reason": "the series could not be read"}
    msg = hl7.parse(oru_r01(note, control_id="DNN2", sending_application="N"))
    obx = {str(o[3][0][0]): o for o in msg.segments("OBX")}
    assert sorted(obx) == ["FAILURE", "PRIORITY", "STUDY_UID"]
    assert str(obx["FAILURE"][5]) == "the series could not be read" and str(msg.segment("OBR")[25]) == "X"


def test_acknowledgements() -> None:
    ack = parse_ack("MSH|^~\\&|RIS||N||20260101||ACK^R01^ACK|9|P|2.5.1\rMSA|AR|DNN3|no such patient\r")
    assert (ack.code, ack.control_id, ack.text) == ("AR", "DNN3", "no such patient")
    with pytest.raises(ValueError, match="not an HL7 acknowledgement"):
        parse_ack("HTTP/1.1 400 Bad Request")


def test_the_webhook_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    assert sign("k" * 16, "1700000000", b"{}") == (
        "sha256=" + __import__("hmac").new(b"k" * 16, b"1700000000.{}", "sha256").hexdigest()
    )


def test_rule_conditions() -> None:
    facts = JobFacts(outcome="covid", priority=3, probabilities={"covid": 0.7}, local_ae="ER")
    assert matches(NotifyConditions(), facts)
    assert matches(NotifyConditions.model_validate({"decisions": ["covid", "cap"], "priority_at_least": "high"}), facts)
    assert not matches(NotifyConditions.model_validate({"decisions": ["failed"]}), facts)
    above = {"probability_class": "covid", "probability_above": 0.8}
    assert not matches(NotifyConditions.model_validate(above), facts)
    assert not matches(NotifyConditions.model_validate({"local_ae": ["OTHER"]}), facts)
    with pytest.raises(ValueError, match="go together"):
        NotifyConditions.model_validate({"probability_class": "covid"})


def test_bad_channel_settings_are_refused_with_the_field() -> None:
    with pytest.raises(Refused, match=r"settings.url: Value error|settings.url"):
        _valid_settings("webhook", {"url": "ftp://x", "secret": "s" * 16})
    with pytest.raises(Refused, match="settings.secret"):
        _valid_settings("webhook", {"url": "http://x", "secret": "short"})
    with pytest.raises(Refused, match="does not render to JSON"):
        _valid_settings("webhook", {"url": "http://x", "secret": "s" * 16, "template": "text {{ decision }}"})
    with pytest.raises(Refused, match="subject_template"):
        _valid_settings(
            "email",
            {"host": "smtp.example.org", "sender": "a@b.c", "recipients": ["d@e.f"], "subject_template": "{{ nope }}"},
        )
    with pytest.raises(Refused, match="recipients"):
        _valid_settings("email", {"host": "smtp.example.org", "sender": "a@b.c", "recipients": ["not-an-address"]})
    with pytest.raises(Refused, match="settings.port"):
        _valid_settings("hl7", {"host": "ris", "port": 70000})
    made = parse_settings(
        "webhook", {"url": "http://x", "secret": "s" * 16, "template": '{"text": {{ decision|tojson }}}'}
    )
    assert json.loads(render(made.template or "", sample())) == {"text": "covid"}  # type: ignore[attr-defined]
