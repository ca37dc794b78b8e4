"""How often a phantom data set draws each confounder and disease pattern.

The default mix is the generator's own (the figures in model.phantoms.confounders and
model.phantoms.lesions). A training set may lean on what a model gets wrong without telling the
class away: the "hard" mix gives every class alike (normals included) more and denser dependent
atelectasis, and within each disease more of its smallest forms (segmental CAP, early COVID-19).
A mix changes only probabilities and ranges, not the code that draws them, so a phantom of the
default mix is the one the generator made before mixes existed. Another mix keeps a seed's patient
and scan (drawn from their own random streams); its confounders may differ beyond the band itself,
since a band drawn or not changes what the later confounders draw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Mix:
    """Probabilities and ranges a phantom is drawn with (see the module docstring)."""

    dependent_atelectasis: float = 0.4  # probability of a dependent band, any class
    atelectasis_hu: tuple[float, float] = (-600.0, 20.0)  # the band's density, drawn uniformly
    cap_patterns: tuple[float, float, float] = (0.35, 0.3, 0.35)  # lobar, segmental, bronchopneumonia
    covid_stages: tuple[float, float, float, float] = (0.3, 0.3, 0.25, 0.15)  # early, progressive, peak, late

    def __post_init__(self) -> None:
        if not 0.0 <= self.dependent_atelectasis <= 1.0:
            raise ValueError(f"dependent_atelectasis must be in [0, 1], got {self.dependent_atelectasis}")
        lo, hi = self.atelectasis_hu
        if not -1000.0 <= lo <= hi <= 100.0:
            raise ValueError(f"atelectasis_hu must be an interval within [-1000, 100] HU, got {self.atelectasis_hu}")
        for field, p in (("cap_patterns", self.cap_patterns), ("covid_stages", self.covid_stages)):
            if min(p) < 0.0 or abs(sum(p) - 1.0) > 1e-6:
                raise ValueError(f"{field} must be probabilities summing to 1, got {p}")


DEFAULT = Mix()
MIXES: dict[str, Mix] = {
    "default": DEFAULT,
    "hard": Mix(
        dependent_atelectasis=0.7,
        atelectasis_hu=(-300.0, 20.0),
        cap_patterns=(0.2, 0.5, 0.3),
        covid_stages=(0.5, 0.25, 0.15, 0.1),
    ),
}


def describe_mix(mix: Mix) -> dict[str, Any]:
    """A phantom's mix for its description: the name it has in MIXES ("custom" if none) and its values."""
    name = next((key for key, value in MIXES.items() if value == mix), "custom")
    return {"name": name, **asdict(mix)}
