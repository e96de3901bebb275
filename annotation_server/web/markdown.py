"""A project's instructions, written in Markdown, as safe HTML for the pages.

CommonMark (with tables and strikethrough) by markdown-it-py, with raw HTML off: any `<tag>` an admin
types is shown as text, never interpreted. Links keep markdown-it's check (no javascript:, vbscript:,
file: or data: URLs) and open without a referrer. Images are shown only from this server (a path such
as `/api/v1/images/candidates/12`, which members of the project can load): the pages' Content
Security Policy would block others anyway, so they are shown as their alt text, saying why."""

from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup, escape

# Instructions are at most 20 000 characters (schemas.ProjectCreate); nesting that deep is no use.
MAX_NESTING = 20


def same_origin(url: str) -> bool:
    """A URL that names this server: a path, without scheme or host. Backslashes are refused because
    browsers read them as slashes (`/\\evil.example` is another host)."""
    if not url or "\\" in url or url.startswith("//"):
        return False
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc


def _make() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "maxNesting": MAX_NESTING}).enable(
        ["table", "strikethrough"]
    )

    # Rules are bound to the renderer (add_render_rule), hence `renderer` first.
    def image(
        renderer: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType
    ) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        alt = renderer.renderInlineAsText(token.children or [], options, env)
        if not same_origin(src):
            return (
                f'<span class="blocked-image">[image not shown, not from this server: {escape(alt)}]</span>'
            )
        token.attrSet("loading", "lazy")
        return renderer.image(tokens, idx, options, env)

    def link_open(
        renderer: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType
    ) -> str:
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    return md


_MD = _make()


def render_markdown(text: str) -> Markup:
    """Safe HTML for Markdown text (see the module's docstring)."""
    return Markup(_MD.render(text or ""))
