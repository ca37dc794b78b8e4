"""Priority rules, notification channels and notification rules as admins change them: one home
for the command line and the admin API.

As dicom_node.configuration does for AEs: pydantic input schemas (a bad value is refused with the
field and the reason, :class:`dicom_node.errors.Refused`), functions that take an open
session and return the row, every change audited when the caller called
:func:`dicom_node.configuration.audit_changes` on its session.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.configuration import audited
from dicom_node.db.models import NotificationChannel, NotificationRule, PriorityRule
from dicom_node.errors import NotFound, Refused
from dicom_node.notify.channels import parse_settings, shown
from dicom_node.triage.alerts import NotifyConditions
from dicom_node.triage.priority import PriorityConditions, PriorityName

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class PriorityRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, '_', '.', '-'; at most 64")
    priority: PriorityName
    conditions: PriorityConditions = Field(default_factory=PriorityConditions)
    enabled: bool = True
    description: str = Field(default="", max_length=200)


class PriorityRulePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    priority: PriorityName | None = None
    conditions: PriorityConditions | None = None
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=200)


def priority_rule_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "priority": row.priority,
        "conditions": PriorityConditions.from_json(row.conditions).model_dump(exclude_defaults=True),
        "enabled": row.enabled,
        "description": row.description,
    }


audited(PriorityRule, "priority_rule", priority_rule_dict)


def add_priority_rule(session: Session, data: PriorityRuleIn) -> PriorityRule:
    _unique(session, PriorityRule, data.name, "priority rule")
    row = PriorityRule(
        name=data.name,
        priority=data.priority,
        conditions=data.conditions.model_dump(exclude_defaults=True),
        enabled=data.enabled,
        description=data.description,
    )
    session.add(row)
    session.flush()
    return row


def update_priority_rule(session: Session, row: PriorityRule, patch: PriorityRulePatch) -> PriorityRule:
    changes = patch.model_dump(exclude_unset=True)
    if changes.get("name"):
        _unique(session, PriorityRule, changes["name"], "priority rule", exclude_id=row.id)
    if "conditions" in changes:
        changes.pop("conditions")
        row.conditions = (patch.conditions or PriorityConditions()).model_dump(exclude_defaults=True)
    for key, value in changes.items():
        if value is None and key != "description":
            continue
        setattr(row, key, value)
    session.flush()
    return row


def priority_rule_named(session: Session, name: str) -> PriorityRule:
    return named(session, PriorityRule, name, "priority rule")


# --- notification channels and rules -------------------------------------------------------


class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, '_', '.', '-'; at most 64")
    kind: Literal["hl7", "webhook", "email"]
    settings: dict[str, Any] = Field(description="the kind's settings (docs/triage.md)")
    enabled: bool = True
    description: str = Field(default="", max_length=200)


class ChannelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    settings: dict[str, Any] | None = Field(default=None, description="merged into the settings; null removes a key")
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=200)


class NotifyRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    channels: list[str] = Field(min_length=1, description="names of channels")
    conditions: NotifyConditions = Field(default_factory=NotifyConditions)
    enabled: bool = True
    description: str = Field(default="", max_length=200)


class NotifyRulePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    channels: list[str] | None = Field(default=None, min_length=1)
    conditions: NotifyConditions | None = None
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=200)


def channel_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "settings": shown(dict(row.settings or {})),
        "enabled": row.enabled,
        "description": row.description,
    }


def notify_rule_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "channels": sorted(c.name for c in row.channels),
        "conditions": NotifyConditions.from_json(row.conditions).model_dump(exclude_defaults=True),
        "enabled": row.enabled,
        "description": row.description,
    }


audited(NotificationChannel, "notification_channel", channel_dict)
audited(NotificationRule, "notification_rule", notify_rule_dict)


def _valid_settings(kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    try:
        return parse_settings(kind, settings).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise Refused(f"settings.{where}" if where else "settings", err["msg"].removeprefix("Value error, ")) from None
    except ValueError as exc:
        raise Refused("settings", str(exc)) from None


def _unique(session: Session, model: Any, name: str, what: str, exclude_id: int | None = None) -> None:
    other = session.scalar(select(model).where(model.name == name))
    if other is not None and other.id != exclude_id:
        raise Refused("name", f"a {what} named {name!r} exists already")


def add_channel(session: Session, data: ChannelIn) -> NotificationChannel:
    _unique(session, NotificationChannel, data.name, "channel")
    row = NotificationChannel(
        name=data.name,
        kind=data.kind,
        settings=_valid_settings(data.kind, data.settings),
        enabled=data.enabled,
        description=data.description,
    )
    session.add(row)
    session.flush()
    return row


def update_channel(session: Session, row: NotificationChannel, patch: ChannelPatch) -> NotificationChannel:
    changes = patch.model_dump(exclude_unset=True)
    if changes.get("name"):
        _unique(session, NotificationChannel, changes["name"], "channel", exclude_id=row.id)
    if "settings" in changes:
        merged = {**dict(row.settings or {}), **(changes.pop("settings") or {})}
        row.settings = _valid_settings(row.kind, {k: v for k, v in merged.items() if v is not None})
    for key, value in changes.items():
        if value is None and key != "description":
            continue
        setattr(row, key, value)
    session.flush()
    return row


def _channels(session: Session, names: list[str]) -> list[NotificationChannel]:
    rows = []
    for name in names:
        row = session.scalar(select(NotificationChannel).where(NotificationChannel.name == name))
        if row is None:
            raise Refused("channels", f"no channel named {name!r}")
        rows.append(row)
    return rows


def add_notify_rule(session: Session, data: NotifyRuleIn) -> NotificationRule:
    _unique(session, NotificationRule, data.name, "notification rule")
    row = NotificationRule(
        name=data.name,
        conditions=data.conditions.model_dump(exclude_defaults=True),
        enabled=data.enabled,
        description=data.description,
    )
    row.channels = _channels(session, data.channels)
    session.add(row)
    session.flush()
    return row


def update_notify_rule(session: Session, row: NotificationRule, patch: NotifyRulePatch) -> NotificationRule:
    changes = patch.model_dump(exclude_unset=True)
    if changes.get("name"):
        _unique(session, NotificationRule, changes["name"], "notification rule", exclude_id=row.id)
    if "channels" in changes:
        row.channels = _channels(session, changes.pop("channels") or [])
    if "conditions" in changes:
        changes.pop("conditions")
        row.conditions = (patch.conditions or NotifyConditions()).model_dump(exclude_defaults=True)
    for key, value in changes.items():
        if value is None and key != "description":
            continue
        setattr(row, key, value)
    session.flush()
    return row


def named(session: Session, model: Any, name: str, what: str) -> Any:
    row = session.scalar(select(model).where(model.name == name))
    if row is None:
        raise NotFound(f"no {what} named {name!r}")
    return row
