"""Receivers of notifications that are not the node's code, for the tests, the benchmarks and the
README's demo: an HL7 v2 MLLP server (python-hl7's asyncio ``hl7.mllp``, another library than the
node's hl7apy sender), an SMTP server requiring STARTTLS (aiosmtpd, with a self-signed certificate
made by openssl) and an HTTP server (the standard library's, checking the webhook's signature).

Each runs in a thread of its own on a loopback port and records what it received, with the time
it arrived. The HL7 receiver answers AA, or what ``answer`` says (``AE``, ``AR``...), or holds its
answer until :meth:`MLLPReceiver.release` (to kill a node while it waits for one); like a RIS it
acknowledges a repeated MSH-10 again and counts it as a repeat.

``python -m tests.harness.receivers hl7 --port 2575`` prints each HL7 message it receives
(the README's demo). Needs the test extra (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import hmac
import http.server
import json
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import hl7
from aiosmtpd.controller import Controller
from hl7.mllp import start_hl7_server

from dicom_node.notify.channels import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.harness.peers import free_port, require_tool, wait_until


@dataclass(frozen=True)
class Received:
    at: float  # time.time() when it arrived
    text: str  # the message as received (HL7 ER7, the e-mail, the JSON body)
    ident: str  # HL7 MSH-10, the e-mail's Message-ID, the webhook's delivery id
    detail: dict[str, Any] = field(default_factory=dict)


class MLLPReceiver:
    """python-hl7's MLLP server on ``127.0.0.1:port``."""

    def __init__(self, port: int | None = None, *, answer: Callable[[str], str] | None = None) -> None:
        self.port = port or free_port()
        self.answer = answer or (lambda control_id: "AA")
        self.received: list[Received] = []
        self.acknowledged: list[str] = []  # MSH-10 of each AA sent back
        self.hold = threading.Event()  # set: answers wait until release()
        self._released = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mllp-receiver", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                control_id = str(message.segment("MSH")[10])
                self.received.append(Received(time.time(), str(message), control_id))
                if self.hold.is_set():
                    await asyncio.get_running_loop().run_in_executor(None, self._released.wait)
                    await asyncio.sleep(0.2)  # let the loop see a connection the sender closed meanwhile
                    if reader.at_eof() or writer.is_closing():
                        return  # the sender went away: it never got an acknowledgement
                code = self.answer(control_id)
                writer.writemessage(message.create_ack(ack_code=code))
                await writer.drain()
                if code == "AA":
                    self.acknowledged.append(control_id)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> "MLLPReceiver":
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start_hl7_server(self._client, "127.0.0.1", self.port), self._loop)
        self._server = future.result(10)
        return self

    def release(self) -> None:
        """Answer what was held, and every message from now on at once."""
        self.hold.clear()
        self._released.set()

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def repeats(self) -> dict[str, int]:
        """MSH-10 values received more than once, with their counts."""
        counts: dict[str, int] = {}
        for r in self.received:
            counts[r.ident] = counts.get(r.ident, 0) + 1
        return {k: v for k, v in counts.items() if v > 1}


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) for ``host`` made by openssl; the certificate is its own CA."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "server.pem", folder / "server.key"
    subprocess.run(
        [require_tool("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class _MailHandler:
    def __init__(self, sink: list[Received]) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.sink.append(
            Received(
                time.time(),
                envelope.content.decode("utf-8", errors="replace"),
                str(message["Message-ID"]),
                {
                    "subject": str(message["Subject"]),
                    "body": message.get_body(preferencelist=("plain",)).get_content(),  # type: ignore[union-attr]
                    "rcpt": list(envelope.rcpt_tos),
                    "tls": session.ssl is not None,
                },
            )
        )
        return "250 OK"


class SMTPReceiver:
    """aiosmtpd on ``127.0.0.1:port``, requiring STARTTLS with a self-signed certificate."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.cert, self.key = self_signed_certificate(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        self.received: list[Received] = []
        self.controller = Controller(
            _MailHandler(self.received),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
        )

    def start(self) -> "SMTPReceiver":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


class WebhookReceiver:
    """An HTTP server on ``127.0.0.1:port`` that answers 204 to a POST signed with ``secret``
    (401 otherwise), or the status ``status`` says (a callable of the delivery id)."""

    def __init__(self, secret: str, port: int | None = None, *, status: Callable[[str], int] | None = None) -> None:
        self.port = port or free_port()
        self.secret = secret
        self.status = status or (lambda delivery_id: 204)
        self.received: list[Received] = []
        self.refused: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                timestamp = self.headers.get(TIMESTAMP_HEADER, "")
                expected = sign(receiver.secret, timestamp, body)
                delivery = self.headers.get(DELIVERY_HEADER, "")
                if not hmac.compare_digest(expected, self.headers.get(SIGNATURE_HEADER, "")):
                    receiver.refused.append(delivery)
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.received.append(
                    Received(time.time(), body.decode(), delivery, {"json": json.loads(body), "path": self.path})
                )
                self.send_response(receiver.status(delivery))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(receiver: Any, count: int, timeout: float) -> list[Received]:
    """Wait until ``receiver`` got at least ``count`` messages; returns them."""
    return list(
        wait_until(
            lambda: receiver.received if len(receiver.received) >= count else None, timeout, f"{count} message(s)"
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the HL7 v2 messages received over MLLP, answering AA")
    parser.add_argument("kind", choices=["hl7"])
    parser.add_argument("--port", type=int, default=2575)
    args = parser.parse_args(argv)
    receiver = MLLPReceiver(args.port)
    shown = 0
    receiver.start()
    print(f"HL7 MLLP receiver on 127.0.0.1:{args.port} (python-hl7); Ctrl+C stops it", flush=True)
    try:
        while True:
            time.sleep(0.2)
            for r in receiver.received[shown:]:
                print(hl7.parse(r.text).__str__().replace("\r", "\n"), flush=True)
                print(flush=True)
            shown = len(receiver.received)
    except KeyboardInterrupt:
        receiver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
