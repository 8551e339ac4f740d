"""The public-values loop on a real survey database filled through the real web pages:
weighting and export from the command line, then survey → survey_sft → dpo → kto as a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.survey_helpers import ADMIN_TOKEN, Server
from valign.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.fixture(scope="module")
def survey_db(tmp_path_factory) -> str:
    """A SQLite survey database with 120 synthetic respondents of the demo population."""
    from valign.survey.simulate import load_population, run_simulation

    url = f"sqlite:///{tmp_path_factory.mktemp('pv') / 'survey.db'}"
    with Server(url) as server:
        result = run_simulation(server.url, 120, instrument="demo", population=load_population("demo"), admin_token=ADMIN_TOKEN, concurrency=40)
    assert result.errors == [] and result.completed >= 110
    return url


def test_weight_and_export_from_the_command_line(survey_db, tmp_path):
    run = CliRunner().invoke
    refused = run(app, ["survey", "weight", "--db", survey_db])
    assert refused.exit_code != 0 and "--synthetic" in str(refused.exception or refused.output)
    out = run(app, ["survey", "weight", "--db", survey_db, "--synthetic", "--out", str(tmp_path / "w.json")])
    assert out.exit_code == 0, out.output
    assert "Kish design effect" in out.output and "effective sample size" in out.output
    weights = json.loads((tmp_path / "w.json").read_text())["weights"]
    assert sum(w is not None for w in weights.values()) >= 100
    out = run(app, ["survey", "export", "--db", survey_db, "--synthetic", "--out", str(tmp_path / "export"), "-B", "40"])
    assert out.exit_code == 0, out.output
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert files == {"constitution.yaml", "consensus.csv", "dpo.jsonl", "kto.jsonl", "eval_items.jsonl", "summary.json"}
    from valign.constitution import load_constitution

    constitution = load_constitution(tmp_path / "export" / "constitution.yaml")
    assert constitution.principles and all(p.support["statement"] for p in constitution.principles)


def test_approved_proposals_are_analysed_like_other_statements(survey_db, tmp_path):
    import shutil

    from sqlalchemy.orm import Session

    from valign.survey.db import Proposal, Respondent, make_engine
    from valign.survey.quality import load_checked

    db_file = tmp_path / "copy.db"
    shutil.copy(survey_db.removeprefix("sqlite:///"), db_file)
    engine = make_engine(f"sqlite:///{db_file}")
    with Session(engine) as s:
        proposal = Proposal(text="The assistant should admit when it does not know.", status="approved")
        s.add(proposal)
        s.commit()
        people = s.query(Respondent).limit(3).all()
        from valign.survey.db import Database

        db = Database(engine)
        for r in people:
            db.upsert_answers(s, r.id, [{"item_id": proposal.item_id, "kind": "principle", "choice": "agree", "strength": None, "text": None}])
        s.commit()
        item = proposal.item_id
    frames = load_checked(f"sqlite:///{db_file}", "demo")
    assert item in {i.id for i in frames.instrument.items()}
    assert (frames.answers["item_id"] == item).sum() == 3


def test_public_values_pipeline(survey_db, tmp_path):
    """survey → survey_sft → dpo (scenario choices) → kto (👍/👎) on the embedded model."""
    from valign.config import load_config
    from valign.pipeline import run_pipeline

    config = {
        "name": "pv-test",
        "model": "embedded",
        "runs_dir": str(tmp_path / "runs"),
        "constitution": "survey",
        "stages": ["survey", "survey_sft", "dpo", "kto"],
        "survey": {"db": survey_db, "include_synthetic": True, "B": 30, "min_group_n": 10},
        "survey_sft": {"kinds": ["value"], "max_steps": 2, "batch_size": 8, "learning_rate": 1.0e-3},
        "dpo": {"rows": "survey", "max_steps": 1, "batch_size": 4, "max_length": 192},
        "kto": {"rows": "survey", "max_steps": 1, "batch_size": 4, "max_length": 192},
    }
    path = tmp_path / "pv.yaml"
    path.write_text(yaml.safe_dump(config))
    outcomes = {o.name: o for o in run_pipeline(load_config(path))}
    run_dir = tmp_path / "runs" / "pv-test"
    survey = json.loads((run_dir / "01-survey" / "manifest.json").read_text())
    assert survey["counts"]["eval_items"] == outcomes["survey"].rows > 20
    sft = json.loads((run_dir / "02-survey_sft" / "manifest.json").read_text())
    assert sft["fidelity"]["train"]["items"] + sft["fidelity"]["held_out"]["items"] == 14  # the demo's value items
    dpo = json.loads((run_dir / "03-dpo" / "manifest.json").read_text())
    assert dpo["train"]["continued_from"].endswith("02-survey_sft") and dpo["counts"]["train_rows"] == survey["counts"]["dpo_rows"]
    kto_rows = [json.loads(line) for line in (run_dir / "04-kto" / "rows.jsonl").read_text().splitlines()]
    assert kto_rows and all("weight" in r for r in kto_rows)
    kto = json.loads((run_dir / "04-kto" / "manifest.json").read_text())
    assert kto["train"]["continued_from"].endswith("03-dpo")
    # An unchanged database: everything is up to date.
    again = {o.name: o.status for o in run_pipeline(load_config(path))}
    assert set(again.values()) == {"skipped"}
