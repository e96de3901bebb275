"""The closed loop, measured (SPEC §1 step 8, docs/loop.md): does a round of preferences make the model
better, and is DSPO better than image-level DPO and SFT on the same votes?

    python bench/loop.py                        # defaults: 18 minutes alone on 2 cores (docs/benchmarks.md)
    python bench/loop.py --seed 1 --oracle fidelity --size gpu --device cuda

One run, top to bottom:
1. **Pretrain** a base model that can super-resolve: the x4 upscaler architecture (trainer/pretrain.py
   says why), trained from scratch on (LQ, HQ) pairs made with the project's own degradation
   (dspo.images.degrade) from photographs that ship with scikit-image. The only stage outside the
   service: the service has no pretraining.
2. **Round 1, through the service over HTTP** (a real uvicorn server in a thread, jobs in-process): a
   project whose generator is the base model (its `diffusion` generator, candidates varying seed,
   guidance and steps), HQ uploads of other photographs (ingest, candidates, instances, tasks run as
   the service's jobs), and held-out uploads of a third set; simulated annotators
   (dspo.simulate.Simulation, judging by `--oracle`) answer every task through the REST API; a dataset
   version is built and downloaded (dataset.tar) through the REST API.
3. **Train** DSPO, image-level DPO and SFT from that dataset with the same budget and seed: training
   jobs of the service (`POST /datasets/{id}/train`, the project's train_settings with the loss of each
   run over them), each registering its LoRA as a model version. **The ceiling** (`--ceiling`, on by
   default): DSPO once more, on the same records with each source's HQ image as every winner, i.e. a
   round whose every answer names the original: how far this training budget can move the model at
   all, so that a small win rate can be told apart from a budget that no round of preferences could
   show (docs/benchmarks.md, issue 11). Its dataset is made here, not by the service, so the trainer's
   CLI trains it with the same flags and the LoRA is registered over REST.
4. **Evaluate** on the held-out sources: each trained model against the base, and DSPO against DPO, in
   the service's blind pairwise evaluation rounds, answered by simulated annotators with the same
   profiles (`evaluate_pair`).
5. **Round 2** (`--rounds 2`): round 1's DSPO model becomes the project's generator (as a promotion
   makes it), other tiles of the round-1 photographs are uploaded, and their candidates, tasks and
   votes make the next dataset version (round 1's votes and round 2's); DSPO trained on it is evaluated
   against round 1's DSPO and against the base.
6. **Report**: one table (win rate of B over A with ties apart and as halves, Wilson 95% intervals, the
   sign test; PSNR/SSIM against HQ as secondary columns; wall time per stage), saved with a plot
   (win rates with their intervals) in `--out`.

Everything is seeded by `--seed` (pretraining, the held-out draw, candidates, annotators, training).
Photographs are split by scene, so no scene is in two of pretraining, round 1 and the held-out set.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/loop.py` from the root

from dspo.dataset_format import DatasetWriter, image_path, read_manifest, read_records  # noqa: E402
from dspo.images import degrade  # noqa: E402
from dspo.oracles import Oracle, load_oracle  # noqa: E402
from dspo.simulate import Simulation, add_profile_flags, profile_from_args, profiles  # noqa: E402
from dspo.training import run_trainer  # noqa: E402

API = "/api/v1"
ADMIN_PASSWORD = "bench-admin-password"  # of the admin account of the installation it starts
SCALE = 4
PROMPT = "a photo"  # the prompt the base model learnt (trainer/pretrain.py); every source uses it
# scikit-image's photographs, split by scene. Pretraining gets the most pixels; round 1 and the
# held-out set get scenes of their own (astronaut/coffee are people and objects, chelsea/rocket too).
PRETRAIN_PHOTOS = (
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "camera",
    "moon",
    "brick",
    "grass",
    "gravel",
    "page",
)
ROUND_PHOTOS = ("astronaut", "coffee", "text", "cell")
HELD_OUT_PHOTOS = ("chelsea", "rocket", "coins")
# The three sets by flag (--pretrain-photos, ...): their defaults and what each is for.
PHOTO_SETS = {
    "pretrain": (PRETRAIN_PHOTOS, "pretrain the base on"),
    "round": (ROUND_PHOTOS, "draw the round-1 sources from"),
    "held-out": (HELD_OUT_PHOTOS, "draw the held-out sources from"),
}


@dataclasses.dataclass
class Sizes:
    """Sizes and budgets; every field is a flag (--tile, --sources, ...)."""

    tile: int = 128  # HQ side of a source (its LQ image is tile / 4)
    sources: int = 12  # round-1 sources
    held_out: int = 16  # held-out sources, the evaluation items
    candidates: int = 4  # N
    overlap: int = 3  # k, votes per task
    annotators: int = 5
    # Candidate i uses the i-th guidance and steps (cycled): the project's generator settings. An
    # evaluation makes both sides' outputs with the first (the service's rule: candidate 0, one seed).
    guidance: str = "3,1,5,7.5"
    steps: str = "15,10,10,15"
    pretrain_side: int = 512  # pretraining photographs are scaled down to this: more structure per crop
    degradations: int = 3  # LQ versions (degradation seeds) of each pretraining photograph
    pretrain_crop: int = 64  # HQ crop side of the UNet's batches (the VAE's: half of it)
    vae_steps: int = 3000  # the VAE decodes every output: under ~2000 steps it stays far under bicubic
    unet_steps: int = 1000
    width: int = 1
    train_steps: int = 100  # each of DSPO, DPO and SFT
    train_batch: int = 4
    resolution: int = 64
    learning_rate: float = 1e-4
    lora_rank: int = 8
    beta: float = 2500.0  # the upscaler's default in the trainer (the paper's code, in SPEC §3's convention)


SIZES = {
    "default": Sizes(),
    # The test suite's: minutes, no quality claim.
    "tiny": Sizes(
        tile=64,
        sources=2,
        held_out=3,
        candidates=2,
        overlap=1,
        annotators=2,
        guidance="3,1",
        steps="2,3",
        pretrain_side=96,
        degradations=1,
        pretrain_crop=32,
        vae_steps=2,
        unet_steps=2,
        train_steps=2,
        train_batch=2,
    ),
    "gpu": Sizes(
        sources=48,
        held_out=27,  # every held-out tile of 128 px
        annotators=7,
        steps="20,30,20,30",
        vae_steps=8000,
        unet_steps=8000,
        width=4,
        train_steps=1000,
        train_batch=16,
        resolution=128,
    ),
}


# --------------------------------------------------------------------------------------------------
# Photographs


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


def is_file_photo(name: str) -> bool:
    return name.lower().endswith(PHOTO_SUFFIXES)


def shipped(name: str) -> Path | None:
    """A scikit-image photograph without a loader of its own: its file; None for one with a loader."""
    from skimage import data

    return None if hasattr(data, name) else Path(data.__file__).parent / f"{name}.png"


def photograph(name: str) -> Image.Image:
    """A photograph of a set: an image file, or one of scikit-image's by name."""
    if is_file_photo(name):
        with Image.open(name) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    if (path := shipped(name)) is not None:
        return Image.open(path).convert("RGB")
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def photo_set(spec: str) -> tuple[str, ...]:
    """A --*-photos value: comma-separated scikit-image photograph names, image files, and folders
    (each stands for every image directly in it, by name)."""
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(str(f.resolve()) for f in path.iterdir() if is_file_photo(f.name))
            if not found:
                raise SystemExit(f"{item}: no images in this folder (looked for {', '.join(PHOTO_SUFFIXES)})")
            names += found
        elif path.is_file() and is_file_photo(path.name):
            names.append(str(path.resolve()))
        elif item and ((file := shipped(item)) is None or file.is_file()):
            names.append(item)
        else:
            raise SystemExit(
                f"{item!r} is not an image file ({', '.join(PHOTO_SUFFIXES)}), a folder of them, or a "
                "photograph of scikit-image (skimage.data)"
            )
    return tuple(dict.fromkeys(names))


def photo_sets(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """The run's photograph sets, by the PHOTO_SETS names."""
    return {name: getattr(args, f"{name.replace('-', '_')}_photos") for name in PHOTO_SETS}


def described(photos: tuple[str, ...]) -> str:
    """A photograph set in a line: its names, or how many from which folders."""
    if len(photos) <= 4:
        return ", ".join(Path(p).name for p in photos)
    folders = sorted({str(Path(p).parent) for p in photos if is_file_photo(p)})
    return f"{len(photos)} images" + (f" from {', '.join(folders)}" if folders else "")


def tiles(names: tuple[str, ...], side: int) -> list[tuple[str, Image.Image]]:
    """Every whole side x side tile of the photographs, named photo-row-col."""
    out = []
    for name in names:
        img = photograph(name)
        stem = Path(name).stem if is_file_photo(name) else name
        for row in range(img.height // side):
            for col in range(img.width // side):
                box = (col * side, row * side, (col + 1) * side, (row + 1) * side)
                out.append((f"{stem}-{row}-{col}", img.crop(box)))
    return out


def draw(items: list, n: int, rng: np.random.Generator) -> list:
    if n > len(items):
        raise SystemExit(f"only {len(items)} tiles of this size: ask for fewer sources or a smaller --tile")
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def pretraining_pairs(
    photos: tuple[str, ...], sizes: Sizes, seed: int
) -> list[tuple[Image.Image, Image.Image]]:
    """(LQ, HQ) pairs: each pretraining photograph, scaled down, degraded as the service degrades HQ
    uploads, with several degradation seeds."""
    pairs = []
    for index, name in enumerate(photos):
        img = photograph(name)
        img.thumbnail((sizes.pretrain_side, sizes.pretrain_side), Image.Resampling.LANCZOS)
        for k in range(sizes.degradations):
            lq, _ = degrade(img, scale=SCALE, seed=seed * 1000 + index * 10 + k)
            pairs.append((lq, img.crop((0, 0, lq.width * SCALE, lq.height * SCALE))))
    return pairs


# --------------------------------------------------------------------------------------------------
# The service


@contextmanager
def service(root: Path) -> Iterator[str]:
    """A fresh installation (SQLite, blobs, jobs in-process) served by uvicorn in a thread; yields its
    URL. The admin account is made as `dspo user create` makes it."""
    import uvicorn

    from annotation_server.main import create_app
    from dspo.jobs import shutdown_executor
    from dspo.migrate import upgrade
    from dspo.runtime import Runtime
    from dspo.services.users import ensure_user
    from dspo.settings import Settings

    settings = Settings(database_url=f"sqlite:///{root}/dspo.db", storage_root=root / "blobs", broker_url="")
    upgrade(settings.database_url)
    runtime = Runtime.from_settings(settings)
    ensure_user(runtime, "admin", "admin", ADMIN_PASSWORD)
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        shutdown_executor(runtime)
        runtime.close()


class Client:
    """The admin's REST calls, with the waits the benchmark needs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url + API, timeout=120)
        login = self.http.post("/auth/login", data={"username": "admin", "password": ADMIN_PASSWORD})
        self.token = ok(login).json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def get(self, path: str, **kwargs: Any) -> Any:
        return ok(self.http.get(path, **kwargs)).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return ok(self.http.post(path, **kwargs)).json()

    def put(self, path: str, **kwargs: Any) -> Any:
        return ok(self.http.put(path, **kwargs)).json()

    def wait_job(self, job_id: int) -> dict:
        while (job := self.get(f"/jobs/{job_id}"))["state"] not in ("succeeded", "failed"):
            time.sleep(0.2)
        if job["state"] == "failed":
            raise RuntimeError(f"job {job_id} ({job['kind']}) failed: {job.get('error')}")
        return job

    def wait_project_jobs(self, project_id: int) -> None:
        """Until no job of the project is queued or running (the chains add their next jobs as they go)."""
        while True:
            jobs = self.get("/jobs", params={"project_id": project_id, "limit": 1000})
            failed = [j for j in jobs if j["state"] == "failed"]
            if failed:
                raise RuntimeError(f"a job failed: {failed[0]['kind']}: {failed[0].get('error')}")
            if jobs and all(j["state"] == "succeeded" for j in jobs):
                return
            time.sleep(0.5)

    def png(self, path: str) -> np.ndarray:
        response = ok(self.http.get(path))
        return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def ok(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:500]}"
        )
    return response


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class Contender:
    """A generator an evaluation names: the project's base model (no LoRA) or a model version."""

    name: str
    model_version_id: int | None = None


@dataclasses.dataclass
class Comparison:
    a: Contender
    b: Contender
    summary: dict[str, Any]  # dspo.evaluation_stats' numbers, as GET /evaluations/{id} gives them
    quality: dict[str, dict[str, float]]  # contender name -> mean psnr, ssim against HQ
    decision: dict[str, Any]  # what closing the round decided on promotion, with its numbers


@dataclasses.dataclass
class HeldOut:
    source_id: int
    lq: np.ndarray
    hq: np.ndarray


class Loop:
    """What the stages share: the service client, the project, the base model, the settings."""

    def __init__(self, client: Client, project_id: int, base: Path, sizes: Sizes, args: argparse.Namespace):
        self.client, self.project_id, self.base, self.sizes, self.args = client, project_id, base, sizes, args
        self.oracle: Oracle = load_oracle(args.oracle)
        self.profiles = profiles(
            profile_from_args(args), sizes.annotators, spread=args.spread, seed=args.seed
        )
        self.held_out: list[HeldOut] = []
        self.rounds = 0  # evaluation rounds so far: each draws its annotators' noise afresh

    def load_held_out(self) -> None:
        """The held-out sources' LQ and HQ images, as the service stores them."""
        sources = self.client.get(
            f"/projects/{self.project_id}/sources", params={"held_out": True, "limit": 1000}
        )
        for source in sorted(sources, key=lambda s: s["id"]):
            lq = self.client.png(f"/images/sources/{source['id']}/lq")
            hq = self.original(source["id"], lq.shape[1] * SCALE, lq.shape[0] * SCALE)
            self.held_out.append(HeldOut(source["id"], lq, hq))

    def original(self, source_id: int | str, width: int, height: int) -> np.ndarray:
        """A source's HQ upload (admins may read it), cropped to the SR size: the LQ image's times the
        scale, which is smaller when the upload's sides are not multiples of the scale."""
        return self.client.png(f"/images/sources/{source_id}/hq")[:height, :width]


def bicubic_of(lq: np.ndarray) -> np.ndarray:
    img = Image.fromarray(lq)
    return np.asarray(img.resize((img.width * SCALE, img.height * SCALE), Image.Resampling.BICUBIC))


def quality(held_out: list[HeldOut], outputs: dict[int, np.ndarray]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of the outputs against the HQ images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = [peak_signal_noise_ratio(i.hq, outputs[i.source_id], data_range=255) for i in held_out]
    ssim = [
        structural_similarity(i.hq, outputs[i.source_id], channel_axis=2, data_range=255) for i in held_out
    ]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}


def evaluate_pair(loop: Loop, a: Contender, b: Contender) -> Comparison:
    """B against A in an evaluation round of the service: its job makes both outputs per held-out source
    (same seed and settings), the simulated annotators answer its blind tasks over HTTP as they answer
    any task, and the service computes the numbers; closing the round records its promotion decision."""
    client, project = loop.client, loop.project_id

    def side(c: Contender) -> dict[str, int]:
        return {} if c.model_version_id is None else {"model_version_id": c.model_version_id}

    body = {"name": f"{b.name} vs {a.name}", "a": side(a), "b": side(b), "seed": loop.args.seed}
    evaluation = client.post(
        f"/projects/{project}/evaluations", json=body | {"required_votes": len(loop.profiles)}
    )
    client.wait_job(evaluation["job_id"])
    loop.rounds += 1
    seed = loop.args.seed + 1000 * loop.rounds  # the annotators' draws differ from round to round
    Simulation(client.url, project, client.token, loop.oracle, loop.profiles, seed=seed).run()
    decision = client.post(f"/evaluations/{evaluation['id']}/close")
    summary = client.get(f"/evaluations/{evaluation['id']}")["summary"]
    outputs: dict[str, dict[int, np.ndarray]] = {a.name: {}, b.name: {}}
    for row in client.get(f"/evaluations/{evaluation['id']}/answers"):
        for who, key in ((a, "a_candidate_id"), (b, "b_candidate_id")):
            if row["source_id"] not in outputs[who.name]:
                outputs[who.name][row["source_id"]] = client.png(f"/images/candidates/{row[key]}")
    answered = [item for item in loop.held_out if item.source_id in outputs[a.name]]
    quality_of = {c.name: quality(answered, outputs[c.name]) for c in (a, b)}
    return Comparison(a, b, summary, quality_of, decision)


# --------------------------------------------------------------------------------------------------
# Stages


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        print(f"[loop] {stage} ...", flush=True)
        started = time.monotonic()
        yield
        self.seconds[stage] = time.monotonic() - started
        print(f"[loop] {stage}: {self.seconds[stage]:.1f} s", flush=True)


def stage_pretrain(out: Path, sizes: Sizes, args: argparse.Namespace) -> Path:
    from trainer.config import PretrainConfig
    from trainer.pretrain import pretrain

    cfg = PretrainConfig(
        vae_steps=sizes.vae_steps,
        unet_steps=sizes.unet_steps,
        crop=sizes.pretrain_crop,
        vae_crop=sizes.pretrain_crop // 2,
        width=sizes.width,
        prompt=PROMPT,
        seed=args.seed,
        device=args.device,
    )
    return pretrain(pretraining_pairs(args.pretrain_photos, sizes, args.seed), out, cfg)


def stage_project(client: Client, base: Path, sizes: Sizes, args: argparse.Namespace) -> int:
    """The project, its base generator (the pretrained model, no LoRA) and its uploads, through the
    REST API; returns when the service's jobs have made every task."""
    project = client.post(
        "/projects",
        json={
            "name": f"loop-seed{args.seed}",
            "n_candidates": sizes.candidates,
            "overlap": sizes.overlap,
            "scale": SCALE,
            "generator": "diffusion",
            "generator_settings": {
                "model": str(base),
                "backbone": "upscaler",
                "guidance": [float(g) for g in sizes.guidance.split(",")],
                "steps": [int(s) for s in sizes.steps.split(",")],
                "prompts": [PROMPT],
                "device": args.device,
                "vary_seed": args.vary_seed,
            },
            "segmenter": "regions",
        },
    )
    # One random stream per set: the held-out draw does not depend on the round's photographs or size.
    held_out_tiles = tiles(args.held_out_photos, sizes.tile)
    upload(client, project["id"], round_sources(args, sizes, 1), held_out=False)
    held_out = draw(held_out_tiles, sizes.held_out, np.random.default_rng([args.seed, 3]))
    upload(client, project["id"], held_out, held_out=True)
    client.wait_project_jobs(project["id"])
    return project["id"]


def round_sources(args: argparse.Namespace, sizes: Sizes, number: int) -> list[tuple[str, Image.Image]]:
    """The HQ tiles of round `number` (1 or 2), drawn from the round photographs' tiles: round 2's from
    those round 1 did not draw, so no source is voted on twice."""
    pool = tiles(args.round_photos, sizes.tile)
    round_1 = draw(pool, sizes.sources, np.random.default_rng([args.seed, 2]))
    if number == 1:
        return round_1
    drawn = {name for name, _ in round_1}
    rest = [tile for tile in pool if tile[0] not in drawn]
    if not rest:
        raise SystemExit(
            "round 1 drew every tile of --round-photos: give more photographs or fewer --sources"
        )
    return draw(rest, min(sizes.sources, len(rest)), np.random.default_rng([args.seed, 4]))


def upload(client: Client, project_id: int, sources: list[tuple[str, Image.Image]], held_out: bool) -> None:
    for name, img in sources:
        client.post(
            f"/projects/{project_id}/uploads",
            files={"file": (f"{name}.png", png_bytes(img), "image/png")},
            data={"kind": "hq", "prompt": PROMPT, "held_out": str(held_out).lower()},
        )


def stage_votes(loop: Loop, seed: int) -> list[Any]:
    """The simulated annotators answer every open task of the project."""
    token = loop.client.token
    return Simulation(loop.client.url, loop.project_id, token, loop.oracle, loop.profiles, seed=seed).run()


def stage_dataset(loop: Loop, out: Path) -> tuple[int, Path, dict]:
    """A dataset version through the REST API, downloaded and unpacked as a trainer would get it."""
    build = loop.client.post(
        f"/projects/{loop.project_id}/datasets",
        json={"seed": loop.args.seed, "exports": [], "val_fraction": 0.1},
    )
    loop.client.wait_job(build["job_id"])
    dataset = loop.client.get(f"/datasets/{build['dataset']['id']}")
    response = ok(loop.client.http.get(f"/datasets/{dataset['id']}/files/dataset.tar"))
    folder = out / f"dataset-{dataset['id']}"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        tar.extractall(folder, filter="data")
    roots = [p.parent for p in folder.rglob("manifest.json")]
    return dataset["id"], roots[0], dataset["counts"] or {}


def stage_ceiling_dataset(loop: Loop, dataset: Path, out: Path) -> Path:
    """The round's records with the source's HQ image (read over REST, as an admin may) as every
    winner; losers, masks, boxes and weights unchanged. Written with the dataset format's writer, so
    the trainer reads it as any dataset."""
    folder = out / "dataset-ceiling"
    shutil.rmtree(folder, ignore_errors=True)  # a previous run's, in the same --out
    writer = DatasetWriter(folder)
    originals: dict[str, str] = {}
    for record in read_records(dataset):
        for sha in (record.lq, record.loser, record.mask):
            writer.add_image(image_path(dataset, sha).read_bytes())
        if record.source_id not in originals:
            with Image.open(image_path(dataset, record.winner)) as winner:
                size = winner.size
            hq = loop.original(record.source_id, *size)
            originals[record.source_id] = writer.add_image(png_bytes(Image.fromarray(hq)))
        writer.add_record(
            dataclasses.replace(record, winner=originals[record.source_id], winner_candidate_id="")
        )
    manifest = read_manifest(dataset)
    return writer.finish({"dataset_id": f"{manifest['dataset_id']}-ceiling", "version": manifest["version"]})


def stage_train_settings(loop: Loop) -> dict[str, Any]:
    """The project's train_settings (PUT /projects/{id}/retraining, scheduled retraining left off): the
    base model and the trainer flags every training of the benchmark shares: the same budget and seed."""
    s = loop.sizes
    flags = {"max_steps": s.train_steps, "batch_size": s.train_batch, "resolution": s.resolution}
    flags |= {"learning_rate": s.learning_rate, "lora_rank": s.lora_rank, "beta": s.beta}
    settings = {"model": str(loop.base), "backbone": "upscaler", "args": flags | {"seed": loop.args.seed}}
    return loop.client.put(f"/projects/{loop.project_id}/retraining", json={"train_settings": settings})[
        "train_settings"
    ]


def batch_size(loop: Loop, dataset: Path, loss: str) -> int:
    """Image-level DPO and SFT read the image-level records (one per source at most): a small round may
    not fill a batch with them, and the trainer refuses a batch it cannot fill."""
    import pyarrow.parquet as pq

    instance_ids = pq.read_table(dataset / "records.parquet", columns=["instance_id"])["instance_id"]
    image_level = sum(i is None for i in instance_ids.to_pylist())
    if loss == "dspo" or not image_level:
        return loop.sizes.train_batch
    return min(loop.sizes.train_batch, image_level)


def stage_train(loop: Loop, dataset_id: int, dataset: Path, loss: str, out: Path, name: str) -> int:
    """A training job of the service on the dataset version (POST /datasets/{id}/train) with this loss;
    the LoRA it registers as model version `name` is copied to `out`. Returns the model version's id."""
    args = {"loss": loss, "batch_size": batch_size(loop, dataset, loss)}
    started = loop.client.post(f"/datasets/{dataset_id}/train", json={"args": args, "name": name})
    result = loop.client.wait_job(started["job_id"])["result"]
    kept = out / f"train-{name}"
    shutil.rmtree(kept, ignore_errors=True)  # a previous run's, in the same --out
    shutil.copytree(result["output_dir"], kept)
    return result["model_version_id"]


def stage_train_ceiling(loop: Loop, ceiling: Path, settings: dict[str, Any], out: Path) -> int:
    """DSPO on the ceiling's dataset, which the service did not build: the trainer's CLI with the
    project's train_settings, run as the service's training job runs it (its log in the run's folder),
    then the LoRA registered over REST.
    Returns the model version's id."""
    run = out / "train-ceiling-dspo"
    run.mkdir(parents=True, exist_ok=True)
    metrics = run_trainer(ceiling, run, settings | {"args": settings["args"] | {"loss": "dspo"}})
    version = loop.client.post(
        f"/projects/{loop.project_id}/model-versions",
        json={
            "name": "round1-ceiling-dspo",
            "backbone": "upscaler",
            "base_model": str(loop.base),
            "lora_path": str(run),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        },
    )
    return version["id"]


def stage_round_2(loop: Loop, round_1: Contender, out: Path, watch: Stopwatch) -> tuple[Contender, dict]:
    """Round 1's DSPO model generates round 2's candidates (PUT /projects/{id}/model-version, what a
    promotion does), on tiles round 1 did not draw; the votes on them and round 1's make the next dataset
    version, and DSPO is trained on it with the same budget and seed. Returns it and the dataset's counts."""
    client, project_id = loop.client, loop.project_id
    with watch("round 2: ingest, candidates from round 1's DSPO, instances, tasks"):
        client.put(
            f"/projects/{project_id}/model-version", json={"model_version_id": round_1.model_version_id}
        )
        upload(client, project_id, round_sources(loop.args, loop.sizes, 2), held_out=False)
        client.wait_project_jobs(project_id)
    with watch("round 2: simulated votes"):
        stage_votes(loop, seed=loop.args.seed + 500)
    with watch("round 2: dataset"):
        dataset_id, dataset, counts = stage_dataset(loop, out)
    with watch("train dspo, round 2"):
        version_id = stage_train(loop, dataset_id, dataset, "dspo", out, "round2-dspo")
    return Contender("DSPO round 2", version_id), counts


# --------------------------------------------------------------------------------------------------
# Report


def round_2_header(dspo_vs_base: Comparison, counts: dict) -> str:
    """Round 2 in the table's header: its dataset, and whether the service's promotion rule would have
    made round 1's DSPO the project's generator (the benchmark makes it so either way)."""
    low = dspo_vs_base.decision["lower_bound"]
    verdict = "would have promoted it" if low > 0.5 else "would have kept the base"
    return (
        f"; round 2 from round 1's DSPO ({counts.get('records', '?')} records in its dataset, round 1's "
        f"and round 2's; the promotion rule, at a lower bound of {low:.3f} with ties as halves, {verdict})"
    )


def fmt_interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]"


def table(comparisons: list[Comparison], seconds: dict[str, float], header: str) -> str:
    lines = [header, ""]
    lines.append(
        "| B vs A | answers | B wins | A wins | ties | win rate (ties out) | 95% CI | ties as halves "
        "| 95% CI | sign p | PSNR A / B | SSIM A / B | left share |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in comparisons:
        o = c.summary["overall"]
        qa, qb = c.quality[c.a.name], c.quality[c.b.name]
        rate = "n/a" if o["win_rate"] is None else f"{o['win_rate']:.3f}"
        halves = "n/a" if o["win_rate_ties_as_halves"] is None else f"{o['win_rate_ties_as_halves']:.3f}"
        left = c.summary["position"]["left_share"]
        lines.append(
            f"| {c.b.name} vs {c.a.name} | {o['answers']} | {o['wins_b']} | {o['wins_a']} | {o['ties']} "
            f"| {rate} | {fmt_interval(*o['win_rate_interval'])} | {halves} "
            f"| {fmt_interval(*o['ties_as_halves_interval'])} "
            f"| {o['sign_test_p']:.3g} | {qa['psnr']:.2f} / {qb['psnr']:.2f} "
            f"| {qa['ssim']:.3f} / {qb['ssim']:.3f} | {'n/a' if left is None else f'{left:.2f}'} |"
        )
    lines += ["", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {stage} | {s:.1f} |" for stage, s in seconds.items()]
    lines.append(f"| total | {sum(seconds.values()):.1f} |")
    return "\n".join(lines)


def plot(comparisons: list[Comparison], path: Path, title: str) -> bool:
    """Win rates (ties left out) with their Wilson intervals; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [f"{c.b.name} vs {c.a.name}" for c in comparisons]
    overall = [c.summary["overall"] for c in comparisons]
    rates = [o["win_rate"] if o["win_rate"] is not None else 0.5 for o in overall]
    # A round with no decisive answer has no win rate: drawn at 0.5 without an interval.
    low = [max(0.0, r - o["win_rate_interval"][0]) for r, o in zip(rates, overall, strict=True)]
    high = [max(0.0, o["win_rate_interval"][1] - r) for r, o in zip(rates, overall, strict=True)]
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * len(names) + 1.2))
    y = np.arange(len(names))[::-1]
    ax.errorbar(rates, y, xerr=[low, high], fmt="o", capsize=4, color="tab:blue")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate of B over A (ties left out), Wilson 95% interval")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--size", choices=sorted(SIZES), default="default")
    preset = SIZES[first.parse_known_args(argv)[0].size]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="default", help="the preset the flags below start from"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--oracle", default="fidelity", help="an oracle name (entry point dspo.oracles) or module:callable"
    )
    add_profile_flags(parser)  # the simulated annotators', as `dspo simulate` takes them
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train DSPO with the HQ image as every winner (the budget's ceiling) and evaluate it",
    )
    for name, (default, what) in PHOTO_SETS.items():
        parser.add_argument(
            f"--{name}-photos",
            type=photo_set,
            default=default,
            metavar="NAMES",
            help=f"the photographs to {what}: comma-separated scikit-image names, image files and folders "
            f"(default {','.join(default)})",
        )
    parser.add_argument(
        "--vary-seed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="round-1 candidates differ by seed as well as by guidance and steps (the default); "
        "--no-vary-seed: one seed per source, so they differ by their settings only",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: a second round from round 1's DSPO model, evaluated against round 1's DSPO and the base",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared, loaded machine 2 threads are 10x slower)",
    )
    parser.add_argument(
        "--base", type=Path, help="a pretrained base model folder to reuse (skips pretraining)"
    )
    parser.add_argument(
        "--out", type=Path, help="where the table, plot and runs go (default var/bench-loop/seed-N)"
    )
    for field in dataclasses.fields(Sizes):
        default = getattr(preset, field.name)
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default), default=default)
    args = parser.parse_args(argv)
    for (one, a), (other, b) in itertools.combinations(photo_sets(args).items(), 2):
        if shared := sorted(set(a) & set(b)):
            parser.error(f"photographs in both --{one}-photos and --{other}-photos: {', '.join(shared)}")
    sizes = Sizes(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)})
    return args, sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, sizes = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch starts its thread pool
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(args.threads)
    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
        library.set_verbosity_error()
    out = (args.out or Path("var/bench-loop") / f"seed-{args.seed}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()

    if args.base:
        base = args.base.resolve()
    else:
        with watch("pretrain base"):
            base = stage_pretrain(out / "base", sizes, args)

    with tempfile.TemporaryDirectory(prefix="dspo-loop-") as tmp, service(Path(tmp)) as url:
        client = Client(url)
        with watch("round 1: ingest, candidates, instances, tasks"):
            project_id = stage_project(client, base, sizes, args)
        loop = Loop(client, project_id, base, sizes, args)
        with watch("round 1: simulated votes"):
            reports = stage_votes(loop, seed=args.seed)
        with watch("round 1: dataset"):
            dataset_id, dataset, counts = stage_dataset(loop, out)
        settings = stage_train_settings(loop)
        trained = {}
        for loss in ("dspo", "dpo", "sft"):
            with watch(f"train {loss}"):
                version_id = stage_train(loop, dataset_id, dataset, loss, out, f"round1-{loss}")
                trained[loss] = Contender(loss.upper(), version_id)
        if args.ceiling:
            with watch("train dspo on HQ winners (the ceiling)"):
                ceiling = stage_ceiling_dataset(loop, dataset, out)
                trained["ceiling"] = Contender("DSPO-HQ", stage_train_ceiling(loop, ceiling, settings, out))
        loop.load_held_out()
        base_model = Contender("base")
        pairs = [(base_model, trained["dspo"]), (base_model, trained["dpo"]), (base_model, trained["sft"])]
        if args.ceiling:
            pairs.append((base_model, trained["ceiling"]))
        pairs.append((trained["dpo"], trained["dspo"]))
        comparisons = []
        for a, b in pairs:
            with watch(f"evaluate {b.name} vs {a.name}"):
                comparisons.append(evaluate_pair(loop, a, b))
        round_2_counts = None
        if args.rounds == 2:
            round_2, round_2_counts = stage_round_2(loop, trained["dspo"], out, watch)
            for a in (trained["dspo"], base_model):
                with watch(f"evaluate {round_2.name} vs {a.name}"):
                    comparisons.append(evaluate_pair(loop, a, round_2))

    bicubic = quality(loop.held_out, {i.source_id: bicubic_of(i.lq) for i in loop.held_out})
    header = (
        f"Loop benchmark, seed {args.seed}, oracle {args.oracle}, size {args.size}: "
        f"{sizes.sources} round-1 sources, {len(loop.held_out)} held-out, {sizes.annotators} annotators, "
        f"{counts.get('records', '?')} dataset records, {sizes.train_steps} training steps each"
        + (f", base model reused from {base} (not pretrained in this run)" if args.base else "")
        + ("" if args.vary_seed else ", round-1 candidates with one seed per source (--no-vary-seed)")
        + "".join(
            f", --{name}-photos {described(photos)}"
            for name, photos in photo_sets(args).items()
            if photos != PHOTO_SETS[name][0]
        )
        + (round_2_header(comparisons[0], round_2_counts) if round_2_counts is not None else "")
        + f". Bicubic upsampling of the held-out LQ images: PSNR {bicubic['psnr']:.2f}, "
        f"SSIM {bicubic['ssim']:.3f}. Evaluation: the service's evaluation rounds, answered over HTTP."
    )
    text = table(comparisons, watch.seconds, header)
    print(text)
    (out / "loop.md").write_text(text + "\n")
    plotted = plot(comparisons, out / "loop.png", f"seed {args.seed}, oracle {args.oracle}")
    result = {
        "seed": args.seed,
        "sizes": dataclasses.asdict(sizes),
        "dataset_counts": counts,
        "round_2_dataset_counts": round_2_counts,
        "annotators": [dataclasses.asdict(r) for r in reports],
        "comparisons": [
            {"a": c.a.name, "b": c.b.name, "quality": c.quality, "summary": c.summary, "decision": c.decision}
            for c in comparisons
        ],
        "vary_seed": args.vary_seed,
        "photos": photo_sets(args),
        "bicubic": bicubic,
        "seconds": watch.seconds,
        "plot": str(out / "loop.png") if plotted else None,
    }
    (out / "loop.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"[loop] table, JSON{' and plot' if plotted else ''} in {out}")
    return result


if __name__ == "__main__":
    main()
