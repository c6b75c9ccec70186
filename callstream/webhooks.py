"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

Every SIEM delivery carries ``webhook-id`` (the audit event id, stable across retries so the
receiver can de-duplicate), ``webhook-timestamp`` (seconds, per attempt, so a captured request
cannot be replayed after the tolerance) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256
over ``{id}.{timestamp}.{body}``). Secrets have the ``whsec_<base64>`` form; the HMAC key is the
decoded bytes. `verify` is what a receiver runs (a practice's, and our tests' SIEM receivers), so
there is one implementation of the scheme next to the signer the SIEM sink uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from callstream.errors import ConfigError
from callstream.secrets import read_secret

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_TOLERANCE_S = 300
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
MAX_ID_CHARS = 256
MAX_TIMESTAMP_DIGITS = 12
MAX_SIGNATURES = 16
"""A signature header holds one signature per active secret (rotation); more is an attack, not a rotation."""


class WebhookSecretError(ConfigError):
    """A signing secret (or its env:/file: reference) is missing or malformed; the message never holds it."""


class WebhookVerificationError(ValueError):
    """A delivery's signature or timestamp does not verify: the receiver must reject it (HTTP 401)."""


class WebhookHeaderError(WebhookVerificationError):
    """A Standard Webhooks header is missing or malformed: a broken sender, not a forgery (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """The HMAC key of one practice's endpoint; repr hides it so it cannot reach a log."""

    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """Decode a ``whsec_<base64>`` secret of 24-64 bytes.

        Raises:
            WebhookSecretError: wrong prefix, invalid base64 or a key of the wrong length.
        """
        candidate = text.strip()
        if not candidate.startswith(SECRET_PREFIX):
            raise WebhookSecretError(f"signing secret must start with {SECRET_PREFIX}")
        try:
            key = base64.b64decode(candidate.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSecretError(f"signing secret after {SECRET_PREFIX} is not valid base64") from None
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise WebhookSecretError(
                f"signing secret must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes (got {len(key)})"
            )
        return cls(key)

    def __str__(self) -> str:
        return "WebhookSecret(***)"


def resolve_secret(reference: str) -> WebhookSecret:
    """Read a secret from ``env:VAR`` or ``file:/path`` (the tenant directory's secret_ref form).

    Raises:
        WebhookSecretError: unknown form, unset variable, unreadable file or malformed secret;
            the message names the reference, never the content.
    """
    try:
        raw = read_secret(reference, "SIEM secret")
    except ConfigError as exc:
        raise WebhookSecretError(str(exc)) from None
    try:
        return WebhookSecret.parse(raw)
    except WebhookSecretError as exc:
        raise WebhookSecretError(f"SIEM secret reference {reference}: {exc}") from None


def sign(secret: WebhookSecret, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_headers(secret: WebhookSecret, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt (timestamp defaults to now)."""
    attempt_time = int(time.time()) if timestamp is None else timestamp
    return {
        HEADER_ID: message_id,
        HEADER_TIMESTAMP: str(attempt_time),
        HEADER_SIGNATURE: sign(secret, message_id, attempt_time, body),
    }


def verify(
    secret: WebhookSecret,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a delivery and return its webhook-id (the receiver's de-duplication key).

    Raises:
        WebhookHeaderError: a header is missing or malformed (over-long id, non-numeric timestamp).
        WebhookVerificationError: the timestamp is outside the tolerance, or no ``v1`` signature matches.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get(HEADER_ID, "")
    timestamp_text = lowered.get(HEADER_TIMESTAMP, "")
    signatures = lowered.get(HEADER_SIGNATURE, "")
    if not message_id or not timestamp_text or not signatures:
        raise WebhookHeaderError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if len(message_id) > MAX_ID_CHARS or not message_id.isprintable():
        raise WebhookHeaderError("webhook-id is malformed")
    if not timestamp_text.isascii() or not timestamp_text.isdigit() or len(timestamp_text) > MAX_TIMESTAMP_DIGITS:
        raise WebhookHeaderError("webhook-timestamp is not a whole number of seconds")
    timestamp = int(timestamp_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    expected = sign(secret, message_id, timestamp, body).encode()
    for candidate in signatures.split(" ")[:MAX_SIGNATURES]:
        if candidate.startswith(f"{SIGNATURE_VERSION},") and hmac.compare_digest(candidate.encode(), expected):
            return message_id
    raise WebhookVerificationError("no webhook-signature matches")
