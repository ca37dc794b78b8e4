"""Which finished jobs are notified, and where: the conditions of a notification rule.

A rule matches a finished job when every condition it sets holds (a rule without conditions
matches every finished job); each of its channels then gets one notification of that run of the
job (dicom_node.jobs.notifications), however many rules name the channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dicom_node.triage.priority import Priority, PriorityName
from dicom_node.validation import AETitle

Outcome = Literal["covid", "cap", "normal", "indeterminate", "no_decision", "failed"]
ClassName = Literal["covid", "cap", "normal"]


class NotifyConditions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[Outcome] = Field(
        default_factory=list, description="the decision is one of these (failed: the analysis failed)"
    )
    priority_at_least: PriorityName | None = Field(default=None, description="the job's priority is this or higher")
    probability_class: ClassName | None = Field(default=None, description="with probability_above")
    probability_above: float | None = Field(default=None, ge=0, le=1, description="p(probability_class) above this")
    local_ae: list[AETitle] = Field(default_factory=list, description="received by one of these local AE titles")

    @model_validator(mode="after")
    def _pair(self) -> "NotifyConditions":
        if (self.probability_class is None) != (self.probability_above is None):
            raise ValueError("probability_class and probability_above go together")
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "NotifyConditions":
        return cls.model_validate(data or {})


@dataclass(frozen=True)
class JobFacts:
    outcome: str  # the decision, or "failed"
    priority: int
    probabilities: dict[str, float]
    local_ae: str


def matches(c: NotifyConditions, facts: JobFacts) -> bool:
    if c.decisions and facts.outcome not in c.decisions:
        return False
    if c.priority_at_least is not None and facts.priority < Priority.parse(c.priority_at_least):
        return False
    if c.probability_class is not None and c.probability_above is not None:
        if float(facts.probabilities.get(c.probability_class, 0.0)) <= c.probability_above:
            return False
    return not c.local_ae or facts.local_ae in c.local_ae
