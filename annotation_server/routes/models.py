"""Model versions: trained LoRAs with the dataset they came from; a project switches its candidate
generator to one for the next round. Also the log of a training job, and the retraining settings.
Admins only: model versions name paths on the server."""

from fastapi import APIRouter, status
from fastapi.responses import PlainTextResponse

from annotation_server.deps import AdminUser, ReadSession, RuntimeDep, WriteSession
from annotation_server.schemas import (
    IdPath,
    ModelVersionIn,
    ModelVersionOut,
    RetrainSettings,
    TrainOut,
    TrainRequest,
    UseModel,
    errors,
)
from dspo.models import ModelVersion, Project
from dspo.services import model_versions, projects

router = APIRouter(tags=["models"], responses=errors(401, 403, 404, 422))


@router.get("/projects/{project_id}/model-versions", response_model=list[ModelVersionOut])
def list_model_versions(project_id: IdPath, _: AdminUser, session: ReadSession) -> list[ModelVersion]:
    return model_versions.list_versions(session, project_id)


@router.post(
    "/projects/{project_id}/model-versions",
    response_model=ModelVersionOut,
    status_code=status.HTTP_201_CREATED,
    responses=errors(409, 400, 413),
)
def register_model_version(
    project_id: IdPath, body: ModelVersionIn, _: AdminUser, session: WriteSession
) -> ModelVersion:
    """Register a LoRA trained elsewhere (scheduled retraining registers its own)."""
    return model_versions.register(session, project_id, body.model_dump())


@router.post(
    "/datasets/{dataset_id}/train",
    response_model=TrainOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(409, 400, 413),
)
def train_dataset(
    dataset_id: IdPath, body: TrainRequest, _: AdminUser, session: WriteSession, runtime: RuntimeDep
) -> TrainOut:
    """Train a model version on this published dataset now: a job on the `gpu` queue (follow it at
    /jobs/{job_id}; its result names the model version, its log is at /training-jobs/{job_id}/log).
    The project's train_settings say what to train; `args` override its trainer flags for this run."""
    job = model_versions.start_training(session, runtime, dataset_id, body.args, body.name)
    return TrainOut(job_id=job.id, dataset_id=dataset_id)


@router.put(
    "/projects/{project_id}/model-version", response_model=ModelVersionOut | None, responses=errors(400, 413)
)
def use_model_version(
    project_id: IdPath, body: UseModel, _: AdminUser, session: WriteSession
) -> ModelVersion | None:
    """Make the project generate its next candidates with this model version (the `diffusion`
    generator, base model plus LoRA), or with no LoRA (null)."""
    return model_versions.use(session, project_id, body.model_version_id)


@router.put("/projects/{project_id}/retraining", response_model=RetrainSettings, responses=errors(400, 413))
def set_retraining(project_id: IdPath, body: RetrainSettings, _: AdminUser, session: WriteSession) -> Project:
    """K new accepted votes since the last dataset trigger a build, then training on the `gpu` queue."""
    return projects.update_project(session, project_id, body.model_dump())


@router.get(
    "/training-jobs/{job_id}/log",
    response_model=None,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "the log"}},
)
def training_log(
    job_id: IdPath, _: AdminUser, session: ReadSession, runtime: RuntimeDep
) -> PlainTextResponse:
    """The trainer's output so far (its metrics are in the job's result once it has succeeded)."""
    return PlainTextResponse(model_versions.training_log(session, runtime, job_id))
