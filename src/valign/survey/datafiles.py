"""Reading the YAML data files valign ships (instruments, margins, …) or a user's own.

A name such as ``demo`` means the file shipped in ``valign/data/<folder>``; anything
that exists on disk is read as a path. Every mistake is one `ValignError` naming the
file and the fix.

Example:
    >>> read_data_yaml("nz-census-2023", "margins", "margins")[1]["variables"]["sex"]["categories"]
    {'female': 0.51, 'male': 0.49}
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from valign.errors import ValignError

__all__ = ["shipped_names", "read_data_yaml"]


def shipped_names(folder: str) -> list[str]:
    """Names of the YAML files shipped in ``valign/data/<folder>`` (without the suffix).

    Example:
        >>> shipped_names("instruments")
        ['demo']
    """
    root = resources.files("valign") / "data" / folder
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def read_data_yaml(name_or_path: str | Path, folder: str, what: str) -> tuple[Path, Any]:
    """Read a YAML file given as a path or as the name of one shipped in ``valign/data/<folder>``.

    A missing file or broken YAML is one `ValignError` naming the file and the fix.

    Example:
        >>> read_data_yaml("demo", "instruments", "instrument")[1]["id"]
        'valign-demo'
    """
    path = Path(name_or_path)
    if not path.exists():
        name = str(name_or_path)
        shipped = shipped_names(folder)
        if name not in shipped:
            raise ValignError(f"{what} '{name_or_path}' is neither a file nor a shipped {what} ({', '.join(shipped)}); check the path.")
        path = Path(str(resources.files("valign") / "data" / folder / f"{name}.yaml"))
    try:
        return path, yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValignError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}; fix the syntax there.") from None
