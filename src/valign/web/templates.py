"""The HTML bits every page family shares: autoescaped Jinja environments over
``valign/data/templates/<folder>`` and the one stylesheet.

The stylesheet is ``valign/data/templates/web/style.css``; a page family adds its own
rules from a file of its folder (the chat page: ``chat/chat.css``). It is served as a
file because the Content-Security-Policy allows no inline styles.

Example:
    >>> env = template_env("chat")
    >>> env.from_string("<p>{{ x }}</p>").render(x="<b>")
    '<p>&lt;b&gt;</p>'
    >>> stylesheet().startswith("/*"), len(stylesheet("chat/chat.css")) > len(stylesheet())
    (True, True)
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from jinja2 import Environment

__all__ = ["template_env", "stylesheet", "templates_folder"]


def templates_folder(folder: str = "") -> Traversable:
    """``valign/data/templates/<folder>``, where the page templates ship."""
    root = resources.files("valign") / "data" / "templates"
    return root.joinpath(*folder.split("/")) if folder else root


def template_env(folder: str, **globals: Any) -> Environment:
    """An autoescaping Jinja environment over one template folder, with ``globals`` set."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(templates_folder(folder))),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(globals)
    return env


def stylesheet(*additions: str) -> str:
    """The shared stylesheet followed by ``additions`` (paths under the templates folder)."""
    parts = ["web/style.css", *additions]
    return "\n".join(templates_folder(p).read_text(encoding="utf-8") for p in parts)
