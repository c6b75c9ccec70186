"""Print every stored audit row of a chDB data directory as JSON lines (run as a child process).

chDB allows one data directory per process, and the test process may already hold the suite's own
ClickHouse directory: the chaos tests read the audit sink's directory from this separate process, once
`callstream sinks run` has stopped (it holds the directory while it runs).

Only identifiers and codes are printed (event and call ids, action, outcome, resource ids, the escalation
trigger), never the caller number or anything else that could be PHI.
"""

from __future__ import annotations

import json
import sys

from sinks.clickhouse_schema import AUDIT_TABLE
from sinks.clickhouse_store import AuditStore


def main(argv: list[str]) -> int:
    dsn, database = argv
    store = AuditStore.open(dsn, database)
    if not store.is_initialised():
        print(json.dumps({"error": "no audit table"}))
        return 1
    query = (f"SELECT toString(event_id), call_id, action, outcome, resource_type, resource_ids, task_refs, "
             f"detail['trigger'] FROM {database}.{AUDIT_TABLE} FINAL")
    for event_id, call_id, action, outcome, resource_type, resource_ids, task_refs, trigger in \
            store.client.query(query).result_rows:
        print(json.dumps({"event_id": event_id, "call_id": call_id, "action": action, "outcome": outcome,
                          "resource_type": resource_type, "resource_ids": list(resource_ids),
                          "task_refs": list(task_refs), "trigger": trigger}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
