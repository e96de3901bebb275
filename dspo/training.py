"""The training step of scheduled retraining: run the trainer's CLI on a dataset, keep its log, and
register the LoRA it writes as a model version of the project.

The trainer runs as a subprocess (`python -m dspo.cli train ...`): its log goes to a file that the API
serves while it runs, and a crash of the trainer cannot take the worker down with it. The project's
`train_settings` say what to train: {"model": local diffusers folder, "backbone": "upscaler" |
"onestep", "args": {trainer flag: value}, "dataset": {dataset build settings}}. The loss is DSPO unless
the args say otherwise, and DSPO trains on the dataset's instance records only (the image-level records are
the image-level DPO baseline's); the job's result repeats which records the trainer read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dspo.dataset_format import sha256_file
from dspo.datasets import NATIVE, dataset_dir
from dspo.db import session_scope
from dspo.models import Dataset, ModelVersion, Project
from dspo.runtime import Runtime

LORA_FILE = "pytorch_lora_weights.safetensors"
LOG_FILE = "train.log"


def training_dir(runtime: Runtime, project_id: int, job_id: int) -> Path:
    return Path(runtime.settings.storage_root) / "models" / str(project_id) / f"job-{job_id}"


def settings_problem(settings: dict[str, Any]) -> str | None:
    """What stops these train_settings from training here, or None."""
    if "model" not in settings:
        return 'the project\'s train_settings need "model": a local diffusers folder'
    if not Path(settings["model"]).is_dir():
        return f"the base model folder {settings['model']} does not exist on this machine"
    if not isinstance(settings.get("args", {}), dict):
        return 'train_settings "args" must be an object: {trainer flag: value}'
    return None


def trainer_command(dataset_root: Path, out: Path, settings: dict[str, Any]) -> list[str]:
    if problem := settings_problem(settings):
        raise ValueError(problem)
    command = [sys.executable, "-m", "dspo.cli", "train", "--dataset", str(dataset_root)]
    command += ["--model", str(settings["model"]), "--output-dir", str(out)]
    command += ["--backbone", settings.get("backbone", "upscaler"), "--no-progress"]
    for name, value in sorted(settings.get("args", {}).items()):
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else f"--no-{name.replace('_', '-')}")
        else:
            command += [flag, *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return command


def run_trainer(
    dataset_root: Path,
    out: Path,
    settings: dict[str, Any],
    progress: Callable[[float, str], None] = lambda fraction, message: None,
) -> dict[str, Any]:
    """Run the trainer's CLI as a subprocess with these train_settings, its log in `out`/train.log;
    returns its metrics. A run again starts its log and outputs afresh (the trainer overwrites its files)."""
    command = trainer_command(dataset_root, out, settings)
    progress(0.05, "training: " + " ".join(command[3:]))
    with open(out / LOG_FILE, "w") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        tail = (out / LOG_FILE).read_text()[-2000:]
        raise RuntimeError(f"dspo train exited with status {returncode}; the end of its log:\n{tail}")
    return json.loads((out / "metrics.json").read_text())


def train(
    runtime: Runtime,
    dataset_id: int,
    job_id: int,
    progress: Callable[[float, str], None],
    settings: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Train on the dataset with `settings` (None: the project's train_settings as they are now) and
    register the LoRA as model version `name` (None: v{dataset version}-job{job id})."""
    with runtime.sessions() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None or dataset.state != "published":
            raise RuntimeError(f"dataset {dataset_id} is not published: nothing to train on")
        project = session.get(Project, dataset.project_id)
        assert project is not None
    settings = project.train_settings if settings is None else settings
    out = training_dir(runtime, project.id, job_id)
    out.mkdir(parents=True, exist_ok=True)
    metrics = run_trainer(dataset_dir(runtime, dataset) / NATIVE, out, settings, progress)
    records = json.loads((out / "training_config.json").read_text())["records"]
    lora = out / LORA_FILE
    if not lora.is_file():
        raise RuntimeError(f"dspo train finished without writing {lora}")
    name = name or f"v{dataset.version}-job{job_id}"
    with session_scope(runtime.sessions) as session:
        version = session.scalars(
            select(ModelVersion).where(ModelVersion.project_id == project.id, ModelVersion.name == name)
        ).first()
        if version is None:
            version = ModelVersion(
                project_id=project.id,
                name=name,
                dataset_id=dataset.id,
                backbone=settings.get("backbone", "upscaler"),
                base_model=str(settings["model"]),
                lora_path=str(out),
                lora_sha256=sha256_file(lora),
                metrics=metrics,
                job_id=job_id,
            )
            session.add(version)
            session.flush()
        version_id = version.id
    return {"model_version_id": version_id, "output_dir": str(out), "metrics": metrics, "records": records}
