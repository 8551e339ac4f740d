"""Continual learning: served answers, 👍/👎 and corrections over HTTP and on the chat page,
feedback → KTO rows → a KTO round on the embedded model that continues last round's adapter."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from rich.console import Console

from valign.feedback import FeedbackStore, feedback_digest, kto_rows_from_feedback, sft_rows_from_feedback
from valign.serve import create_app, serve_in_background

pytestmark = pytest.mark.slow

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


def test_feedback_becomes_kto_and_sft_rows(served):
    root, store = served
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


def test_a_kto_round_on_feedback_continues_last_rounds_adapter(served, tmp_path):
    """Round 1 trains KTO on the feedback from scratch; round 2 (after more feedback)
    starts from round 1's adapter through ``model: run:<round 1>``."""
    from valign.runs import StageDir
    from valign.stages.base import ModelPool, StageContext
    from valign.stages.preference import KTOStage, KTOStageConfig

    root, store = served

    def round_(name: str, model: str):
        cfg = KTOStageConfig(rows=f"feedback:{store.url}", max_steps=1, batch_size=2, max_length=128, precompute_ref_log_probs=False)
        run_config = SimpleNamespace(model=model, seed=0, stages=["kto"], kto=cfg)
        assert KTOStage().inputs(run_config) == []
        sdir = StageDir(tmp_path / name / "01-kto")
        ctx = StageContext(run_config=run_config, config=cfg, dir=sdir.path, rows=sdir.begin("fp"), models=ModelPool(None),
                           input_dirs={}, console=Console(stderr=True))
        KTOStage().run(ctx)
        sdir.finish("fp", ctx.info)
        return ctx

    first = round_("round1", "embedded")
    assert first.info["train"]["steps"] == 1 and first.info["train"]["continued_from"] is None
    assert first.info["counts"]["train_rows"] == len(kto_rows_from_feedback(store.url))
    second = round_("round2", f"run:{first.dir}")
    assert second.info["train"]["continued_from"] == str(first.dir)
    assert second.info["model"]["base"] == "embedded"
    assert json.loads((second.dir / "manifest.json").read_text())["model"]["adapter"] == "adapter"
    from valign.models.registry import load_model
    from valign.types import GenConfig

    assert load_model(f"run:{second.dir}").generate([HI], GenConfig(max_new_tokens=4, temperature=0))[0].text
