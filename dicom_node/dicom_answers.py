"""The DICOM answers of the node, named: DIMSE status codes (PS3.7 Annex C and the Storage Service
Class) and the A-ASSOCIATE-RJ fields (PS3.8 7.1.1.9, 9.3.4). pynetdicom has names for a few
statuses only (pynetdicom.status.Status: success, cancel, pending); these are the node's."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # A warning some peers answer a C-STORE with (PS3.7 C.4: requested optional attributes not supported).
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
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
    # STOW-RS only (PS3.18 Table 10.5.3-3): an instance in a transfer syntax the node does not take.
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    # What pynetdicom answers when an event handler raises (in the 0xCxxx "cannot understand"
    # range); the C-STORE fast lane answers the same.
    UNABLE_TO_PROCESS = 0xC211

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


class AssociateResult(IntEnum):
    """The result of an association request (A-ASSOCIATE-AC 0, A-ASSOCIATE-RJ otherwise)."""

    ACCEPTED = 0x00
    REJECTED_PERMANENT = 0x01
    REJECTED_TRANSIENT = 0x02  # may succeed later


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ source."""

    SERVICE_USER = 0x01
    SERVICE_PROVIDER_ACSE = 0x02
    SERVICE_PROVIDER_PRESENTATION = 0x03


class PresentationRejectReason(IntEnum):
    """A-ASSOCIATE-RJ reason/diagnostic when the source is the service provider (presentation)."""

    TEMPORARY_CONGESTION = 0x01
    LOCAL_LIMIT_EXCEEDED = 0x02


# The answer to a connection or an association over one of the listener's limits (connections per
# address, connections in all, negotiated associations): rejected-transient, DICOM UL
# service-provider (presentation related function), local-limit-exceeded (PS3.8 Table 9-21).
LOCAL_LIMIT_REJECTION = (
    AssociateResult.REJECTED_TRANSIENT,
    RejectSource.SERVICE_PROVIDER_PRESENTATION,
    PresentationRejectReason.LOCAL_LIMIT_EXCEEDED,
)
# How such a refusal ends in the log and the events, after the limit that was reached.
LOCAL_LIMIT_ANSWER = "A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded"


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ reason/diagnostic when the source is the service user."""

    NO_REASON_GIVEN = 0x01
    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 0x02
    CALLING_AE_TITLE_NOT_RECOGNISED = 0x03
    CALLED_AE_TITLE_NOT_RECOGNISED = 0x07
