"""The quality page: three annotators answer the same tasks, one always choosing by shown position, one
answering faster than the floor; an admin sees the numbers and the server-drawn charts."""

from typing import Any

from dspo.cli import ensure_user
from tests.helpers import login
from tests.ui.conftest import Site, photo_png, screenshot


def answer_all(site: Site, username: str, project_id: int, *, by_position: bool, lead_time_ms: int) -> int:
    """Answer every task left over the API. By position: the first shown is best, the last worst (the
    task lists its candidates in this annotator's shown order); else the lowest and highest id."""
    headers = login(site.http, username, f"{username}-password")
    answered = 0
    while (task := site.http.post(f"/api/v1/projects/{project_id}/next", headers=headers)).status_code == 200:
        shown = [c["id"] for c in task.json()["candidates"]]
        ids = shown if by_position else sorted(shown)
        body = {
            "best_candidate_id": ids[0],
            "worst_candidate_id": ids[-1],
            "lead_time_ms": lead_time_ms,
            "client_submission_id": f"{username}-{answered}",
        }
        vote = site.http.post(f"/api/v1/tasks/{task.json()['id']}/vote", json=body, headers=headers)
        assert vote.status_code == 201, vote.text
        answered += 1
    return answered


def test_an_admin_sees_quality_numbers_and_charts(site: Site, new_page: Any) -> None:
    ensure_user(site.runtime, "cara", "annotator", "cara-password")
    project_id = site.make_project(
        "quality cats",
        images=[photo_png(96, 64), photo_png(80, 64)],
        overlap=3,
        members=("alice", "bob", "cara"),
    )
    tasks = answer_all(site, "alice", project_id, by_position=False, lead_time_ms=4000)
    assert answer_all(site, "bob", project_id, by_position=False, lead_time_ms=2500) == tasks
    assert answer_all(site, "cara", project_id, by_position=True, lead_time_ms=300) == tasks

    lead = new_page("root")
    lead.goto(f"/admin/projects/{project_id}")
    lead.fill("input[name=min_lead_time_ms]", "1000")
    lead.click("text=Save")
    lead.click("a:text-is('quality')")
    lead.wait_for_selector("#annotators")
    rows = {
        r.locator("td").first.inner_text(): r.inner_text() for r in lead.locator("#annotators tbody tr").all()
    }
    assert sorted(rows) == ["alice", "bob", "cara"]
    # Alice and Bob agree with each other on every task (Cara's order is shuffled): at least half.
    assert f"of {tasks}" in rows["alice"]
    assert f"{tasks} (100%) of {tasks}" in rows["cara"]  # every answer under 1000 ms
    assert f"0 (0%) of {tasks}" in rows["alice"]
    # Cara's best is always the first shown: all her picks on position 1.
    assert f"{tasks} / 0 / 0" in rows["cara"]
    assert "Faster than 1000 ms" in lead.inner_text("#annotators thead")
    alpha = lead.inner_text("#alpha table")
    assert "Best choices" in alpha and "–" not in alpha
    # One chart per annotator, and alpha, positions and lead times.
    assert lead.locator("#annotators svg.chart").count() == 3
    for section in ("#alpha", "#positions", "#lead-times"):
        assert lead.locator(f"{section} svg.chart rect, {section} svg.chart circle").count() > 0, section
    screenshot(lead, "admin-quality.png")
