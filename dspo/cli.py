"""The `dspo` command. Core subcommands live here; the server, the worker and the trainer add theirs
through the entry-point group ``dspo.cli`` (each entry is a ``register(subparsers)`` function), so
this shared core never imports them."""

import argparse
import getpass
import logging
import sys
from importlib.metadata import entry_points

from dspo import simulate
from dspo.errors import DspoError
from dspo.logs import configure as configure_logging
from dspo.runtime import Runtime
from dspo.services.users import ensure_user
from dspo.settings import get_settings


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from dspo.migrate import upgrade

    url = args.database_url or get_settings().database_url
    upgrade(url, args.revision)
    print(f"database at {url.split('@')[-1]} is at revision {args.revision}")
    return 0


def cmd_user_create(args: argparse.Namespace) -> int:
    password = args.password
    if password is None and not args.generate_password:
        password = getpass.getpass(f"password for {args.username}: ")
    runtime = Runtime.from_settings()
    try:
        password = ensure_user(runtime, args.username, args.role, password)
    except DspoError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    print(f"user {args.username!r} ({args.role}) is ready; any sessions it had are ended")
    if args.generate_password:
        print(f"password: {password}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what every job does (INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply the migrations (creates the SQLite file if needed)")
    up.add_argument("--revision", default="head")
    up.add_argument("--database-url", help="default: DSPO_DATABASE_URL")
    up.set_defaults(func=cmd_db_upgrade)

    user = commands.add_parser("user", help="users").add_subparsers(dest="user_command", required=True)
    create = user.add_parser("create", help="create a user, or reset its password and role")
    create.add_argument("username")
    create.add_argument("--role", choices=["admin", "annotator"], default="annotator")
    create.add_argument("--password", help="default: asked for on the terminal")
    create.add_argument("--generate-password", action="store_true", help="make one up and print it")
    create.set_defaults(func=cmd_user_create)

    simulate.register(commands)

    for ep in sorted(entry_points(group="dspo.cli"), key=lambda ep: ep.name):
        try:
            register = ep.load()
        except ImportError as exc:
            # An optional part (e.g. the trainer without the [train] extra) must not break the rest.
            print(
                f"note: the {ep.name!r} commands are unavailable ({exc}); install its extra", file=sys.stderr
            )
            continue
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(get_settings(), logging.INFO if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
