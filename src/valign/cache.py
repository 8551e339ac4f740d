"""A content-addressed SQLite cache of completions and option probabilities.

Keys are SHA-256 digests of (model name, messages, generation settings, sample index),
built in `valign.models.base`; values are JSON. One file per run
(``runs/<name>/cache.sqlite``) so that an identical request — on a re-run, after a
crash, or from a later stage — costs no model call.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable


class CompletionCache:
    """A SQLite file of JSON values by key, shared safely by threads and processes.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as run:
        ...     cache = CompletionCache(Path(run) / "cache.sqlite")
        ...     cache.put_many([("k1", {"text": "hi"})])
        ...     cache.get_many(["k1", "k2"])
        ...     cache.close()
        {'k1': {'text': 'hi'}}
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared across threads (the server's batcher and request
        # handlers), serialised by a lock; WAL keeps readers in other processes unblocked.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._conn.commit()

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in self._conn.execute(f"SELECT key, value FROM entries WHERE key IN ({marks})", chunk):
                    out[key] = json.loads(value)
        return out

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        rows = [(k, json.dumps(v, ensure_ascii=False)) for k, v in items]
        if not rows:
            return
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)", rows)
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
