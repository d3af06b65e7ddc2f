"""``livedata users``: create users, reset passwords, list users, issue API tokens.

Works on the metadata database directly (the one ``livedata serve`` / ``demo`` use:
``--data-dir``, ``--metadata``, ``--config`` or ``LIVEDATA_*`` as for the server),
so it creates the first admin of a fresh install and gets an admin back in when the
password is lost; it can run while the server runs.  Everything else about users
is in the admin API and page.  Organisations are not created implicitly: ``create``
makes ORG (and, on a fresh install, the SQLite database) only with ``--create-org``;
every other action refuses a SQLite database that does not exist, since that is a
wrong ``--data-dir`` far more often than an empty install.

::

    livedata users create acme alice --role admin --create-org    # first admin of a new org
    livedata users passwd admin --data-dir livedata-data          # forgot the demo password
    livedata users list
    livedata users token alice --name grafana

Passwords and tokens it generates are printed once and stored hashed only.  A
password given with ``--password-stdin`` is the first line of standard input (at
least 10 characters).  Each change is written to the organisation's audit log with
the actor ``cli:{OS user}``.  A running server notices a reset password at once for
logins, ends the user's sessions within 5 s (its cache) and closes their live
connections within 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from livedata.auth import Role
from livedata.errors import ConfigError, Conflict, InputError, NotFound
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts, User
from livedata.model import valid_id
from livedata.settings import Settings, load_settings

T = TypeVar("T")

MIN_PASSWORD = 10
"""As the API's (``livedata.gateway.auth_api.MIN_PASSWORD``)."""
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")
"""As the API's (``livedata.gateway.auth_api.USERNAME``)."""


def db_flags() -> argparse.ArgumentParser:
    """The flags that find the server's metadata database (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("database (as for `livedata serve`)")
    group.add_argument("--config", type=Path, help="TOML settings file (also LIVEDATA_CONFIG)")
    group.add_argument(
        "--data-dir", type=Path, help="directory of the embedded databases (livedata-data)"
    )
    group.add_argument("--metadata", help="metadata database URL: sqlite:///path, postgresql://…")
    return parent


def db_settings(args: argparse.Namespace) -> Settings:
    """The server's settings as the database flags of ``args`` find them."""
    return load_settings({"data_dir": args.data_dir, "metadata": args.metadata}, args.config)


def with_metadata(
    args: argparse.Namespace, work: Callable[[Metadata], Awaitable[T]], *, create: bool = False
) -> T:
    """Run ``work`` on the metadata database named by ``args`` (schema brought up to date).

    A SQLite database that does not exist yet is created only with ``create``: anything
    else is more likely a wrong ``--data-dir`` than a fresh install, and would work on
    an empty database (``mqtt-config`` would write a password file without machines).
    """
    settings = db_settings(args)
    if settings.metadata.startswith("sqlite:///") and not create:
        path = Path(settings.metadata.removeprefix("sqlite:///"))
        if not path.exists():
            raise ConfigError(
                f"no metadata database at {path}: give the server's --data-dir, "
                "--metadata or --config"
            )

    async def main() -> T:
        meta = Metadata(settings.metadata)
        try:
            await meta.start()
            return await work(meta)
        finally:
            await meta.close()

    return asyncio.run(main())


def actor() -> str:
    """Who made a change from the command line, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def read_secret_stdin(what: str, min_length: int = MIN_PASSWORD) -> str:
    """The first line of standard input, without its line end."""
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise InputError(f"no {what} on standard input")
    if len(line) < min_length:
        raise InputError(f"the {what} must be at least {min_length} characters")
    if len(line) > 200:
        raise InputError(f"the {what} must be at most 200 characters")
    return line


def new_password() -> str:
    return secrets.token_urlsafe(12)


def _add_password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (else a random one)",
    )


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "users",
        help="create users, reset passwords, list users, issue API tokens",
        description=(
            "Manage users in the metadata database the server uses (find it with "
            "--data-dir, --metadata or --config, as for `livedata serve`). Generated "
            "passwords and tokens are printed once and stored hashed only."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    db = db_flags()

    create = actions.add_parser(
        "create",
        parents=[db],
        help="create a user (a random password is printed once)",
        description=(
            "Create USERNAME in organisation ORG with a role. The organisation must exist "
            "unless --create-org is given (for the first admin of a fresh install); a "
            "mistyped ORG is an error rather than a new organisation. Usernames are unique "
            "across organisations: they are the login."
        ),
    )
    create.add_argument("org", metavar="ORG", help="organisation id")
    create.add_argument("username", metavar="USERNAME", help="login name: letters, digits, _.@-")
    create.add_argument(
        "--role", required=True, choices=[r.name for r in Role], help="viewer, operator or admin"
    )
    _add_password_stdin(create)
    create.add_argument(
        "--create-org", action="store_true", help="create organisation ORG if it does not exist"
    )
    create.add_argument("--org-name", help="display name of a created organisation (default ORG)")
    create.set_defaults(run=run_create)

    passwd = actions.add_parser(
        "passwd",
        parents=[db],
        help="set a new password (random, printed once) and end the user's sessions",
        description=(
            "Give USERNAME a new password (random and printed once, or from standard "
            "input) and end their browser sessions. API tokens stay valid: revoke them "
            "in the admin page if they may be compromised."
        ),
    )
    passwd.add_argument("username", metavar="USERNAME")
    _add_org_option(passwd)
    _add_password_stdin(passwd)
    passwd.set_defaults(run=run_passwd)

    listing = actions.add_parser(
        "list", parents=[db], help="list the users of one or every organisation"
    )
    listing.add_argument("org", metavar="ORG", nargs="?", help="organisation id (default all)")
    listing.set_defaults(run=run_list)

    token = actions.add_parser(
        "token",
        parents=[db],
        help="create an API token for a user (printed once)",
        description=(
            "Create an API token acting as USERNAME (their organisation and role at the time "
            "of use); send it as `Authorization: Bearer TOKEN`."
        ),
    )
    token.add_argument("username", metavar="USERNAME")
    _add_org_option(token)
    token.add_argument("--name", required=True, help="what the token is for (shown in lists)")
    token.add_argument(
        "--expires-days", type=float, help="the token expires after this many days (default never)"
    )
    token.set_defaults(run=run_token)


def _add_org_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--org", help="the user's organisation (needed when several have a user of that name)"
    )


async def _user(accounts: Accounts, username: str, org: str | None) -> User:
    try:
        user = await accounts.find_user(username, org)
    except Conflict:
        raise Conflict(
            f"username {username!r} exists in several organisations: add --org ORG"
        ) from None
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


def run_create(args: argparse.Namespace) -> int:
    if not valid_id(args.org):
        raise InputError(f"{args.org!r} is not a valid organisation id")
    if not USERNAME.match(args.username):
        raise InputError(
            f"username {args.username!r}: use 1-64 letters, digits, '_', '.', '@' or '-'"
        )
    if args.org_name is not None and not args.create_org:
        raise ConfigError("--org-name needs --create-org")
    password = read_secret_stdin("password") if args.password_stdin else new_password()
    role = Role[args.role]

    async def work(meta: Metadata) -> bool:
        accounts = Accounts(meta)
        if await accounts.find_user(args.username, args.org) is not None:
            raise Conflict(f"username {args.username!r} is taken in organisation {args.org!r}")
        created_org = False
        try:
            await meta.require_org(args.org)
        except NotFound:
            if not args.create_org:
                raise NotFound(
                    f"organisation {args.org!r} not found (add --create-org to create it)"
                ) from None
            await meta.ensure_org(args.org, args.org_name or args.org)
            created_org = True
        await accounts.create_user(args.org, args.username, password, role)
        if created_org:
            await accounts.audit(args.org, actor(), "org_created", args.org)
        await accounts.audit(args.org, actor(), "user_created", args.username, details=role.name)
        return created_org

    created_org = with_metadata(args, work, create=args.create_org)
    if created_org:
        print(f"created organisation {args.org}")
    print(f"created user {args.username} ({role.name}) in organisation {args.org}")
    if not args.password_stdin:
        print(f"password: {password}")
        print("(shown this once; it is stored hashed only)")
    return 0


def run_passwd(args: argparse.Namespace) -> int:
    password = read_secret_stdin("password") if args.password_stdin else new_password()

    async def work(meta: Metadata) -> None:
        accounts = Accounts(meta)
        user = await _user(accounts, args.username, args.org)
        await accounts.update_user(user.org_id, user.id, password=password)
        await accounts.audit(user.org_id, actor(), "password_reset", user.username)

    with_metadata(args, work)
    print(f"new password set for {args.username}; their browser sessions are ended")
    if not args.password_stdin:
        print(f"password: {password}")
        print("(shown this once; it is stored hashed only)")
    return 0


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_list(args: argparse.Namespace) -> int:
    async def work(meta: Metadata) -> list[User]:
        accounts = Accounts(meta)
        if args.org is not None:
            await meta.require_org(args.org)
            return await accounts.list_users(args.org)
        users: list[User] = []
        for org in await meta.list_orgs():
            users += await accounts.list_users(org.id)
        return users

    users = with_metadata(args, work)
    rows = [("ORG", "USER", "ROLE", "STATE", "CREATED")] + [
        (
            u.org_id,
            u.username,
            u.role,
            "disabled" if u.disabled else "active",
            _date(u.created_ms),
        )
        for u in users
    ]
    print_table(rows, "(no users)")
    return 0


def print_table(rows: Sequence[tuple[str, ...]], empty: str) -> None:
    """Print a header row and data rows in aligned columns; ``empty`` when there is no data."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if len(rows) == 1:
        print(empty)


def run_token(args: argparse.Namespace) -> int:
    if args.expires_days is not None and not 0 < args.expires_days <= 3650:
        raise InputError("--expires-days must be more than 0 and at most 3650")
    name = args.name.strip()
    if not name or len(name) > 200:
        raise InputError("--name must be 1-200 characters")
    expires = (
        int((time.time() + args.expires_days * 86400) * 1000)
        if args.expires_days is not None
        else None
    )

    async def work(meta: Metadata) -> tuple[User, str]:
        accounts = Accounts(meta)
        user = await _user(accounts, args.username, args.org)
        if user.disabled:
            raise InputError(f"user {args.username!r} is disabled")
        _, raw = await accounts.create_token(user.id, name, expires)
        await accounts.audit(user.org_id, actor(), "token_created", f"{user.username}: {name}")
        return user, raw

    user, raw = with_metadata(args, work)
    print(f"token {name!r} of {user.username} ({user.role} in {user.org_id}):")
    print(f"token: {raw}")
    print("(shown this once; send it as `Authorization: Bearer TOKEN`)")
    return 0
