"""Messages to patients: the booking confirmation with the practice's branded intake link, by SMS or e-mail.

Not ModMed traffic (connectors/ sends only through the FHIR chokepoint): the practice's own SMS provider and
SMTP relay, named in its tenant-directory ``intake`` entry.

- SMS goes to an HTTP provider in the common request shape: ``POST {to, from, body}`` as JSON with a bearer token
  (``SmsChannel`` of the practice's ``intake``). 2xx is sent; 408, 429 and 5xx (and transport failures) are retried
  with the pipeline's backoff (callstream.retry.Backoff, a Retry-After wins up to the cap), then ``ProviderUnavailable``;
  any other status is ``MessageRejected`` (a number the provider will not take: retrying cannot help).
- E-mail goes through the practice's SMTP relay (``EmailChannel``): STARTTLS or implicit TLS with verified
  certificates, plain only on the loopback; smtplib runs in a thread so the event loop never blocks on it.

Phone numbers and addresses are PHI: no log line, exception message or audit detail here carries one (errors name
the channel, the status and the exception class only). The link carries an opaque, signed reference to the
appointment (``intake_reference``), never a name or a date of birth.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Literal, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx

from callstream.errors import CallstreamError, ConfigError
from callstream.retry import Backoff, retry_after_seconds
from callstream.secrets import read_login, read_secret
from callstream.tenants import EmailChannel, IntakeConfig, Practice, SmsChannel
from guards.model import VisitReason
from guards.replies import VISIT_LABELS, spoken_time

log = logging.getLogger(__name__)

Channel = Literal["sms", "email"]
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REFERENCE_SIGNATURE_CHARS = 22
"""Base64url characters of the HMAC-SHA256 kept in a link reference (132 bits)."""


class DeliveryError(CallstreamError):
    """A patient message was not sent; the message names the channel and why, never the recipient."""

    def __init__(self, message: str, *, channel: Channel, status: int | None = None) -> None:
        super().__init__(message)
        self.channel = channel
        self.status = status


class MessageRejected(DeliveryError):
    """The provider or relay refused this message for good (a bad number or address): not retried."""


class ProviderUnavailable(DeliveryError):
    """The provider or relay could not be reached or kept failing through every retry."""


# ----------------------------------------------------------------------------------------- the link


def intake_reference(secret: str, practice_id: str, appointment_id: str) -> str:
    """``<appointment id>.<signature>``: what the intake link carries so a completed form finds its chart."""
    digest = hmac.new(secret.encode(), f"{practice_id}|{appointment_id}".encode(), hashlib.sha256).digest()
    return f"{appointment_id}.{base64.urlsafe_b64encode(digest).decode()[:REFERENCE_SIGNATURE_CHARS]}"


def verified_appointment(secret: str, practice_id: str, reference: str) -> str | None:
    """The appointment id of a reference this practice's secret signed; None for anything else."""
    appointment_id, _, _ = reference.rpartition(".")
    if not appointment_id or len(reference) > 200:
        return None
    expected = intake_reference(secret, practice_id, appointment_id)
    return appointment_id if hmac.compare_digest(expected.encode(), reference.encode()) else None


def intake_link(form_url: str, reference: str) -> str:
    separator = "&" if urlsplit(form_url).query else "?"
    return f"{form_url}{separator}ref={reference}"


@dataclass(frozen=True, slots=True)
class IntakeMessage:
    """The confirmation with the intake link, as sent (no patient name in it)."""

    subject: str
    body: str


def intake_message(practice: Practice, intake: IntakeConfig, visit_reason: VisitReason, start: datetime,
                   link: str) -> IntakeMessage:
    """The one message that carries both the booking confirmation and the intake link, on either channel."""
    brand = intake.brand or practice.name
    when = spoken_time(start.astimezone(ZoneInfo(practice.timezone)))
    label = VISIT_LABELS[VisitReason(visit_reason)]
    body = (f"{brand}: your {label} is booked for {when}. Please complete your intake forms before your visit: "
            f"{link}")
    return IntakeMessage(subject=f"{brand}: your {label} on {when}", body=body)


async def send_booking_confirmation(messenger: PatientMessenger, practice: Practice, *, channel: Channel, to: str,
                                    visit_reason: VisitReason, start: datetime, appointment_id: str) -> str:
    """The confirmation with the visit's intake link, on ``channel``; returns the provider's message id.

    Raises:
        DeliveryError: not sent (MessageRejected: for good; ProviderUnavailable: after the retries).
        ConfigError: the practice has no intake form for this visit or no such channel, or a secret is unreadable.
    """
    intake = practice.intake
    form_url = intake.form_url(visit_reason) if intake is not None else None
    if intake is None or form_url is None:
        raise ConfigError(f"practice {practice.practice_id} has no intake form for {VisitReason(visit_reason).value}")
    reference = intake_reference(read_secret(intake.link_secret_ref, "intake link secret"), practice.practice_id,
                                 appointment_id)
    message = intake_message(practice, intake, visit_reason, start, intake_link(form_url, reference))
    if channel == "sms":
        if intake.sms is None:
            raise ConfigError(f"practice {practice.practice_id} has no SMS channel")
        return await messenger.send_sms(intake.sms, to, message.body)
    if intake.email is None:
        raise ConfigError(f"practice {practice.practice_id} has no e-mail channel")
    return await messenger.send_email(intake.email, to, message.subject, message.body)


# ------------------------------------------------------------------------------------------ senders


class PatientMessenger(Protocol):
    """What the pipeline sends patient messages through (the worker's, or a test's)."""

    async def send_sms(self, channel: SmsChannel, to: str, body: str) -> str: ...

    async def send_email(self, channel: EmailChannel, to: str, subject: str, body: str) -> str: ...


class Messenger:
    """SMS over the provider's HTTP API and e-mail over SMTP, with bounded retries; returns the message id."""

    def __init__(self, *, timeout_s: float = 5.0, attempts: int = 3, backoff: Backoff = Backoff(0.2, 2.0),
                 rng: random.Random | None = None) -> None:
        if not 1 <= attempts <= 6:
            raise ValueError("attempts must be 1-6")
        self._attempts = attempts
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._timeout = httpx.Timeout(timeout_s)
        # The transport, not an AsyncClient: the client would log each request URL at INFO.
        self._transport = httpx.AsyncHTTPTransport()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def send_sms(self, channel: SmsChannel, to: str, body: str) -> str:
        token = read_secret(channel.token_ref, "SMS provider token")
        payload = json.dumps({"to": to, "from": channel.from_number, "body": body}).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        problem = "no attempt"
        status: int | None = None
        for attempt in range(self._attempts):
            retry_after: float | None = None
            request = httpx.Request("POST", channel.provider_url, content=payload, headers=headers,
                                    extensions={"timeout": self._timeout.as_dict()})
            try:
                response = await self._transport.handle_async_request(request)
                try:
                    content = await response.aread()
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                status, problem = None, type(exc).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return _message_id(content)
                if status not in RETRYABLE_STATUS:
                    raise MessageRejected(f"SMS provider refused the message (HTTP {status})", channel="sms",
                                          status=status)
                problem = f"HTTP {status}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt + 1 < self._attempts:
                delay = self._backoff.delay(attempt, self._rng)
                delay = min(max(delay, retry_after or 0.0), self._backoff.cap_s)
                log.warning("SMS provider attempt %d/%d failed (%s); retrying in %.2fs", attempt + 1,
                            self._attempts, problem, delay)
                await asyncio.sleep(delay)
        raise ProviderUnavailable(f"SMS provider failed {self._attempts} times ({problem})", channel="sms",
                                  status=status)

    async def send_email(self, channel: EmailChannel, to: str, subject: str, body: str) -> str:
        message = EmailMessage()
        message["From"] = channel.from_address
        message["To"] = to
        message["Subject"] = subject
        message_id = make_msgid(domain=channel.from_address.partition("@")[2] or None)
        message["Message-ID"] = message_id
        message.set_content(body)
        login = read_login(channel.credentials_ref, "SMTP credentials") if channel.credentials_ref else None
        problem = "no attempt"
        for attempt in range(self._attempts):
            try:
                await asyncio.to_thread(_smtp_send, channel, message, login, self._timeout.connect or 5.0)
                return message_id
            except smtplib.SMTPRecipientsRefused:
                raise MessageRejected("SMTP relay refused the recipient", channel="email") from None
            except smtplib.SMTPResponseException as exc:
                if 500 <= exc.smtp_code < 600:
                    raise MessageRejected(f"SMTP relay refused the message ({exc.smtp_code})", channel="email",
                                          status=exc.smtp_code) from None
                problem = f"SMTP {exc.smtp_code}"
            except (smtplib.SMTPException, OSError) as exc:  # ssl.SSLError is an OSError
                problem = type(exc).__name__
            if attempt + 1 < self._attempts:
                delay = self._backoff.delay(attempt, self._rng)
                log.warning("SMTP relay attempt %d/%d failed (%s); retrying in %.2fs", attempt + 1, self._attempts,
                            problem, delay)
                await asyncio.sleep(delay)
        raise ProviderUnavailable(f"SMTP relay failed {self._attempts} times ({problem})", channel="email")


def _smtp_send(channel: EmailChannel, message: EmailMessage, login: tuple[str, str] | None, timeout_s: float) -> None:
    context = ssl.create_default_context()
    if channel.security == "tls":
        client: smtplib.SMTP = smtplib.SMTP_SSL(channel.smtp_host, channel.smtp_port, timeout=timeout_s,
                                                context=context)
    else:
        client = smtplib.SMTP(channel.smtp_host, channel.smtp_port, timeout=timeout_s)
    with client:
        if channel.security == "starttls":
            client.starttls(context=context)
        if login is not None:
            client.login(*login)
        client.send_message(message)


def _message_id(content: bytes) -> str:
    """The provider's id for the message when its answer has one (``id`` or ``sid``), else a placeholder."""
    try:
        answer = json.loads(content) if content else {}
    except ValueError:
        answer = {}
    value = answer.get("id") or answer.get("sid") if isinstance(answer, dict) else None
    return str(value)[:128] if isinstance(value, str | int) and str(value).isprintable() else "sent"
