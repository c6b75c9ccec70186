"""OAuth2 for both ModMed tracks: opaque bearer tokens and SMART private_key_jwt assertions.

Proprietary track: password, refresh_token and client_credentials grants at the firm's
grant endpoint. Certified track: client_credentials with an RS384-signed JWT assertion
(SMART Backend Services). Tokens belong to exactly one practice; a token presented at
another practice is recognised and refused with 403, an unknown or expired one with 401.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import parse_qsl

import jwt

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = dt.timedelta(minutes=5)
CLOCK_SKEW = dt.timedelta(seconds=30)


class OAuthError(Exception):
    """An OAuth2 error response: {"error": ..., "error_description": ...}."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class AccessGrant:
    practice_id: str
    track: str
    subject: str
    expires_at: dt.datetime
    issued_at: dt.datetime
    scopes: frozenset[str]


@dataclass(frozen=True)
class RefreshGrant:
    practice_id: str
    subject: str
    expires_at: dt.datetime
    issued_at: dt.datetime


class TokenRegistry:
    """Every token the sandbox issued, across practices, with expiry and revocation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._access: dict[str, AccessGrant] = {}
        self._refresh: dict[str, RefreshGrant] = {}
        self._revoked_before: dict[str, dt.datetime] = {}
        self._seen_jti: dict[tuple[str, str], dt.datetime] = {}

    def issue(
        self, practice_id: str, track: str, subject: str, now: dt.datetime, ttl_seconds: int,
        refresh_ttl_seconds: int | None, scopes: frozenset[str] = frozenset(),
    ) -> dict[str, object]:
        access = secrets.token_urlsafe(32)
        response: dict[str, object] = {"access_token": access, "token_type": "Bearer", "expires_in": ttl_seconds}
        with self._lock:
            self._access[access] = AccessGrant(
                practice_id, track, subject, now + dt.timedelta(seconds=ttl_seconds), now, scopes
            )
            if refresh_ttl_seconds is not None:
                refresh = secrets.token_urlsafe(32)
                self._refresh[refresh] = RefreshGrant(
                    practice_id, subject, now + dt.timedelta(seconds=refresh_ttl_seconds), now
                )
                response["refresh_token"] = refresh
        if scopes:
            response["scope"] = " ".join(sorted(scopes))
        return response

    def _revoked(self, practice_id: str, issued_at: dt.datetime) -> bool:
        cutoff = self._revoked_before.get(practice_id)
        return cutoff is not None and issued_at <= cutoff

    def access(self, token: str, now: dt.datetime) -> AccessGrant | None:
        """The live grant behind `token`, or None when unknown, expired or revoked."""
        with self._lock:
            grant = self._access.get(token)
            if grant is None:
                return None
            if grant.expires_at <= now or self._revoked(grant.practice_id, grant.issued_at):
                del self._access[token]
                return None
            return grant

    def redeem_refresh(self, token: str, now: dt.datetime) -> RefreshGrant | None:
        """Refresh tokens rotate: a redeemed one is gone, like ModMed's."""
        with self._lock:
            grant = self._refresh.pop(token, None)
            if grant is None or grant.expires_at <= now or self._revoked(grant.practice_id, grant.issued_at):
                return None
            return grant

    def peek_refresh(self, token: str) -> RefreshGrant | None:
        with self._lock:
            return self._refresh.get(token)

    def revoke_practice(self, practice_id: str, now: dt.datetime) -> None:
        with self._lock:
            self._revoked_before[practice_id] = now

    def first_use_of_jti(self, practice_id: str, jti: str, expires_at: dt.datetime, now: dt.datetime) -> bool:
        """Replay protection for client assertions: each jti is accepted once until it expires."""
        with self._lock:
            for key in [k for k, exp in self._seen_jti.items() if exp < now - CLOCK_SKEW]:
                del self._seen_jti[key]
            if (practice_id, jti) in self._seen_jti:
                return False
            self._seen_jti[(practice_id, jti)] = expires_at
            return True


def parse_form(body: bytes, content_type: str | None) -> dict[str, str]:
    """An OAuth form body; repeated or non-UTF-8 parameters are invalid_request (RFC 6749 §3.2)."""
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise OAuthError(400, "invalid_request", "the token request must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as error:
        raise OAuthError(400, "invalid_request", "the token request body is not a valid form") from error
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise OAuthError(400, "invalid_request", f"parameter {key!r} is repeated")
        form[key] = value
    return form


def require(form: dict[str, str], *names: str) -> list[str]:
    missing = [name for name in names if not form.get(name)]
    if missing:
        raise OAuthError(400, "invalid_request", f"missing parameter(s): {', '.join(missing)}")
    return [form[name] for name in names]


def verify_client_assertion(
    assertion: str, *, client_id: str, public_key_pem: str, token_url: str, practice_id: str,
    registry: TokenRegistry, now: dt.datetime,
) -> None:
    """SMART Backend Services checks: RS384 signature, iss = sub = client_id, aud = token URL,
    exp no more than five minutes ahead, jti never seen before."""
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError as error:
        raise OAuthError(401, "invalid_client", "client_assertion is not a JWT") from error
    if header.get("alg") != "RS384":
        raise OAuthError(401, "invalid_client", "client_assertion must be signed with RS384")
    try:
        claims = jwt.decode(
            assertion, public_key_pem, algorithms=["RS384"], audience=token_url,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            leeway=CLOCK_SKEW.total_seconds(),
        )
    except jwt.ExpiredSignatureError as error:
        raise OAuthError(401, "invalid_client", "client_assertion has expired") from error
    except jwt.InvalidAudienceError as error:
        raise OAuthError(401, "invalid_client", "client_assertion aud must be the token endpoint URL") from error
    except jwt.InvalidTokenError as error:
        raise OAuthError(401, "invalid_client", f"client_assertion rejected: {type(error).__name__}") from error
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise OAuthError(401, "invalid_client", "client_assertion iss and sub must be the registered client_id")
    expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
    if expires_at - now > MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
        raise OAuthError(401, "invalid_client", "client_assertion exp must be at most five minutes ahead")
    if not isinstance(claims.get("jti"), str) or not registry.first_use_of_jti(practice_id, claims["jti"], expires_at, now):
        raise OAuthError(401, "invalid_client", "client_assertion jti was already used")
