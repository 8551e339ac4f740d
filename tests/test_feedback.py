"""Continual learning: served answers, 👍/👎 and corrections over HTTP and on the chat page,
feedback → KTO rows → a KTO round on the embedded model that continues last round's adapter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from tests.conftest import stage_context
from valign.config import RunConfig
from valign.feedback import FeedbackStore, feedback_digest, kto_rows_from_feedback, sft_rows_from_feedback
from valign.serve import create_app, serve_in_background

pytestmark = [pytest.mark.slow, pytest.mark.model]

HI = [{"role": "user", "content": "Say hello to my grandmother."}]


@pytest.fixture(scope="module")
def served(embedded, tmp_path_factory):
    """The embedded model behind a real server with a SQLite feedback store; yields (root URL, store)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('fb') / 'feedback.db'}"
    store = FeedbackStore(url)
    with serve_in_background(create_app(embedded, feedback=store)) as base:
        yield base.removesuffix("/v1"), store


def _complete(root: str) -> dict:
    body = {"model": "embedded", "messages": HI, "max_tokens": 12, "temperature": 0}
    r = httpx.post(f"{root}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200
    return r.json()


def test_feedback_api_stores_one_rating_per_answer(served):
    root, store = served
    before = store.counts()
    answer = _complete(root)
    post = lambda **kw: httpx.post(f"{root}/v1/feedback", json={"completion_id": answer["id"], **kw}, timeout=30)  # noqa: E731
    r = post(rating="down", correction="Hello, Grandma! I hope you are well.")
    assert r.status_code == 200 and r.json()["rating"] == "down"
    assert post(rating="up").status_code == 200, "sending again replaces the rating"
    counts = httpx.get(f"{root}/v1/feedback", timeout=30).json()
    assert counts["served"] == before["served"] + 1 and counts["up"] == before["up"] + 1 and counts["down"] == before["down"]
    # Clear errors for the mistakes a client can make.
    missing = httpx.post(f"{root}/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": "up"}, timeout=30)
    with pytest.raises(Exception, match="does not exist"):
        kto_rows_from_feedback(f"sqlite:///{Path(store.url.removeprefix('sqlite:///')).parent / 'absent.db'}")
    assert missing.status_code == 404 and "no answer with id" in missing.json()["error"]["message"]
    bad = post(rating="meh")
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]
    long = post(rating="down", correction="x" * 9000)
    assert long.status_code == 400 and "shorten it" in long.json()["error"]["message"]


def test_chat_page_forms_need_csrf_and_collect_feedback(served):
    root, store = served
    with httpx.Client(base_url=root, timeout=120) as client:
        page = client.get("/chat")
        assert page.status_code == 200 and "Content-Security-Policy" in page.headers
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        history = re.search(r'name="history" value="([^"]*)"', page.text).group(1)
        assert client.post("/chat", data={"message": "hi", "history": history}).status_code == 403, "no CSRF token, no model call"
        assert client.post("/chat", data={"message": "  ", "history": history, "csrf": token}).status_code == 400
        sent = client.post("/chat", data={"message": "What is a good name for a cat?", "history": history, "csrf": token})
        assert sent.status_code == 200 and "The model" in sent.text
        cid = re.search(r'name="completion_id" value="([^"]+)"', sent.text).group(1)
        history = re.search(r'name="history" value="([^"]*)"', sent.text).group(1)
        rated = client.post("/chat/feedback", data={"csrf": token, "history": history, "completion_id": cid, "rating": "down",
                                                     "correction": "Try Miso, Pepper or Biscuit."})
        assert rated.status_code == 200 and "feedback is saved" in rated.text
        forged = client.post("/chat", data={"message": "again", "history": history + "x", "csrf": token}, follow_redirects=False)
        assert forged.status_code == 303, "an altered conversation is not accepted"
    rows = [r for r in store.rows() if r["completion_id"] == f"{cid}:0"]
    assert rows and rows[0]["correction"] == "Try Miso, Pepper or Biscuit." and rows[0]["messages"][-1]["content"] == "What is a good name for a cat?"


def _rate(root: str, text: str, rating: str, correction: str | None = None) -> None:
    """Ask the served model something and rate its answer, as a person on /chat would."""
    body = {"model": "embedded", "messages": [{"role": "user", "content": text}], "max_tokens": 12, "temperature": 0}
    answer = httpx.post(f"{root}/v1/chat/completions", json=body, timeout=120).json()
    r = httpx.post(f"{root}/v1/feedback", json={"completion_id": answer["id"], "rating": rating, "correction": correction}, timeout=30)
    assert r.status_code == 200


def test_feedback_becomes_kto_and_sft_rows(served):
    root, store = served
    _rate(root, "Say thanks in French.", "down", "Merci.")
    rows = kto_rows_from_feedback(store.url)
    assert rows and all(isinstance(r["label"], bool) and r["prompt"][-1]["role"] == "user" for r in rows)
    corrections = [r for r in rows if r["id"].endswith(":correction")]
    assert corrections and all(r["label"] for r in corrections), "a correction is a desirable answer"
    assert {r["id"] for r in sft_rows_from_feedback(store.url)} == {r["id"] for r in corrections}
    digest = feedback_digest(store.url)
    unrated = _complete(root)
    assert feedback_digest(store.url) == digest, "an answer nobody rated is no new round"
    probe = {"model": "embedded", "messages": HI, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    served = store.counts()["served"]
    assert httpx.post(f"{root}/v1/chat/completions", json=probe, timeout=60).status_code == 200
    assert store.counts()["served"] == served, "option-probability probes are not recorded for rating"
    httpx.post(f"{root}/v1/feedback", json={"completion_id": unrated["id"], "rating": "up"}, timeout=30)
    assert feedback_digest(store.url) != digest, "new feedback makes a new KTO round"


def test_feedback_rounds_train_on_corrections_and_ratings_and_compare_with_the_last_round(served, tmp_path):
    """Round 1 trains KTO on the feedback from the base model; round 2 is the shipped
    ``configs/feedback-round.yaml`` run for real: SFT on the corrections continues round
    1's adapter, KTO on the ratings continues SFT's, and evaluate compares round 2 with
    round 1 (its base is ``model: run:<round 1>``)."""
    from valign.config import load_config
    from valign.pipeline import run_pipeline
    from valign.runs import StageDir, read_rows
    from valign.stages.preference import KTOStage, KTOStageConfig

    root, store = served
    _rate(root, "Give me a two-word motto for a bakery.", "down", "Fresh daily.")
    _rate(root, "Name a colour of the sky.", "up")
    cfg = KTOStageConfig(rows=f"feedback:{store.url}", max_steps=1, batch_size=2, max_length=128, precompute_ref_log_probs=False)
    run_config = RunConfig(name="t", model="embedded", seed=0, stages=["kto"], kto=cfg)
    assert KTOStage().inputs(run_config) == []
    sdir = StageDir(tmp_path / "round1" / "01-kto")
    first = stage_context(sdir, run_config, cfg)
    KTOStage().run(first)
    sdir.finish("fp", first.info)
    assert first.info["train"]["steps"] == 1 and first.info["train"]["continued_from"] is None
    assert first.info["counts"]["train_rows"] == len(kto_rows_from_feedback(store.url))

    _rate(root, "Suggest a name for a goldfish.", "down", "Bubbles.")
    fb = f"feedback:{store.url}"
    round2 = load_config("configs/feedback-round.yaml", [
        "name=round2", f"runs_dir={tmp_path}", f"model=run:{first.dir}", f"sft.rows={fb}", f"kto.rows={fb}",
        "sft.max_steps=1", "sft.batch_size=2", "sft.max_length=128", "kto.max_steps=1", "kto.batch_size=2", "kto.max_length=128",
        "kto.precompute_ref_log_probs=false", "evaluate.suites=[keycases, safety]", "evaluate.keycases.limit=1",
        "evaluate.keycases.gen.max_new_tokens=12", "evaluate.safety.red_team=2", "evaluate.safety.benign_edgy=2",
        "evaluate.safety.gen.max_new_tokens=12",
    ])
    outcomes = run_pipeline(round2, console=Console(stderr=True))
    assert [o.name for o in outcomes] == ["sft", "kto", "evaluate", "report"]
    manifest = lambda name: json.loads((tmp_path / "round2" / name / "manifest.json").read_text())  # noqa: E731
    sft, kto, evaluate = manifest("01-sft"), manifest("02-kto"), manifest("03-evaluate")
    corrections = sft_rows_from_feedback(store.url)
    assert len(corrections) >= 2 and sft["counts"]["train_rows"] == len(corrections), "every correction is an SFT row"
    assert {r["completion"][0]["content"] for r in read_rows(tmp_path / "round2" / "01-sft" / "rows.jsonl")} >= {"Fresh daily.", "Bubbles."}
    assert sft["train"]["steps"] == 1 and sft["train"]["continued_from"] == str(first.dir), "SFT continues round 1"
    assert kto["train"]["continued_from"] == str(tmp_path / "round2" / "01-sft"), "KTO continues this round's SFT"
    assert kto["model"]["base"] == "embedded"
    models = evaluate["models"]
    assert models["base"] == f"run:{first.dir}" and models["tuned"] == f"run:{tmp_path / 'round2' / '02-kto'}", "this round vs the last"
    assert (tmp_path / "round2" / "report.html").exists()

    # A round in which nobody wrote a correction passes last round's adapter on unchanged.
    from valign.feedback import FeedbackStore
    from valign.stages.sft import SFTStage, SFTStageConfig

    quiet = FeedbackStore(f"sqlite:///{tmp_path / 'quiet.db'}")
    sft_cfg = SFTStageConfig(rows=f"feedback:{quiet.url}")
    rc = RunConfig(name="t", model=f"run:{first.dir}", seed=0, stages=["sft"], sft=sft_cfg)
    sdir = StageDir(tmp_path / "round3" / "01-sft")
    ctx = stage_context(sdir, rc, sft_cfg)
    SFTStage().run(ctx)
    assert ctx.info["train"]["steps"] == 0
    assert (ctx.dir / "adapter" / "adapter_model.safetensors").read_bytes() == (first.dir / "adapter" / "adapter_model.safetensors").read_bytes()
    empty = StageDir(tmp_path / "nothing" / "01-sft")
    with pytest.raises(Exception, match="holds no rows"):
        SFTStage().run(stage_context(empty, RunConfig(name="t", model="embedded", seed=0, stages=["sft"], sft=sft_cfg), sft_cfg))
