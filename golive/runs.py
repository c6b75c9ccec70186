"""Durable results of go-live checks and promotions: what the phase gate reads.

Each `callstream golive check` appends one JSON line to ``<data_dir>/golive/runs.jsonl`` and each
promotion one to ``promotions.jsonl`` (written whole, flushed and fsynced, so a crash leaves at most a
torn last line, which readers skip). A run names the practices it covered, the SHA-256 of the mirror file
it started the sandbox from and the code version it ran, so the gate can tell a run of today's mirror and
code from an older one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from callstream import __version__
from callstream.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_SUFFIXES = frozenset({".py", ".yaml", ".avsc", ".html"})


def source_packages(root: Path) -> tuple[str, ...]:
    """The product's top-level packages (every directory with an __init__.py but the tests)."""
    return tuple(sorted(path.parent.name for path in root.glob("*/__init__.py") if path.parent.name != "tests"))


class CheckRun(BaseModel):
    """One `golive check`: what it ran against and how it ended."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str
    finished_at: AwareDatetime
    practices: tuple[str, ...]
    mirror_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    code_version: str
    scenarios: int
    passed: int
    failed: tuple[str, ...] = ()
    not_applicable: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def green(self) -> bool:
        return self.scenarios > 0 and self.passed == self.scenarios and not self.failed


class Promotion(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    practice_id: str
    phase_from: str
    phase_to: str
    promoted_by: str
    promoted_at: AwareDatetime
    run_id: str
    code_version: str
    mirror_sha256: str


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_digest(root: Path = REPO_ROOT) -> str:
    """SHA-256 over the product's source files (path and content), independent of git."""
    digest = hashlib.sha256()
    for package in source_packages(root):
        for path in sorted((root / package).rglob("*")):
            if path.suffix in SOURCE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()


def code_version(root: Path = REPO_ROOT) -> str:
    """The git commit when the source is exactly that commit; otherwise the commit (or package version) with
    a digest of the source, so uncommitted changes never pass for the commit they started from."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is not None:
        dirty = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *source_packages(root))
        if dirty == "":
            return commit
        return f"{commit}+src.{source_digest(root)[:16]}"
    return f"{__version__}+src.{source_digest(root)[:16]}"


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


class RunStore:
    """The two JSONL files under ``<data_dir>/golive``."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "golive"

    @property
    def runs_path(self) -> Path:
        return self.directory / "runs.jsonl"

    @property
    def promotions_path(self) -> Path:
        return self.directory / "promotions.jsonl"

    def record_run(self, run: CheckRun) -> None:
        self._append(self.runs_path, run.model_dump_json())

    def record_promotion(self, promotion: Promotion) -> None:
        self._append(self.promotions_path, promotion.model_dump_json())

    def runs(self) -> list[CheckRun]:
        return list(_read(self.runs_path, CheckRun))

    def promotions(self) -> list[Promotion]:
        return list(_read(self.promotions_path, Promotion))

    def latest_run_for(self, practice_id: str) -> CheckRun | None:
        covering = [run for run in self.runs() if practice_id in run.practices]
        return max(covering, key=lambda run: run.finished_at, default=None)

    def _append(self, path: Path, line: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(descriptor, (line + "\n").encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _read(path: Path, model: type[CheckRun] | type[Promotion]) -> Iterable:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    for number, line in enumerate(lines, start=1):
        try:
            yield model.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError):
            if number == len(lines):
                return  # a torn last line after a crash: that record was never complete
            raise ConfigError(f"{path}:{number}: not a {model.__name__} record; the go-live history is damaged") from None
