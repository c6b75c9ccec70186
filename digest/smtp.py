"""Sending the digest over SMTP: STARTTLS (default), implicit TLS, or plain on the loopback interface only.

Certificates are verified (system CAs plus ``smtp_ca_file``); the login comes from a credential reference
(``smtp_credentials_ref``) read at each send and never logged. Failures are described by exception class and
SMTP code, never by the server's text (which may echo an address or more).
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from callstream.errors import CallstreamError, ConfigError
from callstream.secrets import read_login
from callstream.settings import Settings, is_loopback


class DigestDeliveryError(CallstreamError):
    """The relay did not take the message; it may be retried."""


@dataclass(frozen=True, slots=True)
class SmtpRelay:
    host: str
    port: int
    security: str
    credentials_ref: str | None = None
    ca_file: Path | None = None
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.security == "none" and not is_loopback(self.host):
            raise ConfigError("smtp_security none (no TLS) is only allowed for a relay on the loopback interface")
        if self.security == "none" and self.credentials_ref:
            raise ConfigError("an SMTP login needs TLS: set smtp_security to starttls or tls")

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpRelay | None:
        """None when no relay is configured (``smtp_host`` unset)."""
        if not settings.smtp_host:
            return None
        return cls(settings.smtp_host, settings.smtp_port, settings.smtp_security, settings.smtp_credentials_ref,
                   settings.smtp_ca_file, settings.smtp_timeout_s)

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"smtp_ca_file {self.ca_file}: not a readable PEM file ({type(exc).__name__})") from None
        return context

    def send(self, message: EmailMessage) -> int:
        """Deliver to the recipients in the message's To header; returns how many the relay refused while it
        took the message for the others (it is sent then: sending again would duplicate it for those).

        Raises:
            DigestDeliveryError: connection, TLS, login, or the message or every recipient refused.
            ConfigError: the credential reference or CA file cannot be read.
        """
        login = read_login(self.credentials_ref, "SMTP credentials") if self.credentials_ref else None
        try:
            if self.security == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s,
                                                        context=self.tls_context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with client:
                if self.security == "starttls":
                    client.starttls(context=self.tls_context())
                if login is not None:
                    client.login(*login)
                refused = client.send_message(message)
        except smtplib.SMTPResponseException as exc:
            raise DigestDeliveryError(f"SMTP relay {self.host}:{self.port} refused ({type(exc).__name__} "
                                      f"{exc.smtp_code})") from None
        except (smtplib.SMTPException, OSError) as exc:  # ssl.SSLError is an OSError
            raise DigestDeliveryError(f"SMTP relay {self.host}:{self.port}: {type(exc).__name__}") from None
        return len(refused)
