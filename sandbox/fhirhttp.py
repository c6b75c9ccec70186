"""HTTP plumbing shared by both FHIR tracks: JSON responses, Bundles, request bodies."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from sandbox.errors import PAYLOAD_TOO_LARGE, FhirError

FHIR_JSON = "application/fhir+json"
ACCEPTED_BODY_TYPES = ("application/fhir+json", "application/json")
MAX_BODY_BYTES = 1024 * 1024


def fhir_response(data: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def error_response(error: FhirError) -> Response:
    return fhir_response(error.outcome(), error.status, error.headers)


def resource_headers(resource: dict, location: str | None = None) -> dict[str, str]:
    meta = resource.get("meta") or {}
    headers = {"ETag": f'W/"{meta.get("versionId", "1")}"'}
    if meta.get("lastUpdated"):
        headers["Last-Modified"] = meta["lastUpdated"]
    if location:
        headers["Location"] = location
    return headers


def query_params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def searchset(
    resources: list[dict], base_url: str, resource_type: str, params: dict[str, list[str]],
    total: int, offset: int | None = None, count: int | None = None,
) -> dict:
    """A searchset Bundle; `next` carries the same query with the following `_offset`."""
    def link(offset_value: int | None) -> str:
        pairs = [(k, v) for k, values in params.items() if k != "_offset" for v in values]
        if offset_value:
            pairs.append(("_offset", str(offset_value)))
        query = urlencode(pairs)
        return f"{base_url}/{resource_type}" + (f"?{query}" if query else "")

    links = [{"relation": "self", "url": link(offset)}]
    if offset is not None and count is not None and offset + count < total:
        links.append({"relation": "next", "url": link(offset + count)})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


async def read_json_body(request: Request) -> object:
    """The write body as JSON; too large is ModMed's 412 PAYLOAD_TOO_LARGE, not 413."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_BODY_TYPES:
        raise FhirError(400, "Content-Type must be application/fhir+json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise FhirError(412, "the request body is larger than 1 MiB", error_name=PAYLOAD_TOO_LARGE)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise FhirError(412, "the request body is larger than 1 MiB", error_name=PAYLOAD_TOO_LARGE)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FhirError(400, "the request body is not valid JSON") from error


def base_url_of(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"
