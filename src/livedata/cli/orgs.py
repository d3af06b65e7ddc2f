"""``livedata orgs``: organisations, for the server's operator (the super-admin).

::

    livedata orgs create acme --name "ACME Earthworks" --admin alice   # + its first admin
    livedata orgs list
    livedata orgs rename acme "ACME Earthworks AB"

Works on the metadata database directly (``--data-dir``, ``--metadata``,
``--config`` as for ``livedata serve``); whoever can run it on the server is the
super-admin, there is no such role in the API.  ``create`` makes the database on a
fresh install and, with ``--admin``, the organisation's first admin with a random
password printed once (or ``--password-stdin``).  An organisation's admin renames
their own organisation on the admin page (``PUT /api/resources/{orgId}``).
"""

from __future__ import annotations

import argparse
from typing import Any

from livedata.auth import Role
from livedata.cli.users import (
    USERNAME,
    actor,
    db_flags,
    new_password,
    print_table,
    read_secret_stdin,
    with_metadata,
)
from livedata.errors import InputError
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts
from livedata.metadata.registry import create_org, rename_org


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "orgs",
        help="create, list and rename organisations (server operator)",
        description="Organisations in the server's metadata database (find it with "
        "--data-dir, --metadata or --config, as for `livedata serve`).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    db = db_flags()

    create = actions.add_parser(
        "create", parents=[db], help="create an organisation (and its first admin)"
    )
    create.add_argument("org", metavar="ORG", help="organisation id: letters, digits, _ . -")
    create.add_argument("--name", help="display name (default: the id)")
    create.add_argument("--admin", metavar="USERNAME", help="also create this admin user")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the admin's password from standard input (else a random one is printed)",
    )
    create.set_defaults(run=run_create)

    listing = actions.add_parser("list", parents=[db], help="list organisations")
    listing.set_defaults(run=run_list)

    rename = actions.add_parser("rename", parents=[db], help="change an organisation's name")
    rename.add_argument("org", metavar="ORG")
    rename.add_argument("name", metavar="NAME")
    rename.set_defaults(run=run_rename)


def run_create(args: argparse.Namespace) -> int:
    if args.admin is not None and not USERNAME.match(args.admin):
        raise InputError(f"{args.admin!r} is not a valid username (letters, digits, _ . @ -)")
    password = read_secret_stdin("password") if args.password_stdin else new_password()

    async def work(meta: Metadata) -> None:
        await create_org(meta, args.org, args.name or args.org)
        if args.admin is not None:
            accounts = Accounts(meta)
            await accounts.create_user(args.org, args.admin, password, Role.admin)
            await accounts.audit(args.org, actor(), "user_created", args.admin)

    with_metadata(args, work, create=True)
    print(f"created organisation {args.org}")
    if args.admin is not None:
        print(f"created user {args.admin} (admin) in organisation {args.org}")
        if not args.password_stdin:
            print(f"password: {password}")
            print("(shown this once; it is stored hashed only)")
    else:
        print(f"add its first admin: livedata users create {args.org} USERNAME --role admin")
    return 0


def run_list(args: argparse.Namespace) -> int:
    async def work(meta: Metadata) -> list[tuple[str, ...]]:
        accounts = Accounts(meta)
        return [
            (
                org.id,
                org.name,
                str(len(await meta.list_machines(org.id))),
                str(len(await accounts.list_users(org.id))),
            )
            for org in await meta.list_orgs()
        ]

    rows = [("ORG", "NAME", "MACHINES", "USERS"), *with_metadata(args, work)]
    print_table(rows, "(no organisations: livedata orgs create ORG --admin USERNAME)")
    return 0


def run_rename(args: argparse.Namespace) -> int:
    async def work(meta: Metadata) -> None:
        await rename_org(meta, args.org, args.name)
        await Accounts(meta).audit(args.org, actor(), "org_renamed", args.name.strip())

    with_metadata(args, work)
    print(f"renamed organisation {args.org} to {args.name.strip()!r}")
    return 0
