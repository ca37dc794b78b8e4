"""Configuration changes (local AEs, sources, destinations): one home for the command line and
the admin API.

Input schemas are pydantic models built from dicom_node.validation's types, so a bad value is
refused with the field and the reason wherever it comes from. Functions take an open session and
return the row; the caller commits. A caller that calls :func:`audit_changes` on its session first
gets every creation, change and deletion of a local AE, source or destination written to the audit
log in the same transaction (the admin app and the command line both do).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
from types import SimpleNamespace
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import event, func, inspect, select
from sqlalchemy.orm import RelationshipProperty, Session

from dicom_node.db import Database
from dicom_node.db.models import ApiToken, AuditEntry, Destination, LocalAE, Source
from dicom_node.errors import Refused
from dicom_node.jobs.filters import SeriesFilter
from dicom_node.settings import CompletionSettings, ExportSettings
from dicom_node.validation import (
    AETitle,
    CAFile,
    DestinationKind,
    DestinationKindName,
    DicomWebURL,
    Host,
    KeepDays,
    MaxWaitSeconds,
    OutputKinds,
    Port,
    QuietSeconds,
    WebAuthName,
    WebSecret,
    check_ca_file_readable,
    destination_problem,
    require,
    url_host_port,
)
from model.contract.uids import check_uid


def _sop_classes(value: list[str]) -> list[str]:
    for uid in value:
        if uid == "*":
            continue
        ok, reason = check_uid(uid)
        if not ok:
            raise ValueError(f"{uid!r}: {reason}")
    return value


class LocalAEIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: AETitle
    port: Port
    enabled: bool = True
    # None: the completion defaults of the settings (add_local_ae fills them in).
    quiet_seconds: QuietSeconds | None = None
    max_wait_seconds: MaxWaitSeconds | None = None
    # None: retention.images_days.
    keep_images_days: KeepDays | None = None
    filters: SeriesFilter = Field(default_factory=SeriesFilter)
    extra_sop_classes: list[str] = Field(default_factory=list)
    return_to_caller: bool = False
    require_known_source: bool = True
    description: str = Field(default="", max_length=200)
    send_results_to: list[AETitle] = Field(default_factory=list)
    # Ids of the API tokens that may store into this AE by STOW-RS (dicom_node.admin.stow).
    stow_tokens: list[int] = Field(default_factory=list)

    @field_validator("extra_sop_classes")
    @classmethod
    def _v_sop(cls, value: list[str]) -> list[str]:
        return _sop_classes(value)


class LocalAEPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: AETitle | None = None
    port: Port | None = None
    enabled: bool | None = None
    quiet_seconds: QuietSeconds | None = None
    max_wait_seconds: MaxWaitSeconds | None = None
    keep_images_days: KeepDays | None = None
    filters: SeriesFilter | None = None
    extra_sop_classes: list[str] | None = None
    return_to_caller: bool | None = None
    require_known_source: bool | None = None
    description: str | None = Field(default=None, max_length=200)
    send_results_to: list[AETitle] | None = None
    stow_tokens: list[int] | None = None

    @field_validator("extra_sop_classes")
    @classmethod
    def _v_sop(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _sop_classes(value)


class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: AETitle
    host: Host | None = None
    port: Port | None = None
    enabled: bool = True
    description: str = Field(default="", max_length=200)


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: AETitle | None = None
    host: Host | None = None
    port: Port | None = None
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=200)


class DestinationIn(BaseModel):
    """A destination: a storage SCP (kind dimse: host, port, tls) or a DICOMweb service (kind
    dicomweb: url, auth with username and password or token, verify_tls, ca_file; host and port
    are taken from the URL). Which fields a kind needs is checked by add_destination."""

    model_config = ConfigDict(extra="forbid")

    title: AETitle
    kind: DestinationKindName = DestinationKind.DIMSE.value
    host: Host | None = None
    port: Port | None = None
    tls: bool = False
    url: DicomWebURL | None = None
    auth: WebAuthName = "none"
    username: str = Field(default="", max_length=200)
    # Write only: never in a destination's dict (an empty value in a change keeps the stored one).
    password: WebSecret | None = None
    token: WebSecret | None = None
    verify_tls: bool = True
    ca_file: CAFile = ""
    # None: the settings' export.default_outputs (add_destination fills them in).
    outputs: OutputKinds | None = None
    enabled: bool = True
    description: str = Field(default="", max_length=200)


class DestinationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: AETitle | None = None
    kind: DestinationKindName | None = None
    host: Host | None = None
    port: Port | None = None
    tls: bool | None = None
    url: DicomWebURL | None = None
    auth: WebAuthName | None = None
    username: str | None = Field(default=None, max_length=200)
    password: WebSecret | None = None
    token: WebSecret | None = None
    verify_tls: bool | None = None
    ca_file: CAFile | None = None
    outputs: OutputKinds | None = None
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=200)


def parse(schema: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate ``data``; raise Refused naming the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise Refused(field, err["msg"].removeprefix("Value error, ")) from None


# --- serialisation -------------------------------------------------------------------------


def local_ae_dict(row: LocalAE) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "port": row.port,
        "enabled": row.enabled,
        "quiet_seconds": row.quiet_seconds,
        "max_wait_seconds": row.max_wait_seconds,
        "keep_images_days": row.keep_images_days,
        "filters": SeriesFilter.from_json(row.filters).model_dump(),
        "extra_sop_classes": list(row.extra_sop_classes or []),
        "return_to_caller": row.return_to_caller,
        "require_known_source": row.require_known_source,
        "description": row.description,
        "send_results_to": [d.title for d in row.destinations],
        "stow_tokens": [t.id for t in row.stow_tokens],
    }


def source_dict(row: Source) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "host": row.host,
        "port": row.port,
        "enabled": row.enabled,
        "description": row.description,
    }


def destination_dict(row: Destination) -> dict[str, Any]:
    """A destination as lists and the API show it: never its password or token."""
    return {
        "id": row.id,
        "title": row.title,
        "kind": row.kind,
        "host": row.host,
        "port": row.port,
        "tls": row.tls,
        "url": row.url or None,
        "auth": row.auth,
        "username": row.username,
        "verify_tls": row.verify_tls,
        "ca_file": row.ca_file,
        "outputs": list(row.outputs),
        "enabled": row.enabled,
        "description": row.description,
    }


# --- changes -------------------------------------------------------------------------------


def _destinations(session: Session, titles: list[str]) -> list[Destination]:
    rows = []
    for title in titles:
        row = session.scalar(select(Destination).where(Destination.title == title))
        if row is None:
            raise Refused("send_results_to", f"no destination titled {title!r}")
        rows.append(row)
    return rows


def _stow_tokens(session: Session, ids: list[int]) -> list[ApiToken]:
    """The API tokens of ``ids``, each existing and not revoked (Refused naming the field)."""
    rows = []
    for token_id in dict.fromkeys(ids):
        row = session.get(ApiToken, token_id)
        if row is None:
            raise Refused("stow_tokens", f"no API token with id {token_id} (dicom-node admin list-tokens)")
        if row.revoked_at is not None:
            raise Refused("stow_tokens", f"API token {token_id} is revoked")
        rows.append(row)
    return rows


def _check_unique_local(session: Session, title: str | None, port: int | None, exclude_id: int | None = None) -> None:
    if title is not None:
        other = session.scalar(select(LocalAE).where(LocalAE.title == title))
        if other is not None and other.id != exclude_id:
            raise Refused("title", f"a local AE titled {title!r} exists already")
    if port is not None:
        other = session.scalar(select(LocalAE).where(LocalAE.port == port))
        if other is not None and other.id != exclude_id:
            raise Refused("port", f"port {port} is used by local AE {other.title!r}")


def add_local_ae(session: Session, data: LocalAEIn, defaults: CompletionSettings) -> LocalAE:
    """A new local AE; a quiet period or maximum wait not given is the settings' default."""
    _check_unique_local(session, data.title, data.port)
    values = data.model_dump(exclude={"send_results_to", "filters", "stow_tokens"})
    if values["quiet_seconds"] is None:
        values["quiet_seconds"] = defaults.default_quiet_seconds
    if values["max_wait_seconds"] is None:
        values["max_wait_seconds"] = defaults.default_max_wait_seconds
    row = LocalAE(**values, filters=data.filters.model_dump(exclude_defaults=True))
    row.destinations = _destinations(session, data.send_results_to)
    row.stow_tokens = _stow_tokens(session, data.stow_tokens)
    session.add(row)
    session.flush()
    return row


def update_local_ae(session: Session, row: LocalAE, patch: LocalAEPatch) -> LocalAE:
    changes = patch.model_dump(exclude_unset=True)
    _check_unique_local(session, changes.get("title"), changes.get("port"), exclude_id=row.id)
    if "send_results_to" in changes:
        row.destinations = _destinations(session, changes.pop("send_results_to") or [])
    if "stow_tokens" in changes:
        row.stow_tokens = _stow_tokens(session, changes.pop("stow_tokens") or [])
    if "filters" in changes:
        changes.pop("filters")
        row.filters = (patch.filters or SeriesFilter()).model_dump(exclude_defaults=True)
    for key, value in changes.items():
        if value is None and key not in ("description",):
            continue
        setattr(row, key, value)
    session.flush()
    return row


def add_source(session: Session, data: SourceIn) -> Source:
    other = session.scalar(
        select(Source).where(
            Source.title == data.title, Source.host.is_(None) if data.host is None else Source.host == data.host
        )
    )
    if other is not None:
        raise Refused("title", f"source {data.title!r}{' from ' + data.host if data.host else ''} exists already")
    row = Source(**data.model_dump())
    session.add(row)
    session.flush()
    return row


def update_source(session: Session, row: Source, patch: SourcePatch) -> Source:
    for key, value in patch.model_dump(exclude_unset=True).items():
        setattr(row, key, value)
    session.flush()
    return row


def _complete_destination(values: dict[str, Any]) -> dict[str, Any]:
    """Check that a destination's fields fit its kind (Refused naming the field) and fill in what
    the kind decides: a DICOMweb destination's host, port and tls from its URL."""
    problem = destination_problem(values)
    if problem is not None:
        raise Refused(*problem)
    if values.get("kind") == DestinationKind.DICOMWEB.value:
        require("ca_file", check_ca_file_readable, values.get("ca_file") or "")
        values["host"], values["port"] = url_host_port(values["url"])
        values["tls"] = values["url"].startswith("https://")
    return values


def add_destination(session: Session, data: DestinationIn, defaults: ExportSettings) -> Destination:
    """A new destination; outputs not given are the settings' default outputs."""
    if session.scalar(select(Destination).where(Destination.title == data.title)) is not None:
        raise Refused("title", f"a destination titled {data.title!r} exists already")
    values = data.model_dump()
    if values["outputs"] is None:
        values["outputs"] = list(defaults.default_outputs)
    values = _complete_destination(values)
    for key in ("url", "password", "token"):
        values[key] = values[key] or ""
    row = Destination(**values)
    session.add(row)
    session.flush()
    return row


_DESTINATION_FIELDS = tuple(DestinationPatch.model_fields)


def update_destination(session: Session, row: Destination, patch: DestinationPatch) -> Destination:
    """Change a destination; a field given as None (or an empty password or token) is kept."""
    changes = patch.model_dump(exclude_unset=True)
    if changes.get("title") and changes["title"] != row.title:
        if session.scalar(select(Destination).where(Destination.title == changes["title"])) is not None:
            raise Refused("title", f"a destination titled {changes['title']!r} exists already")
    merged = {key: getattr(row, key) for key in _DESTINATION_FIELDS}
    for key, value in changes.items():
        if (value is None and key != "description") or (key in ("password", "token") and value == ""):
            continue
        merged[key] = value
    merged = _complete_destination(merged)
    for key in _DESTINATION_FIELDS:
        value = merged[key]
        if value is None and key == "url":
            value = ""
        if value is not None and getattr(row, key) != value:
            setattr(row, key, value)
    session.flush()
    return row


def ensure_local_ae(db: Database, title: str, port: int, defaults: CompletionSettings) -> str | None:
    """Create a local AE titled ``title`` on ``port`` when none exists at all (``dicom-node up``'s
    first start); return a notice saying so, or None. The calling-AE allow-list stays on: nothing
    is accepted until a source is added."""
    with db.session() as s:
        if s.scalar(select(func.count()).select_from(LocalAE)):
            return None
        add_local_ae(s, parse(LocalAEIn, {"title": title, "port": port}), defaults)
    return (
        f"no local AE was configured: listening as {title} on port {port}. No calling AE is allowed yet: "
        "allow a scanner or PACS with `dicom-node ae add-source TITLE [--host H]`; send results to PACS with "
        "`dicom-node ae add-destination` and `dicom-node ae update-local "
        f"{title} --send-results-to DEST`"
    )


# --- audit hook ----------------------------------------------------------------------------

# Keys the audit's fingerprints of a destination's password and token: random per process, so a
# fingerprint in the audit log shows that a secret changed and can not be used to guess it.
_SECRET_KEY = secrets.token_bytes(32)


def _fingerprint(secret: str) -> str:
    return hashlib.blake2b(secret.encode(), key=_SECRET_KEY, digest_size=6).hexdigest() if secret else ""


def destination_audit_dict(row: Destination) -> dict[str, Any]:
    """A destination in the audit log: its dict, and a changed password or token as a changed
    fingerprint (never the secret)."""
    return {**destination_dict(row), "password": _fingerprint(row.password), "token": _fingerprint(row.token)}


_AUDITED: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    LocalAE: ("local_ae", local_ae_dict),
    Source: ("source", source_dict),
    Destination: ("destination", destination_audit_dict),
}


def audited(model: type, kind: str, serialise: Callable[[Any], dict[str, Any]]) -> None:
    """Have :func:`audit_changes` record the changes of ``model`` too (``kind`` names it in the
    audit log; the row's ``title`` is its readable name): for configuration kept by other modules
    (dicom_node.triage.rules)."""
    _AUDITED[model] = (kind, serialise)


def cli_actor() -> str:
    """The audit actor of a command-line change: ``cli:<os user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return f"cli:uid-{os.getuid()}"


def _previous(row: Any) -> SimpleNamespace:
    """The row as it was before this flush's changes (attribute history), for serialising."""
    state = inspect(row)
    values: dict[str, Any] = {}
    for prop in state.mapper.attrs:
        history = state.attrs[prop.key].history
        if not history.has_changes():
            values[prop.key] = getattr(row, prop.key)
        elif isinstance(prop, RelationshipProperty) and prop.uselist:
            values[prop.key] = [*history.unchanged, *history.deleted]
        else:
            values[prop.key] = history.deleted[0] if history.deleted else None
    return SimpleNamespace(**values)


def audit_changes(session: Session, actor: str, *, via: str = "", remote_addr: str = "") -> None:
    """Record every local AE, source and destination (and every kind registered with
    :func:`audited`) that ``session`` creates, changes or deletes
    from now on as an AuditEntry (before and after), in the same transaction. Calling it again on
    the same session changes the actor."""
    info = {"actor": actor[:100], "via": via[:32], "remote_addr": remote_addr[:64]}
    already = "audit" in session.info
    session.info["audit"] = info
    session.info.setdefault("audit_new", [])
    if already:
        return

    def entry(
        action: str, kind: str, row: Any, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> AuditEntry:
        current = session.info["audit"]
        return AuditEntry(
            actor=current["actor"],
            via=current["via"],
            remote_addr=current["remote_addr"],
            action=f"{kind}.{action}",
            target_type=kind,
            target_id=str(row.id),
            target=str(row.title),
            before=before,
            after=after,
        )

    def before_flush(sess: Session, _context: Any, _instances: Any) -> None:
        for row in list(sess.dirty):
            audited = _AUDITED.get(type(row))
            if audited is None or not sess.is_modified(row):
                continue
            kind, serialise = audited
            before, after = serialise(_previous(row)), serialise(row)
            if before != after:
                sess.add(entry("update", kind, row, before, after))
        for row in list(sess.deleted):
            audited = _AUDITED.get(type(row))
            if audited is not None:
                kind, serialise = audited
                sess.add(entry("delete", kind, row, serialise(_previous(row)), None))
        sess.info["audit_new"].extend(row for row in sess.new if type(row) in _AUDITED)

    def after_flush_postexec(sess: Session, _context: Any) -> None:
        # New rows have their ids only now; these entries go out with the next flush (a commit
        # flushes until nothing is left).
        created, sess.info["audit_new"] = sess.info["audit_new"], []
        for row in created:
            kind, serialise = _AUDITED[type(row)]
            sess.add(entry("create", kind, row, None, serialise(row)))

    event.listen(session, "before_flush", before_flush)
    event.listen(session, "after_flush_postexec", after_flush_postexec)
