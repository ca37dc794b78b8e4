"""The priority of a job (dicom_node.triage.priority): the levels, the rules' conditions, the
decision between matching rules, the study attributes read from a stored file
(dicom_node.triage.study), and the rules as the command line changes them (refusals named,
changes audited).

Not covered here: completion writing the priority and the claims honouring it
(tests/jobs/test_priority_queue.py), a worker and a broker (tests/e2e/test_priority.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.cli import main
from dicom_node.db import Database
from dicom_node.db.models import AuditEntry
from dicom_node.settings import load_settings
from dicom_node.triage.priority import (
    LEVELS,
    LOW_BACKFILL,
    Priority,
    PriorityConditions,
    Rule,
    StudyFacts,
    decide,
    matches,
)
from dicom_node.triage.study import attributes_of, read_attributes
from model.phantoms.writer import write_phantom_series


def rule(name: str, priority: str, **conditions: object) -> Rule:
    return Rule(name, Priority.parse(priority), PriorityConditions.model_validate(conditions))


def test_levels_most_urgent_first_and_backfill_is_lowest() -> None:
    assert LEVELS == ("stat", "high", "routine", "low")
    assert Priority.parse("STAT") is Priority.STAT and Priority.parse(2) is Priority.HIGH
    assert LOW_BACKFILL == min(Priority)
    with pytest.raises(ValueError, match="not a priority; one of stat, high, routine, low"):
        Priority.parse("urgent")


def test_every_condition_must_hold() -> None:
    c = PriorityConditions.model_validate(
        {"calling_ae": ["ER_CT"], "patient_location_pattern": "^ED", "study_description_pattern": "chest"}
    )
    facts = StudyFacts(calling_ae="ER_CT", patient_location="ED bay 4", study_description="CT CHEST W/O")
    assert matches(c, facts)
    assert not matches(c, StudyFacts(calling_ae="ER_CT", patient_location="ward 7", study_description="CT CHEST"))
    assert not matches(c, StudyFacts(calling_ae="OTHER", patient_location="ED", study_description="chest"))
    assert matches(PriorityConditions(), StudyFacts()), "a rule without conditions matches every series"
    requested = PriorityConditions.model_validate({"requested_procedure_priority": ["STAT"]})
    assert matches(requested, StudyFacts(requested_procedure_priority="stat"))
    assert not matches(requested, StudyFacts(requested_procedure_priority="ROUTINE"))
    stored = PriorityConditions.model_validate({"store_priority": ["HIGH"], "local_ae": ["ERNODE"]})
    assert matches(stored, StudyFacts(store_priority="HIGH", local_ae="ERNODE"))
    assert not matches(stored, StudyFacts(store_priority="MEDIUM", local_ae="ERNODE"))


def test_the_most_urgent_matching_rule_decides() -> None:
    rules = [
        rule("research", "low", local_ae=["RESEARCH"]),
        rule("inpatient", "high", admission_id_pattern="."),
        rule("ed", "stat", patient_location_pattern="^(ED|EMERG)"),
    ]
    assert decide(rules, StudyFacts(local_ae="RESEARCH")) == (Priority.LOW, "rule research")
    assert decide(rules, StudyFacts(admission_id="A123", patient_location="EMERGENCY")) == (Priority.STAT, "rule ed")
    assert decide(rules, StudyFacts(admission_id="A123")) == (Priority.HIGH, "rule inpatient")
    assert decide(rules, StudyFacts(calling_ae="CT1")) == (Priority.ROUTINE, "no priority rule matched")


def test_study_attributes_from_a_stored_file(tmp_path: Path) -> None:
    folder = write_phantom_series(
        "normal", tmp_path / "ct", seed=3, slices=4, rows=32, columns=32, patient_name="Phantom^Three"
    )
    path = sorted(folder.glob("*.dcm"))[0]
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.AccessionNumber = "ACC42"
    ds.StudyDescription = "CT CHEST"
    ds.CurrentPatientLocation = "ED"
    ds.AdmissionID = "ADM1"
    item = Dataset()
    item.RequestedProcedurePriority = "stat"
    ds.RequestAttributesSequence = [item]
    got = attributes_of(ds)
    assert (got.patient_name, got.accession_number, got.study_description) == ("Doe^Jane", "ACC42", "CT CHEST")
    assert (got.requested_procedure_priority, got.patient_location, got.admission_id) == ("STAT", "ED", "ADM1")
    assert read_attributes(path).patient_name == "Phantom^Three"
    unreadable = read_attributes(tmp_path / "missing.dcm")
    assert unreadable.patient_name == "" and unreadable.requested_procedure_priority == ""


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_rules_on_the_command_line_are_checked_and_audited(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triage", "add-priority-rule", "ed", "--priority", "stat", "--location-pattern", "^(ED"]) == 2
    assert "refused: conditions.patient_location_pattern" in capsys.readouterr().err
    assert main(["triage", "add-priority-rule", "er", "--priority", "stat", "--calling-ae", "A" * 17]) == 2
    assert "calling_ae" in capsys.readouterr().err
    assert main(["triage", "add-priority-rule", "bad name", "--priority", "stat"]) == 2
    assert "refused: name" in capsys.readouterr().err

    assert main(["triage", "add-priority-rule", "er", "--priority", "stat", "--calling-ae", "ER_CT"]) == 0
    capsys.readouterr()
    assert main(["triage", "add-priority-rule", "er", "--priority", "high"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["triage", "update-priority-rule", "er", "--requested-priority", "stat,high", "--disable"]) == 0
    changed = json.loads(capsys.readouterr().out)
    assert changed["conditions"] == {"calling_ae": ["ER_CT"], "requested_procedure_priority": ["STAT", "HIGH"]}
    assert changed["enabled"] is False
    assert main(["triage", "list"]) == 0
    out = capsys.readouterr().out
    assert "er" in out and "stat" in out and "disabled" in out
    assert main(["triage", "remove", "priority-rule", "er"]) == 0
    capsys.readouterr()
    assert main(["triage", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["priority_rules"] == []

    db = Database(load_settings().effective_database_url)
    with db.session() as s:
        actions = [a for (a,) in s.execute(select(AuditEntry.action).order_by(AuditEntry.id))]
    db.dispose()
    assert actions == ["priority_rule.create", "priority_rule.update", "priority_rule.delete"]
