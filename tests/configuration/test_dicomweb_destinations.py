"""DICOMweb destinations' configuration: the URL, authentication and CA-file validators, the fields
a kind needs (refused with the field and the reason, from the schema, the ORM and the command
line alike), a DICOMweb destination's host and port from its URL, secrets never listed, and a
change that keeps a password not given again.

Not covered here: sending (tests/sending/test_dicomweb.py, with Orthanc as the peer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.configuration import (
    DestinationIn,
    DestinationPatch,
    add_destination,
    destination_dict,
    parse,
    update_destination,
)
from dicom_node.db import Database, upgrade
from dicom_node.db.models import Destination
from dicom_node.errors import Refused
from dicom_node.settings import ExportSettings
from dicom_node.validation import check_ca_file_readable, check_dicomweb_url, check_web_secret, destination_problem

URL = "http://127.0.0.1:8042/dicom-web"


@pytest.mark.parametrize(
    "url",
    [URL, "https://pacs.example.org/dicom-web/", "http://pacs", "https://[::1]:8443/wado", "http://10.0.0.5:80/dw"],
)
def test_valid_dicomweb_urls(url: str) -> None:
    assert check_dicomweb_url(url) == (True, "")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://pacs/dicom-web", "must start with http:// or https://"),
        ("pacs:8042/dicom-web", "must start with http:// or https://"),
        ("http:///dicom-web", "has no host"),
        ("http://bad_host!/dw", "host 'bad_host!' is neither a host name nor an IP address"),
        ("http://pacs:99999/dw", "is not a URL"),
        ("http://user:pw@pacs/dw", "must not contain a user name or password"),
        ("http://pacs/dw?x=1", "must not have a query"),
        ("http://pacs/dw#top", "must not have a query"),
        ("http://pacs/dicom web", "must not contain spaces"),
        ("http://pacs/" + "x" * 2000, "at most 2000 are allowed"),
        ("", "must be an http:// or https:// URL"),
        (None, "must be an http:// or https:// URL"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: object, reason: str) -> None:
    ok, why = check_dicomweb_url(url)
    assert not ok and reason in why, why


def test_a_bad_url_is_refused_naming_the_field_everywhere() -> None:
    with pytest.raises(Refused, match="^url: 'ftp://pacs/dw' must start with http:// or https://$") as refused:
        parse(DestinationIn, {"title": "WEB", "kind": "dicomweb", "url": "ftp://pacs/dw"})
    assert refused.value.field == "url"
    with pytest.raises(Refused, match="^url: 'ftp://pacs/dw' must start with"):
        Destination(title="WEB", host="pacs", port=80, outputs=["sr"], kind="dicomweb", url="ftp://pacs/dw")
    with pytest.raises(Refused, match="^kind: must be one of dimse, dicomweb$"):
        parse(DestinationIn, {"title": "WEB", "kind": "wado", "url": URL})
    with pytest.raises(Refused, match="^auth: must be one of none, basic, bearer$"):
        parse(DestinationIn, {"title": "WEB", "kind": "dicomweb", "url": URL, "auth": "digest"})
    with pytest.raises(Refused, match="^ca_file: 'ca.pem' must be an absolute path$"):
        parse(DestinationIn, {"title": "WEB", "kind": "dicomweb", "url": URL, "ca_file": "ca.pem"})
    with pytest.raises(Refused, match="^token: must not contain control characters$"):
        parse(DestinationIn, {"title": "WEB", "kind": "dicomweb", "url": URL, "auth": "bearer", "token": "a\r\nb"})


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"kind": "dimse", "port": 104}, ("host", "is required for a DIMSE destination")),
        ({"kind": "dimse", "host": "pacs"}, ("port", "is required for a DIMSE destination")),
        ({"kind": "dicomweb"}, ("url", "is required for a DICOMweb destination")),
        ({"kind": "dicomweb", "url": URL, "auth": "basic", "password": "x"}, ("username", "is required")),
        ({"kind": "dicomweb", "url": URL, "auth": "basic", "username": "u"}, ("password", "is required")),
        ({"kind": "dicomweb", "url": URL, "auth": "basic", "username": "a:b", "password": "x"}, ("username", "colon")),
        ({"kind": "dicomweb", "url": URL, "auth": "bearer"}, ("token", "is required for bearer authentication")),
        ({"kind": "dicomweb", "url": URL, "ca_file": "/etc/ca.pem"}, ("ca_file", "only with an https:// URL")),
    ],
)
def test_the_fields_a_kind_needs(values: dict[str, object], problem: tuple[str, str]) -> None:
    found = destination_problem(values)
    assert found is not None and found[0] == problem[0] and problem[1] in found[1], found


def test_fields_that_fit_together() -> None:
    assert destination_problem({"kind": "dimse", "host": "pacs", "port": 104}) is None
    assert (
        destination_problem({"kind": "dicomweb", "url": URL, "auth": "basic", "username": "u", "password": "p"}) is None
    )
    assert destination_problem({"kind": "dicomweb", "url": "https://p/dw", "auth": "bearer", "token": "t"}) is None


def test_the_ca_file_must_be_a_readable_pem(tmp_path: Path) -> None:
    assert check_ca_file_readable("") == (True, "")
    missing = tmp_path / "missing.pem"
    ok, why = check_ca_file_readable(str(missing))
    assert not ok and "can not be read" in why
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    assert check_ca_file_readable(str(garbage)) == (False, f"{str(garbage)!r} holds no PEM certificate")
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert check_ca_file_readable(str(pem)) == (True, "")
    assert check_web_secret("x" * 4097)[0] is False


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'node.sqlite3'}"
    upgrade(url)
    return Database(url)


def test_a_dicomweb_destination_takes_host_and_port_from_its_url_and_never_shows_secrets(db: Database) -> None:
    defaults = ExportSettings()
    with db.session() as s:
        data = {"title": "WEB", "kind": "dicomweb", "url": "https://pacs.example.org/dicom-web", "auth": "basic"}
        row = add_destination(s, parse(DestinationIn, {**data, "username": "node", "password": "pw"}), defaults)
        shown = destination_dict(row)
        assert (shown["host"], shown["port"], shown["tls"], shown["kind"]) == (
            "pacs.example.org",
            443,
            True,
            "dicomweb",
        )
        assert "pw" not in json.dumps(shown) and "password" not in shown and "token" not in shown
        # A change without the password keeps it; a new URL moves host and port.
        patch = parse(DestinationPatch, {"url": "http://10.0.0.9:8042/dw", "password": ""})
        row = update_destination(s, row, patch)
        assert (row.password, row.host, row.port, row.tls) == ("pw", "10.0.0.9", 8042, False)
        with pytest.raises(Refused, match="^token: is required for bearer authentication$"):
            update_destination(s, row, parse(DestinationPatch, {"auth": "bearer"}))
    db.dispose()


def test_the_command_line_refuses_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("DICOM_NODE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "data"))
    add = ["ae", "add-destination", "WEB", "--kind", "dicomweb"]
    assert main([*add, "--url", "ftp://pacs/dw"]) == 2
    assert capsys.readouterr().err == "dicom-node: refused: url: 'ftp://pacs/dw' must start with http:// or https://\n"
    assert main(add) == 2
    assert "refused: url: is required for a DICOMweb destination" in capsys.readouterr().err
    assert main([*add, "--url", URL, "--auth", "basic", "--user", "node"]) == 2
    assert capsys.readouterr().err == "dicom-node: refused: password: is required for basic authentication\n"
    assert main([*add, "--url", URL, "--auth", "bearer", "--token", "t0k", "--outputs", "sr,kos"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["url"], out["auth"], out["host"], out["port"], out["outputs"]) == (
        URL,
        "bearer",
        "127.0.0.1",
        8042,
        ["sr", "kos"],
    )
    assert main(["ae", "update-destination", "WEB", "--url", "http://pacs/dw?x"]) == 2
    assert "refused: url: must not have a query" in capsys.readouterr().err
    assert main(["ae", "list"]) == 0
    listing = capsys.readouterr().out
    assert "dicomweb" in listing and URL in listing and "bearer" in listing and "t0k" not in listing
