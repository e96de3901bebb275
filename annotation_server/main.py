"""The FastAPI application: `create_app()` is the factory that `dspo serve` and the tests use."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from annotation_server import errors, web
from annotation_server.middleware import BodyLimit, RequestMetrics, SecurityHeaders, upload_limit_for
from annotation_server.routes import (
    auth,
    datasets,
    evaluations,
    gold,
    images,
    jobs,
    labelstudio,
    models,
    projects,
    quality,
    reviews,
    tasks,
    users,
)
from annotation_server.schemas import Readiness
from dspo import jobs as job_layer
from dspo import metrics
from dspo.runtime import Runtime
from dspo.services import health
from dspo.services.tokens import TokenCache
from dspo.settings import DEFAULT_SECRET_KEY, Settings, get_settings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# Room for the multipart framing and the form fields around an upload's file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def check_secret(settings: Settings) -> None:
    """A server started from the environment refuses the default secret key (anyone could forge its
    CSRF tokens) unless it is a development server."""
    if settings.secret_key == DEFAULT_SECRET_KEY and not settings.development:
        raise SystemExit(
            "DSPO_SECRET_KEY is the default: set it to a long random value (python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'), the same on every server process; or set "
            "DSPO_DEVELOPMENT=true for a development server"
        )


def create_app(runtime: Runtime | None = None) -> FastAPI:
    """The app on `runtime`, or on one made from the environment (the server's factory: then the
    default secret key is refused, see check_secret)."""
    if runtime is None:
        check_secret(get_settings())
        runtime = Runtime.from_settings()
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.jobs_in_process:
            yield  # Celery beat runs the sweeper and the relay (worker/celery_app.py)
            return
        resumed = job_layer.resume_unfinished(runtime)
        if resumed:
            log.info("resumed %d unfinished in-process jobs", resumed)
        recovery = job_layer.RecoveryLoop(runtime).start()
        yield
        recovery.stop()
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
    modules = (
        auth,
        users,
        projects,
        jobs,
        tasks,
        reviews,
        images,
        datasets,
        models,
        evaluations,
        labelstudio,
        quality,
        gold,
    )
    for module in modules:
        api.include_router(module.router)
    app.include_router(api)
    web.install(app)
    errors.install(app)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        """Alive: the process answers (a liveness probe; it checks nothing else)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["meta"], response_model=Readiness, responses={503: {"model": Readiness}})
    def readyz() -> Response:
        """Ready: the database answers, its migrations are current, the broker (if any) is reachable;
        503 with the failing checks otherwise."""
        checks = health.readiness(runtime)
        ready = all(outcome == "ok" for outcome in checks.values())
        body = Readiness(status="ready" if ready else "not ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus metrics (dspo/metrics.py)."""
        return Response(metrics.exposition(runtime), media_type=metrics.CONTENT_TYPE)

    # The last added runs first: the client's real address and scheme, then the body limit, then the
    # pages' headers.
    app.add_middleware(SecurityHeaders, api_prefix=API_PREFIX)
    limits = upload_limit_for(
        API_PREFIX, settings.max_body_bytes, settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    )
    app.add_middleware(BodyLimit, limit_for=limits)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    app.add_middleware(RequestMetrics)  # outermost: times everything, refusals included
    return app
