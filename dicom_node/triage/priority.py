"""The priority of a job: its levels, the rules an admin writes, and the decision.

Levels, most urgent first (stored as the integer, higher runs first)::

    stat      3   an emergency: runs before anything else that waits
    high      2   urgent, e.g. in-patients
    routine   1   the default of every job that no rule raises or lowers
    low       0   runs only when nothing else waits: re-analyses in bulk, backfills of past
                  studies (LOW_BACKFILL), off-peak sources

A rule holds conditions on what the node knows of a series when it completes (the calling and the
local AE, the C-STORE priority of its instances when the listener recorded one, and attributes of
its header: Requested Procedure Priority, Current Patient Location / Patient's Institution
Residence, Admission ID, Study and Series Description); a rule matches when every condition it
sets holds (a rule without conditions matches every series). The job gets the priority of the
most urgent enabled rule that matches, ``routine`` when none does; the reason names that rule.

The worker that takes the next job takes the most urgent one waiting, whatever the broker
(dicom_node.jobs.analyses.claim).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from dicom_node.validation import AETitle, Regex


class Priority(enum.IntEnum):
    LOW = 0
    ROUTINE = 1
    HIGH = 2
    STAT = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: "str | int | Priority") -> "Priority":
        """A level from its name (any case) or number; ValueError naming the levels otherwise."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        elif isinstance(value, str) and value.strip().upper() in cls.__members__:
            return cls[value.strip().upper()]
        raise ValueError(f"{value!r} is not a priority; one of {', '.join(LEVELS)}")


# Names, most urgent first (what the command line, the API and the pages take and show).
LEVELS = tuple(p.label for p in sorted(Priority, reverse=True))
DEFAULT = Priority.ROUTINE
# Jobs that analyse past studies in bulk (backfills) are made at this priority, so that live
# studies go first.
LOW_BACKFILL = Priority.LOW

# PS3.7 C-STORE Priority (0000,0700): 0 MEDIUM, 1 HIGH, 2 LOW; kept per series as a rank (the most
# urgent of its instances), named by STORE_PRIORITY_NAMES[rank].
STORE_PRIORITY_NAMES = ("LOW", "MEDIUM", "HIGH")
_STORE_PRIORITY_RANK = {0: 1, 1: 2, 2: 0}


def store_priority_rank(value: int) -> int:
    """The rank (0 low, 1 medium, 2 high) of a C-STORE Priority value; medium for anything else."""
    return _STORE_PRIORITY_RANK.get(int(value), 1)


PriorityName = Literal["stat", "high", "routine", "low"]
# PS3.3 C.4.11 Requested Procedure Priority (0040,1003) and PS3.7 C-STORE Priority (0000,0700).
RequestedPriority = Literal["STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"]
StorePriority = Literal["HIGH", "MEDIUM", "LOW"]


class PriorityConditions(BaseModel):
    """What a rule requires; every key optional, all that are set must hold. Patterns are
    ``re.search``, case-insensitive."""

    model_config = ConfigDict(extra="forbid")

    calling_ae: list[AETitle] = Field(default_factory=list, description="one of these calling AE titles")
    local_ae: list[AETitle] = Field(default_factory=list, description="received by one of these local AE titles")
    requested_procedure_priority: list[RequestedPriority] = Field(
        default_factory=list, description="Requested Procedure Priority (0040,1003) is one of these"
    )
    store_priority: list[StorePriority] = Field(
        default_factory=list, description="the C-STORE Priority (0000,0700) its instances were sent with"
    )
    patient_location_pattern: Regex | None = Field(
        default=None, description="Current Patient Location (0038,0300) or Patient's Institution Residence (0038,0400)"
    )
    admission_id_pattern: Regex | None = Field(default=None, description="Admission ID (0038,0010)")
    study_description_pattern: Regex | None = Field(default=None, description="Study Description (0008,1030)")
    series_description_pattern: Regex | None = Field(default=None, description="Series Description (0008,103E)")

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "PriorityConditions":
        return cls.model_validate(data or {})


@dataclass(frozen=True)
class StudyFacts:
    """What the rules look at, for one series."""

    calling_ae: str = ""
    local_ae: str = ""
    requested_procedure_priority: str = ""
    store_priority: str = ""
    patient_location: str = ""
    admission_id: str = ""
    study_description: str = ""
    series_description: str = ""


@dataclass(frozen=True)
class Rule:
    name: str
    priority: Priority
    conditions: PriorityConditions


def matches(conditions: PriorityConditions, facts: StudyFacts) -> bool:
    """Does every condition set in ``conditions`` hold for ``facts``?"""
    c = conditions
    if c.calling_ae and facts.calling_ae not in c.calling_ae:
        return False
    if c.local_ae and facts.local_ae not in c.local_ae:
        return False
    if c.requested_procedure_priority and facts.requested_procedure_priority.upper() not in (
        c.requested_procedure_priority
    ):
        return False
    if c.store_priority and facts.store_priority.upper() not in c.store_priority:
        return False
    patterns = (
        (c.patient_location_pattern, facts.patient_location),
        (c.admission_id_pattern, facts.admission_id),
        (c.study_description_pattern, facts.study_description),
        (c.series_description_pattern, facts.series_description),
    )
    return all(pattern is None or re.search(pattern, value, re.IGNORECASE) for pattern, value in patterns)


def decide(rules: Iterable[Rule], facts: StudyFacts) -> tuple[Priority, str]:
    """The job's priority and why: the most urgent matching rule (the first of equals), or
    routine when none matches."""
    best: Rule | None = None
    for rule in rules:
        if matches(rule.conditions, facts) and (best is None or rule.priority > best.priority):
            best = rule
    if best is None:
        return DEFAULT, "no priority rule matched"
    return best.priority, f"rule {best.name}"
