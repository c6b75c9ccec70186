"""EMA automation errors, grafted onto the connector's error tree so the dispatcher branches the same way.

An EMA failure is also the matching ModMed error (AuthError, NotFoundError, ConflictError, ...), so
code written against connectors.errors needs no EMA special case. Messages carry the practice id, the
step and an HTTP status at most: screens show PHI, so nothing read from a screen ever enters ``str()``.
``evidence`` names the operator evidence file (screenshot + page URL) kept for the failure, if any.
"""

from __future__ import annotations

from datetime import datetime

from connectors.errors import (
    AuthError,
    ConflictError,
    InvalidRequestError,
    ModMedError,
    NotFoundError,
    RetryableError,
    VisitReasonMismatch,
)


class EmaError(ModMedError):
    """Base of every failure of the EMA web automation."""

    def __init__(
        self,
        message: str,
        *,
        practice_id: str,
        step: str | None = None,
        status: int | None = None,
        resource_type: str | None = None,
    ) -> None:
        self.step = step
        self.evidence: str | None = None
        super().__init__(message, practice_id=practice_id, resource_type=resource_type, status=status)

    def __str__(self) -> str:
        """The step is known only once the failure reached the step that ran it, so it is added here."""
        text = super().__str__()
        return f"{text} [EMA step {self.step}]" if self.step else text


class EmaLockedError(EmaError, AuthError):
    """The practice's EMA path is locked after a failed login; only `callstream ema unlock` reopens it.

    Raised before any browser work, so a locked practice never gets another login attempt.
    """

    def __init__(self, *, practice_id: str, locked_at: datetime, reason: str) -> None:
        self.locked_at = locked_at
        self.reason = reason
        super().__init__(
            f"EMA path locked since {locked_at.isoformat()} ({reason}); an operator must run "
            f"`callstream ema unlock {practice_id}`",
            practice_id=practice_id,
        )


class EmaLoginFailed(EmaError, AuthError):
    """The one login attempt failed; the practice's EMA path is now locked and an alert was sent."""


class EmaCredentialsError(EmaError, AuthError):
    """The practice's credential bundle has no EMA username/password; no login was attempted."""


class EmaScreenError(EmaError):
    """A screen did not look as expected (missing or duplicated element, unreadable value, off-site redirect)."""


class EmaUnavailableError(EmaScreenError, RetryableError):
    """EMA did not answer in time, refused the connection or answered 5xx: transient, nothing was read."""


class EmaNotFoundError(EmaError, NotFoundError):
    """EMA shows no chart (or other record) with that id in this practice."""


class EmaConflictError(EmaError, ConflictError):
    """The slot is no longer free (somebody else booked it, or the block is full)."""


class EmaInvalidCommand(EmaError, InvalidRequestError):
    """The command is not one the EMA layer may run: not a guard product, wrong practice, malformed input,
    or a form EMA rejected as invalid (422)."""


class EmaVisitReasonMismatch(EmaInvalidCommand, VisitReasonMismatch):
    """The offered slot is for another procedure template than the guard decided; nothing was booked."""
