"""Triage rules as admins read them: priority rules, notification channels (their secrets never
shown) and notification rules, and the latest notifications with what each endpoint answered.

Read-only: the rules are made and changed with ``dicom-node triage`` (dicom_node.triage.rules
holds their schemas and checks, for the command line and any later form)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import Response

from dicom_node.admin.deps import admin, ctx, render
from dicom_node.db.models import Notification, NotificationChannel, NotificationRule, PriorityRule
from dicom_node.jobs.queries import iso
from dicom_node.triage import rules

router = APIRouter()

DELIVERIES = 50  # the newest notifications the page lists
SHOWN = "***"


def hidden_in_url(url: str) -> str:
    """A webhook URL as it may be shown: a password in it and the query's values (endpoints such as
    chat webhooks carry their token there) replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:{SHOWN}@{parts.netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{pair.split('=', 1)[0]}={SHOWN}" if "=" in pair else pair for pair in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", ""))


def _channel(row: NotificationChannel) -> dict[str, Any]:
    out = rules.channel_dict(row)  # secrets replaced already (dicom_node.notify.channels.shown)
    settings = dict(out["settings"])
    if isinstance(settings.get("url"), str):
        settings["url"] = hidden_in_url(settings["url"])
    out["settings"] = settings
    return out


def _delivery(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "channel": row.channel,
        "kind": row.kind,
        "rules": list(row.rules or []),
        "status": row.status,
        "attempts": row.attempts,
        "created_at": iso(row.created_at),
        "delivered_at": iso(row.delivered_at),
        "next_attempt_at": iso(row.next_attempt_at),
        "answer": row.response or row.last_error,
    }


@router.get("/rules")
def rules_page(request: Request) -> Response:
    admin(request)
    with ctx(request).db.session() as s:
        priority_rules = [
            rules.priority_rule_dict(r) for r in s.scalars(select(PriorityRule).order_by(PriorityRule.name))
        ]
        channels = [_channel(r) for r in s.scalars(select(NotificationChannel).order_by(NotificationChannel.name))]
        notify_rules = [
            rules.notify_rule_dict(r) for r in s.scalars(select(NotificationRule).order_by(NotificationRule.name))
        ]
        deliveries = [
            _delivery(r) for r in s.scalars(select(Notification).order_by(Notification.id.desc()).limit(DELIVERIES))
        ]
    return render(
        request,
        "rules.html",
        {
            "priority_rules": priority_rules,
            "channels": channels,
            "notify_rules": notify_rules,
            "deliveries": deliveries,
            "limit": DELIVERIES,
        },
    )
