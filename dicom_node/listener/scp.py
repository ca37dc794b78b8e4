"""Receiving (Storage SCP): the C-ECHO and C-STORE handlers of one local AE.

Knows nothing of Celery. A C-STORE is answered with success only after the instance is durably on
disk (dicom_node.storage.files) and indexed (dicom_node.storage.index); anything else gets a named failure
status (dicom_node.dicom_answers) and a log line that says why. The data set is stored exactly as
received; it is parsed only to check it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID_dictionary,
)
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType

from dicom_node.db import Database
from dicom_node.dicom_answers import (
    LOCAL_LIMIT_ANSWER,
    LOCAL_LIMIT_REJECTION,
    AssociateResult,
    RejectReason,
    RejectSource,
    Status,
)
from dicom_node.listener.dataset import DEFAULT_MAX_BYTES, RejectedInstance, parse_header
from dicom_node.listener.limits import PeerLog
from dicom_node.settings import Settings
from dicom_node.storage.files import Storage
from dicom_node.storage.index import Index, LocalAESnapshot
from dicom_node.storage.retention import Retention
from dicom_node.storage.spool import Spool
from dicom_node.triage.priority import store_priority_rank
from model.contract.uids import check_received_uid

log = logging.getLogger(__name__)
# Refused associations: at most 3 log lines and event rows a minute per peer address.
REFUSALS = PeerLog(log, burst=3, window=60.0)

DEFAULT_SOP_CLASSES: tuple[str, ...] = (CTImageStorage, EnhancedCTImageStorage)

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    ExplicitVRBigEndian,
)

# "*" in a SOP class list: every storage SOP class of the standard, retired ones included.
ALL_STORAGE = "*"
_ALL_STORAGE_CLASSES: tuple[str, ...] = tuple(
    uid
    for uid, (name, kind, *_rest) in UID_dictionary.items()
    if kind == "SOP Class" and "Storage" in name and "Commitment" not in name and "Directory" not in name
)


def receiver_for(settings: Settings, db: Database, *, actor: str) -> "Receiver":
    """The node's receiver over its storage and index, as every way in (the DIMSE listeners,
    STOW-RS) stores instances: before an instance would be refused for want of disk, the oldest
    finished series are purged down to the low water mark (dicom_node.storage.retention; ``actor``
    names who purged in the audit log)."""
    storage = Storage(settings.storage_dir)
    retention = Retention(db, settings, storage, actor=actor)
    storage.make_room = lambda need: retention.make_room(max(need, retention.low_water_free()))
    return Receiver(
        storage,
        Index(db),
        min_free_bytes=settings.listener.min_free_disk_mb * 1024 * 1024,
        max_dataset_bytes=settings.listener.max_dataset_bytes,
    )


def accepted_sop_classes(extra: tuple[str, ...] | list[str]) -> list[str]:
    """CT and Enhanced CT, plus the configured extras ("*" = all storage classes)."""
    out = list(DEFAULT_SOP_CLASSES)
    for uid in extra:
        if uid == ALL_STORAGE:
            out.extend(_ALL_STORAGE_CLASSES)
        else:
            out.append(uid)
    return list(dict.fromkeys(out))  # without repeats, in order


class Receiver:
    """The C-STORE logic of the node, independent of the network: check, store durably, index."""

    def __init__(
        self, storage: Storage, index: Index, *, min_free_bytes: int, max_dataset_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.storage = storage
        self.index = index
        self.min_free_bytes = min_free_bytes
        self.max_dataset_bytes = max_dataset_bytes

    def spool(self, *, calling_ae: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> Spool:
        """Where the data set of a C-STORE goes as it arrives (dicom_node.storage.spool)."""
        return self.storage.spool(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            source_ae_title=calling_ae,
            max_bytes=self.max_dataset_bytes,
            min_free_bytes=self.min_free_bytes,
        )

    def store(
        self,
        local_ae: LocalAESnapshot,
        *,
        calling_ae: str,
        calling_host: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes | Spool,
        priority: int = 0,
        service: str = "C-STORE",
    ) -> tuple[Status, str]:
        """Store one instance; return the status to answer and, for a failure, why. A spool is
        stored (its file renamed into place) or discarded: nothing of it is left behind.
        ``priority``: the request's Priority (0000,0700), recorded for the priority rules;
        ``service``: how the instance came (C-STORE, STOW-RS), for the log and the events."""
        spool = dataset if isinstance(dataset, Spool) else Spool.of_bytes(dataset)
        try:
            return self._store(
                local_ae,
                calling_ae,
                calling_host,
                sop_class_uid,
                sop_instance_uid,
                transfer_syntax_uid,
                spool,
                priority,
            ), ""
        except RejectedInstance as exc:
            self.refused(
                local_ae,
                exc,
                sop_instance_uid=sop_instance_uid,
                calling_ae=calling_ae,
                calling_host=calling_host,
                service=service,
            )
            return exc.status, exc.reason
        finally:
            spool.discard()

    def refused(
        self,
        local_ae: LocalAESnapshot,
        exc: RejectedInstance,
        *,
        sop_instance_uid: str,
        calling_ae: str,
        calling_host: str,
        service: str = "C-STORE",
    ) -> None:
        """A refused instance in the log and the events."""
        log.warning(
            "%s refused (0x%04X %s): %s; SOP instance %s from %s@%s to %s",
            service,
            exc.status.value,
            exc.status.name,
            exc.reason,
            str(sop_instance_uid)[:80] or "(unknown)",
            calling_ae,
            calling_host,
            local_ae.title,
        )
        self.index.event(
            "store",
            f"{service} refused {str(sop_instance_uid)[:80] or '(unknown)'} with 0x{exc.status.value:04X}: "
            f"{exc.reason}",
            level="warning",
            calling_ae=calling_ae,
            calling_host=calling_host,
            local_ae=local_ae.title,
        )

    def _store(
        self,
        local_ae: LocalAESnapshot,
        calling_ae: str,
        calling_host: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: Spool,
        priority: int = 0,
    ) -> Status:
        if dataset.refusal is not None:
            raise RejectedInstance(Status.OUT_OF_RESOURCES, dataset.refusal)
        # A spooled data set's file is on the disk already (its room was checked as it grew).
        if not self.storage.has_room(dataset.size if dataset.in_memory else 0, self.min_free_bytes):
            raise RejectedInstance(
                Status.OUT_OF_RESOURCES,
                f"free disk space below the watermark of {self.min_free_bytes // (1024 * 1024)} MB",
            )
        ok, reason = check_received_uid(sop_instance_uid)
        if not ok:
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"request's AffectedSOPInstanceUID: {reason}")
        header = parse_header(
            dataset,
            transfer_syntax_uid,
            command_sop_class=sop_class_uid,
            command_sop_instance=sop_instance_uid,
            max_bytes=self.max_dataset_bytes,
        )
        relative = self.storage.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        # The layout is a function of the UIDs, so an existing file is the cheap duplicate check;
        # the index decides (a crash between rename and index leaves a file to index now).
        if self.storage.exists(relative) and self.index.has_instance(header.sop_instance_uid):
            log.info("instance %s received again: already stored, answering success", header.sop_instance_uid)
            return Status.SUCCESS
        try:
            stored = self.storage.write(
                relative,
                dataset,
                sop_class_uid=header.sop_class_uid,
                sop_instance_uid=header.sop_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                source_ae_title=calling_ae,
                series_record={
                    "local_ae_id": local_ae.id,
                    "local_ae": local_ae.title,
                    "calling_ae": calling_ae,
                    "calling_host": calling_host,
                },
            )
        except OSError as exc:
            raise RejectedInstance(Status.OUT_OF_RESOURCES, f"cannot write the instance: {exc}") from None
        self.index.record(
            header.received(
                local_ae_id=local_ae.id,
                calling_ae=calling_ae,
                calling_host=calling_host,
                transfer_syntax_uid=str(transfer_syntax_uid),
                path=stored.relative,
                size_bytes=stored.size,
                store_priority=store_priority_rank(priority),
            )
        )
        return Status.SUCCESS


_CONTEXT_RESULTS = {
    0x01: "user rejection",
    0x02: "no reason",
    0x03: "abstract syntax (SOP class) not supported",
    0x04: "no transfer syntax supported",
}


def refusal_recorder(local_ae: LocalAESnapshot, receiver: Receiver) -> Callable[[str, str, str], None]:
    """``refused(calling_ae, host, reason)``: a refused association of ``local_ae`` in the log and
    the events, at most a few a minute per peer (a sender retrying in a loop would otherwise write
    a row each time); the next one that is written says how many were left out. Every refusal of
    the local AE goes through it: those at negotiation here, and the connections over the
    connection limits answered by dicom_node.listener.refusal."""

    def refused(calling_ae: str, host: str, reason: str) -> None:
        message = "association refused: %s@%s to %s: %s"
        left_out = REFUSALS.warning(host, "association refused", message, calling_ae, host, local_ae.title, reason)
        if left_out is None:
            return
        window = f"{REFUSALS.window:g} s"
        more = f" ({left_out} more refusals of {host} in the last {window} not recorded)" if left_out else ""
        association_event(receiver, local_ae, calling_ae, host, f"refused: {reason}{more}")

    return refused


def association_event(receiver: Receiver, local_ae: LocalAESnapshot, calling_ae: str, host: str, message: str) -> None:
    receiver.index.event(
        "association",
        message[:1000],
        level="warning",
        calling_ae=calling_ae,
        calling_host=host,
        local_ae=local_ae.title,
    )


def handlers_for(
    local_ae: LocalAESnapshot, receiver: Receiver, *, max_associations: int = 64
) -> list[EventHandlerType]:
    """pynetdicom event handlers binding one local AE to the receiver. ``max_associations``:
    negotiated associations of this local AE in this process (connections still negotiating do
    not count: they cannot lock senders out)."""
    refused = refusal_recorder(local_ae, receiver)

    def on_requested(event: evt.Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        assert request is not None  # the A-ASSOCIATE-RQ being answered
        calling_ae = str(request.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        established = sum(1 for a in assoc.ae.active_associations if a.is_acceptor and a.is_established)
        called_ae = str(request.called_ae_title).strip()
        if called_ae != local_ae.title:
            refused(calling_ae, host, f"called AE title {called_ae!r} is not this port's ({local_ae.title})")
            assoc.acse.send_reject(
                AssociateResult.REJECTED_PERMANENT,
                RejectSource.SERVICE_USER,
                RejectReason.CALLED_AE_TITLE_NOT_RECOGNISED,
            )
            assoc.kill()
            return
        if established >= max_associations:
            # The same answer as a connection over the connection limits (dicom_node.listener.refusal).
            refused(
                calling_ae,
                host,
                f"{established} associations already open (listener.max_associations); {LOCAL_LIMIT_ANSWER}",
            )
            assoc.acse.send_reject(*LOCAL_LIMIT_REJECTION)
            assoc.kill()
            return
        ok, reason = receiver.index.check_source(local_ae, calling_ae, host)
        if not ok:
            refused(calling_ae, host, reason)
            assoc.acse.send_reject(
                AssociateResult.REJECTED_PERMANENT,
                RejectSource.SERVICE_USER,
                RejectReason.CALLING_AE_TITLE_NOT_RECOGNISED,
            )
            # As pynetdicom's own rejections do: wait until the A-ASSOCIATE-RJ is on the wire
            # and the peer has closed, before the server shuts the socket down.
            assoc.kill()

    def on_accepted(event: evt.Event) -> None:
        assoc = event.assoc
        calling_ae = str(assoc.requestor.ae_title).strip()
        host = str(assoc.requestor.address)
        log.info("association from %s@%s to %s accepted", calling_ae, host, local_ae.title)
        rejected = assoc.rejected_contexts
        if not rejected:
            return
        # One entry per SOP class and reason (a sender proposes each class once per transfer syntax).
        reasons = list(
            dict.fromkeys(
                f"{_sop_class_name(str(cx.abstract_syntax))}: "
                f"{_CONTEXT_RESULTS.get(int(cx.result or 0), f'result {cx.result}')}"
                for cx in rejected
            )
        )
        what = "; ".join(reasons[:8]) + (f"; and {len(reasons) - 8} more" if len(reasons) > 8 else "")
        accepted = len(assoc.accepted_contexts)
        # Senders often propose every storage class they know (storescu does): then the rejected
        # ones are a detail (DEBUG); a warning and an event when nothing this AE takes was accepted.
        level = logging.WARNING if accepted == 0 else logging.DEBUG
        log.log(
            level,
            "association from %s@%s to %s: %d presentation context(s) rejected (%d accepted): %s",
            calling_ae,
            host,
            local_ae.title,
            len(rejected),
            accepted,
            what,
        )
        if accepted == 0:
            association_event(
                receiver, local_ae, calling_ae, host, f"every presentation context rejected ({len(rejected)}): {what}"
            )

    def on_echo(event: evt.Event) -> int:
        return int(Status.SUCCESS)

    def on_store(event: evt.Event) -> Dataset:
        # Messages the fast lane (dicom_node.listener.fastlane) did not take come here.
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None  # EVT_C_STORE
        status, reason = receiver.store(
            local_ae,
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            calling_host=str(event.assoc.requestor.address),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            dataset=request.DataSet.getvalue(),
            priority=int(request.Priority or 0),
        )
        return status_dataset(status, reason)

    return [
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_ACCEPTED, on_accepted),
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_C_STORE, on_store),
    ]


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def status_dataset(status: Status, reason: str) -> Dataset:
    """A C-STORE-RSP status with an Error Comment saying why (PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = int(status)
    if reason and not status.is_success:
        ds.ErrorComment = reason[:64]
    return ds


class FastStore:
    """The fast lane's store handler (dicom_node.listener.fastlane) of one local AE on one association."""

    def __init__(self, local_ae: LocalAESnapshot, receiver: Receiver, assoc: Any) -> None:
        self.local_ae = local_ae
        self.receiver = receiver
        self.assoc = assoc

    def _calling_ae(self) -> str:
        return str(self.assoc.requestor.ae_title).strip()

    def open(self, *, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str) -> Spool:
        return self.receiver.spool(
            calling_ae=self._calling_ae(),
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax,
        )

    def store(
        self,
        *,
        context_id: int,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        dataset: Any,
        priority: int = 0,
    ) -> tuple[int, str]:
        assert isinstance(dataset, Spool)
        status, reason = self.receiver.store(
            self.local_ae,
            calling_ae=self._calling_ae(),
            calling_host=str(self.assoc.requestor.address),
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax,
            dataset=dataset,
            priority=priority,
        )
        return int(status), reason


def fast_store_handler(local_ae: LocalAESnapshot, receiver: Receiver) -> Callable[[Any], FastStore]:
    """The fast lane's store handler of one local AE, made for each association."""
    return functools.partial(FastStore, local_ae, receiver)
