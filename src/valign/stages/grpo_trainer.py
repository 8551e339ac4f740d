"""TRL's GRPOTrainer with what valign adds: the watch for reward hacking and a choice
of where answers are sampled.

On a CPU, valign's plain LM head replaces TRL's chunked log-prob kernel
(`valign.stages.plain_head`), as in dpo and kto, and `guard_bf16` keeps the LoRA sums and
attention out of bf16.

`GRPOWatch` reads every step's answers once more, whatever the rewards are: the refusal
rate on each kind of prompt (a policy that learns to refuse everything, or to comply
with everything, shows here first) goes into the training log beside TRL's own reward
means, KL and answer lengths, and every ``sample_every`` steps a few answers are written
to ``samples.jsonl`` with each reward's score, for a person to read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from valign import distributed
from valign.evals.classifiers import Exchange, load_classifier
from valign.rewards.base import answer_text, as_conversation

if TYPE_CHECKING:
    from valign.stages.grpo import GRPOStageConfig
    from valign.stages.grpo_sampling import Sampler

__all__ = ["GRPOWatch", "valign_grpo_trainer", "read_samples", "WATCH_PREFIX"]

WATCH_PREFIX = "watch/refusal_rate/"  # + a prompt kind: the log's refusal rates


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The sampled answers a GRPO stage logged, in step order (a step logged twice — by a
    killed run and by its resumption — counts once, the later one).

    Example:
        >>> read_samples(Path("/nonexistent/samples.jsonl"))
        []
    """
    if not path.is_file():
        return []
    by_key: dict[tuple[int, int], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        by_key[(int(row["step"]), int(row["index"]))] = row
    return [by_key[k] for k in sorted(by_key)]


class GRPOWatch:
    """Refusal rates per prompt kind, and sampled answers every few steps."""

    def __init__(self, path: Path, cfg: "GRPOStageConfig", load_model: Callable[[str], Any], after_step: int = 0) -> None:
        self.path = path
        self.every = cfg.sample_every
        self.per_log = cfg.samples_per_log
        self.classifier = load_classifier(cfg.watch_classifier, load_model)
        self._logged_step = -1
        if distributed.is_main():
            # A resumed run redoes the steps after its checkpoint: their samples go.
            kept = [r for r in read_samples(path) if r["step"] <= after_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def count(self) -> int:
        return len(read_samples(self.path))

    def observe(
        self,
        step: int,
        prompts: list[Any],
        completions: list[Any],
        inputs: list[dict[str, Any]],
        rewards: list[list[float]],
        names: list[str],
        weights: list[float],
        log_metric: Callable[[str, float], None],
    ) -> None:
        """Log this step's refusal rates (one value per answer, so TRL's average over
        processes is exact) and, on sampling steps, write a few answers."""
        convs = [as_conversation(p) for p in prompts]
        answers = [answer_text(c) for c in completions]
        kinds = [str(i.get("kind") or "prompt") for i in inputs]
        readings = self.classifier.classify([Exchange(str(c[-1]["content"]), a) for c, a in zip(convs, answers)])
        for kind, reading in zip(kinds, readings):
            log_metric(WATCH_PREFIX + kind, float(reading.refused))
        if self.per_log == 0 or (step - 1) % self.every or step == self._logged_step or not distributed.is_main():
            return
        self._logged_step = step
        # TRL lays each prompt's answers side by side; taking the first of every group,
        # then the second, …, makes the few shown cover several prompts.
        group = max(1, len(answers) // max(1, len({str(i.get("id")) for i in inputs})))
        order = sorted(range(len(answers)), key=lambda n: (n % group, n))
        lines = []
        for index, n in enumerate(order[: self.per_log]):
            scores = {name: (None if r != r else round(r, 4)) for name, r in zip(names, rewards[n])}
            total = sum(w * s for w, s in zip(weights, scores.values()) if s is not None)
            lines.append({
                "step": step, "index": index, "id": inputs[n].get("id"), "kind": kinds[n],
                "prompt": str(convs[n][-1]["content"]), "answer": answers[n],
                "rewards": scores, "total": round(total, 4), "refusal": readings[n].label,
            })
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


def valign_grpo_trainer(sampler: "Sampler"):
    """TRL's GRPOTrainer, watched (`GRPOWatch`) and sampling where ``sampler`` says."""
    from trl import GRPOTrainer

    from valign.stages.plain_head import add_plain_lm_head, plain_head_wanted
    from valign.stages.training import guard_bf16

    class ValignGRPOTrainer(GRPOTrainer):
        def __init__(self, *args: Any, watch: GRPOWatch, **kwargs: Any) -> None:
            self._watch = watch
            super().__init__(*args, **kwargs)
            guard_bf16(self.model)
            inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            if plain_head_wanted(inner):
                # TRL's chunked log-prob kernel was about half of a GRPO step on a CPU.
                add_plain_lm_head(inner, ("log_probs", "entropy"), temperature=self.temperature)
                if self.ref_model is not None:
                    add_plain_lm_head(self.ref_model, ("log_probs",), temperature=self.temperature)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            start = self.accelerator.process_index * len(prompts)  # TRL's own slice of the gathered rewards
            local = rewards[start : start + len(prompts)].tolist()
            self._watch.observe(
                self.state.global_step + 1, prompts, completions, inputs, local,
                list(self.reward_func_names), self.reward_weights.tolist(), self._log_metric,
            )
            return rewards

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            sampled = sampler.generate(self, prompt_ids)
            if sampled is not None:
                return sampled
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)

    return ValignGRPOTrainer
