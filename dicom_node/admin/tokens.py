"""API tokens as an admin issues and revokes them, from the command line, the pages or the REST
API: each change written to the audit log with the token as it is after (never the token itself).
The tokens themselves (hashing, looking one up) are dicom_node.admin.auth's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.admin import audit
from dicom_node.admin.auth import Principal, create_token, revoke_token, token_dict
from dicom_node.db.models import ApiToken, User
from dicom_node.errors import NotFound, Refused


def _name(who: Principal | str) -> str:
    return who if isinstance(who, str) else who.name


def issue(
    session: Session, who: Principal | str, user_name: str, name: str, *, via: str = "", remote_addr: str = ""
) -> tuple[dict[str, Any], str, User]:
    """A new token for the user named ``user_name``: (the token as the lists show it, the token
    itself, shown this once, the user)."""
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        raise Refused("user", f"no user named {user_name!r}")
    row, raw = create_token(session, user, name, created_by=_name(who))
    out = token_dict(row)
    audit.record(
        session,
        who,
        "token.create",
        target_type="token",
        target_id=row.id,
        target=f"{row.name} ({user.name})",
        after=out,
        via=via,
        remote_addr=remote_addr,
    )
    return out, raw, user


def withdraw(
    session: Session, who: Principal | str, token_id: int, *, via: str = "", remote_addr: str = ""
) -> dict[str, Any]:
    """Revoke a token (it fails from its next use on); returns it as the lists show it."""
    if session.get(ApiToken, token_id) is None:
        raise NotFound(f"no API token with id {token_id}")
    row = revoke_token(session, token_id, revoked_by=_name(who))
    out = token_dict(row)
    audit.record(
        session,
        who,
        "token.revoke",
        target_type="token",
        target_id=row.id,
        target=f"{row.name} ({row.user.name})",
        after=out,
        via=via,
        remote_addr=remote_addr,
    )
    return out
