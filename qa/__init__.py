"""The practice-facing QA web view: calls, a call's detail, escalations of the day, the per-call PDF.

Where it runs, and why: the pages read the audit store through `qa.records.QaRecords`, plain synchronous
reads that take the store they are given, so the view lives in a process that has the store open. On a
ClickHouse server any number of `callstream qa serve` processes can. On the embedded chDB (one process per
data directory) the simplest honest arrangement is that the view runs *in* the process that owns the
directory: `callstream qa serve` opens it when nothing else does (after the demo), and `qa serve
--with-sinks` is itself the audit sink process, running the sinks and the audit read API (so `callstream
audit call|pdf` keep working) in threads beside the pages. Serving the pages through another process's
HTTP query API was the alternative; it would have put every filter and page shape into that API and a
second hop into every page for no gain in isolation, since the owner of the data is the only process
that can read it either way. `callstream audit pdf` reads like `audit call`:
through the sinks process's read API when it runs, else from the store (processes/audit.py).

Modules: `records` (the typed reads, always scoped to one practice), `users` (users file, scrypt hashes,
login throttle), `app` (Starlette + Jinja2 pages, sessions, CSRF), `pdf` (fpdf2), `server` (uvicorn in a
thread), `cli` (`qa serve`, `qa adduser`, `audit pdf`), `demo` (the view at the end of `callstream demo`).
"""
