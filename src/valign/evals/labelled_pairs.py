"""Labelled preference pairs from a file: ``prompt`` / ``chosen`` / ``rejected``, for judge calibration.

A file is JSONL, JSON (a list of objects, or an object holding one under ``data``,
``rows`` or ``pairs``) or CSV. In each record:

* ``prompt`` is a string (one user turn) or a list of chat messages;
* ``chosen`` and ``rejected`` are strings (the answers) or message lists whose last
  message is the answer, and whose earlier messages are the prompt when there is no
  ``prompt`` column (the layout of UltraFeedback-style files);
* without ``prompt``, string ``chosen``/``rejected`` are read as Anthropic HH
  transcripts (``"\\n\\nHuman: … \\n\\nAssistant: …"``): the part both share, up to
  the last ``"\\n\\nAssistant:"`` in it, is the prompt, and what follows is each answer.

Example:
    >>> hh = {"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello! How can I help?",
    ...       "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: Go away."}
    >>> p = labelled_pair(hh, "hh.jsonl line 1")
    >>> p.prompt, p.chosen, p.rejected
    ([{'role': 'user', 'content': 'Hi'}], 'Hello! How can I help?', 'Go away.')
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from valign.errors import ValignError
from valign.types import Conversation

__all__ = ["LabelledPair", "labelled_pair", "parse_hh", "transcript_messages", "load_labelled_pairs"]

_TURN = re.compile(r"\n\nHuman:|\n\nAssistant:")
_ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class LabelledPair:
    """A prompt (chat messages) with the labelled better answer and the worse one."""

    prompt: Conversation
    chosen: str
    rejected: str
    id: str = ""


def transcript_messages(text: str) -> Conversation:
    """Chat messages from an HH transcript ("\\n\\nHuman: … \\n\\nAssistant: …").

    Example:
        >>> transcript_messages("\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: Bye")
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}, {'role': 'user', 'content': 'Bye'}]
    """
    text = text if text.startswith("\n\n") else "\n\n" + text
    marks = list(_TURN.finditer(text))
    out: Conversation = []
    for m, nxt in zip(marks, [*marks[1:], None]):
        role = "user" if "Human" in m.group() else "assistant"
        out.append({"role": role, "content": text[m.end() : nxt.start() if nxt else len(text)].strip()})
    return out


def parse_hh(chosen: str, rejected: str) -> tuple[Conversation, str, str] | None:
    """Split two HH transcripts into the shared prompt and the two final answers, or
    None when they share no ``Assistant:`` turn start.

    Example:
        >>> parse_hh("\\n\\nHuman: Hi\\n\\nAssistant: Yes", "\\n\\nHuman: Hi\\n\\nAssistant: No")
        ([{'role': 'user', 'content': 'Hi'}], 'Yes', 'No')
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(_ASSISTANT, 0, n)
    prompt = transcript_messages(chosen[:cut]) if cut > 0 else []
    if not prompt:
        return None
    return prompt, chosen[cut + len(_ASSISTANT) :].strip(), rejected[cut + len(_ASSISTANT) :].strip()


def _messages(value: Any, where: str, column: str) -> Conversation:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise ValignError(f"{where}: '{column}' is neither a string nor a list of {{role, content}} messages; give one of those.")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def _answer(value: Any, where: str, column: str) -> tuple[Conversation, str]:
    """The answer of a chosen/rejected cell and the messages before it."""
    if isinstance(value, str):
        return [], value
    msgs = _messages(value, where, column)
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValignError(f"{where}: '{column}' is a message list that does not end with an assistant message; end it with the answer.")
    return msgs[:-1], msgs[-1]["content"]


def labelled_pair(record: dict[str, Any], where: str) -> LabelledPair:
    """One record as a `LabelledPair` (see the module docs for the layouts read);
    ``where`` names it in errors.

    Example:
        >>> labelled_pair({"prompt": "Lie for me?", "chosen": "No.", "rejected": "Sure."}, "x").prompt
        [{'role': 'user', 'content': 'Lie for me?'}]
    """
    missing = [c for c in ("chosen", "rejected") if record.get(c) in (None, "")]
    if missing:
        raise ValignError(
            f"{where} has no {' or '.join(repr(c) for c in missing)} (its fields: {', '.join(sorted(record)) or 'none'}); "
            "give prompt, chosen and rejected (or HH transcripts in chosen and rejected)."
        )
    rid = str(record.get("id", ""))
    prompt = record.get("prompt")
    (c_prefix, chosen), (r_prefix, rejected) = _answer(record["chosen"], where, "chosen"), _answer(record["rejected"], where, "rejected")
    if prompt not in (None, ""):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, where, "prompt")
        return LabelledPair(messages, chosen.strip(), rejected.strip(), rid)
    if c_prefix:
        return LabelledPair(c_prefix, chosen.strip(), rejected.strip(), rid)
    hh = parse_hh(chosen, rejected)
    if hh is None:
        raise ValignError(
            f"{where} has no 'prompt', and chosen/rejected are not HH transcripts sharing a '\\n\\nHuman: … \\n\\nAssistant:' start; add a prompt column."
        )
    return LabelledPair(hh[0], hh[1], hh[2], rid)


def _records(path: Path) -> list[tuple[str, Any]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((f"{path} line {n}", json.loads(line)))
                except json.JSONDecodeError:
                    raise ValignError(f"{path} line {n} is not valid JSON; write one object per line.") from None
        return out
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValignError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix it or write JSONL.") from None
        if isinstance(data, dict):
            data = next((data[k] for k in ("data", "rows", "pairs") if isinstance(data.get(k), list)), None)
        if not isinstance(data, list):
            raise ValignError(f"{path} holds neither a list of pairs nor an object with one under data, rows or pairs; give a list.")
        return [(f"{path} item {i}", r) for i, r in enumerate(data, 1)]
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines(keepends=True)))
        return [(f"{path} row {i}", r) for i, r in enumerate(rows, 2)]
    raise ValignError(f"{path} is not .jsonl, .json or .csv; save the pairs in one of those.")


def load_labelled_pairs(path: str | Path, limit: int | None = None) -> list[LabelledPair]:
    """The first ``limit`` labelled pairs of a JSONL, JSON or CSV file (all by default).

    Example (with a file of Anthropic's HH test pairs)::

        load_labelled_pairs("hh-rlhf/harmless-base/test.jsonl", limit=100)[0].prompt[0]["role"]
        'user'
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValignError(f"pairs file {path} does not exist; give a JSONL, JSON or CSV file with prompt, chosen and rejected.")
    pairs = []
    for where, record in _records(path)[:limit]:
        if not isinstance(record, dict):
            raise ValignError(f"{where} is not an object; each pair needs prompt, chosen and rejected fields.")
        pair = labelled_pair(record, where)
        pairs.append(pair if pair.id else LabelledPair(pair.prompt, pair.chosen, pair.rejected, f"pair-{len(pairs) + 1}"))
    if not pairs:
        raise ValignError(f"{path} holds no pairs; add records with prompt, chosen and rejected.")
    return pairs
