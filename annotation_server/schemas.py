"""Request and response models of the REST API, the bounded types they are made of, and the error
answers every route documents.

Every input has the range of the column it ends in: ids 1 .. 2^31-1 for Integer columns and
1 .. 2^63-1 for the BigInteger ones (tasks, votes), counts within Integer, strings no longer than
their columns and without NUL characters (PostgreSQL cannot store them), floats finite. Anything
else is a 422 that says which field and why, never a server error."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dspo.exports import EXPORTS
from dspo.services import reviews, stats, users
from dspo.training import LORA_FILE

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
JSON_MAX_DEPTH = 32

Role = Literal["admin", "reviewer", "annotator"]
Outcome = Literal["pick", "tie", "all_bad", "skip"]
Aggregation = Literal["plurality", "dawid_skene"]  # dspo.aggregate.METHODS


# --- Bounded types ------------------------------------------------------------------------------------


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


def _plain_json(value: Any) -> Any:
    """JSON whose strings (keys included) have no NUL characters, nested at most JSON_MAX_DEPTH deep."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > JSON_MAX_DEPTH:
            raise ValueError(f"must not be nested more than {JSON_MAX_DEPTH} levels deep")
        if isinstance(item, str):
            _no_nul(item)
        elif isinstance(item, dict):
            pending += [(key, depth + 1) for key in item] + [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            pending += [(v, depth + 1) for v in item]
    return value


def _utc(value: datetime) -> datetime:
    """An aware UTC datetime (a naive one is taken as UTC); one that UTC cannot hold is refused."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


Text = Annotated[str, AfterValidator(_no_nul)]
JSONObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]
Id = Annotated[int, Field(ge=1, le=INT32_MAX)]
BigId = Annotated[int, Field(ge=1, le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
UTCDatetime = Annotated[datetime, AfterValidator(_utc)]
Username = Annotated[
    str, Field(min_length=1, max_length=users.USERNAME_MAX_LENGTH, pattern=users.USERNAME_PATTERN)
]
Password = Annotated[Text, Field(min_length=users.PASSWORD_MIN_LENGTH, max_length=users.PASSWORD_MAX_LENGTH)]
SubmissionId = Annotated[Text, Field(min_length=1, max_length=64)]

# Path and query parameters
IdPath = Annotated[int, Path(ge=1, le=INT32_MAX)]
BigIdPath = Annotated[int, Path(ge=1, le=INT64_MAX)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]
Limit = Annotated[int, Query(ge=1, le=1000)]
ProjectFilter = Annotated[int | None, Query(ge=1, le=INT32_MAX)]


# --- Errors -------------------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    detail: str = Field(description="what went wrong and what to do")


class ValidationErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="why the input is invalid: a message, or one entry per invalid field"
    )


ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body cannot be parsed (not well-formed JSON or form data)."},
    401: {"model": ErrorOut, "description": "Not logged in, or the token expired or was revoked."},
    403: {"model": ErrorOut, "description": "Needs the admin role, or a cookie session's CSRF token."},
    404: {
        "model": ErrorOut,
        "description": "What the path names does not exist, or is in a project you are not a member of.",
    },
    409: {"model": ErrorOut, "description": "Conflicts with the current state; `detail` says how."},
    413: {"model": ErrorOut, "description": "The request body is larger than this route takes."},
    422: {"model": ValidationErrorOut, "description": "Invalid input; `detail` says which and why."},
    429: {
        "model": ErrorOut,
        "description": "Too many failed logins for this user name or address.",
        "headers": {
            "Retry-After": {"description": "seconds until a login may succeed", "schema": {"type": "integer"}}
        },
    },
}


def validation_message(problems: Sequence[Any]) -> str:
    """Pydantic's errors (`exc.errors()`) as one line: `field: problem; field: problem`."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in problems)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route."""
    return {code: ERRORS[code] for code in codes}


# --- Accounts -----------------------------------------------------------------------------------------


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LoginForm(BaseModel):
    username: Annotated[Text, Field(max_length=256)]
    password: Annotated[Text, Field(max_length=users.PASSWORD_MAX_LENGTH)]


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


class UserCreate(BaseModel):
    username: Username
    password: Password
    role: Role = "annotator"


class UserUpdate(BaseModel):
    password: Password | None = Field(default=None, description="a new password ends all the user's sessions")
    role: Role | None = None
    is_active: bool | None = Field(default=None, description="false ends all the user's sessions")


class UserOut(ORMModel):
    id: int
    username: str
    role: Role
    is_active: bool
    created_at: datetime


class MemberOut(BaseModel):
    user_id: int
    username: str
    role: Role
    is_active: bool
    added_at: datetime


# --- Projects and uploads -----------------------------------------------------------------------------


HELD_OUT_FRACTION = (
    "share of uploads, drawn by a seeded hash of their bytes, held out for evaluation when the upload "
    "does not say (applies to uploads from now on)"
)


AUTO_PROMOTE = (
    "when an evaluation round closes, make B the project's generator if the Wilson 95% lower bound of "
    "its win rate (ties as halves) is above 0.5"
)
MIN_LEAD_TIME = "answers faster than this many milliseconds are lead-time outliers on the quality page"
AGGREGATION = (
    "how datasets choose winner and loser: plurality (the most frequent choice) or dawid_skene (choices "
    "weighed by each annotator's accuracy, estimated by EM); a build can say otherwise"
)
RETRAIN_EVALUATE = (
    "scheduled retraining evaluates each model it trains against the project's generator on the "
    "held-out sources"
)


GOLD_RATE = "probability that `next` serves a gold task the annotator has not answered (0: none)"
GOLD_THRESHOLD = "gold accuracy under which an annotator is paused (null: never)"
GOLD_MIN_ANSWERS = "gold answers (since the last resume) an annotator needs before the threshold applies"
SANITY_TASKS = "how many automatic sanity gold tasks the project wants (made after its tasks)"


class ProjectCreate(BaseModel):
    name: Annotated[Text, Field(min_length=1, max_length=200)]
    instructions: Annotated[Text, Field(max_length=20_000)] = ""
    n_candidates: int | None = Field(default=None, ge=2, le=16, description="N; default from settings")
    overlap: int | None = Field(default=None, ge=1, le=20, description="k; default from settings")
    scale: Literal[2, 4] = 4
    generator: Annotated[Text, Field(min_length=1, max_length=32)] = "classical"
    generator_settings: JSONObject = Field(default_factory=dict)
    segmenter: Annotated[Text, Field(min_length=1, max_length=32)] = "regions"
    segmenter_settings: JSONObject = Field(default_factory=dict)
    min_area_fraction: float = Field(default=0.005, ge=0, lt=1, allow_inf_nan=False)
    contested_threshold: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    image_level_tasks: bool = True
    require_content: bool = Field(default=False, description="every answer must say what the region shows")
    require_defect: bool = Field(default=False, description="every pick must say what is wrong in the worst")
    held_out_fraction: Fraction = Field(default=0.0, description=HELD_OUT_FRACTION)
    held_out_seed: int = Field(default=0, ge=0, le=INT32_MAX, description="seed of the held-out draw")
    auto_promote: bool = Field(default=False, description=AUTO_PROMOTE)
    retrain_evaluate: bool = Field(default=False, description=RETRAIN_EVALUATE)
    min_lead_time_ms: int = Field(default=2000, ge=0, le=600_000, description=MIN_LEAD_TIME)
    aggregation: Aggregation = Field(default="plurality", description=AGGREGATION)
    gold_rate: Fraction = Field(default=0.0, description=GOLD_RATE)
    gold_threshold: Fraction | None = Field(default=None, description=GOLD_THRESHOLD)
    gold_min_answers: int = Field(default=5, ge=1, le=10_000, description=GOLD_MIN_ANSWERS)
    sanity_tasks: int = Field(default=0, ge=0, le=10_000, description=SANITY_TASKS)


class ProjectUpdate(BaseModel):
    instructions: Annotated[Text, Field(max_length=20_000)] | None = None
    overlap: int | None = Field(default=None, ge=1, le=20)
    require_content: bool | None = None
    require_defect: bool | None = None
    held_out_fraction: Fraction | None = Field(default=None, description=HELD_OUT_FRACTION)
    held_out_seed: int | None = Field(default=None, ge=0, le=INT32_MAX)
    auto_promote: bool | None = Field(default=None, description=AUTO_PROMOTE)
    retrain_evaluate: bool | None = Field(default=None, description=RETRAIN_EVALUATE)
    min_lead_time_ms: int | None = Field(default=None, ge=0, le=600_000, description=MIN_LEAD_TIME)
    aggregation: Aggregation | None = Field(default=None, description=AGGREGATION)
    gold_rate: Fraction | None = Field(default=None, description=GOLD_RATE)
    gold_threshold: Fraction | None = Field(default=None, description=GOLD_THRESHOLD + "; 0 turns it off")
    gold_min_answers: int | None = Field(default=None, ge=1, le=10_000, description=GOLD_MIN_ANSWERS)
    sanity_tasks: int | None = Field(default=None, ge=0, le=10_000, description=SANITY_TASKS)


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
    held_out_fraction: float
    held_out_seed: int
    auto_promote: bool
    retrain_evaluate: bool
    min_lead_time_ms: int
    aggregation: str
    gold_rate: float
    gold_threshold: float | None
    gold_min_answers: int
    sanity_tasks: int
    created_at: datetime


class UploadFields(BaseModel):
    """The form fields of an upload besides the file."""

    kind: Literal["lq", "hq"] = Field(default="lq", description="lq: use as is; hq: synthesise the LQ image")
    prompt: Annotated[Text, Field(max_length=1000)] = ""
    held_out: bool | None = Field(
        default=None,
        description="true: for evaluation only (no tasks, never in a dataset); default: the project's "
        "held_out_fraction decides",
    )


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
    held_out: bool
    created_at: datetime


class UploadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    source: SourceOut
    duplicate: bool = Field(description="true when the same file was uploaded before; nothing new was made")
    job_id: int | None = None


class Readiness(BaseModel):
    status: str = Field(description="ready, or not ready")
    checks: dict[str, str] = Field(
        description='each check ("database", "migrations", "broker"): "ok" or what is wrong'
    )


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
    worker: str | None = Field(description="who runs or ran it last: host:pid")
    heartbeat_at: datetime | None = Field(description="when its worker was last seen running it")
    worker_rss_bytes: int | None = Field(description="its worker's memory (resident bytes) when last seen")


# --- Annotation ---------------------------------------------------------------------------------------


class CandidateView(BaseModel):
    id: int
    label: str = Field(description="the letter shown to the annotator, in their shuffled order")
    image_url: str


class TaskOut(BaseModel):
    id: int
    project_id: int
    source_id: int
    instance_id: int | None
    kind: Literal["instance", "image", "evaluation"]
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1 in SR pixels")
    image_size: tuple[int, int] = Field(description="width, height of the candidates")
    lq_url: str
    mask_url: str | None
    candidates: list[CandidateView]
    lease_expires_at: datetime
    instructions: str


class VoteIn(BaseModel):
    outcome: Outcome = "pick"
    best_candidate_id: Id | None = None
    worst_candidate_id: Id | None = None
    content_text: Annotated[Text, Field(max_length=500)] = ""
    defect_text: Annotated[Text, Field(max_length=500)] = ""
    lead_time_ms: Count | None = None
    client_submission_id: SubmissionId = Field(
        description="unique per answer; a retry with the same id is safe"
    )
    replaces_submission_id: Annotated[Text, Field(max_length=64)] | None = Field(
        default=None,
        description="undo: this answer replaces the one sent with that client_submission_id (within 10 "
        "minutes); the replaced answer is kept in the history",
    )


class SkipIn(BaseModel):
    client_submission_id: SubmissionId


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


class ProgressOut(ORMModel):
    done_today: int = Field(description="your answers and skips since `since`")
    done_total: int = Field(description="your answers and skips in this project")
    left_for_you: int = Field(description="open tasks of the project that you have not answered or skipped")
    votes_left: int = Field(description="answers the project still needs from everyone")
    ms_per_task: float | None = Field(description="your mean time per task since `since`")


class GoldTaskOut(ORMModel):
    id: int
    project_id: int
    state: str
    gold_best_candidate_id: int | None = Field(description="the known best (null for a sanity task)")
    gold_worst_candidate_id: int | None = Field(description="the known worst")
    gold_by: int | None = Field(description="who marked it (null: a sanity task)")


class SanityRequest(BaseModel):
    count: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="sanity tasks the project should have; default: its setting",
    )


class GoldScoreOut(BaseModel):
    user_id: int
    username: str
    answered: int = Field(description="scored gold answers (skips do not count)")
    correct: int
    accuracy: float | None
    paused: bool = Field(description="paused by the answers since their last resume")


class GoldOut(BaseModel):
    gold_tasks: int
    scores: list[GoldScoreOut]


# A project's statistics: the service's dataclass is the response model (one definition).
ProjectStats = stats.ProjectStats


# --- Datasets -----------------------------------------------------------------------------------------


class BuildRequest(BaseModel):
    min_votes: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="answers a task needs; default its k"
    )
    min_agreement: Fraction = Field(default=0.5, description="share that chose winner and loser")
    image_level: bool = Field(default=True, description="also make records from image-level tasks")
    val_fraction: float = Field(
        default=0.1, ge=0, lt=1, allow_inf_nan=False, description="share of source images in val"
    )
    seed: int = Field(default=0, ge=0, le=INT64_MAX)
    exports: list[Annotated[Text, Field(max_length=32)]] = Field(
        default_factory=lambda: list(EXPORTS), max_length=16, description=", ".join(EXPORTS)
    )
    shard_size: int = Field(default=1000, ge=1, le=100_000, description="records per WebDataset shard")
    method: Aggregation | None = Field(default=None, description="aggregation; default the project's")
    up_to_vote_id: BigId | None = Field(default=None, description="snapshot; default the newest vote")


class DatasetOut(ORMModel):
    id: int
    project_id: int
    version: int
    state: str
    max_vote_id: int
    max_review_id: int = Field(description="the newest review it includes (0: none)")
    settings: dict[str, Any]
    counts: dict[str, Any] | None
    files: dict[str, Any] | None = Field(description="downloadable files: name -> size, sha256")
    digest: str | None
    error: str | None
    job_id: int | None
    created_at: datetime
    published_at: datetime | None


class BuildOut(BaseModel):
    dataset: DatasetOut
    job_id: int
    created: bool = Field(description="false when the same dataset was asked for before")


class RecordsPage(ORMModel):
    total: int
    offset: int
    limit: int
    records: list[dict[str, Any]]


# --- Model versions -----------------------------------------------------------------------------------


class ModelVersionIn(BaseModel):
    name: Annotated[Text, Field(min_length=1, max_length=200)]
    dataset_id: Id | None = None
    backbone: str = Field(default="upscaler", pattern="^(upscaler|onestep)$")
    base_model: Annotated[Text, Field(min_length=1, max_length=1000)] = Field(
        description="local diffusers folder of the base model"
    )
    lora_path: Annotated[Text, Field(min_length=1, max_length=1000)] = Field(
        description=f"folder holding {LORA_FILE}"
    )
    metrics: JSONObject = Field(default_factory=dict)


class TrainRequest(BaseModel):
    args: JSONObject = Field(
        default_factory=dict,
        description='trainer flags for this run over the project\'s train_settings "args", e.g. '
        '{"loss": "dpo", "max_steps": 500}',
    )
    name: Annotated[Text, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="the model version's name (default v{dataset version}-job{job id})"
    )


class TrainOut(BaseModel):
    job_id: int
    dataset_id: int


class ModelVersionOut(ORMModel):
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
    model_version_id: Id | None = Field(description="null: back to the base model (no LoRA)")


class RetrainSettings(ORMModel):
    retrain_min_votes: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="K; null turns retraining off"
    )
    retrain_interval_minutes: int = Field(
        default=60, ge=1, le=INT32_MAX, description="at most one build per interval"
    )
    train_settings: JSONObject = Field(
        default_factory=dict,
        description='{"model": folder, "backbone": "upscaler"|"onestep", "args": {flag: value}, '
        '"dataset": {build settings}}',
    )


# --- Label Studio bridge ------------------------------------------------------------------------------


class LabelStudioWebhookIn(BaseModel):
    """What Label Studio posts for an annotation event (its other fields are read as they come)."""

    model_config = ConfigDict(extra="allow")

    action: Annotated[Text, Field(max_length=64)]


class LabelStudioAppliedOut(BaseModel):
    accepted: int
    rejected: int
    deleted: int
    ignored: int


class LabelStudioAnswerOut(ORMModel):
    annotation_id: int
    ls_task_id: int | None
    task_id: int | None
    ls_user_id: int | None
    email: str
    user_id: int | None
    vote_id: int | None
    state: Literal["accepted", "rejected", "deleted"]
    reason: str
    revision: int
    changed_at: datetime


class LabelStudioStatusOut(ORMModel):
    project_id: int
    url: str
    ls_project_id: int
    webhook_id: int | None
    tasks_pushed: int
    last_push_at: datetime | None
    last_sync_at: datetime | None
    accepted: int
    rejected: int
    deleted: int
    rejected_answers: list[LabelStudioAnswerOut]


# --- Evaluation rounds --------------------------------------------------------------------------------


class EvaluationSideIn(BaseModel):
    """A model version, a generator by name with settings, or neither: the project's base generator
    (its generator without a LoRA)."""

    model_version_id: Id | None = None
    generator: Annotated[Text, Field(min_length=1, max_length=32)] | None = None
    generator_settings: JSONObject | None = None


class EvaluationIn(BaseModel):
    name: Annotated[Text, Field(max_length=200)] = ""
    a: EvaluationSideIn = Field(default_factory=EvaluationSideIn, description="A: default the base generator")
    b: EvaluationSideIn
    seed: int = Field(default=0, ge=0, le=INT32_MAX, description="added to each source's own seed")
    required_votes: int | None = Field(
        default=None, ge=1, le=20, description="answers per held-out source; default the project's k"
    )


class EvaluationSideOut(BaseModel):
    label: str
    generator: str
    settings: dict[str, Any]
    model_version_id: int | None


class EvaluationOut(ORMModel):
    id: int
    project_id: int
    name: str
    a: EvaluationSideOut
    b: EvaluationSideOut
    seed: int
    required_votes: int
    state: Literal["generating", "open", "closed", "failed"]
    job_id: int | None
    error: str | None
    trained_model_version_id: int | None
    created_at: datetime
    closed_at: datetime | None


class PromotionDecisionOut(ORMModel):
    id: int
    project_id: int
    evaluation_id: int
    decision: Literal["promoted", "kept", "off"]
    reason: str
    answers: int
    wins_b: int
    wins_a: int
    ties: int
    win_rate: float | None = Field(description="of B over A, ties as halves")
    lower_bound: float = Field(description="Wilson 95%, ties as halves")
    upper_bound: float
    sign_test_p: float
    before: dict[str, Any]
    after: dict[str, Any] | None
    created_at: datetime


class EvaluationResultOut(ORMModel):
    evaluation: EvaluationOut
    tasks: int
    tasks_complete: int
    summary: dict[str, Any] = Field(
        description="dspo.evaluation_stats: overall, per_annotator, per_item (source id), position, "
        "agreement, skips"
    )
    decision: PromotionDecisionOut | None


class EvaluationAnswerOut(ORMModel):
    vote_id: int
    task_id: int
    source_id: int
    annotator: str
    left_candidate_id: int
    right_candidate_id: int
    a_candidate_id: int
    b_candidate_id: int
    b_side: Literal["left", "right"]
    answer: Literal["left", "right", "tie", "skip"]
    outcome: Literal["b", "a", "tie"] | None
    lead_time_ms: int | None
    created_at: datetime


# --- Annotator quality --------------------------------------------------------------------------------


class PositionTestOut(ORMModel):
    counts: list[int] = Field(description="choices per shown position, the first shown first")
    total: int
    expected: float = Field(description="per position under a uniform choice (the test wants 5 or more)")
    chi2: float | None = Field(description="goodness of fit against uniform; null without choices")
    p_value: float | None


class AlphaWindowOut(ORMModel):
    first_task_id: int
    last_task_id: int
    tasks: int = Field(description="tasks with two picks or more in this window")
    best: float | None
    worst: float | None


class AnnotatorQualityOut(ORMModel):
    user_id: int
    username: str
    answers: int = Field(description="answers but skips")
    picks: int
    shared_tasks: int = Field(description="tasks this annotator answered that another one answered too")
    best_agreement: float | None = Field(description="share agreeing with the others' plurality best")
    best_tasks: int = Field(description="tasks the best agreement rests on")
    worst_agreement: float | None
    worst_tasks: int
    timed_answers: int = Field(description="answers whose lead time is known")
    fast_answers: int = Field(description="answers faster than the project's min_lead_time_ms")
    fast_share: float | None
    gold_answers: int = Field(description="scored answers to gold tasks (skips left out)")
    gold_correct: int
    gold_accuracy: float | None
    best_positions: PositionTestOut
    worst_positions: PositionTestOut


class QualityOut(ORMModel):
    project_id: int
    max_vote_id: int
    min_lead_time_ms: int
    n_candidates: int
    alpha_best: float | None = Field(description="nominal Krippendorff's alpha over the best choices")
    alpha_worst: float | None
    window_tasks: int = Field(description="tasks per window of alpha_windows")
    alpha_windows: list[AlphaWindowOut] = Field(
        description="alpha over consecutive windows of tasks, in the order of their newest answer"
    )
    best_positions: PositionTestOut
    worst_positions: PositionTestOut
    lead_time_edges_ms: list[int] = Field(description="lower edges of the lead-time bins")
    lead_time_counts: list[int]
    annotators: list[AnnotatorQualityOut]


# --- Review of disputed tasks -------------------------------------------------------------------------


class FlagIn(BaseModel):
    reason: Annotated[Text, Field(min_length=1, max_length=500, description="why a reviewer should look")]


class FlagOut(ORMModel):
    id: int
    task_id: int
    reason: str
    created_at: datetime


class ReviewIn(BaseModel):
    decision: reviews.Decision = Field(description="pair: this winner and loser; no_pair: no record")
    best_candidate_id: Id | None = None
    worst_candidate_id: Id | None = None
    note: Annotated[Text, Field(max_length=1000)] = ""


# The service's dataclasses are the response models (one definition).
ReviewOut = reviews.ReviewEntry
QueueItemOut = reviews.QueueItem


class ReviewTaskOut(BaseModel):
    """A task as the review page shows it: candidates in their stored order (labels A, B, … the same
    for every reviewer), every answer with who gave it, the flags and the reviews (newest first)."""

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
    instructions: str
    answers: list[reviews.Answer]
    flags: list[reviews.Flag]
    reviews: list[reviews.ReviewEntry]
    contested: str | None = Field(description="why its votes alone give no pair, if they disagree")
