"""Annotator UI benchmark: Debian's Chromium, driven by Playwright, against ``dspo serve`` on the demo
project (scikit-image photographs, classical candidates, SQLite, in-process jobs).

It measures, in the browser's own clock (performance.now):
- **Enter → next task fully shown**: from the keydown of Enter to the page's `dspo-task-shown` mark,
  set once every image of the next task (reference, candidates, thumbnail) is decoded. The annotator
  "thinks" --think-ms before each answer, as a person would; the next task is preloaded meanwhile.
- **time to interactive** of the task page: navigation start to DOMContentLoaded, and to the first task
  fully shown (`dspo-first-task-shown`), cold (a fresh browser context) and warm (a reload).

    python -m bench.ui                       # demo with 2 images, 40 tasks, think 500 ms
    python -m bench.ui --images 4 --tasks 80 --think-ms 0
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = os.environ.get("DSPO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "bench-password"

# Stamps Enter on keydown, in the capture phase, before the page's own handler runs.
STAMP_ENTER = """document.addEventListener('keydown', e => {
    if (e.key === 'Enter') window.__enterAt = performance.now(); }, true)"""
SHOWN_AFTER = """previous => { const s = document.getElementById('workspace').dataset.shownTask;
    return s && s !== previous && s !== 'waiting' ? s : null; }"""
LAST_SHOWN = """(() => { const m = performance.getEntriesByName('dspo-task-shown').at(-1);
    return [m.startTime - window.__enterAt, m.detail.preloaded]; })()"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(env: dict[str, str], images: int) -> None:
    """The demo project, then a known password for its annotator."""
    demo = [sys.executable, "-m", "dspo.cli", "demo", "--no-serve", "--generator", "classical"]
    subprocess.run([*demo, "--images", str(images)], env=env, check=True, stdout=subprocess.DEVNULL)
    user = [sys.executable, "-m", "dspo.cli", "user", "create", "annotator", "--role", "annotator"]
    subprocess.run([*user, "--password", PASSWORD], env=env, check=True, stdout=subprocess.DEVNULL)


def serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "dspo.cli", "serve", "--port", str(port)], env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def log_in(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(f"{url}/login")
    page.fill("input[name=username]", "annotator")
    page.fill("input[name=password]", PASSWORD)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(lambda u: "/login" not in u)
    return page


def time_to_interactive(page: Any, url: str) -> tuple[float, float]:
    page.goto(url)
    page.wait_for_function("performance.getEntriesByName('dspo-first-task-shown').length > 0")
    return page.evaluate(
        """[performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
            performance.getEntriesByName('dspo-first-task-shown')[0].startTime]"""
    )


def enter_to_next(page: Any, tasks: int, think_ms: int) -> list[tuple[float, bool]]:
    """Answer up to `tasks` tasks by keyboard (fewer when the project runs out); for each, the time
    from Enter to the next task fully shown, and whether its images had all been preloaded."""
    page.evaluate(STAMP_ENTER)
    shown = page.wait_for_function(SHOWN_AFTER, arg="").json_value()
    times = []
    for _ in range(tasks):
        page.wait_for_timeout(think_ms)
        for key in ("1", "w", "Enter"):
            page.keyboard.press(key)
        shown = page.wait_for_function(SHOWN_AFTER, arg=shown).json_value()
        if shown == "done":
            break
        times.append(tuple(page.evaluate(LAST_SHOWN)))
    return times


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(ordered):6.1f} ms | p90 {p90:6.1f} ms | max {ordered[-1]:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2, choices=range(1, 5))
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--think-ms", type=int, default=500)
    parser.add_argument("--loads", type=int, default=5, help="page loads for the time to interactive")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dspo-bench-ui-") as tmp:
        env = {
            **os.environ,
            "DSPO_DATABASE_URL": f"sqlite:///{Path(tmp) / 'dspo.db'}",
            "DSPO_STORAGE_ROOT": str(Path(tmp) / "blobs"),
            "DSPO_BROKER_URL": "",
            "DSPO_DEVELOPMENT": "true",  # a throwaway server on the default secret key
            "HF_HUB_OFFLINE": "1",
        }
        started = time.monotonic()
        prepare(env, args.images)
        print(f"demo project with {args.images} images prepared in {time.monotonic() - started:.0f} s")
        port = free_port()
        server = serve(env, port)
        url = f"http://127.0.0.1:{port}"
        page_url = f"{url}/projects/1/annotate"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                viewport = {"width": 1280, "height": 800}
                cold = []
                for _ in range(args.loads):
                    context = browser.new_context(
                        viewport=viewport, bypass_csp=True
                    )  # wait_for_function uses eval
                    cold.append(time_to_interactive(log_in(context, url), page_url))
                    context.close()
                context = browser.new_context(
                    viewport=viewport, bypass_csp=True
                )  # wait_for_function uses eval
                page = log_in(context, url)
                warm = [time_to_interactive(page, page_url) for _ in range(args.loads)]
                shown = enter_to_next(page, args.tasks, args.think_ms)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=20)

    times = [t for t, _ in shown]
    preloaded = [t for t, ready in shown if ready]
    print(f"Chromium {CHROMIUM}, 1280x800, think time {args.think_ms} ms, {len(shown)} tasks answered")
    print(f"Enter -> next task fully shown  {summary(times)}")
    print(f"  ... of which preloaded ({len(preloaded)}) {summary(preloaded) if preloaded else '-'}")
    for name, loads in (("cold", cold), ("warm", warm)):
        print(f"DOMContentLoaded ({name})        {summary([load[0] for load in loads])}")
        print(f"first task fully shown ({name})  {summary([load[1] for load in loads])}")
    within = sum(t <= 150 for t in times)
    print(f"next task within 150 ms: {within} of {len(times)}")


if __name__ == "__main__":
    main()
