"""Audit sinks: the consumers of `callstream.audit.v1` (ClickHouse store, per-practice SIEM firehose)."""
