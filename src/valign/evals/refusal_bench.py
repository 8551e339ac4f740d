"""``valign bench refusal``: a refusal classifier measured against labelled answers.

Every refusal number valign reports comes from a classifier, so the classifier is a
measured instrument: this reads labelled answers (`valign.evals.labelled_answers`),
classifies them all in one batch, and scores the verdicts — precision, recall,
accuracy and F1 of *refusal* (partial or full) against not, and for three-class
labels the three-class accuracy and confusion matrix. XSTest's plain prefix matcher
(`valign.evals.refusal_baseline`) is scored on the same answers in the same run, and
the ratios say how far the classifier is ahead or behind.

Example:
    >>> result = bench_refusal(show=False)
    >>> result["classifier"]["spec"], result["classifier"]["recall"] >= result["baseline"]["recall"]
    ('rules', True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from valign.errors import ValignError
from valign.evals.classifiers.base import LABELS, Exchange, Label
from valign.evals.labelled_answers import LabelledSet, load_labelled
from valign.evals.refusal_baseline import prefix_label

__all__ = ["Scores", "score", "bench_refusal", "BASELINE"]

BASELINE = "prefix (XSTest)"


@dataclass(frozen=True)
class Scores:
    """Binary counts (refusal is the positive class) and, for three-class gold labels,
    the confusion matrix ``confusion[gold][predicted]``.

    Example:
        >>> s = score([True, True, False, False], [True, False, False, True])
        >>> s.precision, s.recall, s.accuracy
        (0.5, 0.5, 0.5)
    """

    tp: int
    fp: int
    fn: int
    tn: int
    confusion: dict[str, dict[str, int]] | None = None

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def three_class_accuracy(self) -> float | None:
        if self.confusion is None:
            return None
        total = sum(sum(row.values()) for row in self.confusion.values())
        return sum(self.confusion[c][c] for c in LABELS) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                               "precision": self.precision, "recall": self.recall, "accuracy": self.accuracy, "f1": self.f1}
        if self.confusion is not None:
            out["three_class_accuracy"] = self.three_class_accuracy
            out["confusion"] = self.confusion
        return out


def score(gold: Sequence[bool], predicted: Sequence[bool], gold_labels: Sequence[Label] | None = None,
          predicted_labels: Sequence[Label] | None = None) -> Scores:
    """Count agreements; the confusion matrix only when both label sequences are given."""
    tp = sum(g and p for g, p in zip(gold, predicted))
    fp = sum(p and not g for g, p in zip(gold, predicted))
    fn = sum(g and not p for g, p in zip(gold, predicted))
    tn = sum(not g and not p for g, p in zip(gold, predicted))
    confusion = None
    if gold_labels is not None and predicted_labels is not None:
        confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
        for g, p in zip(gold_labels, predicted_labels):
            confusion[g][p] += 1
    return Scores(tp, fp, fn, tn, confusion)


def _load(spec: str, mode: str) -> Any:
    from valign.evals.classifiers import ClassifierConfig, classifier_forms, load_classifier

    if mode not in ("generative", "logprob"):
        raise ValignError(f"unknown --mode {mode!r}; use generative or logprob.")
    try:
        cfg = ClassifierConfig(spec=spec, mode=mode)  # type: ignore[arg-type]
    except ValidationError as e:
        why = str(e.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ValignError(f"--classifier: {why}.") from None
    try:
        return load_classifier(cfg)
    except ModuleNotFoundError as e:
        # A backend listed in the registry whose module this install lacks.
        if not (e.name or "").startswith("valign.evals.classifiers."):
            raise
        raise ValignError(f"--classifier {spec!r}: this valign has no {e.name} backend; the classifiers are {classifier_forms()}.") from None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    return f"{a / b:.2f}×" if b else ("=" if a == 0 else "∞")


def _print(result: dict[str, Any], data: LabelledSet, errors: list[dict[str, Any]] | None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    c, b = result["classifier"], result["baseline"]
    cols = result["columns"]
    console.print(escape(f"{result['n']} labelled answers from {result['source']} ({result['refusals']} refusals; "
                         f"text column {cols['text']!r}, label column {cols['label']!r}, refusal = {', '.join(result['refusal_values'])})"))
    table = Table(title=f"valign bench refusal: {c['spec']} against the prefix baseline")
    metrics = [("precision", "precision"), ("recall", "recall"), ("accuracy", "accuracy"), ("F1", "f1")]
    if data.three_class:
        metrics.append(("3-class accuracy", "three_class_accuracy"))
    table.add_column("")
    for name, _ in metrics:
        table.add_column(name, justify="right")
    table.add_row(escape(c["spec"]), *(f"{c[k]:.3f}" for _, k in metrics))
    table.add_row(BASELINE, *(f"{b[k]:.3f}" for _, k in metrics))
    table.add_row(f"{escape(c['spec'])} / baseline", *(_ratio(c[k], b[k]) for _, k in metrics))
    console.print(table)
    if data.three_class:
        conf = Table(title=f"{c['spec']}: gold (rows) against predicted (columns)")
        conf.add_column("gold \\ predicted")
        for label in LABELS:
            conf.add_column(label, justify="right")
        for gold in LABELS:
            conf.add_row(gold, *(str(c["confusion"][gold][p]) for p in LABELS))
        console.print(conf)
    if errors is not None:
        console.print(f"{len(errors)} misread by {escape(c['spec'])}:" if errors else f"no answer misread by {escape(c['spec'])}.")
        for e in errors:
            text = " ".join(e["text"].split())
            console.print(escape(f"  [{e['gold']} → {e['predicted']}] ({e['rule'] or 'no rule'}) {text[:160]}{'…' if len(text) > 160 else ''}"))


def bench_refusal(
    classifier: str = "rules",
    mode: str = "generative",
    data: Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    prompt_column: str | None = None,
    refusal_labels: Sequence[str] | None = None,
    limit: int | None = None,
    show_errors: bool = False,
    json_out: Path | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Score ``classifier`` (a spec of `valign.evals.classifiers.registry`) and the prefix
    baseline on labelled answers; print the figures (unless ``show`` is False), write
    them to ``json_out`` if given, and return them."""
    labelled = load_labelled(data, text_column=text_column, label_column=label_column, prompt_column=prompt_column, refusal_labels=refusal_labels)
    rows = labelled.rows[:limit] if limit else labelled.rows
    if not any(r.refusal for r in rows):
        raise ValignError(f"the first {len(rows)} answers of {labelled.source} hold no refusal; raise --limit.")
    clf = _load(classifier, mode)
    readings = clf.classify([Exchange(r.prompt, r.text) for r in rows])
    base = [prefix_label(r.text) for r in rows]
    gold = [r.refusal for r in rows]
    gold_labels = [r.label for r in rows] if labelled.three_class else None
    ours = score(gold, [c.refused for c in readings], gold_labels, [c.label for c in readings] if gold_labels else None)  # type: ignore[arg-type]
    theirs = score(gold, [b != "compliance" for b in base], gold_labels, base if gold_labels else None)  # type: ignore[arg-type]
    result: dict[str, Any] = {
        "source": labelled.source, "n": len(rows), "refusals": sum(gold), "columns": labelled.columns,
        "refusal_labels": list(labelled.refusal_labels), "three_class": labelled.three_class,
        "refusal_values": sorted({r.raw_label for r in rows if r.refusal}),
        "classifier": {"spec": clf.spec, "mode": mode, **ours.to_dict()},
        "baseline": {"spec": "prefix", **theirs.to_dict()},
    }
    errors = []
    for r, c in zip(rows, readings):
        gold_name = r.label if r.label else ("refusal" if r.refusal else "not refusal")
        got = c.label if r.label else ("refusal" if c.refused else "not refusal")
        if gold_name != got:
            errors.append({"prompt": r.prompt, "text": r.text, "gold": gold_name, "predicted": got, "rule": c.rule})
    result["errors"] = errors
    if show:
        _print(result, labelled, errors if show_errors else None)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result
