"""Real test services for the audit sinks: audit events on Kafka, a signature-checking SIEM
receiver (Starlette on uvicorn, 127.0.0.1), a moto S3 server for a restartable Tansu broker."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from confluent_kafka import Consumer, Producer, TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from callstream.backends import free_port
from callstream.tenants import TenantDirectory, parse_tenant_directory
from callstream.webhooks import WebhookSecret, WebhookVerificationError, verify
from devkit.broker import TansuBroker
from schemas.models import AuditAction, AuditEvent, AuditOutcome, DeadLetter
from schemas.serde import AvroSerde
from schemas.topics import AUDIT

_AUDIT_SERDE = AvroSerde.for_topic(AUDIT)
_DEAD_LETTER_SERDE = AvroSerde("DeadLetter")
BASE_TIME = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def make_event(practice_id: str, index: int = 0, **fields: Any) -> AuditEvent:
    """A plausible audit event; `fields` override any attribute."""
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "occurred_at": BASE_TIME + timedelta(seconds=index),
        "practice_id": practice_id,
        "call_id": f"call-{practice_id}-{index // 5}",
        "caller_number": "+15551230000",
        "action": AuditAction.FHIR_READ,
        "outcome": AuditOutcome.SUCCESS,
        "resource_type": "Patient",
        "resource_ids": [f"pat-{index}"],
        "detail": {"http_status": "200", "route": "fhir"},
    }
    values.update(fields)
    return AuditEvent(**values)


def encode(event: AuditEvent) -> bytes:
    return _AUDIT_SERDE.encode(event.to_avro())


@dataclass
class Produced:
    """Where acknowledged messages landed: the log end each partition must be committed up to."""

    count: int = 0
    ends: dict[int, int] = field(default_factory=dict)

    def add(self, other: Produced) -> Produced:
        self.count += other.count
        for partition, end in other.ends.items():
            self.ends[partition] = max(end, self.ends.get(partition, 0))
        return self


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> Produced:
    """Produce (key, value) pairs and wait until the broker acknowledged every one."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "log.connection.close": False})
    failures: list[str] = []
    produced = Produced()

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error.name())
            return
        produced.count += 1
        produced.ends[message.partition()] = max(message.offset() + 1, produced.ends.get(message.partition(), 0))

    for key, value in messages:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    assert producer.flush(30) == 0, "producer did not drain"
    assert not failures, failures
    return produced


def produce_events(bootstrap: str, topic: str, events: Iterable[AuditEvent]) -> Produced:
    return produce(bootstrap, topic, ((event.practice_id.encode(), encode(event)) for event in events))


def read_dead_letters(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0,
                      quiet_s: float = 1.5) -> list[DeadLetter]:
    """Everything on a dead-letter topic, decoded: read (without a group) until at least `expected`
    records arrived and nothing more came for `quiet_s`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dlq-reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + timeout_s
    last_arrival = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                letters.append(DeadLetter.from_avro(_DEAD_LETTER_SERDE.decode(message.value())))
                last_arrival = time.monotonic()
            elif len(letters) >= expected and time.monotonic() - last_arrival >= quiet_s:
                break
    finally:
        consumer.close()
    return letters


def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (0 where nothing is committed).

    Compared with `Produced.ends` rather than watermarks: Tansu's S3 engine reports stale
    high watermarks.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(topic, partition) for partition in range(partitions)]
        return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(wanted, timeout=10)}
    finally:
        consumer.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def new_secret_text(rng: random.Random) -> str:
    return "whsec_" + base64.b64encode(rng.randbytes(32)).decode()


def tenant_directory(endpoints: dict[str, tuple[str, str, str] | None]) -> TenantDirectory:
    """Practices with (url, secret_ref, format) endpoints, or None for no SIEM."""
    practices = []
    for index, (practice_id, endpoint) in enumerate(endpoints.items()):
        entry: dict[str, Any] = {
            "practice_id": practice_id,
            "name": f"Practice {index}",
            "called_numbers": [f"+1555{index:07d}"],
            "base_url": "http://127.0.0.1:9",
            "firm_url_prefix": f"firm{index}",
            "auth": {"method": "password", "credentials_ref": f"env:UNUSED_{index}"},
        }
        if endpoint is not None:
            url, secret_ref, body_format = endpoint
            entry["siem"] = {"url": url, "secret_ref": secret_ref, "format": body_format}
        practices.append(entry)
    return parse_tenant_directory({"practices": practices}, "test-directory")


@dataclass
class ReceiverPractice:
    """What one practice's endpoint does and has seen."""

    secret: WebhookSecret
    mode: str = "flaky"
    """flaky: reject `reject_rate` at random; gone: 410; down: 503."""
    rng: random.Random = field(default_factory=random.Random)
    processed: list[str] = field(default_factory=list)
    """webhook-ids of every delivery the receiver processed, duplicates included, in order."""
    arrivals: dict[str, float] = field(default_factory=dict)
    """webhook-id → time.monotonic() of its first processing."""
    requests: int = 0
    rejected: int = 0

    def unique(self) -> list[str]:
        return list(dict.fromkeys(self.processed))


class SiemReceiver:
    """A practice-side SIEM webhook endpoint, one path and secret per practice.

    Every request's Standard Webhooks signature is verified with that practice's secret; a body
    about another practice counts as a cross-delivery. Flaky practices reject `reject_rate` of
    deliveries at random (seeded per practice): half before processing (503) and half after
    processing (500), so the sender retries deliveries the receiver already has.
    """

    def __init__(self, reject_rate: float = 0.3) -> None:
        self.reject_rate = reject_rate
        self.practices: dict[str, ReceiverPractice] = {}
        self.bad_signatures = 0
        self.cross_deliveries = 0
        self.id_mismatches = 0
        self.port = free_port()
        app = Starlette(routes=[Route("/siem/{practice_id}", self._receive, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     access_log=False))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def url(self, practice_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/siem/{practice_id}"

    def add_practice(self, practice_id: str, secret_text: str, mode: str = "flaky", seed: int = 0) -> None:
        self.practices[practice_id] = ReceiverPractice(WebhookSecret.parse(secret_text), mode, random.Random(seed))

    async def _receive(self, request: Request) -> Response:
        practice = self.practices.get(request.path_params["practice_id"])
        if practice is None:
            return Response(status_code=404)
        practice.requests += 1
        body = await request.body()
        try:
            webhook_id = verify(practice.secret, request.headers, body)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return Response(status_code=401)
        document = json.loads(body)
        about = document["metadata"]["tenant_uid"] if "metadata" in document else document["event"]["practice_id"]
        stable_id = document["metadata"]["uid"] if "metadata" in document else document["event"]["event_id"]
        if about != request.path_params["practice_id"]:
            self.cross_deliveries += 1
            return Response(status_code=400)
        if stable_id != webhook_id:
            self.id_mismatches += 1
        if practice.mode == "gone":
            return Response(status_code=410)
        if practice.mode == "down":
            return Response(status_code=503, headers={"retry-after": "0"})
        roll = practice.rng.random()
        if roll < self.reject_rate / 2:
            practice.rejected += 1
            return Response(status_code=503)
        practice.processed.append(webhook_id)
        practice.arrivals.setdefault(webhook_id, time.monotonic())
        if roll < self.reject_rate:
            practice.rejected += 1
            return Response(status_code=500)
        return Response(status_code=204)

    def __enter__(self) -> SiemReceiver:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the SIEM receiver to start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def discard_broker(broker: TansuBroker) -> None:
    """End a test's private broker at once (SIGKILL): its log is not needed afterwards, and a
    graceful stop waits out its 5 s grace period while any client connection lingers."""
    if broker.process is not None and broker.process.poll() is None:
        broker.process.kill()
        broker.process.wait(10)


class MotoS3:
    """A local S3 (moto_server) so a Tansu broker keeps its log across a restart."""

    def __init__(self, bucket: str = "tansu") -> None:
        self.bucket = bucket
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def broker_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

    def __enter__(self) -> MotoS3:
        executable = Path(sys.executable).with_name("moto_server")
        self._process = subprocess.Popen([str(executable), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._listening, 15, "moto_server to listen")
        assert httpx.put(f"{self.endpoint}/{self.bucket}").status_code == 200
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
        except OSError:
            return False
        return True

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)


@contextlib.contextmanager
def run_in_thread(target: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run a sink's `run(stop)` in a thread for the duration of a with-block; its error is re-raised."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "sink did not stop within 30 s"
    if errors:
        raise errors[0]
