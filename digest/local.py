"""A real SMTP server on 127.0.0.1 that keeps what it receives (aiosmtpd), and the demo's digest run.

`callstream demo` sends each practice's digest of the demo's day to it and reports how many arrived; the
tests use it (with STARTTLS or implicit TLS and a login) to receive and parse real messages.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from callstream.backends import free_port
from callstream.errors import ConfigError
from callstream.tenants import TenantDirectory
from digest.log import DigestLog
from digest.service import DigestService
from digest.smtp import SmtpRelay
from sinks.clickhouse_store import AuditStore


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the server got it: the envelope and the parsed message."""

    sender: str
    recipients: tuple[str, ...]
    message: EmailMessage


class LocalSmtpReceiver:
    """aiosmtpd on 127.0.0.1 and a free port; ``starttls`` / ``implicit_tls`` take the server's TLS context,
    ``login`` makes AUTH (after TLS) mandatory with that user and password."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 login: tuple[str, str] | None = None) -> None:
        try:  # a dev dependency: only the demo and the tests receive mail
            from aiosmtpd.controller import Controller
            from aiosmtpd.smtp import AuthResult, LoginPassword
        except ImportError:
            raise ConfigError("the local SMTP receiver needs aiosmtpd: pip install -e '.[dev]' (what make demo does)") from None

        self.messages: list[Received] = []
        self.port = free_port()
        received = self.messages

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                parsed = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
                assert isinstance(parsed, EmailMessage)
                received.append(Received(envelope.mail_from, tuple(envelope.rcpt_tos), parsed))
                return "250 Message accepted for delivery"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            good = (login is not None and isinstance(auth_data, LoginPassword)
                    and (auth_data.login.decode(), auth_data.password.decode()) == login)
            return AuthResult(success=good, handled=False)

        options: dict[str, Any] = {}
        if login is not None:
            options.update(authenticator=authenticate, auth_required=True)
        if tls is not None and implicit_tls:
            # aiosmtpd counts only STARTTLS as TLS for AUTH; this whole connection is TLS already
            options.update(ssl_context=tls, auth_require_tls=False)
        elif tls is not None:
            options.update(tls_context=tls, require_starttls=True)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **options)

    def __enter__(self) -> LocalSmtpReceiver:
        self._controller.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._controller.stop()


def demo_digests(store: AuditStore, tenants: TenantDirectory, started: datetime, series: str) -> int:
    """Send every practice's digest of the demo's day (its local date) to a local receiver; how many arrived.

    The practices get a made-up recipient each; ``series`` keeps the demo's sends apart from the daily ones (a
    second demo on the same day sends its own)."""
    practices = TenantDirectory([practice.model_copy(update={"digest_recipients": (f"digest@{practice_id}.example",)})
                                 for practice_id, practice in tenants.items()], tenants.source)
    sends = DigestLog(store.client, store.database)
    sends.migrate()
    with LocalSmtpReceiver() as receiver:
        service = DigestService(store, sends, practices, SmtpRelay("127.0.0.1", receiver.port, "none"), series=series)
        for practice in practices.values():
            service.send_one(practice.practice_id, started.astimezone(ZoneInfo(practice.timezone)).date())
        return len(receiver.messages)
