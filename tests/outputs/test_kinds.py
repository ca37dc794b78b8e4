"""The registry of output kinds (dicom_node.outputs.kinds) and everything that reads it.

Covers: every kind has a writer (by the registry's rule) and its own series number; the
validators, the settings' default outputs and the builder's default all follow the registry (a
destination without outputs takes the settings': tests/configuration/test_defaults.py). Not
covered: what each writer builds (test_sr/sc/seg/kos.py).
"""

from __future__ import annotations

from dicom_node.configuration import DestinationIn
from dicom_node.outputs.build import writer
from dicom_node.outputs.common import OutputOptions
from dicom_node.outputs.kinds import KINDS, OUTPUT_KINDS, PREVIEW_KIND
from dicom_node.settings import ExportSettings
from dicom_node.validation import check_output_kinds


def test_every_kind_has_a_writer_and_its_own_series() -> None:
    assert all(callable(writer(kind)) for kind in KINDS) and OUTPUT_KINDS == ("sr", "sc", "seg", "kos", "pm")
    numbers = [OutputOptions().series_number(kind) for kind in OUTPUT_KINDS]
    assert numbers == [9001, 9002, 9003, 9004, 9005] and len(set(numbers)) == len(numbers)
    assert PREVIEW_KIND == "sc"


def test_the_registry_is_what_validation_and_defaults_read() -> None:
    assert check_output_kinds(list(OUTPUT_KINDS)) == (True, "")
    ok, reason = check_output_kinds(["sr", "rtss"])
    assert not ok and "rtss" in reason and ", ".join(OUTPUT_KINDS) in reason
    assert ExportSettings().default_outputs == list(OUTPUT_KINDS)
    assert DestinationIn(title="PACS", host="127.0.0.1", port=104).outputs is None  # the settings' default
