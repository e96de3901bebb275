"""Project instructions in Markdown become safe HTML: no raw HTML, no script URLs, images from this
server only."""

import pytest

from annotation_server.web.markdown import render_markdown, same_origin


def test_markdown_is_rendered() -> None:
    html = render_markdown(
        "# Judge\n\n**Fur** over *grass*.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- two"
    )
    for part in ("<h1>Judge</h1>", "<strong>Fur</strong>", "<em>grass</em>", "<td>1</td>", "<li>one</li>"):
        assert part in html


def test_raw_html_is_text() -> None:
    html = render_markdown('<script>alert(1)</script><img src=x onerror="alert(2)"> <b>bold</b>')
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "vbscript:x", "data:text/html,x"]
)
def test_script_links_are_not_links(url: str) -> None:
    assert "<a " not in render_markdown(f"[click]({url})")


def test_links_open_without_referrer() -> None:
    assert 'href="https://example.org/guide" rel="noopener noreferrer"' in render_markdown(
        "[guide](https://example.org/guide)"
    )


def test_images_only_from_this_server() -> None:
    html = render_markdown("![good](/api/v1/images/candidates/12)")
    assert '<img src="/api/v1/images/candidates/12" alt="good" loading="lazy"' in html
    for src in ("https://evil.example/x.png", "//evil.example/x.png", "data:image/png;base64,AAAA"):
        html = render_markdown(f"![bad]({src})")
        assert "<img" not in html and "not from this server: bad" in html, src


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("/api/v1/images/candidates/1", True),
        ("images/x.png", True),
        ("//evil.example/x.png", False),
        ("/\\evil.example/x.png", False),
        ("https://evil.example/x.png", False),
        ("", False),
    ],
)
def test_same_origin(url: str, ok: bool) -> None:
    assert same_origin(url) is ok


def test_empty_instructions() -> None:
    assert render_markdown("") == ""
