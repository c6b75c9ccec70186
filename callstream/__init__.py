"""callstream: AI phone receptionist ↔ ModMed integration layer for interventional pain practices."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("callstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
