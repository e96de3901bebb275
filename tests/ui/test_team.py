"""A team lead's afternoon: create annotators, add them to a project, let them answer, build a
dataset from the page, follow it, download an export and browse its records; and instructions in
Markdown with an example image in the task page's help dialog."""

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dspo.models import Candidate, Source
from tests.helpers import login
from tests.ui.conftest import Site, photo_png, screenshot, shown_task


def answer_everything(site: Site, username: str, project_id: int) -> int:
    """Answer every task left for this annotator over the API, all choosing the same best and worst
    (the lowest and highest candidate id), so that the answers agree; returns how many."""
    headers = login(site.http, username, f"{username}-password")
    answered = 0
    while (task := site.http.post(f"/api/v1/projects/{project_id}/next", headers=headers)).status_code == 200:
        task_data = task.json()
        ids = sorted(c["id"] for c in task_data["candidates"])
        body = {
            "best_candidate_id": ids[0],
            "worst_candidate_id": ids[-1],
            "client_submission_id": f"{username}-{answered}",
        }
        vote = site.http.post(f"/api/v1/tasks/{task_data['id']}/vote", json=body, headers=headers)
        assert vote.status_code == 201, vote.text
        answered += 1
    assert task.status_code == 204, task.text
    return answered


def test_a_team_lead_adds_members_builds_a_dataset_and_downloads_it(
    site: Site, new_page: Any, tmp_path: Path
) -> None:
    project_id = site.make_project(
        "team cats", images=[photo_png(96, 64), photo_png(80, 64)], overlap=2, members=()
    )
    lead = new_page("root")
    lead.goto("/admin/users")
    for name in ("ana", "ben"):
        lead.fill("#new-user input[name=username]", name)
        lead.fill("#new-user input[name=password]", f"{name}-password")
        lead.click("text=Create user")
        lead.wait_for_selector(f"td:text-is('{name}')")

    # Nobody but admins sees a new project until the lead adds members.
    ana = new_page("ana")
    assert ana.locator(f"a[href='/projects/{project_id}/annotate']").count() == 0
    lead.goto(f"/admin/projects/{project_id}")
    assert "No members yet" in lead.inner_text("#member-list")
    for name in ("ana", "ben"):
        lead.select_option("select[name=user_id]", label=f"{name} (annotator)")
        lead.click("text=Add member")
        lead.wait_for_selector(f"#member-list td:text-is('{name}')")
    lead.locator("#members").scroll_into_view_if_needed()
    screenshot(lead, "admin-members.png")
    ana.goto("/")
    assert ana.locator(f"a[href='/projects/{project_id}/annotate']").count() == 1

    assert answer_everything(site, "ana", project_id) > 0
    assert answer_everything(site, "ben", project_id) > 0
    ana.goto("/me")
    assert "team cats" in ana.inner_text("#my-progress")
    screenshot(ana, "my-progress.png")

    lead.goto(f"/admin/projects/{project_id}/datasets")
    lead.fill("input[name=val_fraction]", "0.5")
    lead.uncheck("input[name=exports][value=pickapic]")
    lead.click("text=Build dataset")
    # The page refreshes itself while the job runs and shows its progress.
    lead.wait_for_selector("#datasets td:text-is('published')", timeout=120_000)
    screenshot(lead, "admin-datasets.png")

    link = lead.locator("a[href*='/files/trl/']").first
    row = lead.locator(f"table.downloads tr:has(a[href='{link.get_attribute('href')}'])")
    with lead.expect_download() as download_info:
        link.click()
    path = tmp_path / "download"
    download_info.value.save_as(path)
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() in row.inner_text()

    lead.click("a:text-is('records')")
    lead.wait_for_selector("#records img.thumb")
    lead.wait_for_function(
        "[...document.querySelectorAll('#records img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    screenshot(lead, "admin-records.png")


def test_instructions_in_markdown_with_an_example_image(site: Site, new_page: Any) -> None:
    project_id = site.make_project("markdown help")
    with site.runtime.sessions() as session:
        candidate_id = session.scalars(
            select(Candidate.id)
            .join(Source, Source.id == Candidate.source_id)
            .where(Source.project_id == project_id)
        ).first()
    instructions = (
        "Pick the **sharpest** fur.\n\n"
        f"![a good answer](/api/v1/images/candidates/{candidate_id})\n\n"
        "![elsewhere](https://example.org/cat.png)\n\n<b>not bold</b>"
    )
    patched = site.http.patch(
        f"/api/v1/projects/{project_id}", json={"instructions": instructions}, headers=site.admin
    )
    assert patched.status_code == 200
    alice = new_page("alice")
    alice.goto(f"/projects/{project_id}/annotate")
    shown_task(alice)
    alice.keyboard.press("h")
    help_text = alice.locator("#help .instructions")
    assert help_text.locator("strong", has_text="sharpest").count() == 1
    assert help_text.locator("b").count() == 0 and "<b>not bold</b>" in help_text.inner_text()
    assert "not from this server: elsewhere" in help_text.inner_text()
    alice.wait_for_function(
        "document.querySelector('#help .instructions img').complete"
        " && document.querySelector('#help .instructions img').naturalWidth > 0"
    )
    assert help_text.locator("img").count() == 1
