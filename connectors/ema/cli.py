"""`callstream ema unlock PRACTICE` and `callstream ema status`: the operator's side of the EMA lockout.

After a failed EMA login the practice's EMA path stays locked (see connectors.ema.locks) until an
operator has looked at the evidence, fixed the credentials or EMA's own account lock, and unlocked it
here. Both commands read the same lock directory as the workers (``{data_dir}/ema-locks``).

Exit status: 0 done; 1 ``unlock`` found nothing to clear; 2 bad arguments, a practice the tenant directory
does not name, or an unusable lock store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from callstream.cli_options import add_service_options, settings_from
from callstream.errors import CallstreamError, TenantDirectoryError
from callstream.tenants import load_tenant_directory
from connectors.ema.locks import EmaLock, EmaLockStore, LockReason


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callstream ema", description="EMA web automation: lockout state.")
    add_service_options(parser, data_dir=True, tenants=True)
    actions = parser.add_subparsers(dest="action", required=True)
    unlock = actions.add_parser("unlock", help="reopen a practice's EMA path after a failed login")
    unlock.add_argument("practice", metavar="PRACTICE", help="practice id, e.g. pain-1001")
    status = actions.add_parser("status", help="list practices whose EMA path is locked")
    status.add_argument("--json", action="store_true", help="print the locks as JSON")
    options = parser.parse_args(argv)
    try:
        settings = settings_from(options)
        store = EmaLockStore.under(settings.data_dir)
        if options.action == "unlock":
            return _unlock(store, options.practice, settings.tenants_file)
        return _status(store, as_json=options.json)
    except CallstreamError as exc:
        print(f"callstream: error: {exc}", file=sys.stderr)
        return 2


def _unlock(store: EmaLockStore, practice_id: str, tenants_file: Path | None) -> int:
    """Clear the lock. With the tenant directory at hand (--tenants or CALLSTREAM_TENANTS_FILE, as the
    workers have it) an id that names no practice is an error, not "nothing to clear"."""
    if tenants_file is not None and practice_id not in load_tenant_directory(tenants_file):
        raise TenantDirectoryError(f"{tenants_file}: no such practice {practice_id!r}")
    cleared = store.unlock(practice_id)
    if cleared is None:
        known = "" if tenants_file is not None else " (or no such practice: --tenants FILE tells)"
        print(f"{practice_id}: EMA path was not locked{known}; nothing cleared")
        return 1
    print(f"{practice_id}: cleared EMA lock ({_describe(cleared)})")
    if cleared.reason is LockReason.ACCOUNT_LOCKED:
        print(f"{practice_id}: EMA itself locked the account: unlock it in EMA too before the next command")
    return 0


def _status(store: EmaLockStore, *, as_json: bool) -> int:
    locks = store.all()
    if as_json:
        print(json.dumps([lock.to_json() for lock in locks], indent=2))
    elif not locks:
        print("no EMA locks")
    else:
        for lock in locks:
            print(f"{lock.practice_id}: LOCKED ({_describe(lock)})")
    return 0


def _describe(lock: EmaLock) -> str:
    parts = [f"reason {lock.reason.value}", f"since {lock.locked_at.isoformat()}"]
    if lock.step:
        parts.append(f"step {lock.step}")
    if lock.evidence:
        parts.append(f"evidence {lock.evidence}")
    return ", ".join(parts)
