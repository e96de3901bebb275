"""Model versions (trained LoRAs with the dataset they came from), the model a project generates its
next candidates with, and the log of a training job. Admins only: model
versions name paths on the server."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo import jobs
from dspo.dataset_format import sha256_file
from dspo.db import commit_unique
from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.models import Dataset, Job, ModelVersion
from dspo.retrain import GPU_QUEUE, TRAIN_JOB, dispatch_to_gpu
from dspo.runtime import Runtime
from dspo.services.projects import get_project
from dspo.training import LOG_FILE, LORA_FILE, settings_problem, training_dir


def list_versions(session: Session, project_id: int) -> list[ModelVersion]:
    get_project(session, project_id)
    stmt = select(ModelVersion).where(ModelVersion.project_id == project_id).order_by(ModelVersion.id)
    return list(session.scalars(stmt))


def _exists(path: Path, test: Callable[[Path], bool]) -> bool:
    try:
        return test(path)
    except OSError:  # a name too long for the file system, a folder that cannot be read
        return False


def register(session: Session, project_id: int, fields: dict[str, Any]) -> ModelVersion:
    """Register a LoRA trained elsewhere: `lora_path` must hold its weights file, `base_model` be a
    folder, and the dataset (if any) belong to the project."""
    get_project(session, project_id)
    lora = Path(fields["lora_path"]) / LORA_FILE
    if not _exists(lora, Path.is_file):
        raise InvalidInput(f"{lora} does not exist")
    if not _exists(Path(fields["base_model"]), Path.is_dir):
        raise InvalidInput(f"{fields['base_model']} is not a folder")
    dataset_id = fields.get("dataset_id")
    if dataset_id is not None:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None or dataset.project_id != project_id:
            raise InvalidInput(f"dataset {dataset_id} is not in this project")
    version = ModelVersion(project_id=project_id, lora_sha256=sha256_file(lora), **fields)
    session.add(version)
    commit_unique(session, f"a model version named {fields['name']!r} exists")
    return version


def start_training(
    session: Session, runtime: Runtime, dataset_id: int, args: dict[str, Any], name: str | None
) -> Job:
    """Queue a training job on a published dataset now, with the project's train_settings and `args`
    overriding its trainer flags for this run; the job registers the LoRA as model version `name`."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    if dataset.state != "published":
        raise Conflict(f"dataset {dataset_id} is {dataset.state}: only a published dataset can be trained on")
    project = get_project(session, dataset.project_id)
    if problem := settings_problem(project.train_settings):
        raise InvalidInput(f"{problem} (PUT /projects/{project.id}/retraining sets train_settings)")
    settings = project.train_settings | {"args": project.train_settings.get("args", {}) | args}
    if name is not None:
        _check_name_free(session, project.id, name)
    payload = {"dataset_id": dataset.id, "settings": settings, "name": name}
    [job] = jobs.create(session, [jobs.JobSpec(TRAIN_JOB, payload, project.id, GPU_QUEUE)])
    session.commit()
    dispatch_to_gpu(runtime, job.id)
    return job


def _check_name_free(session: Session, project_id: int, name: str) -> None:
    """No model version of the project has this name, and no queued or running training will give it."""
    if session.scalar(
        select(ModelVersion.id).where(ModelVersion.project_id == project_id, ModelVersion.name == name)
    ):
        raise Conflict(f"a model version named {name!r} exists in project {project_id}")
    active = session.scalars(
        select(Job).where(
            Job.project_id == project_id, Job.kind == TRAIN_JOB, Job.state.in_(("queued", "running"))
        )
    )
    for job in active:
        if job.payload.get("name") == name:
            raise Conflict(f"training job {job.id} is making a model version named {name!r}")


def use(session: Session, project_id: int, model_version_id: int | None) -> ModelVersion | None:
    """Make the project generate its next candidates with this model version (the `diffusion`
    generator, base model plus LoRA), or with no LoRA (None)."""
    project = get_project(session, project_id)
    settings = dict(project.generator_settings) if project.generator == "diffusion" else {}
    version = None
    if model_version_id is None:
        settings.pop("lora", None)
    else:
        version = session.get(ModelVersion, model_version_id)
        if version is None or version.project_id != project_id:
            raise NotFound(f"model version {model_version_id} is not in this project")
        settings |= {"model": version.base_model, "backbone": version.backbone, "lora": version.lora_path}
        project.generator = "diffusion"
    project.generator_settings = settings
    project.model_version_id = model_version_id
    session.commit()
    return version


def training_log(session: Session, runtime: Runtime, job_id: int) -> str:
    """The trainer's output so far (its metrics are in the job's result once it has succeeded)."""
    job = session.get(Job, job_id)
    if job is None or job.kind != TRAIN_JOB or job.project_id is None:
        raise NotFound(f"job {job_id} is not a training job")
    path = training_dir(runtime, job.project_id, job.id) / LOG_FILE
    return path.read_text() if path.is_file() else ""
