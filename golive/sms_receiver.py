"""The practice's SMS provider during a go-live check, so the intake scenarios can see the links sent."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SMS_TOKEN = "golive-sms-token"


class SmsReceiver:
    """The practice's SMS provider during the check: 127.0.0.1, the common request shape (POST JSON {to, from,
    body} with a bearer token), every message kept in memory for the intake checks."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.headers.get("Authorization") != f"Bearer {SMS_TOKEN}":
                    self.send_response(401)
                else:
                    try:
                        received.append(json.loads(body))
                        self.send_response(201)
                    except json.JSONDecodeError:
                        self.send_response(400)
                payload = json.dumps({"id": str(uuid.uuid4())}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:  # numbers never reach a log
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/messages"

    def intake_config(self, secrets_dir: Path) -> dict[str, Any]:
        """The tenant entry's ``intake``: a form for new-patient consults, the pain variant for procedures."""
        for name, secret in (("golive-sms-token", SMS_TOKEN), ("golive-intake-link", uuid.uuid4().hex)):
            path = secrets_dir / name
            path.write_text(secret, encoding="utf-8")
            path.chmod(0o600)
        return {"brand": "Golive Check", "forms": {"new-patient-consult": "https://forms.example/new-patient"},
                "procedure_form_url": "https://forms.example/procedure",
                "link_secret_ref": f"file:{secrets_dir / 'golive-intake-link'}",
                "sms": {"provider_url": self.url, "from_number": "+15125550198",
                        "token_ref": f"file:{secrets_dir / 'golive-sms-token'}"}}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
