"""QA web view users: who may sign in, for which practice, and the login throttle.

The users file is referenced the way practice credentials are (callstream/tenants.py): ``file:/path`` or
``env:VAR``, never the secret itself on a command line or in the tenant directory. It is JSON::

    {"users": [{"username": "ana", "practice_id": "pain-1002", "password_hash": "scrypt$16384$8$1$<salt>$<key>"}]}

Every user belongs to exactly one practice: the session carries that practice and every read is scoped
to it (qa/records.py takes the practice id on every call), so staff see their own practice only.
Passwords are kept as scrypt hashes (hashlib.scrypt, a random 16-byte salt per user); `callstream qa
adduser` writes them. Users are re-read when the file changes, so removing a user or changing a
password ends that user's sessions at their next request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from callstream.errors import ConfigError

USERS_REF_ENV = "CALLSTREAM_QA_USERS"
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@\-]{0,63}\Z")
PRACTICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}\Z")
USERS_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)\Z")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""~16 MiB and tens of milliseconds per check: cheap for one login, costly for a password-guessing run."""
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_HASH = re.compile(r"^scrypt\$(\d{1,7})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9+/=]{16,64})\$([A-Za-z0-9+/=]{40,128})\Z")


def default_users_ref(data_dir: Path) -> str:
    """``CALLSTREAM_QA_USERS``, else ``file:<data dir>/qa-users.json``."""
    return os.environ.get(USERS_REF_ENV) or f"file:{data_dir / 'qa-users.json'}"


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """A self-describing scrypt hash: ``scrypt$N$r$p$salt$key`` (base64)."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32,
                         maxmem=256 * 1024 * 1024)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison of a password with a stored hash; a malformed hash never matches."""
    match = _HASH.match(stored)
    if match is None or len(password) > MAX_PASSWORD_LENGTH:
        return False
    n, r, p = (int(match.group(index)) for index in (1, 2, 3))
    if n < 2**10 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        return False
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected),
                         maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(key, expected)


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
"""Checked against when the user is unknown, so a wrong name costs as long as a wrong password."""


@dataclass(frozen=True, slots=True)
class QaUser:
    username: str
    practice_id: str
    password_hash: str

    @property
    def session_stamp(self) -> str:
        """Changes with the password: a session signed before a password change no longer matches."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]


def parse_users(raw: str, source: str) -> dict[str, QaUser]:
    """Users by name from the file's text; errors name the source and the entry, never a hash."""
    try:
        document = json.loads(raw)
    except ValueError:
        raise ConfigError(f"QA users {source}: not JSON") from None
    entries = document.get("users") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'QA users {source}: expected {{"users": [...]}}')
    users: dict[str, QaUser] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"QA users {source}: entry {index} is not an object")
        username, practice_id, password_hash = (entry.get(key) for key in ("username", "practice_id", "password_hash"))
        if not isinstance(username, str) or not USERNAME.match(username):
            raise ConfigError(f"QA users {source}: entry {index} has no valid username")
        if not isinstance(practice_id, str) or not PRACTICE_ID.match(practice_id):
            raise ConfigError(f"QA users {source}: user {username} has no valid practice_id")
        if not isinstance(password_hash, str) or not _HASH.match(password_hash):
            raise ConfigError(f"QA users {source}: user {username} has no scrypt password_hash (use `callstream qa adduser`)")
        if username in users:
            raise ConfigError(f"QA users {source}: user {username} appears twice")
        users[username] = QaUser(username, practice_id, password_hash)
    return users


class UserDirectory:
    """The users of a ``file:`` or ``env:`` reference, re-read when a referenced file changes."""

    def __init__(self, ref: str) -> None:
        if not USERS_REF.match(ref):
            raise ConfigError("the QA users reference must be file:/path or env:VARIABLE")
        self.ref = ref
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, QaUser] = {}
        self._load()

    def _read(self) -> tuple[str, tuple[float, int] | None]:
        kind, _, target = self.ref.partition(":")
        if kind == "env":
            raw = os.environ.get(target)
            if raw is None:
                raise ConfigError(f"QA users {self.ref}: variable is not set")
            return raw, None
        try:
            stat = Path(target).stat()
            return Path(target).read_text(encoding="utf-8"), (stat.st_mtime, stat.st_size)
        except OSError as exc:
            raise ConfigError(f"QA users {self.ref}: {exc.strerror} (create it with `callstream qa adduser`)") from None
        except UnicodeDecodeError:
            raise ConfigError(f"QA users {self.ref}: not UTF-8 text") from None

    def _load(self) -> None:
        raw, stamp = self._read()
        self._users, self._stamp = parse_users(raw, self.ref), stamp

    def _fresh(self) -> dict[str, QaUser]:
        """The current users; a file that became unreadable or invalid keeps the last good set (logged by
        nobody: the next `qa adduser` or fix is picked up on the following request)."""
        kind, _, target = self.ref.partition(":")
        if kind == "file":
            try:
                stat = Path(target).stat()
                if (stat.st_mtime, stat.st_size) != self._stamp:
                    with self._lock:
                        self._load()
            except (OSError, ConfigError):
                pass
        return self._users

    def get(self, username: str) -> QaUser | None:
        return self._fresh().get(username)

    def authenticate(self, username: str, password: str) -> QaUser | None:
        user = self.get(username)
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        return user if ok and user is not None else None

    def all(self) -> list[QaUser]:
        return list(self._fresh().values())

    def __len__(self) -> int:
        return len(self._fresh())


def add_user(ref: str, username: str, practice_id: str, password: str) -> bool:
    """Write (or replace) a user in a ``file:`` users reference, atomically and readable by the owner only.

    Returns True when the user was new.
    """
    kind, _, target = ref.partition(":")
    if kind != "file" or not target:
        raise ConfigError("qa adduser writes a file: reference (an env: reference is read-only)")
    if not USERNAME.match(username):
        raise ConfigError("username must be 1-64 letters, digits or . _ @ - characters")
    if not PRACTICE_ID.match(practice_id):
        raise ConfigError("practice id must be 1-128 letters, digits or . _ : - characters")
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ConfigError(f"the password must be {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters")
    path = Path(target)
    try:
        users = parse_users(path.read_text(encoding="utf-8"), ref) if path.exists() else {}
    except OSError as exc:
        raise ConfigError(f"cannot read the QA users file {path}: {exc.strerror}") from None
    new = username not in users
    users[username] = QaUser(username, practice_id, hash_password(password))
    document = {"users": [{"username": u.username, "practice_id": u.practice_id, "password_hash": u.password_hash}
                          for u in users.values()]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".qa-users-")
    except OSError as exc:
        raise ConfigError(f"cannot write the QA users file {path}: {exc.strerror}") from None
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return new


class LoginThrottle:
    """Failed sign-ins counted per user name and per client address in a sliding window.

    Past ``per_user`` failures for a name, or ``per_address`` from one address (a clinic behind one NAT
    address has many staff, so its limit is higher), sign-in is refused until the oldest failure leaves
    the window, whether the password is right or not. A success clears the name's failures.
    """

    def __init__(self, *, per_user: int = 5, per_address: int = 20, window_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until this name and address may try again (0: now)."""
        now = self._clock()
        with self._lock:
            waits = [self._wait(f"user:{username.lower()}", self.per_user, now),
                     self._wait(f"addr:{address}", self.per_address, now)]
        return max(waits)

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (f"user:{username.lower()}", f"addr:{address}"):
                self._failures.setdefault(key, []).append(now)
            if len(self._failures) > 100_000:  # a flood of made-up names must not grow memory without bound
                self._prune(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{username.lower()}", None)

    def _wait(self, key: str, limit: int, now: float) -> float:
        recent = [moment for moment in self._failures.get(key, ()) if now - moment < self.window_s]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return 0.0 if len(recent) < limit else recent[-limit] + self.window_s - now

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._wait(key, 1, now)
