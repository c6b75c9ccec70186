"""ModMed status codes → the connector's typed error tree; no diagnostics (possible PHI) in messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.errors import CallstreamError
from connectors.errors import (
    AuthError,
    ConflictError,
    InvalidResponseError,
    ModMedError,
    NotFoundError,
    RateLimitedError,
    RetryableError,
    TerminalError,
    error_for_status,
    issue_codes,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (304, TerminalError), (400, TerminalError), (401, AuthError), (403, AuthError), (404, NotFoundError),
        (405, TerminalError), (409, ConflictError), (410, TerminalError), (412, TerminalError),
        (422, TerminalError), (429, RateLimitedError), (500, RetryableError), (501, TerminalError),
        (502, RetryableError), (503, RetryableError), (504, RetryableError), (302, InvalidResponseError),
    ],
)
def test_modmed_codes_map_to_the_tree(status: int, expected: type[ModMedError]) -> None:
    error = error_for_status(status, practice_id="pain-1", resource_type="Appointment", method="POST", retry_after=3)
    assert type(error) is expected
    assert isinstance(error, CallstreamError)
    assert error.status == status and error.practice_id == "pain-1" and error.resource_type == "Appointment"
    if isinstance(error, RateLimitedError):
        assert error.retry_after == 3


def test_diagnostics_are_never_kept_only_issue_codes() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "conflict", "diagnostics": "Slot taken for patient Jane Doe 1970-01-02"},
            "junk",
            {"code": "not a token!!", "diagnostics": 5},
        ],
    }
    error = error_for_status(409, practice_id="pain-1", resource_type="Appointment", method="POST", body=outcome)
    assert error.issue_codes == ("conflict",)
    for rendered in (str(error), repr(error), repr(vars(error))):
        assert "Jane" not in rendered and "1970" not in rendered
    assert "pain-1" in str(error) and "409" in str(error) and "conflict" in str(error)


def test_oauth_error_codes_are_kept_from_a_closed_vocabulary_only() -> None:
    refused = error_for_status(400, practice_id="pain-1", resource_type="token", method="POST",
                               body={"error": "invalid_grant", "error_description": "password of Jane Roe is wrong"})
    assert refused.issue_codes == ("invalid_grant",) and "Jane" not in repr(vars(refused))
    assert issue_codes({"error": "Jane Roe is locked out"}) == ()
    assert issue_codes({"error": ["invalid_grant"]}) == ()


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20))
def test_hostile_error_bodies_never_crash_the_mapping(body: object) -> None:
    codes = issue_codes(body)
    assert all(isinstance(code, str) and len(code) <= 40 for code in codes)
    error = error_for_status(500, practice_id="p", resource_type=None, method="GET", body=body)
    assert isinstance(error, RetryableError) and error.issue_codes == codes
