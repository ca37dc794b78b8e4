"""The one UID rule of the project.

Every UID the node creates goes through :func:`derived_uid` (deterministic, for anything that must
be the same when a job runs twice) or :func:`new_uid` (random). Every UID that arrives from a peer
goes through :func:`check_received_uid` before it is used, in particular before it becomes part of
a file path; :func:`check_uid` is the strict PS3.5 rule for configuration values.
"""

from __future__ import annotations

import re
import uuid

from pydicom.uid import generate_uid

# A UID is dot-separated numeric components, no leading zero in a component (PS3.5 9.1), at most
# 64 characters. Being strict here is what keeps "../../x" out of the storage tree.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_uid(value: object) -> tuple[bool, str]:
    """Return (ok, reason) for a UID received from outside."""
    if not isinstance(value, str):
        return False, f"UID must be a string, got {type(value).__name__}"
    value = value.rstrip("\x00").strip()
    if not value:
        return False, "UID is empty"
    if len(value) > 64:
        return False, f"UID is {len(value)} characters long, more than 64"
    if not _UID_RE.match(value):
        return False, f"UID {value[:80]!r} is not dot-separated digits"
    return True, ""


# What a received UID must be to become a path component. Real devices send UIDs that break
# PS3.5 9.1 (leading zeros, letters, more than 64 characters); they are stored as sent. What is
# refused is anything that could leave the storage root or name nothing: separators, "..",
# a leading dot, other characters, or absurd lengths.
_SAFE_UID_RE = re.compile(r"^[0-9A-Za-z_-][0-9A-Za-z._-]{0,127}$")


def check_received_uid(value: object) -> tuple[bool, str]:
    """Return (ok, reason) for a UID received from a peer, before it becomes part of a path.
    A non-conformant but harmless UID is accepted (see :func:`check_uid` for conformance)."""
    if not isinstance(value, str):
        return False, f"UID must be a string, got {type(value).__name__}"
    value = value.rstrip("\x00").strip()
    if not value:
        return False, "UID is empty"
    if not _SAFE_UID_RE.match(value) or ".." in value:
        return False, f"UID {value[:80]!r} is not dot-separated digits and cannot name a file"
    return True, ""


def clean_uid(value: object, *, received: bool = False) -> str:
    """Return the UID stripped of padding, or raise ValueError naming what is wrong.
    ``received``: apply the receiving rule (:func:`check_received_uid`) instead of conformance."""
    ok, reason = (check_received_uid if received else check_uid)(value)
    if not ok:
        raise ValueError(reason)
    assert isinstance(value, str)
    return value.rstrip("\x00").strip()


def derived_uid(*parts: str) -> str:
    """A deterministic UID (2.25 root, PS3.5 B.2) from the given parts.

    Output objects use ``derived_uid(source_series_uid, model_version, kind, ...)`` so that a job
    that runs twice produces the same UIDs and PACS sees a replacement, not a duplicate.
    """
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    # A name-based (SHA-1, version 5) UUID of the parts. pydicom's generate_uid ignores
    # entropy_srcs when prefix is None (it returns a random UUID), so it cannot be used here.
    # The unit separator keeps ("ab", "c") and ("a", "bc") apart.
    name = "\x1f".join(["covid-ct-node", *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def new_uid() -> str:
    """A random UID (2.25 root)."""
    return str(generate_uid(prefix=None))
