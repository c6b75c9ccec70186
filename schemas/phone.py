"""Telephone numbers in E.164 form: the one rule call events (schemas.models) and the practice directory
(callstream.tenants) both apply, so a number the directory accepts is one an event may carry, and back.

E.164 caps a number at 15 digits after the +, country code included. The shortest in service have 7
(Saint Helena +290 and Niue +683: a three-digit country code and four-digit numbers), so 7 to 15 digits,
never starting with 0. ASCII digits only: Python's ``\\d`` also matches other scripts' digits, which no
telephone network sends.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

E164_RULE = "+ then 7-15 digits, the first not 0"
"""How error messages state the rule."""
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
"""For pydantic (a Rust regex: ``$`` is the end of the text, no trailing newline allowed)."""
E164Number = Annotated[str, StringConstraints(pattern=E164_PATTERN)]

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def is_e164(text: str) -> bool:
    """Whether ``text`` is exactly one E.164 number (no spaces, no trailing newline)."""
    return _E164.fullmatch(text) is not None
