"""The result contract (model.contract.result): a SeriesResult that breaks a rule can not be made.

Covers each rule of the constructor with the field it names. Not covered: the checks that need the
source series (dicom_node.outputs, tests/outputs/test_build.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.contract.result import ModelInfo, SeriesResult

MODEL = ModelInfo(name="m", version="1")
UIDS = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]


def good() -> SeriesResult:
    return SeriesResult(
        probabilities={"covid": 0.7, "cap": 0.2, "normal": 0.1},
        decision="covid",
        reason="test",
        model=MODEL,
        sop_instance_uids=list(UIDS),
        key_slices=[2, 0],
        lung_slices=[True, True, False],
        heatmap=np.zeros((3, 4, 4), dtype=np.float32),
        lung_mask=np.zeros((3, 4, 4), dtype=bool),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decision": "maybe"}, "decision: 'maybe'"),
        ({"reason": ""}, "reason"),
        ({"probabilities": {"covid": 0.5, "flu": 0.5}}, "unknown class"),
        ({"probabilities": {"covid": 0.7, "cap": 0.7}}, "do not sum to 1"),
        ({"probabilities": {"covid": 1.5, "cap": -0.5}}, r"not all in \[0, 1\]"),
        ({"lung_slices": [True]}, "lung_slices has 1 entries"),
        ({"key_slices": [3]}, "key_slices"),
        ({"heatmap": np.zeros((2, 4, 4))}, "heatmap has shape"),
        ({"lung_mask": np.zeros((3, 5, 5), dtype=bool)}, "differ in shape"),
        ({"decision": "no_decision", "probabilities": {"covid": 1 / 3, "cap": 1 / 3, "normal": 1 / 3}}, "no heatmap"),
    ],
)
def test_a_result_that_breaks_a_rule_is_refused(change: dict[str, object], message: str) -> None:
    assert good().decision == "covid"
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(good(), **change)  # type: ignore[arg-type]  # the wrong types are the point
