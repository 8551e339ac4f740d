"""What the report reads: a run folder, or the folder of ``valign eval``.

`load_run` finds the run's stages (``NN-<stage>`` folders, in the config's order) with
their manifests; `RunData` hands each report section the manifests and rows it asks
for, reading each stage's rows once.

Example:
    >>> StageInfo("sft", Path("runs/nowhere/03-sft"), None).status
    'not started'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valign.errors import ValignError
from valign.runs import read_rows
from valign.types import Row

if TYPE_CHECKING:
    from valign.constitution import Constitution

__all__ = ["StageInfo", "RunData", "load_run", "read_rows_loose"]

_STAGE_DIR = re.compile(r"^(\d{2})-([a-z_]+)$")


@dataclass
class StageInfo:
    """One stage folder of a run: its name, path and manifest (None while unfinished)."""

    name: str
    dir: Path
    manifest: dict[str, Any] | None

    @property
    def status(self) -> str:
        if self.manifest is not None:
            return "done"
        return "incomplete" if self.dir.exists() else "not started"


@dataclass
class RunData:
    """A run's config, stage folders, manifests and rows, as the report sections read them.

    Example:
        >>> run = RunData(Path("runs/x"), "x", None, [StageInfo("evaluate", Path("runs/x/07-evaluate"), {"suites": []})])
        >>> run.manifest("evaluate"), run.manifest("sft"), run.rows("sft")
        ({'suites': []}, None, [])
    """

    root: Path
    name: str
    config: dict[str, Any] | None
    stages: list[StageInfo]
    _rows: dict[str, list[Row]] = field(default_factory=dict, repr=False)

    def stage(self, name: str) -> StageInfo | None:
        """The stage of that name, or None when the run has none."""
        return next((s for s in self.stages if s.name == name), None)

    def manifest(self, name: str) -> dict[str, Any] | None:
        """A finished stage's manifest, or None."""
        s = self.stage(name)
        return s.manifest if s else None

    def rows(self, name: str) -> list[Row]:
        """A stage's rows (read once), or [] when it has none."""
        if name not in self._rows:
            s = self.stage(name)
            self._rows[name] = read_rows(s.dir / "rows.jsonl") if s else []
        return self._rows[name]

    def constitution(self) -> Constitution | None:
        """The constitution the run used (a stage's file when a stage wrote it), or None.

        Example:
            >>> RunData(Path("runs/x"), "x", {"constitution": "kantian"}, []).constitution().name
            'kantian'
        """
        from valign.constitution import load_constitution

        name = (self.config or {}).get("constitution") or (self.manifest("evaluate") or {}).get("constitution")
        if not name:
            return None
        stage = self.stage(name)
        try:
            return load_constitution(stage.dir / "constitution.yaml" if stage is not None else name)
        except ValignError:
            return None


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_run(path: str | Path) -> RunData:
    """Read a run folder (``config.yaml`` and ``NN-<stage>`` folders) or an evaluation
    folder written by ``valign eval`` (its own ``manifest.json``).

    Example (after ``make run``)::

        [s.name for s in load_run("runs/kantian-demo").stages][:2]   # ['respond', 'revise']
    """
    import yaml

    root = Path(path)
    if not root.is_dir():
        raise ValignError(f"{root} is not a folder; give a run folder such as runs/kantian-demo or a `valign eval --out` folder.")
    if (root / "config.yaml").is_file():
        config = yaml.safe_load((root / "config.yaml").read_text()) or {}
        found: dict[str, StageInfo] = {}
        for d in sorted(root.iterdir()):
            m = _STAGE_DIR.match(d.name)
            if d.is_dir() and m:
                found[m.group(2)] = StageInfo(m.group(2), d, _manifest(d))
        stages = []
        for i, name in enumerate(config.get("stages", []), 1):
            stages.append(found.pop(name, StageInfo(name, root / f"{i:02d}-{name}", None)))
        stages += list(found.values())  # folders of stages no longer in the config
        return RunData(root, str(config.get("name", root.name)), config, stages)
    manifest = _manifest(root)
    if manifest is not None and manifest.get("stage") == "evaluate":
        return RunData(root, root.name, None, [StageInfo("evaluate", root, manifest)])
    raise ValignError(f"{root} holds neither a run (config.yaml) nor an evaluation (manifest.json); point at runs/<name> or a `valign eval --out` folder.")

def read_rows_loose(path: Path) -> list[dict[str, Any]]:
    """JSONL entries without ids (training logs); unreadable lines are skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
