from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from annotation_server.deps import AdminUser, CurrentUser, ReadSession, RuntimeDep, WriteSession
from annotation_server.schemas import (
    IdPath,
    Limit,
    MemberOut,
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
from dspo.services import members, projects, stats, uploads

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
def list_projects(user: CurrentUser, session: ReadSession) -> list[Project]:
    """Every project for an admin; the projects you are a member of otherwise."""
    return members.visible_projects(session, user)


@router.post(
    "",
    response_model=ProjectOut,
    status_code=status.HTTP_201_CREATED,
    responses=errors(401, 403, 409, 400, 413, 422),
)
def create_project(body: ProjectCreate, _: AdminUser, session: WriteSession, runtime: RuntimeDep) -> Project:
    return projects.create_project(session, runtime.settings, body.model_dump())


@router.get("/{project_id}", response_model=ProjectOut, responses=errors(401, 404, 422))
def read_project(project_id: IdPath, user: CurrentUser, session: ReadSession) -> Project:
    return members.require_project(session, user, project_id)


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


@router.get("/{project_id}/members", response_model=list[MemberOut], responses=errors(401, 403, 404, 422))
def list_members(project_id: IdPath, _: AdminUser, session: ReadSession) -> list[members.Member]:
    """The reviewers and annotators who work on the project (admins see every project anyway)."""
    return members.list_members(session, project_id)


@router.put("/{project_id}/members/{user_id}", response_model=MemberOut, responses=errors(401, 403, 404, 422))
def add_member(project_id: IdPath, user_id: IdPath, _: AdminUser, session: WriteSession) -> members.Member:
    """Make a user a member of the project: they see it, lease its tasks and fetch its images. Adding a
    member again changes nothing."""
    return members.add_member(session, project_id, user_id)


@router.delete(
    "/{project_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 403, 404, 422),
)
def remove_member(project_id: IdPath, user_id: IdPath, _: AdminUser, session: WriteSession) -> None:
    """End a membership: the project disappears for the user, and the tasks they hold leases on in it
    go back to the pool at once. Their answers stay."""
    members.remove_member(session, project_id, user_id)
