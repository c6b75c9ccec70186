"""Commands to print for a user (the demo's hints): written so they run as printed from the current directory.

`make demo` runs ``.venv/bin/callstream``, which is not on the PATH, and a test runs ``python -m
callstream.cli``; a hint names the same program this process was started from, and the environment
settings the command needs to find the same data.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path


def _shortest(path: Path) -> str:
    """Relative to the current directory when below it (``.venv/bin/callstream``), else absolute."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def cli_words() -> list[str]:
    """How to run `callstream` here: its name when the PATH finds this installation, else its path."""
    script = Path(sys.prefix) / "bin" / "callstream"
    found = shutil.which("callstream")
    if found is not None and script.exists() and Path(found).resolve() == script.resolve():
        return ["callstream"]
    if script.exists():
        return [_shortest(script)]
    return [_shortest(Path(sys.executable)), "-m", "callstream.cli"]


def command_line(*arguments: str, env: Mapping[str, str] | None = None) -> str:
    """A shell command line: ``VAR=value ... callstream arguments...``, quoted for a POSIX shell."""
    assignments = [f"{name}={shlex.quote(value)}" for name, value in (env or {}).items()]
    return " ".join([*assignments, shlex.join([*cli_words(), *arguments])])
