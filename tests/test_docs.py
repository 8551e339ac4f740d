"""The documentation cannot rot unnoticed: the site builds with ``mkdocs build --strict``
(a broken link, anchor or nav entry fails), offline; the README stays a five-minute read;
every path the README's layout map and docs/layout.md name exists, and the README's map
names every top-level module and package of src/valign; every run-config setting is on
the Configs page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "valign"
DOCS = ROOT / "docs"

README_MAX_LINES = 250
NETWORK_MARKER = "DOCS-BUILD-TRIED-THE-NETWORK"

# mkdocs runs in a child process whose sockets cannot connect, so a theme or plugin that
# fetches anything (fonts, social cards, external assets) fails the test instead of
# quietly depending on the network.
_OFFLINE_MKDOCS = f"""
import socket, sys

def _refuse(*args, **kwargs):
    print({NETWORK_MARKER!r}, args[1:2], file=sys.stderr)
    raise OSError("the docs build tried to reach the network")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse

from mkdocs.__main__ import cli
cli(sys.argv[1:], prog_name="mkdocs")
"""

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`\s]+)`")
_FILE_SUFFIX = re.compile(r"\.(py|ya?ml|toml|md|jsonl?|txt|csv|cfg|mako)$")


def _section(markdown: str, title_word: str) -> str:
    """The text under the first ``##`` heading containing ``title_word``, up to the next one."""
    match = re.search(rf"^## [^\n]*{title_word}[^\n]*\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert match, f"no '## …{title_word}…' section"
    return match.group(1)


def _looks_like_path(text: str) -> bool:
    return bool(re.fullmatch(r"[\w.][\w./*-]*", text)) and ("/" in text or bool(_FILE_SUFFIX.search(text)))


def _local_link_targets(markdown: str) -> list[str]:
    targets = (m.group(1).split("#", 1)[0] for m in _LINK.finditer(markdown))
    return [t for t in targets if t and not re.match(r"^[a-z]+:", t)]


def _named_paths(markdown: str) -> set[str]:
    """Paths a map names, whatever its format: link targets, and path-like code spans in
    the first cell of a table row or anywhere outside tables (a table's other cells are
    descriptions, which may mention folders relative to something else)."""
    paths = set(_local_link_targets(markdown))
    for line in markdown.splitlines():
        text = line.split("|")[1] if line.lstrip().startswith("|") and line.count("|") >= 2 else line
        paths.update(span for span in _CODE.findall(text) if _looks_like_path(span))
    return paths


def _exists(path: str) -> bool:
    for base in (ROOT, PACKAGE):
        if "*" in path:
            if any(base.glob(path)):
                return True
        elif (base / path).exists():
            return True
    return False


def test_site_builds_strict_and_offline(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_MKDOCS, "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    log = result.stdout + result.stderr
    assert NETWORK_MARKER not in log, f"the docs build tried to reach the network:\n{log}"
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert (tmp_path / "site" / "index.html").exists()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/ (limit {README_MAX_LINES})"


def test_readme_links_exist():
    missing = [t for t in _local_link_targets(README.read_text(encoding="utf-8")) if not (ROOT / t).exists()]
    assert not missing, f"README.md links to paths that do not exist: {missing}"


def test_layout_maps_name_existing_paths():
    for page, text in ((README, _section(README.read_text(encoding="utf-8"), "Layout")), (DOCS / "layout.md", (DOCS / "layout.md").read_text(encoding="utf-8"))):
        named = _named_paths(text)
        assert named, f"{page.name}: the layout map names no paths"
        missing = sorted(p for p in named if not _exists(p))
        assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist (renamed or removed?): {missing}"


def test_readme_layout_covers_every_top_level_module():
    layout = _section(README.read_text(encoding="utf-8"), "Layout")
    entries = sorted(p.name for p in PACKAGE.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith(("__pycache__", ".")))
    unnamed = [name for name in entries if not any(form in layout for form in (f"src/valign/{name}", f"`{name}`", f"`{name}/`"))]
    assert not unnamed, f"README.md's layout map lacks a line for: {unnamed}"


def _setting_names(model: type[BaseModel], seen: frozenset[type] = frozenset()) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate not in seen:
                names |= _setting_names(candidate, seen | {candidate})
    return names


def test_configs_page_names_every_setting():
    from valign.config import RunConfig

    page = (DOCS / "configs.md").read_text(encoding="utf-8")
    undocumented = sorted(n for n in _setting_names(RunConfig) if not re.search(rf"[`.]{re.escape(n)}[`.]", page))
    assert not undocumented, f"docs/configs.md does not explain these run-config settings: {undocumented}"
