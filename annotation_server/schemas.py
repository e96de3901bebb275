"""Request and response models of the REST API."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["admin", "annotator"]
Outcome = Literal["pick", "tie", "all_bad", "skip"]


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=256)
    role: Role = "annotator"


class UserUpdate(BaseModel):
    password: str | None = Field(default=None, min_length=8, max_length=256)
    role: Role | None = None
    is_active: bool | None = None


class UserOut(ORMModel):
    id: int
    username: str
    role: Role
    is_active: bool
    created_at: datetime


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    instructions: str = ""
    n_candidates: int | None = Field(default=None, ge=2, le=16, description="N; default from settings")
    overlap: int | None = Field(default=None, ge=1, le=20, description="k; default from settings")
    scale: Literal[2, 4] = 4
    generator: str = "classical"
    generator_settings: dict[str, Any] = Field(default_factory=dict)
    segmenter: str = "regions"
    segmenter_settings: dict[str, Any] = Field(default_factory=dict)
    min_area_fraction: float = Field(default=0.005, ge=0, lt=1)
    contested_threshold: float | None = Field(default=None, ge=0)
    image_level_tasks: bool = True
    require_content: bool = Field(default=False, description="every answer must say what the region shows")
    require_defect: bool = Field(default=False, description="every pick must say what is wrong in the worst")


class ProjectUpdate(BaseModel):
    instructions: str | None = None
    overlap: int | None = Field(default=None, ge=1, le=20)
    require_content: bool | None = None
    require_defect: bool | None = None


class ProjectOut(ORMModel):
    id: int
    name: str
    instructions: str
    n_candidates: int
    overlap: int
    scale: int
    generator: str
    generator_settings: dict[str, Any]
    segmenter: str
    segmenter_settings: dict[str, Any]
    min_area_fraction: float
    contested_threshold: float | None
    image_level_tasks: bool
    require_content: bool
    require_defect: bool
    created_at: datetime


class SourceOut(ORMModel):
    id: int
    project_id: int
    filename: str
    kind: Literal["lq", "hq"]
    upload_sha256: str
    width: int | None
    height: int | None
    degradation: dict[str, Any] | None
    prompt: str
    state: str
    created_at: datetime


class UploadOut(BaseModel):
    source: SourceOut
    duplicate: bool = Field(description="true when the same file was uploaded before; nothing new was made")
    job_id: int | None = None


class JobOut(ORMModel):
    id: int
    kind: str
    state: str
    progress: float
    message: str
    error: str | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    project_id: int | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class CandidateView(BaseModel):
    id: int
    label: str = Field(description="the letter shown to the annotator, in their shuffled order")
    image_url: str


class TaskOut(BaseModel):
    id: int
    project_id: int
    source_id: int
    instance_id: int | None
    kind: Literal["instance", "image"]
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1 in SR pixels")
    image_size: tuple[int, int] = Field(description="width, height of the candidates")
    lq_url: str
    mask_url: str | None
    candidates: list[CandidateView]
    lease_expires_at: datetime
    instructions: str


class VoteIn(BaseModel):
    outcome: Outcome = "pick"
    best_candidate_id: int | None = None
    worst_candidate_id: int | None = None
    content_text: str = Field(default="", max_length=500)
    defect_text: str = Field(default="", max_length=500)
    lead_time_ms: int | None = Field(default=None, ge=0)
    client_submission_id: str = Field(
        min_length=1, max_length=64, description="unique per answer; a retry with the same id is safe"
    )
    replaces_submission_id: str | None = Field(
        default=None,
        max_length=64,
        description="undo: this answer replaces the one sent with that client_submission_id (within 10 "
        "minutes); the replaced answer is kept in the history",
    )


class SkipIn(BaseModel):
    client_submission_id: str = Field(min_length=1, max_length=64)


class VoteOut(ORMModel):
    id: int
    task_id: int
    outcome: Outcome
    best_candidate_id: int | None
    worst_candidate_id: int | None
    content_text: str
    defect_text: str
    shown_order: list[int]
    lead_time_ms: int | None
    client_submission_id: str
    created_at: datetime


class ProgressOut(BaseModel):
    done_today: int = Field(description="your answers and skips since `since`")
    done_total: int = Field(description="your answers and skips in this project")
    left_for_you: int = Field(description="open tasks of the project that you have not answered or skipped")
    votes_left: int = Field(description="answers the project still needs from everyone")
    ms_per_task: float | None = Field(description="your mean time per task since `since`")


class AnnotatorCount(BaseModel):
    user_id: int
    username: str
    votes: int
    skips: int


class ProjectStats(BaseModel):
    project_id: int
    sources_by_state: dict[str, int]
    tasks_by_state: dict[str, int]
    tasks_total: int
    votes: int
    skips: int
    votes_by_outcome: dict[str, int]
    live_leases: int
    annotators: list[AnnotatorCount]
    jobs_by_state: dict[str, int]
