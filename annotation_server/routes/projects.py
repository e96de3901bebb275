from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from annotation_server.deps import AdminUser, CurrentUser, ReadSession, RuntimeDep, WriteSession
from annotation_server.schemas import (
    IdPath,
    Limit,
    Offset,
    ProjectCreate,
    ProjectOut,
    ProjectStats,
    ProjectUpdate,
    SourceOut,
    UploadFields,
    UploadOut,
    errors,
    validation_message,
)
from dspo.errors import InvalidInput
from dspo.models import Project, Source
from dspo.services import projects, stats, uploads

router = APIRouter(prefix="/projects", tags=["projects"])

# The upload's body as OpenAPI shows it: the route reads it itself, after authentication (see upload).
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG, WebP, TIFF or BMP, at most DSPO_MAX_UPLOAD_BYTES",
                        },
                        **UploadFields.model_json_schema()["properties"],
                    },
                }
            }
        },
    }
}


@router.get("", response_model=list[ProjectOut], responses=errors(401))
def list_projects(_: CurrentUser, session: ReadSession) -> list[Project]:
    return projects.list_projects(session)


@router.post(
    "",
    response_model=ProjectOut,
    status_code=status.HTTP_201_CREATED,
    responses=errors(401, 403, 409, 400, 413, 422),
)
def create_project(body: ProjectCreate, _: AdminUser, session: WriteSession, runtime: RuntimeDep) -> Project:
    return projects.create_project(session, runtime.settings, body.model_dump())


@router.get("/{project_id}", response_model=ProjectOut, responses=errors(401, 404, 422))
def read_project(project_id: IdPath, _: CurrentUser, session: ReadSession) -> Project:
    return projects.get_project(session, project_id)


@router.patch("/{project_id}", response_model=ProjectOut, responses=errors(401, 403, 404, 400, 413, 422))
def update_project(project_id: IdPath, body: ProjectUpdate, _: AdminUser, session: WriteSession) -> Project:
    """Change the instructions, or the overlap k of tasks created from now on."""
    return projects.update_project(session, project_id, body.model_dump(exclude_none=True))


@router.post(
    "/{project_id}/uploads",
    response_model=UploadOut,
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, 401, 403, 404, 400, 413, 422),
    openapi_extra=UPLOAD_BODY,
)
async def upload(project_id: IdPath, _: AdminUser, request: Request, runtime: RuntimeDep) -> UploadOut:
    """Upload one image (multipart: `file`, and `kind`, `prompt`, `held_out`). It is validated now;
    candidates, instances and tasks are made by jobs. The body is read only once the admin is authenticated (a
    route parameter for the file would make FastAPI read it first)."""
    async with request.form(max_files=1, max_fields=len(UploadFields.model_fields)) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidInput("the upload needs a file in the form field `file`")
        try:
            fields = UploadFields.model_validate({k: v for k, v in form.items() if k != "file"})
        except ValidationError as exc:
            raise InvalidInput(validation_message(exc.errors())) from None
        data = await file.read()
    result = await run_in_threadpool(
        uploads.upload_image,
        runtime,
        project_id,
        data,
        filename=file.filename or "",
        kind=fields.kind,
        prompt=fields.prompt,
        held_out=fields.held_out,
    )
    return UploadOut.model_validate(result)


@router.get("/{project_id}/sources", response_model=list[SourceOut], responses=errors(401, 403, 404, 422))
def list_sources(
    project_id: IdPath,
    _: AdminUser,
    session: ReadSession,
    offset: Offset = 0,
    limit: Limit = 100,
    held_out: bool | None = None,
) -> list[Source]:
    """The project's sources by id; held_out=true lists only the held-out ones (kept for evaluation),
    held_out=false only those that annotation and datasets use."""
    return projects.list_sources(session, project_id, offset=offset, limit=limit, held_out=held_out)


@router.get("/{project_id}/stats", response_model=ProjectStats, responses=errors(401, 403, 404, 422))
def project_stats(project_id: IdPath, _: AdminUser, session: ReadSession) -> ProjectStats:
    return stats.project_stats(session, project_id)
