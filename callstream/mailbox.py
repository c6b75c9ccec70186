"""E-mail addresses callstream sends to (digest recipients) or from: one grammar for settings and the tenant
directory.

Deliberately narrower than RFC 5321: a dot-atom local part and a dotted host name, no quoting, comments,
display names or whitespace, so an address can never smuggle a second header or recipient into a message.
"""

from __future__ import annotations

import re

_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"^{_LOCAL}@{_LABEL}(?:\.{_LABEL})*\Z")
MAX_ADDRESS_LENGTH = 254


def mailbox_address(value: str) -> str:
    """The address itself when it is a plain ``local@host`` address (``localhost`` allowed, for a dev relay).

    Raises:
        ValueError: anything else, with the reason (never echoing more than the value's length).
    """
    if len(value) > MAX_ADDRESS_LENGTH or not _ADDRESS.match(value) or len(value.partition("@")[0]) > 64:
        raise ValueError("must be a plain e-mail address (local@host.domain, no name, spaces or line breaks)")
    return value
