"""Secrets and their hashes, sans I/O: passwords, tokens, device secrets, live tokens, the key."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livedata.auth import credentials as cred

KEY = b"k" * 48


def test_password_round_trip_uses_argon2id() -> None:
    """A password verifies against its Argon2id hash; another password does not."""
    stored = cred.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert cred.verify_password(stored, "correct horse battery staple")
    assert not cred.verify_password(stored, "correct horse battery stapler")
    assert not cred.verify_password(stored, "")


def test_password_hashes_are_salted() -> None:
    """Hashing the same password twice gives two different hashes, both valid."""
    a, b = cred.hash_password("same password"), cred.hash_password("same password")
    assert a != b
    assert cred.verify_password(a, "same password") and cred.verify_password(b, "same password")


@pytest.mark.parametrize("stored", [None, "", "not a hash", "$argon2id$v=19$broken", "$7$1$x$y"])
def test_password_against_missing_or_garbage_hash_is_refused(stored: str | None) -> None:
    """An unknown user (None, "") or a corrupt hash refuses even the dummy's password, never raises."""
    assert cred.verify_password(stored, "livedata-dummy-password") is False


def test_api_tokens_and_secrets_are_random_and_prefixed() -> None:
    """API tokens start with ld_, carry 32 random bytes, and are never repeated."""
    tokens = {cred.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(cred.TOKEN_PREFIX)
        raw = base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4))
        assert len(raw) == 32
    secrets_ = {cred.new_secret() for _ in range(200)}
    assert len(secrets_) == 200 and not any(s.startswith("ld_") for s in secrets_)


def test_digest_is_sha256_hex() -> None:
    """The stored form of a token is its SHA-256 in hex, stable and distinct per token."""
    assert cred.digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert cred.digest("ld_a") != cred.digest("ld_b")
    assert len(cred.digest(cred.new_token())) == 64


def test_device_secret_hash_format_and_round_trip() -> None:
    """$7$ hashes: 101 iterations, base64 of a 12-byte salt and a 64-byte key; verify round trips."""
    secret = cred.new_secret()
    stored = cred.device_secret_hash(secret)
    empty, seven, iterations, salt64, key64 = stored.split("$")
    assert (empty, seven, iterations) == ("", "7", str(cred.MOSQUITTO_ITERATIONS))
    assert len(base64.b64decode(salt64)) == 12
    assert len(base64.b64decode(key64)) == 64
    assert cred.verify_device_secret(stored, secret)
    assert not cred.verify_device_secret(stored, secret + "x")
    assert cred.device_secret_hash(secret) != stored  # a new salt each time


def test_device_secret_hash_is_deterministic_for_a_salt() -> None:
    """The same secret and salt give the same hash (what lets Mosquitto check it)."""
    salt = bytes(range(12))
    assert cred.device_secret_hash("s3cret", salt) == cred.device_secret_hash("s3cret", salt)
    assert cred.device_secret_hash("s3cret", salt) != cred.device_secret_hash("s3creT", salt)


@pytest.mark.parametrize(
    "stored",
    [None, "", "$6$abc$def", "$7$", "$7$101$!!!$???", "$7$x$AAAA$AAAA", "$7$101$AAAA", "plain"],
)
def test_device_secret_against_garbage_is_refused(stored: str | None) -> None:
    """A machine without a secret or with a corrupt hash refuses every secret, never raises."""
    assert cred.verify_device_secret(stored, "anything") is False


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")
def test_device_secret_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """For the salt mosquitto_passwd chose, our hash is byte for byte its line; we verify its hash."""
    secret = cred.new_secret()
    path = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(path), "demo/WL-0001", secret],
        check=True,
        capture_output=True,
    )
    user, _, theirs = path.read_text().strip().partition(":")
    assert user == "demo/WL-0001"
    salt = base64.b64decode(theirs.split("$")[3])
    assert cred.device_secret_hash(secret, salt) == theirs
    assert cred.verify_device_secret(theirs, secret)
    assert not cred.verify_device_secret(theirs, secret[:-1])


def test_server_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    """Without a configured key one is generated into secret.key (0600) and reused after."""
    data_dir = tmp_path / "data"
    key = cred.server_key("", data_dir)
    path = data_dir / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) >= 48
    assert cred.server_key("", data_dir) == key
    assert cred.server_key("configured", data_dir) == b"configured"


def test_live_token_round_trip() -> None:
    """A live token names its user and is valid for LIVE_TOKEN_SECONDS, not one second more."""
    now = 1_700_000_000.0
    token = cred.sign_live_token(KEY, 42, now=now)
    assert cred.check_live_token(KEY, token, now=now) == 42
    assert cred.check_live_token(KEY, token, now=now + cred.LIVE_TOKEN_SECONDS) == 42
    assert cred.check_live_token(KEY, token, now=now + cred.LIVE_TOKEN_SECONDS + 1) is None


def test_live_token_expired_by_default_clock() -> None:
    """A token signed two minutes ago is expired for the real clock; a fresh one is not."""
    import time

    assert cred.check_live_token(KEY, cred.sign_live_token(KEY, 7, now=time.time() - 120)) is None
    assert cred.check_live_token(KEY, cred.sign_live_token(KEY, 7)) == 7


def test_live_token_tampering_is_refused() -> None:
    """Changing the user, the expiry or the MAC, or another key, invalidates a live token."""
    now = 1_700_000_000.0
    token = cred.sign_live_token(KEY, 42, now=now)
    user, expiry, mac = token.split(".")
    forged = [
        f"43.{expiry}.{mac}",
        f"{user}.{int(expiry) + 3600}.{mac}",
        f"{user}.{expiry}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        f"{user}.{expiry}.{mac.upper()}",
        f"{user}.{expiry}.",
        f"{user}.{expiry}",
        f"{token}.1",
        f"-1.{expiry}.{mac}",
    ]
    for bad in forged:
        assert cred.check_live_token(KEY, bad, now=now) is None, bad
    assert cred.check_live_token(b"another key", token, now=now) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_live_token_check_never_raises(token: str) -> None:
    """Any text as a live token (non-ASCII, unicode digits, dots) is refused, never an exception."""
    assert cred.check_live_token(KEY, token) is None


@settings(max_examples=100, deadline=None)
@given(
    st.from_regex(r"\A[0-9]{1,5}\Z"),
    st.from_regex(r"\A[0-9]{1,12}\Z"),
    st.text(min_size=1, max_size=40),
)
def test_live_token_with_digit_parts_never_raises(user: str, expiry: str, mac: str) -> None:
    """Well-shaped user and expiry with any MAC text are refused without an exception."""
    assert cred.check_live_token(KEY, f"{user}.{expiry}.{mac}") is None
