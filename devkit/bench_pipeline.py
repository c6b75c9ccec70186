"""`callstream bench pipeline`: throughput and reply latency of one worker, against a raw pass-through.

Set-up: a private Tansu broker (or -b / KAFKA_BOOTSTRAP_SERVERS), the ModMed sandbox with its rate limits
lifted and no injected latency, one `callstream worker` without EMA automation.

1. Baseline: a raw confluent-kafka consume → produce pass-through of the same call-event bytes on the
   same broker (no decoding, no state, no I/O): ``baseline_events_per_s``.
2. Throughput: a burst of calls (call started, then an unrecognised intent answered with CLARIFY),
   produced as fast as possible; ``events_per_s`` counts events from the first produced to the last
   reply consumed. Every event is decoded, validated, resolved, run through the guard, kept in the
   changelogged call table and audited; these turns need no ModMed call, so the figure is the pipeline's
   own capacity.
3. Latency, open loop at ``--rate`` events/s for ``--seconds``; calls start at random moments and each
   caller's steps follow 0.2 s apart (as on the phone); from each event produced to its reply consumed:
   - ``p50_ms``/``p99_ms``: a realistic mix, half the calls identify the caller (patient search and
     compliance flags over FHIR: 3 sandbox requests) and leave a message (a FHIR Task: 1 request), half
     are unrecognised requests;
   - ``pipeline_p50_ms``/``pipeline_p99_ms``: the same load without ModMed calls (callstream's share).
   ``modmed_request_ms`` is the sandbox's mean answer time during the mixed load: it shows how far the
   sandbox, on the same machine, stayed from answering at once; ``modmed_requests_per_call`` is how many
   requests each identified caller's call made.
4. Faults, in the same run: 2 s of latency at one sandbox practice, a 429 storm (Retry-After 40 s) at a
   second, 30 % 5xx at a third, the fourth healthy; identified callers asking a question at each, at
   ``FAULT_RATE_PER_PRACTICE`` events/s per practice for ``FAULT_SECONDS``. ``first_reply_p99_ms_faults``:
   event produced → first reply of each turn (PLEASE_HOLD counts: the caller is no longer in silence) at
   the faulty practices (target ≤ 1,000); ``healthy_p99_ms_during_faults``: the healthy practice's reply
   p99 meanwhile (target ≤ 50: no head-of-line blocking), beside ``healthy_p99_ms_no_faults``, the same
   calls' p99 measured just before with no practice failing (what the healthy practice gets anyway on
   this machine); ``silent_turns``: turns with no reply within ``SILENCE_S`` (target 0).
5. Scale, with ``--practices N`` (e.g. 2400, the seeds' fleet), first and on its own processes: a sandbox of
   N practices (``scale_sandbox_start_s``: process start to serving; target ≤ 60), its listing turned into a
   tenant directory (``scale_listing_s``), one worker with all N tenants (``scale_worker_start_s``: process
   start to /readyz; ``scale_worker_rss_mb`` then and ``scale_worker_rss_mb_after`` after the load), one
   unrecognised-intent call to every practice (``scale_events_per_s``: tenant routing at N), and an
   identified caller at ``SCALE_COLD_PRACTICES`` practices the sandbox has not generated yet
   (``scale_cold_answer_p50_ms``/``_max_ms``: the answer when ModMed's data is made on first request).
6. CPU: ``worker_cpu_ms_per_event`` (burst) and ``worker_cpu_ms_per_event_mixed`` (the mixed load), the
   worker process's CPU time (all threads) per call event. On a shared machine the time figures above
   swing with the neighbours' load; these swing less (about ±20 % here), so compare them first.

The last line is one JSON object: events_per_s, p50_ms, p99_ms, baseline_events_per_s, ratio (plus
the figures behind them, and the scale_* figures with --practices).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition

from callstream.cli_options import add_service_options, settings_from
from callstream.backends import ensure_topics, free_port, wait_for_broker
from callstream.errors import ConfigError, ServiceUnavailableError
from sandbox.cli import GENERATE_NOW
from sandbox.generator import build_world
from schemas.models import CallEvent, Reply
from schemas.serde import AvroSerde
from schemas.topics import CALL_EVENTS, REPLIES, TOPICS, topic_named
from devkit.cast import Caller, PracticeCast, Script, cast_of
from devkit.sandbox_tenants import sandbox_listing, write_sandbox_directory
from devkit.services import private_broker, sandbox_process, worker_process
from devkit.telephony import INTERIM_TEMPLATE_NAMES

BENCH_PRACTICE = "pain-1002"
BENCH_PATIENTS = 200
PASSTHROUGH_IN = "callstream-bench-passthrough-in"
PASSTHROUGH_OUT = "callstream-bench-passthrough-out"
UNLIMITED_RATE = 100_000
STEP_GAP_S = 0.2
"""Time between a caller's steps in the latency load (a turn of the voice agent is a few hundred ms)."""
BENCH_SEED = 7
BENCH_PRACTICES = 4
FAULTS: dict[str, dict[str, object]] = {
    "pain-1001": {"latency_ms": 2000},
    "pain-1003": {"burst_429": 1_000_000, "burst_retry_after_s": 40},
    "pain-1004": {"error_5xx_ratio": 0.3},
}
"""The fault phase's practices; BENCH_PRACTICE stays healthy."""
FAULT_RATE_PER_PRACTICE = 8.0
FAULT_SECONDS = 10.0
HEALTHY_CALLS_FACTOR = 4
SILENCE_S = 5.0
SCALE_PATIENTS = 50
"""Patients per practice in the scale phase's sandbox (only the practices a call reaches are generated)."""
SCALE_COLD_PRACTICES = 24
SCALE_READY_TIMEOUT_S = 300.0
SCALE_LISTING_TIMEOUT_S = 300.0
"""The listing makes every certified practice's RSA key (about 800 at 2,400 practices)."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callstream bench pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=["pipeline"])
    parser.add_argument("--burst-calls", type=int, default=4000, help="calls of the throughput burst (2 events each)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second of the latency load")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the latency load")
    parser.add_argument("--practices", type=int, default=0,
                        help="add the scale phase: a sandbox and a worker with this many practices (e.g. 2400)")
    add_service_options(parser, kafka=True)
    options = parser.parse_args(argv)
    if options.burst_calls < 100 or not 1 <= options.rate <= 5000 or not 5 <= options.seconds <= 600:
        raise ConfigError("--burst-calls >= 100, --rate 1-5000 and --seconds 5-600")
    if options.practices and not GENERATE_NOW + SCALE_COLD_PRACTICES <= options.practices <= 10_000:
        raise ConfigError(f"--practices {GENERATE_NOW + SCALE_COLD_PRACTICES}-10000 (or 0: no scale phase)")
    settings = settings_from(options)
    with tempfile.TemporaryDirectory(prefix="callstream-bench-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        bootstrap = stack.enter_context(bench_broker(settings.kafka_bootstrap_servers, work))
        scale = _scale_phase(bootstrap, work / "scale", options.practices) if options.practices else {}
        sandbox_url = stack.enter_context(sandbox_process(work, seed=7, patients=BENCH_PATIENTS,
                                                          practices=BENCH_PRACTICES))
        for listing in sandbox_listing(sandbox_url):
            httpx.put(f"{sandbox_url}/_admin/practices/{listing['practice_id']}/settings",
                      json={"rate_limit_per_minute": UNLIMITED_RATE}, timeout=5, trust_env=False).raise_for_status()
        tenants = write_sandbox_directory(sandbox_url, work,
                                          phases={practice: "write" for practice in (BENCH_PRACTICE, *FAULTS)},
                                          rate_limit_per_min=UNLIMITED_RATE)
        casts = cast_of(build_world(seed=7, practices=BENCH_PRACTICES, patients_per_practice=BENCH_PATIENTS))
        cast = casts[BENCH_PRACTICE]
        baseline = _passthrough(bootstrap, _burst(cast.called_number, options.burst_calls))
        print(f"baseline pass-through: {baseline:,.0f} events/s", file=sys.stderr)
        metrics_port = free_port()
        worker = stack.enter_context(worker_process(
            bootstrap, tenants, work, app_id=f"callstream-bench-{uuid.uuid4().hex[:8]}", port=metrics_port,
            extra_args=("--no-ema", "--max-in-flight", "4000"), log_level="WARNING"))
        burst = _burst(cast.called_number, options.burst_calls)
        cpu_before = _cpu_seconds(worker)
        throughput = _throughput(bootstrap, burst)
        burst_cpu_ms = 1000 * (_cpu_seconds(worker) - cpu_before) / len(burst)
        print(f"pipeline burst: {throughput:,.0f} events/s, worker CPU {burst_cpu_ms:.3f} ms/event", file=sys.stderr)
        own, own_rate, _, _ = _latency(bootstrap, cast.called_number, (), options.rate, options.seconds)
        _report("pipeline only", own, own_rate)
        before = _modmed_seconds(metrics_port)
        cpu_before = _cpu_seconds(worker)
        mixed, mixed_rate, mixed_events, identified_calls = _latency(bootstrap, cast.called_number, cast.plain,
                                                                     options.rate, options.seconds)
        mixed_cpu_ms = 1000 * (_cpu_seconds(worker) - cpu_before) / mixed_events
        after = _modmed_seconds(metrics_port)
        _report("with ModMed calls", mixed, mixed_rate)
        print(f"worker CPU with ModMed calls: {mixed_cpu_ms:.3f} ms/event", file=sys.stderr)
        faults = _fault_phase(bootstrap, sandbox_url, casts)
        print(f"faults: first reply p99 {faults['first_reply_p99_ms_faults']:.0f} ms at the faulty practices, "
              f"healthy p99 {faults['healthy_p99_ms_during_faults']:.1f} ms (no faults: "
              f"{faults['healthy_p99_ms_no_faults']:.1f} ms), {faults['silent_turns']} silent turns",
              file=sys.stderr)
    modmed_ms = 1000 * (after[0] - before[0]) / max(1, after[1] - before[1])
    print(json.dumps({
        "events_per_s": round(throughput, 1),
        "p50_ms": round(_percentile(mixed, 50), 2),
        "p99_ms": round(_percentile(mixed, 99), 2),
        "baseline_events_per_s": round(baseline, 1),
        "ratio": round(throughput / baseline, 3),
        "pipeline_p50_ms": round(_percentile(own, 50), 2),
        "pipeline_p99_ms": round(_percentile(own, 99), 2),
        "latency_load_events_per_s": round(mixed_rate, 1),
        "modmed_request_ms": round(modmed_ms, 2),
        "modmed_requests_per_call": round((after[1] - before[1]) / identified_calls, 2),
        "burst_events": options.burst_calls * 2,
        "worker_cpu_ms_per_event": round(burst_cpu_ms, 3),
        "worker_cpu_ms_per_event_mixed": round(mixed_cpu_ms, 3),
        **faults,
        **scale,
    }))
    return 0


def _scale_phase(bootstrap: str, work: Path, practices: int) -> dict[str, float]:
    """Start-up and memory at the seeds' scale (see the module docstring, phase 5)."""
    work.mkdir()
    started = time.monotonic()
    with sandbox_process(work, seed=BENCH_SEED, patients=SCALE_PATIENTS, practices=practices) as sandbox_url:
        sandbox_start_s = time.monotonic() - started
        print(f"scale: sandbox of {practices} practices serving after {sandbox_start_s:.1f} s", file=sys.stderr)
        started = time.monotonic()
        tenants = write_sandbox_directory(sandbox_url, work, rate_limit_per_min=UNLIMITED_RATE,
                                          timeout_s=SCALE_LISTING_TIMEOUT_S)
        listing_s = time.monotonic() - started
        world = build_world(seed=BENCH_SEED, practices=practices, patients_per_practice=SCALE_PATIENTS, generate_now=0)
        cold = random.Random(BENCH_SEED).sample(list(world.profiles)[GENERATE_NOW:], SCALE_COLD_PRACTICES)  # not generated at start-up
        casts = cast_of(world, practice_ids=cold)
        started = time.monotonic()
        with worker_process(bootstrap, tenants, work, app_id=f"callstream-bench-scale-{uuid.uuid4().hex[:8]}",
                            port=free_port(), extra_args=("--no-ema",), log_level="WARNING",
                            ready_timeout_s=SCALE_READY_TIMEOUT_S) as worker:
            worker_start_s = time.monotonic() - started
            rss_mb = _rss_mb(worker)
            print(f"scale: worker with {practices} tenants ready after {worker_start_s:.1f} s, RSS {rss_mb:.0f} MB",
                  file=sys.stderr)
            scripts = [Script(profile.called_numbers[0]).started().intent("UNKNOWN")
                       for profile in world.profiles.values()]
            spread = _throughput(bootstrap, [s.events[0] for s in scripts] + [s.events[1] for s in scripts])
            cold_scripts = [Script(casts[p].called_number).started().identified(casts[p].plain[0])
                            .intent("GENERAL_QUESTION").ended() for p in cold]
            plan = [event for script in cold_scripts for event in script.events]
            turns = {str(e.event_id): e.call_id for e in plan if e.payload.type == "intent_recognised"}
            _, answers = _replies_to(bootstrap, plan, turns, rate=len(plan) / 2)
            rss_after_mb = _rss_mb(worker)
    if len(answers) < len(turns):
        raise ServiceUnavailableError(f"scale: {len(turns) - len(answers)} of {len(turns)} cold-practice turns "
                                      "got no answer")
    print(f"scale: one call to each practice at {spread:,.0f} events/s; cold practices answered in "
          f"p50 {_percentile(list(answers.values()), 50):.0f} ms, max {max(answers.values()):.0f} ms; "
          f"worker RSS {rss_after_mb:.0f} MB", file=sys.stderr)
    return {
        "scale_practices": practices,
        "scale_sandbox_start_s": round(sandbox_start_s, 1),
        "scale_listing_s": round(listing_s, 1),
        "scale_worker_start_s": round(worker_start_s, 1),
        "scale_worker_rss_mb": round(rss_mb),
        "scale_worker_rss_mb_after": round(rss_after_mb),
        "scale_events_per_s": round(spread, 1),
        "scale_cold_answer_p50_ms": round(_percentile(list(answers.values()), 50), 1),
        "scale_cold_answer_max_ms": round(max(answers.values()), 1),
    }


def _rss_mb(pid: int) -> float:
    """Resident memory of a process now (Linux /proc), in MB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise ServiceUnavailableError(f"cannot read the worker's memory: {exc.strerror}") from None
    kilobytes = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kilobytes / 1024


def _report(label: str, latencies: list[float], rate: float) -> None:
    print(f"latency {label} at {rate:.0f} events/s: p50 {_percentile(latencies, 50):.1f} ms, "
          f"p99 {_percentile(latencies, 99):.1f} ms ({len(latencies)} replies)", file=sys.stderr)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError as exc:
        raise ServiceUnavailableError(f"cannot read the worker's CPU time: {exc.strerror}") from None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _modmed_seconds(port: int) -> tuple[float, int]:
    """Total seconds and count of the worker's ModMed requests so far (its FHIR request histogram)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    seconds = count = 0.0
    for line in text.splitlines():
        if line.startswith("callstream_fhir_request_seconds_sum{"):
            seconds += float(line.rsplit(" ", 1)[1])
        elif line.startswith("callstream_fhir_request_seconds_count{"):
            count += float(line.rsplit(" ", 1)[1])
    return seconds, int(count)


@contextlib.contextmanager
def bench_broker(external: str | None, work: Path) -> Iterator[str]:
    """The configured broker if any, else a private Tansu broker; either with every catalogue topic."""
    if external:
        wait_for_broker(external)
        ensure_topics(external, [(t.name, t.partitions) for t in TOPICS])
        yield external
        return
    with private_broker(work) as bootstrap:
        yield bootstrap


def _burst(called_number: str, calls: int) -> list[CallEvent]:
    """Calls of two events each, interleaved as concurrent calls arrive: started, then an unrecognised intent."""
    scripts = [Script(called_number).started().intent("UNKNOWN") for _ in range(calls)]
    return [script.events[0] for script in scripts] + [script.events[1] for script in scripts]


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all",
                     "queue.buffering.max.messages": 1_000_000, "log.connection.close": False})


def _consumer_at_end(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"callstream-bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "log.connection.close": False, "fetch.wait.max.ms": 5})
    partitions = topic_named(topic).partitions if topic in (REPLIES, CALL_EVENTS) else 12
    ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    consumer.assign([TopicPartition(topic, p, end) for p, end in enumerate(ends)])
    return consumer


def _passthrough(bootstrap: str, events: list[CallEvent]) -> float:
    """Raw confluent-kafka consume → produce of the same bytes: what the broker and client alone cost."""
    ensure_topics(bootstrap, [(PASSTHROUGH_IN, 12), (PASSTHROUGH_OUT, 12)])
    serde = AvroSerde.for_topic(CALL_EVENTS)
    messages = [(event.call_id.encode(), serde.encode(event.to_avro())) for event in events]
    stop = threading.Event()

    source = _consumer_at_end(bootstrap, PASSTHROUGH_IN)  # assigned, not subscribed: no group join to wait for

    def forward() -> None:
        consumer = source
        producer = _producer(bootstrap)
        while not stop.is_set():
            for message in consumer.consume(500, 0.05):
                if message.error() is None:
                    producer.produce(PASSTHROUGH_OUT, key=message.key(), value=message.value())
            producer.poll(0)
        producer.flush(10)
        consumer.close()

    output = _consumer_at_end(bootstrap, PASSTHROUGH_OUT)
    forwarder = threading.Thread(target=forward, name="bench-passthrough", daemon=True)
    forwarder.start()
    producer = _producer(bootstrap)
    started = time.perf_counter()
    for key, value in messages:
        producer.produce(PASSTHROUGH_IN, key=key, value=value)
        producer.poll(0)
    producer.flush(30)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < len(messages) and time.monotonic() < deadline:
        seen += sum(1 for m in output.consume(1000, 0.1) if m.error() is None)
    elapsed = time.perf_counter() - started
    stop.set()
    forwarder.join(timeout=15)
    output.close()
    if seen < len(messages):
        raise ServiceUnavailableError(f"the pass-through forwarded {seen} of {len(messages)} events")
    return len(messages) / elapsed


def _throughput(bootstrap: str, events: list[CallEvent]) -> float:
    """The burst through the worker: from the first event produced to the last reply consumed."""
    serde = AvroSerde.for_topic(CALL_EVENTS)
    encoded = [(event.call_id.encode(), serde.encode(event.to_avro())) for event in events]
    expected = sum(1 for event in events if event.payload.type == "intent_recognised")
    replies = _consumer_at_end(bootstrap, REPLIES)
    producer = _producer(bootstrap)
    started = time.perf_counter()
    for key, value in encoded:
        producer.produce(CALL_EVENTS, key=key, value=value)
        producer.poll(0)
    producer.flush(30)
    seen = 0
    deadline = time.monotonic() + 300
    while seen < expected and time.monotonic() < deadline:
        seen += sum(1 for m in replies.consume(1000, 0.1) if m.error() is None)
    elapsed = time.perf_counter() - started
    replies.close()
    if seen < expected:
        raise ServiceUnavailableError(f"the worker answered {seen} of {expected} calls within the time limit")
    return len(events) / elapsed


def _latency(bootstrap: str, called_number: str, callers: tuple[Caller, ...], rate: float,
             seconds: float) -> tuple[list[float], float, int, int]:
    """Open-loop load at ``rate`` events/s: per reply, milliseconds from its event produced to it consumed;
    the rate achieved, the number of events sent and the number of calls with an identified caller.

    Without ``callers`` every call is an unrecognised request (no ModMed call at all)."""
    serde = AvroSerde.for_topic(CALL_EVENTS)
    reply_serde = AvroSerde.for_topic(REPLIES)
    scripts: list[Script] = []
    identified = 0
    while sum(len(script.events) for script in scripts) < rate * seconds:
        script = Script(called_number).started()
        if len(scripts) % 2 == 0 and callers:
            script.identified(callers[len(scripts) % len(callers)]).intent("GENERAL_QUESTION")
            identified += 1
        else:
            script.intent("UNKNOWN")
        scripts.append(script.ended())
    plan = _interleaved(scripts, rate)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    expected = sum(1 for event in plan if event.payload.type == "intent_recognised")
    replies = _consumer_at_end(bootstrap, REPLIES)
    done = threading.Event()

    def collect() -> None:
        while not done.is_set() and len(latencies) < expected:
            message = replies.poll(0.05)  # poll returns the first message at once (consume waits for a batch)
            value = message.value() if message is not None and message.error() is None else None
            if value is None:
                continue
            arrived = time.perf_counter()
            reply = Reply.from_avro(reply_serde.decode(value))
            produced = sent.get(str(reply.in_reply_to))
            if produced is not None:
                latencies.append((arrived - produced) * 1000)

    collector = threading.Thread(target=collect, name="bench-replies", daemon=True)
    collector.start()
    producer = _producer(bootstrap)
    encoded = [(event, event.call_id.encode(), serde.encode(event.to_avro())) for event in plan]
    interval = 1.0 / rate
    started = time.perf_counter()
    for number, (event, key, value) in enumerate(encoded):
        due = started + number * interval
        while (pause := due - time.perf_counter()) > 0:
            time.sleep(min(pause, 0.002))
        sent[str(event.event_id)] = time.perf_counter()
        producer.produce(CALL_EVENTS, key=key, value=value)
        producer.poll(0)
    sent_rate = len(encoded) / (time.perf_counter() - started)
    producer.flush(30)
    collector.join(timeout=60)
    done.set()
    replies.close()
    if len(latencies) < expected:
        raise ServiceUnavailableError(f"only {len(latencies)} of {expected} replies arrived")
    return latencies, sent_rate, len(encoded), identified


def _fault_phase(bootstrap: str, sandbox_url: str, casts: dict[str, PracticeCast]) -> dict[str, float | int]:
    """Identified callers asking a question at every practice, first with every practice healthy (the calm
    baseline), then while three of them fail (``FAULTS``): the same plan, fresh calls."""
    calm_first, calm_final, calm_turns, calm_practice_of = _fault_load(bootstrap, casts)
    calm = [ms for turn, ms in calm_final.items() if calm_practice_of[calm_turns[turn]] == BENCH_PRACTICE]
    for practice, faults in FAULTS.items():
        httpx.put(f"{sandbox_url}/_admin/practices/{practice}/faults", json=faults, timeout=5,
                  trust_env=False).raise_for_status()
    try:
        first, final, turns, practice_of = _fault_load(bootstrap, casts)
    finally:
        for practice in FAULTS:
            httpx.delete(f"{sandbox_url}/_admin/practices/{practice}/faults", timeout=5, trust_env=False)
    faulty_first = [ms for turn, ms in first.items() if practice_of[turns[turn]] != BENCH_PRACTICE]
    healthy = [ms for turn, ms in final.items() if practice_of[turns[turn]] == BENCH_PRACTICE]
    silent = sum(1 for turn in turns if first.get(turn, SILENCE_S * 1000 + 1) > SILENCE_S * 1000)
    return {
        "first_reply_p99_ms_faults": round(_percentile(faulty_first, 99), 1),
        "healthy_p99_ms_during_faults": round(_percentile(healthy, 99), 2),
        "healthy_p99_ms_no_faults": round(_percentile(calm, 99), 2),
        "silent_turns": silent,
        "fault_turns": len(turns),
    }


def _fault_load(bootstrap: str, casts: dict[str, PracticeCast],
                ) -> tuple[dict[str, float], dict[str, float], dict[str, str], dict[str, str]]:
    """One pass of the fault phase's calls: first-reply and answer times per turn, the turns' calls and
    each call's practice. The healthy practice gets ``HEALTHY_CALLS_FACTOR`` times the calls of a faulty
    one, so its p99 rests on more than a handful of turns."""
    practices = (BENCH_PRACTICE, *FAULTS)
    per_practice = int(FAULT_RATE_PER_PRACTICE * FAULT_SECONDS / 4)  # four events a call
    scripts = []
    practice_of: dict[str, str] = {}
    for practice in practices:
        cast = casts[practice]
        for number in range(per_practice * (HEALTHY_CALLS_FACTOR if practice == BENCH_PRACTICE else 1)):
            caller = cast.plain[number % len(cast.plain)]
            script = Script(cast.called_number).started().identified(caller).intent("GENERAL_QUESTION").ended()
            scripts.append(script)
            practice_of[script.call_id] = practice
    plan = _interleaved(scripts, len(scripts) * 4 / FAULT_SECONDS)
    turns = {str(event.event_id): event.call_id for event in plan if event.payload.type == "intent_recognised"}
    first, final = _replies_to(bootstrap, plan, turns, len(plan) / FAULT_SECONDS)
    return first, final, turns, practice_of


def _replies_to(bootstrap: str, plan: list[CallEvent], turns: dict[str, str],
                rate: float) -> tuple[dict[str, float], dict[str, float]]:
    """Send ``plan`` at ``rate``; per turn (event id), milliseconds to its first reply and to its answer."""
    serde = AvroSerde.for_topic(CALL_EVENTS)
    reply_serde = AvroSerde.for_topic(REPLIES)
    sent: dict[str, float] = {}
    first: dict[str, float] = {}
    final: dict[str, float] = {}
    replies = _consumer_at_end(bootstrap, REPLIES)
    done = threading.Event()

    def collect() -> None:
        while not done.is_set() and len(final) < len(turns):
            message = replies.poll(0.05)
            value = message.value() if message is not None and message.error() is None else None
            if value is None:
                continue
            arrived = time.perf_counter()
            reply = Reply.from_avro(reply_serde.decode(value))
            turn = str(reply.in_reply_to)
            if turn not in turns or turn not in sent:
                continue
            first.setdefault(turn, (arrived - sent[turn]) * 1000)
            if reply.template not in INTERIM_TEMPLATE_NAMES:
                final.setdefault(turn, (arrived - sent[turn]) * 1000)

    collector = threading.Thread(target=collect, name="bench-fault-replies", daemon=True)
    collector.start()
    producer = _producer(bootstrap)
    interval = 1.0 / rate
    started = time.perf_counter()
    for number, event in enumerate(plan):
        due = started + number * interval
        while (pause := due - time.perf_counter()) > 0:
            time.sleep(min(pause, 0.002))
        sent[str(event.event_id)] = time.perf_counter()
        producer.produce(CALL_EVENTS, key=event.call_id.encode(), value=serde.encode(event.to_avro()))
        producer.poll(0)
    producer.flush(30)
    collector.join(timeout=SILENCE_S + 30)
    done.set()
    replies.close()
    return first, final


def _interleaved(scripts: list[Script], rate: float) -> list[CallEvent]:
    """Calls as they overlap on phone lines: each starts at a random moment of the load and its caller's
    steps follow ``STEP_GAP_S`` apart; the events are then sent in that order at the load's rate (a fixed,
    seeded arrival pattern, so runs compare)."""
    rng = random.Random(BENCH_SEED)
    duration = sum(len(script.events) for script in scripts) / rate
    timed: list[tuple[float, int, CallEvent]] = []
    for script in scripts:
        start = rng.uniform(0, duration)
        for step, event in enumerate(script.events):
            timed.append((start + step * STEP_GAP_S, len(timed), event))  # the count breaks ties in order
    return [event for _, _, event in sorted(timed, key=lambda item: (item[0], item[1]))]


def _percentile(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]
