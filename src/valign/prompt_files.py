"""Prompt sets: JSONL and CSV files, and the sets shipped with valign.

A prompt row has a stable ``id`` and either ``prompt`` (a string) or ``messages`` (a
conversation ending in a user turn). Rows without an id get one from a hash of their
content, so ids stay stable when a file is re-ordered.
"""

from __future__ import annotations

import csv
import hashlib
import json
from importlib import resources
from pathlib import Path

from valign.errors import ValignError
from valign.types import Conversation, Row


def shipped_prompt_sets() -> list[str]:
    """Names of the prompt sets inside the package (``data/prompts/<name>.jsonl``)."""
    folder = resources.files("valign") / "data" / "prompts"
    return sorted(p.name.removesuffix(".jsonl") for p in folder.iterdir() if p.name.endswith(".jsonl"))


def resolve_source(source: str, base_dir: Path | None = None) -> Path:
    """A prompt source as a file: a path (relative to the config's folder or the working
    directory) or the name of a shipped set."""
    candidates = [Path(source).expanduser()]
    if base_dir is not None:
        candidates.insert(0, base_dir / source)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    shipped = resources.files("valign") / "data" / "prompts" / f"{source}.jsonl"
    if shipped.is_file():
        return Path(str(shipped))
    raise ValignError(
        f"prompt source '{source}' is neither a file nor a shipped set; "
        f"give a .jsonl/.csv path or one of: {', '.join(shipped_prompt_sets())}."
    )


def load_prompts(path: str | Path) -> list[Row]:
    """Read prompt rows from JSONL or CSV, validated, with ids.

    Example (the shipped ``demo`` set):
        >>> row = load_prompts(resolve_source("demo"))[0]
        >>> row["id"], row["kind"], row["messages"] == [{"role": "user", "content": row["prompt"]}]
        ('demo-red-01', 'red_team', True)
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            raw = [(i + 2, dict(r)) for i, r in enumerate(csv.DictReader(f))]
    else:
        raw = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValignError(f"{path} line {n} is not valid JSON ({e.msg}); fix or remove that line.") from None
                if not isinstance(obj, dict):
                    raise ValignError(f"{path} line {n} must be a JSON object with 'prompt' or 'messages'.")
                raw.append((n, obj))
    rows: list[Row] = []
    seen: set[str] = set()
    for n, obj in raw:
        row = _normalise(obj, f"{path} line {n}")
        if row["id"] in seen:
            raise ValignError(f"{path} line {n}: id '{row['id']}' appears twice; ids must be unique.")
        seen.add(row["id"])
        rows.append(row)
    if not rows:
        raise ValignError(f"{path} holds no prompts; add rows with 'prompt' or 'messages'.")
    return rows


def _normalise(obj: dict, where: str) -> Row:
    messages: Conversation
    if obj.get("messages"):
        messages = obj["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValignError(f"{where}: 'messages' must be a list of {{'role', 'content'}} with roles system/user/assistant.")
        if messages[-1]["role"] != "user":
            raise ValignError(f"{where}: the conversation must end with a user message for the model to answer.")
        prompt = messages[-1]["content"]
    elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        prompt = obj["prompt"].strip()
        messages = [{"role": "user", "content": prompt}]
    else:
        raise ValignError(f"{where}: each row needs a non-empty 'prompt' string or a 'messages' list.")
    rid = str(obj.get("id") or "") or "p-" + hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:12]
    row: Row = {k: v for k, v in obj.items() if k not in ("id", "prompt", "messages")}
    row.update({"id": rid, "prompt": prompt, "messages": messages})
    return row
