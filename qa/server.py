"""The QA app on uvicorn in a thread of the process that has the audit store open (qa/cli.py, the demo,
the tests). The access log is off: request lines carry call ids and filter values, and a log is no place
to reconstruct who looked at which patient's call."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn

from callstream.backends import free_port
from callstream.errors import ServiceUnavailableError
from qa.app import QaConfig, build_app

START_TIMEOUT_S = 15.0


class QaServer:
    """Serves `build_app(config)` on ``host:port`` (0: a free port) until the with-block ends."""

    def __init__(self, config: QaConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(uvicorn.Config(build_app(config), host=host, port=self.port, access_log=False,
                                                     log_level="warning", server_header=False))
        self._thread = threading.Thread(target=self._server.run, name="qa-web", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> QaServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServiceUnavailableError(f"the QA view could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._server.should_exit = True
        self._thread.join(10)
