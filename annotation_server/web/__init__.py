"""The web pages: the annotation page and the admin pages, rendered on the server with Jinja2 (every
value autoescaped) plus small plain JavaScript files; no front-end build step."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from annotation_server.web.pages import router

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
