"""The one home of field validators.

Each validator returns ``(ok, reason)``; :func:`require` turns a failure into
:class:`~dicom_node.errors.Refused` (a ValueError) naming the field. The config loader, the ORM
models, the REST schemas and the command line all call these, through the pydantic types at the
bottom or directly.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Annotated, Callable, TypeVar

from pydantic import AfterValidator

from dicom_node.errors import Refused
from dicom_node.outputs.kinds import OUTPUT_KINDS

T = TypeVar("T")

_USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024


class Role(str, enum.Enum):
    """What an admin-app user may do."""

    ADMIN = "admin"  # reads and changes everything
    VIEWER = "viewer"  # reads
    # The triage worklist and its monitoring only: acknowledges studies and gives verdicts
    # (dicom_node.admin.app keeps every other page and API route from them).
    RADIOLOGIST = "radiologist"


ROLES: tuple[str, ...] = tuple(r.value for r in Role)

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def check_ae_title(value: object) -> tuple[bool, str]:
    """AE title per PS3.5 6.2 (VR AE): 1-16 characters, no backslash or control characters,
    not only spaces. Leading/trailing spaces are not significant; we refuse them to avoid two
    spellings of one title."""
    if not isinstance(value, str):
        return False, "must be a string"
    if value == "" or value.strip() == "":
        return False, "must not be empty"
    if len(value) > 16:
        return False, f"is {len(value)} characters long, at most 16 are allowed"
    if value != value.strip():
        return False, "must not start or end with spaces"
    if "\\" in value:
        return False, "must not contain a backslash"
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        return False, "must contain only printable ASCII characters"
    return True, ""


def check_port(value: object) -> tuple[bool, str]:
    if isinstance(value, bool) or not isinstance(value, int):
        return False, "must be an integer"
    if not 1 <= value <= 65535:
        return False, f"{value} is out of range 1-65535"
    return True, ""


def check_host(value: object) -> tuple[bool, str]:
    """A host name or an IPv4/IPv6 address."""
    if not isinstance(value, str) or not value:
        return False, "must be a host name or an IP address"
    try:
        ipaddress.ip_address(value)
        return True, ""
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(value):
        return False, f"{value[:80]!r} is neither a host name nor an IP address"
    return True, ""


def check_seconds(value: object, *, minimum: float = 0.0, maximum: float = 7 * 24 * 3600) -> tuple[bool, str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False, "must be a number of seconds"
    if not minimum <= float(value) <= maximum:
        return False, f"{value} is out of range {minimum:g}-{maximum:g} seconds"
    return True, ""


def check_quiet_seconds(value: object) -> tuple[bool, str]:
    """A series' quiet period: 0.1 s to a day."""
    return check_seconds(value, minimum=0.1, maximum=24 * 3600)


def check_max_wait_seconds(value: object) -> tuple[bool, str]:
    """A series' maximum wait: a second to a week."""
    return check_seconds(value, minimum=1.0)


def check_keep_days(value: object) -> tuple[bool, str]:
    """How many days something is kept: a number from 0.01 (about a quarter of an hour) to 36500."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False, "must be a number of days"
    if not 0.01 <= float(value) <= 36500:
        return False, f"{value} is out of range 0.01-36500 days"
    return True, ""


def check_output_kinds(value: object) -> tuple[bool, str]:
    """A list of output kinds: at least one (an empty list would send nothing), each known, none twice."""
    if not isinstance(value, (list, tuple)):
        return False, f"must be a list of {', '.join(OUTPUT_KINDS)}"
    if not value:
        return False, f"is empty: name at least one of {', '.join(OUTPUT_KINDS)}"
    bad = [v for v in value if v not in OUTPUT_KINDS]
    if bad:
        return False, f"unknown output kind(s) {', '.join(map(str, bad))}; known: {', '.join(OUTPUT_KINDS)}"
    if len(set(value)) != len(value):
        return False, "lists an output kind twice"
    return True, ""


def check_regex(value: object) -> tuple[bool, str]:
    if not isinstance(value, str):
        return False, "must be a string"
    try:
        re.compile(value)
    except re.error as exc:
        return False, f"is not a valid regular expression: {exc}"
    return True, ""


def check_user_name(value: object) -> tuple[bool, str]:
    """An admin-app user name: 1-64 characters, letters, digits and . _ @ -, starting with a letter
    or digit."""
    if not isinstance(value, str) or not value:
        return False, "must not be empty"
    if len(value) > 64:
        return False, f"is {len(value)} characters long, at most 64 are allowed"
    if not _USER_NAME_RE.match(value):
        return False, "may contain only letters, digits and . _ @ - and must start with a letter or digit"
    return True, ""


def check_role(value: object) -> tuple[bool, str]:
    if value not in ROLES:
        return False, f"must be one of {', '.join(ROLES)}"
    return True, ""


def check_password(value: object) -> tuple[bool, str]:
    """A new password: MIN_PASSWORD_LENGTH to MAX_PASSWORD_LENGTH characters."""
    if not isinstance(value, str):
        return False, "must be a string"
    if len(value) < MIN_PASSWORD_LENGTH:
        return False, f"must be at least {MIN_PASSWORD_LENGTH} characters long"
    if len(value) > MAX_PASSWORD_LENGTH:
        return False, f"must be at most {MAX_PASSWORD_LENGTH} characters long"
    return True, ""


def require(field: str, check: Callable[[object], tuple[bool, str]], value: T) -> T:
    """Raise Refused("FIELD: reason") unless ``check(value)`` passes; return the value."""
    ok, reason = check(value)
    if not ok:
        raise Refused(field, reason)
    return value


def _pydantic(check: Callable[[object], tuple[bool, str]]) -> Callable[[object], object]:
    def validate(value: object) -> object:
        ok, reason = check(value)
        if not ok:
            raise ValueError(reason)
        return value

    return validate


AETitle = Annotated[str, AfterValidator(_pydantic(check_ae_title))]
Port = Annotated[int, AfterValidator(_pydantic(check_port))]
Host = Annotated[str, AfterValidator(_pydantic(check_host))]
QuietSeconds = Annotated[float, AfterValidator(_pydantic(check_quiet_seconds))]
MaxWaitSeconds = Annotated[float, AfterValidator(_pydantic(check_max_wait_seconds))]
KeepDays = Annotated[float, AfterValidator(_pydantic(check_keep_days))]
OutputKinds = Annotated[list[str], AfterValidator(_pydantic(check_output_kinds))]
Regex = Annotated[str, AfterValidator(_pydantic(check_regex))]
UserName = Annotated[str, AfterValidator(_pydantic(check_user_name))]
RoleName = Annotated[str, AfterValidator(_pydantic(check_role))]
Password = Annotated[str, AfterValidator(_pydantic(check_password))]
