"""An evaluation task on the annotation page, driven in Chromium by keyboard: the two outputs side by
side as Left and Right next to the LQ reference, the same keys as every task (1/2 for the better one,
Q/W for the worse, T for no difference, S to skip, Enter to submit), "all bad" left out, and the
answer stored with the order the annotator saw."""

from typing import Any

from tests.helpers import add_members, png_bytes, wait_for_jobs
from tests.ui.conftest import Site, shown_task
from tests.ui.test_annotate import press


def test_an_annotator_answers_an_evaluation_round_by_keyboard(site: Site, new_page: Any) -> None:
    response = site.http.post(
        "/api/v1/projects", json={"name": "evaluation by keyboard", "overlap": 1}, headers=site.admin
    )
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    add_members(site.http, site.admin, project_id, "alice")
    for seed in range(4):
        upload = site.http.post(
            f"/api/v1/projects/{project_id}/uploads",
            files={"file": (f"{seed}.png", png_bytes(48, 32, seed), "image/png")},
            data={"held_out": "true"},
            headers=site.admin,
        )
        assert upload.status_code == 201, upload.text
    assert all(job["state"] == "succeeded" for job in wait_for_jobs(site.http, site.admin, project_id))
    side = {"generator": "classical", "generator_settings": {"methods": ["lanczos"], "denoisers": ["tv"]}}
    response = site.http.post(
        f"/api/v1/projects/{project_id}/evaluations", json={"b": side}, headers=site.admin
    )
    assert response.status_code == 202, response.text
    evaluation_id = response.json()["id"]
    assert all(job["state"] == "succeeded" for job in wait_for_jobs(site.http, site.admin, project_id))

    page = new_page("alice")
    page.goto(f"/projects/{project_id}/annotate")
    # keys, then the answer line before Enter, then (outcome, index shown better, index shown worse)
    answers = [
        (["2"], "Answer: Right is better", ("pick", 1, 0)),
        (["a", "1"], "Answer: Left is better", ("pick", 0, 1)),  # A (all bad) does nothing here
        (["t"], "Answer: no visible difference", ("tie", None, None)),
        (["w"], "Answer: Left is better", ("pick", 0, 1)),  # the right one is worse
    ]
    expected = {}
    previous = None
    for keys, line, outcome in answers:
        previous = shown_task(page, previous)
        assert [page.inner_text(f".pane[data-index='{j}'] .label") for j in range(2)] == ["Left", "Right"]
        assert page.is_hidden("#btn-allbad") and page.inner_text(".pane.reference .label").startswith("LQ")
        press(page, keys)
        assert page.inner_text("#answer") == line
        press(page, ["Enter"])
        expected[int(previous)] = outcome
    assert shown_task(page, previous) == "done"

    votes = {v.task_id: v for v in site.votes(project_id, "alice")}
    assert set(votes) == set(expected)
    for task_id, (outcome, better, worse) in expected.items():
        vote = votes[task_id]
        assert vote.outcome == outcome
        if outcome == "pick":
            assert (vote.best_candidate_id, vote.worst_candidate_id) == (
                vote.shown_order[better],
                vote.shown_order[worse],
            )
    rows = site.http.get(f"/api/v1/evaluations/{evaluation_id}/answers", headers=site.admin).json()
    assert [r["answer"] for r in rows] == ["right", "left", "tie", "left"]
    assert all(r["left_candidate_id"] == votes[r["task_id"]].shown_order[0] for r in rows)
