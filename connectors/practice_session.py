"""One practice's standing at ModMed: its token cache, rate limiter, circuit breaker and in-flight cap.

The FHIR client (connectors.fhir) keeps one PracticeSession per practice, rebuilt when the practice's
directory entry changes (rotated credentials). The session finds the token endpoint (configured, the
proprietary grant URL, or SMART discovery, which may never send an assertion over plain http to
another host) and fetches tokens through the client's chokepoint, so a token grant obeys the same
allow-lists, limiter and breaker as every FHIR request; a grant the endpoint refuses is an AuthError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from callstream.deadline import Deadline
from callstream.tenants import ApiTrack, Credentials, Practice
from callstream.work_scope import BACKGROUND
from connectors.allow_lists import origin
from connectors.auth import AccessToken, TokenCache, grant_for, parse_token_response
from connectors.breaker import CircuitBreaker
from connectors.errors import AuthError, ConflictError, InvalidResponseError, NotFoundError, TerminalError
from connectors.ratelimit import RateLimiter

if TYPE_CHECKING:
    from connectors.fhir import ModMedClient

TOKEN_REQUEST_LABEL = "token"
"""The resource label of token-endpoint requests (errors and RequestObserver calls): not a FHIR resource."""


class PracticeSession:
    """Everything per practice: credentials-derived token cache, limiter, breaker, in-flight cap."""

    def __init__(
        self, practice: Practice, credentials: Credentials, client: ModMedClient, limiter: RateLimiter
    ) -> None:
        self.practice = practice
        self.limiter = limiter
        config = client.config
        self.breaker = CircuitBreaker(
            failure_threshold=config.breaker_failure_threshold, reset_after_s=config.breaker_reset_s,
            clock=client.clock,
        )
        self.in_flight = asyncio.Semaphore(config.max_in_flight_per_practice)
        self._client = client
        self.known_token_url: str | None = practice.auth.token_url or (
            practice.token_url if practice.track is ApiTrack.PROPRIETARY else None
        )
        self.tokens = TokenCache(grant_for(practice, credentials), self.token_url, self._fetch_token, clock=client.clock)

    @property
    def practice_id(self) -> str:
        return self.practice.practice_id

    async def token_url(self, deadline: Deadline | None = None) -> str:
        """The token endpoint: configured, the proprietary grant URL, or SMART discovery (certified)."""
        if self.known_token_url is None:
            response = await self._client._call(
                self, "GET", f"{self.practice.fhir_base}/.well-known/smart-configuration", authenticated=False,
                scope=BACKGROUND.under(deadline),
            )
            endpoint = response.body.get("token_endpoint") if isinstance(response.body, Mapping) else None
            if not isinstance(endpoint, str) or not _acceptable_token_endpoint(endpoint, self.practice.fhir_base):
                raise InvalidResponseError(
                    "SMART configuration lacks a usable token_endpoint", practice_id=self.practice_id
                )
            self.known_token_url = endpoint
        return self.known_token_url

    async def _fetch_token(self, form: dict[str, str], deadline: Deadline | None) -> AccessToken:
        """One token request; a 4xx refusal (RFC 6749 answers ``400 invalid_grant`` for a bad password or
        refresh token) is an AuthError: the credentials need an operator, retrying cannot help."""
        try:
            response = await self._client._call(self, "POST", await self.token_url(deadline), form=form,
                                                authenticated=False, scope=BACKGROUND.under(deadline))
        except (TerminalError, NotFoundError, ConflictError) as exc:
            if exc.status is None or not 400 <= exc.status < 500:
                raise
            raise AuthError(
                "the token endpoint refused the grant", practice_id=self.practice_id,
                resource_type=TOKEN_REQUEST_LABEL, method="POST", status=exc.status, issue_codes=exc.issue_codes,
            ) from None
        return parse_token_response(
            response.body,
            practice_id=self.practice_id,
            now=self._client.clock(),
            refresh_margin_s=self._client.config.token_refresh_margin_s,
        )


def _acceptable_token_endpoint(endpoint: str, fhir_base: str) -> bool:
    """SMART discovery may point elsewhere, but never to plain http on another host (assertion leak)."""
    parts = urlsplit(endpoint)
    return parts.scheme == "https" or (parts.scheme == "http" and origin(endpoint) == origin(fhir_base))
