"""The appointment change mirror: a ``_lastUpdated`` poller per practice and a webhook receiver.

ModMed has no webhooks and filters ``_lastUpdated`` by whole days, so every poll re-reads everything
changed since the start of the previous poll's day: windows overlap by design and the poller drops
what it already published, keyed by (appointment id, versionId or lastUpdated) in a bounded seen-set.
Practices that do push changes reach the Starlette receiver, which verifies the Standard Webhooks
signature (callstream.webhooks: the one implementation, secrets of 24-64 bytes) before it reads a byte of
the body as JSON. Both publish ``schemas.models.AppointmentChange`` records to
``callstream.appointment-changes.v1`` keyed by practice id; consumers de-duplicate too, so a
republished change is harmless, a lost one is not: the watermark advances only after Kafka confirmed
delivery.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from fhir.resources.R4B.appointment import Appointment
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from callstream.errors import CallstreamError
from callstream.tenants import Practice
from callstream.webhooks import WebhookHeaderError, WebhookSecret, WebhookSecretError, WebhookVerificationError, verify
from connectors.fhir import ModMedClient
from schemas.errors import SchemaError
from schemas.models import AppointmentChange, ChangeSource
from schemas.serde import AvroSerde
from schemas.topics import APPOINTMENT_CHANGES

log = logging.getLogger(__name__)

POLL_OVERLAP = dt.timedelta(hours=1)
"""Extra look-back on top of the day granularity, for clock skew between us and ModMed."""
MAX_POLL_PAGES = 2000
WEBHOOK_TOLERANCE_S = 300
MAX_WEBHOOK_BYTES = 1024 * 1024
DELIVERY_TIMEOUT_S = 10.0


class ChangePublishError(CallstreamError):
    """Kafka did not confirm every change; the caller must not treat them as published."""


class _BoundedSet:
    """Insertion-ordered set that forgets its oldest members beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._members: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def __contains__(self, member: tuple[str, ...]) -> bool:
        return member in self._members

    def add(self, member: tuple[str, ...]) -> None:
        self._members[member] = None
        self._members.move_to_end(member)
        while len(self._members) > self._capacity:
            self._members.popitem(last=False)

    def __len__(self) -> int:
        return len(self._members)


class ChangeSink:
    """Publishes AppointmentChange records with a confluent-kafka Producer, keyed by practice id."""

    def __init__(self, producer: Producer, *, serde: AvroSerde | None = None, topic: str = APPOINTMENT_CHANGES) -> None:
        self._producer = producer
        self._serde = serde or AvroSerde.for_topic(APPOINTMENT_CHANGES)
        self._topic = topic

    def publish_all(self, changes: Sequence[AppointmentChange], *, timeout_s: float = DELIVERY_TIMEOUT_S) -> None:
        """Produce and wait for delivery of every change; raises ChangePublishError otherwise."""
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                failures.append(error)

        try:
            for change in changes:
                self._producer.produce(
                    self._topic,
                    key=change.practice_id.encode("utf-8"),
                    value=self._serde.encode(change.to_avro()),
                    on_delivery=delivered,
                )
                self._producer.poll(0)
        except (BufferError, SchemaError) as exc:
            raise ChangePublishError(f"could not queue appointment changes: {type(exc).__name__}") from None
        remaining = self._producer.flush(timeout_s)
        if remaining or failures:
            reason = failures[0].str() if failures else f"{remaining} undelivered after {timeout_s}s"
            raise ChangePublishError(f"appointment changes not confirmed by Kafka: {reason}")


def change_from_appointment(
    practice_id: str, appointment: Appointment, source: ChangeSource, observed_at: dt.datetime
) -> AppointmentChange | None:
    """The change record of one Appointment version, or None when the resource lacks what it needs."""
    meta = appointment.meta
    if appointment.id is None or meta is None or meta.lastUpdated is None:
        return None
    try:
        return AppointmentChange(
            practice_id=practice_id,
            appointment_id=appointment.id,
            status=appointment.status,
            version_id=meta.versionId,
            last_updated=meta.lastUpdated,
            source=source,
            observed_at=observed_at,
        )
    except ValidationError:
        return None


def _dedup_key(change: AppointmentChange) -> tuple[str, ...]:
    return (change.practice_id, change.appointment_id, change.version_id or change.last_updated.isoformat())


class AppointmentPoller:
    """Polls each practice's appointments by ``_lastUpdated`` and publishes what is new."""

    def __init__(
        self, client: ModMedClient, sink: ChangeSink, *, seen_capacity: int = 200_000, overlap: dt.timedelta = POLL_OVERLAP
    ) -> None:
        self._client = client
        self._sink = sink
        self._seen = _BoundedSet(seen_capacity)
        self._overlap = overlap
        self._watermarks: dict[str, dt.datetime] = {}

    def watermark(self, practice_id: str) -> dt.datetime | None:
        """When the last fully published poll of the practice started (UTC)."""
        return self._watermarks.get(practice_id)

    async def poll_once(self, practice: Practice, *, since: dt.datetime | None = None) -> int:
        """One poll; returns how many changes were published. ``since`` seeds the first window."""
        started = dt.datetime.now(dt.UTC)
        low = self._watermarks.get(practice.practice_id) or since or started
        day = (low - self._overlap).astimezone(dt.UTC).date()
        result = await self._client.search(
            practice, Appointment, {"_lastUpdated": f"ge{day.isoformat()}", "_count": "50"}, max_pages=MAX_POLL_PAGES
        )
        if result.truncated:
            log.warning("practice %s: change poll hit the page budget; the rest comes next poll", practice.practice_id)
        fresh: list[AppointmentChange] = []
        skipped = 0
        for appointment in result.matches:
            change = change_from_appointment(practice.practice_id, appointment, ChangeSource.POLL, started)
            if change is None:
                skipped += 1
                continue
            key = _dedup_key(change)
            if key not in self._seen and all(_dedup_key(c) != key for c in fresh):
                fresh.append(change)
        if skipped:
            log.warning("practice %s: %d appointments without id, status or lastUpdated skipped", practice.practice_id, skipped)
        if fresh:
            await asyncio.to_thread(self._sink.publish_all, fresh)
        for change in fresh:
            self._seen.add(_dedup_key(change))
        if not result.truncated:
            self._watermarks[practice.practice_id] = started
        return len(fresh)

    async def run(self, practices: Sequence[Practice], *, interval_s: float, stop: asyncio.Event) -> None:
        """Poll every practice each interval until ``stop``; one failing practice does not stop the others."""
        while not stop.is_set():
            cycle_started = time.monotonic()
            outcomes = await asyncio.gather(*(self.poll_once(p) for p in practices), return_exceptions=True)
            for practice, outcome in zip(practices, outcomes, strict=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                    raise outcome
                if isinstance(outcome, Exception):
                    log.warning("practice %s: change poll failed: %s", practice.practice_id, type(outcome).__name__)
            remaining = interval_s - (time.monotonic() - cycle_started)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, remaining))
            except TimeoutError:
                continue


# ----------------------------------------------------------------------------------- webhooks


class WebhookError(Exception):
    """A refused webhook delivery: HTTP status and a message that echoes nothing from the request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def appointments_in(document: Any) -> list[Appointment]:
    """The Appointments of a pushed body: one Appointment, or a Bundle whose entries hold them."""
    if not isinstance(document, Mapping):
        raise WebhookError(400, "body must be a FHIR Appointment or Bundle")
    if document.get("resourceType") == "Appointment":
        resources: Iterable[Any] = [document]
    elif document.get("resourceType") == "Bundle" and isinstance(document.get("entry", []), list):
        resources = [e.get("resource") for e in document.get("entry", []) if isinstance(e, Mapping)]
    else:
        raise WebhookError(400, "body must be a FHIR Appointment or Bundle")
    appointments = []
    for resource in resources:
        if not isinstance(resource, Mapping) or resource.get("resourceType") != "Appointment":
            continue
        try:
            appointments.append(Appointment.model_validate(resource))
        except ValidationError:
            raise WebhookError(422, "an Appointment in the body is not valid FHIR R4B") from None
    return appointments


class WebhookReceiver:
    """Starlette app: ``POST /webhooks/{practice_id}/appointments`` → AppointmentChange records.

    Status codes tell the sender what to do: 2xx delivered (or a duplicate), 4xx never retry (bad
    signature, unknown practice, malformed body), 503 retry later (Kafka did not confirm).
    """

    def __init__(
        self,
        secrets: Mapping[str, SecretStr],
        sink: ChangeSink,
        *,
        seen_capacity: int = 100_000,
        tolerance_s: int = WEBHOOK_TOLERANCE_S,
    ) -> None:
        """``secrets`` are the practices' ``whsec_`` signing secrets.

        Raises:
            WebhookSecretError: a secret is not ``whsec_`` + base64 of 24-64 bytes (an empty or short key
                would let anybody forge deliveries); the message names the practice, never the secret.
        """
        self._secrets: dict[str, WebhookSecret] = {}
        for practice_id, secret in secrets.items():
            try:
                self._secrets[practice_id] = WebhookSecret.parse(secret.get_secret_value())
            except WebhookSecretError as exc:
                raise WebhookSecretError(f"webhook secret of practice {practice_id}: {exc}") from None
        self._sink = sink
        self._seen = _BoundedSet(seen_capacity)
        self._tolerance_s = tolerance_s
        self.app = Starlette(routes=[Route("/webhooks/{practice_id}/appointments", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> JSONResponse:
        practice_id = request.path_params["practice_id"]
        try:
            published = await self._handle(practice_id, request)
        except WebhookError as exc:
            log.warning("webhook for practice %.64s refused: %s", practice_id, exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except ChangePublishError:
            return JSONResponse({"error": "changes not confirmed by Kafka; retry"}, status_code=503)
        return JSONResponse({"published": published}, status_code=200)

    async def _handle(self, practice_id: str, request: Request) -> int:
        secret = self._secrets.get(practice_id)
        if secret is None:
            raise WebhookError(404, "no webhook configured for this practice")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_WEBHOOK_BYTES):
            raise WebhookError(413, "body too large")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_WEBHOOK_BYTES:
                raise WebhookError(413, "body too large")
        try:
            webhook_id = verify(secret, request.headers, bytes(body), now=time.time(), tolerance_s=self._tolerance_s)
        except WebhookHeaderError as exc:
            raise WebhookError(400, str(exc)) from None
        except WebhookVerificationError as exc:
            raise WebhookError(401, str(exc)) from None
        if (practice_id, webhook_id) in self._seen:
            return 0
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WebhookError(400, "body is not JSON") from None
        observed = dt.datetime.now(dt.UTC)
        changes = []
        for appointment in appointments_in(document):
            change = change_from_appointment(practice_id, appointment, ChangeSource.WEBHOOK, observed)
            if change is None:
                raise WebhookError(422, "an Appointment lacks id, a known status or meta.lastUpdated")
            changes.append(change)
        if changes:
            await asyncio.to_thread(self._sink.publish_all, changes)
        self._seen.add((practice_id, webhook_id))
        return len(changes)
