"""The FHIR client's HTTP transport: httpx's interface over aiohttp's connection pool and C parser.

httpx stays the client (request building, auth headers, response decoding, its typed errors and the
query-redacting request log); only the exchange on the wire is aiohttp's. httpx's own transport
(httpcore and the pure-Python h11 parser) cost about 0.67 ms of CPU per request, this one 0.10 ms
(the same GETs against the sandbox, `docs/benchmarks.md`): on the worker's single event loop every
ModMed request paid that before the next caller's turn could run.

Errors keep the meaning the connector's write safety rests on (connectors/fhir.py):

- ``httpx.ConnectError`` / ``httpx.ConnectTimeout``: no byte of the request left. aiohttp raises these
  while it takes a pooled connection or opens one (refused, DNS, TLS handshake or certificate, connect
  timeout), always before it writes;
- every other failure, once a connection was handed over, is ``httpx.ReadTimeout`` or
  ``httpx.RemoteProtocolError``: the request may have arrived, and a write is resent only after the
  practice was asked whether it landed.

So the transport itself never sends a request twice: aiohttp's own resend of a GET or PUT whose
connection dropped (RFC 9112 §9.3.1) is switched off, or a PUT that arrived, followed by a resend that
could not connect, would read "not sent". That switch is a private attribute (aiohttp is pinned, and
``tests/connectors/test_http_transport.py`` fails if it stops working; it is pinned with the other private
names callstream relies on in ``streams.faust_boundary.PRIVATE_DEPENDENCIES``). httpx's write timeout and its
separate keep-alive connection cap have no aiohttp counterpart: writes are bounded by the read timeout
and the dispatcher's deadline, keep-alive connections by ``max_connections``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
from yarl import URL

READ_CHUNK_BYTES = 64 * 1024
KEEPALIVE_FOREVER_S = 24 * 3600.0
"""httpx's ``keepalive_expiry=None`` (never expire), which aiohttp has no value for."""
_HTTPX_SETS = ("Content-Type", "User-Agent", "Accept", "Accept-Encoding")
"""Headers aiohttp would add on its own: httpx already set what it means to send (no body: no type)."""


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as httpx reads it: raw bytes (httpx decodes), aiohttp errors as httpx's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(READ_CHUNK_BYTES):
                yield chunk
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout("ModMed stopped sending its answer") from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"answer broken off ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, opened on first use (it belongs to a running loop)."""

    def __init__(self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        self._limits = limits
        self._ssl = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            expiry = self._limits.keepalive_expiry
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=KEEPALIVE_FOREVER_S if expiry is None else expiry,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the client's cookies
                auto_decompress=False,  # httpx decodes the body by its Content-Encoding
                skip_auto_headers=_HTTPX_SETS,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._session._retry_connection = False  # only the connector decides about a resend
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        connect, pool, read = timeout.get("connect"), timeout.get("pool"), timeout.get("read")
        body = await request.aread()
        try:
            response = await self._open().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw],
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=None if connect is None or pool is None else connect + pool,
                    sock_connect=connect,
                    sock_read=read,
                ),
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout("no connection to ModMed in time", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(f"could not connect to ModMed ({type(exc).__name__})", request=request) from exc
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout("ModMed did not answer in time", request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"exchange broken off ({type(exc).__name__})", request=request) from exc
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response),
            request=request,
            extensions={
                "http_version": f"HTTP/{response.version.major}.{response.version.minor}".encode("ascii"),
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
