"""The FastAPI application: `create_app()` is the factory that `dspo serve` and the tests use."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from annotation_server import errors, web
from annotation_server.middleware import BodyLimit, SecurityHeaders, upload_limit_for
from annotation_server.routes import (
    auth,
    datasets,
    evaluations,
    images,
    jobs,
    models,
    projects,
    tasks,
    users,
)
from dspo import jobs as job_layer
from dspo.runtime import Runtime
from dspo.services.tokens import TokenCache

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# Room for the multipart framing and the form fields around an upload's file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime.from_settings()
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.jobs_in_process:
            resumed = job_layer.resume_unfinished(runtime)
            if resumed:
                log.info("resumed %d unfinished in-process jobs", resumed)
        yield
        if settings.jobs_in_process:
            job_layer.shutdown_executor(runtime)

    app = FastAPI(
        title="DSPO annotation server",
        version="0.1.0",
        description="Best-of-N / Worst-of-N preferences over super-resolution candidates, region by region.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.token_cache = TokenCache(settings.token_cache_seconds)
    api = APIRouter(prefix=API_PREFIX)
    for module in (auth, users, projects, jobs, tasks, images, datasets, models, evaluations):
        api.include_router(module.router)
    app.include_router(api)
    web.install(app)
    errors.install(app)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # The last added runs first: the client's real address and scheme, then the body limit, then the
    # pages' headers.
    app.add_middleware(SecurityHeaders, api_prefix=API_PREFIX)
    limits = upload_limit_for(
        API_PREFIX, settings.max_body_bytes, settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    )
    app.add_middleware(BodyLimit, limit_for=limits)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app
