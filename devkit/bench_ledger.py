"""`callstream bench ledger`: restore time and memory of a worker whose idempotency ledger holds many
entries, with every entry kept (as before the redelivery horizon) and with those past the horizon tombstoned.

Set-up: a private Tansu broker (or -b / KAFKA_BOOTSTRAP_SERVERS). ``--entries`` ledger entries (default
1,000,000), ``--live-share`` of them (default 0.1) updated within the horizon and the rest before it, spread
over nine more horizons (a ledger that grew for ten weeks at a steady rate), go to the ledger changelogs of
five worker app ids (arms):

- ``before``: every entry, as the pipeline kept them before the horizon (nothing was ever deleted);
- ``after``: every entry, then the tombstones of the horizon sweep, run here in-process with the worker's
  own code (``ChangelogLedger.forget_past_horizon``): the log of the first restart after the horizon was
  deployed on a grown ledger. Tansu does not compact its logs, so a restore reads every entry and every
  tombstone (``after_log_records``);
- ``steady``: the same entries and tombstones, each tombstone where the hourly sweep would have written it
  had the horizon always been there (after the entries written in the horizon and margins since its
  entry): what a restore reads from a log that Tansu never compacts, in the steady state;
- ``compacted``: the live entries only, which is what a compacting Kafka broker leaves of either once it has
  cleaned the log and dropped the tombstones (``delete.retention.ms``);
- ``empty``: no entry: the worker's own start-up time and memory.

Each round starts one `callstream worker` (no EMA) per arm, ``before`` and ``after`` next to each other in
turns (interleaved pairs), the other arms rotating, and measures ``ready_s``, from process start to
/readyz (which answers once the tables are restored), then the worker's memory once ready: ``rss_mb``
(VmRSS) and ``peak_rss_mb`` (VmHWM, the high-water mark of the restore). ``restore_s`` is an arm's
``ready_s`` less the ``empty`` arm's in the same round. The sweep is timed as it runs (``sweep_s``), with the
longest and the 99th-percentile stretch the event loop ran without a turn for other tasks meanwhile
(``sweep_max_busy_ms``, ``sweep_p99_busy_ms``, in CPU time: a call event arriving then would wait that long).

The last line is one JSON object: per arm the median (and ``_range``) over the rounds, the sweep's figures,
and every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from callstream.backends import ensure_topics, free_port
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.cli_options import add_service_options, settings_from
from callstream.settings import Settings
from callstream.tenants import TenantDirectory
from connectors.ledger import LedgerEntry, LedgerState, idempotency_key
from schemas.topics import CALL_EVENTS, topic_named
from streams.app import Pipeline, WorkerOptions
from streams.faust_boundary import RawTableChangelog
from devkit.bench_pipeline import bench_broker
from streams.horizon import RedeliveryHorizon
from streams.outputs import KafkaOutputs, producer_settings
from devkit.services import worker_process

ARMS = ("before", "after", "steady", "compacted", "empty")
PARTITIONS = topic_named(CALL_EVENTS).partitions
WRITE_CHUNK = 5000
"""Entries written (and acknowledged) at a time while the changelogs are filled."""
READY_TIMEOUT_S = 1800.0
SETTLE_S = 2.0
"""Wait after /readyz before reading the worker's memory."""
PAST_SPAN = 9
"""Entries past the horizon are spread over this many horizons before it."""
LOG_IDLE_S = 3.0
"""A changelog is read to its end once no record came for this long (see ``read_log``)."""

Record = tuple[str, int, bytes | None]
"""One changelog record: ledger key, partition, entry JSON (None: a tombstone)."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    partition: int
    value: bytes
    updated_at: datetime
    live: bool


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callstream bench ledger", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=["ledger"])
    parser.add_argument("--entries", type=int, default=1_000_000, help="ledger entries in each changelog")
    parser.add_argument("--live-share", type=float, default=0.1, help="share of entries within the horizon")
    parser.add_argument("--pairs", type=int, default=3, help="rounds, each starting one worker per arm")
    add_service_options(parser, kafka=True)
    options = parser.parse_args(argv)
    if options.entries < 100 or not 0 < options.live_share <= 1 or not 1 <= options.pairs <= 20:
        raise ConfigError("--entries >= 100, --live-share in (0, 1] and --pairs 1-20")
    settings = settings_from(options)
    horizon = RedeliveryHorizon.of(settings)
    now = datetime.now(UTC)
    entries = ledger_entries(options.entries, options.live_share, horizon, now)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="callstream-bench-ledger-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        bootstrap = stack.enter_context(bench_broker(settings.kafka_bootstrap_servers, work))
        run_id = uuid.uuid4().hex[:8]
        app_ids = {arm: f"callstream-bench-ledger-{arm}-{run_id}" for arm in ARMS}
        ensure_topics(bootstrap, [(_changelog(app_ids[arm]), PARTITIONS) for arm in ARMS])
        sweep = asyncio.run(_write_and_sweep(settings, bootstrap, app_ids["after"], entries, now, work / "sweep"))
        print(f"sweep: {sweep['tombstones']:,} tombstones in {sweep['sweep_s']:.1f} s; the event loop was busy for "
              f"at most {sweep['sweep_max_busy_ms']:.1f} ms at a time (p99 {sweep['sweep_p99_busy_ms']:.1f} ms)",
              file=sys.stderr)
        _produce(bootstrap, _changelog(app_ids["before"]), ((e.key, e.partition, e.value) for e in entries))
        _produce(bootstrap, _changelog(app_ids["steady"]), steady_log(entries, horizon))
        _produce(bootstrap, _changelog(app_ids["compacted"]), ((e.key, e.partition, e.value) for e in entries if e.live))
        after_records = sum(1 for _ in read_log(bootstrap, _changelog(app_ids["after"])))
        tenants = work / "tenants.json"
        tenants.write_text(json.dumps({"practices": []}))
        for round_ in range(options.pairs):
            for arm in _order(round_):
                figures = _restore(bootstrap, tenants, work / f"{arm}-{round_}", app_ids[arm])
                runs.append({"round": round_, "arm": arm, **figures})
                print(f"round {round_} {arm}: ready in {figures['ready_s']:.1f} s, RSS {figures['rss_mb']:.0f} MB "
                      f"(peak {figures['peak_rss_mb']:.0f} MB)", file=sys.stderr)
    print(json.dumps({
        "entries": len(entries),
        "live_entries": sum(entry.live for entry in entries),
        "after_log_records": after_records,
        "pairs": options.pairs,
        **sweep,
        **_summary(runs),
        "runs": runs,
    }))
    return 0


def ledger_entries(count: int, live_share: float, horizon: RedeliveryHorizon, now: datetime) -> list[Entry]:
    """Done task entries as the pipeline writes them; ``live_share`` updated within the horizon."""
    rng = random.Random(7)
    cutoff = horizon.ledger_cutoff(now)
    live_count = round(count * live_share)
    entries = []
    for index in range(count):
        live = index < live_count
        updated_at = now - horizon.horizon * rng.random() if live else cutoff - horizon.horizon * PAST_SPAN * rng.random()
        key = idempotency_key(f"bench-call-{index}", "CREATE_TASK", f"Patient/pt-{index}|callback")
        value = LedgerEntry(key=key, command="CREATE_TASK", state=LedgerState.DONE, attempts=1, resource_type="Task",
                            resource_id=f"task-{index}", updated_at=updated_at).model_dump_json().encode()
        entries.append(Entry(key, rng.randrange(PARTITIONS), value, updated_at, live))
    return entries


def steady_log(entries: list[Entry], horizon: RedeliveryHorizon) -> list[Record]:
    """The entries in the order they were written, each past one's tombstone where a sweep running since the
    first entry would have put it (once the horizon and its margins had passed)."""
    forgotten_after = horizon.horizon + 3 * horizon.margin
    timeline = [(entry.updated_at, (entry.key, entry.partition, entry.value)) for entry in entries]
    timeline += [(entry.updated_at + forgotten_after, (entry.key, entry.partition, None))
                 for entry in entries if not entry.live]
    timeline.sort(key=lambda moment: moment[0])
    return [record for _, record in timeline]


async def _write_and_sweep(settings: Settings, bootstrap: str, app_id: str, entries: list[Entry], now: datetime,
                           data_dir: Path) -> dict[str, Any]:
    """Every entry through the worker's changelog writer, then the worker's horizon sweep over them all.

    The worker freezes its start-up heap and its ledger's keys and values are no objects the cyclic GC
    tracks; this process's own list of entries would be, so it is frozen likewise before the sweep runs."""
    pipeline = Pipeline(settings.model_copy(update={"kafka_bootstrap_servers": bootstrap}), TenantDirectory([]),
                        WorkerOptions(app_id=app_id, data_dir=str(data_dir)))
    outputs = KafkaOutputs(bootstrap)
    outputs.start(asyncio.get_running_loop())
    pipeline.runtime.outputs = outputs
    writer = RawTableChangelog(pipeline.ledger, pipeline.runtime)
    gaps: list[float] = []
    try:
        for start in range(0, len(entries), WRITE_CHUNK):
            await asyncio.gather(*(writer.write(entry.key, entry.partition, entry.value)
                                   for entry in entries[start:start + WRITE_CHUNK]))
        gc.collect()
        gc.freeze()
        ticker = asyncio.ensure_future(_tick(gaps))
        started = time.perf_counter()
        tombstones = await pipeline.write_ledger.forget_past_horizon(set(range(PARTITIONS)), now)
        sweep_s = time.perf_counter() - started
        ticker.cancel()
    finally:
        await outputs.close()
        gc.unfreeze()
    gaps.sort()
    return {"tombstones": tombstones, "sweep_s": round(sweep_s, 2),
            "sweep_max_busy_ms": round(1000 * gaps[-1], 1) if gaps else 0.0,
            "sweep_p99_busy_ms": round(1000 * gaps[int(0.99 * len(gaps))], 1) if gaps else 0.0}


async def _tick(gaps: list[float]) -> None:
    """Records the CPU time the event loop's thread spent between two turns of this task: how long the loop
    ran without letting another task (a call event) go on. CPU time, not wall time: on a shared machine the
    wall-clock gaps also hold the time the process was not scheduled at all."""
    while True:
        busy_from = time.thread_time()
        await asyncio.sleep(0.001)
        gaps.append(time.thread_time() - busy_from)


def _produce(bootstrap: str, topic: str, records: Iterable[Record]) -> None:
    """The records as the worker writes its changelog (JSON key, raw value), each on its partition."""
    producer = Producer(producer_settings(bootstrap, linger_ms=20))
    for key, partition, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=json.dumps(key).encode(), partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise ServiceUnavailableError(f"{topic}: the broker did not take every record")


def read_log(bootstrap: str, topic: str) -> Iterator[Message]:
    """Every record of the topic's log, partition by partition in order, until none came for ``LOG_IDLE_S``.

    Not up to the high watermarks: Tansu reports a partition's high watermark as the base offset of its last
    record batch plus one, short of the batch's other records."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-ledger-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "log.connection.close": False})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        heard = time.monotonic()
        while time.monotonic() - heard < LOG_IDLE_S:
            for message in consumer.consume(10_000, timeout=0.2):
                if message.error() is None:
                    heard = time.monotonic()
                    yield message
    finally:
        consumer.close()


def _restore(bootstrap: str, tenants: Path, run_dir: Path, app_id: str) -> dict[str, float]:
    """Start a worker on the app id's changelogs: time to ready, and its memory once ready."""
    run_dir.mkdir(parents=True)
    started = time.monotonic()
    with worker_process(bootstrap, tenants, run_dir, app_id=app_id, port=free_port(), extra_args=("--no-ema",),
                        log_level="WARNING", ready_timeout_s=READY_TIMEOUT_S) as pid:
        ready_s = time.monotonic() - started
        time.sleep(SETTLE_S)
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"ready_s": round(ready_s, 2), "rss_mb": _mb(status["VmRSS"]), "peak_rss_mb": _mb(status["VmHWM"])}


def _order(round_: int) -> tuple[str, ...]:
    """``before`` and ``after`` next to each other, first one then the other; the other arms rotate."""
    pair = ("before", "after") if round_ % 2 == 0 else ("after", "before")
    others = ARMS[2:][round_ % 3:] + ARMS[2:][:round_ % 3]
    return pair + others if round_ % 2 == 0 else others + pair


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each arm's median and range; restore_s against the empty worker of the same round."""
    empty = {run["round"]: run["ready_s"] for run in runs if run["arm"] == "empty"}
    figures: dict[str, Any] = {}
    for arm in ARMS:
        mine = [run for run in runs if run["arm"] == arm]
        columns = {name: [run[name] for run in mine] for name in ("ready_s", "rss_mb", "peak_rss_mb")}
        if arm != "empty":
            columns["restore_s"] = [run["ready_s"] - empty[run["round"]] for run in mine]
        for name, values in columns.items():
            figures[f"{arm}_{name}"] = round(statistics.median(values), 2)
            figures[f"{arm}_{name}_range"] = [round(min(values), 2), round(max(values), 2)]
    return figures


def _changelog(app_id: str) -> str:
    """Faust's name for an app's ledger changelog topic."""
    return f"{app_id}-ledger-changelog"


def _mb(kilobytes: str) -> float:
    return round(int(kilobytes.split()[0]) / 1024, 1)
