"""The expert review: pairs, invitations, blinded pages, CSRF, grades, export, verdicts, CLI.

The pages are driven over HTTP with Starlette's test client (a real ASGI app on a
SQLite file, and on PostgreSQL in the ``postgres`` lane); the browser flow is in
tests/test_review_browser.py.
"""

from __future__ import annotations

import csv
import json
import re

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from valign.errors import ValignError
from valign.evals.labelled_pairs import load_labelled_pairs
from valign.review.app import create_app
from valign.review.export import write_export
from valign.review.pairs import ReviewPair, load_pairs
from valign.review.store import ReviewStore, sides
from valign.review.verdicts import human_summary

MODEL_X, MODEL_Y = "runs/kantian-demo/lora-tuned-xq7", "HuggingFaceTB/SmolLM2-base-zz9"
PAIRS = [
    ReviewPair(f"case-{i}", f"Prompt number {i}: may I lie?", f"Careful reply {i}: no, because…", f"Short reply {i}: I cannot help.", MODEL_X, MODEL_Y)
    for i in range(1, 5)
]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.fixture()
def store(db_url) -> ReviewStore:
    """The review's store on a SQLite file, then (marked ``postgres``) on PostgreSQL."""
    s = ReviewStore.open(db_url)
    s.load(PAIRS)
    yield s
    s.db.engine.dispose()


@pytest.fixture()
def client(store) -> TestClient:
    return TestClient(create_app(store, secret="review-secret-" + "x" * 20), follow_redirects=False)


def sign_in(client: TestClient, token: str) -> None:
    r = client.get(f"/i/{token}")
    assert r.status_code == 303 and r.headers["location"] == "/next"


def shown_answers(html: str) -> tuple[str, str]:
    a = re.search(r'id="answer-a-heading">Answer A</h2>\s*<div class="text">([^<]*)</div>', html).group(1)
    b = re.search(r'id="answer-b-heading">Answer B</h2>\s*<div class="text">([^<]*)</div>', html).group(1)
    return a, b


def test_loading_pairs_is_once_per_database(store):
    assert store.load(PAIRS) == 4  # the same pairs again: nothing changes
    assert len(store.pairs()) == 4
    with pytest.raises(ValignError, match="other pairs; give another --db"):
        store.load(PAIRS[:2])


def test_pairs_from_a_jsonl_file_and_their_errors(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"id": "p1", "prompt": "Q", "answer_a": "x", "answer_b": "y", "model_a": "m1"}) + "\n")
    assert load_pairs(f) == [ReviewPair("p1", "Q", "x", "y", "m1", "b")]
    f.write_text(json.dumps({"id": "p1", "prompt": "Q", "answer_a": "x"}) + "\n")
    with pytest.raises(ValignError, match="line 1 has no answer_b"):
        load_pairs(f)
    with pytest.raises(ValignError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")


def test_pairs_from_an_evaluation_folder(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "evaluate"}))
    row = {"id": "keycase:c1", "type": "keycase", "case_id": "c1", "prompt": "P", "tuned_response": "T", "base_response": "B", "tuned_model": "t", "base_model": "b", "score": 1.0}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({"type": "keycase_answer", "case_id": "c1"}) + "\n")
    assert load_pairs(tmp_path) == [ReviewPair("c1", "P", "T", "B", "t", "b")]


def test_order_and_sides_are_random_per_reviewer_and_stable(store):
    tokens = store.invite(12)
    reviewers = [store.reviewer_by_token(t) for t in tokens]
    orders = {tuple(store.order(r)) for r in reviewers}
    firsts = {tuple(store.x_first(r, p.id) for p in store.pairs()) for r in reviewers}
    assert len(orders) > 1 and len(firsts) > 1  # 12 reviewers, 24 orders and 16 side patterns possible
    r = reviewers[0]
    assert store.order(r) == sides(r.seed, [p.id for p in store.pairs()])[0] == store.order(store.reviewer(r.public_id))


def test_invitation_required_and_bad_links_refused(client):
    assert client.get("/").status_code == 403
    assert "invited reviewers only" in client.get("/case/1").text
    r = client.get("/i/not-a-real-token")
    assert r.status_code == 404 and "invitation link is not valid" in r.text


def test_grade_all_cases_blind_resume_and_finish(store, client):
    token = store.invite(1)[0]
    sign_in(client, token)
    assert client.get("/next").headers["location"] == "/case/1"
    page = client.get("/case/1")
    assert page.status_code == 200 and "Case 1 of 4 (0 graded)" in page.text
    reviewer = store.reviewer_by_token(token)
    pairs = {p.id: p for p in store.pairs()}
    seen_sides = []
    for n, pid in enumerate(store.order(reviewer), 1):
        page = client.get(f"/case/{n}")
        html = page.text
        # blinding: no model name, no role word; the answers as drawn for this reviewer
        for word in (MODEL_X, MODEL_Y, "tuned", "base", "lora", "SmolLM2"):
            assert word.lower() not in html.lower(), word
        a, b = shown_answers(html)
        x_first = store.x_first(reviewer, pid)
        assert (a, b) == ((pairs[pid].answer_x, pairs[pid].answer_y) if x_first else (pairs[pid].answer_y, pairs[pid].answer_x))
        seen_sides.append(x_first)
        form = {"csrf": csrf_of(html), "level": "A>B", "refused_b": "yes", "note": f"note {n}"}
        r = client.post(f"/case/{n}", data=form)
        assert r.status_code == 303 and r.headers["location"] == "/next"
        if n == 2:  # stop here and resume in a fresh browser with the same link
            client.cookies.clear()
            sign_in(client, token)
            assert client.get("/next").headers["location"] == "/case/3"
            assert "Case 3 of 4 (2 graded)" in client.get("/case/3").text
    assert client.get("/next").headers["location"] == "/done"
    assert "graded all 4 cases" in client.get("/done").text
    grades = {g.pair_id: g for g, _, _ in store.all_grades()}
    for pid, g in grades.items():
        # "A > B" means X better when X was A, else Y better; refusals follow the sides
        assert g.level == "A>B" and g.score_x == (1 if g.x_first else -1)
        assert (g.refused_x, g.refused_y) == ((False, True) if g.x_first else (True, False))
    # a saved grade shows again, in the page's own terms
    page = client.get("/case/1").text
    assert re.search(r'value="A&gt;B" checked', page) and 'id="refused-b" name="refused_b" value="yes" checked' in page and "note 1" in page


def test_revising_a_grade_keeps_its_recorded_side(store, client):
    token = store.invite(1)[0]
    sign_in(client, token)
    html = client.get("/case/1").text
    client.post("/case/1", data={"csrf": csrf_of(html), "level": "A>>B"})
    (g1, _, _), = store.all_grades()
    client.post("/case/1", data={"csrf": csrf_of(html), "level": "B>>A"})
    (g2, _, _), = store.all_grades()
    assert g1.x_first == g2.x_first and g2.score_x == -g1.score_x and abs(g2.score_x) == 2


def test_missing_level_is_shown_again_with_the_answers_kept(store, client):
    sign_in(client, store.invite(1)[0])
    html = client.get("/case/1").text
    r = client.post("/case/1", data={"csrf": csrf_of(html), "refused_a": "yes", "note": "half done"})
    assert r.status_code == 200 and "Choose which answer is better" in r.text and "half done" in r.text
    assert 'id="refused-a" name="refused_a" value="yes" checked' in r.text
    assert store.all_grades() == []
    r = client.post("/case/1", data={"csrf": csrf_of(html), "level": "A>>>B"})
    assert "Choose which answer is better" in r.text and store.all_grades() == []


def test_csrf_and_cookie_checks(store, client):
    sign_in(client, store.invite(1)[0])
    html = client.get("/case/1").text
    assert client.post("/case/1", data={"level": "A=B"}).status_code == 403
    assert client.post("/case/1", data={"csrf": "forged", "level": "A=B"}).status_code == 403
    # another reviewer's token does not work in this session
    other = TestClient(client.app, follow_redirects=False)
    sign_in(other, store.invite(1)[0])
    assert other.post("/case/1", data={"csrf": csrf_of(html), "level": "A=B"}).status_code == 403
    # no cookie at all: refused before the form is read
    bare = TestClient(client.app, follow_redirects=False)
    r = bare.post("/case/1", data={"csrf": csrf_of(html), "level": "A=B"})
    assert r.status_code == 403 and "session cookie" in r.text
    assert store.all_grades() == []
    assert client.post("/case/1", data={"csrf": csrf_of(html), "level": "A=B"}).status_code == 303


def test_pages_carry_security_headers_and_unknown_cases_are_404(store, client):
    sign_in(client, store.invite(1)[0])
    r = client.get("/case/1")
    assert "default-src 'none'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    assert "<script" not in r.text
    assert client.get("/case/9").status_code == 404 and client.get("/case/abc").status_code == 404
    assert client.get("/static/review.css").headers["content-type"].startswith("text/css")


def grade_all(store: ReviewStore, reviewer_token: str, scores_for_x: dict[str, int], refused_y: set[str] = frozenset()) -> None:
    r = store.reviewer_by_token(reviewer_token)
    by_case = {p.case_id: p.id for p in store.pairs()}
    for case_id, score in scores_for_x.items():
        pid = by_case[case_id]
        x_first = store.x_first(r, pid)
        shown = score if x_first else -score
        level = {2: "A>>B", 1: "A>B", 0: "A=B", -1: "B>A", -2: "B>>A"}[shown]
        refused_x_side = case_id in refused_y
        store.save_grade(r.id, pid, level, refused_a=refused_x_side and not x_first, refused_b=refused_x_side and x_first, note="")


def test_export_files_summary_and_judge_calibration_pairs(store, tmp_path):
    t1, t2, t3 = store.invite(3)
    grade_all(store, t1, {"case-1": 2, "case-2": 1, "case-3": 0, "case-4": -1}, refused_y={"case-1"})
    grade_all(store, t2, {"case-1": 2, "case-2": 0, "case-3": 0, "case-4": -2}, refused_y={"case-1"})
    grade_all(store, t3, {"case-1": 1, "case-2": 1}, refused_y=set())
    judge = [{"case_id": "case-1", "score": 1.5}, {"case_id": "case-2", "score": -0.5}, {"case_id": "case-3", "score": 0.0}, {"case_id": "case-4", "score": -1.0}]
    summary = write_export(store, tmp_path / "out", judge)
    lines = [json.loads(x) for x in (tmp_path / "out" / "grades.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and {x["reviewer"] for x in lines} == {store.reviewer_by_token(t).public_id for t in (t1, t2, t3)}
    assert not any(t in (tmp_path / "out" / "grades.jsonl").read_text() for t in (t1, t2, t3))
    rows = list(csv.DictReader((tmp_path / "out" / "grades.csv").open()))
    assert len(rows) == 10 and set(rows[0]) >= {"case_id", "reviewer", "score_x", "x_first", "level_shown"}
    # consensus: case-1 median(2,2,1)=2 strong; case-2 median(1,0,1)=1 moderate; case-3 0 tie; case-4 median(-1,-2)=-1.5 strong regression
    c = summary["counts"]
    assert c["improved"] == {"strong": 1, "moderate": 1, "slight": 0} and c["regressed"] == {"strong": 1, "moderate": 0, "slight": 0}
    assert c["ties"] == 1 and c["base_refused"] == 1 and c["tuned_answered_where_base_refused"] == 1 and c["tuned_refused"] == 0
    # judge vs consensus (2, 1, 0, -1.5): directions agree on 1, 3, 4 of 4
    assert summary["judge"]["cases"] == 4 and summary["judge"]["same_direction"] == 0.75
    pairs = load_labelled_pairs(tmp_path / "out" / "human_pairs.jsonl")
    assert [p.id for p in pairs] == ["case-1", "case-2", "case-4"]  # the tie is left out
    assert pairs[0].chosen.startswith("Careful reply 1") and pairs[2].chosen.startswith("Short reply 4")


def test_summary_alpha_is_krippendorffs_ordinal_on_the_reviewers():
    from valign.review.agreement import krippendorff_alpha

    grades = [{"case_id": c, "reviewer": r, "score_x": s, "refused_x": False, "refused_y": False} for c, r, s in
              [("a", "r1", 2), ("a", "r2", 1), ("b", "r1", -1), ("b", "r2", -1), ("c", "r1", 0), ("c", "r2", 1)]]
    s = human_summary(grades)
    assert s["alpha_ordinal"] == round(krippendorff_alpha([[2, 1], [-1, -1], [0, 1]], "ordinal"), 4)
    assert s["judge"]["cases"] == 0 and s["multiply_graded"] == 3


def test_cli_invite_and_export(tmp_path):
    from valign.cli import app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "Q", "answer_a": "x", "answer_b": "y"}) + "\n" for i in range(2)))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    ReviewStore.open(db).load(load_pairs(pairs))
    runner = CliRunner()
    r = runner.invoke(app, ["review", "invite", "--db", db, "--n", "2", "--url", "https://review.example.org/"])
    assert r.exit_code == 0, r.output
    links = r.output.split()
    assert len(links) == 2 and all(re.fullmatch(r"https://review\.example\.org/i/[\w-]{43}", x) for x in links)
    store = ReviewStore.open(db)
    grade_all(store, links[0].rsplit("/", 1)[1], {"p0": 1, "p1": -2})
    r = runner.invoke(app, ["review", "export", "--db", db, "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    assert "wrote 2 grades by 1 reviewers on 2 cases" in r.output
    assert len((tmp_path / "exp" / "grades.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # one database is enough for the model lane
def test_human_pairs_calibrate_the_embedded_judge(store, tmp_path, embedded):
    """Model lane: the exported human labels are pairs `valign judge calibrate` reads, and the
    real embedded model judges them in both orders against those labels."""
    from valign.evals.judge_calibration import calibrate_judge

    (token,) = store.invite(1)
    grade_all(store, token, {"case-1": 2, "case-2": -1, "case-3": 0})
    write_export(store, tmp_path / "out")
    pairs = load_labelled_pairs(tmp_path / "out" / "human_pairs.jsonl")
    assert [p.id for p in pairs] == ["case-1", "case-2"]
    run = calibrate_judge(embedded, pairs, mode="pairwise", judge_mode="logprob")
    r = run.report
    # (agreement itself may be undefined here: the 135M judge's readings can all fall within the tie band)
    assert r.pairs == 2 and r.both_orders == 2 and r.labelled == 2 and r.judge == "embedded"
    assert all(p is not None and 0.0 <= p <= 1.0 for reading in run.readings for p in reading.p_first)


def test_the_same_grade_sent_twice_at_once_is_one_row(store):
    """Two threads save the same reviewer's grade of one pair together (a double click): one row, no error."""
    from concurrent.futures import ThreadPoolExecutor

    r = store.reviewer_by_token(store.invite(1)[0])
    pid = store.order(r)[0]
    with ThreadPoolExecutor(8) as pool:
        grades = list(pool.map(lambda level: store.save_grade(r.id, pid, level, refused_a=False, refused_b=False, note=""), ["A>B", "B>A"] * 4))
    assert len(grades) == 8 and len(store.all_grades()) == 1 and store.progress(r) == (1, 4)
