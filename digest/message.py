"""The digest e-mail: a multipart/alternative message (plain text and HTML) built from `DayFigures`.

Pure: no I/O. Only counts, guard names, call ids and (with ``call_url``) links to the calls go in, never a
caller number, a name or a chart id, so the message can travel through ordinary mail relays.
"""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from html import escape

from digest.figures import DayFigures

SUBJECT_PREFIX = "callstream daily digest"
DIGEST_HEADER = "X-Callstream-Digest"
"""``practice_id/date``: lets a receiver (and the tests) tell which digest a message is."""


def subject(practice_name: str, figures: DayFigures) -> str:
    """One line whatever the directory's name holds (a line break would start a new header)."""
    return f"{SUBJECT_PREFIX}: {' '.join(practice_name.split())}, {figures.day.isoformat()}"


def _rate(figures: DayFigures) -> str:
    rate = figures.write_success_rate
    if rate is None:
        return "no writes"
    return f"{rate * 100:.1f} % ({figures.writes_succeeded} of {figures.writes_succeeded + figures.writes_failed})"


def _rows(figures: DayFigures) -> list[tuple[str, str]]:
    """The summary table, shared by both parts so they always say the same."""
    review = figures.review
    open_items = ("not available (see below)" if review is None
                  else f"{review.count} ({review.controlled_substance} controlled-substance"
                       f"{f', oldest since {review.oldest_created_at}' if review.oldest_created_at else ''})")
    return [
        ("Calls", str(figures.calls)),
        ("Controlled-substance requests", str(figures.cs_requests)),
        ("Escalated (provider task or staff review)", str(figures.cs_escalated)),
        ("  of which waiting for staff", str(figures.cs_queued_for_staff)),
        ("NOT escalated", str(figures.cs_not_escalated)),
        ("Provider and team tasks created", str(figures.provider_tasks)),
        ("Requests blocked by a guard", str(figures.blocks)),
        ("Guardrail-bypass attempts", str(figures.bypass_attempts)),
        ("ModMed write success", _rate(figures)),
        ("Open review-queue items now", open_items),
    ]


def _listed(call_ids: tuple[str, ...], limit: int) -> tuple[list[str], int]:
    return list(call_ids[:limit]), max(0, len(call_ids) - limit)


def _sections(figures: DayFigures) -> list[tuple[str, tuple[str, ...]]]:
    review_calls = figures.review.call_ids if figures.review is not None else ()
    return [("Calls with controlled-substance requests", figures.cs_call_ids),
            ("Calls with a blocked request", figures.blocked_call_ids),
            ("Calls with open review-queue items", review_calls)]


def text_body(practice_name: str, figures: DayFigures, call_url: str | None) -> str:
    lines = [f"{practice_name}: calls of {figures.day.isoformat()} ({figures.time_zone})", ""]
    width = max(len(label) for label, _ in _rows(figures))
    lines += [f"{label:<{width}}  {value}" for label, value in _rows(figures)]
    if figures.cs_not_escalated:
        lines += ["", f"ATTENTION: {figures.cs_not_escalated} controlled-substance request(s) reached neither a "
                      "provider task nor staff review. Open the calls below."]
    if figures.blocks_by_guard:
        lines += ["", "Blocks by guard:", *(f"  {guard}: {count}" for guard, count in figures.blocks_by_guard.items())]
    for title, call_ids in _sections(figures):
        if not call_ids:
            continue
        shown, more = _listed(call_ids, figures.listed_limit)
        lines += ["", f"{title}:"]
        lines += [f"  {call_id}" + (f"  {call_url.format(call_id=call_id)}" if call_url else "") for call_id in shown]
        if more:
            lines.append(f"  ... and {more} more")
    if figures.review_error:
        lines += ["", f"Review queue: {figures.review_error}"]
    lines += ["", "Counts and call ids only; open a call in the QA view or with `callstream audit call CALL_ID`."]
    return "\n".join(lines) + "\n"


def html_body(practice_name: str, figures: DayFigures, call_url: str | None) -> str:
    def call_cell(call_id: str) -> str:
        if call_url is None:
            return f"<code>{escape(call_id)}</code>"
        return f'<a href="{escape(call_url.format(call_id=call_id), quote=True)}"><code>{escape(call_id)}</code></a>'

    parts = [
        "<!DOCTYPE html><html><body style=\"font-family: sans-serif\">",
        f"<h2>{escape(practice_name)}: calls of {figures.day.isoformat()}</h2>",
        f"<p>Day in {escape(figures.time_zone)}.</p>",
        "<table cellpadding=\"4\" style=\"border-collapse: collapse\">",
        *(f"<tr><th align=\"left\">{escape(label.strip())}</th><td>{escape(value)}</td></tr>"
          for label, value in _rows(figures)),
        "</table>",
    ]
    if figures.cs_not_escalated:
        parts.append(f"<p style=\"color: #b00\"><strong>Attention:</strong> {figures.cs_not_escalated} "
                     "controlled-substance request(s) reached neither a provider task nor staff review.</p>")
    if figures.blocks_by_guard:
        parts += ["<h3>Blocks by guard</h3><ul>",
                  *(f"<li><code>{escape(guard)}</code>: {count}</li>" for guard, count in figures.blocks_by_guard.items()),
                  "</ul>"]
    for title, call_ids in _sections(figures):
        if not call_ids:
            continue
        shown, more = _listed(call_ids, figures.listed_limit)
        parts += [f"<h3>{escape(title)}</h3><ul>", *(f"<li>{call_cell(call_id)}</li>" for call_id in shown)]
        parts += [f"<li>... and {more} more</li>"] if more else []
        parts.append("</ul>")
    if figures.review_error:
        parts.append(f"<p>Review queue: {escape(figures.review_error)}</p>")
    parts.append("<p style=\"color: #666\">Counts and call ids only.</p></body></html>")
    return "\n".join(parts) + "\n"


def digest_message(practice_id: str, practice_name: str, figures: DayFigures, *, sender: str,
                   recipients: tuple[str, ...], call_url: str | None, now: datetime) -> EmailMessage:
    """The whole message; addresses were validated where they were configured (callstream.mailbox)."""
    message = EmailMessage()
    message["Subject"] = subject(practice_name, figures)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid("digest", domain=sender.partition("@")[2])
    message[DIGEST_HEADER] = f"{practice_id}/{figures.day.isoformat()}"
    message.set_content(text_body(practice_name, figures, call_url))
    message.add_alternative(html_body(practice_name, figures, call_url), subtype="html")
    return message
