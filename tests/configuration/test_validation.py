"""Unit tests of the field validators (AE title, port, host, output kinds, user name, role,
password) and the UID rule.

Covers the one validator each field has, as the CLI, the ORM, the REST API and the settings use
it. Does not cover the REST layer's 422 answers (tests/admin).
"""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from dicom_node.db.models import User
from dicom_node.errors import Refused
from dicom_node.validation import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    UserName,
    check_ae_title,
    check_host,
    check_output_kinds,
    check_password,
    check_port,
    check_role,
    check_user_name,
    require,
)
from model.contract.uids import check_received_uid, check_uid, clean_uid, derived_uid, new_uid


@pytest.mark.parametrize("title", ["A", "COVIDNODE", "X" * 16, "AE-1_2.3", "MY AE"])
def test_valid_ae_titles(title: str) -> None:
    assert check_ae_title(title) == (True, "")


@pytest.mark.parametrize(
    ("title", "reason"),
    [
        ("X" * 17, "17 characters"),
        ("A\\B", "backslash"),
        ("", "empty"),
        ("   ", "empty"),
        (" LEAD", "spaces"),
        ("TAB\tAE", "printable"),
        ("ÄRZTE", "printable"),
        (None, "string"),
    ],
)
def test_invalid_ae_titles_name_the_reason(title: object, reason: str) -> None:
    ok, why = check_ae_title(title)
    assert not ok and reason in why


@pytest.mark.parametrize(
    ("port", "ok"),
    [(1, True), (104, True), (65535, True), (0, False), (65536, False), (-1, False), (True, False), ("104", False)],
)
def test_ports(port: object, ok: bool) -> None:
    assert check_port(port)[0] is ok


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("pacs.example.org", True),
        ("pacs", True),
        ("bad host", False),
        ("", False),
        ("a..b", False),
    ],
)
def test_hosts(host: str, ok: bool) -> None:
    assert check_host(host)[0] is ok


def test_output_kinds() -> None:
    assert check_output_kinds(["sr", "seg"])[0]
    ok, why = check_output_kinds(["sr", "pdf"])
    assert not ok and "pdf" in why
    assert not check_output_kinds(["sr", "sr"])[0]


def test_require_names_the_field() -> None:
    with pytest.raises(Refused, match=r"^title: is 17 characters") as refused:
        require("title", check_ae_title, "X" * 17)
    assert (refused.value.field, refused.value.reason) == ("title", "is 17 characters long, at most 16 are allowed")


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith@example.org", "x_1-2", "A" * 64])
def test_valid_user_names(name: str) -> None:
    assert check_user_name(name) == (True, "")


@pytest.mark.parametrize(
    ("name", "reason"),
    [("", "empty"), (None, "empty"), ("A" * 65, "65 characters"), (".hidden", "start with"), ("a b", "only letters")],
)
def test_invalid_user_names(name: object, reason: str) -> None:
    ok, why = check_user_name(name)
    assert not ok and reason in why


def test_roles_and_passwords() -> None:
    assert check_role("admin") == check_role("viewer") == check_role("radiologist") == (True, "")
    assert check_role("root") == (False, "must be one of admin, viewer, radiologist, sender")
    assert check_password("x" * MIN_PASSWORD_LENGTH) == check_password("x" * MAX_PASSWORD_LENGTH) == (True, "")
    assert check_password("x" * (MIN_PASSWORD_LENGTH - 1)) == (False, "must be at least 10 characters long")
    assert not check_password("x" * (MAX_PASSWORD_LENGTH + 1))[0] and not check_password(None)[0]


def test_the_orm_and_the_schemas_use_the_same_user_validators() -> None:
    with pytest.raises(Refused, match="^role: must be one of admin, viewer"):
        User(name="alice", role="root", password_hash="x")
    with pytest.raises(Refused, match="^name: may contain only"):
        User(name="a b", role="viewer", password_hash="x")
    with pytest.raises(ValidationError, match="may contain only"):
        TypeAdapter(UserName).validate_python("a b")


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "2.25.1234567890", "1.2.3\x00"])
def test_valid_uids(uid: str) -> None:
    assert check_uid(uid)[0]


@pytest.mark.parametrize(
    "uid", ["../../x", "1.2/3", "1..2", "1.02", "", "1." + "1" * 64, "1.2.3 4", "/etc/passwd", None]
)
def test_invalid_uids_never_become_paths(uid: object) -> None:
    assert not check_uid(uid)[0]
    with pytest.raises(ValueError):
        clean_uid(uid)


@pytest.mark.parametrize("uid", ["1.2.03.4", "dccc9599087131742838cc1162a630fe", "1.2." + "3" * 70])
def test_non_conformant_but_harmless_received_uids_are_stored_as_sent(uid: str) -> None:
    assert not check_uid(uid)[0]
    assert check_received_uid(uid) == (True, "")


@pytest.mark.parametrize("uid", ["../../x", "1.2/3", "..", ".hidden", "a b", "", "x" * 129])
def test_received_uids_that_could_leave_the_storage_root_are_refused(uid: str) -> None:
    assert not check_received_uid(uid)[0]


def test_derived_uids_are_deterministic_and_distinct() -> None:
    a = derived_uid("1.2.3", "1.0.0", "sr")
    assert a == derived_uid("1.2.3", "1.0.0", "sr")
    assert a != derived_uid("1.2.3", "1.0.1", "sr")
    assert a != derived_uid("1.2.3", "1.0.0", "seg")
    assert derived_uid("ab", "c") != derived_uid("a", "bc")
    assert a.startswith("2.25.") and len(a) <= 64 and check_uid(a)[0]
    assert new_uid() != new_uid()
