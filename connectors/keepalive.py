"""The FHIR client's HTTP transport: httpx's own, with a cheaper "did the server close it?" check.

Before every request httpcore's pool asks each pooled connection whether it has expired; for an idle
HTTP/1.1 connection that means "is its socket readable?" (an idle socket only turns readable when the
server closed it). anyio answers through its whole socket-attribute table, built afresh on each call
with a ``getpeername`` system call in it: about a quarter of the client's CPU per request in the
pipeline benchmark (py-spy), paid for every pooled connection on every request. This stream answers it
with one ``poll`` on the socket, as anyio's own code does at the end of that path; every other
operation, and every error mapping, stays anyio's.

The pool is httpcore's public ``AsyncConnectionPool`` with its public ``network_backend`` option;
httpx's transport keeps its request/response handling and httpx error types. Installing the pool
uses httpx's private ``_pool`` attribute, hence the pinned httpx and httpcore versions.
"""

from __future__ import annotations

import select
import socket
import ssl
import typing

import httpcore
import httpx


def _readable(sock: socket.socket | None) -> bool:
    """Whether a read would return at once; a socket that is gone counts as readable (closed)."""
    fileno = -1 if sock is None else sock.fileno()
    if fileno < 0:
        return True
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    return bool(poller.poll(0))


class _IdleCheckedStream(httpcore.AsyncNetworkStream):
    """anyio's stream, answering ``is_readable`` straight from its socket."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: socket.socket | None = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _IdleCheckedStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return _readable(self._socket)
        return self._stream.get_extra_info(info)


class _IdleCheckedBackend(httpcore.AnyIOBackend):
    """anyio's backend (connects, timeouts, error mapping); its TCP streams check idleness cheaply."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _IdleCheckedStream(await super().connect_tcp(host, port, timeout, local_address, socket_options))


class KeepAliveTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool whose idle-connection check costs one ``poll`` (module docstring)."""

    def __init__(self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, limits=limits, trust_env=False)  # its pool (no connections yet) is replaced
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_IdleCheckedBackend(),
        )
