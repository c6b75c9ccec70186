"""How every callstream process logs: one handler on stderr, text for a terminal or JSON lines for a shipper.

At the default level (INFO) a person reads a few start-up lines (what runs, where its metrics are, which
practices) and then only what needs attention: the libraries' own INFO chatter (Faust's table and
topic listings, aiokafka's group joins) is held back and shows again at DEBUG. httpx and aiohttp's
access log stay at WARNING at every level: their request lines carry FHIR search parameters (names,
birth dates) and tokens.

The JSON lines hold the time, level, logger and message, and for an exception only its class: a
traceback's message can quote the value that failed (a name, a phone number), which must not leave
the process through a log shipper.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

CHATTY_LIBRARIES = ("faust", "mode", "aiokafka", "uvicorn", "clickhouse_connect")
"""Loggers whose INFO is about their own machinery, held at WARNING unless the level is DEBUG."""
PHI_BEARING_LOGGERS = ("httpx", "httpcore", "aiohttp.access")
"""Loggers whose INFO or DEBUG lines carry request URLs: WARNING at every level."""


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record; an exception appears as its class name only (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text", stream: TextIO | None = None, *,
                      replace_handlers: bool = False) -> None:
    """Install callstream's handler on the root logger and set the levels (see the module docstring).

    A root logger that already has someone else's handler (a test runner's) keeps it and gets no second
    one, unless `replace_handlers` (Faust's worker installs its own, which this replaces). Calling it
    again replaces callstream's own handler, so the last level and format win.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if replace_handlers or isinstance(old, _CallstreamHandler):
            root.removeHandler(old)
    if not root.handlers:
        handler = _CallstreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonLineFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
        root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    library_level = logging.DEBUG if root.level <= logging.DEBUG else max(root.level, logging.WARNING)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    for name in PHI_BEARING_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))


class _CallstreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs, told apart from other handlers on the root logger."""
