"""Typed settings, parsed once: command-line flags > ``LIVEDATA_*`` environment > TOML file > defaults.

The TOML file is named by ``--config`` or ``LIVEDATA_CONFIG``; its keys are the
field names below (``port = 8000``, ``store = "sqlite:///…"``).  Backend URLs are
checked against the supported schemes here, so a wrong URL fails at start with a
one-line error instead of deep inside a role.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from livedata.backends import scheme_of
from livedata.bus import LOG_BACKENDS, PUBSUB_BACKENDS
from livedata.devices import SUPPORTED_BACKENDS as DEVICE_BACKENDS
from livedata.errors import ConfigError
from livedata.store import SUPPORTED_BACKENDS as STORE_BACKENDS

METADATA_SCHEMES = ("sqlite", "postgresql")
ROLES = ("ingest", "distribute", "gateway", "alerts")


class Settings(BaseSettings):
    """Everything a livedata process needs to know; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="LIVEDATA_", extra="forbid")

    host: str = Field("127.0.0.1", description="address the gateway listens on")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port of the gateway (0 = any)")
    data_dir: Path = Field(Path("livedata-data"), description="where the embedded databases live")
    store: str = Field("", description="telemetry store URL (default: SQLite in data_dir)")
    metadata: str = Field("", description="metadata database URL (default: SQLite in data_dir)")
    log: str = Field("memory://", description="log URL between ingest and distribute")
    pubsub: str = Field("memory://", description="pub/sub URL for live fan-out")
    devices: str = Field("local://", description="device link URL: local://, mqtt://host:port")
    roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(ROLES), description="roles this process runs"
    )
    connect_timeout: float = Field(
        30.0, gt=0, description="seconds to wait for each engine at start before giving up"
    )
    retention_days: float = Field(
        7.0, gt=0, description="stored telemetry older than this is deleted"
    )
    frames_retention_days: float = Field(
        7.0, gt=0, description="raw CAN frames (kept for re-decoding) older than this are deleted"
    )
    machines: int = Field(5, ge=0, le=10_000, description="simulated machines (demo)")
    history_seconds: int = Field(
        120, ge=0, le=86_400, description="history the demo creates at start"
    )
    store_batch_max: int | None = Field(
        None, ge=1, description="records per store write at most (default: the store's own)"
    )
    store_batch_ms: float | None = Field(
        None,
        ge=0,
        le=10_000,
        description="ms a store batch waits for more records at most (default: the store's own)",
    )
    ingest_queue: int = Field(20_000, ge=1, description="records buffered before ingest waits")
    spill_dir: str = Field(
        "auto",
        description="directory of ingest's spill journal, where records go while the store is"
        " slow or down, and of its log journal, where they wait while the log is: 'auto' ="
        " data_dir/spill (data_dir/spill/{MQTT client_id} when the device link has one),"
        " whatever the store; 'off' = none (ingest waits for the store, devices' brokers may"
        " drop messages); or a path on a persistent disk",
    )
    spill_max_bytes: int = Field(
        256 * 2**20, ge=2**16, description="bound of the spill journal; then ingest waits"
    )
    log_journal_max_bytes: int = Field(
        1 * 2**30,
        ge=2**16,
        description="bound of the log journal (in spill_dir), where stored and acknowledged"
        " records wait while the log is slow or down; then ingest waits",
    )
    spill_after: float = Field(
        2.0, gt=0, description="seconds a store write may take before ingest spills"
    )
    client_queue: int = Field(64, ge=1, description="live messages buffered per WebSocket client")
    client_stall_seconds: float = Field(
        30.0,
        gt=0,
        le=3_600,
        description="a live client (WebSocket, SSE, Socket.IO) that takes nothing for this long"
        " is disconnected",
    )
    live_history_seconds: float = Field(
        180.0,
        ge=1,
        le=3_600,
        description="how long each live channel keeps its messages for clients that reconnect"
        " (recovery by epoch and seq)",
    )
    fleet_period: float = Field(
        1.0, ge=0.01, le=60, description="seconds between two messages of a simulated machine"
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    smtp_host: str = Field("", description="SMTP server for alert e-mails (empty: none)")
    smtp_port: int = Field(25, ge=1, le=65535, description="port of the SMTP server")
    smtp_from: str = Field("livedata@localhost", description="sender of alert e-mails")
    map_tiles: str = Field(
        "",
        description="fleet map tile URL template, e.g. https://tile.example/{z}/{x}/{y}.png"
        " (empty: no tiles, positions on a plain grid)",
    )
    map_attribution: str = Field("", description="attribution shown under the map's tiles")
    secret_key: str = Field(
        "",
        description="key signing live tokens; several gateways must share it"
        " (empty: generated once in data_dir/secret.key, mode 0600)",
        repr=False,
    )
    admin_token: str = Field(
        "",
        description="an API token given to the first admin at start, for automation"
        " (empty: none; create tokens in the UI or API instead)",
        repr=False,
    )
    session_hours: float = Field(12.0, gt=0, le=720, description="browser sessions last this long")
    secure_cookies: bool = Field(
        False, description="mark session cookies Secure (set when served over HTTPS)"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed to open live connections with a browser"
        " (comma-separated; the gateway's own origin is always allowed)",
    )
    live_per_user: int = Field(
        100, ge=1, description="live connections (WebSocket, SSE, Socket.IO) per user at most"
    )
    commands_per_minute: int = Field(60, ge=1, description="device methods per user per minute")
    public_url: str = Field(
        "",
        description="the server's URL as machines reach it, shown when provisioning a machine"
        " (empty: the URL of the admin's request)",
    )
    mqtt_public_url: str = Field(
        "",
        description="the broker's URL as machines reach it, mqtt://host:port (empty: the host"
        " and port of the devices URL, when it is mqtt://)",
    )
    mqtt_passwd_file: str = Field(
        "",
        description="Mosquitto password_file the server rewrites when machines or their"
        " secrets change (empty: none; then run `livedata devices mqtt-config`)",
    )
    mqtt_acl_file: str = Field("", description="Mosquitto acl_file written with the password file")
    mqtt_reload_command: str = Field(
        "",
        description="command run after the broker files are rewritten, e.g."
        " 'systemctl reload mosquitto' (no shell; empty: none)",
    )
    future_skew_seconds: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="device and /db/write timestamps further ahead of the server's clock are"
        " refused or clamped (see future_timestamps)",
    )
    future_timestamps: Literal["refuse", "clamp"] = Field(
        "refuse", description="refuse: the sender gets an error; clamp: stored at the server's time"
    )
    max_fields_per_type: int = Field(
        1_000,
        ge=1,
        le=100_000,
        description="distinct fields per machine (or /db/write table) and message type at most",
    )
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="networks (CIDR, comma-separated) alert webhooks may reach although they"
        " are loopback, private or link-local (default none: public addresses only)",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="event loop of the server processes: uvloop (accepts, reads and closes"
        " connections in C), asyncio, or auto (uvloop when installed)",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="open HTTP/WebSocket connections at most; at the limit the longest-idle one"
        " gives way (0: 90 % of the file-descriptor limit)",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024, description="request line and headers at most"
    )
    header_timeout: float = Field(
        10.0, gt=0, le=300, description="seconds a client has to send a complete request head"
    )
    keep_alive_timeout: int = Field(
        5, ge=1, le=300, description="an idle keep-alive connection is closed after this long"
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="request bodies at most (counted while they stream)"
    )
    body_timeout: float = Field(
        30.0, gt=0, le=3600, description="a request body that stops arriving this long gets 408"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get("LIVEDATA_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not value:
            raise ValueError(f"give one or more of {', '.join(ROLES)}")
        unknown = [role for role in value if role not in ROLES]
        if unknown:
            raise ValueError(f"unknown roles {unknown}: use {', '.join(ROLES)}")
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for part in value:
                try:
                    ipaddress.ip_network(str(part), strict=False)
                except ValueError:
                    raise ValueError(f"{part!r} is not a network (e.g. 10.0.0.0/8)") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    @model_validator(mode="after")
    def _urls(self) -> Settings:
        if not self.store:
            self.store = f"sqlite:///{self.data_dir / 'telemetry.db'}"
        if not self.metadata:
            self.metadata = f"sqlite:///{self.data_dir / 'metadata.db'}"
        for name, value, table in (
            ("store", self.store, STORE_BACKENDS),
            ("log", self.log, LOG_BACKENDS),
            ("pubsub", self.pubsub, PUBSUB_BACKENDS),
            ("metadata", self.metadata, dict.fromkeys(METADATA_SCHEMES)),
            ("devices", self.devices, DEVICE_BACKENDS),
        ):
            scheme = scheme_of(value)
            if scheme not in table:
                known = ", ".join(f"{s}://" for s in sorted(table))
                raise ValueError(f"unsupported {name} URL {value!r}: use one of {known}")
        return self


def load_settings(overrides: dict[str, Any] | None = None, config: Path | None = None) -> Settings:
    """Parse settings once; ``overrides`` are command-line values (``None`` = not given)."""
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"config file {config} does not exist")
        os.environ["LIVEDATA_CONFIG"] = str(config)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"{where}: {first['msg']}") from None
    except ConfigError:
        raise
    except Exception as exc:  # e.g. a TOML syntax error
        raise ConfigError(f"cannot read settings: {exc}") from None
