"""Failure evidence for operators: a screenshot, the page URL, the step and the time of a failed EMA step.

Screens show PHI, so evidence lives only in a restricted directory (0700, files 0600) under
``{data_dir}/ema-evidence/{practice_id}/`` and is never logged or sent anywhere: log lines and errors
carry the evidence *name* only. PDMP content must never leave ModMed, so the PDMP report element is
removed from the page before the screenshot is taken. The newest ``keep_per_practice`` evidence sets
are kept per practice; older ones are deleted as new ones arrive.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from callstream.errors import ConfigError
from connectors.ema.locks import EVIDENCE_NAME, PRACTICE_ID, STEP_NAME

log = logging.getLogger(__name__)

EVIDENCE_DIR_NAME = "ema-evidence"
NEVER_CAPTURED: tuple[str, ...] = ('[data-testid="pdmp-report"]',)
"""Elements removed before any screenshot: PDMP content stays in ModMed, even on a failure."""
SCREENSHOT_TIMEOUT_MS = 5000
_REMOVE_ELEMENTS = """selectors => {
  let removed = 0;
  for (const selector of selectors) {
    for (const element of document.querySelectorAll(selector)) { element.remove(); removed += 1; }
  }
  return removed;
}"""


class EvidenceStore:
    """Writes evidence sets (``{name}.png`` + ``{name}.json``) per practice and prunes old ones."""

    def __init__(self, root: Path, *, keep_per_practice: int = 200) -> None:
        if keep_per_practice < 1:
            raise ConfigError("EMA evidence keep_per_practice must be at least 1")
        self.root = root
        self.keep_per_practice = keep_per_practice

    @classmethod
    def under(cls, data_dir: Path) -> EvidenceStore:
        """The default location: ``{data_dir}/ema-evidence``."""
        return cls(data_dir / EVIDENCE_DIR_NAME)

    def directory(self, practice_id: str) -> Path:
        if not PRACTICE_ID.match(practice_id):
            raise ValueError("not a practice id")
        return self.root / practice_id

    async def capture(self, page: Page, *, practice_id: str, step: str, error_class: str) -> str | None:
        """Save the page as evidence of a failed step; returns the evidence name, or None when nothing could be saved.

        Never raises: evidence is best effort and must not hide the failure it documents.
        """
        if not STEP_NAME.match(step) or not error_class.isidentifier():
            log.warning("EMA evidence for practice %s not captured: malformed step or error class", practice_id)
            return None
        now = datetime.now(UTC)
        name = f"{now:%Y%m%dT%H%M%S%f}Z-{step}-{secrets.token_hex(4)}"
        assert EVIDENCE_NAME.match(name)
        try:
            folder = self._folder(practice_id)
            url = page.url
            redacted = await page.evaluate(_REMOVE_ELEMENTS, list(NEVER_CAPTURED)) if not page.is_closed() else 0
            screenshot: bytes | None = None
            if not page.is_closed():
                screenshot = await page.screenshot(full_page=True, timeout=SCREENSHOT_TIMEOUT_MS)
        except (PlaywrightError, OSError, ValueError) as exc:
            log.warning(
                "EMA evidence for practice %s step %s not captured (%s)", practice_id, step, type(exc).__name__
            )
            return None
        record = {
            "practice_id": practice_id,
            "step": step,
            "error_class": error_class,
            "url": url,
            "captured_at": now.isoformat(),
            "screenshot": f"{name}.png" if screenshot is not None else None,
            "redacted_elements": redacted,
        }
        try:
            if screenshot is not None:
                _write_private(folder / f"{name}.png", screenshot)
            _write_private(folder / f"{name}.json", json.dumps(record, indent=2).encode("utf-8"))
            self._prune(folder)
        except OSError as exc:
            log.warning(
                "EMA evidence for practice %s step %s not written (%s)", practice_id, step, type(exc).__name__
            )
            return None
        return name

    def names(self, practice_id: str) -> list[str]:
        """Evidence names of a practice, oldest first."""
        folder = self.directory(practice_id)
        if not folder.is_dir():
            return []
        return sorted(path.stem for path in folder.glob("*.json") if EVIDENCE_NAME.match(path.stem))

    def _folder(self, practice_id: str) -> Path:
        folder = self.directory(practice_id)
        for directory in (self.root, folder):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if directory.is_symlink() or not directory.is_dir():
                raise OSError(f"{directory} is not a plain directory")
            os.chmod(directory, 0o700)
        return folder

    def _prune(self, folder: Path) -> None:
        stems = sorted({path.stem for path in folder.iterdir() if EVIDENCE_NAME.match(path.stem)})
        for stem in stems[: max(0, len(stems) - self.keep_per_practice)]:
            for suffix in (".png", ".json"):
                (folder / f"{stem}{suffix}").unlink(missing_ok=True)


def _write_private(path: Path, content: bytes) -> None:
    """Create the file 0600 from the start (never world-readable, not even for a moment); no symlink follow."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(handle, "wb") as sink:
        sink.write(content)
