"""callstream's log handler: text or JSON lines on stderr, library chatter held back, no exception text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from callstream.logs import CHATTY_LIBRARIES, PHI_BEARING_LOGGERS, configure_logging


@pytest.fixture
def root_restored() -> Iterator[None]:
    """Whatever a test does to the root logger (it replaces the test runner's handlers), undone after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in (*CHATTY_LIBRARIES, *PHI_BEARING_LOGGERS)}
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def test_json_lines_carry_the_exception_class_not_its_text(root_restored: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out, replace_handlers=True)
    logging.getLogger("callstream.worker").info("callstream worker: %d practices", 3)
    try:
        raise ValueError("caller +15125550142 not found")
    except ValueError:
        logging.getLogger("streams.processor").exception("turn failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "callstream.worker"
    assert first["message"] == "callstream worker: 3 practices" and first["time"].endswith("+00:00")
    assert second == {**second, "level": "ERROR", "message": "turn failed", "exception": "ValueError"}
    assert "+15125550142" not in out.getvalue()


def test_library_chatter_shows_at_debug_only_and_request_urls_never(root_restored: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "text", out, replace_handlers=True)
    logging.getLogger("faust.tables.table").info("[^---Table]: Starting...")
    logging.getLogger("httpx").info("HTTP Request: GET /Patient?family=Smith&birthdate=1960-01-01")
    logging.getLogger("faust.worker").warning("consumer lagging")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("WARNING faust.worker: consumer lagging")

    configure_logging("DEBUG", "text", out)  # again: replaces its own handler, the last level wins
    logging.getLogger("faust.tables.table").info("[^---Table]: Starting...")
    logging.getLogger("httpx").info("HTTP Request: GET /Patient?family=Smith")
    assert "Table]: Starting" in out.getvalue() and "family=Smith" not in out.getvalue()
    assert len(logging.getLogger().handlers) == 1


def test_someone_elses_handler_is_kept_unless_replaced(root_restored: None) -> None:
    theirs = logging.StreamHandler(io.StringIO())
    logging.getLogger().handlers[:] = [theirs]
    configure_logging("INFO", "text", io.StringIO())
    assert logging.getLogger().handlers == [theirs]
    configure_logging("INFO", "text", io.StringIO(), replace_handlers=True)  # Faust's worker installs its own
    assert theirs not in logging.getLogger().handlers and len(logging.getLogger().handlers) == 1
