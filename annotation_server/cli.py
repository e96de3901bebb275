"""`dspo serve` and `dspo demo`."""

import argparse
import os
import tempfile
import time

import uvicorn
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from annotation_server.main import check_secret
from dspo import jobs
from dspo.generators import generator_class
from dspo.images import encode_png
from dspo.logs import uvicorn_log_config
from dspo.migrate import upgrade
from dspo.models import Job, Project, Task
from dspo.runtime import Runtime
from dspo.services import projects, uploads
from dspo.services.users import ensure_user
from dspo.settings import get_settings

DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def serve(host: str, port: int, workers: int = 1) -> None:
    settings = get_settings()
    if workers > 1 and settings.jobs_in_process:
        raise SystemExit("--workers > 1 needs DSPO_BROKER_URL: in-process jobs would run once per worker")
    check_secret(settings)
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # /metrics adds up the counters of every worker process from this folder (dspo/metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dspo-metrics-")
    print(f"serving on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    uvicorn.run(
        "annotation_server.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        log_config=uvicorn_log_config(settings) or uvicorn.config.LOGGING_CONFIG,
        access_log=False,
        # The app trusts the same proxies (annotation_server.main); both read DSPO_TRUSTED_PROXIES.
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.host, args.port, args.workers)
    return 0


def _demo_generator() -> str:
    """realesrgan if it can run here (its extra and system libraries are installed), else classical."""
    try:
        generator_class("realesrgan")()
        return "realesrgan"
    except Exception:
        return "classical"


def wait_for_jobs(runtime: Runtime, project_id: int, timeout: float = 3600) -> dict[str, int]:
    """Show a progress bar until no job of the project is queued or running."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("jobs", total=None)
        deadline = time.monotonic() + timeout
        while True:
            with runtime.sessions() as session:
                counts = dict(
                    session.execute(
                        select(Job.state, func.count())
                        .where(Job.project_id == project_id)
                        .group_by(Job.state)
                    ).all()
                )
            done = counts.get("succeeded", 0) + counts.get("failed", 0)
            progress.update(
                bar,
                completed=done,
                total=sum(counts.values()),
                description=f"jobs ({counts.get('failed', 0)} failed)",
            )
            if not counts.get("queued") and not counts.get("running"):
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs of project {project_id} still running after {timeout:.0f} s")
            time.sleep(0.3)


def cmd_demo(args: argparse.Namespace) -> int:
    from PIL import Image
    from skimage import data as photos

    settings = get_settings()
    upgrade(settings.database_url)
    runtime = Runtime.from_settings(settings)
    admin_password = ensure_user(runtime, "admin", "admin")
    annotator_password = ensure_user(runtime, "annotator", "annotator")
    generator = args.generator or _demo_generator()

    with runtime.sessions() as session:
        project = session.scalars(select(Project).where(Project.name == "demo")).first()
        if project is None:
            fields = {
                "name": "demo",
                "instructions": "Pick the candidate that looks most like a real, sharp photograph of this "
                "region, and the one that looks least like it. Say what the region really shows.",
                "generator": generator,
                "segmenter": "regions",
                "min_area_fraction": 0.01,
            }
            project = projects.create_project(session, settings, fields)
        project_id = project.id

    print(
        f"demo project {project_id}: {len(DEMO_PHOTOS)} photographs from scikit-image, degraded x4, "
        f"candidates from the {generator!r} generator"
    )
    for name in DEMO_PHOTOS[: args.images]:
        photo = Image.fromarray(getattr(photos, name)()).convert("RGB")
        uploads.upload_image(
            runtime, project_id, encode_png(photo), filename=f"{name}.png", kind="hq", prompt=name
        )
    counts = wait_for_jobs(runtime, project_id)
    with runtime.sessions() as session:
        n_tasks = session.scalar(select(func.count()).select_from(Task).where(Task.project_id == project_id))
    print(f"jobs: {counts}; {n_tasks} tasks are ready")
    print(f"admin     login: admin      password: {admin_password}")
    print(f"annotator login: annotator  password: {annotator_password}")
    jobs.shutdown_executor(runtime)
    runtime.close()
    if args.no_serve:
        return 0 if not counts.get("failed") else 1
    # The demo is a development server: it may run with the default secret key.
    os.environ["DSPO_DEVELOPMENT"] = "true"
    get_settings.cache_clear()
    serve(args.host, args.port)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="run the API server (and in-process jobs without a broker)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (needs a broker)")
    parser.set_defaults(func=cmd_serve)

    demo = commands.add_parser("demo", help="make a demo project on the embedded default and serve it")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--images", type=int, default=len(DEMO_PHOTOS), choices=range(1, len(DEMO_PHOTOS) + 1))
    demo.add_argument(
        "--generator", choices=["classical", "realesrgan"], help="default: realesrgan if installed"
    )
    demo.add_argument("--no-serve", action="store_true", help="prepare the project, then exit")
    demo.set_defaults(func=cmd_demo)
