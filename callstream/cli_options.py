"""The flags every callstream command shares, defined once so each command names and documents them alike.

A command adds the groups it needs (`add_service_options`, `add_logging_options`) and builds its settings
with `settings_from(options)`: a flag given wins, else its environment variable, else the embedded stack
(callstream.settings). Defaults are None in argparse so the settings, not the parser, decide them.

    parser = argparse.ArgumentParser(prog="callstream dlq")
    add_service_options(parser, kafka=True, tenants=True)
    add_logging_options(parser)
    options = parser.parse_args(argv)
    settings = settings_from(options)        # ConfigError (one line, exit 2) on a bad value
    configure_logging_from(settings)
    tenants_file = require_tenants_file(settings, "the dead-letter tools")
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from callstream.errors import ConfigError
from callstream.logs import configure_logging
from callstream.settings import LOG_LEVELS, Settings, load_settings

KAFKA_HELP = ("Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (default $KAFKA_BOOTSTRAP_SERVERS, "
              "else the embedded Tansu broker on 127.0.0.1:$CALLSTREAM_BROKER_PORT, 19092)")
CLICKHOUSE_HELP = ("ClickHouse: chdb:///PATH (embedded) or http(s)://USER:PASS@HOST:PORT/DB (default $CLICKHOUSE_DSN, "
                   "else embedded chDB in DATA_DIR/clickhouse); prefer the variable for a DSN with a password")
DATA_DIR_HELP = "local state: embedded chDB, EMA locks, Faust tables (default $CALLSTREAM_DATA_DIR, else ./var)"
TENANTS_HELP = "practice (tenant) directory, YAML or JSON (default $CALLSTREAM_TENANTS_FILE)"
LOG_LEVEL_HELP = "DEBUG shows library chatter too (default $CALLSTREAM_LOG_LEVEL, else INFO)"
LOG_FORMAT_HELP = "json: one JSON object per line, for log shippers (default $CALLSTREAM_LOG_FORMAT, else text)"

# flag destination → Settings field it overrides
_SETTING_OF = {
    "bootstrap_servers": "kafka_bootstrap_servers",
    "clickhouse_dsn": "clickhouse_dsn",
    "data_dir": "data_dir",
    "tenants": "tenants_file",
    "log_level": "log_level",
    "log_format": "log_format",
}


def add_service_options(parser: argparse.ArgumentParser, *, kafka: bool = False, clickhouse: bool = False,
                        data_dir: bool = False, tenants: bool = False) -> None:
    """Add the connection flags a command uses: -b/--bootstrap-servers, --clickhouse-dsn, --data-dir, --tenants."""
    group = parser.add_argument_group("services")
    if kafka:
        group.add_argument("-b", "--bootstrap-servers", metavar="SERVERS", help=KAFKA_HELP)
    if clickhouse:
        group.add_argument("--clickhouse-dsn", metavar="DSN", help=CLICKHOUSE_HELP)
    if data_dir:
        group.add_argument("--data-dir", type=Path, metavar="DIR", help=DATA_DIR_HELP)
    if tenants:
        group.add_argument("--tenants", type=Path, metavar="FILE", help=TENANTS_HELP)


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Add --log-level and --log-format (for commands that run as a service or log while they work)."""
    group = parser.add_argument_group("logging")
    group.add_argument("--log-level", type=str.upper, choices=[*LOG_LEVELS, "WARN"], metavar="LEVEL", help=LOG_LEVEL_HELP)
    group.add_argument("--log-format", choices=["text", "json"], help=LOG_FORMAT_HELP)


def settings_from(options: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings with every shared flag the user gave applied over the environment."""
    given = {field: getattr(options, flag) for flag, field in _SETTING_OF.items() if getattr(options, flag, None) is not None}
    return load_settings(**given, **overrides)


def require_tenants_file(settings: Settings, who: str) -> Path:
    """The tenant directory a command cannot run without, or one line saying how to give it."""
    if settings.tenants_file is None:
        raise ConfigError(f"{who} needs a tenant directory: --tenants FILE or CALLSTREAM_TENANTS_FILE")
    return settings.tenants_file


def configure_logging_from(settings: Settings, *, replace_handlers: bool = False) -> None:
    """Install callstream's log handler at the settings' level and format (callstream.logs)."""
    configure_logging(settings.log_level, settings.log_format, replace_handlers=replace_handlers)


def iso_time(text: str) -> datetime:
    """The argparse type of --since/--until: an ISO 8601 time with a zone (a zoneless time is ambiguous)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an ISO 8601 time with a zone, e.g. 2026-03-14T15:00:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("the time needs a zone (Z or +hh:mm)")
    return moment
