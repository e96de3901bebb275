"""`dspo worker`: a Celery worker that runs the jobs; `dspo beat`: the retraining schedule (both need
DSPO_BROKER_URL). GPU workers consume the `gpu` queue: `dspo worker --queues gpu`."""

import argparse


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import make_celery

    argv = ["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}"]
    argv += ["--queues", args.queues, "--pool", args.pool]
    make_celery().worker_main(argv)
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    from worker.celery_app import make_celery

    make_celery().start(["beat", f"--loglevel={args.loglevel}", f"--schedule={args.schedule}"])
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("worker", help="run a Celery worker for the jobs (production mode)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--queues", default="celery", help="comma-separated queues to consume")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--loglevel", default="INFO")
    parser.set_defaults(func=cmd_worker)

    beat = commands.add_parser("beat", help="run Celery beat: the scheduled retraining tick (one per site)")
    beat.add_argument("--schedule", default="var/celerybeat-schedule", help="beat's state file")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=cmd_beat)
