"""Secrets and their hashes: passwords, API tokens, sessions, live tokens, device secrets.

- Passwords: Argon2id (argon2-cffi's defaults), verified in a worker thread because
  each check costs ~50 ms of CPU on purpose.
- API tokens (``ld_…``), session ids and device secrets are 32 random bytes; only a
  hash is stored (SHA-256 for tokens and sessions: they are random, so a slow hash
  adds nothing; Mosquitto's ``$7$`` PBKDF2-SHA512 for device secrets, so the same
  hash goes into the broker's password file).
- Live tokens (for WebSocket/SSE query strings) are ``{user_id}.{expiry}.{hmac}``
  signed with the server key, valid :data:`LIVE_TOKEN_SECONDS`.
- The server key comes from the ``secret_key`` setting, or is generated once and kept
  in ``{data_dir}/secret.key`` with mode 0600.  Several gateways must share it (set
  ``LIVEDATA_SECRET_KEY``).  It is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

LIVE_TOKEN_SECONDS = 60
TOKEN_PREFIX = "ld_"
MOSQUITTO_ITERATIONS = 101
"""Mosquitto's default; the secrets are 32 random bytes, so iterations add nothing."""

_hasher = PasswordHasher()


@cache
def _dummy() -> str:
    """A hash to verify an unknown user's password against, made on first use (about 50 ms
    of CPU on purpose: not at import, which every CLI command pays)."""
    return _hasher.hash("livedata-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored``; an unknown user (``None``, ``""``) costs the same."""
    try:
        return _hasher.verify(stored or _dummy(), password) and bool(stored)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    """The stored form of a random token or session id."""
    return hashlib.sha256(value.encode()).hexdigest()


def device_secret_hash(secret: str, salt: bytes | None = None) -> str:
    """``secret`` hashed the way ``mosquitto_passwd`` does (``$7$`` = PBKDF2-SHA512)."""
    salt = salt if salt is not None else os.urandom(12)
    key = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, MOSQUITTO_ITERATIONS, 64)
    salt64, key64 = base64.b64encode(salt).decode(), base64.b64encode(key).decode()
    return f"$7${MOSQUITTO_ITERATIONS}${salt64}${key64}"


def verify_device_secret(stored: str | None, secret: str) -> bool:
    if not stored or not stored.startswith("$7$"):
        return False
    try:
        _, _, iterations, salt64, key64 = stored.split("$")
        salt, key = base64.b64decode(salt64), base64.b64decode(key64)
        given = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, int(iterations), len(key))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(given, key)


def server_key(configured: str, data_dir: Path) -> bytes:
    """The configured key, or the one in ``data_dir/secret.key`` (created 0600 when missing)."""
    if configured:
        return configured.encode()
    path = data_dir / "secret.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def sign_live_token(key: bytes, user_id: int, now: float | None = None) -> str:
    expiry = int((now if now is not None else time.time()) + LIVE_TOKEN_SECONDS)
    body = f"{user_id}.{expiry}"
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{body}.{mac}"


def check_live_token(key: bytes, token: str, now: float | None = None) -> int | None:
    """The user id of a valid, unexpired live token, else ``None``."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    body = f"{parts[0]}.{parts[1]}"
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()[:32]
    if not hmac.compare_digest(mac.encode(), parts[2].encode()):  # bytes: any text is safe
        return None
    if int(parts[1]) < (now if now is not None else time.time()):
        return None
    return int(parts[0])
