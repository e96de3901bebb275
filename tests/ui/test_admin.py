"""Admin pages: projects with progress, drag-and-drop upload with progress, jobs, users."""

import base64
from typing import Any

from sqlalchemy import func, select

from dspo.db import session_scope
from dspo.models import Job, User, Vote
from tests.helpers import png_bytes, wait_for_jobs
from tests.ui.conftest import Site, photo_png, screenshot, shown_task

DROP_FILES = """([names, payloads]) => {
    const transfer = new DataTransfer();
    names.forEach((name, i) => {
        const bytes = Uint8Array.from(atob(payloads[i]), c => c.charCodeAt(0));
        transfer.items.add(new File([bytes], name, {type: 'image/png'}));
    });
    return transfer;
}"""


def test_admin_pages_upload_by_drag_and_drop(site: Site, new_page: Any) -> None:
    annotated = site.make_project("street scenes", images=[photo_png(96, 64)])
    alice = new_page("alice")
    alice.goto(f"/projects/{annotated}/annotate")
    first = shown_task(alice)
    for key in ("1", "w", "Enter", "t"):
        alice.keyboard.press(key)
    shown_task(alice, first)
    alice.keyboard.press("Enter")
    alice.wait_for_selector("#pending", state="hidden")

    page = new_page("root")
    page.goto("/admin")
    row = page.locator("tr", has_text="street scenes")
    assert "2 / " in row.inner_text()
    page.fill("input[name=name]", "new photos")
    page.fill("textarea[name=instructions]", "Judge the fur.")
    page.fill("input[name=n_candidates]", "3")
    page.fill("input[name=overlap]", "1")
    page.check("input[name=require_content]")
    page.click("text=Create project")
    page.wait_for_url(lambda url: "/admin/projects/" in url)
    project_id = int(page.url.rsplit("/", 1)[1])
    assert site.http.get(f"/api/v1/projects/{project_id}", headers=site.admin).json()["require_content"]

    page.select_option("#kind", "lq")
    names = ["one.png", "two.png"]
    payloads = [base64.b64encode(png_bytes(48, 32, seed)).decode() for seed in (5, 6)]
    transfer = page.evaluate_handle(DROP_FILES, [names, payloads])
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelectorAll('#uploads li').length === 2")
    page.wait_for_function(
        "[...document.querySelectorAll('#uploads li')].every(li => li.textContent.includes('queued as job'))"
    )
    assert page.eval_on_selector_all("#uploads progress", "bars => bars.map(b => b.value)") == [1, 1]
    sources = site.http.get(f"/api/v1/projects/{project_id}/sources", headers=site.admin).json()
    assert sorted(s["filename"] for s in sources) == names

    page.goto(f"/admin/jobs?project_id={project_id}")
    assert page.locator("tbody tr").count() >= 2 and page.locator("progress").count() >= 2
    screenshot(page, "admin-jobs.png")
    page.goto(f"/admin/projects/{annotated}")
    cells = page.locator("table", has_text="Skips").locator("tr", has_text="alice").locator("td")
    assert cells.all_inner_texts() == ["alice", "2", "0"]
    screenshot(page, "admin-project.png")
    page.goto("/admin")
    screenshot(page, "admin-projects.png")

    page.goto("/admin/users")
    page.fill("input[name=username]", "carol")
    page.fill("input[name=password]", "carol-password")
    page.click("text=Create user")
    # The form posts back to the same URL, so wait for the new row rather than for the URL.
    page.wait_for_selector("td:has-text('carol')")
    assert page.locator("td", has_text="carol").count() == 1
    with site.runtime.sessions() as session:
        mine = (User.username == "alice", Vote.outcome != "skip")
        answers = session.scalar(select(func.count()).select_from(Vote).join(User).where(*mine))
    assert page.locator("tr", has_text="alice").locator("td").nth(3).inner_text() == str(answers)
    screenshot(page, "admin-users.png")


def test_a_failed_job_is_retried_from_the_jobs_page(site: Site, new_page: Any) -> None:
    project_id = site.make_project("retry")
    with session_scope(site.runtime.sessions) as session:
        job = session.scalars(select(Job).where(Job.project_id == project_id, Job.kind == "tasks")).one()
        job.state, job.error, job_id = "failed", "the worker died 3 times while running this job", job.id

    page = new_page("root")
    page.goto(f"/admin/jobs?project_id={project_id}")
    row = page.locator("tr", has_text="the worker died 3 times")
    assert page.locator("button", has_text="Retry").count() == 1  # only the failed job has one
    row.locator("button", has_text="Retry").click()
    page.wait_for_url(lambda url: url.endswith("/admin/jobs"))
    wait_for_jobs(site.http, site.admin, project_id)
    job_now = site.http.get(f"/api/v1/jobs/{job_id}", headers=site.admin).json()
    assert (job_now["state"], job_now["error"]) == ("succeeded", None)
