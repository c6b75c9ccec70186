"""FHIR Bulk Data export for certified-track practices, and ``callstream export``.

Kick-off (``$export`` with ``Prefer: respond-async``) answers 202 and a status URL; the status URL
answers 202 (with X-Progress / Retry-After) until the manifest is ready; each manifest file is ndjson
(at most 1,000 resources in ModMed's case) and is streamed line by line, every line validated as the
declared FHIR R4B resource type before it is written; DELETE on the status URL cancels. Files land
under a temporary name and are renamed only when complete, so a broken download never looks whole.

What reaches local disk is filtered line by line, because PDMP content and UDS results must never
leave ModMed: laboratory Observations (every UDS result, whatever its code) and ``uds`` Observations are
dropped entirely; a ``pdmp-check`` Observation keeps only what says *that* and *when* the PDMP was
checked (id, status, code, subject, ``effectiveDateTime``), never its note, value or state of record.
Files are written 0600 in a directory set to 0700: an export holds PHI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from callstream.cli_options import add_service_options, require_tenants_file, settings_from
from callstream.errors import ConfigError
from callstream.tenants import ApiTrack, Practice, load_tenant_directory
from connectors.allow_lists import relative_path
from connectors.errors import CapabilityMissing, InvalidRequestError, InvalidResponseError, RetryableError
from connectors.fhir import ModMedClient
from connectors.vocabulary import COMPLIANCE_SYSTEM, PDMP_CHECK_CODE, UDS_CODE

NDJSON = "application/fhir+ndjson"
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}\Z")
GROUP_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
PDMP_CHECK_FIELDS = ("resourceType", "id", "meta", "status", "category", "code", "subject", "effectiveDateTime")
"""All of a PDMP check that may leave ModMed: that it happened, for whom, and when."""


@dataclass(frozen=True, slots=True)
class ExportFile:
    """One manifest entry."""

    resource_type: str
    url: str
    count: int | None


@dataclass(frozen=True, slots=True)
class ExportManifest:
    transaction_time: str
    requires_access_token: bool
    output: tuple[ExportFile, ...]
    error: tuple[ExportFile, ...]


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    """One written file; ``withheld`` counts the resources the PDMP/UDS filter kept off the disk."""

    resource_type: str
    path: Path
    resources: int
    withheld: int = 0


ProgressCallback = Callable[[str], None]


class BulkExport:
    """One certified-track practice's bulk exports, over the shared ModMedClient."""

    def __init__(
        self,
        client: ModMedClient,
        practice: Practice,
        *,
        poll_initial_s: float = 1.0,
        poll_max_s: float = 60.0,
        timeout_s: float = 6 * 3600,
    ) -> None:
        if practice.track is not ApiTrack.CERTIFIED:
            raise CapabilityMissing(
                "bulk export exists on the certified track only", practice_id=practice.practice_id, resource_type="$export"
            )
        self._client = client
        self._practice = practice
        self._poll_initial_s = poll_initial_s
        self._poll_max_s = poll_max_s
        self._timeout_s = timeout_s

    async def kick_off(
        self,
        *,
        group_id: str | None = None,
        patients: bool = False,
        since: dt.datetime | None = None,
        types: Sequence[str] = (),
    ) -> str:
        """Start an export (system, Patient or Group level); returns the status URL."""
        base = self._practice.fhir_base
        if group_id is not None:
            if not GROUP_ID.match(group_id):
                raise InvalidRequestError("group id is not a FHIR id", practice_id=self._practice.practice_id)
            url = f"{base}/Group/{group_id}/$export"
        else:
            url = f"{base}/Patient/$export" if patients else f"{base}/$export"
        params = {"_outputFormat": NDJSON}
        if since is not None:
            if since.tzinfo is None:
                raise InvalidRequestError("since must be timezone-aware", practice_id=self._practice.practice_id)
            params["_since"] = since.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        if types:
            bad = [t for t in types if not RESOURCE_TYPE.match(t)]
            if bad:
                raise InvalidRequestError("resource types must look like 'Patient'", practice_id=self._practice.practice_id)
            params["_type"] = ",".join(types)
        response = await self._client.bulk_request(self._practice, "GET", url, params=params, prefer_async=True)
        status_url = response.headers.get("content-location")
        if response.status != 202 or not status_url or relative_path(status_url, base) is None:
            raise InvalidResponseError(
                "export kick-off answered without a status URL of this practice",
                practice_id=self._practice.practice_id, resource_type="$export", status=response.status,
            )
        return status_url

    async def wait_for_manifest(self, status_url: str, *, on_progress: ProgressCallback | None = None) -> ExportManifest:
        """Poll the status URL with backoff (Retry-After wins) until the manifest is ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        delay = self._poll_initial_s
        while True:
            response = await self._client.bulk_request(self._practice, "GET", status_url)
            if response.status == 200:
                return _parse_manifest(response.body, self._practice.practice_id)
            progress = response.headers.get("x-progress", "in progress")
            if on_progress is not None:
                on_progress(progress[:100])
            retry_after = response.headers.get("retry-after", "")
            wait = min(float(retry_after), self._poll_max_s) if retry_after.isdigit() else delay
            if loop.time() + wait > deadline:
                raise RetryableError(
                    "export did not finish within the time budget", practice_id=self._practice.practice_id,
                    resource_type="$export-status",
                )
            await asyncio.sleep(wait)
            delay = min(delay * 2, self._poll_max_s)

    async def download(
        self,
        manifest: ExportManifest,
        directory: Path,
        *,
        on_file: Callable[[int, int, int], None] | None = None,
    ) -> list[DownloadedFile]:
        """Stream every output file into ``directory`` (made 0700), validating and filtering each line
        (see the module docstring); files are 0600. ``on_file(done, total, resources written)``."""
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        os.chmod(directory, DIRECTORY_MODE)  # mkdir honours the umask and leaves an existing directory as it was
        downloaded: list[DownloadedFile] = []
        total_resources = 0
        for index, entry in enumerate(manifest.output, start=1):
            target = directory / f"{index:04d}-{entry.resource_type}.ndjson"
            partial = target.with_suffix(".ndjson.part")
            count = written = 0
            model = get_fhir_model_class(entry.resource_type)
            try:
                with _private_file(partial) as sink:
                    async with self._client.stream_file(
                        self._practice, entry.url, with_token=manifest.requires_access_token
                    ) as stream:
                        async for line in stream.lines():
                            count += 1
                            resource = _validate_line(line, entry.resource_type, model, self._practice.practice_id, count)
                            kept = exportable(resource)
                            if kept is not None:
                                sink.write(json.dumps(kept, separators=(",", ":"), ensure_ascii=False) + "\n")
                                written += 1
                if entry.count is not None and entry.count != count:
                    raise InvalidResponseError(
                        f"export file {index} has {count} resources, the manifest says {entry.count}",
                        practice_id=self._practice.practice_id, resource_type=entry.resource_type,
                    )
            except BaseException:
                partial.unlink(missing_ok=True)  # never leave half a file that could pass for a whole one
                raise
            partial.replace(target)
            downloaded.append(DownloadedFile(entry.resource_type, target, written, count - written))
            total_resources += written
            if on_file is not None:
                on_file(index, len(manifest.output), total_resources)
        return downloaded

    async def cancel(self, status_url: str) -> None:
        """Delete the export job (ModMed answers 202)."""
        await self._client.bulk_request(self._practice, "DELETE", status_url)


def exportable(resource: dict[str, Any]) -> dict[str, Any] | None:
    """What of one exported resource may be written to local disk: None drops it.

    A UDS result is a laboratory Observation under any code a practice uses, so every laboratory
    Observation goes (callstream has no use for lab values); a PDMP check keeps its timestamp only.
    """
    if resource.get("resourceType") != "Observation":
        return resource
    compliance_codes = {
        coding.get("code") for coding in _codings(resource.get("code")) if coding.get("system") == COMPLIANCE_SYSTEM
    }
    categories = resource.get("category")
    laboratory = any(
        coding.get("system") == OBSERVATION_CATEGORY_SYSTEM and coding.get("code") == "laboratory"
        for category in (categories if isinstance(categories, list) else ())
        for coding in _codings(category)
    )
    if UDS_CODE in compliance_codes or laboratory:
        return None
    if PDMP_CHECK_CODE in compliance_codes:
        return {field: resource[field] for field in PDMP_CHECK_FIELDS if field in resource}
    return resource


def _codings(concept: Any) -> list[dict[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[TextIO]:
    """A text file opened for writing with mode 0600 from its first byte (also when it already existed)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    os.fchmod(descriptor, FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        yield handle


def _validate_line(line: str, resource_type: str, model: type[Any], practice_id: str, number: int) -> dict[str, Any]:
    """One ndjson line must be one resource of the declared type; the message names the line, not its content."""
    try:
        resource = json.loads(line)
    except json.JSONDecodeError:
        raise InvalidResponseError(
            f"export line {number} is not JSON", practice_id=practice_id, resource_type=resource_type
        ) from None
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        raise InvalidResponseError(
            f"export line {number} is not a {resource_type}", practice_id=practice_id, resource_type=resource_type
        )
    try:
        model.model_validate(resource)
    except ValidationError:
        raise InvalidResponseError(
            f"export line {number} is not a valid {resource_type}", practice_id=practice_id,
            resource_type=resource_type,
        ) from None
    return resource


def _parse_manifest(body: Any, practice_id: str) -> ExportManifest:
    if not isinstance(body, Mapping) or not isinstance(body.get("output"), list):
        raise InvalidResponseError("export manifest lacks an output list", practice_id=practice_id)

    def files(entries: Any) -> tuple[ExportFile, ...]:
        parsed = []
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, Mapping):
                raise InvalidResponseError("export manifest entry is not an object", practice_id=practice_id)
            resource_type, url, count = entry.get("type"), entry.get("url"), entry.get("count")
            if not isinstance(resource_type, str) or not RESOURCE_TYPE.match(resource_type):
                raise InvalidResponseError("export manifest entry has no resource type", practice_id=practice_id)
            try:
                get_fhir_model_class(resource_type)
            except ValueError:
                raise InvalidResponseError("export manifest names an unknown resource type", practice_id=practice_id) from None
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise InvalidResponseError("export manifest entry has no http(s) url", practice_id=practice_id)
            if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
                raise InvalidResponseError("export manifest entry has an invalid count", practice_id=practice_id)
            parsed.append(ExportFile(resource_type, url, count))
        return tuple(parsed)

    return ExportManifest(
        transaction_time=str(body.get("transactionTime", "")),
        requires_access_token=body.get("requiresAccessToken") is True,
        output=files(body.get("output")),
        error=files(body.get("error", [])),
    )


class ProgressBar:
    """A one-line text progress bar on stderr (no dependency), redrawn in place."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width

    def status(self, text: str) -> None:
        self._stream.write(f"\r{text:<60}")
        self._stream.flush()

    def files(self, done: int, total: int, resources: int) -> None:
        filled = self._width * done // max(total, 1)
        bar = "#" * filled + "." * (self._width - filled)
        self.status(f"[{bar}] {done}/{total} files, {resources} resources")

    def finish(self) -> None:
        self._stream.write("\n")
        self._stream.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstream export", description="Bulk FHIR export of a certified-track practice into ndjson files."
    )
    parser.add_argument("practice_id", help="practice id from the tenant directory")
    add_service_options(parser, tenants=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for the ndjson files")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--group", help="export one Group's patients")
    level.add_argument("--patients", action="store_true", help="Patient-level export instead of system-level")
    parser.add_argument("--since", type=dt.datetime.fromisoformat, help="only resources changed since (ISO-8601 with zone)")
    parser.add_argument("--type", dest="types", default="", help="comma-separated resource types")
    parser.add_argument("--cancel", metavar="STATUS_URL", help="cancel an export job instead of starting one")
    return parser


def main(argv: list[str]) -> int:
    """`callstream export PRACTICE --out DIR [...]`: kick-off, poll, download with a progress bar."""
    options = _parser().parse_args(argv)
    tenants_file = require_tenants_file(settings_from(options), "export")
    directory = load_tenant_directory(tenants_file)
    practice = directory.get(options.practice_id)
    if practice is None:
        raise ConfigError(f"{tenants_file}: no such practice {options.practice_id!r}")
    if options.since is not None and options.since.tzinfo is None:
        raise ConfigError("--since needs a time zone, e.g. 2026-01-01T00:00:00+00:00")
    types = [t.strip() for t in options.types.split(",") if t.strip()]
    return asyncio.run(_export(practice, options, types, sys.stderr))


async def _export(practice: Practice, options: argparse.Namespace, types: list[str], stderr: TextIO) -> int:
    bar = ProgressBar(stderr)
    async with ModMedClient() as client:
        export = BulkExport(client, practice)
        if options.cancel:
            await export.cancel(options.cancel)
            print(f"cancelled {options.cancel}")
            return 0
        status_url = await export.kick_off(
            group_id=options.group, patients=options.patients, since=options.since, types=types
        )
        bar.status("export started")
        try:
            manifest = await export.wait_for_manifest(status_url, on_progress=lambda p: bar.status(f"waiting: {p}"))
            bar.files(0, len(manifest.output), 0)
            files = await export.download(manifest, options.out, on_file=bar.files)
        except asyncio.CancelledError:
            await export.cancel(status_url)
            raise
        bar.finish()
    for file in files:
        print(f"{file.path}\t{file.resource_type}\t{file.resources}")
    withheld = sum(f.withheld for f in files)
    print(f"exported {sum(f.resources for f in files)} resources in {len(files)} files to {options.out}"
          + (f" ({withheld} UDS/laboratory Observations withheld)" if withheld else ""))
    return 0
