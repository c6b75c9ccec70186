"""Pluggable per-practice authentication and the per-practice token cache.

ModMed's proprietary track uses the password grant (being replaced by client_credentials); the
certified track uses SMART backend services (client_credentials with an RS384 JWT assertion). Each
strategy only builds token-request forms; the client sends them, so every byte to ModMed passes the
same rate limiter, breaker and timeouts. Secrets stay in SecretStr until the moment a form is built
and never appear in a repr, an exception message or a log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from pydantic import SecretStr

from callstream.deadline import Deadline
from callstream.tenants import AuthMethod, Credentials, Practice
from connectors.errors import AuthError, InvalidResponseError, ModMedError

log = logging.getLogger(__name__)

JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300
SMART_BACKEND_SCOPE = "system/*.rs"
MAX_TOKEN_LIFETIME_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token and when to stop using it (monotonic clock)."""

    value: SecretStr
    expires_at: float
    refresh_after: float
    refresh_token: SecretStr | None = field(default=None)

    def __repr__(self) -> str:
        return f"AccessToken(expires_at={self.expires_at:.0f}, refreshable={self.refresh_token is not None})"


class TokenGrant(ABC):
    """How one practice obtains a token: the form of the initial grant and of a refresh."""

    def __init__(self, practice_id: str, credentials: Credentials) -> None:
        self.practice_id = practice_id
        self._credentials = credentials

    @property
    def api_key(self) -> str | None:
        """The x-api-key header value, when the practice's track uses one."""
        key = self._credentials.api_key
        return key.get_secret_value() if key else None

    @abstractmethod
    def grant_form(self, token_url: str) -> dict[str, str]:
        """Form fields of a fresh grant."""

    def refresh_form(self, refresh_token: SecretStr) -> dict[str, str] | None:
        """Form fields of a refresh-token grant, or None when the method has no refresh (grant again)."""
        return None

    def _require(self, value: SecretStr | str | None, name: str) -> str:
        if value is None or not (value.get_secret_value() if isinstance(value, SecretStr) else value):
            raise AuthError(
                f"credentials lack {name} required by the {type(self).__name__}", practice_id=self.practice_id
            )
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(practice_id={self.practice_id!r})"


class PasswordGrant(TokenGrant):
    """ModMed's proprietary password grant, with refresh tokens."""

    def grant_form(self, token_url: str) -> dict[str, str]:
        return {
            "grant_type": "password",
            "username": self._require(self._credentials.username, "username"),
            "password": self._require(self._credentials.password, "password"),
        }

    def refresh_form(self, refresh_token: SecretStr) -> dict[str, str] | None:
        return {"grant_type": "refresh_token", "refresh_token": refresh_token.get_secret_value()}


class ClientCredentialsGrant(TokenGrant):
    """OAuth client_credentials with a client secret (the password grant's announced successor)."""

    def grant_form(self, token_url: str) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": self._require(self._credentials.client_id, "client_id"),
            "client_secret": self._require(self._credentials.client_secret, "client_secret"),
        }


class PrivateKeyJwtGrant(TokenGrant):
    """SMART backend services: client_credentials with an RS384-signed, 5-minute, single-use assertion."""

    def __init__(self, practice_id: str, credentials: Credentials, *, scope: str = SMART_BACKEND_SCOPE) -> None:
        super().__init__(practice_id, credentials)
        self._scope = scope

    def grant_form(self, token_url: str) -> dict[str, str]:
        client_id = self._require(self._credentials.client_id, "client_id")
        private_key = self._require(self._credentials.private_key_pem, "private_key_pem")
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self._credentials.key_id} if self._credentials.key_id else None
        try:
            assertion = jwt.encode(claims, private_key, algorithm="RS384", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError):
            raise AuthError("private_key_pem is not a usable RSA private key", practice_id=self.practice_id) from None
        return {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "client_assertion": assertion,
        }


def grant_for(practice: Practice, credentials: Credentials) -> TokenGrant:
    """The strategy the practice's directory entry asks for."""
    method = practice.auth.method
    if method is AuthMethod.PASSWORD:
        return PasswordGrant(practice.practice_id, credentials)
    if method is AuthMethod.CLIENT_CREDENTIALS:
        return ClientCredentialsGrant(practice.practice_id, credentials)
    return PrivateKeyJwtGrant(practice.practice_id, credentials)


def parse_token_response(body: Any, *, practice_id: str, now: float, refresh_margin_s: float) -> AccessToken:
    """Validate a token endpoint's JSON; a malformed answer is a typed error, never a crash."""
    if not isinstance(body, Mapping):
        raise InvalidResponseError("token endpoint answered with a non-object body", practice_id=practice_id)
    access = body.get("access_token")
    if not isinstance(access, str) or not access or len(access) > 8192:
        raise InvalidResponseError("token endpoint answered without a usable access_token", practice_id=practice_id)
    token_type = body.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise InvalidResponseError("token endpoint answered with a non-bearer token_type", practice_id=practice_id)
    lifetime = body.get("expires_in", 300)
    if isinstance(lifetime, str) and lifetime.isdigit():
        lifetime = int(lifetime)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        raise InvalidResponseError("token endpoint answered with an invalid expires_in", practice_id=practice_id)
    lifetime = min(float(lifetime), MAX_TOKEN_LIFETIME_S)
    refresh = body.get("refresh_token")
    margin = min(refresh_margin_s, lifetime / 5)
    return AccessToken(
        value=SecretStr(access),
        expires_at=now + lifetime,
        refresh_after=now + lifetime - margin,
        refresh_token=SecretStr(refresh) if isinstance(refresh, str) and refresh else None,
    )


def _refresh_refused(error: ModMedError) -> bool:
    """The token endpoint turned the refresh token down (any 4xx but 429, e.g. RFC 6749 ``400 invalid_grant``).

    429 says nothing about the token (the key is rate limited), so the refresh token is kept.
    """
    return isinstance(error, AuthError) or (error.status is not None and 400 <= error.status < 500 and error.status != 429)


TokenFetcher = Callable[[dict[str, str], Deadline | None], Awaitable[AccessToken]]
"""Sends one token-request form within the caller's deadline (None: no caller waits) and returns the parsed
token (the client's transport)."""


class TokenCache:
    """One practice's current token: single-flight fetch, refresh-ahead before expiry, one re-auth on 401.

    While a token is valid but past its refresh point, callers keep using it and one background task
    refreshes it, so no caller on the phone waits for the token endpoint in steady state.
    """

    def __init__(
        self, grant: TokenGrant, token_url: Callable[[Deadline | None], Awaitable[str]], fetch: TokenFetcher,
        *, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._grant = grant
        self._token_url = token_url
        self._fetch = fetch
        self._clock = clock
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    @property
    def api_key(self) -> str | None:
        return self._grant.api_key

    async def bearer(self, deadline: Deadline | None = None) -> str:
        """A valid access token value, fetching or refreshing as needed within the caller's ``deadline``
        (a refresh ahead of expiry runs in the background under it too)."""
        token = self._token
        now = self._clock()
        if token is not None and now < token.expires_at:
            if now >= token.refresh_after and self._background is None:
                self._background = asyncio.create_task(self._refresh_in_background(token, deadline))
            return token.value.get_secret_value()
        return (await self._renew(token, deadline)).value.get_secret_value()

    async def reauthenticate(self, rejected: str, deadline: Deadline | None = None) -> str:
        """ModMed answered 401 to ``rejected``: renew once (unless another caller already did)."""
        token = self._token
        if token is not None and token.value.get_secret_value() != rejected:
            return token.value.get_secret_value()
        return (await self._renew(token, deadline, force=True)).value.get_secret_value()

    async def _renew(self, seen: AccessToken | None, deadline: Deadline | None, *,
                     force: bool = False) -> AccessToken:
        async with self._lock:
            current = self._token
            if current is not None and current is not seen and self._clock() < current.expires_at:
                return current  # another coroutine renewed while we waited for the lock
            if current is not None and not force and self._clock() < current.expires_at:
                return current
            self._token = await self._obtain(current, deadline)
            return self._token

    async def _obtain(self, previous: AccessToken | None, deadline: Deadline | None) -> AccessToken:
        """Refresh with the refresh token when there is one; a refused refresh falls back to one fresh grant.

        A refused refresh token is dropped before the fresh grant is tried, so even when that grant
        fails too (a transient 5xx), later calls go straight to a fresh grant instead of presenting
        the dead refresh token for ever.
        """
        if previous is not None and previous.refresh_token is not None:
            form = self._grant.refresh_form(previous.refresh_token)
            if form is not None:
                try:
                    return await self._fetch(form, deadline)
                except ModMedError as exc:
                    if not _refresh_refused(exc):
                        raise
                    self._token = dataclasses.replace(previous, refresh_token=None)
                    log.info(
                        "practice %s: refresh token refused (%s); using a fresh grant",
                        self._grant.practice_id, exc.status,
                    )
        return await self._fetch(self._grant.grant_form(await self._token_url(deadline)), deadline)

    async def _refresh_in_background(self, seen: AccessToken, deadline: Deadline | None) -> None:
        try:
            await self._renew(seen, deadline, force=True)
        except ModMedError as exc:
            log.warning("practice %s: background token refresh failed: %s", self._grant.practice_id, type(exc).__name__)
        finally:
            self._background = None

    async def close(self) -> None:
        """Stop a background refresh (client shutdown)."""
        task = self._background
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
