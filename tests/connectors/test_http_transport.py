"""The FHIR client's transport over real sockets: idle connections a server closed are not reused (over TLS
too), kept connections are, TLS still verifies the server, and every failure keeps its "was the request
sent?" meaning (a write is resent only when it certainly was not)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connectors.http_transport import AiohttpTransport

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 2\r\n\r\n{}"


@asynccontextmanager
async def server(*, close_after_answer: bool = False, ssl_context: ssl.SSLContext | None = None,
                 answer: bytes | None = ANSWER) -> AsyncIterator[tuple[int, list[int]]]:
    """Answers requests with keep-alive implied; with ``close_after_answer`` it then closes the connection
    while the client idles; ``answer`` None: it reads the request and hangs up without a word. Yields the
    port and, per request received, the number of its connection."""
    served: list[int] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await reader.readexactly(2)  # the posted "{}"
                served.append(number)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if close_after_answer:
                    return
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield listener.sockets[0].getsockname()[1], served
    finally:
        listener.close()
        await listener.wait_closed()


async def post_twice(client: httpx.AsyncClient, url: str) -> list[int]:
    statuses = [(await client.post(url, content=b"{}")).status_code]
    await asyncio.sleep(0.1)  # the server's close reaches the idle pooled connection
    statuses.append((await client.post(url, content=b"{}")).status_code)
    return statuses


async def test_a_connection_the_server_closed_while_idle_is_not_reused_for_the_next_write() -> None:
    """Reusing it would send a POST into a dead socket: an unknown outcome where a fresh connection is certain."""
    async with server(close_after_answer=True) as (port, served), \
            httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
        assert await post_twice(client, f"http://127.0.0.1:{port}/Task") == [200, 200]
    assert served == [1, 2]


async def test_a_connection_the_server_keeps_is_reused() -> None:
    async with server(close_after_answer=False) as (port, served), \
            httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
        assert await post_twice(client, f"http://127.0.0.1:{port}/Task") == [200, 200]
    assert served == [1, 1]


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context that trusts only it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    return server, client


@pytest.mark.parametrize(("close_after_answer", "connections"), [(False, [1, 1]), (True, [1, 2])])
async def test_over_tls_kept_connections_are_reused_and_closed_ones_are_not(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext], close_after_answer: bool, connections: list[int],
) -> None:
    server_context, client_context = tls_pair
    transport = AiohttpTransport(limits=LIMITS, ssl_context=client_context)
    async with server(close_after_answer=close_after_answer, ssl_context=server_context) as (port, served), \
            httpx.AsyncClient(transport=transport) as client:
        assert await post_twice(client, f"https://127.0.0.1:{port}/Task") == [200, 200]
    assert served == connections


async def test_tls_still_verifies_the_server(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """The default context trusts the system's authorities only: a self-signed ModMed impostor is refused."""
    server_context, _ = tls_pair
    async with server(close_after_answer=False, ssl_context=server_context) as (port, served), \
            httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"https://127.0.0.1:{port}/Task", content=b"{}")
    assert served == []


async def test_a_refused_connection_is_a_connect_error_nothing_was_sent() -> None:
    async with server() as (port, _):
        pass  # closed again: nothing listens on the port now
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{port}/Task", content=b"{}")


async def test_a_post_the_server_hung_up_on_is_an_unknown_outcome_and_never_resent() -> None:
    """The request arrived: only the connector's "did it land?" check may decide to send it again."""
    async with server(answer=None) as (port, served), \
            httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await client.post(f"http://127.0.0.1:{port}/Task", content=b"{}")
    assert not isinstance(caught.value, httpx.ConnectError)
    assert served == [1]


async def test_a_silent_server_is_a_read_timeout_and_a_cut_answer_a_protocol_error() -> None:
    silent_then_cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"
    async with server(answer=silent_then_cut, close_after_answer=True) as (port, _), \
            httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(f"http://127.0.0.1:{port}/Task", content=b"{}")
    hold = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    listener = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS), timeout=httpx.Timeout(0.3)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(f"http://127.0.0.1:{port}/Task", content=b"{}")
    finally:
        hold.set()
        listener.close()
        await listener.wait_closed()


async def test_a_put_the_server_hung_up_on_is_not_resent_nor_reported_unsent() -> None:
    """aiohttp would send it again itself, and read a refused second connection as "not sent"."""
    received: list[bytes] = []

    async def hang_up_and_stop_listening(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
        await reader.readexactly(2)
        listener.close()  # a second connection would be refused
        writer.close()

    listener = await asyncio.start_server(hang_up_and_stop_listening, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.put(f"http://127.0.0.1:{port}/Appointment/1", content=b"{}")
    assert received == [b"PUT /Appointment/1 HTTP/1.1"]


async def test_the_request_goes_out_as_httpx_built_it() -> None:
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(record, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS)) as client:
            created = await client.post(f"http://127.0.0.1:{port}/Task?identifier=a%7Cb", content=b"{}",
                                        headers={"Content-Type": "application/fhir+json", "If-Match": 'W/"3"'})
            await client.post(f"http://127.0.0.1:{port}/Task/$wake")
    finally:
        listener.close()
        await listener.wait_closed()
    assert created.status_code == 201 and created.http_version == "HTTP/1.1" and created.reason_phrase == "Created"
    first, bodyless = heads
    assert first.startswith(b"POST /Task?identifier=a%7Cb HTTP/1.1\r\n")  # the query as httpx encoded it
    assert b"\r\nIf-Match: W/\"3\"\r\n" in first and b"\r\nContent-Type: application/fhir+json\r\n" in first
    assert first.count(b"Content-Type") == 1 and first.count(b"User-Agent") == 1
    assert b"content-type" not in bodyless.lower(), "no type invented for a request without a body"
