"""The figures the READMEs quote, generated from the weights' metadata so they can not drift from it.

Each table is a block of a Markdown file between ``<!-- figures:NAME -->`` and
``<!-- /figures:NAME -->``; :func:`update_file` rewrites the blocks from a weights folder's
metadata.json (``dicom-node model card --weights model/weights README.md model/README.md``), and
tests/model/test_card.py checks that the committed blocks equal what the shipped metadata renders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from model.contract.notice import NOT_FOR_CLINICAL_USE

_BLOCK = re.compile(r"(<!-- figures:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)


_AUCS = ("covid_vs_rest_auc", "cap_vs_rest_auc", "normal_vs_rest_auc")


def _num(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def held_out(meta: dict[str, Any]) -> str:
    """The held-out headline against the targets."""
    held = meta["held_out_metrics"]
    h = held["headline"]
    rows = [
        ("series accuracy (decisions; indeterminate counts as wrong)", _num(h["decision_accuracy"]), ">= 0.95"),
        ("pneumonia (covid or cap) against normal: sensitivity", _num(h["pneumonia_sensitivity"]), ">= 0.97"),
        ("pneumonia against normal: specificity", _num(h["pneumonia_specificity"]), ">= 0.95"),
        ("covid against cap among the pneumonias called", _num(h["covid_vs_cap_accuracy"]), ">= 0.9"),
        (
            "COVID-19 / CAP / normal against the rest: ROC AUC",
            " / ".join(_num(h[k]) for k in ("covid_vs_rest_auc", "cap_vs_rest_auc", "normal_vs_rest_auc")),
            "",
        ),
        ("indeterminate", str(h["indeterminate"]), ""),
        ("pointing game (the heatmap's peak on a lesion)", _num(h["pointing_game"]), ">= 0.9"),
        ("lung involvement within 5 points of the truth (disease series)", _num(h["involvement_within_5pp"]), ">= 0.9"),
        ("expected calibration error", _num(h["ece"], 3), "<= 0.05"),
        ("lung mask Dice against the true lungs (mean)", _num(h["lung_dice_mean"], 3), ">= 0.97"),
        ("lesion voxels inside the lung mask (mean)", _num(h["lesion_in_lung_mask"], 3), ">= 0.98"),
        ("region voxels more than 3 mm outside the lungs", str(h["region_voxels_outside_lungs"]), "0"),
        ("lesion Dice of the map / of the regions", f"{_num(h['lesion_dice'])} / {_num(h['region_dice'])}", ""),
    ]
    per_class = held.get("per_class_series", {})
    lines = [
        f"Held-out phantoms: {held['series_count']} series ({', '.join(f'{v} {k}' for k, v in per_class.items())}), "
        f"{_seeds(held.get('phantom_seeds', []))}. {NOT_FOR_CLINICAL_USE}",
        "",
        "| metric | held out | target |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def by_category(meta: dict[str, Any]) -> str:
    """Accuracy per acquisition, confounder and disease pattern on the held-out phantoms."""
    table = meta["held_out_metrics"].get("by_category", [])
    lines = [
        "| category | series | decisions right | pneumonia or not right | indeterminate |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['category']} | {r['series']} | {_num(r['accuracy'])} | {_num(r['pneumonia_right'])} "
        f"| {r['indeterminate']} |"
        for r in table
    ]
    return "\n".join(lines) + "\n"


def calibration(meta: dict[str, Any]) -> str:
    """What calibration fitted, and the reliability of the held-out decisions."""
    cal = meta["inference"]["calibration"]
    held = meta["held_out_metrics"].get("calibration", {})
    lines = [
        f"Fitted on {cal['series']} calibration phantoms: temperature {_num(cal['temperature'])}, class bias "
        f"({', '.join(_num(b) for b in cal['class_bias'])}), indeterminate margin {_num(cal['min_margin'])}, "
        f"region threshold {_num(cal.get('threshold'))}; expected calibration error there "
        f"{_num(cal['ece_before'], 3)} before, {_num(cal['ece_after'], 3)} after. Held out: "
        f"{_num(held.get('ece'), 3)}.",
        "",
        "| confidence | series | mean confidence | accuracy |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {b['low']:.1f}-{b['high']:.1f} | {b['count']} | {_num(b['confidence'])} | {_num(b['accuracy'])} |"
        for b in held.get("bins", [])
    ]
    return "\n".join(lines) + "\n"


def readme_row(meta: dict[str, Any]) -> str:
    """The model's figures in the top-level README (a table of one row)."""
    h = meta["held_out_metrics"]["headline"]
    n = meta["held_out_metrics"]["series_count"]
    return (
        "| model | figure (from model/weights/metadata.json) | target | command |\n"
        "| --- | --- | --- | --- |\n"
        f"| shipped weights on {n} held-out phantoms | "
        f"decisions right {_num(h['decision_accuracy'])}, pneumonia sensitivity {_num(h['pneumonia_sensitivity'])} / "
        f"specificity {_num(h['pneumonia_specificity'])}, covid vs cap {_num(h['covid_vs_cap_accuracy'])}, pointing "
        f"game {_num(h['pointing_game'])}, involvement within 5 points {_num(h['involvement_within_5pp'])}, ECE "
        f"{_num(h['ece'], 3)}, lung Dice {_num(h['lung_dice_mean'], 3)} | >= 0.95, >= 0.97 / >= 0.95, >= 0.9, "
        ">= 0.9, >= 0.9, <= 0.05, >= 0.97 | `benchmarks/cpu_weights.sh` ([model card](model/README.md)) |\n"
    )


def _seeds(seeds: list[int]) -> str:
    """The series' own phantom seeds (derived from the data set's seed) say only how many differ."""
    if not seeds:
        return "phantom seeds not recorded"
    return f"{len(set(seeds))} distinct phantom seeds"


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "held-out": held_out,
    "by-category": by_category,
    "calibration": calibration,
    "readme-row": readme_row,
}


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of a Markdown text, by name."""
    return {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}


def render(text: str, meta: dict[str, Any]) -> str:
    """``text`` with every generated block rewritten from ``meta``."""

    def one(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise ValueError(f"unknown figures block {name!r} (known: {', '.join(RENDERERS)})")
        return m.group(1) + RENDERERS[name](meta) + m.group(4)

    return _BLOCK.sub(one, text)


def update_file(path: Path, meta: dict[str, Any]) -> bool:
    """Rewrite the blocks of ``path``; True when it changed."""
    text = Path(path).read_text()
    new = render(text, meta)
    if new != text:
        Path(path).write_text(new)
    return new != text
