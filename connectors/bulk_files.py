"""One bulk-export output file, streamed line by line: the one ModMed download outside the JSON chokepoint.

A certified practice's ``$export`` (connectors.bulk) ends in NDJSON files too large to read whole, so
they are streamed instead of passing through ModMedClient._call. The stream keeps the chokepoint's
rules that apply to a file: the practice's rate limiter and circuit breaker, GET only, and the bearer
token only for a file on the practice's own origin (a storage link elsewhere gets no token).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
import httpx

from connectors.allow_lists import origin, relative_path
from connectors.errors import CircuitOpenError, RetryableError, error_for_status
from connectors.practice_session import PracticeSession


class BulkFileStream:
    """Async context manager yielding the lines of one bulk file (see ModMedClient.stream_file)."""

    def __init__(self, http: httpx.AsyncClient, session: PracticeSession, url: str, *, with_token: bool) -> None:
        self._http = http
        self._session = session
        self._url = url
        self._with_token = with_token and relative_path(url, origin(session.practice.fhir_base)) is not None
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> BulkFileStream:
        session = self._session
        headers = {"Accept": "application/fhir+ndjson"}
        if self._with_token:
            headers["Authorization"] = f"Bearer {await session.tokens.bearer()}"
        if not session.breaker.allow():
            raise CircuitOpenError("circuit open after repeated failures", practice_id=session.practice_id,
                                   resource_type="bulk-file", method="GET")
        request = self._http.build_request("GET", self._url, headers=headers)
        async with session.limiter.slot():
            try:
                self._response = await self._http.send(request, stream=True)
            except httpx.TransportError:
                session.breaker.on_failure()
                raise RetryableError("bulk file download failed", practice_id=session.practice_id,
                                     resource_type="bulk-file", method="GET") from None
        status = self._response.status_code
        if status != 200:
            await self._response.aclose()
            (session.breaker.on_failure if status >= 500 else session.breaker.on_success)()
            raise error_for_status(status, practice_id=session.practice_id, resource_type="bulk-file", method="GET")
        session.breaker.on_success()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._response is not None:
            await self._response.aclose()

    async def lines(self) -> AsyncIterator[str]:
        """Each non-empty line of the file, decoded, as it arrives."""
        assert self._response is not None, "use inside 'async with'"
        try:
            async for line in self._response.aiter_lines():
                if line.strip():
                    yield line
        except httpx.TransportError:
            raise RetryableError("bulk file download broke off", practice_id=self._session.practice_id,
                                 resource_type="bulk-file", method="GET") from None
