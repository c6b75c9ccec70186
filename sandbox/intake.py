"""The intake-form service the sandbox stands in for: patients complete the branded forms their link opened.

ModMed has no webhooks, and the intake service is not ModMed: it keeps completed forms (a PDF at a URL) and lists
them for callstream, which turns each into a DocumentReference on the chart through its own FHIR allow-list
(connectors.intake). Two endpoints, per practice:

- ``POST /_intake/{practice_id}/completions`` ``{"ref": "<the link's ref>", "form": "<form name>"}``: a patient
  finished a form (what the form's submit button does); 201 with the completion. ``ref`` is kept as given: the
  service cannot check it, callstream does (it is signed with the practice's link secret).
- ``GET /_intake/{practice_id}/completions?after=N``: completions with ``seq`` above N, oldest first.
"""

from __future__ import annotations

import json
import re
import threading

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.world import SandboxWorld

MAX_BODY = 4096
_REF = re.compile(r"^[A-Za-z0-9._\-]{3,200}$")
_FORM = re.compile(r"^[a-z0-9][a-z0-9\-]{0,63}$")
DOCUMENT_HOST = "https://intake.sandbox.callstream.dev"


class IntakeService:
    """Completed intake forms per practice, in memory, numbered in order of completion."""

    def __init__(self, world: SandboxWorld) -> None:
        self.world = world
        self._lock = threading.Lock()
        self._completions: dict[str, list[dict[str, object]]] = {}

    def routes(self) -> list[Route]:
        return [Route("/_intake/{practice_id}/completions", self.completions, methods=["GET", "POST"])]

    async def completions(self, request: Request) -> Response:
        practice_id = request.path_params["practice_id"]
        if self.world.tenant(practice_id) is None:
            return JSONResponse({"error": "unknown practice"}, status_code=404)
        if request.method == "GET":
            after = request.query_params.get("after", "0")
            if not after.isdigit():
                return JSONResponse({"error": "after must be a non-negative integer"}, status_code=400)
            with self._lock:
                listed = [c for c in self._completions.get(practice_id, []) if int(str(c["seq"])) > int(after)]
            return JSONResponse({"completions": listed})
        body = await request.body()
        try:
            payload = json.loads(body.decode("utf-8")) if len(body) <= MAX_BODY else None
        except (UnicodeDecodeError, ValueError):
            payload = None
        ref = payload.get("ref") if isinstance(payload, dict) else None
        form = payload.get("form", "intake") if isinstance(payload, dict) else None
        if not isinstance(ref, str) or not _REF.match(ref) or not isinstance(form, str) or not _FORM.match(form):
            return JSONResponse({"error": "expected {ref, form} as the link and form gave them"}, status_code=422)
        with self._lock:
            done = self._completions.setdefault(practice_id, [])
            seq = len(done) + 1
            completion: dict[str, object] = {
                "seq": seq, "ref": ref, "form": form,
                "document_url": f"{DOCUMENT_HOST}/{practice_id}/{seq:06d}-{form}.pdf",
                "completed_at": self.world.now().isoformat(),
            }
            done.append(completion)
        return JSONResponse(completion, status_code=201)
