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
from typing import Annotated, Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

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
    # STOW-RS only (POST /dicomweb/<local AE>/studies, where the AE's allow-list holds the token):
    # no page and no other API route. A scanner's or PACS' token: it reads no patient data.
    SENDER = "sender"


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


class DestinationKind(str, enum.Enum):
    """How results reach a destination."""

    DIMSE = "dimse"  # C-STORE SCU (dicom_node.sending.scu)
    DICOMWEB = "dicomweb"  # STOW-RS client (dicom_node.sending.dicomweb)


DESTINATION_KINDS: tuple[str, ...] = tuple(k.value for k in DestinationKind)


class WebAuth(str, enum.Enum):
    """The HTTP authentication of a DICOMweb destination."""

    NONE = "none"
    BASIC = "basic"  # user name and password
    BEARER = "bearer"  # a token in the Authorization header


WEB_AUTHS: tuple[str, ...] = tuple(a.value for a in WebAuth)
MAX_URL_LENGTH = 2000


def check_destination_kind(value: object) -> tuple[bool, str]:
    if value not in DESTINATION_KINDS:
        return False, f"must be one of {', '.join(DESTINATION_KINDS)}"
    return True, ""


def check_web_auth(value: object) -> tuple[bool, str]:
    if value not in WEB_AUTHS:
        return False, f"must be one of {', '.join(WEB_AUTHS)}"
    return True, ""


def check_dicomweb_url(value: object) -> tuple[bool, str]:
    """A DICOMweb service's base URL (the one /studies is appended to): http or https, a host,
    no credentials (they have fields of their own), no query or fragment."""
    if not isinstance(value, str) or not value:
        return False, "must be an http:// or https:// URL"
    if len(value) > MAX_URL_LENGTH:
        return False, f"is {len(value)} characters long, at most {MAX_URL_LENGTH} are allowed"
    if any(c.isspace() or ord(c) < 0x20 for c in value):
        return False, "must not contain spaces or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return False, f"{value[:80]!r} is not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return False, f"{value[:80]!r} must start with http:// or https://"
    if parts.username is not None or parts.password is not None:
        return False, "must not contain a user name or password (use the user and password fields)"
    if not parts.hostname:
        return False, f"{value[:80]!r} has no host"
    ok, reason = check_host(parts.hostname)
    if not ok:
        return False, f"host {reason}"
    if port is not None and not 1 <= port <= 65535:
        return False, f"port {port} is out of range 1-65535"
    if parts.query or parts.fragment:
        return False, "must not have a query (?...) or fragment (#...)"
    return True, ""


def url_host_port(url: str) -> tuple[str, int]:
    """The host and port a valid DICOMweb URL connects to (80 or 443 when it names none)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def check_ca_file(value: object) -> tuple[bool, str]:
    """A private CA bundle (PEM) named by an absolute path; "" for the system's CAs. Whether the
    file is there is checked where the destination is saved and used (it may live on a worker)."""
    if not isinstance(value, str):
        return False, "must be a path"
    if value and not value.startswith("/"):
        return False, f"{value[:80]!r} must be an absolute path"
    if len(value) > 1000:
        return False, "is longer than 1000 characters"
    return True, ""


def check_ca_file_readable(value: object) -> tuple[bool, str]:
    """An absolute path to a readable PEM file (or "")."""
    ok, reason = check_ca_file(value)
    if not ok or not value:
        return ok, reason
    assert isinstance(value, str)
    try:
        with open(value, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError as exc:
        return False, f"{value!r} can not be read: {exc.strerror or exc}"
    if b"-----BEGIN CERTIFICATE-----" not in head:
        return False, f"{value!r} holds no PEM certificate"
    return True, ""


def check_web_secret(value: object) -> tuple[bool, str]:
    """A DICOMweb password or bearer token: up to 4096 characters, no control characters (it goes
    into an HTTP header)."""
    if not isinstance(value, str):
        return False, "must be a string"
    if len(value) > 4096:
        return False, "is longer than 4096 characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return False, "must not contain control characters"
    return True, ""


def destination_problem(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, reason) for a destination whose fields do not fit together, or None. ``values``
    are a destination's fields after a change (kind, host, port, url, auth, username, password,
    token, ca_file), each already valid on its own."""
    kind = values.get("kind") or DestinationKind.DIMSE.value
    if kind == DestinationKind.DIMSE.value:
        if not values.get("host"):
            return "host", "is required for a DIMSE destination"
        if values.get("port") is None:
            return "port", "is required for a DIMSE destination"
        return None
    if not values.get("url"):
        return "url", "is required for a DICOMweb destination (the STOW-RS base URL, e.g. http://pacs:8042/dicom-web)"
    auth = values.get("auth") or WebAuth.NONE.value
    if auth == WebAuth.BASIC.value:
        if not values.get("username"):
            return "username", "is required for basic authentication"
        if not values.get("password"):
            return "password", "is required for basic authentication"
        if ":" in str(values["username"]):
            return "username", "must not contain a colon (basic authentication)"
    if auth == WebAuth.BEARER.value and not values.get("token"):
        return "token", "is required for bearer authentication"
    if values.get("ca_file") and str(values.get("url", "")).startswith("http://"):
        return "ca_file", "is used only with an https:// URL"
    return None


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
DestinationKindName = Annotated[str, AfterValidator(_pydantic(check_destination_kind))]
WebAuthName = Annotated[str, AfterValidator(_pydantic(check_web_auth))]
DicomWebURL = Annotated[str, AfterValidator(_pydantic(check_dicomweb_url))]
WebSecret = Annotated[str, AfterValidator(_pydantic(check_web_secret))]
CAFile = Annotated[str, AfterValidator(_pydantic(check_ca_file))]
