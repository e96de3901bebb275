"""An evaluation task on the annotation page, driven in Chromium by keyboard: the two outputs side by
side as Left and Right next to the LQ reference, the same keys as every task (1/2 for the better one,
Q/W for the worse, T for no difference, S to skip, Enter to submit), "all bad" left out, the viewer's
synchronised zoom, flicker and compare slider on the pair, no text asked for though the project requires
texts of its regions, and the answer stored with the order the annotator saw."""

from typing import Any

from tests.helpers import add_members, png_bytes, wait_for_jobs
from tests.ui.conftest import Site, shown_task
from tests.ui.test_annotate import press
from tests.ui.test_task_page import WORKSPACE, assert_aligned, geometry, visible_src, zoom


def test_an_annotator_answers_an_evaluation_round_by_keyboard(site: Site, new_page: Any) -> None:
    response = site.http.post(
        "/api/v1/projects",
        json={
            "name": "evaluation by keyboard",
            "overlap": 1,
            "require_content": True,
            "require_defect": True,
        },
        headers=site.admin,
    )
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    add_members(site.http, site.admin, project_id, "alice")
    for seed in range(5):
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
        (["s"], None, ("skip", None, None)),  # S sends the skip at once
    ]
    expected = {}
    previous = None
    for keys, line, outcome in answers:
        previous = shown_task(page, previous)
        assert [page.inner_text(f".pane[data-index='{j}'] .label") for j in range(2)] == ["Left", "Right"]
        assert page.is_hidden("#btn-allbad") and page.inner_text(".pane.reference .label").startswith("LQ")
        if not expected:
            check_the_viewer(page)
        press(page, keys)
        if line is not None:
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
    assert [r["answer"] for r in rows] == ["right", "left", "tie", "left", "skip"]
    assert all(r["left_candidate_id"] == votes[r["task_id"]].shown_order[0] for r in rows)


def check_the_viewer(page: Any) -> None:
    """The pair in the viewer every task has: a wheel notch zooms the LQ reference and both outputs
    alike, flicker alternates the two outputs, compare slides one over the other; back to the grid."""
    outputs = page.eval_on_selector_all(
        ".pane[data-index] img.layer", "imgs => imgs.map(i => i.getAttribute('src'))"
    )
    start = zoom(page)
    box = page.locator("#grid .viewport").nth(1).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 3)
    page.mouse.wheel(0, -100)
    page.wait_for_function(f"{WORKSPACE}.dataset.zoom > {start}")
    assert len(geometry(page)) == 3  # the reference and the two outputs
    assert_aligned(geometry(page))
    page.keyboard.press("p")
    page.keyboard.press("f")
    seen = set()
    for _ in range(12):
        seen.add(visible_src(page))
        page.wait_for_timeout(100)
    assert seen == set(outputs), "flicker between the two outputs"
    page.keyboard.press("f")
    page.keyboard.press("c")
    assert {page.get_attribute(f"#compare-{layer}", "src") for layer in ("over", "under")} == set(outputs)
    page.keyboard.press("c")
    assert page.get_attribute("#workspace", "data-mode") == "grid"
