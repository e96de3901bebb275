"""The data model of SPEC §1: users, projects, source images, candidates, instances, tasks, leases,
votes and jobs. Alembic migrations in migrations/ must match this file (a test checks it)."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dspo.db import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on PostgreSQL; on SQLite it must stay INTEGER to be the rowid alias that autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # admin | reviewer | annotator
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(lazy="joined")


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    instructions: Mapped[str] = mapped_column(Text, default="")
    n_candidates: Mapped[int] = mapped_column(Integer)
    overlap: Mapped[int] = mapped_column(Integer)
    scale: Mapped[int] = mapped_column(Integer, default=4)
    generator: Mapped[str] = mapped_column(String(32), default="classical")
    generator_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    segmenter: Mapped[str] = mapped_column(String(32), default="regions")
    segmenter_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    min_area_fraction: Mapped[float] = mapped_column(Float, default=0.005)
    contested_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_level_tasks: Mapped[bool] = mapped_column(Boolean, default=True)
    # Whether a vote must say what the region shows (content) / what is wrong in the worst (defect).
    require_content: Mapped[bool] = mapped_column(Boolean, default=False)
    require_defect: Mapped[bool] = mapped_column(Boolean, default=False)
    # Scheduled retraining: build a dataset and queue training once this many accepted votes arrived
    # since the last dataset (None: off), at most once per interval; train_settings go to `dspo train`.
    retrain_min_votes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retrain_interval_minutes: Mapped[int] = mapped_column(Integer, default=60)
    train_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The tuned model that generates the next round's candidates (a model_versions id; no foreign key,
    # which would make a cycle with model_versions.project_id).
    model_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Held-out sources (for evaluation only): an upload that does not say whether it is held out is,
    # with this probability, decided by a hash of (seed, its bytes' sha256) — seeded and repeatable.
    held_out_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    held_out_seed: Mapped[int] = mapped_column(Integer, default=0)
    # Evaluation rounds (dspo.services.evaluations): promote B to the project's generator when a closed
    # round's Wilson lower bound is above 0.5; scheduled retraining evaluates each new model version
    # against the project's generator once it is trained.
    auto_promote: Mapped[bool] = mapped_column(Boolean, default=False)
    retrain_evaluate: Mapped[bool] = mapped_column(Boolean, default=False)
    # Answers faster than this are counted as lead-time outliers on the quality page: comparing the
    # candidates of a region and choosing two of them takes a careful annotator longer.
    min_lead_time_ms: Mapped[int] = mapped_column(Integer, default=2000)
    # How a dataset chooses winner and loser unless its build says otherwise (dspo.aggregate.METHODS).
    aggregation: Mapped[str] = mapped_column(String(16), default="plurality")
    # Gold tasks (dspo.services.gold): `next` serves one the annotator has not answered with this
    # probability; an annotator with at least gold_min_answers gold answers (since their last resume)
    # and an accuracy under gold_threshold (None: never) is paused; sanity_tasks is how many automatic
    # sanity tasks the project wants (made by the sanity_tasks job).
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    gold_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    gold_min_answers: Mapped[int] = mapped_column(Integer, default=5)
    sanity_tasks: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProjectMember(Base):
    """A reviewer or annotator who works on a project: they see, lease and fetch the images of the
    projects they are members of only. Admins see every project and need no membership."""

    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Source(Base):
    """One uploaded image: its LQ version, and the HQ original when LQ was synthesised from it.

    A source in state "sanity" is the hidden copy behind one sanity gold task (dspo.services.gold):
    the same LQ image, its own candidates (one degraded on purpose) and a copy of one instance."""

    __tablename__ = "sources"
    __table_args__ = (UniqueConstraint("project_id", "upload_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    upload_sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255), default="")
    kind: Mapped[str] = mapped_column(String(8))  # lq | hq: what was uploaded
    lq_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hq_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)  # of the LQ image
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    degradation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="uploaded")  # uploaded | ready | failed | sanity
    # Kept for evaluation: never in a dataset (dspo.aggregate), no candidates or tasks (worker.jobs).
    held_out: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Candidate(Base):
    """An SR output of a source: one of the N candidates of its tasks, or (evaluation_id set) one of the
    two outputs of an evaluation round, at a negative position (dspo.services.evaluations)."""

    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("source_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    generator: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    weights_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(BigInteger)
    evaluation_id: Mapped[int | None] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=True, index=True
    )


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("source_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    mask_sha256: Mapped[str] = mapped_column(String(64))
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    area: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float)
    is_rest: Mapped[bool] = mapped_column(Boolean, default=False)
    contest_score: Mapped[float | None] = mapped_column(Float, nullable=True)


class Task(Base):
    """One comparison: an instance (instance_id set) or the whole image (instance_id null).

    ``slots_taken`` counts accepted votes plus live leases and lives on the task row, so that the
    row lock taken by `next` also guards the slot count (see dspo.assign)."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_project_open", "project_id", "state", "id"),
        UniqueConstraint("source_id", "instance_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # instance | image | evaluation
    # An evaluation task (kind "evaluation") compares the two outputs of this round on a held-out source.
    evaluation_id: Mapped[int | None] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=True, index=True
    )
    required_votes: Mapped[int] = mapped_column(Integer)
    vote_count: Mapped[int] = mapped_column(Integer, default=0)
    slots_taken: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | complete | gold
    # A gold task (state "gold": never open, never complete) knows its answer: the best and worst of
    # the admin or reviewer who marked it (gold_by), or, for a sanity task (gold_by null), the worst
    # only: the candidate degraded on purpose. See dspo.services.gold.
    gold_best_candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=True
    )
    gold_worst_candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=True
    )
    gold_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lease(Base):
    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AssignCursor(Base):
    """How far `next` has looked for this annotator in this project: every task with an id up to
    ``last_task_id`` is answered, skipped or held by them, has an AssignRecheck row, or was complete
    when `next` went past it (see dspo.assign for the invariant and who keeps it)."""

    __tablename__ = "assign_cursors"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    last_task_id: Mapped[int] = mapped_column(BigInteger, default=0)


class AssignRecheck(Base):
    """A task at or below an annotator's cursor that `next` must look at again for them: it was full or
    locked when `next` went past it, or a lease of theirs on it ended unanswered, or it was reopened.
    Rows may repeat; `next` deletes them all once they need no more looking at.

    No foreign keys, on purpose: `next` inserts and deletes these rows all the time, and a foreign-key
    check locks the referenced row (KEY SHARE); every annotator's `next` locking the one project row
    made the 8-annotator loop twice as slow on PostgreSQL, and a check on the task would wait for the
    lock a vote holds. `next` ignores rows whose task is gone or in another project; rows of a deleted
    project or user are never read again."""

    __tablename__ = "assign_rechecks"
    __table_args__ = (Index("ix_assign_rechecks_project_user", "project_id", "user_id", "task_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(BigInteger)


class Vote(Base):
    """An annotator's answer to a task. A skip is stored too (it never counts towards k)."""

    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("task_id", "user_id"),
        UniqueConstraint("user_id", "client_submission_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # pick | tie | all_bad | skip
    best_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), nullable=True)
    worst_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), nullable=True)
    content_text: Mapped[str] = mapped_column(Text, default="")
    defect_text: Mapped[str] = mapped_column(Text, default="")
    shown_order: Mapped[list[int]] = mapped_column(JSON, default=list)
    lead_time_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_submission_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GoldResume(Base):
    """When an admin last resumed an annotator paused by their gold accuracy in a project: only gold
    answers given after it count towards the pause again."""

    __tablename__ = "gold_resumes"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    resumed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resumed_by: Mapped[int | None] = mapped_column(Integer, nullable=True)


class VoteRevision(Base):
    """An answer that its annotator replaced (undo within the grace period): the vote row keeps its id
    and holds the new answer, this row keeps the old one. `votes` therefore only ever holds current
    answers, and whoever reads it needs to know nothing about undo."""

    __tablename__ = "vote_revisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    vote_id: Mapped[int] = mapped_column(ForeignKey("votes.id", ondelete="CASCADE"), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    best_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), nullable=True)
    worst_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), nullable=True)
    content_text: Mapped[str] = mapped_column(Text, default="")
    defect_text: Mapped[str] = mapped_column(Text, default="")
    lead_time_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_submission_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    replaced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_project_state", "project_id", "state"),
        Index("ix_jobs_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|succeeded|failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Recovery (dspo/jobs.py): the Celery queue it goes to (None: the default one); when its message
    # was last sent (None: never, the relay sends it); who runs it ("host:pid") and its heartbeat, with
    # that process's memory (resident bytes) when last seen.
    queue: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Dataset(Base):
    """A dataset version: built by a job from the project's votes up to `max_vote_id`, immutable once
    published. `request_key` names what was asked for, so a repeated request finds this row."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("project_id", "request_key", name="uq_datasets_project_request_key"),
        UniqueConstraint("project_id", "version", name="uq_datasets_project_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    request_key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|building|published|failed
    max_vote_id: Mapped[int] = mapped_column(BigInteger)
    # The newest review it includes (0: none): reviews made later do not change a rebuild of it.
    max_review_id: Mapped[int] = mapped_column(BigInteger, default=0)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    files: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # name -> size, sha256
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Scheduled retraining: a model is trained on this dataset once it is published (by train_job_id).
    retrain: Mapped[bool] = mapped_column(Boolean, default=False)
    train_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ModelVersion(Base):
    """A trained LoRA and the dataset it came from; a project can generate its candidates with it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    backbone: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(1000))
    lora_path: Mapped[str] = mapped_column(String(1000))
    lora_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- Login limiter (issue 9) -------------------------------------------------------------------------


class LoginFailure(Base):
    """Failed logins of one user name or one client address in the current window: the login limiter
    counts here, in the database, so that every server process sees the same count. User names are
    kept as sha256 digests, because people sometimes type their password into the user-name field."""

    __tablename__ = "login_failures"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # user | address
    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the name | the address
    failures: Mapped[int] = mapped_column(Integer)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


# --- Label Studio bridge (issue 16) ------------------------------------------------------------------


class LabelStudioLink(Base):
    """The Label Studio project that one project here is pushed to, and what the bridge did last."""

    __tablename__ = "labelstudio_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), unique=True)
    url: Mapped[str] = mapped_column(String(1000))
    ls_project_id: Mapped[int] = mapped_column(Integer)
    webhook_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Label Studio user id -> e-mail, as of the last push or sync: webhook payloads name the annotator
    # by id only, and the server does not call Label Studio back while it waits for the answer.
    user_emails: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    tasks_pushed: Mapped[int] = mapped_column(Integer, default=0)
    last_push_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LabelStudioAnswer(Base):
    """One Label Studio annotation as the bridge last saw it: the vote it became (accepted), why it
    could not become one (rejected, with the reason), or that it was deleted in Label Studio. The
    annotation id makes every delivery (webhook, sync, a retry of either) idempotent; a deleted row
    stays as a tombstone, so that a late delivery of the same annotation cannot bring it back."""

    __tablename__ = "labelstudio_answers"
    __table_args__ = (UniqueConstraint("project_id", "annotation_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    annotation_id: Mapped[int] = mapped_column(BigInteger)
    ls_task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), nullable=True)
    ls_user_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    email: Mapped[str] = mapped_column(String(254), default="")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    vote_id: Mapped[int | None] = mapped_column(ForeignKey("votes.id", ondelete="SET NULL"), nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # accepted | rejected | deleted
    reason: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[list[Any]] = mapped_column(JSON, default=list)
    result_sha256: Mapped[str] = mapped_column(String(64), default="")
    revision: Mapped[int] = mapped_column(Integer, default=0)
    ls_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- Evaluation rounds (issue 11) ---------------------------------------------------------------------


class Evaluation(Base):
    """A blind A/B round: generators A and B each make one output per held-out source (same seed and
    settings), annotators compare the pair in tasks of kind "evaluation". A side is a model version, the
    project's base generator, or a named generator with settings; `a` and `b` keep what was used."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # {"label", "generator", "settings", "model_version_id"} of each side, fixed at creation.
    a: Mapped[dict[str, Any]] = mapped_column(JSON)
    b: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    required_votes: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="generating")  # generating|open|closed|failed
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The model version whose training queued this round (scheduled retraining), if any.
    trained_model_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PromotionDecision(Base):
    """What closing an evaluation round decided about B, with the numbers it decided on."""

    __tablename__ = "promotion_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), unique=True)
    decision: Mapped[str] = mapped_column(String(16))  # promoted | kept | off
    reason: Mapped[str] = mapped_column(Text)
    answers: Mapped[int] = mapped_column(Integer)
    wins_b: Mapped[int] = mapped_column(Integer)
    wins_a: Mapped[int] = mapped_column(Integer)
    ties: Mapped[int] = mapped_column(Integer)
    win_rate: Mapped[float | None] = mapped_column(Float, nullable=True)  # ties as halves
    lower_bound: Mapped[float] = mapped_column(Float)
    upper_bound: Mapped[float] = mapped_column(Float)
    sign_test_p: Mapped[float] = mapped_column(Float)
    # The project's generator before and (promoted) after: {"generator", "settings", "model_version_id"}.
    before: Mapped[dict[str, Any]] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- Review of disputed tasks (issue 13) --------------------------------------------------------------


class TaskFlag(Base):
    """An annotator's request that a reviewer look at a task, with why. One per annotator and task:
    flagging again replaces the reason."""

    __tablename__ = "task_flags"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Review(Base):
    """A reviewer's decision on a task: its winner and loser ("pair") or that it gives no record
    ("no_pair"). The newest review of a task overrides aggregation for it (dspo.aggregate); earlier
    ones stay as its history."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    decision: Mapped[str] = mapped_column(String(16))  # pair | no_pair
    best_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), nullable=True)
    worst_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
