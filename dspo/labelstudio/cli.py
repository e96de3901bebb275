"""`dspo labelstudio push | sync`: thin commands over dspo.labelstudio.bridge."""

import argparse
import os
import sys
from pathlib import Path

from dspo.errors import DspoError
from dspo.labelstudio import bridge
from dspo.runtime import Runtime

TOKEN_ENV = "LABEL_STUDIO_API_KEY"


def _token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise DspoError(f"give --token or set {TOKEN_ENV} (Label Studio: Account & Settings > Access Token)")
    return token


def cmd_push(args: argparse.Namespace) -> int:
    runtime = Runtime.from_settings()
    try:
        result = bridge.push(
            runtime,
            args.project,
            args.url,
            _token(args),
            public_url=args.public_url,
            webhook=not args.no_webhook,
        )
    except DspoError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    made = "created" if result.created_project else "updated"
    hook = f"webhook {result.webhook_id}" if result.webhook_id else "no webhook (run `dspo labelstudio sync`)"
    print(
        f"Label Studio project {result.ls_project_id} {made}: {result.tasks_created} tasks imported, "
        f"{result.tasks_refreshed} with renewed image URLs, {result.tasks_total} in all; {hook}"
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    runtime = Runtime.from_settings()
    try:
        result = bridge.sync(runtime, args.project, _token(args), url=args.url)
    except DspoError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    applied = result.applied
    print(
        f"{result.annotations} annotations in Label Studio, {result.unchanged} unchanged; applied: "
        f"{applied.accepted} accepted, {applied.rejected} rejected, {applied.deleted} deleted "
        f"({result.seconds:.1f} s)"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dspo.labelstudio.importer import import_export

    runtime = Runtime.from_settings()
    try:
        result = import_export(runtime, Path(args.export), Path(args.mapping))
    except DspoError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    for reason in result.rejected:
        print(f"rejected: {reason}", file=sys.stderr)
    print(
        f"project {result.project_id}: {result.tasks} tasks ({result.sources_added} new), "
        f"{result.votes_added} votes added, {result.votes_known} imported before, "
        f"{len(result.rejected)} rejected"
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("labelstudio", help="the Label Studio bridge (docs/labelstudio.md)")
    sub = group.add_subparsers(dest="labelstudio_command", required=True)

    push = sub.add_parser("push", help="create or update a Label Studio project with a project's tasks")
    push.add_argument("--project", type=int, required=True, help="the project here")
    push.add_argument("--url", required=True, help="Label Studio's address, e.g. http://127.0.0.1:8080")
    push.add_argument("--token", help=f"Label Studio API token (default: ${TOKEN_ENV})")
    push.add_argument(
        "--public-url", help="where Label Studio and browsers reach this server (default: DSPO_PUBLIC_URL)"
    )
    push.add_argument("--no-webhook", action="store_true", help="register no webhook; answers come by sync")
    push.set_defaults(func=cmd_push)

    sync = sub.add_parser("sync", help="take every answer from Label Studio's export (what webhooks missed)")
    sync.add_argument("--project", type=int, required=True, help="the project here")
    sync.add_argument("--url", help="Label Studio's address (default: the one it was pushed to)")
    sync.add_argument("--token", help=f"Label Studio API token (default: ${TOKEN_ENV})")
    sync.set_defaults(func=cmd_sync)

    imp = sub.add_parser("import", help="make a project here from a Label Studio JSON export")
    imp.add_argument("--export", required=True, help="the export: a JSON list of tasks")
    imp.add_argument("--mapping", required=True, help="the mapping file (docs/labelstudio.md)")
    imp.set_defaults(func=cmd_import)
