"""`revise`: constitutional self-critique and revision (Bai et al. 2022, §3.1).

For each answer from `respond`, R rounds: sample a principle by weight, ask the model
for a critique of its last answer against that principle, then for a revision. Worked
examples from the constitution's ``few_shot`` are shown first as earlier turns of the
same chat, so even a small model keeps the point of view and the format (Kantian
style: name the maxim behind the request, test it, then help).

Rows keep the prompt, the initial answer, every critique and revision with its
principle id, and the final revision as ``response`` and in ``messages`` (the SFT
row). Work is batched across prompts per round and checkpointed per chunk.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, ClassVar, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from valign.constitution import Constitution, FewShotExample, Principle
from valign.progress import GenProgress
from valign.stages.base import Stage, StageContext, constitution_inputs, model_identity, run_constitution
from valign.types import Conversation, GenConfig, Row, derived_seed

if TYPE_CHECKING:
    from valign.config import RunConfig

# Small models often echo the label they were asked for; strip it so it is not trained on.
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:revised response|revision|rewritten response|critique)(?:\*\*)?\s*:\s*", re.I)


class ReviseConfig(BaseModel):
    """Settings of the `revise` stage.

    Example (YAML):
        revise:
          rounds: 1               # critique→revision rounds per answer (1–4)
          few_shot: 2             # worked examples shown before each task
          kinds: null             # revise every answer; or e.g. [red_team]
          gen: {temperature: 0.7, max_new_tokens: 256}
    """

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(1, ge=1, le=4)
    few_shot: int = Field(2, ge=0, le=8)
    kinds: list[str] | None = None
    model: str | None = None  # defaults to the run's model
    chunk: int = Field(32, ge=1)
    critique_gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.7, max_new_tokens=160))
    gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.7, max_new_tokens=256))


class ReviseStage(Stage):
    name: ClassVar[str] = "revise"
    config_class = ReviseConfig
    reads_constitution = True

    def inputs(self, run_config: RunConfig) -> list[str]:
        return ["respond", *constitution_inputs(run_config)]

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg: ReviseConfig = run_config.revise
        return {
            "config": cfg.model_dump(mode="json"),
            "model": model_identity(cfg.model or run_config.model),
            "seed": run_config.seed,
            "constitution": run_constitution(run_config).fingerprint(),
        }

    def run(self, ctx: StageContext) -> None:
        cfg: ReviseConfig = ctx.config
        constitution = run_constitution(ctx.run_config)
        answers = [r for r in ctx.input_rows("respond") if cfg.kinds is None or r.get("kind") in cfg.kinds]
        todo = [r for r in answers if r["id"] not in ctx.rows.ids]
        ctx.info["counts"] = {"answers": len(answers), "resumed_done": len(answers) - len(todo)}
        ctx.info["constitution"] = constitution.name
        if not todo:
            return
        spec = cfg.model or ctx.run_config.model
        model = ctx.models.get(spec)
        seed = ctx.run_config.seed
        ctx.console.print(f"revise: {len(todo)} answers × {cfg.rounds} round(s) with {spec}")
        steps = len(todo) * cfg.rounds * 2
        with GenProgress("revise", total=steps) as bar:
            for start in range(0, len(todo), cfg.chunk):
                chunk = todo[start : start + cfg.chunk]
                states = [_start_state(r) for r in chunk]
                for rnd in range(cfg.rounds):
                    principles = [pick_principle(constitution, seed, s["id"], rnd) for s in states]
                    shots = [pick_examples(constitution, seed, s["id"], rnd, cfg.few_shot) for s in states]
                    convs = [critique_conversation(s, p, ex, constitution) for s, p, ex in zip(states, principles, shots)]
                    critiques = model.generate(convs, cfg.critique_gen.seeded(derived_seed(seed, rnd, "critique")), progress=bar)
                    for conv, p, c in zip(convs, principles, critiques):
                        conv += [
                            {"role": "assistant", "content": _clean(c.text)},
                            {"role": "user", "content": constitution.revision_prompt(p)},
                        ]
                    revisions = model.generate(convs, cfg.gen.seeded(derived_seed(seed, rnd, "revision")), progress=bar)
                    for s, p, c, r in zip(states, principles, critiques, revisions):
                        s["rounds"].append(
                            {
                                "principle_id": p.id,
                                "critique_request": p.critique_request,
                                "critique": _clean(c.text),
                                "revision_request": constitution.revision_prompt(p),
                                # An empty revision keeps the previous answer rather than training on nothing.
                                "revision": _clean(r.text) or s["response"],
                            }
                        )
                        s["response"] = s["rounds"][-1]["revision"]
                ctx.rows.append(_revised_row(s, spec, constitution.name) for s in states)


def pick_principle(constitution: Constitution, seed: int, row_id: str, rnd: int) -> Principle:
    """The principle for one round of one row: weighted, and the same on every re-run."""
    return constitution.sample(_rng(seed, row_id, rnd, "principle"))[0]


def pick_examples(constitution: Constitution, seed: int, row_id: str, rnd: int, k: int) -> list[FewShotExample]:
    if not constitution.few_shot or k == 0:
        return []
    rng = _rng(seed, row_id, rnd, "few-shot")
    return rng.sample(constitution.few_shot, min(k, len(constitution.few_shot)))


def critique_conversation(
    state: Row, principle: Principle, examples: list[FewShotExample], constitution: Constitution
) -> Conversation:
    """The chat that asks for a critique: worked examples as earlier turns, then the
    original exchange, then the principle's critique request.

    Each worked example is shown with its own principle's requests when it names one,
    so the model sees the exact format it is about to be asked for.
    """
    conv: Conversation = []
    for ex in examples:
        shown = constitution.get(ex.principle) if ex.principle else principle
        conv += [
            {"role": "user", "content": ex.prompt},
            {"role": "assistant", "content": ex.response},
            {"role": "user", "content": shown.critique_request},
            {"role": "assistant", "content": ex.critique},
            {"role": "user", "content": constitution.revision_prompt(shown)},
            {"role": "assistant", "content": ex.revision},
        ]
    conv += [
        *state["prompt_messages"],
        {"role": "assistant", "content": state["response"]},
        {"role": "user", "content": principle.critique_request},
    ]
    return conv


def _start_state(row: Row) -> Row:
    prompt_messages = [m for m in row["messages"][:-1]]
    return {**row, "prompt_messages": prompt_messages, "initial_response": row["response"], "rounds": []}


def _revised_row(state: Row, spec: str, constitution: str) -> Row:
    row = {k: v for k, v in state.items() if k not in ("prompt_messages", "messages", "model")}
    row.update(
        {
            "messages": [*state["prompt_messages"], {"role": "assistant", "content": state["response"]}],
            "principle_ids": [r["principle_id"] for r in state["rounds"]],
            "constitution": constitution,
            "respond_model": state.get("model"),
            "model": spec,
        }
    )
    return row


def _clean(text: str) -> str:
    return _LABEL.sub("", text.strip()).strip()


def _rng(seed: int, row_id: str, rnd: int, what: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}|{row_id}|{rnd}|{what}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


