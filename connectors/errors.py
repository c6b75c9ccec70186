"""The connector's own small error tree, mapped from ModMed's HTTP status codes.

Callers (the dispatcher, the pipeline) branch on the class, never on status numbers: retryable
failures may be retried or routed to EMA, terminal ones go to the review queue, conflicts mean
"somebody else took it". Messages name the practice, resource, method, status and issue codes only:
server diagnostics may echo PHI, so they are never read, let alone kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callstream.errors import CallstreamError


class ModMedError(CallstreamError):
    """Base of every failure the ModMed connector raises.

    Subclasses CallstreamError so a CLI entry point (bench, export) reports it as one line.
    """

    def __init__(
        self,
        message: str,
        *,
        practice_id: str,
        resource_type: str | None = None,
        method: str | None = None,
        status: int | None = None,
        issue_codes: tuple[str, ...] = (),
    ) -> None:
        self.practice_id = practice_id
        self.resource_type = resource_type
        self.method = method
        self.status = status
        self.issue_codes = issue_codes
        where = " ".join(part for part in (method, resource_type) if part)
        parts = [f"practice {practice_id}"]
        if where:
            parts.append(where)
        if status is not None:
            parts.append(f"HTTP {status}")
        if issue_codes:
            parts.append("issues " + ",".join(issue_codes))
        super().__init__(f"{message} ({'; '.join(parts)})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class RetryableError(ModMedError):
    """Transient: 5xx (but 501), timeouts, connection failures. Reads may retry; writes only if proven unlanded."""


class RequestNotSentError(RetryableError):
    """The request provably never reached ModMed (connection refused, pool exhausted): safe to resend a write."""


class CircuitOpenError(RequestNotSentError):
    """The practice's circuit breaker is open: failing fast (nothing sent) so other practices keep their latency."""


class TerminalError(ModMedError):
    """The request itself is wrong or unsupported (400, 405, 410, 412, 422, 501...): retrying cannot help."""


class InvalidRequestError(TerminalError):
    """The caller's input (an id, a name, a date range) is not something ModMed could accept; nothing was sent."""


class VisitReasonMismatch(InvalidRequestError):
    """The slot is for another visit reason than the guard decided; nothing was booked (defense in depth)."""


class InvalidResponseError(TerminalError):
    """ModMed answered, but with a body that is not the FHIR JSON the operation expects."""


class AuthError(ModMedError):
    """Credentials rejected (401 after one refresh, 403, the token endpoint refusing a grant) or unusable;
    needs an operator, not a retry."""


class NotFoundError(ModMedError):
    """404. ModMed also labels some unclassified server failures 404 (UnclassifiedServerFailureException)."""


class ConflictError(ModMedError):
    """409: the state changed under us, typically a slot somebody else booked first."""


class RateLimitedError(ModMedError):
    """429 after the connector's own back-off budget ran out; ``retry_after`` is ModMed's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None, **context: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **context)


class CapabilityMissing(ModMedError):
    """The practice's ModMed tenant has no FHIR path for this command: the dispatcher uses EMA instead."""


class ResourceNotAllowed(ModMedError):
    """A resource type or method outside the connector's closed allow-lists was requested.

    Raised before any byte leaves the process; it is a programming or attack signal, never retried.
    """


class WriteNotAllowed(ResourceNotAllowed):
    """A write outside the closed write allow-list, e.g. any MedicationRequest or MedicationStatement."""


TERMINAL_STATUSES = frozenset({304, 400, 405, 410, 412, 422, 501})


OAUTH_ERROR_CODES = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "unsupported_grant_type",
    "invalid_scope",
})
"""RFC 6749 §5.2 token-endpoint error codes: a closed vocabulary, safe to keep (descriptions are not)."""


def issue_codes(body: Any) -> tuple[str, ...]:
    """The machine codes of an error body: OperationOutcome issue codes, or an RFC 6749 ``error``.

    Free text (``diagnostics``, ``error_description``) is never read: servers echo names into it.
    """
    if not isinstance(body, Mapping):
        return ()
    if body.get("resourceType") != "OperationOutcome":
        error = body.get("error")
        return (error,) if isinstance(error, str) and error in OAUTH_ERROR_CODES else ()
    issues = body.get("issue")
    if not isinstance(issues, list):
        return ()
    codes: list[str] = []
    for issue in issues[:10]:
        code = issue.get("code") if isinstance(issue, Mapping) else None
        if isinstance(code, str) and code.replace("-", "").isalnum() and len(code) <= 40:
            codes.append(code)
    return tuple(codes)


def error_for_status(
    status: int,
    *,
    practice_id: str,
    resource_type: str | None,
    method: str,
    body: Any = None,
    retry_after: float | None = None,
) -> ModMedError:
    """The typed error for a non-success ModMed response (the caller raises it)."""
    context: dict[str, Any] = {
        "practice_id": practice_id,
        "resource_type": resource_type,
        "method": method,
        "status": status,
        "issue_codes": issue_codes(body),
    }
    if status == 429:
        return RateLimitedError("ModMed rate limit hit", retry_after=retry_after, **context)
    if status in (401, 403):
        return AuthError("ModMed rejected the credentials", **context)
    if status == 404:
        return NotFoundError("ModMed found no such resource", **context)
    if status == 409:
        return ConflictError("ModMed reported a conflict", **context)
    if status >= 500 and status != 501:
        return RetryableError("ModMed server failure", **context)
    if status in TERMINAL_STATUSES or 400 <= status < 500:
        return TerminalError("ModMed refused the request", **context)
    return InvalidResponseError("ModMed answered with an unexpected status", **context)
