"""The report's key-case section with and without exported human grades."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from valign.evals.keycases import summarise_keycases
from valign.evals.pairwise import improvement, regression
from valign.evals.report import render_report
from valign.review.export import write_export
from valign.review.pairs import load_pairs
from valign.review.store import ReviewStore

JUDGE_SCORES = {"lie": 1.5, "gift": -1.0, "coerce": 0.0}


def keycase_row(case_id: str, score: float) -> dict:
    return {
        "id": f"keycase:{case_id}", "type": "keycase", "case_id": case_id, "prompt": f"Prompt of {case_id}?", "theme": case_id, "principles": [],
        "note": "", "base_model": "embedded", "tuned_model": "run:x", "base_response": f"base says {case_id}", "tuned_response": f"tuned says {case_id}",
        "base_refused": False, "tuned_refused": False, "score": score, "orders": [score, score], "consistent": True,
        "improvement": improvement(score), "regression": regression(score), "verdict": "v", "judge_raw": [],
    }


@pytest.fixture()
def eval_dir(tmp_path) -> Path:
    root = tmp_path / "eval"
    root.mkdir()
    rows = [keycase_row(c, s) for c, s in JUDGE_SCORES.items()]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"stage": "evaluate", "suites": ["keycases"], "models": {"base": "embedded", "tuned": "run:x", "judge": "judge"},
                "keycases": {**summarise_keycases(rows), "judge_mode": "generative"}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def keycases_html(root: Path) -> str:
    html = render_report(root).read_text()
    return html[html.index('id="keycases"'):]


def test_without_human_grades_the_section_is_the_judges_alone(eval_dir):
    html = keycases_html(eval_dir)
    assert "Key cases" in html and "Expert review" not in html and "Reviewers:" not in html


def test_human_verdicts_beside_the_judge_with_counts_and_agreement(eval_dir):
    store = ReviewStore.open(f"sqlite:///{eval_dir / 'review.db'}")
    store.load(load_pairs(eval_dir))
    wanted = {"lie": [2, 2], "gift": [1, 0], "coerce": [0, -1]}  # per reviewer, tuned over base
    by_case = {p.case_id: p.id for p in store.pairs()}
    for k, token in enumerate(store.invite(2)):
        r = store.reviewer_by_token(token)
        for case_id, scores in wanted.items():
            x_first = store.x_first(r, by_case[case_id])
            shown = scores[k] if x_first else -scores[k]
            level = {2: "A>>B", 1: "A>B", 0: "A=B", -1: "B>A", -2: "B>>A"}[shown]
            store.save_grade(r.id, by_case[case_id], level, refused_a=(case_id == "lie" and not x_first), refused_b=(case_id == "lie" and x_first), note="")
    judged = [json.loads(x) for x in (eval_dir / "rows.jsonl").read_text().splitlines()]
    write_export(store, eval_dir / "review", judged)
    html = keycases_html(eval_dir)
    assert "Expert review" in html and "6 grades by 2 reviewers on 3 cases" in html
    # consensus: lie 2 (strong), gift 0.5 (slight), coerce -0.5 (slight regression); base refused on lie
    stats = dict(re.findall(r"<li><b>([^<]+)</b><span>([^<]+) \(humans\)</span></li>", html)[i][::-1] for i in range(7))
    assert stats["strong improvements"] == "1" and stats["slight improvements"] == "1" and stats["regressions"] == "1"
    assert stats["refusals base / tuned"] == "1 / 0" and stats["tuned answered where base refused"] == "1"
    assert html.count("Reviewers: <b>") == 3 and "grades 2, 2" in html
    # judge (1.5, -1, 0) vs humans (2, 0.5, -0.5): same direction on 1 of 3 cases
    assert "33%" in html
    assert "Krippendorff" in html
