"""The QA view at the end of `callstream demo`: demo users, one call's PDF, and the command that opens the view.

The demo's stack stops when it ends, and its chDB data directory is then free, so the view is opened
afterwards by `qa serve` on the same data directory (printed runnable from the project directory). The
demo signs nobody in by itself: it writes one user per practice (``demo-<practice id>``) into the data
directory's own users file, with one generated password kept beside it in a file only its owner can read.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from callstream.settings import Settings
from callstream.tenants import TenantDirectory, load_tenant_directory
from qa.cli import DEFAULT_PORT
from qa.pdf import call_pdf
from qa.records import QaRecords
from qa.users import add_user
from sinks.clickhouse_store import AuditStore


@dataclass(frozen=True, slots=True)
class DemoView:
    url: str
    serve_args: tuple[str, ...]
    """`callstream` arguments that open the view (callstream.invocation.command_line prints them)."""
    pdf_args: tuple[str, ...]
    pdf_bytes: int
    users: tuple[str, ...]
    password_file: str


def shown(path: Path) -> str:
    """A path as typed from the project directory (relative when it is under it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def prepare_demo_view(settings: Settings, store: AuditStore, tenants_file: Path, call_id: str) -> DemoView:
    """Write the demo users, build ``call_id``'s PDF in memory, and say how to open the view."""
    tenants: TenantDirectory = load_tenant_directory(tenants_file)
    password_file = settings.data_dir / "qa-demo-password"
    if password_file.exists():
        password = password_file.read_text(encoding="utf-8").strip()
    else:
        password = secrets.token_urlsafe(12)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(password + "\n")
    users_ref = f"file:{shown(settings.data_dir / 'qa-users.json')}"
    users = tuple(f"demo-{practice_id}" for practice_id in tenants)
    for user, practice_id in zip(users, tenants, strict=True):
        add_user(users_ref, user, practice_id, password)
    found = store.call_record(call_id)
    record = QaRecords(store, None, tenants).call_body(found.practice_id, call_id) if found else None
    pdf_bytes = len(call_pdf(record, tenants[record["practice_id"]].name)) if record else 0
    return DemoView(
        url=f"http://127.0.0.1:{DEFAULT_PORT}/",
        serve_args=("qa", "serve", "--tenants", shown(tenants_file), "--users", users_ref),
        pdf_args=("audit", "pdf", call_id, "--tenants", shown(tenants_file), "--out",
                  shown(settings.data_dir / f"{call_id}.pdf")),
        pdf_bytes=pdf_bytes,
        users=users,
        password_file=shown(password_file),
    )

