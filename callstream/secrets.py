"""Secrets named by reference (``env:VAR`` or ``file:/path``), as the tenant directory names them.

Settings and the tenant directory hold only the reference; the value is read when it is needed and never
logged: errors name the reference and the reason, never the content.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from callstream.errors import ConfigError


def read_secret(reference: str, purpose: str) -> str:
    """The secret text a reference names, stripped of surrounding whitespace.

    Raises:
        ConfigError: an unknown form, an unset variable, an unreadable or empty file.
    """
    kind, _, target = reference.partition(":")
    if kind == "env" and target:
        value = os.environ.get(target)
        if value is None:
            raise ConfigError(f"{purpose} reference {reference}: variable is not set")
    elif kind == "file" and target:
        try:
            value = Path(target).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{purpose} reference {reference}: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{purpose} reference {reference}: not UTF-8 text") from None
    else:
        raise ConfigError(f"{purpose} reference must be env:VARIABLE or file:/path")
    value = value.strip()
    if not value:
        raise ConfigError(f"{purpose} reference {reference}: empty")
    return value


def read_login(reference: str, purpose: str) -> tuple[str, str]:
    """A ``{"username": ..., "password": ...}`` JSON secret as a pair.

    Raises:
        ConfigError: see `read_secret`, or not such a JSON object.
    """
    try:
        login = json.loads(read_secret(reference, purpose))
    except json.JSONDecodeError:
        login = None
    if not (isinstance(login, dict) and isinstance(login.get("username"), str) and isinstance(login.get("password"), str)
            and login["username"] and login["password"]):
        raise ConfigError(f"{purpose} reference {reference}: not a JSON object with username and password")
    return login["username"], login["password"]
