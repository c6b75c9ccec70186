"""The per-practice SIEM firehose: `callstream.audit.v1` → each practice's own signed webhook.

Guarantees, and how:

- **Isolation.** An event goes only to the endpoint of the practice named in the event; a message
  whose Kafka key names another practice is dead-lettered instead of guessed at. Each practice's
  secret signs only its own deliveries.
- **Per-practice order.** Each practice has one delivery chain: its events are delivered (or
  dead-lettered) one after another in topic order. Chains of different practices run
  concurrently, so a slow or dead endpoint delays only its own practice.
- **Nothing lost.** An offset is committed only when every event up to it is delivered,
  dead-lettered to `callstream.siem-dead-letter.v1`, owed by a parked practice whose backlog
  record the log has acknowledged, or has no endpoint to go to. Redelivery
  after a crash is safe: the webhook-id is the audit event id, receivers de-duplicate on it.
- **Retries, then parking.** A few attempts seconds apart (exponential backoff with jitter,
  honouring Retry-After). If the event still fails, its practice is *parked* (sinks.backlog): a
  record on the state topic says from which offset of its partition the practice is owed events,
  the offsets move on, and a per-practice task re-reads the practice's events from the audit topic
  and retries the oldest after 30 s, 5 min, 30 min, 2 h, 5 h, then every 10 h. Other practices on
  the same partitions never wait for it, and a restarted or rebalanced firehose resumes it from the
  state topic. Once caught up with the live consumer, the practice is delivered live again.
- **Dead letters.** Only when a practice's endpoint has failed without a break for longer than
  the horizon (default 72 h) is its backlog dead-lettered to `callstream.siem-dead-letter.v1`;
  `callstream siem redeliver` re-sends from there with the same webhook-id.
- **410 Gone** disables the practice's endpoint for the life of the process: its events are
  dead-lettered without a request until the tenant directory is fixed and the sink restarted.
- **Backpressure.** When too many events await delivery the consumer pauses its partitions.

Logs name practices, partitions, offsets and event ids; never URLs (some carry tokens), secrets
or record contents.

Modules, lowest first: `outcomes` (what is reported), `policy` (the knobs), `endpoints` (who receives
a practice's events, the signed request), `offsets` (when an offset may be committed), `courier`
(send, report, dead-letter: shared by both delivery paths), `parking` (parked practices and their
backlog tasks), `alarms` (the SIEM_DELIVERY alarm), `firehose` (the consumer and the live chains).
"""
