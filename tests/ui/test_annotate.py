"""The annotation page, driven in Chromium: keyboard only, synchronised zoom, undo. The task page's
viewer (zoom, outline, focus, flicker, compare, the key map) is tested in test_task_page.py."""

from typing import Any

from sqlalchemy import select

from dspo.models import VoteRevision
from tests.ui.conftest import Site, photo_png, screenshot, shown_task

# Key sequences per task, cycled: pick (best A, worst B), pick (best C, worst A) with texts, tie,
# all bad, skip. Expected outcome and chosen labels (in the annotator's shuffled order) per sequence.
ANSWERS = [
    (["1", "w", "Enter"], "pick", ("A", "B")),
    (["3", "q", "d", "type:brick wall", "Enter"], "pick", ("C", "A")),
    (["t", "Enter"], "tie", None),
    (["a", "Enter"], "all_bad", None),
    (["s"], "skip", None),
]


def press(page: Any, keys: list[str]) -> None:
    for key in keys:
        if key.startswith("type:"):
            page.keyboard.type(key[5:])
        else:
            page.keyboard.press(key)


def test_log_in_and_annotate_a_whole_project_by_keyboard(site: Site, new_page: Any) -> None:
    project_id = site.make_project("keyboard", images=[photo_png(96, 64)], image_level_tasks=True)
    tasks = site.tasks(project_id)
    kinds = {t.id: t.kind for t in tasks}
    assert set(kinds.values()) == {"image", "instance"}

    page = new_page()
    page.goto(f"/projects/{project_id}/annotate")
    page.wait_for_url(lambda url: "/login?next=" in url)
    page.wait_for_function("document.activeElement?.name === 'username'")  # autofocus, no click
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type("alice-password")
    page.keyboard.press("Enter")
    # "/login?next=/projects/N/annotate" ends like the target too: wait until we have left the login.
    page.wait_for_url(lambda url: "/login" not in url and url.endswith(f"/projects/{project_id}/annotate"))

    expected: dict[int, tuple[str, tuple[str, str] | None, list[str]]] = {}
    previous = None
    for i in range(len(tasks)):
        previous = shown_task(page, previous)
        task_id = int(previous)
        if kinds[task_id] == "image":  # the same page, on the whole image
            assert page.inner_text("#thumb-caption") == "Judge the whole image"
        labels = [page.inner_text(f".pane[data-index='{j}'] .label") for j in range(3)]
        assert labels == ["A", "B", "C"]
        keys, outcome, chosen = ANSWERS[i % len(ANSWERS)]
        if i == 0:
            press(page, keys[:2])
            assert page.inner_text("#answer") == "Best: A · Worst: B"
            screenshot(page, "task-page.png")
            press(page, keys[2:])
        else:
            press(page, keys)
        expected[task_id] = (outcome, chosen, labels)
    assert shown_task(page, previous) == "done"
    assert "Nothing left for you" in page.inner_text("#message")

    votes = {v.task_id: v for v in site.votes(project_id, "alice")}
    assert set(votes) == {t.id for t in tasks}
    for task_id, (outcome, chosen, _labels) in expected.items():
        vote = votes[task_id]
        assert vote.outcome == outcome
        if chosen:
            order = vote.shown_order  # the candidates as shown: A, B, C
            assert (vote.best_candidate_id, vote.worst_candidate_id) == tuple(
                order["ABC".index(label)] for label in chosen
            )
    assert "brick wall" in {v.content_text for v in votes.values()}


def pane_offsets(page: Any) -> list[tuple[float, float, float, float]]:
    """Where each pane's image lies relative to its own viewport (left, top, width, height)."""
    return page.eval_on_selector_all(
        "#grid .viewport",
        """viewports => viewports.map(v => {
            const a = v.getBoundingClientRect(), b = v.querySelector('img.layer').getBoundingClientRect();
            return [b.left - a.left, b.top - a.top, b.width, b.height].map(x => Math.round(x * 10) / 10);
        })""",
    )


def assert_together(offsets: list) -> None:
    assert len(offsets) == 4 and all(o == offsets[0] for o in offsets), offsets


def test_zoom_and_pan_move_every_pane_together(site: Site, new_page: Any) -> None:
    project_id = site.make_project("zoom")
    page = new_page("alice")
    page.goto(f"/projects/{project_id}/annotate")
    shown_task(page)
    start = pane_offsets(page)
    assert_together(start)
    fit = float(page.get_attribute("#workspace", "data-zoom"))

    box = page.locator("#grid .viewport").nth(2).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 3)
    for _ in range(3):
        page.mouse.wheel(0, -100)  # zoom in around the pointer on candidate B, a step a notch
    page.wait_for_function(f"document.getElementById('workspace').dataset.zoom >= {fit + 3}")
    zoomed = pane_offsets(page)
    assert_together(zoomed)
    assert zoomed[0][2] > start[0][2] * 1.5

    page.mouse.move(box["x"] + 50, box["y"] + 50)
    page.mouse.down()
    page.mouse.move(box["x"] + 10, box["y"] + 20, steps=4)
    page.mouse.up()
    dragged = pane_offsets(page)
    assert_together(dragged)
    assert (round(dragged[0][0] - zoomed[0][0]), round(dragged[0][1] - zoomed[0][1])) == (-40, -30)

    page.keyboard.press("ArrowRight")
    page.keyboard.press("+")
    keyed = pane_offsets(page)
    assert_together(keyed)
    assert keyed != dragged

    for _ in range(20):
        page.keyboard.press("+")  # down to single pixels, drawn nearest-neighbour
    assert float(page.get_attribute("#workspace", "data-zoom")) == 64
    rendering = page.eval_on_selector_all(
        "#grid img.layer", "imgs => imgs.map(i => getComputedStyle(i).imageRendering)"
    )
    assert set(rendering) == {"pixelated"}
    page.keyboard.press("0")
    assert pane_offsets(page) == start


def test_undo_replaces_the_last_answer_and_keeps_the_history(site: Site, new_page: Any) -> None:
    project_id = site.make_project("undo")
    page = new_page("alice")
    page.goto(f"/projects/{project_id}/annotate")
    first = shown_task(page)
    for key in ("1", "w", "Enter"):
        page.keyboard.press(key)
    second = shown_task(page, first)
    page.wait_for_selector("#pending", state="hidden")
    page.keyboard.press("z")
    assert shown_task(page, second) == first
    assert page.inner_text("#answer").startswith("Undo")
    assert "Best: A · Worst: B" in page.inner_text("#answer")
    page.keyboard.press("t")
    page.keyboard.press("Enter")
    assert shown_task(page, first) == second
    page.wait_for_selector("#pending", state="hidden")

    [vote] = [v for v in site.votes(project_id, "alice") if v.task_id == int(first)]
    assert vote.outcome == "tie" and vote.best_candidate_id is None
    with site.runtime.sessions() as session:
        [old] = session.scalars(select(VoteRevision).where(VoteRevision.vote_id == vote.id)).all()
    assert old.outcome == "pick" and old.best_candidate_id == vote.shown_order[0]
    page.keyboard.press("z")
    assert page.inner_text("#notice") == ""  # the undo of the undo-answer is offered again
