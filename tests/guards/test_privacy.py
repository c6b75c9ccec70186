"""Caller words are hostile text and may be PHI: no guard model shows them in its repr."""

from guards.model import Intent, IntentRequest


def test_intent_request_repr_hides_the_transcript_snippet() -> None:
    request = IntentRequest(intent=Intent.REFILL_REQUEST, transcript_snippet="this is Jane Roe, born 1961-04-02")
    assert request.transcript_snippet is not None
    assert "Jane Roe" not in repr(request) and "1961" not in str(request)
