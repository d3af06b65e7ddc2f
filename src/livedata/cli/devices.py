"""``livedata devices``: device secrets and the Mosquitto configuration that enforces them.

::

    livedata devices secret acme WL-0001                 # new secret, printed once
    livedata devices secret demo --all --out secrets.json  # every machine of demo → JSON file
    livedata devices mqtt-config --passwd /etc/mosquitto/livedata.passwd \\
        --acl /etc/mosquitto/livedata.acl                # then: systemctl reload mosquitto

``secret`` gives machines new secrets (the old ones stop working at once for HTTP
ingest, and for MQTT once the broker's files are regenerated and reloaded).  Only a
hash is stored; the secret is printed once, or with ``--out FILE`` written to a JSON
file ``{chassis: secret}`` (mode 0600, merged into an existing one) that
``livedata simulate --secrets FILE`` reads.  A machine uses its secret as the
``Authorization: Bearer`` of HTTP ingest and as its MQTT password with the username
``{org}/{chassis}`` (``livedata agent --secret-file``).

``mqtt-config`` writes Mosquitto's ``password_file`` and ``acl_file``
(:mod:`livedata.auth.mosquitto`): every machine that has a secret, plus the
server's service user (default ``livedata``), whose password is, in this order, the
first line of standard input with ``--service-password-stdin``, the hash already in
the password file (so regenerating keeps it), or a new random one printed once.
Each file is written to a temporary file beside it and renamed over it, so Mosquitto
never reads half a file; the password file gets mode 0600 (plus group-read if the
file it replaces had it), the ACL 0644, and an existing file's owner and group are
kept when permitted (run it as root or as the broker's user: Mosquitto 2 reads the
files as the user it runs as, ``mosquitto`` on Debian).

Regenerate after adding or removing machines or changing their secrets, then make
Mosquitto reload both files with SIGHUP (``systemctl reload mosquitto``, ``kill
-HUP $(pidof mosquitto)``, or ``docker kill -s HUP …``).  On reload Mosquitto 2.0
checks every connected client against the new password file and disconnects those
whose secret changed or whose machine is gone (measured with 2.0.11); the others stay
connected.  Machines without a secret are left out (they cannot connect) and counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from livedata.auth import credentials as cred
from livedata.auth import mosquitto
from livedata.cli.simulate import read_secrets
from livedata.cli.users import actor, db_flags, read_secret_stdin, with_metadata
from livedata.errors import ConfigError, InputError
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts
from livedata.model import valid_id
from livedata.provision import existing_hash, write_atomic


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "devices",
        help="device secrets and the MQTT broker's password file and ACL",
        description=(
            "Give machines their own secrets (HTTP ingest: Bearer; MQTT: username "
            "ORG/CHASSIS) and write the Mosquitto password file and ACL that confine each "
            "machine to its own topics. Uses the server's metadata database (--data-dir, "
            "--metadata, --config)."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    db = db_flags()

    secret = actions.add_parser(
        "secret",
        parents=[db],
        help="give machines new secrets (printed once, or written to --out)",
        description=(
            "Give each named machine of ORG (or every one with --all) a new secret; the "
            "previous one stops working. The secret is stored hashed only: it is printed "
            "once, or written to --out. Regenerate the broker files afterwards "
            "(`livedata devices mqtt-config`)."
        ),
    )
    secret.add_argument("org", metavar="ORG", help="organisation id")
    secret.add_argument("chassis", metavar="CHASSIS", nargs="*", help="machine ids")
    secret.add_argument("--all", action="store_true", help="every machine of ORG")
    secret.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the secrets as JSON {chassis: secret} (mode 0600; merged into an "
        "existing file) instead of printing them; for `livedata simulate --secrets`",
    )
    secret.set_defaults(run=run_secret)

    config = actions.add_parser(
        "mqtt-config",
        parents=[db],
        help="write Mosquitto's password file and ACL from the device secrets",
        description=(
            "Write Mosquitto's password_file (every machine with a secret, username "
            "ORG/CHASSIS, and the server's service user) and acl_file (a machine publishes "
            "only its own telemetry, status and method answers and receives only its own "
            "method requests; the service user reads all telemetry and writes all method "
            "requests). Then reload Mosquitto: SIGHUP (systemctl reload mosquitto)."
        ),
    )
    config.add_argument("--passwd", type=Path, required=True, metavar="FILE", help="password_file")
    config.add_argument("--acl", type=Path, required=True, metavar="FILE", help="acl_file")
    config.add_argument(
        "--service-user",
        default=mosquitto.SERVICE_USER,
        metavar="NAME",
        help=f"the username of `livedata serve --devices mqtt://NAME:PASSWORD@…` "
        f"(default {mosquitto.SERVICE_USER})",
    )
    config.add_argument(
        "--service-password-stdin",
        action="store_true",
        help="read the service user's password from standard input (default: keep the one "
        "in FILE, or generate one and print it once)",
    )
    config.set_defaults(run=run_mqtt_config)


# secrets ----------------------------------------------------------------------------------


def run_secret(args: argparse.Namespace) -> int:
    if not valid_id(args.org):
        raise InputError(f"{args.org!r} is not a valid organisation id")
    if args.all == bool(args.chassis):
        raise ConfigError("name the machines (CHASSIS …) or give --all, not both")
    for chassis in args.chassis:
        if not valid_id(chassis):
            raise InputError(f"{chassis!r} is not a valid machine id")
    existing = (
        read_secrets(args.out, name=str(args.out), missing_ok=True) if args.out is not None else {}
    )

    async def work(meta: Metadata) -> dict[str, str]:
        await meta.require_org(args.org)
        if args.all:
            chassis_ids = [m.chassis_id for m in await meta.list_machines(args.org)]
        else:
            for chassis in args.chassis:  # all known before any secret changes
                await meta.get_machine(args.org, chassis)
            chassis_ids = list(dict.fromkeys(args.chassis))
        accounts = Accounts(meta)
        new: dict[str, str] = {}
        for chassis in chassis_ids:
            new[chassis] = await accounts.set_device_secret(args.org, chassis)
            await accounts.audit(args.org, actor(), "device_secret", chassis)
        return new

    new = with_metadata(args, work)
    if not new:
        print(f"organisation {args.org} has no machines: no secret changed")
        return 0
    if args.out is not None:
        write_atomic(args.out, json.dumps({**existing, **new}, indent=2) + "\n", 0o600)
        print(f"wrote {len(new)} new secret(s) of organisation {args.org} to {args.out}")
    else:
        for chassis, value in new.items():
            print(f"secret of {mosquitto.device_username(args.org, chassis)}: {value}")
        print(
            "(shown this once; stored hashed only. MQTT: username ORG/CHASSIS, this secret "
            "as password; HTTP ingest: Authorization: Bearer SECRET)"
        )
    print("regenerate the broker files: livedata devices mqtt-config --passwd … --acl …")
    return 0


# broker files --------------------------------------------------------------------------------


def run_mqtt_config(args: argparse.Namespace) -> int:
    try:
        service = mosquitto.check_service_user(args.service_user)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    generated = ""
    kept = None if args.service_password_stdin else existing_hash(args.passwd, service)
    if args.service_password_stdin:
        service_hash = cred.device_secret_hash(read_secret_stdin("service password"))
    elif kept is not None:
        service_hash = kept
    else:
        generated = cred.new_secret()
        service_hash = cred.device_secret_hash(generated)

    async def work(meta: Metadata) -> tuple[list[tuple[str, str, str]], int]:
        devices = await Accounts(meta).device_credentials()
        with_secret = {(org, chassis) for org, chassis, _ in devices}
        total = 0
        for org in await meta.list_orgs():
            total += len(await meta.list_machines(org.id))
        return devices, total - len(with_secret)

    devices, without = with_metadata(args, work)
    try:
        passwd_text = mosquitto.password_file(devices, {service: service_hash})
        acl_text = mosquitto.acl_file([service])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    write_atomic(args.passwd, passwd_text, 0o600, keep_group_read=True)
    write_atomic(args.acl, acl_text, 0o644)
    print(f"wrote {args.passwd}: {len(devices)} machine(s) and service user {service}")
    print(f"wrote {args.acl}")
    if generated:
        print(f"service user {service}'s new password: {generated}")
        print(
            "(shown this once; the server connects with "
            f"--devices 'mqtt://{quote(service, safe='')}:{quote(generated, safe='')}@HOST:PORT')"
        )
    if without:
        print(
            f"{without} machine(s) have no secret and cannot connect "
            "(livedata devices secret ORG CHASSIS …)"
        )
    print("reload Mosquitto to apply: SIGHUP (systemctl reload mosquitto)")
    return 0
