"""Escaping, privacy between annotators, admin-only pages and endpoints, CSRF."""

from typing import Any

from tests.ui.conftest import VIEWPORT, Site, log_in, shown_task

EVIL = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"><b>bold</b>'


def fetch_status(page: Any, method: str, url: str, token: str | None) -> int:
    return page.evaluate(
        """([method, url, token]) => fetch(url, {method, headers: token === null ? {} :
              {'X-CSRF-Token': token}}).then(r => r.status)""",
        [method, url, token],
    )


def test_html_in_descriptions_is_shown_escaped_everywhere(site: Site, new_page: Any) -> None:
    project_id = site.make_project(f"evil {EVIL}", instructions=f"Look closely. {EVIL}")
    alice = new_page("alice")
    alice.goto(f"/projects/{project_id}/annotate")
    shown_task(alice)
    alice.keyboard.press("t")
    alice.keyboard.press("d")
    alice.keyboard.type(EVIL)
    alice.keyboard.press("Enter")
    alice.wait_for_selector("#pending", state="hidden")
    [vote] = site.votes(project_id, "alice")
    assert vote.content_text == EVIL

    alice.keyboard.press("h")
    assert EVIL in alice.inner_text("#help .instructions")
    alice.keyboard.press("Escape")
    alice.keyboard.press("z")  # the undone answer comes back into the text field, as text
    assert alice.input_value("#content") == EVIL
    pages = [(alice, f"/projects/{project_id}/annotate"), (alice, "/")]
    admin = new_page("root")
    pages += [(admin, "/admin"), (admin, f"/admin/projects/{project_id}"), (admin, "/admin/users")]
    for page, url in pages:
        page.goto(url)
        assert page.evaluate("window.__xss") is None, url
        assert page.locator("b", has_text="bold").count() == 0, url
        if url != "/admin/users":
            assert "<script>window.__xss = 1</script>" in page.inner_text("body"), url
        if url.startswith("/admin/projects/"):
            assert page.locator("td", has_text="<img src=x").count() == 1  # the description, as text


def test_a_second_annotator_never_sees_the_first_ones_choices(site: Site, new_page: Any) -> None:
    project_id = site.make_project("privacy", overlap=2)
    alice = new_page("alice")
    alice.goto(f"/projects/{project_id}/annotate")
    task = shown_task(alice)
    for key in ("1", "w", "d"):
        alice.keyboard.press(key)
    alice.keyboard.type("alice saw a cat")
    alice.keyboard.press("Enter")
    alice.wait_for_selector("#pending", state="hidden")

    # Bob in the same browser after alice logged out, and in a browser of his own.
    alice.click("text=Log out")
    alice.wait_for_url(lambda url: "/login" in url)
    log_in(alice, "bob", "bob-password")
    bob_elsewhere = new_page("bob")
    for bob in (alice, bob_elsewhere):
        bob.goto(f"/projects/{project_id}/annotate")
        assert shown_task(bob) == task, "bob gets the task alice answered (overlap 2)"
        assert bob.inner_text("#answer") == "Best: – · Worst: –"
        assert bob.locator(".pane.best, .pane.worst").count() == 0
        assert bob.input_value("#content") == "" and bob.input_value("#defect") == ""
        assert "alice saw a cat" not in bob.content()
        assert bob.evaluate(f"fetch('/api/v1/tasks/{task}/votes').then(r => r.json())") == []


def test_an_annotator_cannot_open_admin_pages_or_endpoints(site: Site, new_page: Any) -> None:
    page = new_page("alice")
    for url in ("/admin", "/admin/jobs", "/admin/users", "/admin/projects/1"):
        response = page.goto(url)
        assert response.status == 403 and "for admins" in page.inner_text("main"), url
    token = page.get_attribute("meta[name=csrf-token]", "content")
    for method, url in [("GET", "/api/v1/users"), ("GET", "/api/v1/jobs"), ("POST", "/api/v1/projects")]:
        assert fetch_status(page, method, url, token) == 403, url
    status = page.evaluate(
        """token => fetch('/admin/users', {method: 'POST', headers: {'X-CSRF-Token': token},
             body: new URLSearchParams({username: 'mallory', password: 'mallory-password'})})
             .then(r => r.status)""",
        token,
    )
    assert status == 403


def test_a_stale_or_missing_csrf_token_is_refused(site: Site, new_page: Any) -> None:
    project_id = site.make_project("csrf")
    page = new_page("alice")
    stale = page.get_attribute("meta[name=csrf-token]", "content")
    page.click("text=Log out")
    page.wait_for_url(lambda url: "/login" in url)
    log_in(page, "alice", "alice-password")
    fresh = page.get_attribute("meta[name=csrf-token]", "content")
    assert fresh and fresh != stale
    url = f"/api/v1/projects/{project_id}/next"
    assert fetch_status(page, "POST", url, None) == 403
    assert fetch_status(page, "POST", url, stale) == 403
    assert fetch_status(page, "POST", url, "0" * 64) == 403
    assert fetch_status(page, "GET", f"/api/v1/projects/{project_id}/progress", None) == 200
    assert fetch_status(page, "POST", url, fresh) == 200
    # A logout form without the token does not log out.
    status = page.evaluate("fetch('/logout', {method: 'POST'}).then(r => r.status)")
    assert status == 403 and page.goto("/").url.endswith("/")
    # The bearer-token API needs no CSRF token.
    response = site.http.post(f"/api/v1/projects/{project_id}/next", headers=site.admin)
    assert response.status_code == 200


CSP_VIOLATIONS = """window.__csp = [];
document.addEventListener('securitypolicyviolation', e => window.__csp.push(
  `${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));"""


def test_every_page_works_within_its_content_security_policy(site: Site, browser: Any) -> None:
    """The pages send a strict CSP (no inline script or style, no eval): nothing on them may break it.
    A context of its own, which keeps the CSP (the other tests' contexts bypass it, see conftest)."""
    project_id = site.make_project("csp")
    context = browser.new_context(viewport=VIEWPORT, base_url=site.url)
    context.set_default_timeout(60_000)
    admin = context.new_page()
    admin.add_init_script(CSP_VIOLATIONS)
    response = admin.goto("/login")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    admin.fill("input[name=username]", "root")
    admin.fill("input[name=password]", "root-password")
    admin.press("input[name=password]", "Enter")
    admin.wait_for_url(lambda url: "/login" not in url)
    urls = [
        "/",
        "/me",
        f"/projects/{project_id}/annotate",
        "/admin",
        f"/admin/projects/{project_id}",
        f"/admin/projects/{project_id}/datasets",
        f"/admin/projects/{project_id}/quality",
        f"/projects/{project_id}/reviews",
        f"/tasks/{site.tasks(project_id)[0].id}/review",
        "/admin/jobs",
        "/admin/users",
    ]
    for url in urls:
        admin.goto(url)
        if url.endswith(("/annotate", "/review")):
            admin.wait_for_selector("#workspace[data-shown-task]:not([data-shown-task='waiting'])")
            for key in ("1", "w", "f", "f", "c", "Escape", "h", "Escape"):
                admin.keyboard.press(key)
        assert admin.evaluate("window.__csp") == [], url
    context.close()
