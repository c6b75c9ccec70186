"""The /metrics, /healthz and /readyz HTTP endpoint every callstream process serves (worker, sinks).

Lives below both `streams` and `sinks` so each process serves the same probe paths the Helm chart
targets: `PROBE_PATHS` is what tests/helm checks every probe against.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from callstream.errors import PortInUseError

logger = logging.getLogger(__name__)

PROBE_PATHS: frozenset[str] = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})


class MetricsServer:
    """A running /metrics + probe endpoint; `close()` stops it and joins its thread."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (useful when 0 asked the OS for a free one)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _probe_passes(check: Callable[[], bool], probe: str) -> bool:
    """Run a health callable; a raising check is a failing probe, logged by exception class only."""
    try:
        return bool(check())
    except Exception as error:  # any failure of the check means "not healthy"
        logger.warning("%s check raised %s", probe, type(error).__name__)
        return False


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    readiness: Callable[[], bool] = lambda: True,
    liveness: Callable[[], bool] = lambda: True,
) -> MetricsServer:
    """Serve /metrics, /healthz (liveness) and /readyz (readiness) from a daemon thread.

    prometheus_client's own server answers every path with metrics, so the Helm probes
    need this small server; it keeps the exposition content negotiation of the library.
    """

    class Handler(BaseHTTPRequestHandler):
        server_version = "callstream-metrics"

        def do_GET(self) -> None:
            self._respond(include_body=True)

        def do_HEAD(self) -> None:
            self._respond(include_body=False)

        def _respond(self, include_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(registry), content_type, include_body)
            elif path in ("/healthz", "/livez"):
                self._send_probe(_probe_passes(liveness, "liveness"), include_body)
            elif path == "/readyz":
                self._send_probe(_probe_passes(readiness, "readiness"), include_body)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", include_body)

        def _send_probe(self, passing: bool, include_body: bool) -> None:
            body = b"ok\n" if passing else b"unavailable\n"
            self._send(200 if passing else 503, body, "text/plain; charset=utf-8", include_body)

        def _send(self, status: int, body: bytes, content_type: str, include_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if include_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("metrics endpoint: " + format, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise PortInUseError(f"cannot serve metrics on {host}:{port}: {exc.strerror}; free the port or choose "
                             "another with --metrics-port") from None
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name="callstream-metrics",
        daemon=True,
    )
    thread.start()
    return MetricsServer(server, thread)
