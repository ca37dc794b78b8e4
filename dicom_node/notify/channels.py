"""The kinds of notification channel, their settings, their templates and how each sends.

- ``hl7``: an HL7 v2.5.1 ORU^R01 over MLLP to a RIS (dicom_node.notify.hl7v2);
- ``webhook``: an HTTP POST of JSON, the payload (dicom_node.notify.payload; schema in
  docs/triage.md) or a template's rendering of it, signed with HMAC-SHA256 of
  ``<timestamp>.<body>`` under the channel's secret (headers ``X-Node-Signature: sha256=<hex>``,
  ``X-Node-Timestamp``, ``X-Node-Delivery``: the same delivery id on every attempt);
- ``email``: a plain-text message over SMTP, STARTTLS on by default (its certificate checked
  against the system's or the channel's CA file), optional login; subject and body templates.

Templates are Jinja2 in a sandbox, rendered with the payload's fields (``{{ decision }}``,
``{{ probabilities.covid }}``, ``{{ patient_name }}``, ``{{ notice }}`` ...); a template that does
not render on a sample payload is refused when the channel is saved.

:func:`send` returns a :class:`Delivery`: delivered, refused for good, or to be tried again.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicom_node.notify import hl7v2
from dicom_node.notify.payload import sample
from dicom_node.validation import Host, Port

KINDS = ("hl7", "webhook", "email")
SIGNATURE_HEADER = "X-Node-Signature"
TIMESTAMP_HEADER = "X-Node-Timestamp"
DELIVERY_HEADER = "X-Node-Delivery"

DEFAULT_SUBJECT = (
    "[{{ priority|upper }}] CT {{ decision }}{% if accession_number %} - {{ accession_number }}{% endif %}"
    " (not for clinical use)"
)
DEFAULT_BODY = """The COVID-CT AI node analysed a chest CT.

Patient:        {{ patient_name }} ({{ patient_id }})
Accession:      {{ accession_number }}
Study:          {{ study_description }} {{ study_instance_uid }}
Priority:       {{ priority }} ({{ priority_reason }})
AI result:      {{ decision }}{% if event == "failed" %}: {{ reason }}{% endif %}
{% for name, p in probabilities.items() %}{{ "%-16s"|format("p(" ~ name ~ "):") }}{{ "%.2f"|format(p) }}
{% endfor %}{% if lung_involvement_percent is not none -%}
Lung involved:  {{ "%.1f"|format(lung_involvement_percent) }} %
{% endif %}{% if job_url %}Job:            {{ job_url }}
{% endif %}{% if viewer_url %}Viewer:         {{ viewer_url }}
{% endif %}
{{ notice }} Research software: results unverified.
"""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HL7Settings(_Settings):
    host: Host
    port: Port
    receiving_application: str = Field(default="", max_length=180, description="MSH-5")
    receiving_facility: str = Field(default="", max_length=180, description="MSH-6")
    processing_id: Literal["P", "T", "D"] = Field(default="P", description="MSH-11: production, training, debugging")


class WebhookSettings(_Settings):
    url: str = Field(description="http:// or https://")
    secret: str = Field(min_length=16, description="the HMAC-SHA256 key (16 characters or more)")
    template: str | None = Field(default=None, description="a Jinja2 template of the JSON body; default: the payload")
    ca_file: Path | None = Field(default=None, description="CA bundle for an https URL signed by a private CA")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _renders(self) -> "WebhookSettings":
        if self.template is not None:
            body = render(self.template, sample(), field="template")
            try:
                json.loads(body)
            except json.JSONDecodeError as exc:
                raise ValueError(f"template: does not render to JSON ({exc})") from None
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file: {self.ca_file} is not a readable file")
        return self


class EmailSettings(_Settings):
    host: Host
    port: Port = 587
    starttls: bool = Field(default=True, description="refuse to send unless the server offers STARTTLS")
    username: str | None = None
    password: str | None = None
    sender: str = Field(min_length=3, max_length=254, description="From")
    recipients: list[str] = Field(min_length=1, description="To")
    subject_template: str = DEFAULT_SUBJECT
    body_template: str = DEFAULT_BODY
    ca_file: Path | None = Field(default=None, description="CA bundle of a server signed by a private CA")

    @field_validator("sender", "recipients")
    @classmethod
    def _addresses(cls, v: Any) -> Any:
        for address in [v] if isinstance(v, str) else v:
            name, parsed = email.utils.parseaddr(address)
            if "@" not in parsed or parsed.startswith("@") or parsed.endswith("@"):
                raise ValueError(f"{address!r} is not an e-mail address")
        return v

    @model_validator(mode="after")
    def _check(self) -> "EmailSettings":
        render(self.subject_template, sample(), field="subject_template")
        render(self.body_template, sample(), field="body_template")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file: {self.ca_file} is not a readable file")
        return self


SETTINGS: dict[str, type[_Settings]] = {"hl7": HL7Settings, "webhook": WebhookSettings, "email": EmailSettings}
# Settings never shown back (the API and the command line print "***").
SECRETS = frozenset({"secret", "password"})

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def render(template: str, context: dict[str, Any], *, field: str = "template") -> str:
    """Render a channel's template; ValueError naming the field when it does not."""
    try:
        return _env.from_string(template).render(**context)
    except TemplateError as exc:
        raise ValueError(f"{field}: {exc}") from None


def parse_settings(kind: str, data: dict[str, Any]) -> _Settings:
    if kind not in SETTINGS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    return SETTINGS[kind].model_validate(data)


def shown(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as they may be shown: secrets replaced."""
    return {k: ("***" if k in SECRETS and v else v) for k, v in settings.items()}


@dataclass(frozen=True)
class Delivery:
    outcome: Literal["done", "permanent", "retry"]
    detail: str  # what the endpoint answered, or why it failed


@dataclass(frozen=True)
class SendOptions:
    timeout: float
    hl7_application: str
    hl7_facility: str


def send(kind: str, settings: dict[str, Any], note: dict[str, Any], options: SendOptions) -> Delivery:
    """Send one notification; never raises for what the endpoint does (a bug still raises)."""
    parsed = parse_settings(kind, settings)
    try:
        if isinstance(parsed, HL7Settings):
            return _send_hl7(parsed, note, options)
        if isinstance(parsed, WebhookSettings):
            return _send_webhook(parsed, note, options)
        assert isinstance(parsed, EmailSettings)
        return _send_email(parsed, note, options)
    except ValueError as exc:  # a template that no longer renders, a value HL7 can not carry (HL7Error)
        return Delivery("permanent", str(exc))


def _send_hl7(s: HL7Settings, note: dict[str, Any], options: SendOptions) -> Delivery:
    control_id = note["delivery_id"]
    er7 = hl7v2.oru_r01(
        note,
        control_id=control_id,
        sending_application=options.hl7_application,
        sending_facility=options.hl7_facility,
        receiving_application=s.receiving_application,
        receiving_facility=s.receiving_facility,
        processing_id=s.processing_id,
    )
    try:
        answer = hl7v2.send_mllp(s.host, s.port, er7, timeout=options.timeout)
    except OSError as exc:
        return Delivery("retry", f"{s.host}:{s.port}: {exc or type(exc).__name__}")
    try:
        ack = hl7v2.parse_ack(answer)
    except ValueError as exc:
        return Delivery("retry", str(exc))
    said = f"MSA {ack.code} {ack.control_id}{': ' + ack.text if ack.text else ''}"
    if ack.control_id != control_id:
        return Delivery("retry", f"{said}: an acknowledgement of another message")
    if ack.code in ("AA", "CA"):
        return Delivery("done", said)
    if ack.code in ("AR", "CR"):
        return Delivery("permanent", f"rejected: {said}")
    return Delivery("retry", f"error: {said}")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook's signature header value: ``sha256=`` HMAC-SHA256 of ``<timestamp>.<body>``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _send_webhook(s: WebhookSettings, note: dict[str, Any], options: SendOptions) -> Delivery:
    body = (render(s.template, note) if s.template is not None else json.dumps(note, sort_keys=True)).encode()
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        s.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "dicom-node",
            SIGNATURE_HEADER: sign(s.secret, timestamp, body),
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: note["delivery_id"],
        },
    )
    context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    try:
        with urllib.request.urlopen(request, timeout=options.timeout, context=context) as response:
            return Delivery("done", f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        said = f"HTTP {exc.code} {exc.reason}"
        # A request the endpoint will never take (4xx) is not sent again; 408 and 429 say "later".
        if 400 <= exc.code < 500 and exc.code not in (408, 425, 429):
            return Delivery("permanent", f"refused: {said}")
        return Delivery("retry", said)
    except (urllib.error.URLError, OSError) as exc:
        return Delivery("retry", f"{s.url}: {getattr(exc, 'reason', exc)}")


def _send_email(s: EmailSettings, note: dict[str, Any], options: SendOptions) -> Delivery:
    message = EmailMessage()
    message["From"] = s.sender
    message["To"] = ", ".join(s.recipients)
    message["Subject"] = " ".join(render(s.subject_template, note, field="subject_template").split())
    message["Date"] = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc))
    # The same on every attempt: a mail system or reader can tell a repeat.
    message["Message-ID"] = f"<{note['delivery_id']}@{socket.getfqdn() or 'dicom-node'}>"
    message.set_content(render(s.body_template, note, field="body_template"))
    try:
        with smtplib.SMTP(s.host, s.port, timeout=options.timeout) as smtp:
            smtp.ehlo()
            if s.starttls:
                if not smtp.has_extn("starttls"):
                    return Delivery("retry", f"{s.host}:{s.port} does not offer STARTTLS")
                smtp.starttls(context=ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None))
                smtp.ehlo()
            if s.username is not None and s.password is not None:
                smtp.login(s.username, s.password)
            refused = smtp.send_message(message)
            code, reply = smtp.noop()
    except smtplib.SMTPRecipientsRefused as exc:
        return Delivery("permanent", f"recipients refused: {exc.recipients}")
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        said = f"SMTP {exc.smtp_code} {error}"
        return Delivery("permanent" if 500 <= exc.smtp_code < 600 else "retry", said)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        return Delivery("retry", f"{s.host}:{s.port}: {exc or type(exc).__name__}")
    if refused:
        return Delivery("done", f"accepted except {sorted(refused)}")
    return Delivery("done", f"accepted by {s.host} ({code})")
