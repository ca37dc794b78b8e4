"""What an admin does to other users from the pages: create, change the role, disable or enable,
reset the password. Each change is written to the audit log in its own transaction, with the
user before and after (never a password or its hash).

Two rules keep the node manageable: an admin can not disable or demote themselves (another admin
must), and the last enabled admin stays one (otherwise nobody could manage users but from the
server's shell). Disabling a user, or giving them a new password, ends their sessions; their API
tokens stop working while they are disabled (dicom_node.admin.auth).

The command line (dicom_node.admin.cli) does the same with ``admin create-user`` and
``admin set-password``; both use dicom_node.admin.auth's users and passwords.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from dicom_node.admin import audit
from dicom_node.admin.auth import Passwords, Principal, create_user, set_password, user_dict
from dicom_node.db.models import AdminSession, User
from dicom_node.errors import Refused
from dicom_node.validation import Role, check_role, require

# One of the changes below, bound to its arguments (the pages run it in their transaction).
Change = Callable[[Session], User]


def _enabled_admins(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(User).where(User.role == Role.ADMIN.value, User.enabled.is_(True))
        )
        or 0
    )


def _user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise Refused(None, f"no user with id {user_id}")
    return user


def _keeps_an_admin(session: Session, who: Principal, user: User, what: str) -> None:
    if user.id == who.user_id:
        raise Refused(None, f"you can not {what} yourself; another admin can")
    if user.role == Role.ADMIN.value and user.enabled and _enabled_admins(session) <= 1:
        raise Refused(None, f"{user.name} is the last enabled admin; make another admin first")


def add(
    session: Session,
    who: Principal,
    passwords: Passwords,
    name: str,
    role: str,
    password: str,
    *,
    remote_addr: str = "",
) -> User:
    user = create_user(session, passwords, name, role, password)
    audit.record(
        session,
        who,
        "user.create",
        target_type="user",
        target_id=user.id,
        target=user.name,
        after=user_dict(user),
        remote_addr=remote_addr,
    )
    return user


def change_role(session: Session, who: Principal, user_id: int, role: str, *, remote_addr: str = "") -> User:
    require("role", check_role, role)
    user = _user(session, user_id)
    if user.role == role:
        return user
    if role != Role.ADMIN.value:
        _keeps_an_admin(session, who, user, "demote")
    before = user_dict(user)
    user.role = role
    session.flush()
    audit.record(
        session,
        who,
        "user.role",
        target_type="user",
        target_id=user.id,
        target=user.name,
        before=before,
        after=user_dict(user),
        remote_addr=remote_addr,
    )
    return user


def set_enabled(session: Session, who: Principal, user_id: int, enabled: bool, *, remote_addr: str = "") -> User:
    user = _user(session, user_id)
    if user.enabled == enabled:
        return user
    if not enabled:
        _keeps_an_admin(session, who, user, "disable")
    before = user_dict(user)
    user.enabled = enabled
    if not enabled:
        session.execute(delete(AdminSession).where(AdminSession.user_id == user.id))
    session.flush()
    action = "user.enable" if enabled else "user.disable"
    audit.record(
        session,
        who,
        action,
        target_type="user",
        target_id=user.id,
        target=user.name,
        before=before,
        after=user_dict(user),
        remote_addr=remote_addr,
    )
    return user


def reset_password(
    session: Session, who: Principal, passwords: Passwords, user_id: int, password: str, *, remote_addr: str = ""
) -> User:
    user = _user(session, user_id)
    set_password(session, passwords, user, password)
    audit.record(
        session,
        who,
        "user.set_password",
        target_type="user",
        target_id=user.id,
        target=user.name,
        remote_addr=remote_addr,
    )
    return user
