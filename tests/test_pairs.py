"""The `pairs` stage: two answers per prompt from the SFT model, each stored with the
temperature it was sampled at — control flow on a scripted model, then for real on
the embedded model with a trained SFT stage as the policy."""

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ScriptedModel, stage_context
from valign.config import RunConfig
from valign.models.base import GenRequest
from valign.runs import RowLog, StageDir, read_rows
from valign.stages.base import StageContext
from valign.stages.pairs import PairsConfig, PairsStage
from valign.types import Completion, GenConfig

PROMPTS = {"q1": "Help me lie to my boss about being sick.", "q2": "What is a maxim?", "q3": "Write a fake excuse for my teacher."}


def respond_rows(ids=("q1", "q2")) -> list[dict]:
    """`respond` rows as that stage writes them; q1 was sampled twice (respond.gen.n = 2)."""
    rows = []
    for pid in ids:
        for sample in range(2 if pid == "q1" else 1):
            rows.append(
                {
                    "id": f"{pid}:{sample}",
                    "prompt_id": pid,
                    "prompt": PROMPTS[pid],
                    "messages": [{"role": "user", "content": PROMPTS[pid]}, {"role": "assistant", "content": f"answer {sample}"}],
                    "kind": "benign" if pid == "q2" else "red_team",
                    "source": "test",
                }
            )
    return rows


def _ctx(tmp_path: Path, cfg: PairsConfig, sft_dir: Path, rows: list[dict]) -> StageContext:
    respond_dir = tmp_path / "01-respond"
    if not (respond_dir / "rows.jsonl").exists():
        RowLog(respond_dir / "rows.jsonl").append(rows)
    sdir = StageDir(tmp_path / "04-pairs")
    run_config = RunConfig(name="t", model="embedded", seed=0, stages=["respond", "revise", "sft", "pairs"], pairs=cfg)
    assert PairsStage().inputs(run_config) == ["respond", "sft"], "the policy defaults to the run's sft stage"
    return stage_context(sdir, run_config, cfg, {"respond": respond_dir, "sft": sft_dir})


class TemperatureEcho(ScriptedModel):
    """Answers with the temperature it was asked to sample at."""

    def _generate_batches(self, requests: list[GenRequest], cfg: GenConfig) -> Iterator[list[tuple[int, Completion]]]:
        self.calls += len(requests)
        yield [(i, Completion(text=f"sampled at t={cfg.temperature} for {r.messages[-1]['content'][:12]}", completion_tokens=5)) for i, r in enumerate(requests)]


def test_pairs_store_each_answer_under_its_temperature(tmp_path, monkeypatch):
    loaded: list[str] = []
    model = TemperatureEcho()
    monkeypatch.setattr("valign.models.registry.load_model", lambda spec, **kw: loaded.append(spec) or model)
    sft_dir = tmp_path / "03-sft"
    cfg = PairsConfig(temperatures=[0.7, 1.0], chunk=2, gen=GenConfig(max_new_tokens=16))
    ctx = _ctx(tmp_path, cfg, sft_dir, respond_rows(("q1", "q2", "q3")))
    PairsStage().run(ctx)

    assert loaded == [f"run:{sft_dir}"] and ctx.info["policy"] == f"run:{sft_dir}"
    rows = read_rows(ctx.dir / "rows.jsonl")
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"], "one pair per prompt, however many samples respond drew"
    assert model.calls == 3 * 2
    for r in rows:
        assert r["model"] == f"run:{sft_dir}"
        assert r["prompt_messages"] == [{"role": "user", "content": PROMPTS[r["id"]]}], "the prompt without respond's answer"
        assert [a["temperature"] for a in r["responses"]] == [0.7, 1.0]
        for a in r["responses"]:
            assert a["text"] == f"sampled at t={a['temperature']} for {PROMPTS[r['id']][:12]}"

    # A second run over the finished rows samples nothing.
    again = _ctx(tmp_path, cfg, sft_dir, [])
    PairsStage().run(again)
    assert model.calls == 6 and again.info["counts"] == {"prompts": 3, "resumed_done": 3}


@pytest.mark.slow
def test_pairs_on_the_embedded_model_sample_the_sft_model(tmp_path, sft_stage, embedded):
    cfg = PairsConfig(temperatures=[0.7, 1.0], gen=GenConfig(max_new_tokens=12))
    ctx = _ctx(tmp_path, cfg, sft_stage, respond_rows())
    PairsStage().run(ctx)

    spec = f"run:{sft_stage}"
    rows = read_rows(ctx.dir / "rows.jsonl")
    assert [r["id"] for r in rows] == ["q1", "q2"] and ctx.info["policy"] == spec
    for r in rows:
        assert r["model"] == spec and r["kind"] == ("benign" if r["id"] == "q2" else "red_team")
        assert [a["temperature"] for a in r["responses"]] == [0.7, 1.0]
        for a in r["responses"]:
            assert a["text"].strip() and 0 < a["completion_tokens"] <= 12 and a["finish_reason"] in ("stop", "length")

    # Each stored answer is the SFT model's sample at that answer's temperature (the
    # stage seeds the k-th temperature with seed + k), and the base would have said
    # something else: the policy really is the SFT model.
    convs = [r["prompt_messages"] for r in rows]
    policy = ctx.models.get(spec)
    differs_from_base = False
    for k, t in enumerate(cfg.temperatures):
        gen = GenConfig(max_new_tokens=12, temperature=t, seed=k)
        stored = [r["responses"][k]["text"] for r in rows]
        assert [c.text for c in policy.generate(convs, gen)] == stored, t
        differs_from_base |= [c.text for c in embedded.generate(convs, gen)] != stored
    assert differs_from_base, "the SFT adapter changes what is sampled"
