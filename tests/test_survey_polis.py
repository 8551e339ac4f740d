"""Polis conversations in and out: import → group-aware consensus → constitution, re-import,
round trips through the Polis layout, and bad files refused with the file, line and column.

The conversation is written here, by hand, in the layout of the Polis project's openData
exports (comments.csv, votes.csv, participants-votes.csv, summary.csv): 22 participants,
two opinion groups of ten and two participants Polis could not place, six comments (one
moderated out), about a hundred votes, and one participant who changed a vote.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.cli_helpers import valign_cli
from tests.survey_helpers import Server, admin_headers, hidden
from valign.constitution import load_constitution
from valign.errors import ValignError
from valign.survey.db import Answer, Database, Proposal, Respondent, make_engine, migrate
from valign.survey.instrument import load_instrument
from valign.survey.polis import import_polis
from valign.survey.quality import load_checked, with_approved_proposals

T0 = 1_700_000_000_000  # ms since 1970, as Polis writes ``timestamp``
COMMENTS = [  # (comment-id, moderated, text)
    (0, 1, "The council should publish every contract it signs."),
    (1, 1, "New housing should be built close to the train lines."),
    (2, 1, "Public parks should be sold to pay down debt."),
    (3, 0, 'Rates should rise, "a little", to fund libraries.'),
    (4, 1, "Local elections should move online."),
    (5, -1, "Visit my shop for the best deals in town!"),
]
GROUP = {p: "0" if p < 10 else "1" for p in range(20)}  # 20 and 21: no group


def _votes() -> list[tuple[int, int, int, int]]:
    """(timestamp, comment, voter, vote) with Polis's signs: 1 agree, -1 disagree, 0 pass."""
    out = []
    for p in range(22):
        g = GROUP.get(p)
        t = T0 + p * 60_000
        out.append((t, 0, p, 1))  # everyone agrees: consensus
        if g is not None:
            out.append((t + 1000, 1, p, 1 if g == "0" else -1))  # the groups split
            out.append((t + 2000, 2, p, -1))  # everyone in a group rejects it
            out.append((t + 3000, 3, p, 1 if p % 2 else -1))  # each group half and half
        out.append((t + 5000, 5, p, 1))  # votes on the moderated-out comment: not imported
    out.append((T0 + 4000, 4, 20, 0))  # one pass by an unplaced participant
    out.insert(0, (T0 + 3 * 60_000 - 500, 0, 3, -1))  # participant 3's first vote on 0, changed later to agree
    return out


def write_conversation(folder: Path, *, votes: list[tuple[int, int, int, int]] | None = None, comments=COMMENTS, groups=GROUP, participants: int = 22) -> Path:
    """The four files of a Polis export, written with the csv module (not valign's writer)."""
    folder.mkdir(parents=True, exist_ok=True)
    votes = _votes() if votes is None else votes
    with (folder / "comments.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees", "moderated", "comment-body"])
        for cid, mod, text in comments:
            w.writerow([T0 - 10_000 + cid, "Tue Nov 14 22:13:10 UTC 2023", cid, cid % 3, 0, 0, mod, text])
    with (folder / "votes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "datetime", "comment-id", "voter-id", "vote"])
        w.writerows([t, "Tue Nov 14 22:13:20 UTC 2023", c, p, v] for t, c, p, v in votes)
    last = {(p, c): v for _, c, p, v in sorted(votes)}
    ids = [c for c, _, _ in comments]
    with (folder / "participants-votes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree", *ids])
        for p in range(participants):
            mine = [last.get((p, c), "") for c in ids]
            w.writerow([p, groups.get(p, ""), 0, sum(v != "" for v in mine), mine.count(1), mine.count(-1), *mine])
    (folder / "summary.csv").write_text(
        "topic,Our town's next ten years\nurl,https://pol.is/5town2030x\nviews,40\nvoters,22\nvoters-in-conv,22\n"
        'commenters,3\ncomments,6\ngroups,2\nconversation-description,"What should the council do, and what not?"\n'
    )
    return folder



def _count(url: str, model, *where) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        engine.dispose()


def test_import_then_consensus_and_constitution(db_url, tmp_path, monkeypatch):
    folder = write_conversation(tmp_path / "town")
    code, out, err = valign_cli(["survey", "import-polis", str(folder), "--db", db_url], monkeypatch)
    assert code == 0, err
    assert "polis:5town2030x: 6 comments (1 moderated out or meta, not analysed), 22 participants" in out and "2 opinion groups (0: 10, 1: 10)" in out

    source = "polis:5town2030x"
    engine = make_engine(db_url)
    with Session(engine) as s:
        statements = {p.external_id: p for p in s.scalars(select(Proposal).where(Proposal.source == source))}
        people = list(s.scalars(select(Respondent).where(Respondent.source == source)))
        assert statements["5"].status == "rejected" and all(statements[c].status == "approved" for c in "01234")
        assert len(people) == 22 and not any(r.synthetic for r in people) and all(r.completed for r in people)
        assert all(r.instrument_id == "polis-5town2030x" and not r.resume_hash[:1].isdigit() for r in people)
        by_pid = {r.external_id: r.id for r in people}
        votes = s.scalar(select(func.count()).select_from(Answer).where(Answer.kind == "principle"))
        assert votes == 22 + 20 * 3 + 1, "every vote on a shown comment, once; none on the moderated-out one"
        changed = s.scalar(select(Answer.choice).where(Answer.respondent_id == by_pid["3"], Answer.item_id == statements["0"].item_id))
        assert changed == "agree", "a changed vote counts as its later value"
        assert s.scalar(select(func.count()).select_from(Answer).where(Answer.item_id == statements["5"].item_id)) == 0

    # A live instrument's analysis never sees the participants or their comments.
    assert load_checked(db_url, "demo").respondents.empty
    demo = load_instrument("demo")
    assert with_approved_proposals(demo, engine) == demo
    engine.dispose()

    frames = load_checked(db_url, "polis:5town2030x")
    assert frames.respondents["opinion_group"].value_counts().to_dict() == {"0": 10, "1": 10}
    assert frames.respondents["opinion_group"].isna().sum() == 2

    code, out, err = valign_cli(["survey", "export", "--db", db_url, "--instrument", "polis:5town2030x", "--out", str(tmp_path / "export"), "-B", "60"], monkeypatch)
    assert code == 0, err
    summary = json.loads((tmp_path / "export" / "summary.json").read_text())
    assert summary["respondents"]["weighted"] == 22 and summary["weighting"]["summary"]["weight_ratio"] == pytest.approx(1.0), "each participant counts once"
    constitution = load_constitution(str(tmp_path / "export" / "constitution.yaml"))
    item = {c: statements[c].item_id for c in statements}
    verdicts = {p.support["statement"]: p.tags[-1] for p in constitution.principles}
    assert verdicts == {item["0"]: "consensus", item["1"]: "contested", item["2"]: "rejected"}
    agreed = next(p for p in constitution.principles if p.support["statement"] == item["0"])
    assert agreed.text == COMMENTS[0][2] and agreed.support["groups"] == {"opinion_group": {"0": 1.0, "1": 1.0}}
    split = next(p for p in constitution.principles if p.support["statement"] == item["1"])
    assert split.support["groups"]["opinion_group"] == {"0": 1.0, "1": 0.0} and "People are divided" in split.text


def test_live_respondents_are_never_shown_imported_comments(tmp_path):
    url = f"sqlite:///{tmp_path / 'survey.db'}"
    import_polis(url, write_conversation(tmp_path / "town"))
    with Server(url) as server, httpx.Client(base_url=server.url, follow_redirects=True, timeout=30) as c:
        first = c.get("/")
        page = c.post("/consent", data={**hidden(first.text), "decision": "agree"})
        assert page.status_code == 200
        # Nor are they a moderator's: not listed, not counted, not moderated by hand.
        assert c.get("/admin/api/proposals", headers=admin_headers()).json() == []
        assert c.get("/admin/api/summary", headers=admin_headers()).json()["proposals"] == {"pending": 0, "approved": 0, "rejected": 0}
        assert c.get("/admin/api/summary", headers=admin_headers()).json()["started"] == 1
        imported = _first_imported_proposal(url)
        assert c.post(f"/admin/api/proposals/{imported}", data={"status": "rejected"}, headers=admin_headers()).status_code == 404
    engine = make_engine(url)
    with Session(engine) as s:
        live = s.scalars(select(Respondent).where(Respondent.source == "live")).one()
        assert json.loads(live.shown_proposals) == [], "approved Polis comments are analysed, never asked"
    engine.dispose()


def _first_imported_proposal(url: str) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return s.scalar(select(func.min(Proposal.id)).where(Proposal.source != "live"))
    finally:
        engine.dispose()


def test_reimport_replaces_and_never_duplicates(db_url, tmp_path):
    url = db_url
    folder = write_conversation(tmp_path / "town")
    first = import_polis(url, folder)
    engine = make_engine(url)

    def snapshot():
        with Session(engine) as s:
            return (
                {p.external_id: (p.id, p.status) for p in s.scalars(select(Proposal))},
                {r.external_id: r.public_id for r in s.scalars(select(Respondent))},
                sorted(s.execute(select(Answer.respondent_id, Answer.item_id, Answer.choice, Answer.answered_at)).all()),
                sorted(s.execute(select(Respondent.external_id, Respondent.started_at, Respondent.finished_at)).all()),
            )

    before = snapshot()
    again = import_polis(url, folder)
    assert again == first and snapshot() == before

    # A later export: participant 21 left, 7 changed their mind on comment 0, comment 4 was moderated out.
    votes = [v for v in _votes() if v[2] != 21] + [(T0 + 10**8, 0, 7, -1)]
    comments = [(c, -1 if c == 4 else m, t) for c, m, t in COMMENTS]
    import_polis(url, write_conversation(tmp_path / "later", votes=votes, comments=comments, participants=21), conversation="5town2030x")
    statements, people, answers, _ = snapshot()
    assert {c: pid for c, (pid, _) in statements.items()} == {c: pid for c, (pid, _) in before[0].items()}, "statement ids stay"
    assert statements["4"][1] == "rejected" and "21" not in people and len(people) == 21
    item = {c: f"prop-{pid}" for c, (pid, _) in statements.items()}
    with Session(engine) as s:
        seven = s.scalar(select(Respondent.id).where(Respondent.external_id == "7"))
        assert s.scalar(select(Answer.choice).where(Answer.respondent_id == seven, Answer.item_id == item["0"])) == "disagree"
        assert s.scalar(select(func.count()).select_from(Answer).where(Answer.item_id == item["4"])) == 0
    assert len(answers) == len(set((r, i) for r, i, _, _ in answers)), "one answer per participant and statement"
    engine.dispose()


def _polis_files(folder: Path) -> dict[str, list[list[str]]]:
    return {name: list(csv.reader((folder / name).open(newline=""))) for name in ("comments.csv", "votes.csv", "participants-votes.csv")}


def test_round_trip_export_then_import(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'survey.db'}"
    import_polis(url, write_conversation(tmp_path / "town"))
    out = tmp_path / "polis-out"
    code, stdout, err = valign_cli(["survey", "export", "--format", "polis", "--db", url, "--instrument", "polis:5town2030x", "--out", str(out)], monkeypatch)
    assert code == 0, err
    assert "5 statements, 22 participants, 83 votes" in stdout
    files = _polis_files(out)
    assert files["comments.csv"][0] == ["timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees", "moderated", "comment-body"]
    assert files["votes.csv"][0] == ["timestamp", "datetime", "comment-id", "voter-id", "vote"]
    assert files["participants-votes.csv"][0][:6] == ["participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree"]
    assert {row[3] for row in files["votes.csv"][1:]} == {str(n) for n in range(22)}, "participants renumbered 0…n-1"
    everything = "".join((out / n).read_text() for n in ("comments.csv", "votes.csv", "participants-votes.csv", "summary.csv"))
    frames = load_checked(url, "polis:5town2030x")
    assert not any(rid in everything for rid in frames.respondents.index), "no respondent id leaves"
    assert all(int(row[0]) % 86_400_000 == 0 for row in files["votes.csv"][1:]), "vote times cut to the day"
    agree = {row[7]: (int(row[4]), int(row[5])) for row in files["comments.csv"][1:]}
    assert agree[COMMENTS[0][2]] == (22, 0) and agree[COMMENTS[1][2]] == (10, 10)

    import_polis(url, out, conversation="again")
    back = load_checked(url, "polis:again")

    def votes_by_statement(f):
        texts = {i.id: i.text for i in f.instrument.items() if i.kind == "principle"}
        a = f.answers[f.answers["kind"] == "principle"]
        return {texts[i]: sorted(a[a["item_id"] == i]["choice"]) for i in texts}

    assert votes_by_statement(back) == votes_by_statement(frames)
    assert back.respondents["opinion_group"].value_counts().to_dict() == frames.respondents["opinion_group"].value_counts().to_dict()
    pairs = lambda f: sorted(zip(f.respondents.loc[f.answers["respondent_id"], "opinion_group"].fillna("-"), f.answers["choice"]))  # noqa: E731
    assert pairs(back) == pairs(frames), "each vote stays with its participant's group"


def test_a_live_survey_exports_as_polis(tmp_path):
    """The demo instrument's statements and an approved proposal, with live votes; a pending
    proposal and a simulated respondent stay out."""
    from valign.survey.polis import export_polis

    url = f"sqlite:///{tmp_path / 'survey.db'}"
    engine = make_engine(url)
    migrate(engine)
    demo = load_instrument("demo")
    statements = [i.id for i in demo.items() if i.kind == "principle"]
    with Database(engine).write() as s:
        people = [Respondent(public_id=f"live{n:04d}", resume_hash=f"{n:064x}", instrument_id=demo.id, instrument_fingerprint="f", seed=n, completed=True,
                             synthetic=n == 5) for n in range(6)]
        s.add_all(people)
        s.add(Proposal(text="Say when you are unsure.", status="approved"))
        s.add(Proposal(text="A pending idea nobody has checked.", status="pending"))
        s.flush()
        approved = s.scalars(select(Proposal).where(Proposal.status == "approved")).one().item_id
        for n, r in enumerate(people):
            for k, item in enumerate([*statements, approved]):
                s.add(Answer(respondent_id=r.id, item_id=item, kind="principle", choice=("agree", "disagree", "pass")[(n + k) % 3]))
    engine.dispose()
    conv = export_polis(url, "demo", tmp_path / "out")
    texts = [c.text for c in conv.comments]
    assert texts == [*(i.text for i in demo.items() if i.kind == "principle"), "Say when you are unsure."]
    assert "A pending idea" not in (tmp_path / "out" / "comments.csv").read_text()
    assert len({v.voter_id for v in conv.votes}) == 5 and len(conv.votes) == 5 * len(texts)
    live = load_checked(url, "demo").select(completed_only=True)
    import_polis(url, tmp_path / "out", conversation="demo-copy")
    back = load_checked(url, "polis:demo-copy")
    share = lambda f, text: (f.answers[f.answers["item_id"].isin([i.id for i in f.instrument.items() if i.text == text])]["choice"] == "agree").mean()  # noqa: E731
    for text in texts:
        assert share(back, text) == share(live, text)


def _break(folder: Path, name: str, old: str, new: str) -> None:
    path = folder / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


BAD = [
    ("votes.csv", f"{T0},Tue Nov 14 22:13:20 UTC 2023,0,0,1", f"{T0},Tue Nov 14 22:13:20 UTC 2023,0,0,2", r"votes\.csv, line 3, column 'vote': 2 is not one of 1, -1, 0"),
    ("votes.csv", f"{T0},Tue Nov 14 22:13:20 UTC 2023,0,0,1", f"{T0},Tue Nov 14 22:13:20 UTC 2023,9,0,1", r"votes\.csv, line 3, column 'comment-id': comment 9 is not in comments\.csv"),
    ("votes.csv", f"{T0},Tue Nov 14 22:13:20 UTC 2023,0,0,1", f"{T0},Tue Nov 14 22:13:20 UTC 2023,0,zero,1", r"votes\.csv, line 3, column 'voter-id': 'zero' is not a whole number"),
    ("comments.csv", "comment-body", "body", r"comments\.csv, line 1: there is no column 'comment-body'"),
    ("comments.csv", ",1,1,0,0,1,New housing", ",0,1,0,0,1,New housing", r"comments\.csv, line 3, column 'comment-id': comment 0 appears twice"),
    ("comments.csv", ",2,2,0,0,1,Public parks", ",2,2,0,0,7,Public parks", r"comments\.csv, line 4, column 'moderated': 7 is not one of 1, 0, -1"),
    ("participants-votes.csv", "\n10,1,", "\n10,B,", r"participants-votes\.csv, line 12, column 'group-id': 'B' is not a whole number"),
]


@pytest.mark.parametrize("name,old,new,message", BAD, ids=[f"{b[0]}:{b[3].split(':')[-1].strip()[:30]}" for b in BAD])
def test_bad_files_are_refused_naming_file_line_and_column(tmp_path, monkeypatch, name, old, new, message):
    url = f"sqlite:///{tmp_path / 'survey.db'}"
    import_polis(url, write_conversation(tmp_path / "good"))
    before = _count(url, Answer)
    folder = write_conversation(tmp_path / "bad")
    _break(folder, name, old, new)
    code, out, err = valign_cli(["survey", "import-polis", str(folder), "--db", url], monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.count(str(folder / name)) == 1
    with pytest.raises(ValignError, match=message):
        import_polis(url, folder)
    assert _count(url, Answer) == before, "a refused file changes nothing"


def test_missing_and_unreadable_files(tmp_path):
    folder = write_conversation(tmp_path / "town")
    (folder / "votes.csv").write_bytes(b"timestamp,datetime,comment-id,voter-id,vote\n1,x,0,0,\xff\n")
    with pytest.raises(ValignError, match=r"votes\.csv is not UTF-8 text"):
        import_polis(f"sqlite:///{tmp_path / 'a.db'}", folder)
    (folder / "comments.csv").unlink()
    with pytest.raises(ValignError, match="has no comments.csv"):
        import_polis(f"sqlite:///{tmp_path / 'a.db'}", folder)
    with pytest.raises(ValignError, match="cannot name a Polis conversation"):
        import_polis(f"sqlite:///{tmp_path / 'a.db'}", write_conversation(tmp_path / "t2"), conversation="../etc")


def test_only_the_participant_matrix(tmp_path):
    """Some openData conversations ship participants-votes.csv without votes.csv: votes then come from the matrix."""
    folder = write_conversation(tmp_path / "town")
    (folder / "votes.csv").unlink()
    url = f"sqlite:///{tmp_path / 'survey.db'}"
    summary = import_polis(url, folder)
    assert (summary.participants, summary.votes, summary.groups) == (22, 83, {"0": 10, "1": 10})
    engine = make_engine(url)

    def state():
        with Session(engine) as s:
            return sorted(s.execute(select(Answer.respondent_id, Answer.item_id, Answer.choice, Answer.answered_at)).all())

    before = state()
    import_polis(url, folder)
    assert state() == before, "without vote times, the first import's times are kept"
    engine.dispose()


def test_a_run_turns_a_conversation_into_a_constitution_and_report(tmp_path):
    """survey → report as a run (no model needed): the stage reads the conversation, the report shows its principles."""
    import yaml

    from valign.config import load_config
    from valign.pipeline import run_pipeline

    url = f"sqlite:///{tmp_path / 'survey.db'}"
    import_polis(url, write_conversation(tmp_path / "town"))
    config = {
        "name": "town", "model": "embedded", "runs_dir": str(tmp_path / "runs"), "constitution": "survey", "stages": ["survey", "report"],
        "survey": {"db": url, "instrument": "polis:5town2030x", "margins": "nz-census-2023", "B": 30},
    }
    path = tmp_path / "town.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValignError, match="set survey.margins: participants"):
        run_pipeline(load_config(path))
    config["survey"]["margins"] = "participants"
    path.write_text(yaml.safe_dump(config))
    assert {o.name: o.status for o in run_pipeline(load_config(path))} == {"survey": "ran", "report": "ran"}
    run_dir = tmp_path / "runs" / "town"
    constitution = load_constitution(str(run_dir / "01-survey" / "constitution.yaml"))
    assert {p.tags[-1] for p in constitution.principles} == {"consensus", "contested", "rejected"}
    report = (run_dir / "report.html").read_text()
    assert COMMENTS[0][2] in report and COMMENTS[5][2] not in report
    import_polis(url, write_conversation(tmp_path / "town"))  # the same export again: nothing to redo
    assert {o.name: o.status for o in run_pipeline(load_config(path))} == {"survey": "skipped", "report": "skipped"}


def test_the_newer_export_layout(tmp_path):
    """Newer exports: comments.csv without ``datetime`` but with ``is-meta`` and ``is-seed``,
    participants-votes.csv with an ``xid`` column. Meta comments are not analysed; xids are not kept."""
    folder = write_conversation(tmp_path / "town")
    rows = list(csv.reader((folder / "comments.csv").open(newline="")))
    with (folder / "comments.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "comment-id", "author-id", "agrees", "disagrees", "moderated", "is-meta", "is-seed", "group-informed-consensus", "comment-body"])
        for r in rows[1:]:
            w.writerow([r[0], r[2], r[3], r[4], r[5], r[6], "true" if r[2] == "4" else "false", "true", "0.5", r[7]])
    rows = list(csv.reader((folder / "participants-votes.csv").open(newline="")))
    with (folder / "participants-votes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([rows[0][0], "xid", *rows[0][1:]])
        w.writerows([r[0], f"person-{r[0]}@example.org", *r[1:]] for r in rows[1:])
    url = f"sqlite:///{tmp_path / 'survey.db'}"
    summary = import_polis(url, folder)
    assert (summary.comments, summary.left_out, summary.groups) == (6, 2, {"0": 10, "1": 10})
    engine = make_engine(url)
    with Session(engine) as s:
        meta = s.scalars(select(Proposal).where(Proposal.external_id == "4")).one()
        assert meta.status == "rejected" and s.scalar(select(func.count()).select_from(Answer).where(Answer.item_id == meta.item_id)) == 0
    engine.dispose()
    assert b"example.org" not in Path(url.removeprefix("sqlite:///")).read_bytes(), "no xid is stored"
