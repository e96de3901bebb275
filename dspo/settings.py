"""Settings from the environment (prefix ``DSPO_``) or a ``.env`` file, in one typed object."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSPO_", env_file=".env", extra="ignore")

    # The embedded default: one SQLite file and a blob folder under ./var, jobs run in-process.
    database_url: str = "sqlite:///var/dspo.db"
    broker_url: str = Field(default="", description="Celery broker (redis://...); empty runs jobs in-process")
    storage_root: Path = Path("var/blobs")
    secret_key: str = DEFAULT_SECRET_KEY
    # A development server (the demo, a laptop) may run with the default secret key; a production one
    # refuses to start with it (annotation_server.main.check_secret).
    development: bool = False
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per log line, for log collectors"
    )
    redis_key_prefix: str = "dspo"

    default_candidates: int = Field(default=4, ge=2, le=16, description="N, candidates per LQ image")
    default_overlap: int = Field(default=3, ge=1, le=20, description="k, votes wanted per task")
    lease_seconds: int = Field(default=300, ge=5, description="how long `next` reserves a task slot")
    token_hours: int = Field(default=24 * 7, ge=1)
    token_cache_seconds: float = Field(
        default=10,
        ge=0,
        le=60,
        description="how long a server trusts a token it checked (0: ask the database every time)",
    )
    max_upload_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="largest request body of every route but the uploads"
    )

    # Behind a reverse proxy: the addresses (or CIDRs) whose X-Forwarded-For / X-Forwarded-Proto are
    # believed, comma-separated, so that client addresses and https (Secure cookies) are right.
    trusted_proxies: str = "127.0.0.1"
    # Failed logins allowed per user name and per client address within one window; then 429.
    login_failures_per_user: int = Field(default=10, ge=1)
    login_failures_per_address: int = Field(default=100, ge=1)
    login_window_seconds: int = Field(default=900, ge=1)
    inprocess_job_threads: int = 2

    # Jobs that recover by themselves (dspo/jobs.py): a running job writes a heartbeat; the sweeper
    # re-queues one whose heartbeat is older than job_stale_seconds (its worker died), at most
    # job_max_attempts times, then fails it with the reason; the relay sends queued jobs whose message
    # was never sent (broker down) or was sent job_redispatch_seconds ago and is still waiting (a broker
    # that lost it). Celery beat runs both ticks (`dspo beat`); the embedded server runs them in-process.
    job_heartbeat_seconds: float = Field(default=10, gt=0, le=600)
    job_stale_seconds: float = Field(
        default=60, gt=0, description="a running job's worker is taken for dead after this silence"
    )
    job_max_attempts: int = Field(default=3, ge=1, le=100)
    job_relay_seconds: float = Field(default=10, gt=0, description="how often queued jobs are (re)sent")
    job_sweep_seconds: float = Field(
        default=15, gt=0, description="how often jobs of dead workers are looked for"
    )
    job_redispatch_seconds: float = Field(
        default=300, gt=0, description="a queued job whose message was sent this long ago is sent again"
    )
    # Redis redelivers a message that was not acknowledged within this time; the database decides who
    # runs a job (a redelivered message of a job that runs or ran is dropped), so a long training job
    # never runs twice at once whatever the value: it only bounds how long a lost message waits.
    broker_visibility_timeout_seconds: int = Field(default=3600, ge=60)

    retrain_tick_seconds: float = Field(
        default=60, gt=0, description="how often `dspo beat` checks the projects for scheduled retraining"
    )

    # Bounded memory in the workers: images are processed in bands of this many rows where a step would
    # otherwise hold several float copies of a whole image (0: whole images at once, as before).
    worker_band_rows: int = Field(default=256, ge=0, le=65536)
    # Real-ESRGAN runs in tiles of this many LQ pixels a side, so that a worker's memory does not grow
    # with the image (measured in docs/benchmarks.md); 0: untiled (the package's default, whole image).
    realesrgan_tile_size: int = Field(default=64, ge=0, le=4096)

    @property
    def jobs_in_process(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
