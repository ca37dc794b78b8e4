"""Who may do what: users and their passwords, API tokens, browser sessions, CSRF tokens.

- No default user or password: ``dicom-node admin create-user`` makes the first one.
- Passwords are kept as argon2id hashes (argon2-cffi's encoded form, parameters included).
- API bearer tokens and session ids are random (256 bits); only their sha256 is stored, so a copy
  of the database does not log anyone in. A token is shown once, when it is created.
- Roles: ``admin`` changes things, ``viewer`` reads (:class:`dicom_node.validation.Role`).
- The secret that signs the session cookie comes from ``settings.admin.secret_key`` or a file
  generated once under the data dir (mode 0600).

This module knows nothing of FastAPI; :mod:`dicom_node.admin.app` applies it to requests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from dicom_node.db.models import AdminSession, ApiToken, AuditEntry, User
from dicom_node.db.times import as_utc, utcnow
from dicom_node.errors import Refused
from dicom_node.settings import Settings
from dicom_node.validation import Role, check_password, check_role, check_user_name, require

log = logging.getLogger(__name__)

TOKEN_PREFIX = "dnt_"
SECRET_FILE = "admin-secret.key"
# last_used_at / last_seen_at are written at most this often (SQLite has one writer at a time).
TOUCH_SECONDS = 60.0

# --- passwords -----------------------------------------------------------------------------


class Passwords:
    """argon2id hashing; one instance per process (the hasher holds only its parameters)."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher()
        self._dummy: str | None = None
        self._lock = threading.Lock()

    def _dummy_hash(self) -> str:
        # Verified against when the user does not exist, so that the answer takes as long; made
        # on first need (a hash costs as much as a login).
        with self._lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
            return self._dummy

    def hash(self, password: str) -> str:
        require("password", check_password, password)
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash(), password) and password_hash is not None
        except VerificationError:
            return False
        except InvalidHashError:
            log.error("a stored password hash is not an argon2 hash; that user can not log in")
            return False


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# --- users ---------------------------------------------------------------------------------


def create_user(session: Session, passwords: Passwords, name: str, role: str, password: str) -> User:
    require("name", check_user_name, name)
    require("role", check_role, role)
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise Refused("name", f"a user named {name!r} exists already")
    user = User(name=name, role=role, password_hash=passwords.hash(password), enabled=True)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, passwords: Passwords, user: User, password: str) -> None:
    user.password_hash = passwords.hash(password)
    # A new password ends every session of the user.
    session.execute(delete(AdminSession).where(AdminSession.user_id == user.id))
    session.flush()


def find_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise Refused("name", f"no user named {name!r}")
    return user


def user_for_login(session: Session, passwords: Passwords, name: str, password: str) -> User | None:
    """The enabled user with this name and password, or None (same time either way)."""
    user = session.scalar(select(User).where(User.name == name))
    ok = passwords.verify(user.password_hash if user is not None else None, password)
    if user is None or not ok or not user.enabled:
        return None
    return user


def user_dict(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "enabled": user.enabled,
        "created_at": user.created_at,
        "last_login_at": user.last_login_at,
    }


# --- API tokens ----------------------------------------------------------------------------


def create_token(session: Session, user: User, name: str, created_by: str) -> tuple[ApiToken, str]:
    """A new bearer token for ``user``; returns the row and the token (shown once)."""
    if len(name) > 100:
        raise Refused("name", f"is {len(name)} characters long, at most 100 are allowed")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=sha256_hex(raw),
        prefix=raw[: len(TOKEN_PREFIX) + 6],
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row, raw


def revoke_token(session: Session, token_id: int, revoked_by: str) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise Refused("id", f"no token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        row.revoked_by = revoked_by
        session.flush()
    return row


def token_dict(row: ApiToken) -> dict[str, object]:
    return {
        "id": row.id,
        "name": row.name,
        "user": row.user.name,
        "role": row.user.role,
        "prefix": row.prefix,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
        "revoked_by": row.revoked_by,
    }


def _stale(value: dt.datetime | None, now: dt.datetime) -> bool:
    return value is None or (now - as_utc(value)).total_seconds() >= TOUCH_SECONDS


# --- who is asking -------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """The user behind a request, and how they proved it."""

    user_id: int
    name: str
    role: str
    # "web" (a session cookie) or "api-token <id>".
    via: str
    token_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN.value

    @property
    def actor(self) -> str:
        return self.name


def principal_for_token(session: Session, raw: str) -> Principal | None:
    """The principal of a bearer token; None if unknown, revoked, or its user is disabled."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == sha256_hex(raw)))
    if row is None or row.revoked_at is not None or not row.user.enabled:
        return None
    now = utcnow()
    if _stale(row.last_used_at, now):
        row.last_used_at = now
    return Principal(row.user.id, row.user.name, row.user.role, f"api-token {row.id}", row.id)


def start_session(session: Session, user: User, *, hours: float, remote_addr: str) -> str:
    """Record a login; returns the session id for the cookie."""
    raw = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        AdminSession(
            token_hash=sha256_hex(raw),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + dt.timedelta(hours=hours),
            remote_addr=remote_addr[:64],
        )
    )
    user.last_login_at = now
    # Expired sessions of anyone go now; there is no other cleaner.
    session.execute(delete(AdminSession).where(AdminSession.expires_at < now))
    session.flush()
    return raw


def end_session(session: Session, raw: str) -> None:
    session.execute(delete(AdminSession).where(AdminSession.token_hash == sha256_hex(raw)))


def principal_for_session(session: Session, raw: str) -> Principal | None:
    """The principal of a session id; None if unknown, expired, or its user is disabled."""
    row = session.scalar(select(AdminSession).where(AdminSession.token_hash == sha256_hex(raw)))
    now = utcnow()
    if row is None or as_utc(row.expires_at) <= now or not row.user.enabled:
        return None
    if _stale(row.last_seen_at, now):
        row.last_seen_at = now
    return Principal(row.user.id, row.user.name, row.user.role, "web")


# --- secrets and CSRF ----------------------------------------------------------------------


def secret_key(settings: Settings) -> str:
    """settings.admin.secret_key, or one generated once and kept under the data dir (0600)."""
    if settings.admin.secret_key:
        return settings.admin.secret_key
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) < 32:
            raise ValueError(
                f"{path} holds no usable secret (fewer than 32 characters); delete it to have a new one made"
            ) from None
        return key
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


class LoginThrottle:
    """After ``max_failures`` wrong passwords for one name from one remote address within
    ``window`` seconds (since that name's last login from there), that name is refused from that
    address for ``lockout`` seconds after each further failure. Counted in the database, from the
    audit log's ``session.login_failed`` rows, so every ``serve`` process sharing the database
    counts the same; per address, so nobody can lock an admin out from elsewhere."""

    FAILED = "session.login_failed"
    SUCCEEDED = "session.login"

    def __init__(self, max_failures: int = 5, window: float = 300.0, lockout: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout

    def locked(self, session: Session, name: str, address: str, now: dt.datetime | None = None) -> float:
        """Seconds this name is still locked out from this address (0 when it may try)."""
        now = now or utcnow()
        since = now - dt.timedelta(seconds=self.window)
        key = (name.strip()[:100] or "(empty)").lower()
        last_ok = session.scalar(
            select(func.max(AuditEntry.at)).where(
                AuditEntry.action == self.SUCCEEDED,
                func.lower(AuditEntry.actor) == key,
                AuditEntry.remote_addr == address,
                AuditEntry.at >= since,
            )
        )
        if last_ok is not None:
            since = max(since, as_utc(last_ok))
        failures = session.execute(
            select(func.count(AuditEntry.id), func.max(AuditEntry.at)).where(
                AuditEntry.action == self.FAILED,
                func.lower(AuditEntry.actor) == key,
                AuditEntry.remote_addr == address,
                AuditEntry.at > since,
            )
        ).one()
        count, latest = int(failures[0] or 0), failures[1]
        if count < self.max_failures or latest is None:
            return 0.0
        return max(0.0, (as_utc(latest) + dt.timedelta(seconds=self.lockout) - now).total_seconds())
