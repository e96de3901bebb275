"""Pure ASGI middleware (no per-request task or body buffering, unlike Starlette's BaseHTTPMiddleware):
request-body limits applied before anything reads a body, the security headers of the pages, and the
request-latency metric."""

import json
import re
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dspo.metrics import REQUEST_SECONDS

# Pages: scripts, styles and images from this server only; no inline script or style attribute; never
# inside a frame; forms post here only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
PAGE_HEADERS_WITH_CSP = [*PAGE_HEADERS, (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())]
# FastAPI's interactive documentation loads Swagger UI / ReDoc from a CDN with an inline script.
DOCS_PATHS = ("/docs", "/redoc")


class BodyLimit:
    """Refuses a request body larger than its route's limit (`limit_for(path)`) with 413: at once when
    its Content-Length says so, before the application runs; otherwise (a chunked body) as soon as the
    bytes streamed past the limit, before they are parsed. Nothing beyond the limit is ever read."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None:
            # The server delivers no more than Content-Length bytes, so a declared size is all to check.
            if not declared.isdigit() or int(declared) > limit:
                await _too_large(send, limit)
                return
            await self.app(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # The rest of the body stays unread: the connection cannot carry another request.
                raise HTTPException(413, _too_large_detail(limit), headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)


def _too_large_detail(limit: int) -> str:
    return f"the request body is larger than {limit} bytes, the limit of this route"


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": _too_large_detail(limit)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body was not read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Adds the pages' security headers (CSP, frame, nosniff, referrer) to every response outside the
    JSON API under `api_prefix`, which no browser renders as a page."""

    def __init__(self, app: ASGIApp, api_prefix: str) -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(self.api_prefix):
            await self.app(scope, receive, send)
            return
        headers = PAGE_HEADERS if path.startswith(DOCS_PATHS) else PAGE_HEADERS_WITH_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def upload_limit_for(api_prefix: str, json_limit: int, upload_limit: int) -> Callable[[str], int]:
    """Limits by route class: an image upload takes `upload_limit`, every other route `json_limit`."""
    upload = re.compile(re.escape(api_prefix) + r"/projects/[^/]+/uploads/?")

    def limit_for(path: str) -> int:
        return upload_limit if upload.fullmatch(path) else json_limit

    return limit_for


class RequestMetrics:
    """Times every request into dspo_http_request_duration_seconds, labelled by its route template
    (/api/v1/tasks/{task_id}/vote, not the path: bounded label values), or "unmatched"."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = route_template(scope) if "route" in scope else "unmatched"
            REQUEST_SECONDS.labels(scope["method"], route, str(status)).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path with each path parameter's value put back as {name}, in order: the route's template,
    whatever the routers' nesting (a route object only knows its path within its own router)."""
    segments = scope["path"].split("/")
    start = 0
    for name, value in scope.get("path_params", {}).items():
        for index in range(start, len(segments)):
            if segments[index] == str(value):
                segments[index], start = f"{{{name}}}", index + 1
                break
    return "/".join(segments)
