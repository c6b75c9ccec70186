"""What a ModMed answer means, before anything of it is trusted: size, JSON, typed resources, search pages.

The client's chokepoint (connectors.fhir) reads every answer through here. A body over the size cap,
a 2xx that is not JSON, a resource of another type or shape, a search answered without a Bundle or
with a malformed entry list: each is an InvalidResponseError naming the resource type, never a value
(pydantic's messages echo values, which are PHI). A search is read page by page: ``searchset_page``
gives each page's ``next`` link, which the client follows through the same URL checks as any request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import httpx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from connectors.allow_lists import FHIR_ID
from connectors.errors import InvalidResponseError

R = TypeVar("R", bound=Resource)

UNPARSEABLE = object()
"""What ``decode_json`` returns for a body that is not JSON (None stands for an empty body)."""


@dataclass(frozen=True, slots=True)
class FhirResponse:
    """A successful answer: status, the headers callers need, the parsed JSON body (None when empty)."""

    status: int
    headers: httpx.Headers
    body: Any


@dataclass(frozen=True, slots=True)
class SearchResult(Generic[R]):
    """Matches of a search (all pages read) and whether the page budget left pages unread."""

    matches: list[R]
    truncated: bool = False


async def read_capped(response: httpx.Response, limit: int, practice_id: str, label: str, method: str) -> bytes:
    """The whole body, refused (InvalidResponseError) as soon as it is known to exceed ``limit`` bytes."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InvalidResponseError(
            f"ModMed response exceeds {limit} bytes", practice_id=practice_id, resource_type=label, method=method,
            status=response.status_code,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise InvalidResponseError(
                f"ModMed response exceeds {limit} bytes", practice_id=practice_id, resource_type=label,
                method=method, status=response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(content: bytes) -> Any:
    """The JSON of a body: None when empty, UNPARSEABLE when not JSON."""
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return UNPARSEABLE


def parse_resource(body: Any, model: type[R], practice_id: str) -> R:
    """``body`` as ``model``, or an InvalidResponseError that names the type, never a value."""
    resource_type = model.get_resource_type()
    if not isinstance(body, Mapping) or body.get("resourceType") != resource_type:
        raise InvalidResponseError(
            f"expected a {resource_type} resource", practice_id=practice_id, resource_type=resource_type
        )
    try:
        return model.model_validate(body)
    except ValidationError:  # pydantic's message echoes values (PHI): say which type, not what
        raise InvalidResponseError(
            f"ModMed returned an invalid {resource_type}", practice_id=practice_id, resource_type=resource_type
        ) from None


def id_from_location(location: str | None, resource_type: str) -> str | None:
    """The id in a Location header like .../Appointment/123/_history/1."""
    if not location:
        return None
    parts = urlsplit(location).path.split("/")
    for index, part in enumerate(parts[:-1]):
        if part == resource_type and FHIR_ID.match(parts[index + 1]):
            return parts[index + 1]
    return None


def searchset_page(body: Any, practice_id: str, resource_type: str) -> tuple[Mapping[str, Any], str | None]:
    """A search page's Bundle body and its ``next`` link (None on the last page)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Bundle":
        raise InvalidResponseError(
            "search answered without a Bundle", practice_id=practice_id,
            resource_type=resource_type, method="GET",
        )
    links = body.get("link")
    next_url = next(
        (link.get("url") for link in links if isinstance(link, Mapping) and link.get("relation") == "next"),
        None,
    ) if isinstance(links, list) else None
    return body, next_url if isinstance(next_url, str) else None


def bundle_matches(bundle: Mapping[str, Any], model: type[R], practice_id: str) -> list[R]:
    """The page's matches as models (``_include``d resources left out)."""
    try:
        page = Bundle.model_validate(bundle)
    except ValidationError:  # pydantic's message echoes values (PHI): say which type, not what
        raise InvalidResponseError(
            "search answered with an invalid Bundle", practice_id=practice_id,
            resource_type=model.get_resource_type(), method="GET",
        ) from None
    return [
        entry.resource for entry in page.entry or ()
        if isinstance(entry.resource, model) and not (entry.search and entry.search.mode == "include")
    ]


def entry_resources(bundle: Mapping[str, Any], resource_type: str, practice_id: str) -> list[Mapping[str, Any]]:
    """The page's raw entry resources of ``resource_type``, for callers that must not build a model."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidResponseError(
            "search Bundle has a malformed entry list", practice_id=practice_id,
            resource_type=resource_type, method="GET",
        )
    resources = [entry.get("resource") for entry in entries if isinstance(entry, Mapping)]
    return [r for r in resources if isinstance(r, Mapping) and r.get("resourceType") == resource_type]
