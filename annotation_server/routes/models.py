"""Model versions: trained LoRAs with the dataset they came from; a project switches its candidate
generator to one for the next round. Also the log of a training job, and the retraining settings."""

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from annotation_server.deps import AdminUser, CurrentUser, RuntimeDep, SessionDep
from annotation_server.routes.projects import get_project
from dspo.dataset_format import sha256_file
from dspo.models import Dataset, Job, ModelVersion, Project
from dspo.retrain import TRAIN_JOB
from dspo.training import LOG_FILE, LORA_FILE, training_dir

router = APIRouter(tags=["models"])


class ModelVersionIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    dataset_id: int | None = None
    backbone: str = Field(default="upscaler", pattern="^(upscaler|onestep)$")
    base_model: str = Field(description="local diffusers folder of the base model")
    lora_path: str = Field(description=f"folder holding {LORA_FILE}")
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    name: str
    dataset_id: int | None
    backbone: str
    base_model: str
    lora_path: str
    lora_sha256: str
    metrics: dict[str, Any]
    job_id: int | None
    created_at: datetime


class UseModel(BaseModel):
    model_version_id: int | None = Field(description="null: back to the base model (no LoRA)")


class RetrainSettings(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    retrain_min_votes: int | None = Field(default=None, ge=1, description="K; null turns retraining off")
    retrain_interval_minutes: int = Field(default=60, ge=1, description="at most one build per interval")
    train_settings: dict[str, Any] = Field(
        default_factory=dict,
        description='{"model": folder, "backbone": "upscaler"|"onestep", "args": {flag: value}, '
        '"dataset": {build settings}}',
    )


@router.get("/projects/{project_id}/model-versions", response_model=list[ModelVersionOut])
def list_model_versions(project_id: int, _: CurrentUser, session: SessionDep) -> list[ModelVersion]:
    get_project(session, project_id)
    stmt = select(ModelVersion).where(ModelVersion.project_id == project_id).order_by(ModelVersion.id)
    return list(session.scalars(stmt))


@router.post(
    "/projects/{project_id}/model-versions",
    response_model=ModelVersionOut,
    status_code=status.HTTP_201_CREATED,
)
def register_model_version(
    project_id: int, body: ModelVersionIn, _: AdminUser, session: SessionDep
) -> ModelVersion:
    """Register a LoRA trained elsewhere (scheduled retraining registers its own)."""
    get_project(session, project_id)
    lora = Path(body.lora_path) / LORA_FILE
    if not lora.is_file():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{lora} does not exist")
    if not Path(body.base_model).is_dir():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.base_model} is not a folder")
    if body.dataset_id is not None:
        dataset = session.get(Dataset, body.dataset_id)
        if dataset is None or dataset.project_id != project_id:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"dataset {body.dataset_id} is not in this project"
            )
    version = ModelVersion(project_id=project_id, lora_sha256=sha256_file(lora), **body.model_dump())
    session.add(version)
    try:
        session.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a model version named {body.name!r} exists") from None
    return version


@router.put("/projects/{project_id}/model-version", response_model=ModelVersionOut | None)
def use_model_version(
    project_id: int, body: UseModel, _: AdminUser, session: SessionDep
) -> ModelVersion | None:
    """Make the project generate its next candidates with this model version (the `diffusion`
    generator, base model plus LoRA), or with no LoRA (null)."""
    project = get_project(session, project_id)
    settings = dict(project.generator_settings) if project.generator == "diffusion" else {}
    version = None
    if body.model_version_id is None:
        settings.pop("lora", None)
    else:
        version = session.get(ModelVersion, body.model_version_id)
        if version is None or version.project_id != project_id:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"model version {body.model_version_id} is not in this project"
            )
        settings |= {"model": version.base_model, "backbone": version.backbone, "lora": version.lora_path}
        project.generator = "diffusion"
    project.generator_settings = settings
    project.model_version_id = body.model_version_id
    session.commit()
    return version


@router.put("/projects/{project_id}/retraining", response_model=RetrainSettings)
def set_retraining(project_id: int, body: RetrainSettings, _: AdminUser, session: SessionDep) -> Project:
    """K new accepted votes since the last dataset trigger a build, then training on the `gpu` queue."""
    project = get_project(session, project_id)
    for name, value in body.model_dump().items():
        setattr(project, name, value)
    session.commit()
    return project


@router.get("/training-jobs/{job_id}/log", response_class=PlainTextResponse)
def training_log(job_id: int, _: AdminUser, session: SessionDep, runtime: RuntimeDep) -> str:
    """The trainer's output so far (its metrics are in the job's result once it has succeeded)."""
    job = session.get(Job, job_id)
    if job is None or job.kind != TRAIN_JOB or job.project_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} is not a training job")
    path = training_dir(runtime, job.project_id, job.id) / LOG_FILE
    return path.read_text() if path.is_file() else ""
