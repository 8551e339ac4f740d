"""Quotas: targets per demographic cell, checked when the instrument loads; a respondent in
a full cell sees the closing page over real HTTP and is counted as screened out (SQLite
and PostgreSQL); the dashboard shows each cell's fill; simulate respects them; the
migration adds the columns to a database that already holds respondents."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import httpx
import pytest
import yaml

from tests.survey_helpers import ADMIN_TOKEN, DB_BACKENDS, Server, admin_headers, hidden, postgres_database, radio_names
from valign.errors import ValignError
from valign.survey.instrument import load_instrument


def demo_data() -> dict:
    return yaml.safe_load((resources.files("valign") / "data" / "instruments" / "demo.yaml").read_text(encoding="utf-8"))


def with_quotas(tmp_path: Path, quotas: dict, name: str = "quota.yaml", short: bool = False) -> Path:
    """The demo instrument with ``quotas``; ``short``: only its demographics and principles (three pages)."""
    data = demo_data()
    data["quotas"] = quotas
    if short:
        for section in ("values", "scenarios", "ratings", "social_desirability", "attention_checks"):
            data.pop(section, None)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


# -- declaring quotas ---------------------------------------------------------------------------


def test_targets_from_counts_shares_and_a_margins_file(tmp_path):
    # A margins file next to the instrument, with a map that collapses two answer codes
    # into one census category and a census category no answer reaches (dropped, rest rescaled).
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({
        "id": "m", "source": {"citation": "made up for this test"},
        "variables": {"age_group": {"categories": {"young": 0.4, "old": 0.4, "unborn": 0.2},
                                    "map": {"18-29": "young", "30-44": "young", "45-64": "old", "65+": "old"}}},
    }, sort_keys=False), encoding="utf-8")
    inst = load_instrument(with_quotas(tmp_path, {"total": 7, "sets": [
        {"by": ["age_group"], "margins": "m.yaml"},
        {"by": ["sex", "education"], "shares": {"female": {"school": 0.25, "degree": 0.25}, "male": {"school": 0.5}}},
        {"by": ["sex"], "targets": {"male": 0}},
    ]}))
    cells = {c.label: c for c in inst.quota_cells()}
    assert {k: c.target for k, c in cells.items()} == {
        "age_group=young": 4, "age_group=old": 3,  # 0.5 each once "unborn" is dropped: 3.5 / 3.5, the tie to the first listed
        "sex=female & education=school": 2, "sex=female & education=degree": 2, "sex=male & education=school": 3,
        "sex=male": 0,
    }
    assert sum(c.target for c in inst.quota_cells() if c.set_number == 1) == 7
    assert cells["age_group=young"].contains({"age_group": "30-44"}) and not cells["age_group=young"].contains({"age_group": "65+"})
    assert not cells["sex=male"].contains({"age_group": "18-29"})  # skipped: in no cell
    # quotas decide who is asked, not what: the answers' version (fingerprint) is the demo's
    assert inst.fingerprint() == load_instrument("demo").fingerprint()
    # `valign survey check` lists them
    from typer.testing import CliRunner

    from valign.cli import app

    out = CliRunner().invoke(app, ["survey", "check", str(tmp_path / "quota.yaml")])
    assert out.exit_code == 0 and "quota age_group=young: target 4 completed responses" in out.output and "quota sex=male: target 0" in out.output
    # The shipped census margins, crossed: each cell's share is the product of its margins'.
    inst = load_instrument(with_quotas(tmp_path, {"total": 1000, "sets": [{"by": ["sex", "age_group"], "margins": "nz-census-2023"}]}))
    targets = {c.label: c.target for c in inst.quota_cells()}
    assert sum(targets.values()) == 1000 and targets["sex=female & age_group=45-64"] == round(0.51 * 0.32 * 1000)


BAD_QUOTAS = {
    "unknown question": ({"sets": [{"by": ["sexx"], "targets": {"female": 1}}]}, r"quotas\.sets\[1\]\.by: 'sexx' is not a demographic question.*age_group, sex, education"),
    "unknown answer": ({"sets": [{"by": ["sex"], "targets": {"femail": 1}}]}, r"quotas\.sets\[1\]\.targets: 'femail' is not an answer of 'sex' \(its answers: female, male\)"),
    "a YAML boolean as a code": ({"sets": [{"by": ["sex"], "targets": {True: 1}}]}, r"'true' is not an answer of 'sex'.*YAML reads an unquoted yes, no, on, off, true or false as a boolean, so quote the code"),
    "negative target": ({"sets": [{"by": ["sex"], "targets": {"female": -1}}]}, r"quotas\.sets\[1\]\.targets\.female: the target -1 is not a whole number"),
    "fractional target": ({"sets": [{"by": ["sex"], "targets": {"female": 2.5}}]}, r"the target 2\.5 is not a whole number"),
    "shares without a total": ({"sets": [{"by": ["sex"], "shares": {"female": 0.5, "male": 0.5}}]}, r"quotas\.total: set 1 gives shares.*add total"),
    "shares not summing to 1": ({"total": 9, "sets": [{"by": ["sex"], "shares": {"female": 0.5, "male": 0.4}}]}, r"the shares sum to 0\.9000, not 1"),
    "two sources": ({"sets": [{"by": ["sex"], "targets": {"male": 1}, "shares": {"female": 1.0}}]}, r"quotas\.sets\[1\]: this set gives targets and shares; give exactly one"),
    "no source": ({"sets": [{"by": ["sex"]}]}, r"gives none of targets, shares and margins"),
    "missing margins file": ({"total": 9, "sets": [{"by": ["sex"], "margins": "no-such-census"}]}, r"quotas\.sets\[1\]\.margins: the margins could not be read"),
    "not nested per question": ({"sets": [{"by": ["sex", "age_group"], "targets": {"female": 3}}]}, r"targets\.female: expected a mapping from answers of 'age_group'"),
    "the same crossing twice": ({"sets": [{"by": ["sex"], "targets": {"male": 1}}, {"by": ["sex"], "targets": {"female": 1}}]}, r"quotas\.sets\[2\]: this set crosses the same questions as set 1"),
    "a question twice": ({"sets": [{"by": ["sex", "sex"], "targets": {"male": {"male": 1}}}]}, r"a question is named twice"),
    "unknown field": ({"sets": [{"by": ["sex"], "targets": {"male": 1}, "limit": 3}]}, r"quotas\.sets\[1\]\.limit: unknown field 'limit'"),
}


@pytest.mark.parametrize("case", list(BAD_QUOTAS))
def test_quota_mistakes_stop_the_instrument_with_one_sentence(tmp_path, case):
    quotas, pattern = BAD_QUOTAS[case]
    path = with_quotas(tmp_path, quotas)
    with pytest.raises(ValignError, match=pattern) as err:
        load_instrument(path)
    message = str(err.value)
    assert message.startswith(str(path)) and message.endswith(".") and "\n" not in message and "Traceback" not in message


def test_margins_that_miss_a_variable_or_an_answer_say_which(tmp_path):
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"id": "m", "source": {"citation": "made up"}, "variables": {
        "sex": {"categories": {"female": 0.5, "man": 0.5}}}}), encoding="utf-8")
    with pytest.raises(ValignError, match=r"'m\.yaml' has no variable 'age_group'"):
        load_instrument(with_quotas(tmp_path, {"total": 9, "sets": [{"by": ["age_group"], "margins": "m.yaml"}]}))
    with pytest.raises(ValignError, match=r"has no category for answer 'male' of 'sex'.*map it under variables\.sex\.map"):
        load_instrument(with_quotas(tmp_path, {"total": 9, "sets": [{"by": ["sex"], "margins": "m.yaml"}]}))


# -- a full cell over real HTTP -------------------------------------------------------------------


class Respondent:
    """One browser: consents, answers the demographics as told, then the first option everywhere."""

    def __init__(self, base: str) -> None:
        self.c = httpx.Client(base_url=base, follow_redirects=True, timeout=30)
        r = self.c.get("/")
        self.page = self.c.post("/consent", data={**hidden(r.text), "decision": "agree"})
        assert self.page.url.path == "/survey/1"

    def submit(self, chosen: dict[str, str] | None = None) -> httpx.Response:
        html = self.page.text
        data = hidden(html)
        for name in radio_names(html):
            data[name] = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html).group(1)
        if chosen is not None:  # the demographics page: exactly these answers (a missing one is skipped)
            data = {**hidden(html), **{f"q-{k}": v for k, v in chosen.items()}}
        action = re.search(r'<form method="post" action="([^"]+)"', html).group(1)
        self.page = self.c.post(action, data=data)
        assert self.page.status_code == 200, self.page.text
        return self.page

    def finish(self) -> None:
        while self.page.url.path != "/done":
            self.submit()

    def to_last_page(self) -> None:
        while ">Finish</button>" not in self.page.text:
            self.submit()

    def response_number(self) -> str:
        return re.search(r'<strong class="code">([^<]+)</strong>', self.page.text).group(1)


QUOTAS = {
    "message": {"en": "Thank you! We already have enough answers from people like you.", "de": "Danke! Von Menschen wie Ihnen haben wir schon genug Antworten."},
    "sets": [
        {"by": ["sex"], "targets": {"female": 1, "male": 0}},
        {"by": ["age_group", "education"], "targets": {"65+": {"degree": 5}}},
    ],
}


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_a_full_cell_closes_the_survey_politely_and_is_counted(tmp_path, backend):
    path = with_quotas(tmp_path, QUOTAS, short=True)

    def run(db_url: str) -> None:
        with Server(db_url, str(path), "--rate-limit-ip", "0") as s:
            # Four women enter the female cell while it is still open, and answer slowly.
            late = [Respondent(s.url) for _ in range(4)]
            for e in late:
                assert e.submit({"sex": "female", "age_group": "65+", "education": "degree"}).url.path == "/survey/2"
            # A fills the female cell (target 1).
            a = Respondent(s.url)
            a.submit({"sex": "female", "age_group": "18-29", "education": "school"})
            a.finish()
            # B is female too: the cell is full, so her survey ends on the closing page.
            b = Respondent(s.url)
            form = b.page.text
            page = b.submit({"sex": "female", "age_group": "30-44", "education": "school"})
            assert page.url.path == "/screened"
            assert "Thank you for your time" in page.text and QUOTAS["message"]["en"] in page.text
            assert 'role="status"' in page.text and "<script" not in page.text and '/static/survey.css' in page.text
            b_id = b.response_number()
            # Nothing takes her back into the survey: its pages, /continue, /done, a new POST.
            for path_ in ("/survey/2", "/survey/1", "/continue", "/done", "/"):
                assert b.c.get(path_).url.path == "/screened", path_
            retry = b.c.post("/survey/1", data={**hidden(form), "q-sex": "male"})  # the page's own CSRF and timing fields
            assert retry.url.path == "/screened" and retry.status_code == 200
            # C is male, whose target is 0: screened at once. D skips sex: in no sex cell, goes on.
            c = Respondent(s.url)
            assert c.submit({"sex": "male", "age_group": "18-29"}).url.path == "/screened"
            d = Respondent(s.url)
            assert d.submit({"age_group": "65+", "education": "degree"}).url.path == "/survey/2"
            # They were let in before the cell filled: going back and saving the same answers
            # does not re-check one, and all four finish, submitting their last pages at the
            # same moment (the documented overshoot: at most the respondents in progress).
            late[0].page = late[0].c.get("/survey/1")
            assert late[0].submit({"sex": "female", "age_group": "65+", "education": "degree"}).url.path == "/survey/2"
            for e in late:
                e.to_last_page()
            barrier = threading.Barrier(len(late))

            def last_page(e: Respondent) -> str:
                barrier.wait()
                return e.submit().url.path

            with ThreadPoolExecutor(len(late)) as pool:
                assert list(pool.map(last_page, late)) == ["/done"] * 4

            summary = httpx.get(s.url + "/admin/api/summary", headers=admin_headers()).json()
            assert (summary["started"], summary["completed"], summary["screened_out"]) == (8, 5, 2)
            fill = {c_["label"]: c_ for c_ in summary["quotas"]}
            zero = {"completed": 0, "in_progress": 0, "screened_out": 0}
            assert fill["sex=female"] | {"synthetic": None} == {"set": 1, "cell": {"sex": "female"}, "label": "sex=female", "target": 1, "completed": 5, "in_progress": 0, "screened_out": 1, "full": True, "synthetic": None}
            assert (fill["sex=male"]["completed"], fill["sex=male"]["screened_out"], fill["sex=male"]["full"]) == (0, 1, True)
            crossed = fill["age_group=65+ & education=degree"]
            assert (crossed["target"], crossed["completed"], crossed["in_progress"], crossed["screened_out"], crossed["full"]) == (5, 4, 1, 0, False)
            assert all(c_["synthetic"] == zero for c_ in summary["quotas"])

            dashboard = httpx.get(s.url + "/admin/", headers=admin_headers()).text
            assert "<h2>Quotas</h2>" in dashboard and "sex=female <strong>(full)</strong>" in dashboard
            assert "<th scope=\"row\">Screened out (quota full)</th><td>2</td>" in dashboard
            assert re.search(r"age_group=65\+ &amp; education=degree</th><td>5</td><td>4</td><td>1</td><td>0</td>", dashboard)

            # Exports mark them; analyses (completed only) never see them.
            rows = {r["respondent_id"]: r for r in httpx.get(s.url + "/admin/export.json", headers=admin_headers()).json()}
            assert rows[b_id]["screened_out"] is True and rows[b_id]["completed"] is False and rows[b_id]["sex"] == "female"
            assert sum(r["screened_out"] for r in rows.values()) == 2
        from valign.survey.db import load_frames

        frames = load_frames(db_url, load_instrument(path))
        assert frames.respondents["screened_out"].sum() == 2
        assert not frames.select(completed_only=True).respondents["screened_out"].any()

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'quota.db'}")
    else:
        with postgres_database() as url:
            run(url)


# -- simulate ---------------------------------------------------------------------------------------


def test_simulate_screens_out_synthetic_respondents_of_full_cells(tmp_path):
    from typer.testing import CliRunner

    from valign.cli import app
    from valign.survey.db import Database, load_frames, make_engine
    from valign.survey.quota_fill import quota_fill

    path = with_quotas(tmp_path, {"sets": [{"by": ["sex"], "targets": {"female": 2, "male": 1}}]})
    population = tmp_path / "population.yaml"  # everyone answers sex, finishes unless screened
    population.write_text("seed: 4\nskip_demographic: 0\nprofiles: {clean: 1.0}\npropose: 0\n", encoding="utf-8")
    db_url = f"sqlite:///{tmp_path / 'sim.db'}"
    out = CliRunner().invoke(app, ["survey", "simulate", "--n", "8", "--serve-db", db_url, "--instrument", str(path), "--population", str(population), "--concurrency", "1"])
    assert out.exit_code == 0, out.output
    inst = load_instrument(path)
    r = load_frames(db_url, inst).respondents
    by_sex = r["sex"].value_counts().to_dict()
    # one at a time: each cell takes exactly its target (when it had that many), the rest are screened out
    expected = min(2, by_sex.get("female", 0)) + min(1, by_sex.get("male", 0))
    assert expected == 3, by_sex  # the seed gives both sexes enough respondents for the test to mean something
    assert f"started 8, completed 3 of 8, screened out 5 (quota cell full)" in out.output
    assert r["synthetic"].all() and int(r["completed"].sum()) == 3 and int(r["screened_out"].sum()) == 5
    assert not (r["completed"] & r["screened_out"]).any()
    fill = {c["label"]: c for c in quota_fill(Database(make_engine(db_url)), inst)}
    assert fill["sex=female"]["synthetic"] == {"completed": 2, "in_progress": 0, "screened_out": by_sex["female"] - 2}
    assert fill["sex=male"]["synthetic"] == {"completed": 1, "in_progress": 0, "screened_out": by_sex["male"] - 1}
    # synthetic respondents fill their own pool: no real respondent's place is taken
    assert (fill["sex=female"]["completed"], fill["sex=female"]["full"]) == (0, False)


# -- the migration -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_the_quota_migration_keeps_existing_respondents_and_goes_back(tmp_path, backend):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    from valign.survey.db import head_revision, make_engine, migrate, schema_revision

    def run(url: str) -> None:
        engine = make_engine(url)
        migrate(engine, "0002")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO respondents (public_id, resume_hash, instrument_id, instrument_fingerprint, seed, shown_proposals, synthetic, completed, started_at) "
                "VALUES ('old', 'h', 'valign-demo', 'f', 1, '[]', false, true, '2026-11-30 12:00:00')"
            ))
        migrate(engine)
        assert schema_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT screened_out, quota_cell FROM respondents WHERE public_id = 'old'")).one() == (False, None)
        assert "ix_answers_item_choice" in {i["name"] for i in inspect(engine).get_indexes("answers")}
        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("valign.survey") / "migrations"))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        assert schema_revision(engine) == "0002"
        assert {"screened_out", "quota_cell"}.isdisjoint(c["name"] for c in inspect(engine).get_columns("respondents"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT public_id FROM respondents")).scalars().all() == ["old"]
        engine.dispose()

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        with postgres_database() as url:
            run(url)
