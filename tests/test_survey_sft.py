"""Distribution fine-tuning on the embedded model: the model moves towards the population."""

import json
from pathlib import Path

import pytest

from tests.conftest import stage_context
from valign.config import RunConfig
from valign.runs import StageDir
from valign.stages.survey_sft import SurveySFTConfig, SurveySFTStage, split_items
from valign.survey.opinion import OpinionItem, write_items

LABELS = ["Not like me at all", "Not like me", "A little like me", "Somewhat like me", "Like me", "Very much like me"]


def _items(n: int = 8) -> list[OpinionItem]:
    items = []
    for i in range(n):
        dist = [0.02] * 6
        dist[(2 * i) % 6] = 0.9
        total = sum(dist)
        items.append(OpinionItem(id=f"v{i}", kind="value", instructions="How much is this person like you?",
                                 question=f"Statement {i}: this person values something.", options=LABELS, ordinal=True,
                                 distribution=[d / total for d in dist], n=100))
    return items


def test_holdout_split_is_stable_and_leaves_both_sides():
    items = _items()
    train, held = split_items(items, 0.25, seed=0)
    assert len(held) == 2 and not {i.id for i in train} & {i.id for i in held}
    assert {i.id for i in split_items(list(reversed(items)), 0.25, seed=0)[1]} == {i.id for i in held}, "order does not matter"
    assert len(split_items(items[:2], 0.1, seed=0)[1]) == 1, "at least one item is held out"


@pytest.mark.slow
@pytest.mark.model
def test_survey_sft_moves_the_model_towards_the_population(tmp_path):
    path = write_items(_items(), tmp_path / "eval_items.jsonl")
    cfg = SurveySFTConfig(items=str(path), epochs=3, batch_size=6, learning_rate=1e-3)
    run_config = RunConfig(name="t", model="embedded", seed=0, stages=["survey_sft"], survey_sft=cfg)
    stage = SurveySFTStage()
    assert stage.inputs(run_config) == []
    sdir = StageDir(tmp_path / "01-survey_sft")
    ctx = stage_context(sdir, run_config, cfg)
    stage.run(ctx)
    fid = ctx.info["fidelity"]
    assert fid["train"]["items"] == 6 and fid["held_out"]["items"] == 2
    assert fid["train"]["distance_after"] < fid["train"]["distance_before"] - 0.05, fid
    rows = list(ctx.rows)
    assert {r["split"] for r in rows} == {"train", "held_out"} and all(abs(sum(r["after"]) - 1) < 1e-4 for r in rows)
    assert (ctx.dir / "adapter" / "adapter_model.safetensors").exists()
    sdir.finish("fp", ctx.info)
    # The adapter loads like any training stage's and answers on the same items.
    from valign.evals.fidelity import score_fidelity
    from valign.models.registry import load_model

    # The evaluation path (choice_probs through the served model) reads the same
    # distributions the stage measured with its own (fp32) forward pass; the engine runs
    # in fp32 for this comparison (its default, bf16 on CPUs that have it, is within 0.03).
    tuned = score_fidelity(load_model(f"run:{ctx.dir}", dtype="float32"), _items())
    after = {r["id"]: r["after"] for r in rows}
    for item in tuned.items:
        assert item["model"] == pytest.approx(after[item["id"]], abs=2e-3), item["id"]
