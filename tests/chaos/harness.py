"""The chaos suite's machinery: a private stack of real processes, the calls played through it, and the
invariants checked from the outside once everything has recovered (issue 15, point 6).

A run owns a Tansu broker (in memory, or on S3 storage so it survives a restart), one `callstream worker`,
one `callstream sinks run --only clickhouse` writing to its own chDB directory, and readers of the call
events, replies and audit topics. The ModMed sandbox and the tenant directory are the suite's session
fixtures (tests/fixtures). Every process a run starts is killed when the run's ExitStack closes, also when
the test fails.

Nothing here looks inside a process: the checks read the topics (every record, from offset 0, no group),
the worker group's committed offsets (an OffsetFetch, which does not join the group), the sandbox's FHIR
API and admin statistics, and the ClickHouse rows the sink stored (read by a child process once the sink
has stopped: chDB allows one process per data directory).

No PHI goes to logs or assertion messages: only call ids, event ids, offsets, resource ids and codes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

from callstream.backends import ensure_topics, free_port
from connectors.vocabulary import CALL_REFERENCE_SYSTEM, TASK_KIND_SYSTEM
from devkit.broker import TansuBroker
from guards.replies import INTERIM_TEMPLATES
from schemas.errors import SchemaError
from schemas.models import AuditEvent, CallEvent, IntentRecognised, Reply, SlotChosen
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, CALL_EVENTS, REPLIES, TOPICS, topic_named
from devkit.cast import Caller, PracticeCast, Script, booking, refill
from devkit.telephony import Telephony
from tests.fixtures.pipeline import REPO, WorkerProcess
from tests.fixtures.sandbox import SandboxServer
from tests.sinks.audit_helpers import MotoS3, committed_offsets

WORKER_GROUP = "callstream-worker"
"""The worker's app id: its consumer group on the call events (each run has a private broker)."""
SINK_GROUP = "callstream-audit-clickhouse"
AUDIT_DATABASE = "chaos"
CALL_EVENT_PARTITIONS = topic_named(CALL_EVENTS).partitions
WRITE_PRACTICE = "pain-1002"
"""Write phase with FHIR Task create: refills and bookings land in the sandbox."""
QUICK_PRACTICE = "pain-1003"
"""Read-only phase: its calls make no ModMed write, so they stay quick while pain-1002 is slowed."""
PROVIDER_TASK_CODES = ("refill-review-", "cs-review-")
"""FHIR Task code prefixes of the provider tasks (connectors.dispatch.TASK_KIND_CODES)."""
INTERIM = frozenset(template.value for template in INTERIM_TEMPLATES)
"""Replies a slow turn gets while its work still runs (the turn deadline): the turn's answer follows them, so
they never count as the turn's reply here. A caller who heard only "please hold" was left in silence."""
PROCESS_STOP_TIMEOUT_S = 20.0
SINK_READY_TIMEOUT_S = 60.0


def partition_of(call_id: str) -> int:
    """The call-events partition of a call: librdkafka's default partitioner (``consistent_random``, which the
    telephony producer uses) is CRC-32 of the key modulo the partition count. The tests also read back where
    each event landed, so a changed partitioner fails them instead of silently testing nothing."""
    return zlib.crc32(call_id.encode()) % CALL_EVENT_PARTITIONS


def call_id_on(partition: int, prefix: str, taken: set[str]) -> str:
    """A fresh call id whose events go to ``partition``."""
    for index in range(100_000):
        candidate = f"{prefix}-{index}"
        if candidate not in taken and partition_of(candidate) == partition:
            taken.add(candidate)
            return candidate
    raise AssertionError(f"no call id on partition {partition}")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, *, step_s: float = 0.1,
               tick: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        if tick is not None:
            tick()
        time.sleep(step_s)


# ------------------------------------------------------------------------------------------ calls


@dataclass(frozen=True)
class PlayedCall:
    """One scripted call and what the invariants expect of it."""

    script: Script
    practice_id: str
    kind: str
    """refill | booking | question"""
    patient_id: str | None

    @property
    def call_id(self) -> str:
        return self.script.call_id

    @property
    def events(self) -> list[CallEvent]:
        return self.script.events

    def turns(self) -> list[CallEvent]:
        """Events the voice agent waits on (an intent, a slot choice): each must get a reply."""
        return [e for e in self.events if isinstance(e.payload, IntentRecognised | SlotChosen)]

    @property
    def provider_escalation(self) -> bool:
        """A refill (controlled-substance) request at a write-phase practice: one provider Task in ModMed."""
        return self.kind == "refill" and self.practice_id == WRITE_PRACTICE


class CallBook:
    """Builds the scripted calls of a run from the sandbox's real patients (devkit.cast) and remembers them."""

    def __init__(self, cast: dict[str, PracticeCast], prefix: str, rng: random.Random) -> None:
        self._cast = cast
        self._prefix = prefix
        self._rng = rng
        self._taken: set[str] = set()
        self._counter = 0
        self.calls: list[PlayedCall] = []

    def _call_id(self, partition: int | None) -> str:
        if partition is not None:
            return call_id_on(partition, self._prefix, self._taken)
        self._counter += 1
        call_id = f"{self._prefix}-r{self._counter}"
        self._taken.add(call_id)
        return call_id

    def _caller(self, pool: tuple[Caller, ...]) -> Caller:
        return pool[self._rng.randrange(len(pool))]

    def refill(self, partition: int | None = None) -> PlayedCall:
        cast = self._cast[WRITE_PRACTICE]
        caller = self._caller(cast.refill)
        return self._add(PlayedCall(refill(cast, caller, call_id=self._call_id(partition)), WRITE_PRACTICE,
                                    "refill", caller.patient_id))

    def question(self, partition: int | None = None) -> PlayedCall:
        cast = self._cast[QUICK_PRACTICE]
        caller = self._caller(cast.plain)
        script = (Script(cast.called_number, call_id=self._call_id(partition), caller_number=caller.phone)
                  .started().identified(caller).intent("GENERAL_QUESTION").ended())
        return self._add(PlayedCall(script, QUICK_PRACTICE, "question", caller.patient_id))

    def booking(self) -> PlayedCall:
        """A booking that takes one of the first three offered slots, so concurrent bookings seldom race."""
        cast = self._cast[WRITE_PRACTICE]
        caller = self._caller(cast.plain)
        reason = self._rng.choice(("esi", "facet-injection", "follow-up", "trigger-point"))
        script = booking(cast, caller, reason, slot=f"OFFERED.{self._rng.randint(1, 3)}", call_id=self._call_id(None))
        return self._add(PlayedCall(script, WRITE_PRACTICE, "booking", caller.patient_id))

    def mixed(self) -> PlayedCall:
        """A random call of the morning mix: refills, bookings and quick questions."""
        return self._rng.choice((self.refill, self.refill, self.booking, self.question))()

    def _add(self, call: PlayedCall) -> PlayedCall:
        self.calls.append(call)
        return call


# --------------------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class LogRecord:
    partition: int
    offset: int
    value: Any
    """The decoded model, or None for a record that does not decode."""


class LogReader:
    """Every record of one catalogue topic from offset 0 (no consumer group), with its partition and offset."""

    def __init__(self, bootstrap: str, topic: str, model: type[Any]) -> None:
        self.topic = topic_named(topic)
        self._model = model
        self._serde = AvroSerde.for_topic(self.topic)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-reader-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "log.connection.close": False,
                                   "logger": _quiet_kafka_logger()})
        self._consumer.assign([TopicPartition(self.topic.name, p, 0) for p in range(self.topic.partitions)])
        self.records: list[LogRecord] = []
        self.ends: dict[int, int] = {}
        """Per partition, the offset after the last record read."""
        self.last_arrival = time.monotonic()

    def poll(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            try:
                value = self._model.from_avro(self._serde.decode(message.value()))
            except SchemaError:
                value = None
            self.records.append(LogRecord(message.partition(), message.offset(), value))
            self.ends[message.partition()] = message.offset() + 1
            self.last_arrival = time.monotonic()

    def values(self) -> list[Any]:
        return [record.value for record in self.records if record.value is not None]

    def close(self) -> None:
        self._consumer.close()


def _quiet_kafka_logger() -> logging.Logger:
    """librdkafka's connection chatter (a paused or restarted broker) to a logger nobody prints."""
    logger = logging.getLogger("tests.chaos.kafka")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


# ------------------------------------------------------------------------------------- processes


@dataclass
class SinksProcess:
    """`callstream sinks run --only clickhouse` as a subprocess writing to its own chDB directory."""

    bootstrap: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def dsn(self) -> str:
        return f"chdb://{self.data_dir / 'clickhouse'}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "sinks.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "CLICKHOUSE_DSN": self.dsn,
               "CALLSTREAM_DATA_DIR": str(self.data_dir), "CALLSTREAM_LOG_LEVEL": "INFO"}
        env.pop("CALLSTREAM_CONFIG", None)
        marker = self.log_text().count("ClickHouse audit sink consuming")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "callstream.cli", "sinks", "run", "--only", "clickhouse", "--database",
                 AUDIT_DATABASE], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1
        wait_until(lambda: self._exited_early() or self.log_text().count("ClickHouse audit sink consuming") > marker,
                   SINK_READY_TIMEOUT_S, "the audit sink to consume")
        if self._exited_early():
            raise RuntimeError(f"the audit sink exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")

    def _exited_early(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the batch in memory and any insert under way are cut off."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM: the sink flushes its batch, commits and leaves; SIGKILL if it does not within the bound."""
        if not self.running:
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(PROCESS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stored_rows(self) -> list[dict[str, Any]]:
        """Every row of the audit table after FINAL, read by a child process (see tests/chaos/audit_dump.py)."""
        assert not self.running, "chDB allows one process per data directory: stop the sink first"
        done = subprocess.run([sys.executable, "-m", "tests.chaos.audit_dump", self.dsn, AUDIT_DATABASE], cwd=REPO,
                              capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise AssertionError(f"reading the audit store failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
        return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


class Traffic:
    """The telephony side in a thread: calls played in small batches through Telephony.replay (each call
    paced on its replies, as the voice agent does) until asked to stop, and at least ``min_calls``."""

    def __init__(self, bootstrap: str, next_call: Callable[[], PlayedCall], *, min_calls: int, batch: int = 4,
                 reply_timeout_s: float = 90.0) -> None:
        self._bootstrap = bootstrap
        self._next_call = next_call
        self._min_calls = min_calls
        self._batch = batch
        self._reply_timeout_s = reply_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-traffic", daemon=True)
        self.played: list[PlayedCall] = []
        self.batches_started = 0
        self.timeouts = 0
        self.error: BaseException | None = None

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._reply_timeout_s + 30)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout_s: float) -> None:
        """Stop starting batches once ``min_calls`` are out, and wait for the last batch to be answered."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the call traffic did not finish within {timeout_s:.0f} s")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        phone = Telephony(self._bootstrap, reply_timeout_s=self._reply_timeout_s)
        try:
            phone.listen()
            while not (self._stop.is_set() and len(self.played) >= self._min_calls):
                calls = [self._next_call() for _ in range(self._batch)]
                self.played.extend(calls)
                self.batches_started += 1
                report = phone.replay([call.events for call in calls])
                self.timeouts += report.timeouts
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish() in the test thread
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                phone.close()


# -------------------------------------------------------------------------------------------- run


@dataclass
class Kill:
    """One kill -9 of the worker, with what the outside saw at that moment (the report's evidence)."""

    at: datetime
    committed: dict[int, int]
    """The worker group's committed offset per call-events partition, read just before the kill."""


@dataclass
class ChaosRun:
    """One run's processes and readers (see the module docstring)."""

    workdir: Path
    sandbox: SandboxServer
    tenants_file: Path
    broker: TansuBroker
    worker: WorkerProcess
    sinks: SinksProcess
    events: LogReader
    replies: LogReader
    audit: LogReader
    book: CallBook
    kills: list[Kill] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    """Processes that died without being killed by the test (restarted, as Kubernetes would)."""
    restart_s: list[float] = field(default_factory=list)
    """Seconds each worker restart took until ready (most of it the group rebalance after a kill)."""

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def poll(self, seconds: float = 0.1) -> None:
        for reader in (self.events, self.replies, self.audit):
            reader.poll(seconds)

    def committed(self) -> dict[int, int]:
        return committed_offsets(self.bootstrap, WORKER_GROUP, CALL_EVENTS, CALL_EVENT_PARTITIONS)

    def kill_worker(self) -> Kill:
        kill = Kill(datetime.now(UTC), self.committed())
        self.worker.kill()
        self.kills.append(kill)
        return kill

    def restart_worker(self) -> None:
        """Start the worker again and wait until it is ready (partitions assigned, tables recovered)."""
        started = time.monotonic()
        self.worker.start()
        self.restart_s.append(round(time.monotonic() - started, 1))

    def keep_alive(self) -> None:
        """Restart a worker or sink that died on its own, as the orchestrator would, and note it."""
        if self.worker.process is not None and self.worker.process.poll() is not None:
            self.unexpected_exits.append(f"worker exited with {self.worker.process.returncode}")
            self.restart_worker()
        if self.sinks.process is not None and self.sinks.process.poll() is not None:
            self.unexpected_exits.append(f"audit sink exited with {self.sinks.process.returncode}")
            self.sinks.start()

    def replies_by_turn(self, *, interim: bool = False) -> dict[str, list[Reply]]:
        """Replies per event id: the turns' answers, or with ``interim`` also the replies said meanwhile."""
        replies: dict[str, list[Reply]] = defaultdict(list)
        for reply in self.replies.values():
            if interim or reply.template not in INTERIM:
                replies[str(reply.in_reply_to)].append(reply)
        return replies

    def unanswered(self, calls: Iterable[PlayedCall] | None = None) -> list[CallEvent]:
        """Turns of ``calls`` (all calls when None) without an answer so far (interim replies do not count)."""
        answered = self.replies_by_turn()
        return [turn for call in (self.book.calls if calls is None else calls) for turn in call.turns()
                if str(turn.event_id) not in answered]

    def wait_for_replies(self, calls: Iterable[PlayedCall] | None, timeout_s: float) -> None:
        """Until every turn of ``calls`` (all calls when None) has a reply; the invariants report what is missing."""
        chosen = list(self.book.calls if calls is None else calls)
        deadline = time.monotonic() + timeout_s
        while self.unanswered(chosen) and time.monotonic() < deadline:
            self.poll(0.2)
            self.keep_alive()

    def settle(self, *, reply_timeout_s: float = 60.0, quiet_s: float = 2.0) -> None:
        """Recovery: every turn answered (or the timeout), the audit topic quiet, the sink committed to its end;
        then the sink is stopped so its chDB directory can be read."""
        self.wait_for_replies(None, reply_timeout_s)

        def quiet() -> bool:
            self.poll(0.2)
            return time.monotonic() - max(reader.last_arrival for reader in (self.events, self.audit)) >= quiet_s

        wait_until(quiet, 60, "the audit topic to go quiet", step_s=0, tick=self.keep_alive)

        def sink_caught_up() -> bool:
            committed = committed_offsets(self.bootstrap, SINK_GROUP, AUDIT, topic_named(AUDIT).partitions)
            return all(committed.get(p, 0) >= end for p, end in self.audit.ends.items())

        wait_until(sink_caught_up, 60, "the audit sink to commit the whole audit topic", step_s=0.5,
                   tick=self.keep_alive)
        self.sinks.stop()


RunFactory = Callable[..., ChaosRun]
"""The ``chaos`` fixture: starts a run with ``seed=`` and chaos_run's keyword options."""


@contextlib.contextmanager
def chaos_run(sandbox: SandboxServer, tenants_file: Path, cast: dict[str, PracticeCast], workdir: Path, *,
              seed: int, durable: bool = False) -> Iterator[ChaosRun]:
    """Start a private broker (``durable``: on S3 storage in a local moto_server, so it survives a restart),
    the worker and the audit sink; yield the run; kill everything afterwards."""
    with ExitStack() as stack:
        stack.callback(_clear_faults, sandbox)
        storage_engine, broker_env = "memory://tansu/", None
        if durable:
            s3 = stack.enter_context(MotoS3(bucket=f"chaos-{seed}"))
            storage_engine, broker_env = f"s3://{s3.bucket}/", s3.broker_env
        broker = TansuBroker(port=free_port(), storage_engine=storage_engine, env=broker_env,
                             log_path=workdir / "tansu.log")
        broker.start()
        run_box: list[ChaosRun] = []
        stack.callback(lambda: _kill_broker(run_box[0].broker if run_box else broker))
        ensure_topics(broker.bootstrap, [(topic.name, topic.partitions) for topic in TOPICS])
        worker = WorkerProcess(broker.bootstrap, tenants_file, workdir / "worker", app_id=WORKER_GROUP,
                               extra_args=("--no-ema",))
        stack.callback(worker.kill)
        sinks = SinksProcess(broker.bootstrap, workdir / "sinks")
        stack.callback(sinks.kill)
        readers = [LogReader(broker.bootstrap, CALL_EVENTS, CallEvent), LogReader(broker.bootstrap, REPLIES, Reply),
                   LogReader(broker.bootstrap, AUDIT, AuditEvent)]
        for reader in readers:
            stack.callback(reader.close)
        # The sink and the worker start side by side (each takes seconds of imports; the worker also a group join).
        failures: list[BaseException] = []
        sink_start = threading.Thread(target=_recording(sinks.start, failures), name="chaos-sink-start")
        sink_start.start()
        try:
            worker.start()
        finally:
            sink_start.join(SINK_READY_TIMEOUT_S + 10)
        if failures:
            raise failures[0]
        run = ChaosRun(workdir, sandbox, tenants_file, broker, worker, sinks, *readers,
                       book=CallBook(cast, f"chaos{seed}", random.Random(seed)))
        run_box.append(run)
        yield run


def _recording(target: Callable[[], None], failures: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller's thread
            failures.append(exc)

    return run


def _clear_faults(sandbox: SandboxServer) -> None:
    for practice_id in (WRITE_PRACTICE, QUICK_PRACTICE):
        with contextlib.suppress(httpx.HTTPError):
            sandbox.clear_faults(practice_id)


def _kill_broker(broker: TansuBroker) -> None:
    """SIGCONT first (a paused broker ignores nothing but SIGKILL, and may be stopped), then SIGKILL: its log
    is not needed afterwards."""
    if broker.process is not None and broker.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            broker.process.send_signal(signal.SIGCONT)
        broker.process.kill()
        broker.process.wait(10)


def restart_broker(run: ChaosRun) -> None:
    """Crash the broker (SIGKILL) and start a new one on the same port and storage."""
    old = run.broker
    _kill_broker(old)
    run.broker = TansuBroker(port=old.port, storage_engine=old.storage_engine, env=old.env, log_path=old.log_path)
    run.broker.start()


# ---------------------------------------------------------------------------------- sandbox reads


class SandboxRecords:
    """What the sandbox holds for the run's calls, read over its FHIR API with the practice's own credentials."""

    def __init__(self, sandbox: SandboxServer, practice_id: str) -> None:
        listing = next(p for p in sandbox.practices if p["practice_id"] == practice_id)
        self._base = listing["fhir_base"]
        self._http = httpx.Client(timeout=30.0, trust_env=False)
        grant = self._http.post(listing["token_url"], headers={"x-api-key": listing["api_key"]},
                                data={"grant_type": "password", "username": listing["username"],
                                      "password": listing["password"]})
        grant.raise_for_status()
        self._headers = {"x-api-key": listing["api_key"], "Authorization": f"Bearer {grant.json()['access_token']}",
                         "Accept": "application/fhir+json"}

    def close(self) -> None:
        self._http.close()

    def _search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        url: str | None = f"{self._base}/{resource_type}"
        query: dict[str, str] | None = {**params, "_count": "50"}
        while url is not None:
            response = self._http.get(url, params=query, headers=self._headers)
            response.raise_for_status()
            bundle = response.json()
            found.extend(entry["resource"] for entry in bundle.get("entry", ()))
            url = next((link["url"] for link in bundle.get("link", ()) if link.get("relation") == "next"), None)
            query = None
        return found

    def tasks_of(self, call_id: str) -> list[dict[str, Any]]:
        return self._search("Task", {"identifier": f"{CALL_REFERENCE_SYSTEM}|{call_id}"})

    def appointments_of(self, call_id: str, patient_id: str) -> list[dict[str, Any]]:
        return [a for a in self._search("Appointment", {"patient": patient_id})
                if any(i.get("system") == CALL_REFERENCE_SYSTEM and i.get("value") == call_id
                       for i in a.get("identifier", ()))]


def task_code(task: dict[str, Any]) -> str:
    return next((c["code"] for c in task.get("code", {}).get("coding", ()) if c.get("system") == TASK_KIND_SYSTEM), "")


# ------------------------------------------------------------------------------------- invariants


@dataclass
class Verdict:
    """The invariants' findings: violations (each a line of evidence) and figures for the report."""

    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.violations.append(message)

    def report(self) -> str:
        lines = [f"{key}: {value}" for key, value in self.figures.items()]
        return "\n".join([*lines, *(f"VIOLATION {v}" for v in self.violations)])


def verify(run: ChaosRun) -> Verdict:
    """Issue 15's invariants over every call of the run, from the outside (after ``run.settle()``)."""
    verdict = Verdict()
    calls = run.book.calls
    placed = {str(r.value.event_id): (r.partition, r.offset) for r in run.events.records if r.value is not None}

    # Every turn got a reply (its answer, not only "please hold").
    answered = run.replies_by_turn()
    said = run.replies_by_turn(interim=True)
    turns = [(call, turn) for call in calls for turn in call.turns()]
    for call, turn in turns:
        where = placed.get(str(turn.event_id))
        heard = sorted({r.template for r in said.get(str(turn.event_id), ())})
        commits = [kill.committed.get(where[0], 0) for kill in run.kills] if where else []
        verdict.check(str(turn.event_id) in answered,
                      f"no reply to turn {turn.event_id} (seq {turn.seq}) of call {call.call_id} ({call.kind} at "
                      f"{call.practice_id}), call-events partition/offset {where}; interim replies heard: {heard}; "
                      f"the partition's committed offset at each worker kill: {commits}")

    # The audit store holds exactly the distinct audit events of the topic.
    on_topic = {str(event.event_id) for event in run.audit.values()}
    rows = run.sinks.stored_rows()
    stored_ids = [row["event_id"] for row in rows]
    verdict.check(len(stored_ids) == len(set(stored_ids)), "duplicate event ids in the audit store after FINAL")
    verdict.check(set(stored_ids) == on_topic,
                  f"audit store holds {len(set(stored_ids))} events, the topic {len(on_topic)} distinct ones "
                  f"(missing from the store: {sorted(on_topic - set(stored_ids))[:5]}, "
                  f"not on the topic: {sorted(set(stored_ids) - on_topic)[:5]})")
    audited_ids = {rid for row in rows for rid in row["resource_ids"]}
    rows_of_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        rows_of_call[row["call_id"]].append(row)

    # The sandbox: one provider task per request, no duplicates, no write without its audit record.
    records = SandboxRecords(run.sandbox, WRITE_PRACTICE)
    tasks_total = appointments_total = 0
    try:
        for call in calls:
            if call.practice_id != WRITE_PRACTICE:
                continue
            tasks = records.tasks_of(call.call_id)
            appointments = records.appointments_of(call.call_id, call.patient_id) if call.kind == "booking" else []
            tasks_total += len(tasks)
            appointments_total += len(appointments)
            codes = [task_code(task) for task in tasks]
            for code in sorted(set(codes)):
                verdict.check(codes.count(code) == 1, f"call {call.call_id}: {codes.count(code)} Tasks with code "
                                                      f"{code}: {[t['id'] for t in tasks if task_code(t) == code]}")
            verdict.check(len(appointments) <= 1,
                          f"call {call.call_id}: {len(appointments)} Appointments {[a['id'] for a in appointments]}")
            for resource in (*tasks, *appointments):
                verdict.check(resource["id"] in audited_ids,
                              f"call {call.call_id}: {resource['resourceType']}/{resource['id']} is in ModMed with no "
                              f"audit row naming it")
            if call.provider_escalation:
                provider = [t["id"] for t in tasks if task_code(t).startswith(PROVIDER_TASK_CODES)]
                verdict.check(len(provider) == 1,
                              f"refill call {call.call_id}: {len(provider)} provider Tasks {provider}, want exactly 1")
                escalations = [r for r in rows_of_call[call.call_id]
                               if r["action"] == "ESCALATION" and r["trigger"] == "controlled_substance"]
                verdict.check(any(r["outcome"] == "SUCCESS" for r in escalations),
                              f"refill call {call.call_id}: no SUCCESS escalation audit row "
                              f"(found outcomes {[r['outcome'] for r in escalations]})")
                verdict.check(not any(r["outcome"] == "FAILURE" for r in escalations),
                              f"refill call {call.call_id}: an escalation audit row says FAILURE")
    finally:
        records.close()

    multiple = {turn_id: {r.reply_id for r in found} for turn_id, found in answered.items() if len(found) > 1}
    verdict.figures.update({
        "calls": len(calls), "turns": len(turns), "turns_answered": sum(str(t.event_id) in answered for _, t in turns),
        "turns_with_interim_replies": sum(len(said.get(str(t.event_id), ())) > len(answered.get(str(t.event_id), ()))
                                          for _, t in turns),
        "turns_answered_more_than_once": len(multiple),
        "turns_with_several_distinct_answers": sum(len(ids) > 1 for ids in multiple.values()),
        "audit_events_on_topic": len(on_topic), "audit_rows_stored": len(stored_ids),
        "tasks": tasks_total, "appointments": appointments_total,
        "worker_kills": len(run.kills), "worker_starts": run.worker.starts, "worker_restart_s": run.restart_s,
        "sink_starts": run.sinks.starts,
        "unexpected_exits": run.unexpected_exits,
    })
    return verdict
