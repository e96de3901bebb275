"""The FastAPI application: `create_app()` is the factory that `dspo serve` and the tests use."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from annotation_server import web
from annotation_server.deps import TokenCache
from annotation_server.routes import auth, datasets, images, jobs, models, projects, tasks, users
from dspo import jobs as job_layer
from dspo.runtime import Runtime

log = logging.getLogger(__name__)


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime.from_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime.settings.jobs_in_process:
            resumed = job_layer.resume_unfinished(runtime)
            if resumed:
                log.info("resumed %d unfinished in-process jobs", resumed)
        yield
        if runtime.settings.jobs_in_process:
            job_layer.shutdown_executor(runtime)

    app = FastAPI(
        title="DSPO annotation server",
        version="0.1.0",
        description="Best-of-N / Worst-of-N preferences over super-resolution candidates, region by region.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.token_cache = TokenCache(runtime.settings.token_cache_seconds)
    api = APIRouter(prefix="/api/v1")
    for module in (auth, users, projects, jobs, tasks, images, datasets, models):
        api.include_router(module.router)
    app.include_router(api)
    web.install(app)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
