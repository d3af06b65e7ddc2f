"""Provisioning a machine: what a technician needs, and the broker files that let it in.

:func:`agent_bundle` builds (sans I/O) what the API shows once after a new secret:
the MQTT URL and username, the HTTP ingest URL, a ready-to-paste ``livedata agent``
command line and a small TOML file for ``livedata agent --config``.

:class:`BrokerFiles` rewrites Mosquitto's password file and ACL from the metadata
database (every enabled machine with a secret, plus the server's service user) and
runs the configured reload command, when the settings name the files
(``mqtt_passwd_file``, ``mqtt_acl_file``, ``mqtt_reload_command``).  The service
user's hash is made from the password in the ``devices`` URL
(``mqtt://USER:PASSWORD@…``) or, without one there, kept from the existing file.
Rewrites are serialised per process and each file is replaced atomically, so the
broker never reads half a file; a failing write or reload is reported to the caller
(and logged), never raised: the machine is registered either way, and the files can
be regenerated later (``livedata devices mqtt-config``).  The reload command runs
without a shell, at most :data:`RELOAD_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from livedata.auth import credentials as cred
from livedata.auth import mosquitto
from livedata.errors import ConfigError
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts
from livedata.model import MsgType
from livedata.settings import Settings

log = logging.getLogger("livedata.provision")

RELOAD_TIMEOUT_S = 10.0


def public_mqtt_url(settings: Settings) -> str | None:
    """The broker URL machines use: ``mqtt_public_url``, else the devices URL's
    scheme, host and port (no credentials, no options); ``None`` without a broker."""
    if settings.mqtt_public_url:
        return settings.mqtt_public_url.rstrip("/")
    parts = urlsplit(settings.devices)
    if not parts.scheme.startswith("mqtt"):
        return None
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, "", "", ""))


def agent_bundle(
    org: str, chassis: str, secret: str, mqtt_url: str | None, base_url: str
) -> dict[str, Any]:
    """Everything a technician needs to connect one machine (the secret appears here only)."""
    base = base_url.rstrip("/")
    ingest = f"{base}/api/ingest/{org}/{chassis}"
    bundle: dict[str, Any] = {
        "chassisId": chassis,
        "secret": secret,
        "mqtt": None,
        "http": {
            "url": f"{ingest}/{{msgType}}",
            "msgTypes": [t.value for t in MsgType],
            "authorization": "Bearer <secret>",
            "example": f"curl -H 'Authorization: Bearer {secret}' -H 'Content-Type: "
            f'application/json\' -d \'{{"v": 1, "ts": …, "values": {{…}}}}\' '
            f"{ingest}/{MsgType.CLIENT_RAW_DATA.value}",
        },
        "agentCommand": None,
        "configFile": None,
    }
    if mqtt_url is not None:
        bundle["mqtt"] = {"url": mqtt_url, "username": mosquitto.device_username(org, chassis)}
        bundle["agentCommand"] = (
            f"LIVEDATA_AGENT_SECRET={shlex.quote(secret)} livedata agent "
            f"--mqtt {shlex.quote(mqtt_url)} --org {org} --chassis {chassis} "
            "--can-interface socketcan --can-channel can0"
        )
        bundle["configFile"] = {
            "name": f"livedata-agent-{chassis}.toml",
            "content": (
                f"# livedata agent of {org}/{chassis}: keep this file private (chmod 600).\n"
                f"# Run: livedata agent --config livedata-agent-{chassis}.toml "
                "--can-interface socketcan --can-channel can0\n"
                f'mqtt = "{mqtt_url}"\n'
                f'org = "{org}"\n'
                f'chassis = "{chassis}"\n'
                f'secret = "{secret}"\n'
            ),
        }
    return bundle


@dataclass(frozen=True, slots=True)
class BrokerResult:
    """What a rewrite of the broker files did (``configured`` False: nothing to do)."""

    configured: bool
    written: bool = False
    machines: int = 0
    reloaded: bool | None = None
    """``None``: no reload command configured."""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "configured": self.configured,
            "written": self.written,
            "machines": self.machines,
            "reloaded": self.reloaded,
            "error": self.error,
        }


class BrokerFiles:
    """Rewrites the broker's password file and ACL, then reloads the broker (see module)."""

    def __init__(self, settings: Settings, meta: Metadata) -> None:
        self.settings = settings
        self.meta = meta
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.settings.mqtt_passwd_file and self.settings.mqtt_acl_file)

    async def update(self) -> BrokerResult:
        if not self.configured:
            return BrokerResult(configured=False)
        async with self._lock:
            try:
                machines = await self._write()
            except (ConfigError, ValueError) as exc:
                log.error("broker files not written: %s", exc)
                return BrokerResult(configured=True, error=str(exc))
            if not self.settings.mqtt_reload_command:
                return BrokerResult(True, True, machines)
            error = await self._reload()
            return BrokerResult(True, True, machines, reloaded=not error, error=error)

    async def _write(self) -> int:
        passwd = Path(self.settings.mqtt_passwd_file)
        service, service_hash = self._service(passwd)
        devices = await Accounts(self.meta).device_credentials()
        services = {service: service_hash} if service_hash else {}
        passwd_text = mosquitto.password_file(devices, services)
        acl_text = mosquitto.acl_file([service])
        await asyncio.to_thread(write_atomic, passwd, passwd_text, 0o600, keep_group_read=True)
        acl = Path(self.settings.mqtt_acl_file)
        await asyncio.to_thread(write_atomic, acl, acl_text, 0o644)
        return len(devices)

    def _service(self, passwd: Path) -> tuple[str, str | None]:
        parts = urlsplit(self.settings.devices)
        if parts.username and parts.password and parts.scheme.startswith("mqtt"):
            name = mosquitto.check_service_user(unquote(parts.username))
            return name, cred.device_secret_hash(unquote(parts.password))
        return mosquitto.SERVICE_USER, existing_hash(passwd, mosquitto.SERVICE_USER)

    async def _reload(self) -> str:
        """Run the reload command; the error text, empty when it succeeded."""
        argv = shlex.split(self.settings.mqtt_reload_command)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            return f"reload command {argv[0]!r} failed to start: {exc.strerror}"
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), RELOAD_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f"reload command did not finish in {RELOAD_TIMEOUT_S:g} s"
        if proc.returncode:
            text = output.decode(errors="replace").strip()[-300:]
            log.error("broker reload exited with %s: %s", proc.returncode, text)
            return f"reload command exited with status {proc.returncode}: {text}"
        return ""


def existing_hash(path: Path, username: str) -> str | None:
    """``username``'s ``$7$`` hash in the password file ``path``, if any."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    hashed = mosquitto.parse_password_file(text).get(username)
    return hashed if hashed and hashed.startswith("$7$") else None


def write_atomic(path: Path, text: str, mode: int, *, keep_group_read: bool = False) -> None:
    """Replace ``path`` with ``text`` at once (temporary file + rename), with ``mode``.

    The owner and group of the file it replaces are kept when the OS allows it; with
    ``keep_group_read`` so is its group-read bit.  :class:`ConfigError` when it
    cannot be written.
    """
    path = path.expanduser()
    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(f"cannot write {path}: directory {directory} does not exist")
    owner: tuple[int, int] | None = None
    try:
        old = path.stat()
        owner = (old.st_uid, old.st_gid)
        if keep_group_read:
            mode |= stat.S_IMODE(old.st_mode) & stat.S_IRGRP
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), *owner)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        raise
