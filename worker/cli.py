"""`dspo worker`: a Celery worker that runs the pipeline jobs (needs DSPO_BROKER_URL)."""

import argparse


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import make_celery

    argv = ["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}"]
    argv += ["--queues", args.queues, "--pool", args.pool]
    make_celery().worker_main(argv)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("worker", help="run a Celery worker for the jobs (production mode)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--queues", default="celery", help="comma-separated queues to consume")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--loglevel", default="INFO")
    parser.set_defaults(func=cmd_worker)
