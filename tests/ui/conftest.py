"""Browser tests: a real server (uvicorn in a thread, SQLite, in-process jobs) and Debian's Chromium
driven by Playwright. Without Chromium or Playwright they skip with the reason, except on CI
(CI=true), where they fail: `bash scripts/test.sh` installs both."""

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from annotation_server.main import create_app
from bench.ui import CHROMIUM, CHROMIUM_ARGS
from dspo.cli import ensure_user
from dspo.jobs import shutdown_executor
from dspo.migrate import upgrade
from dspo.models import Task, Vote
from dspo.runtime import Runtime
from dspo.settings import Settings
from tests.conftest import cannot_run
from tests.helpers import add_members, login, png_bytes, serving, wait_for_jobs

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
# The task page is checked at both: a laptop and a desktop screen.
VIEWPORTS = [VIEWPORT, {"width": 1920, "height": 1080}]


def missing(what: str) -> None:
    cannot_run(f"{what}; `bash scripts/test.sh` installs it")


def photo_png(width: int, height: int) -> bytes:
    """A real photograph (scikit-image's cat), so that screenshots look like real work."""
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize((width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Site:
    url: str
    runtime: Runtime
    http: httpx.Client
    admin: dict[str, str]

    def make_project(
        self,
        name: str,
        *,
        images: list[bytes] | None = None,
        members: tuple[str, ...] = ("alice", "bob"),
        **fields: Any,
    ) -> int:
        body = {"name": name, "n_candidates": 3, "overlap": 1, "min_area_fraction": 0.05, **fields}
        response = self.http.post("/api/v1/projects", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        project_id = response.json()["id"]
        add_members(self.http, self.admin, project_id, *members)
        for i, data in enumerate(images or [png_bytes(48, 32, 0)]):
            upload = self.http.post(
                f"/api/v1/projects/{project_id}/uploads",
                files={"file": (f"img{i}.png", data, "image/png")},
                headers=self.admin,
            )
            assert upload.status_code == 201, upload.text
        jobs = wait_for_jobs(self.http, self.admin, project_id)
        assert all(job["state"] == "succeeded" for job in jobs), jobs
        return project_id

    def tasks(self, project_id: int) -> list[Task]:
        with self.runtime.sessions() as session:
            return list(session.scalars(select(Task).where(Task.project_id == project_id).order_by(Task.id)))

    def votes(self, project_id: int, username: str | None = None) -> list[Vote]:
        from dspo.models import User

        with self.runtime.sessions() as session:
            stmt = select(Vote).join(Task, Task.id == Vote.task_id).where(Task.project_id == project_id)
            if username:
                stmt = stmt.join(User, User.id == Vote.user_id).where(User.username == username)
            return list(session.scalars(stmt.order_by(Vote.id)))


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("ui")
    settings = Settings(
        database_url=f"sqlite:///{root / 'dspo.db'}",
        storage_root=root / "blobs",
        broker_url="",
        _env_file=None,  # type: ignore[call-arg]
    )
    upgrade(settings.database_url)
    runtime = Runtime.from_settings(settings)
    ensure_user(runtime, "root", "admin", "root-password")
    ensure_user(runtime, "alice", "annotator", "alice-password")
    ensure_user(runtime, "bob", "annotator", "bob-password")
    with (
        serving(create_app(runtime)) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        yield Site(f"http://127.0.0.1:{port}", runtime, http, login(http, "root", "root-password"))
    shutdown_executor(runtime)
    runtime.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing(f"Chromium is not at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Any]:
    """A factory of pages, each in a fresh browser context (its own cookies and localStorage)."""
    contexts = []

    def make(username: str | None = None, password: str | None = None, viewport: dict | None = None) -> Any:
        # Playwright's wait_for_function polls with eval in the page, which the pages' CSP forbids;
        # test_every_page_works_within_its_content_security_policy uses a context that keeps it.
        context = browser.new_context(viewport=viewport or VIEWPORT, base_url=site.url, bypass_csp=True)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        if username:
            log_in(page, username, password or f"{username}-password")
        return page

    yield make
    for context in contexts:
        context.close()


def log_in(page: Any, username: str, password: str, next_path: str = "/") -> None:
    page.goto(f"/login?next={next_path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(lambda url: "/login" not in url)


def shown_task(page: Any, previous: str | None = None) -> str:
    """Wait until the page has fully drawn a task other than `previous`; return its id (or the name
    of the message shown instead: 'done'); 'waiting' (for the server) is a passing state."""
    try:
        page.wait_for_function(
            # The workspace may not exist yet while the page is still loading after a redirect.
            "previous => { const s = document.getElementById('workspace')?.dataset.shownTask;"
            " return s && s !== previous && s !== 'waiting'; }",
            arg=previous or "",
            # Generous: on a loaded 2-core machine the first task of a page waits for crops rendered
            # on their first request and for other projects' jobs in the same server.
            timeout=60_000,
        )
    except Exception:
        state = page.evaluate(
            "() => ({url: location.href, shown: document.getElementById('workspace')?.dataset.shownTask,"
            " message: document.getElementById('message')?.innerText,"
            " images: [...document.querySelectorAll('img')].map(i => [i.src, i.complete, i.naturalWidth])})"
        )
        raise AssertionError(f"no new task shown after {previous!r}; page state: {state}") from None
    return page.get_attribute("#workspace", "data-shown-task")


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))
