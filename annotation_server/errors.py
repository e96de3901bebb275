"""One place that turns errors into answers: JSON under /api/v1, an HTML page for the web pages.

Services and dependencies raise dspo.errors.DspoError subclasses, whose `status_code` is the answer's
status; a page request that is not logged in (Unauthorized) is sent to the login page instead."""

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from annotation_server.schemas import validation_message
from annotation_server.web.pages import render
from dspo.db import database_unreachable
from dspo.errors import DspoError, TooManyRequests, Unauthorized

API_PREFIX = "/api/"
log = logging.getLogger(__name__)


def _is_page(request: Request) -> bool:
    return not request.url.path.startswith(API_PREFIX)


def _page(
    request: Request, message: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    response = render(request, "error.html", {"message": message}, status_code=status_code)
    response.headers.update(headers or {})
    return response


def _to_login(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(here)}", status_code=303)


def install(app: FastAPI) -> None:
    @app.exception_handler(DspoError)
    async def dspo_error(request: Request, exc: DspoError) -> Response:
        headers = {}
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unauthorized):
            if _is_page(request):
                return _to_login(request)
            headers["WWW-Authenticate"] = "Bearer"
        if _is_page(request):
            return _page(request, exc.message, exc.status_code, headers)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_page(request):
            return _page(request, f"The form is not valid: {validation_message(exc.errors())}.", 422)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _is_page(request) and exc.status_code >= 400:
            return _page(request, str(exc.detail), exc.status_code, exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> Response:
        if not database_unreachable(exc):
            raise exc  # a bug, not an outage: the 500 below, logged
        # A database that restarts, fails over or refuses connections: nothing was written that the
        # client was told about, and the same request succeeds once it is back (votes are idempotent
        # by their client_submission_id).
        log.warning("%s %s: the database is unreachable (%s)", request.method, request.url.path, exc.orig)
        message = "the database cannot be reached right now; try again in a moment"
        headers = {"Retry-After": "1"}
        if _is_page(request):
            return _page(request, message, 503, headers)
        return JSONResponse({"detail": message}, status_code=503, headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette re-raises the error after this answer (the server logs it) and the server then
        # closes the connection: say so, so that a client does not send its next request on it.
        message = f"internal error ({type(exc).__name__}); the server log has the details"
        headers = {"Connection": "close"}
        if _is_page(request):
            return _page(request, message, 500, headers)
        return JSONResponse({"detail": message}, status_code=500, headers=headers)
