"""Run folders and the artifacts that make every stage resumable.

```
runs/<name>/config.yaml                 the resolved config
runs/<name>/cache.sqlite                completion cache
runs/<name>/<NN>-<stage>/started.json   the fingerprint the rows below belong to
runs/<name>/<NN>-<stage>/rows.jsonl     appended per batch, flushed and fsynced
runs/<name>/<NN>-<stage>/manifest.json  written last: the stage is done
```

A stage is done when its manifest's fingerprint matches; a stage with rows but no
manifest resumes from the ids already written; rows from another fingerprint are
discarded, since they answer a different question.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from valign.types import Row

FORMAT_VERSION = 1  # bump when a stage's row format changes incompatibly


def fingerprint(stage: str, config: Any, inputs: dict[str, str], templates: dict[str, str] | None = None) -> str:
    """Hash of everything that determines a stage's output.

    Example:
        >>> fp = fingerprint("respond", {"gen": {"temperature": 0.7}}, inputs={})
        >>> len(fp), fp == fingerprint("respond", {"gen": {"temperature": 0.7}}, inputs={})
        (64, True)
        >>> fp == fingerprint("respond", {"gen": {"temperature": 0.8}}, inputs={})
        False
    """
    payload = {
        "format": FORMAT_VERSION,
        "stage": stage,
        "config": config,
        "inputs": dict(sorted(inputs.items())),
        "templates": dict(sorted((templates or {}).items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _fsync_write(path: Path, text: str) -> None:
    """Write a small file atomically: temp file (named for this process, so two writers
    can never share one), fsync, rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RowLog:
    """An append-only JSONL file of rows with unique ids, safe against ``kill -9``.

    Each `append` writes whole lines, flushes and fsyncs before returning. On open, a
    torn last line (the process died mid-write) is cut off, so the file always holds
    complete rows only.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as run:
        ...     log = RowLog(Path(run) / "01-respond" / "rows.jsonl")
        ...     log.append([{"id": "p1", "response": "…"}]), log.append([{"id": "p1", "response": "again"}])
        ...     RowLog(log.path).ids                  # what a resumed stage finds
        (1, 0)
        {'p1'}
    """

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.ids: set[str] = set()
        # Only one process writes a run folder; in the others (several training processes)
        # `append` counts rows without writing them.
        self.writer = writer
        self._repair_and_index()

    def _repair_and_index(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and self.writer:  # torn tail from a killed writer
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        for line in data[:end].splitlines():
            if line.strip():
                self.ids.add(json.loads(line)["id"])

    def append(self, rows: Iterable[Row]) -> int:
        fresh = []
        for row in rows:
            if "id" not in row:
                raise ValueError("every row needs an 'id'")
            if row["id"] in self.ids:
                continue  # written before a crash; never duplicate
            self.ids.add(row["id"])
            fresh.append(json.dumps(row, ensure_ascii=False))
        if fresh and self.writer:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(fresh) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return len(fresh)

    def __iter__(self) -> Iterator[Row]:
        return iter(read_rows(self.path))

    def __len__(self) -> int:
        return len(self.ids)


def read_rows(path: str | Path) -> list[Row]:
    """All complete rows of a JSONL file."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                rows.append(json.loads(line))
    return rows


class StageDir:
    """One stage's folder: its rows, its start marker and its manifest."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def rows_path(self) -> Path:
        return self.path / "rows.jsonl"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def is_done(self, fp: str) -> bool:
        m = self.manifest()
        return m is not None and m.get("fingerprint") == fp

    def begin(self, fp: str) -> RowLog:
        """Open the stage for (re)starting under fingerprint `fp`, keeping rows only
        if they were written under the same fingerprint (the rest is set aside)."""
        started = self.path / "started.json"
        previous = json.loads(started.read_text()).get("fingerprint") if started.exists() else None
        if previous != fp or self.manifest_path.exists():
            self.reset()  # removes started.json too
        self.path.mkdir(parents=True, exist_ok=True)
        if not started.exists():
            _fsync_write(started, json.dumps({"fingerprint": fp, "started": time.time()}))
        return RowLog(self.rows_path)

    @property
    def set_aside_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.replaced")

    def reset(self) -> None:
        """Start the stage afresh. What it held (rows, manifest, adapter) is set aside, not
        deleted, until the new attempt has done some work (`discard_set_aside`): a stage
        that refuses before doing anything — an unreachable server, a missing package —
        gets its finished predecessor back (`restore_if_idle`)."""
        import shutil

        if not self.path.exists():
            return
        if self.set_aside_path.exists():
            if self._did_work():
                shutil.rmtree(self.set_aside_path)  # the attempt that replaced it had already written
            else:
                shutil.rmtree(self.path)  # an idle attempt: keep the finished stage set aside
        if self.path.exists():
            os.replace(self.path, self.set_aside_path)

    def _did_work(self) -> bool:
        """Whether the current attempt wrote anything but its start marker."""
        return self.path.exists() and any(p.name != "started.json" for p in self.path.iterdir())

    def restore_if_idle(self) -> bool:
        """After a failed attempt: put the set-aside stage back if the attempt wrote
        nothing. Returns whether it did."""
        import shutil

        if not self.set_aside_path.exists() or self._did_work():
            return False
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.set_aside_path, self.path)
        return True

    def discard_set_aside(self) -> None:
        """After a finished attempt: the replaced stage is no longer needed."""
        import shutil

        if self.set_aside_path.exists():
            shutil.rmtree(self.set_aside_path)

    def finish(self, fp: str, info: dict[str, Any]) -> dict[str, Any]:
        manifest = {"fingerprint": fp, **info, "versions": package_versions(), "finished": time.time()}
        _fsync_write(self.manifest_path, json.dumps(manifest, indent=2, default=str))
        return manifest


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("valign", "torch", "transformers", "peft", "trl", "openai"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
