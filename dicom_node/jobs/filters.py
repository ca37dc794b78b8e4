"""Per-AE rules that decide which complete series are analysed.

A series that is not analysed is still stored and listed, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dicom_node.validation import Regex


class SeriesFilter(BaseModel):
    """Stored as JSON in local_aes.filters; every key optional."""

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] = Field(default_factory=lambda: ["CT"])
    # Case-insensitive; empty: any body part (many scanners leave it empty).
    body_parts: list[str] = Field(default_factory=list)
    # re.search, case-insensitive, on SeriesDescription.
    series_description_pattern: Regex | None = None
    # Images: instances x frames.
    min_slices: int = Field(default=1, ge=1)
    # Every value here must be in ImageType (e.g. AXIAL).
    image_type_required: list[str] = Field(default_factory=list)
    # No value here may be in ImageType (scouts are not analysed).
    image_type_excluded: list[str] = Field(default_factory=lambda: ["LOCALIZER"])

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "SeriesFilter":
        return cls.model_validate(data or {})


@dataclass(frozen=True)
class SeriesFacts:
    modality: str
    body_part: str
    series_description: str
    slices: int
    image_type: tuple[str, ...]


def evaluate(rule: SeriesFilter, facts: SeriesFacts) -> tuple[bool, str]:
    """Return (analyse, reason). The reason says which rule excluded the series."""
    if rule.modalities and facts.modality.upper() not in {m.upper() for m in rule.modalities}:
        return False, f"modality {facts.modality or '(empty)'} is not one of {', '.join(rule.modalities)}"
    if rule.body_parts and facts.body_part.upper() not in {b.upper() for b in rule.body_parts}:
        return False, f"body part {facts.body_part or '(empty)'} is not one of {', '.join(rule.body_parts)}"
    if rule.series_description_pattern and not re.search(
        rule.series_description_pattern, facts.series_description, re.IGNORECASE
    ):
        return (
            False,
            f"series description {facts.series_description!r} does not match {rule.series_description_pattern!r}",
        )
    if facts.slices < rule.min_slices:
        return False, f"{facts.slices} image(s), fewer than the minimum of {rule.min_slices}"
    types = {t.upper() for t in facts.image_type}
    missing = [t for t in rule.image_type_required if t.upper() not in types]
    if missing:
        return False, f"image type {'/'.join(facts.image_type) or '(empty)'} lacks {', '.join(missing)}"
    excluded = [t for t in rule.image_type_excluded if t.upper() in types]
    if excluded:
        return False, f"image type {'/'.join(facts.image_type)} contains {', '.join(excluded)}"
    return True, ""
