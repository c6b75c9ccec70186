"""FHIR errors with the status codes and names ModMed documents (seed 003).

Every refusal the sandbox makes is a `FhirError`; the HTTP layer turns it into an
OperationOutcome so clients can rely on one error shape. Diagnostics never echo request
values: a client may log the OperationOutcome, and request values can carry PHI.
"""

from __future__ import annotations

SEED_ERROR_NAMES: dict[int, str] = {
    304: "HTTP_304_NOT_MODIFIED",
    400: "HTTP_400_BAD_REQUEST",
    401: "HTTP_401_CLIENT_UNAUTHORIZED",
    403: "HTTP_403_FORBIDDEN",
    404: "UnclassifiedServerFailureException",
    405: "HTTP_405_METHOD_NOT_ALLOWED",
    409: "HTTP_409_CONFLICT",
    410: "HTTP_410_GONE",
    412: "HTTP_412_PRECONDITION_FAILED",
    422: "HTTP_422_UNPROCESSABLE_ENTITY",
    429: "HTTP_429_TOO_MANY_REQUESTS",
    500: "HTTP_500_INTERNAL_ERROR",
    501: "HTTP_501_NOT_IMPLEMENTED",
}
PAYLOAD_TOO_LARGE = "HTTP_412_PAYLOAD_TOO_LARGE"

ISSUE_TYPES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    422: "processing",
    429: "throttled",
    500: "exception",
    501: "not-supported",
}


class FhirError(Exception):
    """A refusal with its HTTP status, rendered as an OperationOutcome."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        issues: list[dict] | None = None,
        headers: dict[str, str] | None = None,
        error_name: str | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.extra_issues = issues or []
        self.headers = headers or {}
        self.error_name = error_name or SEED_ERROR_NAMES.get(status, f"HTTP_{status}")

    def outcome(self) -> dict:
        issue_type = ISSUE_TYPES.get(self.status, "processing")
        if self.error_name == PAYLOAD_TOO_LARGE:
            issue_type = "too-long"
        first = {
            "severity": "error",
            "code": issue_type,
            "details": {"text": self.error_name},
            "diagnostics": f"{self.error_name}: {self.diagnostics}",
        }
        return {"resourceType": "OperationOutcome", "issue": [first, *self.extra_issues]}


def validation_issues(resource_type: str, errors: list[dict]) -> list[dict]:
    """pydantic errors → OperationOutcome issues with FHIRPath-like expressions, no input values."""
    issues = []
    for error in errors[:50]:
        path = resource_type
        for part in error.get("loc", ()):
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        issues.append(
            {
                "severity": "error",
                "code": "structure" if error.get("type") in ("extra_forbidden", "missing") else "value",
                "diagnostics": str(error.get("msg", "invalid value")),
                "expression": [path],
            }
        )
    return issues
