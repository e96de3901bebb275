"""Peak memory of a worker per job, for the largest uploads: `python -m bench.memory`.

Each job of an upload's pipeline (ingest → candidates → instances → tasks) runs in a fresh process, as a
worker's pool process would, and reports its peak resident memory (ru_maxrss) and time. The same jobs
run twice in the same run: once with the bounded working size (DSPO_WORKER_BAND_ROWS, the default), once
without it (0: whole images at once, as before), so that the two are compared on the same machine at
the same moment. The database is a SQLite file in a temporary folder; nothing is sent to a broker.

    python -m bench.memory --megapixels 10 40 --generator classical
    python -m bench.memory --megapixels 0.26 1.05 2.4 --kind lq --generator realesrgan   # LQ 128/256/384 px
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import json, resource, sys, time
from dspo.jobs import run_job
from dspo.runtime import Runtime
runtime = Runtime.from_settings()
started = time.perf_counter()
state = run_job(runtime, int(sys.argv[1]))
print(json.dumps({"state": state, "seconds": time.perf_counter() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


ESRGAN_CHILD = """
import json, resource, sys, time
import numpy as np
from PIL import Image
from worker.generators.realesrgan import RealesrganGenerator
side, tile = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
small = rng.integers(0, 256, size=(side // 16, side // 16, 3), dtype=np.uint8)
image = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
generator = RealesrganGenerator(models=("realesrgan-x4plus",), tilesize=tile)
started = time.perf_counter()
out = generator.upscale(image, "realesrgan-x4plus")
print(json.dumps({"size": list(out.size), "seconds": time.perf_counter() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def esrgan_call(side: int, tile: int) -> dict:
    """One realesrgan-x4plus call on a side x side LQ image in a fresh process, at this tile size."""
    done = subprocess.run(
        [sys.executable, "-c", ESRGAN_CHILD, str(side), str(tile)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"realesrgan x4plus on {side}x{side} (tile {tile}) crashed:\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def photo(megapixels: float, seed: int = 0) -> bytes:
    """A photo-like 3:2 JPEG of about this many megapixels: smooth shapes, edges and noise."""
    width = int((megapixels * 1e6 * 1.5) ** 0.5)
    height = int(width / 1.5)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def run_pipeline(data: bytes, *, kind: str, generator: str, band_rows: int, workdir: Path) -> list[dict]:
    from sqlalchemy import select

    from dspo.db import session_scope
    from dspo.ingest import prepare_image, record_source
    from dspo.migrate import upgrade
    from dspo.models import Job, Project
    from dspo.runtime import Runtime
    from dspo.settings import Settings

    env = {
        **os.environ,
        "DSPO_DATABASE_URL": f"sqlite:///{workdir / 'dspo.db'}",
        "DSPO_STORAGE_ROOT": str(workdir / "blobs"),
        # A broker nobody listens on: a job's follow-up stays queued, for this script to run next.
        "DSPO_BROKER_URL": "redis://127.0.0.1:1/0",
        "DSPO_WORKER_BAND_ROWS": str(band_rows),
        "HF_HUB_OFFLINE": "1",
    }
    upgrade(env["DSPO_DATABASE_URL"])
    settings = Settings(database_url=env["DSPO_DATABASE_URL"], storage_root=workdir / "blobs", _env_file=None)  # type: ignore[call-arg]
    runtime = Runtime.from_settings(settings)
    with session_scope(runtime.sessions) as session:
        project = Project(name="memory", generator=generator, n_candidates=4, overlap=3)
        session.add(project)
        session.flush()
        project_id, scale = project.id, project.scale
    image = prepare_image(runtime.blobs, data, kind=kind, scale=scale, max_pixels=settings.max_image_pixels)
    with runtime.sessions() as session:
        record_source(session, project_id, image, filename="big", kind=kind, prompt="", ingest_job=True)
    steps = []
    while True:
        with runtime.sessions() as session:
            job = session.scalars(select(Job).where(Job.state == "queued").order_by(Job.id)).first()
        if job is None:
            break
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(job.id)], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"job {job.kind} crashed:\n{done.stderr[-3000:]}")
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        if outcome["state"] != "succeeded":
            with runtime.sessions() as session:
                raise RuntimeError(f"job {job.kind} failed: {session.get(Job, job.id).error}")  # type: ignore[union-attr]
        steps.append({"kind": job.kind, **outcome})
    runtime.close()
    return steps


DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # as annotation_server/cli.py's demo


def demo(generator: str, band_rows: int) -> None:
    """The photographs `dspo demo` uploads, one pipeline each, with the bounded settings."""
    from skimage import data as photos

    from dspo.images import encode_png

    print(
        f"generator {generator}, the demo's photographs as HQ uploads, x4; peak RSS per job (MB)", flush=True
    )
    for name in DEMO_PHOTOS:
        image = Image.fromarray(getattr(photos, name)()).convert("RGB")
        with tempfile.TemporaryDirectory() as tmp:
            steps = run_pipeline(
                encode_png(image), kind="hq", generator=generator, band_rows=band_rows, workdir=Path(tmp)
            )
        cells = " ".join(f"{s['kind']} {s['peak_mb']:.0f} MB {s['seconds']:.1f} s;" for s in steps)
        print(f"{name:>10} {image.width}x{image.height}: {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, nargs="+", default=[10.0, 40.0])
    parser.add_argument("--kind", choices=["hq", "lq"], default="hq")
    parser.add_argument("--generator", default="classical")
    parser.add_argument("--band-rows", type=int, default=256, help="the bounded run's DSPO_WORKER_BAND_ROWS")
    parser.add_argument(
        "--esrgan-sides",
        type=int,
        nargs="*",
        help="instead: one realesrgan-x4plus call per LQ side, untiled and tiled",
    )
    parser.add_argument(
        "--tiles", type=int, nargs="+", default=[0, 128], help="tile sizes for --esrgan-sides"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="instead: the demo's four photographs (HQ, x4), bounded settings only",
    )
    args = parser.parse_args()
    if args.demo:
        demo(args.generator, args.band_rows)
        return
    if args.esrgan_sides:
        print("realesrgan-x4plus, one call on a square LQ image; peak RSS of the process (MB) and time")
        print(
            f"{'LQ':>9} " + " ".join(f"{('untiled' if t == 0 else f'tile {t}'):>18}" for t in args.tiles),
            flush=True,
        )
        for side in args.esrgan_sides:
            cells = []
            for tile in args.tiles:
                outcome = esrgan_call(side, tile)
                cells.append(f"{outcome['peak_mb']:>8.0f} MB {outcome['seconds']:>5.1f} s")
            print(f"{f'{side}x{side}':>9} " + " ".join(cells), flush=True)
        return
    print(
        f"generator {args.generator}, {args.kind.upper()} uploads, 4 candidates, x4; peak RSS per job (MB)",
        flush=True,
    )
    print(
        f"{'upload':>14} {'bands':>6} "
        + " ".join(f"{k:>18}" for k in ("ingest", "candidates", "instances", "tasks"))
    )
    for megapixels in args.megapixels:
        data = photo(megapixels)
        with Image.open(io.BytesIO(data)) as probe:
            size = f"{probe.width}x{probe.height}"
        for band_rows in (args.band_rows, 0):
            with tempfile.TemporaryDirectory() as tmp:
                steps = run_pipeline(
                    data, kind=args.kind, generator=args.generator, band_rows=band_rows, workdir=Path(tmp)
                )
            cells = " ".join(f"{s['peak_mb']:>8.0f} MB {s['seconds']:>5.1f} s" for s in steps)
            print(f"{size:>14} {band_rows or 'off':>6} {cells}", flush=True)


if __name__ == "__main__":
    main()
