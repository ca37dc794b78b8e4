"""The one UID rule of the project.

Every UID the node creates goes through :func:`derived_uid` (deterministic, for anything that must
be the same when a job runs twice) or :func:`new_uid` (random). Every UID that arrives from the
outside goes through :func:`check_uid` before it is used, in particular before it becomes part of a
file path.
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


def clean_uid(value: object) -> str:
    """Return the UID stripped of padding, or raise ValueError naming what is wrong."""
    ok, reason = check_uid(value)
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
