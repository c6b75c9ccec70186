"""The multi-practice ModMed FHIR client: one HTTP pool, one guarded chokepoint, per-practice state.

Every request of the connector (token grants included) leaves through ``ModMedClient._call``, which
  * checks the real URL and method against the closed allow-lists (connectors.allow_lists: medication
    writes are never sent, an Observation is only ever searched for the PDMP check);
  * waits for the practice's API-key rate limiter and in-flight cap, and its circuit breaker;
  * authenticates (token cache per practice; on 401 one re-authentication, then AuthError);
  * retries reads with exponential backoff and full jitter inside a time budget, and writes only when the
    failure proves the request never reached ModMed (connection refused, 429);
  * maps ModMed's status codes onto connectors.errors and reports latency to an optional observer.
Resources go in and out as fhir.resources R4B models. Per-practice state (tokens, limiter, breaker) is
connectors.practice_session; reading an answer (size cap, JSON, resources, search pages) is
connectors.fhir_responses; bulk-export files stream through connectors.bulk_files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from fhir.resources.R4B.resource import Resource

from callstream.deadline import Deadline
from callstream.errors import ConfigError, TenantDirectoryError
from callstream.retry import Backoff, retry_after_seconds
from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.allow_lists import (
    WRITE_ALLOW_LIST,
    WritableResource,
    authorize,
    origin,
    resource_url,
)
from connectors.bulk_files import BulkFileStream
from connectors.errors import (
    AuthError,
    CircuitOpenError,
    ConflictError,
    InvalidResponseError,
    ModMedError,
    NotFoundError,
    RateLimitedError,
    RequestNotSentError,
    RetryableError,
    TerminalError,
    WriteNotAllowed,
    error_for_status,
)
from connectors.fhir_responses import (
    UNPARSEABLE,
    FhirResponse,
    R,
    SearchResult,
    bundle_matches,
    decode_json,
    entry_resources,
    id_from_location,
    parse_resource,
    read_capped,
    searchset_page,
)
from connectors.http_transport import AiohttpTransport
from connectors.practice_session import TOKEN_REQUEST_LABEL, PracticeSession
from connectors.ratelimit import RateLimiter, RateLimiterRegistry, WaitPastDeadline

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


_READ = httpx.ByteStream(b"")
"""Stands in for a response's consumed body stream (see ModMedClient._attempt)."""

class RequestObserver(Protocol):
    """Metrics hook (the pipeline wires prometheus); called once per HTTP attempt, never with PHI."""

    def on_request(self, practice_id: str, resource: str, method: str, status: int | None, seconds: float) -> None:
        """``status`` is None when no HTTP response arrived (timeout, connection failure)."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Timeouts and budgets; defaults fit a caller waiting on the phone."""

    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    attempts: int = 3
    request_budget_s: float = 8.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 2.0
    breaker_failure_threshold: int = 5
    breaker_reset_s: float = 15.0
    max_in_flight_per_practice: int = 16
    max_connections: int = 256
    max_response_bytes: int = 8 * 1024 * 1024
    token_refresh_margin_s: float = 60.0
    max_search_pages: int = 10

    @property
    def backoff(self) -> Backoff:
        """Full jitter: many calls retry at once against one ModMed, and each waits inside the caller's budget."""
        return Backoff(base_s=self.backoff_base_s, cap_s=self.backoff_cap_s, jitter="full")

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"connector setting {name} must be a positive number")


class ModMedClient:
    """The async client the pipeline shares across all practices (one keep-alive pool)."""

    def __init__(
        self,
        *,
        config: ClientConfig | None = None,
        observer: RequestObserver | None = None,
        limiters: RateLimiterRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (monotonic seconds) drives token lifetimes and circuit breakers, so tests can move time."""
        self.config = config or ClientConfig()
        self.clock = clock
        self._observer = observer
        self._limiters = limiters or RateLimiterRegistry()
        self._sessions: dict[str, PracticeSession] = {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.read_timeout_s, connect=self.config.connect_timeout_s),
            transport=AiohttpTransport(limits=httpx.Limits(
                max_connections=self.config.max_connections,
                max_keepalive_connections=self.config.max_connections,
            )),
            follow_redirects=False,
            trust_env=False,
        )
        _install_query_redaction()

    async def __aenter__(self) -> ModMedClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.tokens.close()
        await self._http.aclose()

    def session(self, practice: Practice) -> PracticeSession:
        """The practice's session, rebuilt when its directory entry changed (e.g. rotated credentials)."""
        session = self._sessions.get(practice.practice_id)
        if session is None or session.practice != practice:
            try:
                credentials = practice.auth.resolve()
            except TenantDirectoryError as exc:
                raise AuthError(f"credentials unavailable: {exc}", practice_id=practice.practice_id) from None
            api_key = credentials.api_key.get_secret_value() if credentials.api_key else None
            limiter = self._limiters.limiter(practice.practice_id, api_key, practice.rate_limit_per_min)
            session = self._sessions[practice.practice_id] = PracticeSession(practice, credentials, self, limiter)
        return session

    def limiter(self, practice: Practice) -> RateLimiter:
        return self.session(practice).limiter

    # ----------------------------------------------------------------------------------- reads

    async def read(self, practice: Practice, model: type[R], resource_id: str, *, scope: WorkScope = BACKGROUND) -> R:
        """GET {Type}/{id} as the model; NotFoundError when absent."""
        resource_type = model.get_resource_type()
        url = resource_url(practice, resource_type, resource_id)
        response = await self._call(self.session(practice), "GET", url, scope=scope)
        resource = parse_resource(response.body, model, practice.practice_id)
        if resource.id != resource_id:
            raise InvalidResponseError(
                "ModMed answered with a different resource id", practice_id=practice.practice_id,
                resource_type=resource_type, method="GET",
            )
        return resource

    async def search(
        self,
        practice: Practice,
        model: type[R],
        params: Mapping[str, str | Sequence[str]],
        *,
        max_pages: int | None = None,
        scope: WorkScope = BACKGROUND,
    ) -> SearchResult[R]:
        """GET {Type}?params as models, following ``next`` links (same practice only) up to the page budget."""
        resource_type = model.get_resource_type()
        matches: list[R] = []
        more = False
        async for bundle, more in self._pages(practice, resource_type, params,
                                              max_pages or self.config.max_search_pages, scope):
            matches.extend(bundle_matches(bundle, model, practice.practice_id))
        return SearchResult(matches, truncated=more)

    async def search_json(
        self, practice: Practice, resource_type: str, params: Mapping[str, str | Sequence[str]], *,
        scope: WorkScope = BACKGROUND,
    ) -> list[Mapping[str, Any]]:
        """Raw entry resources of every page, for callers that must not even build a full model.

        The compliance reader uses this so PDMP notes are dropped field by field instead of being
        parsed into an object that could end up in a repr or a log. Partial answers fail closed.
        """
        found: list[Mapping[str, Any]] = []
        more = False
        async for bundle, more in self._pages(practice, resource_type, params, self.config.max_search_pages, scope):
            found.extend(entry_resources(bundle, resource_type, practice.practice_id))
        if more:
            raise InvalidResponseError(
                "search has more pages than the page budget", practice_id=practice.practice_id,
                resource_type=resource_type, method="GET",
            )
        return found

    async def _pages(
        self, practice: Practice, resource_type: str, params: Mapping[str, str | Sequence[str]], max_pages: int,
        scope: WorkScope,
    ) -> AsyncIterator[tuple[Mapping[str, Any], bool]]:
        """Each searchset Bundle body, and whether a ``next`` page follows (unread once the budget is spent).

        ``next`` links pass the same URL checks as any request, so they cannot lead off the practice.
        """
        session = self.session(practice)
        url = resource_url(practice, resource_type)
        query: Mapping[str, str | Sequence[str]] | None = params
        for _ in range(max_pages):
            body = (await self._call(session, "GET", url, params=query, scope=scope)).body
            bundle, next_url = searchset_page(body, practice.practice_id, resource_type)
            yield bundle, next_url is not None
            if next_url is None:
                return
            url, query = next_url, None

    # ---------------------------------------------------------------------------------- writes

    async def write(self, practice: Practice, method: Literal["POST", "PUT"], resource: WritableResource, *,
                    scope: WorkScope = BACKGROUND) -> WritableResource:
        """The only write entry: POST (create) or PUT (update) of an allow-listed resource type.

        Not idempotent by itself: use ModMedConnector, which wraps every write in the ledger and the
        practice check. POST is retried only when the failure proves ModMed never received it.
        """
        resource_type = resource.get_resource_type() if isinstance(resource, Resource) else type(resource).__name__
        if (resource_type, method) not in WRITE_ALLOW_LIST or not isinstance(resource, WritableResource):
            raise WriteNotAllowed(
                "write is outside the connector's allow-list", practice_id=practice.practice_id,
                resource_type=resource_type, method=method,
            )
        if method == "POST":
            url = resource_url(practice, resource_type)
            payload = resource.model_dump(mode="json", exclude_none=True, exclude={"id", "meta"})
        else:
            if resource.id is None:
                raise WriteNotAllowed(
                    "update needs the resource id", practice_id=practice.practice_id,
                    resource_type=resource_type, method=method,
                )
            url = resource_url(practice, resource_type, resource.id)
            payload = resource.model_dump(mode="json", exclude_none=True)
        payload["resourceType"] = resource_type
        version = resource.meta.versionId if method == "PUT" and resource.meta else None
        if_match = {"If-Match": f'W/"{version}"'} if version else None
        try:
            response = await self._call(self.session(practice), method, url, json_body=payload, if_match=if_match,
                                        scope=scope)
        except TerminalError as exc:
            if exc.status == 412 and if_match:  # the resource changed since it was read
                raise ConflictError(
                    "resource changed since it was read", practice_id=practice.practice_id,
                    resource_type=resource_type, method=method, status=412, issue_codes=exc.issue_codes,
                ) from None
            raise
        if isinstance(response.body, Mapping) and response.body.get("resourceType") == resource_type:
            return parse_resource(response.body, type(resource), practice.practice_id)
        location = response.headers.get("location") or response.headers.get("content-location")
        created_id = id_from_location(location, resource_type)
        if created_id is None:
            raise InvalidResponseError(
                "write answered with neither the resource nor its Location", practice_id=practice.practice_id,
                resource_type=resource_type, method=method, status=response.status,
            )
        return await self.read(practice, type(resource), created_id, scope=scope)

    # ----------------------------------------------------------------------- bulk (certified)

    async def bulk_request(
        self,
        practice: Practice,
        method: Literal["GET", "DELETE"],
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        prefer_async: bool = False,
    ) -> FhirResponse:
        """Bulk-export control: kick-off, status polling, cancel (connectors.bulk builds the URLs)."""
        headers = {"Prefer": "respond-async"} if prefer_async else None
        return await self._call(self.session(practice), method, url, params=params, extra_headers=headers)

    def stream_file(self, practice: Practice, url: str, *, with_token: bool) -> BulkFileStream:
        """Stream one bulk output file; the token goes only to the practice's own origin."""
        return BulkFileStream(self._http, self.session(practice), url, with_token=with_token)

    # --------------------------------------------------------------------------- chokepoint

    async def _call(
        self,
        session: PracticeSession,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | Sequence[str]] | None = None,
        json_body: Mapping[str, Any] | None = None,
        form: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        if_match: Mapping[str, str] | None = None,
        authenticated: bool = True,
        scope: WorkScope = BACKGROUND,
    ) -> FhirResponse:
        """Send one logical request with the retry, auth, breaker and rate-limit rules above, within ``scope``."""
        label = self._authorize(session, method, url, params)
        practice_id = session.practice_id
        idempotent = method in ("GET", "PUT", "DELETE") or form is not None
        turn = scope.deadline  # a caller's turn (None: background work)
        deadline = time.monotonic() + self.config.request_budget_s
        if turn is not None:
            deadline = min(deadline, turn.at)
        reauthenticated = False
        attempt = 0
        while True:
            attempt += 1
            headers = {"Accept": FHIR_JSON, **(extra_headers or {}), **(if_match or {})}
            api_key = session.tokens.api_key
            if api_key:
                headers["x-api-key"] = api_key
            bearer = None
            if authenticated:  # token requests are calls of their own: own retries, own breaker check
                bearer = await session.tokens.bearer(turn)
                headers["Authorization"] = f"Bearer {bearer}"
            if not session.breaker.allow():
                raise CircuitOpenError(
                    "circuit open after repeated failures", practice_id=practice_id, resource_type=label, method=method
                )
            try:
                response = await self._attempt(session, method, url, label, params, json_body, form, headers, scope)
            except RetryableError as exc:
                session.breaker.on_failure()
                if not (idempotent or isinstance(exc, RequestNotSentError)):
                    raise
                await self._back_off_or_raise(exc, attempt, deadline)
                continue
            except asyncio.CancelledError:
                session.breaker.on_abandon()
                raise
            except RateLimitedError:  # the limiter's own refusal before the caller's deadline: nothing was sent
                session.breaker.on_abandon()
                raise
            except ModMedError:  # ModMed answered, only not usably (e.g. oversize): it is alive
                session.breaker.on_success()
                raise
            status = response.status_code
            if status >= 500 and status != 501:
                session.breaker.on_failure()
            else:
                session.breaker.on_success()
            if status == 429:
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
                pause = session.limiter.record_429(retry_after)
                log.warning("practice %s: ModMed answered 429; pausing the API key %.1fs", practice_id, pause)
                if attempt < self.config.attempts and time.monotonic() + pause < deadline:
                    continue  # a 429 means ModMed processed nothing: safe to resend, even a write
                raise RateLimitedError(
                    "ModMed rate limit hit", retry_after=retry_after, practice_id=practice_id,
                    resource_type=label, method=method, status=429,
                )
            session.limiter.record_accepted()
            body = decode_json(response.content)
            if 200 <= status < 300:
                if body is UNPARSEABLE:
                    raise InvalidResponseError(
                        "ModMed answered with a body that is not JSON", practice_id=practice_id,
                        resource_type=label, method=method, status=status,
                    )
                return FhirResponse(status, response.headers, body)
            if status == 401 and authenticated and bearer is not None and not reauthenticated:
                reauthenticated = True
                log.info("practice %s: ModMed answered 401; re-authenticating once", practice_id)
                await session.tokens.reauthenticate(bearer, turn)
                continue
            error = error_for_status(
                status, practice_id=practice_id, resource_type=label, method=method,
                body=None if body is UNPARSEABLE else body,
            )
            if isinstance(error, RetryableError) and idempotent:
                await self._back_off_or_raise(error, attempt, deadline)
                continue
            raise error

    @staticmethod
    def _authorize(
        session: PracticeSession, method: str, url: str, params: Mapping[str, str | Sequence[str]] | None = None
    ) -> str:
        """The label of an allowed request: the practice's token endpoint, or what the allow-lists
        (connectors.allow_lists.authorize) let through for the method, URL and query really sent."""
        if method == "POST" and session.known_token_url is not None and url == session.known_token_url:
            return TOKEN_REQUEST_LABEL
        return authorize(session.practice, method, url, params)

    async def _attempt(
        self,
        session: PracticeSession,
        method: str,
        url: str,
        label: str,
        params: Mapping[str, str | Sequence[str]] | None,
        json_body: Mapping[str, Any] | None,
        form: Mapping[str, str] | None,
        headers: dict[str, str],
        scope: WorkScope,
    ) -> _Received:
        """One HTTP exchange under the practice's in-flight cap and rate limiter; body size is capped.

        Raises:
            RateLimitedError: the rate limiter's next slot comes after the caller's deadline (nothing sent).
        """
        practice_id = session.practice_id
        content: bytes | None = None
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = FHIR_JSON
        request = self._http.build_request(method, url, params=params, content=content, data=form, headers=headers)
        async with session.in_flight, _rate_slot(session, scope.deadline, label, method):
            status: int | None = None
            started = time.monotonic()
            try:
                response = await self._http.send(request, stream=True)
                try:
                    status = response.status_code
                    body = await read_capped(response, self.config.max_response_bytes, practice_id, label, method)
                finally:
                    await response.aclose()
                    # httpx's response and its body stream refer to each other: a cycle that takes the request,
                    # pool bookkeeping and headers (~30 objects) with it until the cyclic GC runs, and a GC pass
                    # over thousands of them pauses every call in flight. The body is read: drop the stream.
                    response.stream = _READ
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
                raise RequestNotSentError(
                    "could not connect to ModMed", practice_id=practice_id, resource_type=label, method=method
                ) from None
            except httpx.TimeoutException:
                raise RetryableError(
                    "ModMed did not answer in time", practice_id=practice_id, resource_type=label, method=method
                ) from None
            except httpx.TransportError:
                raise RetryableError(
                    "connection to ModMed failed mid-request", practice_id=practice_id, resource_type=label,
                    method=method,
                ) from None
            finally:
                self._observe(practice_id, label, method, status, time.monotonic() - started)
                if scope.writes is not None and method in ("POST", "PUT") and label != TOKEN_REQUEST_LABEL:
                    scope.writes.record(status)  # the event's write tally (write-success drift)
        return _Received(response.status_code, response.headers, body)

    async def _back_off_or_raise(self, error: ModMedError, attempt: int, deadline: float) -> None:
        """Exponential backoff with full jitter, or re-raise when attempts or the budget are spent."""
        if attempt >= self.config.attempts:
            raise error
        delay = self.config.backoff.delay(attempt - 1, random)
        if time.monotonic() + delay >= deadline:
            raise error
        await asyncio.sleep(delay)

    def _observe(self, practice_id: str, label: str, method: str, status: int | None, seconds: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer.on_request(practice_id, label, method, status, seconds)
        except Exception as exc:  # a broken metrics hook must never fail a booking
            log.warning("request observer failed: %s", type(exc).__name__)


@dataclass(frozen=True, slots=True)
class _Received:
    status_code: int
    headers: httpx.Headers
    content: bytes


@asynccontextmanager
async def _rate_slot(session: PracticeSession, turn: Deadline | None, label: str, method: str) -> AsyncIterator[None]:
    """The practice's rate-limit slot; a slot past the caller's deadline is a typed refusal (nothing sent)."""
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(session.limiter.slot(turn))
        except WaitPastDeadline as exc:
            raise RateLimitedError(
                "the practice's rate budget has no slot before the caller's deadline", retry_after=exc.wait_s,
                practice_id=session.practice_id, resource_type=label, method=method,
            ) from None
        yield


class _QueryRedaction(logging.Filter):
    """httpx logs every request URL at INFO; search queries carry names and birth dates (PHI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 2 and isinstance(record.args[1], httpx.URL):
            url = record.args[1]
            if url.query:
                record.args = (record.args[0], str(url.copy_with(query=None)) + "?<redacted>", *record.args[2:])
        return True


def _install_query_redaction() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(existing, _QueryRedaction) for existing in httpx_logger.filters):
        httpx_logger.addFilter(_QueryRedaction())
