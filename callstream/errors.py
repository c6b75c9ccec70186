"""The error tree every command-line entry point turns into one clear line.

Operators read these on a terminal or in a pod log: each message names what failed and what to
change, and never carries PHI or secrets.
"""


class CallstreamError(Exception):
    """Base for errors that `callstream` reports as one line (exit status 2), not a traceback."""


class ConfigError(CallstreamError):
    """Settings, DSNs or the tenant directory are invalid."""


class TenantDirectoryError(ConfigError):
    """A tenant (practice) directory file is unreadable or has an invalid entry."""


class PortInUseError(CallstreamError):
    """A port callstream wants to bind is already taken."""


class ServiceUnavailableError(CallstreamError):
    """A backing service (Kafka broker, ClickHouse) cannot be reached."""
