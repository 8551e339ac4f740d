"""Withdrawal and erasure on SQLite and PostgreSQL, over real HTTP against `valign survey
serve` subprocesses: a respondent withdraws from their private link, an admin erases by id
(API, dashboard form, CLI), the retention rule purges stale incomplete responses — and the
data is gone from every table and every export, with only counts left in the erasure log."""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
import pyreadstat
import pytest
from sqlalchemy import inspect, select, text

from tests.survey_helpers import ADMIN_TOKEN, Server, admin_headers, hidden, instrument_file, postgres_database
from tests.test_survey_http import Person, summary
from valign.survey.db import Answer, Database, ErasureLog, Invitation, PageEvent, Proposal, Respondent, make_engine, migrate, token_hash
from valign.errors import ValignError
from valign.survey.erasure import PROPOSAL_VOTES, erase_respondent, erase_respondents, erasure_counts, retention_lifespan
from valign.web.database import utcnow

MARKER = "The assistant should mention zebra-striped umbrellas when unsure."  # the withdrawn respondent's proposal



def dump(url: str) -> str:
    """Every row of every table in the database, as one text (what "gone from every table" is checked against)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return "\n".join(f"{t}: {tuple(row)}" for t in inspect(engine).get_table_names() for row in conn.execute(text(f'SELECT * FROM "{t}"')))
    finally:
        engine.dispose()


def exports(url: str, tmp: Path) -> dict[str, bytes | pd.DataFrame]:
    """The admin's three respondent-level downloads (excluded respondents included)."""
    got = {fmt: httpx.get(f"{url}/admin/export.{fmt}?include_excluded=true", headers=admin_headers(), timeout=30) for fmt in ("csv", "json", "sav")}
    assert all(r.status_code == 200 for r in got.values())
    (tmp / "x.sav").write_bytes(got["sav"].content)
    sav, _ = pyreadstat.read_sav(str(tmp / "x.sav"))
    return {"csv": pd.read_csv(io.BytesIO(got["csv"].content)), "json": pd.DataFrame(got["json"].json()), "sav": sav, "raw": b"".join(r.content for r in got.values())}


def training_export(db_url: str, inst: Path, margins: Path, out: Path) -> dict:
    """`valign survey export`'s files (constitution, consensus, DPO/KTO/eval JSONL, summary), read back."""
    from valign.survey.export import ExportSettings, export_survey

    export_survey(db_url, str(inst), margins, out, ExportSettings(B=2, min_group_n=1), synthetic=True)
    jsonl = {name: [json.loads(line) for line in (out / name).read_text(encoding="utf-8").splitlines()] for name in ("dpo.jsonl", "kto.jsonl", "eval_items.jsonl")}
    return {"text": "".join(p.read_text(encoding="utf-8") for p in sorted(out.iterdir())), "summary": json.loads((out / "summary.json").read_text()), **jsonl}


# -- withdrawal --------------------------------------------------------------------------------------


def test_a_withdrawal_deletes_every_row_and_leaves_every_export(db_url, tmp_path):
    from valign.survey.simulate import load_population, run_simulation

    # The training export reads the tables through the same queries on both databases,
    # so it runs on SQLite only (it costs seconds); everything else runs on both.
    train = db_url.startswith("sqlite")

    # httpx answers at once and picks every first option: only flag that, so every respondent is weighted
    inst = instrument_file(tmp_path, min_seconds_per_item=0, attention="flag", straightlining="flag")
    margins = tmp_path / "margins.yaml"  # the demo population's categories, as equal counts
    margins.write_text(json.dumps({"id": "even", "source": {"citation": "test"}, "variables": {
        "age_group": {"categories": {"18-29": 100, "30-44": 100, "45-64": 100, "65+": 100}},
        "sex": {"categories": {"female": 100, "male": 100}},
        "education": {"categories": {"school": 100, "post_school": 100, "degree": 100}},
    }}), encoding="utf-8")
    with Server(db_url, str(inst), "--rate-limit-ip", "0") as s:
        w = Person(s.url)
        w.consent()
        resume = w.resume_link()
        while 'name="proposal"' not in w.page.text:
            w.submit()
        w.submit({**w.answers(), "proposal": MARKER})
        done = w.finish()
        rid = done.text.split('class="code">')[1].split("<")[0]
        prop = next(p for p in httpx.get(s.url + "/admin/api/proposals", headers=admin_headers()).json() if p["text"] == MARKER)
        assert httpx.post(f"{s.url}/admin/api/proposals/{prop['id']}", json={"status": "approved"}, headers=admin_headers()).status_code == 200
        pop = load_population("demo").model_copy(update={"profiles": {"clean": 1.0}, "propose": 0.0, "seconds_per_item": 0.0, "skip_demographic": 0.0})
        sim = run_simulation(s.url, 16, instrument=str(inst), population=pop, admin_token=ADMIN_TOKEN, concurrency=8)
        assert sim.errors == [] and sim.completed == 16

        engine = make_engine(db_url)
        with Database(engine).read() as q:
            pk = q.scalar(select(Respondent.id).where(Respondent.public_id == rid))
            mine = q.scalar(select(text("count(*)")).select_from(Answer).where(Answer.respondent_id == pk))
            votes = q.scalar(select(text("count(*)")).select_from(Answer).where(Answer.item_id == prop["item_id"]))
            events = q.scalar(select(text("count(*)")).select_from(PageEvent).where(PageEvent.respondent_id == pk))
            resume_hash = q.scalar(select(Respondent.resume_hash).where(Respondent.id == pk))
        assert mine > 20 and votes >= 15 and events == 10
        before = exports(s.url, tmp_path)
        assert rid in set(before["csv"]["respondent_id"].astype(str)) and prop["item_id"] in before["csv"].columns
        if train:
            trained = training_export(db_url, inst, margins, tmp_path / "before")
            assert MARKER in trained["text"] and any(i["id"] == prop["item_id"] for i in trained["eval_items.jsonl"])

        # Another browser, with only the private link: the confirmation page, then the form.
        b = httpx.Client(base_url=s.url, follow_redirects=True, timeout=30)
        assert b.get(resume).url.path == "/done"
        page = b.get("/withdraw")
        assert page.status_code == 200 and rid in page.text and 'action="/withdraw"' in page.text and "<script" not in page.text
        form = hidden(page.text)
        assert b.post("/withdraw", data={"confirm": "withdraw"}).status_code == 403  # no CSRF token
        stranger = httpx.Client(base_url=s.url)  # a token without its session cookie
        assert stranger.post("/withdraw", data={**form, "confirm": "withdraw"}).status_code == 403
        unconfirmed = b.post("/withdraw", data=form)
        assert unconfirmed.status_code == 200 and "There is a problem" in unconfirmed.text
        assert summary(s.url)["erased"]["withdrawn"] == 0 and dump(db_url).count(rid) == 1
        gone = b.post("/withdraw", data={**form, "confirm": "withdraw"}, follow_redirects=False)
        assert gone.status_code == 303 and gone.headers["location"] == "/withdrawn"
        assert "Your answers are deleted" in b.get("/withdrawn").text
        assert b.get("/withdraw").text.count("no survey response open") == 1  # nothing left to withdraw
        assert httpx.get(resume).status_code == 404  # the private link opens nothing now

        # Gone from every table: no id, no resume hash, no proposal, no vote on it, no row pointing at it.
        everything = dump(db_url)
        for trace in (rid, resume_hash, MARKER, prop["item_id"]):
            assert trace not in everything
        if db_url.startswith("sqlite"):  # ... nor from the files' bytes (free pages, the WAL)
            path = Path(db_url.removeprefix("sqlite:///"))
            files = list(path.parent.glob(path.name + "*"))
            assert len(files) >= 2 and not any(t.encode() in f.read_bytes() for f in files for t in (MARKER, rid, resume_hash))
        with Database(engine).read() as q:
            assert q.scalar(select(text("count(*)")).select_from(Answer).where(Answer.respondent_id == pk)) == 0
            assert q.scalar(select(text("count(*)")).select_from(PageEvent).where(PageEvent.respondent_id == pk)) == 0
            assert q.get(Proposal, prop["id"]) is None and q.get(Respondent, pk) is None
            assert not any(str(prop["id"]) in json.loads(r) for r in q.scalars(select(Respondent.shown_proposals)))
            [entry] = q.scalars(select(ErasureLog)).all()
        engine.dispose()
        # The log says when, why and how many — nothing about whom.
        assert entry.reason == "withdrawn" and entry.respondents == 1
        assert json.loads(entry.row_counts) == {"answers": mine, "page_events": events, "proposals": 1, PROPOSAL_VOTES: votes, "respondents": 1}
        assert rid not in entry.row_counts and abs((utcnow() - entry.erased_at).total_seconds()) < 120
        counts = summary(s.url)
        assert counts["erased"] == {"withdrawn": 1, "admin": 0, "retention": 0} and counts["started"] == 16
        assert "Withdrawn by the respondent</th><td>1" in httpx.get(s.url + "/admin/", headers=admin_headers()).text

        # Gone from every export: the admin's CSV, JSON and SPSS files ...
        after = exports(s.url, tmp_path)
        for fmt in ("csv", "json", "sav"):
            assert len(after[fmt]) == len(before[fmt]) - 1 == 16
            assert rid not in set(after[fmt]["respondent_id"].astype(str))
            assert not any(c.startswith(prop["item_id"].replace("-", "_")) or c == prop["item_id"] for c in after[fmt].columns)
        assert rid.encode() not in after["raw"] and MARKER.encode() not in after["raw"]
        # ... and the training export: constitution, consensus, DPO/KTO/evaluation JSONL, summary.
        if not train:
            return
        retrained = training_export(db_url, inst, margins, tmp_path / "after")
        assert MARKER not in retrained["text"] and rid not in retrained["text"]
        assert not any(i["id"] == prop["item_id"] for i in retrained["eval_items.jsonl"])
        assert retrained["summary"]["respondents"]["weighted"] == trained["summary"]["respondents"]["weighted"] - 1
        for name, kind in (("dpo.jsonl", "scenario"), ("kto.jsonl", "rating")):
            theirs = sum(1 for k in w_kinds(before, rid) if k == kind)
            assert theirs > 0
            assert sum(r["respondents"] for r in retrained[name]) == sum(r["respondents"] for r in trained[name]) - theirs  # each answer counts in one row


def w_kinds(before: dict, rid: str) -> list[str]:
    """The kinds of question the respondent answered, from the export made before they withdrew."""
    from valign.survey.instrument import load_instrument

    row = before["json"].set_index("respondent_id").loc[rid]
    kinds = {i.id: i.kind for i in load_instrument("demo").items()}
    return [kinds[c] for c, v in row.items() if c in kinds and v is not None and v == v]


# -- an admin erases -----------------------------------------------------------------------------------


def test_admin_erases_by_id_through_the_api_the_dashboard_form_and_the_cli(tmp_path):
    from typer.testing import CliRunner

    from valign.cli import app

    url = f"sqlite:///{tmp_path / 'admin.db'}"
    with Server(url, "demo", "--invitations", "required", "--rate-limit-ip", "0") as s:
        tokens = httpx.post(s.url + "/admin/api/invitations", json={"n": 3}, headers=admin_headers()).json()["tokens"]
        ids = []
        for token in tokens:
            p = Person(s.url)
            p.consent(f"/i/{token}")
            p.submit()
            ids.append(p.c.get("/withdraw").text.split('class="code">')[1].split("<")[0])
        # The JSON API: bearer token, JSON errors.
        api = f"{s.url}/admin/api/respondents/{ids[0]}/erase"
        assert httpx.post(api).status_code == 401
        r = httpx.post(api, headers=admin_headers())
        assert r.status_code == 200 and r.json()["rows"]["respondents"] == 1 and r.json()["rows"]["invitations"] == 1 and r.json()["rows"]["answers"] > 0
        again = httpx.post(api, headers=admin_headers())
        assert again.status_code == 404 and ids[0] in again.json()["error"]
        bad = httpx.post(f"{s.url}/admin/api/respondents/{'x' * 40}/erase", headers=admin_headers())
        assert bad.status_code == 422 and "response number" in bad.json()["error"]
        assert httpx.get(f"{s.url}/i/{tokens[0]}").status_code == 404  # its invitation opens nothing, not a fresh response
        # The dashboard's form: the admin cookie and its CSRF token.
        admin = httpx.Client(base_url=s.url, follow_redirects=True)
        login = admin.get("/admin/login")
        assert admin.post("/admin/login", data={**hidden(login.text), "token": ADMIN_TOKEN}).url.path == "/admin/"
        dash = admin.get("/admin/")
        assert 'action="/admin/erase"' in dash.text and '<label for="erase-id"' in dash.text
        assert admin.post("/admin/erase", data={"respondent_id": ids[1]}).status_code == 403  # no CSRF token
        done = admin.post("/admin/erase", data={**hidden(dash.text), "respondent_id": f" {ids[1]} "})
        assert done.status_code == 200 and "Respondent erased" in done.text and ids[1] in done.text
        missing = admin.post("/admin/erase", data={**hidden(dash.text), "respondent_id": ids[1]})
        assert missing.status_code == 404 and "<h1>" in missing.text
        assert summary(s.url)["erased"]["admin"] == 2 and summary(s.url)["started"] == 1
    # The command line, on the same database.
    run = CliRunner().invoke
    out = run(app, ["survey", "erase", "--db", url, ids[2]])
    assert out.exit_code == 0 and f"erased respondent {ids[2]}" in out.output and "respondents 1" in out.output
    out = run(app, ["survey", "erase", "--db", url, ids[2]])
    assert isinstance(out.exception, ValignError) and f"no respondent '{ids[2]}'" in str(out.exception)  # `valign` prints it as one line
    everything = dump(url)
    assert not any(i in everything for i in ids) and not any(token_hash(t) in everything for t in tokens)
    engine = make_engine(url)
    assert erasure_counts(Database(engine)) == {"withdrawn": 0, "admin": 3, "retention": 0}
    engine.dispose()


# -- retention ---------------------------------------------------------------------------------------


def _respondent(s, public_id: str, *, days_ago: float, touched_days_ago: float | None = None, completed: bool = False) -> None:  # noqa: ANN001
    now = utcnow()
    r = Respondent(public_id=public_id, resume_hash=token_hash(public_id), instrument_id="demo", instrument_fingerprint="f", seed=1,
                   completed=completed, started_at=now - timedelta(days=days_ago))
    s.add(r)
    s.flush()
    s.add(Answer(respondent_id=r.id, item_id="age_group", kind="demographic", choice="18-29", answered_at=now - timedelta(days=days_ago)))
    s.add(PageEvent(respondent_id=r.id, page="demographics", items=1, seconds=3.0, submitted_at=now - timedelta(days=days_ago if touched_days_ago is None else touched_days_ago)))


def test_retention_purges_stale_incomplete_responses_at_start_and_by_command(db_url):
    from typer.testing import CliRunner

    from valign.cli import app

    engine = make_engine(db_url)
    migrate(engine)
    with Database(engine).write() as s:
        _respondent(s, "stale", days_ago=40)
        _respondent(s, "touched", days_ago=40, touched_days_ago=2)  # started long ago, still answering two days ago
        _respondent(s, "finished", days_ago=90, completed=True)
        _respondent(s, "fresh", days_ago=0.01)
    with Server(db_url, "demo", "--retention-days", "30") as srv:
        deadline = time.monotonic() + 20
        while summary(srv.url)["erased"]["retention"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert summary(srv.url)["erased"] == {"withdrawn": 0, "admin": 0, "retention": 1}
    with Database(engine).read() as s:
        assert sorted(s.scalars(select(Respondent.public_id))) == ["finished", "fresh", "touched"]
    out = CliRunner().invoke(app, ["survey", "purge", "--db", db_url, "--retention-days", "1"])
    assert out.exit_code == 0 and "deleted 1 incomplete responses untouched for 1 days (answers 1, page_events 1)" in out.output
    with Database(engine).read() as s:
        assert sorted(s.scalars(select(Respondent.public_id))) == ["finished", "fresh"]
        log = [(e.reason, e.respondents, json.loads(e.row_counts)) for e in s.scalars(select(ErasureLog).order_by(ErasureLog.id))]
    assert log == [("retention", 1, {"answers": 1, "page_events": 1, "respondents": 1})] * 2
    assert "stale" not in dump(db_url) and "touched" not in dump(db_url)
    out = CliRunner().invoke(app, ["survey", "purge", "--db", db_url, "--retention-days", "0"])
    assert out.exit_code != 0
    engine.dispose()


def test_a_running_server_applies_the_retention_rule_again_and_again(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'loop.db'}")
    migrate(engine)
    db = Database(engine)
    heard = []

    async def gone(name: str, passes: int) -> bool:
        """Whether ``name`` is deleted and the app heard of it (``passes`` passes that erased)."""
        for _ in range(300):
            if name not in dump_ids(db) and len(heard) == passes:
                return True
            await asyncio.sleep(0.01)
        return False

    async def main() -> None:
        async with retention_lifespan(db, 30, every_seconds=0.05, on_erased=heard.append)(None):
            for passes, name in enumerate(("first", "second"), 1):  # the second comes after the first pass: a later pass takes it
                with db.write() as s:
                    _respondent(s, name, days_ago=31)
                assert await gone(name, passes)
        with db.write() as s:  # the app stopped: so did the rule
            _respondent(s, "after", days_ago=31)
        await asyncio.sleep(0.2)

    asyncio.run(main())
    assert [h.respondents for h in heard] == [1, 1] and dump_ids(db) == ["after"]
    assert erasure_counts(db)["retention"] == 2
    engine.dispose()


def dump_ids(db: Database) -> list[str]:
    with db.read() as s:
        return sorted(s.scalars(select(Respondent.public_id)))


def test_erasing_a_respondent_with_an_invitation_and_a_pending_proposal_in_process(tmp_path):
    """The rows a respondent can have, made directly, erased by `erase_respondent` (no HTTP)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'unit.db'}")
    migrate(engine)
    db = Database(engine)
    with db.write() as s:
        inv = Invitation(token_hash="i" * 64)
        s.add(inv)
        s.flush()
        _respondent(s, "keep", days_ago=1)
        r = Respondent(public_id="gone", resume_hash="g" * 64, instrument_id="demo", instrument_fingerprint="f", seed=2, invitation_id=inv.id)
        s.add(r)
        s.flush()
        s.add(Proposal(respondent_id=r.id, text="pending words", status="pending"))
    done = erase_respondent(db, "gone", "admin")
    assert done.rows == {"respondents": 1, "invitations": 1, "proposals": 1} and done.proposals
    assert "pending words" not in dump(f"sqlite:///{tmp_path / 'unit.db'}") and dump_ids(db) == ["keep"]
    with pytest.raises(ValignError, match="not one of withdrawn, admin, retention"):
        erase_respondents(db, [1], "because")  # type: ignore[arg-type]
    engine.dispose()


def test_the_survey_stage_re_exports_after_an_erasure(tmp_path):
    """The stage's database digest (its cache key) changes with every erasure, even when
    new responses bring the counts back; a database before the erasure log still reads."""
    from valign.stages.survey import survey_digest

    url = f"sqlite:///{tmp_path / 'stage.db'}"
    engine = make_engine(url)
    migrate(engine, "0002")
    assert "erasures" not in survey_digest(url)  # not yet migrated: read as it is
    migrate(engine)
    db = Database(engine)
    with db.write() as s:
        _respondent(s, "a", days_ago=1, completed=True)
    first = survey_digest(url)
    assert "erasures" not in first  # nothing erased: the digest (and a run's cache) stays as it was
    erase_respondent(db, "a", "withdrawn")
    with db.write() as s:  # someone new, with the same counts
        _respondent(s, "b", days_ago=1, completed=True)
    second = survey_digest(url)
    assert {k: v for k, v in second.items() if k not in ("erasures", "latest")} == {k: v for k, v in first.items() if k != "latest"}
    assert second["erasures"] == 1 and second != first
    engine.dispose()


@pytest.mark.postgres
def test_a_page_saved_while_the_respondent_is_erased_is_counted_and_deleted_too():
    """PostgreSQL: a save in flight (its transaction open) when the erasure starts. The
    erasure waits for it, then deletes and counts its rows too — none is left, none
    vanishes by cascade without a count."""
    import threading

    from sqlalchemy.orm import Session

    with postgres_database() as url:
        engine = make_engine(url)
        migrate(engine)
        db = Database(engine)
        with db.write() as s:
            _respondent(s, "racer", days_ago=0)
        saving = Session(engine)  # a page save, mid-transaction
        pk = saving.scalar(select(Respondent.id).where(Respondent.public_id == "racer"))
        saving.add(Answer(respondent_id=pk, item_id="sex", kind="demographic", choice="female"))
        saving.flush()
        result = {}
        eraser = threading.Thread(target=lambda: result.update(done=erase_respondent(db, "racer", "withdrawn")))
        eraser.start()
        eraser.join(1.0)
        assert eraser.is_alive(), "the erasure waits for the save in flight"
        saving.commit()
        saving.close()
        eraser.join(10)
        assert result["done"].rows == {"answers": 2, "page_events": 1, "respondents": 1}
        with db.read() as s:
            assert s.scalar(select(text("count(*)")).select_from(Answer)) == 0
        engine.dispose()


@pytest.mark.postgres
def test_a_page_submitted_as_its_respondent_is_erased_goes_back_to_the_start():
    """PostgreSQL, over HTTP: the page's save waits on the erasure's lock, then finds its
    respondent gone — the browser is sent to the start, not shown a server error."""
    import threading

    from sqlalchemy.orm import Session

    with postgres_database() as url, Server(url, "demo", "--rate-limit-ip", "0") as s:
        p = Person(s.url)
        p.consent()
        rid = p.c.get("/withdraw").text.split('class="code">')[1].split("<")[0]
        engine = make_engine(url)
        eraser = Session(engine)  # an erasure in progress: the respondent row locked, as `_erase` locks it
        pk = eraser.scalar(select(Respondent.id).where(Respondent.public_id == rid).with_for_update())
        result = {}
        form = p.answers()
        page = threading.Thread(target=lambda: result.update(r=p.c.post("/survey/1", data=form, follow_redirects=False)))
        page.start()
        page.join(1.0)
        assert page.is_alive(), "the save waits for the erasure"
        eraser.execute(text("DELETE FROM page_events WHERE respondent_id = :pk"), {"pk": pk})
        eraser.execute(text("DELETE FROM answers WHERE respondent_id = :pk"), {"pk": pk})
        eraser.execute(text("DELETE FROM respondents WHERE id = :pk"), {"pk": pk})
        eraser.commit()
        eraser.close()
        page.join(20)
        assert result["r"].status_code == 303 and result["r"].headers["location"] == "/"
        with Session(engine) as q:
            assert q.scalar(select(text("count(*)")).select_from(Answer)) == 0
        engine.dispose()
