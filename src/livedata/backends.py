"""Choose a backend by URL scheme, importing its module only when it is used.

Each interface package has a ``SUPPORTED_BACKENDS`` table mapping a scheme to
``"module:Class"``; the class is constructed with the URL.  A driver that is not
installed gives a :class:`ConfigError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from livedata.errors import ConfigError

EXTRAS = {
    "redis": "redis",
    "kafka": "kafka",
    "clickhouse": "clickhouse",
    "postgresql": "postgres",
    "mqtt": "mqtt",
}


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def share_option(what: str, text: str | None) -> tuple[int, int] | None:
    """A URL option ``i/n`` (this process's share ``i`` of ``n``, 0-based) → (i, n), checked;
    ``None`` without the option.  ``what`` names it in the error (``MQTT URL option partition``)."""
    if text is None:
        return None
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ConfigError(f"{what}={text!r}: use i/n, e.g. 0/2") from None
    if not 0 <= i < n:
        raise ConfigError(f"{what}={text!r}: need 0 <= i < n")
    return i, n


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigError(f"{url!r} is not a URL (expected e.g. memory:// or sqlite:///path)")
    return scheme.split("+", 1)[0]


def load(table: dict[str, str], url: str, what: str) -> Any:
    """Construct the backend for ``url`` from ``table``; ``what`` names the role in errors."""
    scheme = scheme_of(url)
    target = table.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise ConfigError(f"unsupported {what} URL {redact(url)!r}: use one of {known}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a driver that is not installed
        extra = EXTRAS.get(scheme, scheme)
        raise ConfigError(
            f"{what} URL {redact(url)!r} needs a driver that is not installed: "
            f"pip install 'livedata[{extra}]' ({exc})"
        ) from exc
    return getattr(module, class_name)(url)
