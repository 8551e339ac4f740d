"""The answer pairs a review grades: a finished evaluation's key cases, or a file of pairs.

* A run folder or a ``valign eval --out`` folder: its ``keycase`` rows (the judged
  comparisons); X is the tuned model's answer, Y the base model's.
* A JSONL file, one pair a line: ``id``, ``prompt``, ``answer_a``, ``answer_b`` and
  optionally ``model_a`` / ``model_b``; X is answer A, Y answer B (so a positive score
  means A was better).

Either way the reviewers see only "Answer A" and "Answer B", in an order drawn for
each reviewer (`valign.review.store.sides`).

Example:
    >>> p = ReviewPair("c1", "Lie for me?", "No, but…", "Sure.", "tuned", "base")
    >>> p.case_id, p.model_x
    ('c1', 'tuned')
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from valign.errors import ValignError

__all__ = ["ReviewPair", "load_pairs", "pairs_digest"]


@dataclass(frozen=True)
class ReviewPair:
    """One case to grade: X is the answer whose improvement over Y is scored."""

    case_id: str
    prompt: str
    answer_x: str
    answer_y: str
    model_x: str
    model_y: str


def _from_run(folder: Path) -> list[ReviewPair]:
    from valign.evals.rundata import load_run

    rows = [r for r in load_run(folder).rows("evaluate") if r.get("type") == "keycase"]
    if not rows:
        raise ValignError(f"{folder} has no judged key cases; run the evaluation with the keycases suite first, or give a JSONL file of pairs.")
    return [ReviewPair(str(r["case_id"]), r["prompt"], r["tuned_response"], r["base_response"], str(r.get("tuned_model", "tuned")), str(r.get("base_model", "base"))) for r in rows]


def _from_file(path: Path) -> list[ReviewPair]:
    pairs: list[ReviewPair] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValignError(f"{path} line {n} is not valid JSON; write one object per line with id, prompt, answer_a and answer_b.") from None
        missing = [k for k in ("id", "prompt", "answer_a", "answer_b") if not isinstance(rec, dict) or not isinstance(rec.get(k), (str, int)) or rec.get(k) == ""]
        if missing:
            raise ValignError(f"{path} line {n} has no {', '.join(missing)}; each line needs id, prompt, answer_a and answer_b.")
        pairs.append(ReviewPair(str(rec["id"]), str(rec["prompt"]), str(rec["answer_a"]), str(rec["answer_b"]), str(rec.get("model_a") or "a"), str(rec.get("model_b") or "b")))
    return pairs


def load_pairs(source: str | Path) -> list[ReviewPair]:
    """The pairs of a run/evaluation folder or a JSONL file, in their order there.

    Example (after ``make run``)::

        load_pairs("runs/kantian-demo")[0].case_id   # 'lottery-winnings'
    """
    path = Path(source).expanduser()
    if path.is_dir():
        pairs = _from_run(path)
    elif path.is_file():
        pairs = _from_file(path)
    else:
        raise ValignError(f"{path} does not exist; give a run folder, a `valign eval --out` folder or a JSONL file of pairs.")
    if not pairs:
        raise ValignError(f"{path} holds no pairs; add lines with id, prompt, answer_a and answer_b.")
    seen: set[str] = set()
    for p in pairs:
        if p.case_id in seen:
            raise ValignError(f"{path}: the case id '{p.case_id}' appears twice; give every pair its own id.")
        seen.add(p.case_id)
    return pairs


def pairs_digest(pairs: list[ReviewPair]) -> str:
    """SHA-256 of the pairs: which review a database holds.

    Example:
        >>> len(pairs_digest([ReviewPair("c", "p", "x", "y", "m1", "m2")]))
        64
    """
    return hashlib.sha256(json.dumps([asdict(p) for p in pairs], sort_keys=True).encode()).hexdigest()
