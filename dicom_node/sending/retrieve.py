"""The query/retrieve role, for backfills (dicom_node.pipeline.backfill): finding a source PACS's
past studies and series and having them sent to the node.

DIMSE (Study Root Query/Retrieve Information Model, PS3.4 C.6.2):

- :func:`find_series`: C-FIND at STUDY level (Study Date range, Modalities in Study, Accession
  Number), then at SERIES level for each study found;
- :func:`move_series`: C-MOVE of one series to a move destination (the node's own local AE: the
  source's C-STORE sub-operations reach the node's listener like any live study);
- :func:`get_series`: C-GET of one series on one association, each C-STORE sub-operation handed to
  ``store`` (the node's own storage path, dicom_node.listener.scp.Receiver) and answered with its
  status.

DICOMweb (PS3.18): :func:`qido_series` (QIDO-RS ``/studies`` then ``/studies/{uid}/series``) and
:func:`wado_series` (WADO-RS ``/studies/{uid}/series/{uid}``, multipart/related of
application/dicom, each part handed to ``store``).

A source that can not be reached or refuses is :class:`dicom_node.errors.Unavailable` (a query)
or a :class:`Retrieved` with ``failed`` set and a reason (a retrieve: the backfill records it and
goes on).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable, Iterator, Sequence

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time; mypy can not see them
    CTImageStorage,
    EnhancedCTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node.errors import Unavailable
from dicom_node.sending.dicomweb import WebPeer, _client
from dicom_node.sending.scu import Peer

log = logging.getLogger(__name__)

# (SOP class, SOP instance, transfer syntax, the data set's bytes) -> status to answer (0 success).
StoreFn = Callable[[str, str, str, bytes], int]

PENDING = (0xFF00, 0xFF01)
# The storage SOP classes a C-GET asks the source to send with (SCP role): CT and Enhanced CT
# first, then the others pynetdicom knows, up to the 128 presentation contexts of an association.
_GET_STORAGE = [CTImageStorage, EnhancedCTImageStorage] + [
    cx.abstract_syntax
    for cx in StoragePresentationContexts
    if cx.abstract_syntax not in (CTImageStorage, EnhancedCTImageStorage)
][:124]


@dataclass(frozen=True)
class FoundSeries:
    """One series at the source, as its C-FIND (or QIDO-RS) answer describes it."""

    study_uid: str
    series_uid: str
    accession_number: str = ""
    study_date: str = ""
    modality: str = ""
    series_description: str = ""
    body_part: str = ""
    instances: int = 0


@dataclass(frozen=True)
class Retrieved:
    """What a retrieve of one series did."""

    completed: int
    failed: int
    warning: int
    reason: str = ""  # why nothing or not everything came ("" when everything did)

    @property
    def ok(self) -> bool:
        return not self.reason


def _ae(calling_ae_title: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    return ae


def _associate(ae: AE, peer: Peer, **kwargs: Any) -> Any:
    tls_args = (ssl.create_default_context(ssl.Purpose.SERVER_AUTH), peer.host) if peer.tls else None
    return ae.associate(peer.host, peer.port, ae_title=peer.title, tls_args=tls_args, **kwargs)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value or "").strip()


def _int(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def date_range(date_from: str, date_to: str) -> str:
    """A Study Date range matching key (PS3.4 C.2.2.2.5): ``FROM-TO``, ``FROM-``, ``-TO`` or ""."""
    return "" if not date_from and not date_to else f"{date_from}-{date_to}"


def _find(assoc: Any, query: Dataset, where: str) -> Iterator[Dataset]:
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(getattr(status, "Status", -1)) if status else None
        if code is None:
            raise Unavailable(f"{where} did not answer a C-FIND in time; is it up?")
        if code in PENDING and identifier is not None:
            yield identifier
        elif code not in PENDING and code != 0:
            raise Unavailable(f"{where} refused the C-FIND with status 0x{code:04X}")


def find_series(
    peer: Peer,
    *,
    calling_ae_title: str,
    date_from: str = "",
    date_to: str = "",
    modality: str = "",
    accessions: Sequence[str] = (),
    timeout: float = 30.0,
) -> list[FoundSeries]:
    """Every series of the studies in the date range (and of ``modality``; of each accession number
    when ``accessions`` are given), by C-FIND at STUDY then SERIES level on one association."""
    ae = _ae(calling_ae_title, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    where = f"{peer.title}@{peer.host}:{peer.port}"
    assoc = _associate(ae, peer)
    if not assoc.is_established:
        raise Unavailable(
            f"{where} did not accept a Query/Retrieve (C-FIND) association from {calling_ae_title}; "
            "is it up, and does it know that calling AE title?"
        )
    try:
        studies: dict[str, Dataset] = {}
        for accession in accessions or [""]:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            query.StudyDate = date_range(date_from, date_to)
            query.AccessionNumber = accession
            query.ModalitiesInStudy = modality
            query.PatientID = ""
            for found in _find(assoc, query, where):
                uid = _text(found, "StudyInstanceUID")
                if uid:
                    studies.setdefault(uid, found)
        out: list[FoundSeries] = []
        for study_uid, study in studies.items():
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = ""
            query.Modality = modality
            query.SeriesDescription = ""
            query.BodyPartExamined = ""
            query.NumberOfSeriesRelatedInstances = ""
            for found in _find(assoc, query, where):
                series_uid = _text(found, "SeriesInstanceUID")
                if not series_uid:
                    continue
                out.append(
                    FoundSeries(
                        study_uid=study_uid,
                        series_uid=series_uid,
                        accession_number=_text(study, "AccessionNumber"),
                        study_date=_text(study, "StudyDate"),
                        modality=_text(found, "Modality"),
                        series_description=_text(found, "SeriesDescription"),
                        body_part=_text(found, "BodyPartExamined"),
                        instances=_int(_text(found, "NumberOfSeriesRelatedInstances")),
                    )
                )
        return out
    finally:
        assoc.release()


def _series_identifier(study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def _outcome(responses: Iterator[tuple[Any, Any]], what: str, where: str) -> Retrieved:
    """The final response of a C-MOVE or C-GET: its sub-operation counts and, unless everything
    came, why not."""
    last: Any = None
    for status, _identifier in responses:
        if not status:
            return Retrieved(0, 0, 0, f"{where} did not answer the {what} in time")
        last = status
    if last is None:
        return Retrieved(0, 0, 0, f"{where} sent no answer to the {what}")
    code = int(last.Status)
    completed = int(last.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(last.get("NumberOfFailedSuboperations", 0) or 0)
    warning = int(last.get("NumberOfWarningSuboperations", 0) or 0)
    if code == 0 and failed == 0:
        return Retrieved(completed, failed, warning)
    comment = _text(last, "ErrorComment")
    reason = f"{what} ended with status 0x{code:04X}: {completed} sent, {failed} failed"
    return Retrieved(completed, failed, warning, reason + (f" ({comment})" if comment else ""))


def move_series(
    peer: Peer,
    study_uid: str,
    series_uid: str,
    *,
    calling_ae_title: str,
    move_destination: str,
    timeout: float = 30.0,
    priority: int = 2,
) -> Retrieved:
    """C-MOVE one series from ``peer`` to ``move_destination`` (an AE title the source knows: the
    node's own local AE). ``priority`` 2 is LOW (PS3.7 C.4.2.1.4)."""
    ae = _ae(calling_ae_title, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    where = f"{peer.title}@{peer.host}:{peer.port}"
    assoc = _associate(ae, peer)
    if not assoc.is_established:
        return Retrieved(0, 0, 0, f"{where} did not accept a C-MOVE association from {calling_ae_title}")
    try:
        responses = assoc.send_c_move(
            _series_identifier(study_uid, series_uid),
            move_destination,
            StudyRootQueryRetrieveInformationModelMove,
            priority=priority,
        )
        return _outcome(responses, f"C-MOVE to {move_destination}", where)
    finally:
        assoc.release()


def get_series(
    peer: Peer,
    study_uid: str,
    series_uid: str,
    store: StoreFn,
    *,
    calling_ae_title: str,
    timeout: float = 30.0,
    priority: int = 2,
) -> Retrieved:
    """C-GET one series from ``peer``; each instance it sends back on the association goes to
    ``store``, whose status is the C-STORE answer."""
    ae = _ae(calling_ae_title, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in _GET_STORAGE:
        ae.add_requested_context(uid)
    roles = [build_role(uid, scp_role=True) for uid in _GET_STORAGE]

    def on_store(event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None  # EVT_C_STORE
        return store(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            request.DataSet.getvalue(),
        )

    where = f"{peer.title}@{peer.host}:{peer.port}"
    assoc = _associate(ae, peer, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        return Retrieved(0, 0, 0, f"{where} did not accept a C-GET association from {calling_ae_title}")
    try:
        responses = assoc.send_c_get(
            _series_identifier(study_uid, series_uid), StudyRootQueryRetrieveInformationModelGet, priority=priority
        )
        return _outcome(responses, "C-GET", where)
    finally:
        assoc.release()


# --- DICOMweb: QIDO-RS and WADO-RS ------------------------------------------------------------


def _json_value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # a person name
        return str(value.get("Alphabetic", ""))
    return str(value)


def _qido(client: httpx.Client, url: str, params: dict[str, str], where: str) -> list[dict[str, Any]]:
    try:
        response = client.get(
            url, params={k: v for k, v in params.items() if v}, headers={"Accept": "application/dicom+json"}
        )
    except httpx.HTTPError as exc:
        raise Unavailable(f"{where}: QIDO-RS search failed: {exc}") from None
    if response.status_code == 204:
        return []
    if response.status_code != 200:
        raise Unavailable(f"{where}: QIDO-RS search answered HTTP {response.status_code}")
    body = response.json() if response.content else []
    return list(body) if isinstance(body, list) else []


def qido_series(
    peer: WebPeer,
    *,
    date_from: str = "",
    date_to: str = "",
    modality: str = "",
    accessions: Sequence[str] = (),
    timeout: float = 30.0,
) -> list[FoundSeries]:
    """The same as :func:`find_series`, by QIDO-RS: ``GET <url>/studies`` then
    ``GET <url>/studies/{uid}/series``."""
    base = peer.url.rstrip("/")
    out: list[FoundSeries] = []
    with _client(peer, timeout) as client:
        studies: dict[str, dict[str, Any]] = {}
        for accession in accessions or [""]:
            params = {
                "StudyDate": date_range(date_from, date_to),
                "ModalitiesInStudy": modality,
                "AccessionNumber": accession,
                "includefield": "00080020,00080050",
            }
            for item in _qido(client, f"{base}/studies", params, peer.title):
                uid = _json_value(item, "0020000D")
                if uid:
                    studies.setdefault(uid, item)
        for study_uid, study in studies.items():
            params = {"Modality": modality, "includefield": "0008103E,00180015,00201209"}
            for item in _qido(client, f"{base}/studies/{study_uid}/series", params, peer.title):
                series_uid = _json_value(item, "0020000E")
                if not series_uid:
                    continue
                out.append(
                    FoundSeries(
                        study_uid=study_uid,
                        series_uid=series_uid,
                        accession_number=_json_value(study, "00080050"),
                        study_date=_json_value(study, "00080020"),
                        modality=_json_value(item, "00080060"),
                        series_description=_json_value(item, "0008103E"),
                        body_part=_json_value(item, "00180015"),
                        instances=_int(_json_value(item, "00201209")),
                    )
                )
    return out


def _parts(body: bytes, boundary: bytes) -> Iterator[bytes]:
    """The bodies of a multipart/related message (RFC 2046)."""
    delimiter = b"--" + boundary
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if sep:
            yield content[:-2] if content.endswith(b"\r\n") else content


def wado_series(peer: WebPeer, study_uid: str, series_uid: str, store: StoreFn, *, timeout: float = 120.0) -> Retrieved:
    """WADO-RS of one series (``GET <url>/studies/{uid}/series/{uid}``, multipart/related of
    application/dicom); each instance goes to ``store``."""
    url = f"{peer.url.rstrip('/')}/studies/{study_uid}/series/{series_uid}"
    where = peer.title
    try:
        with _client(peer, timeout) as client:
            response = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    except httpx.HTTPError as exc:
        return Retrieved(0, 0, 0, f"{where}: WADO-RS failed: {exc}")
    if response.status_code != 200:
        return Retrieved(0, 0, 0, f"{where}: WADO-RS answered HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "")
    boundary = next(
        (p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")),
        "",
    )
    if not boundary:
        return Retrieved(0, 0, 0, f"{where}: WADO-RS answer is not multipart ({content_type})")
    completed = failed = 0
    for part in _parts(response.content, boundary.encode()):
        ds = dcmread(BytesIO(part), force=True)
        meta = ds.file_meta
        # The data set without its Part 10 preamble and meta group, as a C-STORE carries it.
        offset = _dataset_offset(part)
        status = store(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(UID(meta.TransferSyntaxUID)),
            part[offset:],
        )
        if status == 0:
            completed += 1
        else:
            failed += 1
    reason = f"{failed} instance(s) not stored" if failed else ""
    return Retrieved(completed, failed, 0, reason)


def _dataset_offset(part10: bytes) -> int:
    """Where the data set starts in a Part 10 file: after the preamble, DICM and the meta group
    (whose length is its first element, (0002,0000) UL)."""
    if part10[128:132] != b"DICM":
        return 0
    group_length = int.from_bytes(part10[140:144], "little")
    return 144 + group_length
