"""The one error type the guards core raises on its own (pydantic raises ValidationError for malformed models)."""


class GuardInputError(ValueError):
    """Inputs that are each well formed but cannot be decided on together, e.g. a clock without a zone.

    Callers must treat this as "no decision": hand the call to a human and audit it. The message
    names the problem, never a value (values may be PHI).
    """
