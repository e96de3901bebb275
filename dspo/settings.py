"""Settings from the environment (prefix ``DSPO_``) or a ``.env`` file, in one typed object."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSPO_", env_file=".env", extra="ignore")

    # The embedded default: one SQLite file and a blob folder under ./var, jobs run in-process.
    database_url: str = "sqlite:///var/dspo.db"
    broker_url: str = Field(default="", description="Celery broker (redis://...); empty runs jobs in-process")
    storage_root: Path = Path("var/blobs")
    secret_key: str = "change-me"
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

    # The Label Studio bridge (docs/labelstudio.md). public_url: where browsers and Label Studio reach
    # this server (image URLs and the webhook are made from it). The webhook is refused while its
    # secret is empty; Label Studio sends it in the X-DSPO-Webhook-Secret header.
    public_url: str = "http://127.0.0.1:8000"
    labelstudio_webhook_secret: str = ""
    labelstudio_image_url_hours: int = Field(
        default=24 * 30, ge=1, le=24 * 3650, description="how long the image URLs of a push stay valid"
    )

    @property
    def jobs_in_process(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
