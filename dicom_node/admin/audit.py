"""The audit log: who changed what, when, with the values before and after.

Configuration changes (local AEs, sources, destinations) are recorded by
:func:`dicom_node.configuration.audit_changes`, which the admin app and the command line install on
their database session; everything else an admin does (logins, tokens, users, retries) is recorded
here with :func:`record`. Entries are written in the transaction of the change itself, so there is
no change without its entry.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.admin.auth import Principal
from dicom_node.configuration import audit_changes
from dicom_node.db.models import AuditEntry


def watch(session: Session, who: Principal, remote_addr: str = "") -> None:
    """Have configuration changes made in ``session`` recorded as ``who``'s."""
    audit_changes(session, who.actor, via=who.via, remote_addr=remote_addr)


def record(
    session: Session,
    who: Principal | str,
    action: str,
    *,
    target_type: str,
    target_id: object = "",
    target: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: str = "",
    via: str = "",
    remote_addr: str = "",
) -> AuditEntry:
    """Add one entry; ``who`` is the request's principal or an actor name (``cli:<user>``)."""
    actor, how = (who.actor, who.via) if isinstance(who, Principal) else (who, via)
    entry = AuditEntry(
        actor=actor[:100],
        via=(via or how)[:32],
        action=action[:64],
        target_type=target_type[:32],
        target_id=str(target_id)[:64],
        target=target[:200],
        before=_jsonable(before),
        after=_jsonable(after),
        detail=detail,
        remote_addr=remote_addr[:64],
    )
    session.add(entry)
    return entry


def _jsonable(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in value.items()}


def changed_keys(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """The keys whose values differ (all keys for a creation or a deletion)."""
    before, after = before or {}, after or {}
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def entry_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at,
        "actor": entry.actor,
        "via": entry.via,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
        "changed": changed_keys(entry.before, entry.after),
        "detail": entry.detail,
        "remote_addr": entry.remote_addr,
    }


def entries(
    session: Session,
    *,
    limit: int = 200,
    target_type: str | None = None,
    target_id: str | None = None,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first."""
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if target_type:
        q = q.where(AuditEntry.target_type == target_type)
    if target_id is not None:
        q = q.where(AuditEntry.target_id == target_id)
    if before_id is not None:
        q = q.where(AuditEntry.id < before_id)
    return [entry_dict(e) for e in session.scalars(q)]
