"""``livedata machines``: the machine registry from the command line.

::

    livedata machines list acme
    livedata machines add acme WL-0101 --name "Loader 101" --model WL900 --tag north
    livedata machines edit acme WL-0101 --location "Yard 3" --disable
    livedata machines import acme machines.csv      # chassis,name,model,tags[,location]
    livedata machines remove acme WL-0101 --data keep   # or --data delete

Works on the server's databases (``--data-dir``, ``--metadata``, ``--config`` as for
``livedata serve``), like the API of the same name (:mod:`livedata.gateway.machines_api`),
while the server runs: it sees changes within its catalog's 10 s.  ``add`` issues
the machine's secret and prints it once with the MQTT and HTTP details and an agent
command line (``--no-secret``: later, with ``livedata devices secret``);
``--config-out FILE`` writes the agent's TOML file (mode 0600) instead of printing
the secret.  When the settings name the broker's files (``mqtt_passwd_file``,
``mqtt_acl_file``) they are rewritten and ``mqtt_reload_command`` is run.
``remove`` says how many values are stored and needs ``--data keep`` or ``--data
delete``.  ``import`` reports bad rows with their line and reason, creates or
updates the good ones and exits with status 1 when any row was bad; importing the
same file again changes nothing.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from livedata.cli.users import actor, db_flags, db_settings, print_table, with_metadata
from livedata.errors import ConfigError, InputError
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts
from livedata.metadata.registry import (
    MAX_IMPORT_BYTES,
    MachineSpec,
    Registry,
    check_chassis,
    machine_dict,
    parse_csv,
    split_tags,
)
from livedata.model import valid_id
from livedata.provision import (
    BrokerFiles,
    BrokerResult,
    agent_bundle,
    public_mqtt_url,
    write_atomic,
)
from livedata.settings import Settings
from livedata.store import open_store


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "machines",
        help="register, change, import, list and remove machines",
        description=(
            "The machine registry of an organisation in the server's metadata database "
            "(find it with --data-dir, --metadata or --config, as for `livedata serve`)."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    db = db_flags()

    listing = actions.add_parser("list", parents=[db], help="list the machines of ORG")
    listing.add_argument("org", metavar="ORG")
    listing.set_defaults(run=run_list)

    add = actions.add_parser(
        "add",
        parents=[db],
        help="register a machine and issue its secret (printed once)",
        description="Register CHASSIS in ORG, issue its secret and print what a technician "
        "needs to connect it (MQTT URL and username, HTTP ingest URL, agent command).",
    )
    add.add_argument("org", metavar="ORG")
    add.add_argument("chassis", metavar="CHASSIS")
    add.add_argument("--name", required=True)
    add.add_argument("--model", required=True)
    _spec_flags(add)
    add.add_argument("--disabled", action="store_true", help="register it disabled")
    add.add_argument("--no-secret", action="store_true", help="issue no secret now")
    add.add_argument(
        "--config-out",
        type=Path,
        metavar="FILE",
        help="write the agent's TOML file (with the secret, mode 0600) instead of printing it",
    )
    add.set_defaults(run=run_add)

    edit = actions.add_parser("edit", parents=[db], help="change a machine")
    edit.add_argument("org", metavar="ORG")
    edit.add_argument("chassis", metavar="CHASSIS")
    edit.add_argument("--name")
    edit.add_argument("--model")
    _spec_flags(edit)
    state = edit.add_mutually_exclusive_group()
    state.add_argument("--disable", dest="disabled", action="store_const", const=True)
    state.add_argument("--enable", dest="disabled", action="store_const", const=False)
    edit.set_defaults(run=run_edit)

    remove = actions.add_parser(
        "remove",
        parents=[db],
        help="delete a machine, keeping or deleting its telemetry",
        description="Delete CHASSIS from ORG. Without --data it only says how many values "
        "are stored; --data keep leaves them (they show again if the id is registered "
        "again), --data delete deletes them.",
    )
    remove.add_argument("org", metavar="ORG")
    remove.add_argument("chassis", metavar="CHASSIS")
    remove.add_argument("--data", choices=("keep", "delete"))
    remove.set_defaults(run=run_remove)

    imp = actions.add_parser(
        "import",
        parents=[db],
        help="create or update machines from a CSV file",
        description="Rows chassis,name,model,tags[,location]; tags separated by ';' or '|'; "
        "a header row starting with 'chassis' is skipped. Bad rows are reported, good rows "
        "applied; exit status 1 when any row was bad.",
    )
    imp.add_argument("org", metavar="ORG")
    imp.add_argument("file", type=Path, metavar="FILE", help="CSV file ('-' is not supported)")
    imp.set_defaults(run=run_import)


def _spec_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tags", help="tags, separated by ';' or ','")
    parser.add_argument("--location", help="a location label")


def _tags(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else split_tags(text.replace(",", ";"))


def _org(org: str) -> str:
    if not valid_id(org):
        raise InputError(f"{org!r} is not a valid organisation id")
    return org


def _broker_line(result: BrokerResult) -> str:
    if not result.configured:
        return (
            "broker files not configured (mqtt_passwd_file): "
            "run `livedata devices mqtt-config` and reload Mosquitto"
        )
    if result.error:
        return f"broker files: {result.error}"
    reload = {None: "", True: ", broker reloaded", False: ", reload failed"}[result.reloaded]
    return f"broker files rewritten ({result.machines} machine(s)){reload}"


def _date(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def run_list(args: argparse.Namespace) -> int:
    org = _org(args.org)

    async def work(meta: Metadata) -> list[dict[str, Any]]:
        await meta.require_org(org)
        return [machine_dict(m) for m in await meta.list_machines(org)]

    machines = with_metadata(args, work)
    rows = [("CHASSIS", "NAME", "MODEL", "TAGS", "LOCATION", "STATE", "SECRET", "CREATED")]
    rows += [
        (
            m["chassisId"],
            m["name"],
            m["model"],
            ";".join(m["tags"]),
            m["location"],
            "disabled" if m["disabled"] else "enabled",
            "yes" if m["hasSecret"] else "no",
            _date(m["created"]),
        )
        for m in machines
    ]
    print_table(rows, f"(organisation {org} has no machines)")
    return 0


def _base_url(settings: Settings) -> str:
    host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
    return settings.public_url or f"http://{host}:{settings.port}"


def run_add(args: argparse.Namespace) -> int:
    org, chassis = _org(args.org), check_chassis(args.chassis)
    settings = db_settings(args)
    spec = MachineSpec(args.name, args.model, _tags(args.tags) or (), args.location or "")
    spec = MachineSpec(spec.name, spec.model, spec.tags, spec.location, args.disabled)

    async def work(meta: Metadata) -> tuple[str | None, BrokerResult]:
        await meta.require_org(org)
        await Registry(meta).create(org, chassis, spec)
        accounts = Accounts(meta)
        await accounts.audit(org, actor(), "machine_created", chassis)
        secret = None
        if not args.no_secret:
            secret = await accounts.set_device_secret(org, chassis)
            await accounts.audit(org, actor(), "device_secret", chassis)
        return secret, await BrokerFiles(settings, meta).update()

    secret, broker = with_metadata(args, work)
    print(f"registered machine {chassis} ({spec.model}) in organisation {org}")
    if secret is not None:
        bundle = agent_bundle(org, chassis, secret, public_mqtt_url(settings), _base_url(settings))
        _print_bundle(bundle, args.config_out)
    print(_broker_line(broker))
    return 0


def _print_bundle(bundle: dict[str, Any], config_out: Path | None) -> None:
    mqtt = bundle["mqtt"]
    if mqtt is not None:
        print(f"MQTT: {mqtt['url']}  username: {mqtt['username']}")
    else:
        print("MQTT: none (the server's devices URL is not mqtt://; use HTTP ingest)")
    print(f"HTTP ingest: POST {bundle['http']['url']}  Authorization: Bearer <secret>")
    if config_out is not None and bundle["configFile"] is not None:
        write_atomic(config_out, bundle["configFile"]["content"], 0o600)
        print(f"wrote the agent's configuration with the secret to {config_out}")
        print(f"run on the machine: livedata agent --config {config_out.name} …")
        return
    print(f"secret: {bundle['secret']}")
    print("(shown this once; it is stored hashed only)")
    if bundle["agentCommand"]:
        print(f"agent: {bundle['agentCommand']}")


def run_edit(args: argparse.Namespace) -> int:
    org, chassis = _org(args.org), check_chassis(args.chassis)
    settings = db_settings(args)
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("name", args.name),
            ("model", args.model),
            ("tags", _tags(args.tags)),
            ("location", args.location),
            ("disabled", args.disabled),
        )
        if value is not None
    }
    if not changes:
        raise ConfigError(
            "nothing to change: give --name, --model, --tags, --location, --disable or --enable"
        )

    async def work(meta: Metadata) -> BrokerResult | None:
        await meta.require_org(org)
        before = await meta.get_machine(org, chassis)
        after = await Registry(meta).update(org, chassis, changes)
        await Accounts(meta).audit(org, actor(), "machine_changed", chassis, details=str(changes))
        if before.disabled == after.disabled:
            return None
        return await BrokerFiles(settings, meta).update()

    broker = with_metadata(args, work)
    print(f"changed machine {chassis}: {', '.join(sorted(changes))}")
    if broker is not None:
        print(_broker_line(broker))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    org, chassis = _org(args.org), check_chassis(args.chassis)
    settings = db_settings(args)

    async def work(meta: Metadata) -> tuple[int, int, BrokerResult | None]:
        await meta.require_org(org)
        await meta.get_machine(org, chassis)
        store = open_store(settings.store)
        await store.start()
        try:
            points = await store.machine_points(org, chassis)
            if args.data is None:
                return points, 0, None
            await Registry(meta).delete(org, chassis)
            deleted = await store.delete_machine(org, chassis) if args.data == "delete" else 0
        finally:
            await store.close()
        await Accounts(meta).audit(
            org, actor(), "machine_deleted", chassis, details={"data": args.data, "points": points}
        )
        return points, deleted, await BrokerFiles(settings, meta).update()

    points, deleted, broker = with_metadata(args, work)
    if broker is None:
        raise InputError(
            f"machine {chassis} has {points} stored values: give --data keep or --data delete"
        )
    print(f"removed machine {chassis} from organisation {org}")
    if args.data == "delete":
        print(f"deleted {deleted} stored values")
    else:
        print(f"kept {points} stored values")
    print(_broker_line(broker))
    return 0


def run_import(args: argparse.Namespace) -> int:
    org = _org(args.org)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise InputError(f"{args.file} is larger than {MAX_IMPORT_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{args.file} is not UTF-8 text") from None
    rows, errors = parse_csv(text)

    async def work(meta: Metadata) -> Any:
        await meta.require_org(org)
        report = await Registry(meta).import_rows(org, rows, errors)
        summary = f"{len(report.created)} created, {len(report.updated)} updated"
        await Accounts(meta).audit(org, actor(), "machines_imported", summary)
        return report

    report = with_metadata(args, work)
    print(
        f"{len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.errors)} bad row(s)"
    )
    for error in report.errors:
        print(f"line {error['line']}: {error['chassis'] or '(empty)'}: {error['error']}")
    return 1 if report.errors else 0


__all__ = ["add_parser"]
