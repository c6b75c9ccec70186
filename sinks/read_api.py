"""The audit read API, served by the process that owns the audit store (`callstream sinks run`).

The embedded chDB admits one process per data directory, so `callstream audit call|calls` (and the QA
view) read through this API while the sinks run, and open the store themselves only when they do not.

- ``GET /v1/calls/{call_id}[?practice=P]``: the per-call record (sinks.call_record.CallAuditRecord, with
  what the caller heard) plus the call's review items (``review_items``; ``review_error`` when the queue does
  not answer).
- ``GET /v1/calls?practice=P[&date=YYYY-MM-DD][&limit=N][&offset=M]``: the practice's calls that began on that
  day (its time zone from the tenant directory, else UTC; default today), oldest first, paged.
- ``GET /v1/digests/figures?practice=P[&date=D]``: the daily digest's figures of that day (with a tenant
  directory).
- ``POST /v1/digests`` with ``{"date": D|null, "practice": P|null}``: send digests now (digest.service; at most
  once per practice and day), when this process has a relay configured.

Bound to 127.0.0.1 by default; on any other address it refuses to start without a bearer token
(``read_api_token_ref``), and with a token every request must carry it. Errors are JSON ``{"error": ...}``.
The address is published in ``data_dir/run/read-api.json`` for clients on the same machine.

The review items and the digest endpoints belong to applications above the sinks (review/, digest/): the API
takes them as the small interfaces below (`ReviewItems`, `SendDigests`, `DigestFigures`), handed in by the
process that composes it (processes/sinks.py), so it never imports them.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

import httpx

from callstream.errors import CallstreamError, ConfigError, ServiceUnavailableError
from callstream.secrets import read_secret
from callstream.settings import Settings, is_loopback, redact_dsn
from callstream.tenants import TenantDirectory
from guards.hours import local_day_window
from sinks.clickhouse_store import AmbiguousCallError, AuditStore, StoreUnavailableError

log = logging.getLogger(__name__)

CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}\Z")
PRACTICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
MAX_PAGE = 1000
MAX_BODY_BYTES = 4096
RUN_FILE = Path("run") / "read-api.json"


SendDigests = Callable[[date | None, str | None], list[dict[str, Any]]]
"""Send the digests of a day (None: today) for one practice (None: all); each outcome as JSON."""
DigestFigures = Callable[[str, date], dict[str, Any]]
"""A practice's digest figures of one day, as JSON."""


class ReviewItems(Protocol):
    """The review items of a call, as the queue renders them (review.reader.ReviewReader is one)."""

    def items(self, practice_id: str, *, call_id: str | None = None) -> list[dict[str, Any]]:
        """Raises ServiceUnavailableError when the items cannot be read now."""
        ...


class NotFoundError(CallstreamError):
    """No such call (HTTP 404)."""


def parse_day(value: str | None, zone: str) -> date:
    """YYYY-MM-DD, or today in ``zone`` when absent."""
    if not value:
        return datetime.now(ZoneInfo(zone)).date()
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise ConfigError("date must be YYYY-MM-DD")


def check_call_id(call_id: str) -> str:
    if not CALL_ID.match(call_id):
        raise ConfigError("call id must be 1-128 letters, digits or . _ : - characters")
    return call_id


def check_practice_id(practice_id: str | None) -> str:
    if not practice_id or not PRACTICE_ID.match(practice_id):
        raise ConfigError("practice must be a practice id (letters, digits, . _ : -)")
    return practice_id


class CallReads:
    """The reads behind the API (and behind `callstream audit` when it opens the store itself)."""

    def __init__(self, store: AuditStore, tenants: TenantDirectory | None = None,
                 reviews: ReviewItems | None = None) -> None:
        self.store = store
        self.tenants = tenants
        self.reviews = reviews
        self._lock = threading.Lock()  # one query at a time on this process's engine connection

    def zone_of(self, practice_id: str) -> str:
        practice = self.tenants.get(practice_id) if self.tenants is not None else None
        return practice.timezone if practice is not None else "UTC"

    def call(self, call_id: str, practice_id: str | None = None) -> dict[str, Any]:
        """Raises NotFoundError, AmbiguousCallError, StoreUnavailableError."""
        with self._lock:
            record = self.store.call_record(check_call_id(call_id), practice_id)
        if record is None:
            raise NotFoundError(f"no audit events for call {call_id}")
        body = record.to_json_dict()
        body["review_items"], body["review_error"] = [], None
        if self.reviews is None:
            body["review_error"] = "review queue not configured"
        else:
            try:
                body["review_items"] = self.reviews.items(record.practice_id, call_id=record.call_id)
            except ServiceUnavailableError as exc:
                body["review_error"] = str(exc)
        return body

    def calls(self, practice_id: str, day: date | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        check_practice_id(practice_id)
        if not (1 <= limit <= MAX_PAGE and 0 <= offset):
            raise ConfigError(f"limit must be 1-{MAX_PAGE} and offset at least 0")
        zone = self.zone_of(practice_id)
        day = day or parse_day(None, zone)
        since, until = local_day_window(day, zone)
        with self._lock:
            calls, total = self.store.list_calls(practice_id, since, until, limit, offset)
        return {"practice_id": practice_id, "date": day.isoformat(), "time_zone": zone, "total": total,
                "offset": offset, "calls": [call.to_json_dict() for call in calls]}


@dataclass
class ReadApiServer:
    """A running API; `close()` stops it and removes the run file it published."""

    server: ThreadingHTTPServer
    thread: threading.Thread
    run_file: Path | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        if self.run_file is not None:
            try:
                if json.loads(self.run_file.read_text()).get("pid") == os.getpid():
                    self.run_file.unlink()
            except (OSError, ValueError):
                pass


def api_token(settings: Settings) -> str | None:
    """The bearer token, when ``read_api_token_ref`` names one (read now; never logged)."""
    return read_secret(settings.read_api_token_ref, "read API token") if settings.read_api_token_ref else None


def serve_read_api(reads: CallReads, host: str, port: int, *, token: str | None = None,
                   send_digests: SendDigests | None = None, digest_figures: DigestFigures | None = None,
                   publish: tuple[Path, str, str] | None = None) -> ReadApiServer:
    """Serve the API from a daemon thread. ``publish`` (data_dir, redacted DSN, database) writes the run file.

    Raises:
        ConfigError: a non-loopback address without a token.
    """
    if not is_loopback(host) and not token:
        raise ConfigError(f"the read API on {host} (not the loopback interface) needs read_api_token_ref")

    class Handler(BaseHTTPRequestHandler):
        server_version = "callstream-read-api"

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            try:
                self._authorised()
                status, body = self._route(method)
            except _HttpError as exc:
                status, body = exc.status, {"error": exc.message}
            except NotFoundError as exc:
                status, body = 404, {"error": str(exc)}
            except AmbiguousCallError as exc:
                status, body = 409, {"error": str(exc)}
            except (StoreUnavailableError, ServiceUnavailableError) as exc:
                status, body = 503, {"error": str(exc)}
            except CallstreamError as exc:  # ConfigError and kin: the request is at fault
                status, body = 400, {"error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - a request must never take the process down
                log.error("read API request failed with %s", type(exc).__name__)
                status, body = 500, {"error": "internal error"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> None:
            if token is None:
                return
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise _HttpError(401, "a valid bearer token is required")

        def _route(self, method: str) -> tuple[int, Any]:
            parts = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            path = parts.path.rstrip("/")
            if method == "GET" and path.startswith("/v1/calls/"):
                return 200, reads.call(unquote(path.removeprefix("/v1/calls/")), query.get("practice") or None)
            if method == "GET" and path == "/v1/calls":
                practice = check_practice_id(query.get("practice"))
                day = parse_day(query.get("date"), reads.zone_of(practice)) if query.get("date") else None
                return 200, reads.calls(practice, day, _int(query, "limit", 100), _int(query, "offset", 0))
            if method == "GET" and path == "/v1/digests/figures":
                if digest_figures is None:
                    raise _HttpError(404, "digest figures need the tenant directory in this process")
                practice = check_practice_id(query.get("practice"))
                return 200, digest_figures(practice, parse_day(query.get("date"), reads.zone_of(practice)))
            if method == "POST" and path == "/v1/digests":
                if send_digests is None:
                    raise _HttpError(404, "this process sends no digests (no SMTP relay or tenant directory)")
                body = self._json_body()
                day = body.get("date")
                practice = body.get("practice")
                if not (day is None or isinstance(day, str)) or not (practice is None or isinstance(practice, str)):
                    raise _HttpError(400, "send JSON {\"date\": \"YYYY-MM-DD\" or null, \"practice\": id or null}")
                return 200, {"results": send_digests(parse_day(day, "UTC") if day else None,
                                                     check_practice_id(practice) if practice else None)}
            raise _HttpError(404 if method == "GET" else 405, "no such endpoint")

        def _json_body(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                raise _HttpError(400, f"send a JSON body of at most {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise _HttpError(400, "send a JSON object")
            return body

        def log_message(self, format: str, *args: object) -> None:
            log.debug("read API: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="read-api", daemon=True)
    thread.start()
    running = ReadApiServer(server, thread)
    if publish is not None:
        data_dir, dsn, database = publish
        try:
            running.run_file = write_run_file(data_dir, {"pid": os.getpid(), "url": running.url, "dsn": dsn,
                                                          "database": database})
        except OSError as exc:  # e.g. a read-only root filesystem (the Helm chart's): the API still serves
            log.warning("read API address not published in %s (%s); clients need CALLSTREAM_READ_API_URL",
                        data_dir / RUN_FILE, type(exc).__name__)
    log.warning("audit read API on %s", running.url)
    return running


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(query.get(name, default))
    except ValueError:
        raise _HttpError(400, f"{name} must be a whole number") from None


def write_run_file(data_dir: Path, content: dict[str, Any]) -> Path:
    path = data_dir / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(content))
    partial.replace(path)
    return path


# ---------------------------------------------------------------------------------------------- client

def discover(settings: Settings, database: str) -> str | None:
    """The read API serving this DSN and database: ``read_api_url``, else a live process's run file."""
    if settings.read_api_url:
        return settings.read_api_url.rstrip("/")
    try:
        published = json.loads((settings.data_dir / RUN_FILE).read_text())
        pid, url = int(published["pid"]), str(published["url"])
        same_store = (published["dsn"], published["database"]) == (redact_dsn(settings.effective_clickhouse_dsn),
                                                                    database)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same_store or not _alive(pid):
        return None
    return url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReadApiClient:
    """`callstream audit` through the API; transport failures raise ServiceUnavailableError."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    def call(self, call_id: str, practice_id: str | None = None) -> dict[str, Any]:
        return self._request("GET", f"/v1/calls/{check_call_id(call_id)}",
                             params={"practice": practice_id} if practice_id else None)

    def calls(self, practice_id: str, day: date | None, limit: int, offset: int) -> dict[str, Any]:
        params = {"practice": practice_id, "limit": str(limit), "offset": str(offset),
                  **({"date": day.isoformat()} if day else {})}
        return self._request("GET", "/v1/calls", params=params)

    def send_digests(self, day: date | None, practice_id: str | None) -> list[dict[str, Any]]:
        body = {"date": day.isoformat() if day else None, "practice": practice_id}
        return self._request("POST", "/v1/digests", json=body)["results"]  # type: ignore[no-any-return]

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = httpx.request(method, self.url + path, headers=self.headers, timeout=self.timeout_s,
                                     trust_env=False, **kwargs)
        except httpx.HTTPError:
            raise ServiceUnavailableError(f"no audit read API answers at {self.url}") from None
        try:
            body = response.json()
        except ValueError:
            raise ServiceUnavailableError(f"the audit read API at {self.url} answered HTTP {response.status_code} "
                                          "without JSON") from None
        if response.status_code == 404 and method == "GET" and path.startswith("/v1/calls/"):
            raise NotFoundError(str(body.get("error")))
        if response.status_code >= 400:
            error = body.get("error", f"HTTP {response.status_code}") if isinstance(body, dict) else response.status_code
            raise (ServiceUnavailableError if response.status_code >= 500 else ConfigError)(
                f"audit read API: {error}")
        return body
