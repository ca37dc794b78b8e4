"""The node's errors: one base, and the few kinds the command line and the REST API answer.

Every exception the node raises on purpose derives from :class:`NodeError`. A kind says what a
person can do about it, and so what each front end makes of it:

========================  =============================================  =========  ====
kind                      meaning                                        exit       HTTP
========================  =============================================  =========  ====
:class:`Invalid`          a setting, argument or request to correct       2          422
:class:`Refused`          (an Invalid naming its field)                   2          422
:class:`NotFound`         the job, series, destination... does not exist  2          404
:class:`Conflict`         the object is not in a state that allows it     2          409
:class:`Unavailable`      a database, broker, peer or port is not there   2          503
========================  =============================================  =========  ====

The command line (dicom_node.cli) prints :meth:`NodeError.one_line` after ``dicom-node:`` and
exits with ``exit_status``; the admin app (dicom_node.admin.app) answers ``http_status`` with the
message (and the field, for a Refused). An error of no kind (``exit_status`` None: a lost job
ownership, a refused DICOM instance inside the listener) is handled where it is raised; reaching a
front end, it is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar


class NodeError(Exception):
    """Base of every error the node raises on purpose."""

    exit_status: ClassVar[int | None] = None
    http_status: ClassVar[int] = 500

    def one_line(self) -> str:
        """What the command line prints after ``dicom-node:``."""
        return " ".join(str(self).split("\n"))


class Invalid(NodeError, ValueError):
    """A setting, argument or request the person can correct (the message says how)."""

    exit_status = 2
    http_status = 422


class Refused(Invalid):
    """A change refused; ``field`` names what is wrong (None: the whole request)."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason

    def one_line(self) -> str:
        return f"refused: {self}"


class NotFound(NodeError, LookupError):
    """The job, series, destination or file asked for does not exist."""

    exit_status = 2
    http_status = 404


class Conflict(NodeError):
    """The object's state does not allow the action (retrying a running job, sending a failed one's
    results)."""

    exit_status = 2
    http_status = 409


class Unavailable(NodeError):
    """A database, broker, peer or port the command needs does not answer or is taken."""

    exit_status = 2
    http_status = 503
