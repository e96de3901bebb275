"""The task page as a place to judge fine detail, in Chromium at 1280x800 and 1920x1080: whole-pixel
zoom shown on screen, pixel-aligned panes, an outline drawn above the pixels, focus / flicker / compare
fitted to the image, the key map, Enter after a click, and marks that survive a reload."""

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dspo.cli import ensure_user
from dspo.models import Candidate, Instance, Task
from tests.helpers import add_members
from tests.ui.conftest import VIEWPORT, VIEWPORTS, Site, photo_png, screenshot, shown_task

pytestmark = pytest.mark.parametrize("viewport", VIEWPORTS, ids=lambda v: f"{v['width']}x{v['height']}")

WORKSPACE = "document.getElementById('workspace')"


@pytest.fixture(scope="module")
def photo_project(site: Site) -> int:
    """One photograph (96x64, x4: 384x256) with N = 4: five regions of several shapes (some fit a pane
    of the grid at 1280x800, some do not) and a whole-image task. Answers are given by annotators made
    for each test, so the tests do not share tasks."""
    return site.make_project(
        "photo", images=[photo_png(96, 64)], n_candidates=4, overlap=20, image_level_tasks=True
    )


def annotator(site: Site, name: str, project_id: int) -> str:
    ensure_user(site.runtime, name, "annotator", f"{name}-password")
    add_members(site.http, site.admin, project_id, name)
    return name


def open_task(new_page: Any, site: Site, viewport: dict, project_id: int, name: str) -> tuple[Any, str]:
    user = annotator(site, f"{name}-{viewport['width']}", project_id)
    page = new_page(user, viewport=viewport)
    page.goto(f"/projects/{project_id}/annotate")
    page.mouse.move(0, 0)  # away from the images: no crosshair in screenshots
    return page, shown_task(page)


def zoom(page: Any) -> float:
    return float(page.get_attribute("#workspace", "data-zoom"))


def geometry(page: Any, scope: str = "#grid") -> list[dict]:
    """Per viewport: its box on screen, and where its visible image lies relative to it."""
    return page.eval_on_selector_all(
        f"{scope} .viewport",
        """viewports => viewports.map(v => {
            const a = v.getBoundingClientRect();
            const img = [...v.querySelectorAll('img.layer')].find(i => !i.hidden);
            const b = img.getBoundingClientRect();
            return {left: a.left, top: a.top, width: a.width, height: a.height,
                    dx: b.left - a.left, dy: b.top - a.top, iw: b.width, ih: b.height,
                    natural: [img.naturalWidth, img.naturalHeight]};
        })""",
    )


def assert_aligned(panes: list[dict]) -> None:
    """The same image pixel lies under the same offset in every pane, on whole screen pixels."""
    panes = [{key: round(v, 2) if isinstance(v, float) else v for key, v in pane.items()} for pane in panes]
    first = panes[0]
    for pane in panes:
        assert (pane["width"], pane["height"]) == (first["width"], first["height"]), panes
        assert (pane["dx"], pane["dy"], pane["iw"], pane["ih"]) == (
            first["dx"],
            first["dy"],
            first["iw"],
            first["ih"],
        )
        for value in (pane["left"], pane["top"], pane["dx"], pane["dy"]):
            assert value == round(value), f"not on a whole pixel: {pane}"


def task_kinds(site: Site, project_id: int) -> dict[int, str]:
    return {t.id: t.kind for t in site.tasks(project_id)}


# ---- zoom, layout, alignment ------------------------------------------------------------------------


def test_every_task_opens_at_a_whole_zoom_shown_on_screen_with_aligned_panes(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, task = open_task(new_page, site, viewport, photo_project, "zoom")
    kinds = task_kinds(site, photo_project)
    seen_whole = 0
    for _ in range(len(kinds)):
        k = zoom(page)
        readout = page.inner_text("#zoom-readout")
        panes = geometry(page)
        assert len(panes) == 5
        assert_aligned(panes)
        width, height = panes[0]["natural"]
        if k >= 1:
            seen_whole += 1
            assert k == int(k), f"task {task}: zoom {k} is not whole"
            assert readout.startswith(f"Zoom {int(k)}×")
            assert page.inner_text("#zoom-note") == ""
            # No letterbox: the pane is the image at that zoom.
            assert (panes[0]["width"], panes[0]["height"]) == (width * k, height * k)
            assert (panes[0]["dx"], panes[0]["dy"]) == (0, 0)
        else:
            # Only a region larger than the pane is shrunk, and the page says so.
            assert "larger than the pane" in page.inner_text("#zoom-note")
            assert readout.startswith("Zoom 0.") and float(readout[5:9]) == pytest.approx(k, abs=0.006)
            assert width * 1 > panes[0]["width"] or height * 1 > panes[0]["height"]
        heads = page.eval_on_selector_all(".pane-head", "hs => hs.map(h => [h.scrollHeight, h.clientHeight])")
        assert all(scroll <= client for scroll, client in heads), "a header wrapped"
        kind = kinds[int(task)]
        assert page.get_attribute("#workspace", "data-kind") == kind
        assert page.inner_text("#task-kind").startswith("Region" if kind == "instance" else "Whole image")
        page.keyboard.press("s")  # skip to the next task
        task = shown_task(page, task)
    assert task == "done" and seen_whole >= 3


def test_panes_stay_aligned_when_zoomed_and_panned(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, _ = open_task(new_page, site, viewport, photo_project, "align")
    if viewport != VIEWPORT:
        page.keyboard.press("2")
        page.keyboard.press("e")
        screenshot(page, "task-page-1920.png")
    start = zoom(page)
    box = page.locator("#grid .viewport").nth(2).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 3)
    page.mouse.wheel(0, -100)  # one notch: one zoom step at the pointer
    page.wait_for_function(f"{WORKSPACE}.dataset.zoom > {start}")
    assert zoom(page) == start + 1
    assert_aligned(geometry(page))
    page.mouse.down()
    page.mouse.move(box["x"] + 13, box["y"] + 7, steps=3)
    page.mouse.up()
    assert_aligned(geometry(page))
    page.keyboard.press("p")
    assert zoom(page) == 1 and page.inner_text("#zoom-readout").startswith("Zoom 1×")
    page.keyboard.press("ArrowLeft")
    assert_aligned(geometry(page))
    # The crosshair marks the same image pixel in every pane.
    page.keyboard.press("0")
    cell = geometry(page)[1]
    page.mouse.move(cell["left"] + cell["width"] / 2, cell["top"] + cell["height"] / 2)
    marks = page.eval_on_selector_all(
        "#grid .viewport",
        """vs => vs.map(v => { const r = v.querySelector('g.cross rect');
            return r && [r.getAttribute('x'), r.getAttribute('y')]; })""",
    )
    assert marks[0] is not None and all(m == marks[0] for m in marks), marks
    assert page.inner_text("#pixel-readout").startswith("pixel ")


@pytest.mark.parametrize("n", [2, 8])
def test_two_to_eight_candidates_fit_with_short_headers(
    site: Site, new_page: Any, viewport: dict, n: int
) -> None:
    project_id = site.make_project(
        f"n{n}-{viewport['width']}", images=[photo_png(96, 64)], n_candidates=n, overlap=20
    )
    page, _ = open_task(new_page, site, viewport, project_id, f"n{n}")
    panes = geometry(page)
    assert len(panes) == n + 1
    assert_aligned(panes)
    assert zoom(page) >= 1 and zoom(page) == int(zoom(page))
    heads = page.eval_on_selector_all(".pane-head", "hs => hs.map(h => [h.scrollHeight, h.clientHeight])")
    assert all(scroll <= client for scroll, client in heads)
    labels = page.eval_on_selector_all(".pane[data-index] .label", "ls => ls.map(l => l.textContent)")
    assert labels == list("ABCDEFGH"[:n])
    bottom = max(p["top"] + p["height"] for p in panes)
    assert bottom <= viewport["height"], "every pane is on screen"


# ---- the outline ------------------------------------------------------------------------------------


def screen_pixels(page: Any, box: dict) -> np.ndarray:
    clip = {"x": box["left"], "y": box["top"], "width": box["width"], "height": box["height"]}
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")).astype(int)


def test_the_outline_lies_above_the_image_and_changes_none_of_its_pixels(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, task = open_task(new_page, site, viewport, photo_project, "outline")
    kinds = task_kinds(site, photo_project)
    while kinds[int(task)] != "instance":
        page.keyboard.press("s")
        task = shown_task(page, task)
    # The images are served without an outline: they are the candidate's own pixels, cropped.
    src = page.get_attribute(".pane[data-index='0'] img.layer", "src")
    assert src.endswith("?outline=false")
    candidate_id = int(src.split("/")[-1].split("?")[0])
    with site.runtime.sessions() as session:
        instance = session.get(Instance, session.get(Task, int(task)).instance_id)
        sha256 = session.get(Candidate, candidate_id).sha256
        box = (instance.x0, instance.y0, instance.x1, instance.y1)
    served = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
    original = Image.open(io.BytesIO(site.runtime.blobs.get(sha256))).convert("RGB").crop(box)
    assert np.array_equal(np.asarray(served), np.asarray(original))

    # Drawn above at screen resolution: with the outline on, only screen pixels on the borders between
    # image pixels change, one device pixel wide; every image pixel's inside looks the same either way.
    while zoom(page) < 4:
        page.keyboard.press("+")
    k = int(zoom(page))
    pane = geometry(page)[1]
    outline_on = screen_pixels(page, pane)
    page.keyboard.press("m")
    assert page.get_attribute(".pane[data-index='0'] path.outline", "d") == ""
    outline_off = screen_pixels(page, pane)
    changed = (outline_on != outline_off).any(axis=2)
    assert changed.any(), "the outline is visible"
    rows, cols = np.indices(changed.shape)
    col_phase = (cols - round(pane["dx"])) % k
    row_phase = (rows - round(pane["dy"])) % k
    border_col = np.isin(col_phase, (0, k - 1))
    border_row = np.isin(row_phase, (0, k - 1))
    inside = changed & ~border_col & ~border_row
    assert not inside.any(), f"{inside.sum()} changed screen pixels lie inside image pixels"
    # One device pixel wide: never both screen pixels on the two sides of a border between image
    # pixels, except where the line turns (on a border the other way too).
    across_col = changed[:, :-1] & changed[:, 1:] & (col_phase[:, :-1] == k - 1) & ~border_row[:, :-1]
    across_row = changed[:-1] & changed[1:] & (row_phase[:-1] == k - 1) & ~border_col[:-1]
    assert not across_col.any() and not across_row.any(), "the outline is wider than one device pixel"
    # The image element's own pixels (read back through a canvas) are the same either way.
    read = """img => { const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        return Array.from(g.getImageData(0, 0, c.width, c.height).data); }"""
    pixels_off = page.eval_on_selector(".pane[data-index='0'] img.layer", read)
    page.keyboard.press("m")
    assert page.eval_on_selector(".pane[data-index='0'] img.layer", read) == pixels_off
    assert page.get_attribute(".pane[data-index='0'] img.layer", "src") == src
    # Dimming is a layer above too, and shows only for a region task.
    page.keyboard.press("Shift+M")
    assert page.is_visible(".pane[data-index='0'] canvas.dim")
    assert page.get_attribute(".pane[data-index='0'] img.layer", "src") == src


# ---- focus, flicker, compare --------------------------------------------------------------------------


def visible_src(page: Any) -> str:
    return page.eval_on_selector(
        "#single-viewport",
        "v => [...v.querySelectorAll('img.layer')].find(i => !i.hidden).getAttribute('src')",
    )


def test_focus_mode_switches_candidates_in_place(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, _ = open_task(new_page, site, viewport, photo_project, "focus")
    grid_zoom = zoom(page)
    candidates = page.eval_on_selector_all(
        ".pane[data-index] img.layer", "imgs => imgs.map(i => i.getAttribute('src'))"
    )
    reference = page.get_attribute(".pane.reference img.layer", "src")
    page.keyboard.press("v")
    assert page.get_attribute("#workspace", "data-mode") == "focus" and page.is_hidden("#grid")
    assert zoom(page) >= grid_zoom and zoom(page) == int(zoom(page))
    fitted = geometry(page, "#single")
    where = [(g["left"], g["top"], g["dx"], g["dy"], g["iw"]) for g in fitted]
    for key, label, src in (("2", "B", candidates[1]), ("4", "D", candidates[3]), ("1", "A", candidates[0])):
        page.keyboard.press(key)
        assert page.get_attribute("#workspace", "data-focus-shown") == label
        assert visible_src(page) == src
        assert [(g["left"], g["top"], g["dx"], g["dy"], g["iw"]) for g in geometry(page, "#single")] == where
    page.keyboard.press("l")
    assert visible_src(page) == reference
    page.keyboard.press("3")
    page.keyboard.down(" ")  # hold to peek at the reference
    assert visible_src(page) == reference
    page.keyboard.up(" ")
    assert visible_src(page) == candidates[2]
    page.keyboard.press("g")
    page.keyboard.press("2")
    page.keyboard.press("x")
    assert page.inner_text("#answer") == "Best: C · Worst: B"
    if viewport == VIEWPORT:
        page.keyboard.press("3")
        screenshot(page, "task-focus.png")
    page.keyboard.press("v")
    assert page.get_attribute("#workspace", "data-mode") == "grid" and page.is_visible("#grid")


def test_flicker_and_compare_open_fitted_to_the_image(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, _ = open_task(new_page, site, viewport, photo_project, "modes")
    candidates = page.eval_on_selector_all(
        ".pane[data-index] img.layer", "imgs => imgs.map(i => i.getAttribute('src'))"
    )
    page.keyboard.press("1")
    page.keyboard.press("e")  # best A, worst C: the pair
    for mode in ("f", "c"):
        page.keyboard.press(mode)
        [single] = geometry(page, "#single")
        k = zoom(page)
        assert k >= 1 and k == int(k)
        # Fitted: the image fills its viewport exactly, at whole pixels.
        assert (single["dx"], single["dy"]) == (0, 0)
        assert (single["iw"], single["ih"]) == (single["width"], single["height"])
        assert single["iw"] == single["natural"][0] * k
        page.keyboard.press("+")  # zooms the image, not empty space
        assert zoom(page) > k
        page.keyboard.press("0")
        page.keyboard.press(mode)
        assert page.get_attribute("#workspace", "data-mode") == "grid"

    page.keyboard.press("f")
    seen = set()
    for _ in range(12):
        seen.add(visible_src(page))
        page.wait_for_timeout(100)
    assert seen == {candidates[0], candidates[2]}, "automatic flicker between A and C"
    page.keyboard.press(" ")  # by hand: the timer stops
    assert page.get_attribute("#btn-flicker-auto", "aria-pressed") == "false"
    shown = visible_src(page)
    page.wait_for_timeout(900)
    assert visible_src(page) == shown
    page.keyboard.press(" ")
    assert visible_src(page) != shown
    page.keyboard.press(",")  # slower, and automatic again
    assert page.input_value("#flicker-rate") == "700"
    assert page.get_attribute("#btn-flicker-auto", "aria-pressed") == "true"
    page.select_option("#flicker-rate", "150")
    page.keyboard.press("f")

    page.keyboard.press("c")
    assert page.get_attribute("#compare-over", "src") == candidates[0]
    assert page.get_attribute("#compare-under", "src") == candidates[2]
    [single] = geometry(page, "#single")
    image = page.locator("#compare-under").bounding_box()
    slider = page.locator("#compare-range").bounding_box()
    assert (round(slider["x"]), round(slider["width"])) == (round(image["x"]), round(image["width"])), (
        "spans the image"
    )
    page.keyboard.press(".")
    if viewport == VIEWPORT:
        screenshot(page, "task-compare.png")
    split = page.locator("#compare-split").bounding_box()
    assert abs(split["x"] + split["width"] - (image["x"] + 0.55 * image["width"])) <= 1.5
    assert page.eval_on_selector("#compare-over", "i => i.style.clipPath") == "inset(0px 45% 0px 0px)"


# ---- keys ---------------------------------------------------------------------------------------------


def mode(page: Any) -> str:
    return page.get_attribute("#workspace", "data-mode") or "grid"


def test_every_key_in_the_key_map_does_what_the_help_says(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, task = open_task(new_page, site, viewport, photo_project, "keys")
    help_keys = page.eval_on_selector_all("#help-keys tr", "rows => rows.map(r => r.dataset.key)")
    answer = lambda: page.inner_text("#answer")  # noqa: E731
    checked = []

    def check(key_id: str) -> None:
        checked.append(key_id)

    page.keyboard.press("h")
    assert page.is_visible("#help")
    page.keyboard.press("Escape")
    assert page.is_hidden("#help")
    check("help")

    page.keyboard.press("2")
    assert answer() == "Best: B · Worst: –"
    check("best")
    page.keyboard.press("q")
    assert answer() == "Best: B · Worst: A"
    page.keyboard.press("Shift+Digit3")
    assert answer() == "Best: B · Worst: C"
    page.keyboard.press("w")  # the worst can never be the best
    assert answer() == "Best: – · Worst: B"
    check("worst")
    page.keyboard.press("t")
    assert answer() == "Answer: no visible difference"
    page.keyboard.press("t")
    assert answer() == "Best: – · Worst: B"
    check("tie")
    page.keyboard.press("a")
    assert answer() == "Answer: all candidates are bad"
    page.keyboard.press("a")
    check("all-bad")

    fit = zoom(page)
    page.keyboard.press("+")
    assert zoom(page) > fit
    page.keyboard.press("=")
    assert zoom(page) > fit + 1
    check("zoom-in")
    before = zoom(page)
    page.keyboard.press("-")
    assert zoom(page) < before
    check("zoom-out")
    page.keyboard.press("p")
    assert zoom(page) == 1
    check("one-to-one")
    page.keyboard.press("0")
    assert zoom(page) == fit
    check("fit")
    page.keyboard.press("+")
    start = geometry(page)[0]
    page.keyboard.press("ArrowRight")
    moved = geometry(page)[0]
    assert moved["dx"] < start["dx"] and moved["dy"] == start["dy"]
    page.keyboard.press("Shift+ArrowDown")
    assert geometry(page)[0]["dy"] < moved["dy"]
    check("pan")
    page.keyboard.press("0")

    page.keyboard.press("m")
    assert not page.is_checked("#outline")
    page.keyboard.press("m")
    assert page.is_checked("#outline")
    check("outline")
    page.keyboard.press("Shift+M")
    assert page.is_checked("#dim")
    page.keyboard.press("Shift+M")
    check("dim")
    page.keyboard.press("k")
    assert not page.is_checked("#crosshair")
    cell = geometry(page)[1]
    page.mouse.move(cell["left"] + 5, cell["top"] + 5)
    assert page.locator("g.cross rect").count() == 0
    page.keyboard.press("k")
    page.mouse.move(cell["left"] + 6, cell["top"] + 6)
    assert page.locator("g.cross rect").count() == 5
    page.mouse.move(0, 0)
    check("crosshair")
    page.keyboard.press("b")
    assert page.get_attribute(".pane.reference img.layer", "src").endswith("?method=nearest")
    assert page.inner_text(".pane.reference .label") == "LQ nearest"
    page.keyboard.press("b")
    check("lq-method")

    page.keyboard.press("v")
    assert mode(page) == "focus"
    check("focus")
    page.keyboard.press("3")
    assert page.get_attribute("#workspace", "data-focus-shown") == "C"
    check("show")
    page.keyboard.press("l")
    assert page.get_attribute("#workspace", "data-focus-shown") == "LQ"
    check("reference")
    page.keyboard.press("1")
    page.keyboard.down(" ")
    assert page.get_attribute("#workspace", "data-focus-shown") == "LQ"
    page.keyboard.up(" ")
    assert page.get_attribute("#workspace", "data-focus-shown") == "A"
    check("peek")
    page.keyboard.press("g")
    assert answer() == "Best: A · Worst: B"
    check("best-shown")
    page.keyboard.press("4")
    page.keyboard.press("x")
    assert answer() == "Best: A · Worst: D"
    check("worst-shown")
    page.keyboard.press("Escape")
    assert mode(page) == "grid"

    page.keyboard.press("f")
    assert mode(page) == "flicker"
    check("flicker")
    shown = page.get_attribute("#workspace", "data-flicker-shown")
    page.keyboard.press(" ")
    assert page.get_attribute("#workspace", "data-flicker-shown") != shown
    check("swap")
    page.keyboard.press(",")
    assert page.input_value("#flicker-rate") == "700"
    page.keyboard.press(".")
    page.keyboard.press(".")
    assert page.input_value("#flicker-rate") == "250"
    check("rate")
    page.keyboard.press("c")
    assert mode(page) == "compare"
    check("compare")
    page.keyboard.press(",")
    assert page.input_value("#compare-range") == "45"
    page.keyboard.press(".")
    assert page.input_value("#compare-range") == "50"
    check("split")
    page.keyboard.press("Escape")
    assert mode(page) == "grid"

    page.keyboard.press("d")
    page.keyboard.type("sky")
    assert page.evaluate("document.activeElement.id") == "content" and page.input_value("#content") == "sky"
    page.keyboard.press("Escape")
    check("content")
    page.keyboard.press("Shift+D")
    assert page.evaluate("document.activeElement.id") == "defect" and page.input_value("#defect") == ""
    page.keyboard.press("Escape")
    check("defect")
    page.keyboard.press("n")
    assert page.is_visible("#flag-dialog")
    page.keyboard.press("Escape")  # a cancelled flag sends nothing
    assert page.is_hidden("#flag-dialog")
    check("flag")

    page.keyboard.press("Enter")
    second = shown_task(page, task)
    check("submit")
    page.keyboard.press("z")
    assert shown_task(page, second) == task and answer().startswith("Undo")
    check("undo")
    page.keyboard.press("Escape")
    assert shown_task(page, task) == second
    check("escape")
    page.keyboard.press("s")
    assert shown_task(page, second) not in (task, second)
    check("skip")
    # The page shows the next task at once and sends the answer behind it: wait until it has arrived.
    page.wait_for_selector("#pending", state="hidden", timeout=30_000)
    deadline = time.monotonic() + 30
    while not (
        skips := [
            v for v in site.votes(photo_project, f"keys-{viewport['width']}") if v.task_id == int(second)
        ]
    ):
        assert time.monotonic() < deadline, "the skip never reached the server"
        time.sleep(0.1)
    assert [v.outcome for v in skips] == ["skip"]

    assert sorted(checked) == sorted(help_keys), "every key in the help is checked, and only those"


def test_enter_submits_after_a_mouse_click(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, task = open_task(new_page, site, viewport, photo_project, "click")
    page.click(".pane[data-index='1'] .pick-best")
    page.click(".pane[data-index='2'] .pick-worst")
    page.click("#btn-zoom-in")
    page.keyboard.press("Enter")
    second = shown_task(page, task)
    page.click("#btn-tie")
    page.keyboard.press("Enter")
    shown_task(page, second)
    page.wait_for_selector("#pending", state="hidden")
    votes = {v.task_id: v for v in site.votes(photo_project, f"click-{viewport['width']}")}
    first = votes[int(task)]
    assert (first.best_candidate_id, first.worst_candidate_id) == (first.shown_order[1], first.shown_order[2])
    assert votes[int(second)].outcome == "tie"


def test_a_reload_keeps_the_marks_and_texts(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, task = open_task(new_page, site, viewport, photo_project, "reload")
    page.keyboard.press("3")
    page.keyboard.press("w")
    page.keyboard.press("d")
    page.keyboard.type("tabby fur")
    page.keyboard.press("Escape")  # leave the text field: keys are keys again
    page.keyboard.press("Shift+D")
    page.keyboard.type("smeared whiskers")
    page.keyboard.press("Escape")
    page.reload()
    assert shown_task(page) == task
    assert page.inner_text("#answer") == "Best: C · Worst: B"
    assert (page.input_value("#content"), page.input_value("#defect")) == ("tabby fur", "smeared whiskers")
    page.keyboard.press("Enter")
    shown_task(page, task)
    page.wait_for_selector("#pending", state="hidden")
    [vote] = site.votes(photo_project, f"reload-{viewport['width']}")
    assert (vote.content_text, vote.defect_text) == ("tabby fur", "smeared whiskers")
    page.reload()  # the answered task's draft is gone with it
    user = page.get_attribute("#workspace", "data-user")
    drafts = page.evaluate(f"JSON.parse(localStorage.getItem('dspo.drafts.{user}') || '{{}}')")
    assert drafts == {}


def test_a_waiting_answer_never_pushes_the_last_button_out_of_view(
    site: Site, new_page: Any, photo_project: int, viewport: dict
) -> None:
    page, task = open_task(new_page, site, viewport, photo_project, "notice")
    page.route("**/api/v1/tasks/*/vote", lambda route: route.abort("internetdisconnected"))
    for key in ("1", "w", "Enter"):
        page.keyboard.press(key)
    shown_task(page, task)
    page.wait_for_selector("#pending:has-text('1 answer saved in this browser')")
    last = page.locator("#btn-help").bounding_box()
    assert last["y"] + last["height"] <= viewport["height"]
    assert page.evaluate(
        "document.querySelector('.side').scrollHeight <= document.querySelector('.side').clientHeight"
    )
    page.unroute("**/api/v1/tasks/*/vote")
