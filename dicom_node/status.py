"""DICOM status codes the node answers with (PS3.7 Annex C and the Storage Service Class)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # Storage warnings (PS3.4 B.2.3)
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    # Storage failures
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # General failures (PS3.7 C.4)
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    PROCESSING_FAILURE = 0x0110
    INVALID_ARGUMENT_VALUE = 0x0115
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_SOP_INSTANCE = 0x0111

    @property
    def is_success(self) -> bool:
        return self in SUCCESS_STATUSES


SUCCESS_STATUSES = frozenset(
    {
        Status.SUCCESS,
        Status.COERCION_OF_DATA_ELEMENTS,
        Status.ELEMENTS_DISCARDED,
        Status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
    }
)
