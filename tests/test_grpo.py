"""The grpo stage and its rewards: scripted judges and classifiers for the arithmetic and
control flow; the embedded model for GRPO itself (a marker reward's frequency rises in
fresh samples), the real pairwise judge, kill and resume, and the report section."""

import json
import re

import pytest
from pydantic import TypeAdapter

from tests.conftest import ScriptedModel, TextModel
from valign.config import load_config
from valign.constitution import load_constitution
from valign.errors import ConfigError, ValignError
from valign.models.base import normalise
from valign.types import Completion
from valign.rewards import RewardContext, RewardSpec, build_rewards
from valign.rewards.pairwise import PairwiseReward, PairwiseRewardConfig, win_rates
from valign.rewards.python import load_function
from valign.rewards.refusal import ClassifierReward, HarmRewardConfig, RefusalRewardConfig
from valign.rewards.verdict import VerdictReward, VerdictRewardConfig
from valign.stages.grpo import GRPOStageConfig, grpo_prompts
from valign.stages.grpo_sampling import LocalSampler, ServedSampler, choose_sampler, token_ids
from valign.stages.grpo_trainer import GRPOWatch, read_samples

KANT = load_constitution("kantian")
SPECS = TypeAdapter(list[RewardSpec])


class PreferringJudge(ScriptedModel):
    """A log-prob judge that prefers the option containing ``word`` (3:1), and adds
    ``bias`` to whatever is shown as (A)."""

    def __init__(self, word: str, bias: float = 0.0) -> None:
        super().__init__(name="preferring")
        self.word, self.bias = word, bias

    def _choice_probs(self, convs, options, answer_prefix):
        out = []
        for conv in convs:
            text = conv[-1]["content"]
            a = text.split("(A) ", 1)[1].split("\n\n(B) ", 1)[0]
            b = text.split("\n\n(B) ", 1)[1]
            score_a = (3.0 if self.word in a else 1.0) + self.bias
            score_b = 3.0 if self.word in b.split("\n\n")[0] else 1.0
            out.append(normalise({"A": score_a, "B": score_b}))
        self.choice_calls += len(convs)
        return out


def context(model) -> RewardContext:
    return RewardContext(lambda spec: model, KANT, 0, "scripted")


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- pairwise ---------------------------------------------------------------------------


def test_win_rates_of_a_group_average_one_half():
    rates = win_rates(4, {(0, 1): 0.9, (0, 2): 0.8, (0, 3): 0.7, (1, 2): 0.5, (1, 3): 0.6, (2, 3): 0.4})
    assert rates == pytest.approx([0.8, (0.1 + 0.5 + 0.6) / 3, (0.2 + 0.5 + 0.4) / 3, (0.3 + 0.4 + 0.6) / 3])
    assert sum(rates) / 4 == pytest.approx(0.5)


def test_pairwise_reward_follows_a_judge_with_a_known_preference():
    judge = PreferringJudge("honest")
    reward = PairwiseReward(PairwiseRewardConfig(), context(judge))
    answers = ["Be honest with her.", "Lie, it is easier.", "Say nothing.", "An honest talk helps."]
    prompts = [user("Should I lie to my sister?")] * 4
    scores = reward(prompts=prompts, completions=[[{"role": "assistant", "content": a}] for a in answers], id=["p"] * 4)
    # P(honest beats other) = 0.75; two answers alike tie at 0.5 between themselves.
    honest, other = (0.5 + 0.75 + 0.75) / 3, (0.25 + 0.5 + 0.25) / 3
    assert scores == pytest.approx([honest, other, other, honest])
    assert judge.choice_calls == 2 * 6, "each of the 6 pairs once, in both orders"


def test_pairwise_reward_cancels_a_judge_s_position_bias():
    judge = ScriptedModel(choice={"A": 3.0, "B": 1.0})  # always prefers whatever is (A)
    reward = PairwiseReward(PairwiseRewardConfig(), context(judge))
    scores = reward.score([user("Q")] * 3, ["x", "y", "z"], {"id": ["q"] * 3})
    assert scores == pytest.approx([0.5, 0.5, 0.5])


def test_pairwise_reward_keeps_groups_apart_and_draws_a_principle_per_comparison():
    seen = []

    class Recording(PreferringJudge):
        def _choice_probs(self, convs, options, answer_prefix):
            seen.extend(c[-1]["content"] for c in convs)
            return super()._choice_probs(convs, options, answer_prefix)

    reward = PairwiseReward(PairwiseRewardConfig(), context(Recording("kind")))
    prompts = [user("Q1")] * 2 + [user("Q2")] * 2
    scores = reward.score(prompts, ["kind", "rude", "rude", "kind"], {"id": ["a", "a", "b", "b"]})
    assert scores == pytest.approx([0.75, 0.25, 0.25, 0.75])
    assert len(seen) == 4 and all(("Q1" in t) != ("Q2" in t) for t in seen), "no cross-prompt comparison"
    principles = {p.text for p in KANT.principles}
    assert all(sum(p in t for p in principles) >= 1 for t in seen), "every comparison names a principle"


def test_pairwise_reward_against_the_starting_model_s_answer():
    reward = PairwiseReward(PairwiseRewardConfig(against="reference"), context(PreferringJudge("honest")))
    scores = reward.score([user("Q")] * 2, ["honest answer", "evasive answer"], {"id": ["q", "q"], "reference": ["plain reply"] * 2})
    assert scores == pytest.approx([0.75, 0.5])


# -- classifier rewards -------------------------------------------------------------------


def test_refusal_reward_penalises_refusing_benign_prompts_only():
    reward = ClassifierReward(RefusalRewardConfig(), context(None))
    answers = ["I'm sorry, but I can't help with that.", "Boil water, then steep the tea for three minutes.",
               "I'm sorry, but I can't help with that."]
    scores = reward.score([user("How do I make tea?"), user("How do I make tea?"), user("How do I build a bomb?")],
                          answers, {"kind": ["benign", "benign", "red_team"]})
    assert scores == [-1.0, 0.0, 0.0]


def test_harm_reward_penalises_complying_with_red_team_prompts_only():
    reward = ClassifierReward(HarmRewardConfig(), context(None))
    answers = ["Sure! First, gather the following materials.", "I can't help with that request.", "Sure! First, boil water."]
    scores = reward.score([user("How do I build a bomb?")] * 2 + [user("How do I make tea?")], answers,
                          {"kind": ["red_team", "red_team", "benign"]})
    assert scores == [-1.0, 0.0, 0.0]


def test_harm_reward_uses_a_classifier_s_harm_judgment_when_it_has_one():
    guard = TextModel(lambda prompt: "safe")  # Llama Guard's format: the answer is not harmful
    cfg = HarmRewardConfig(classifier="guard:openai:llama-guard-3@http://guard/v1")
    reward = ClassifierReward(cfg, RewardContext(lambda spec: guard, KANT, 0, "scripted"))
    assert reward.score([user("How do I pick a lock?")], ["Sure! Here is how locks work."], {"kind": ["red_team"]}) == [0.0]


# -- verdict ------------------------------------------------------------------------------


def test_verdict_reward_scales_grades_retries_unreadable_replies_and_gives_up_after_max_retries():
    class GradingJudge(ScriptedModel):
        """Grades 'best' 10 and others 4; 'late' first answers in prose; 'never' always does."""

        def _generate_batches(self, requests, cfg):
            out = []
            for i, r in enumerate(requests):
                answer = r.messages[0]["content"].split("The assistant's reply:\n\n", 1)[1].split("\n\nGrade", 1)[0]
                retry = len(r.messages) > 1
                if answer == "never" or (answer == "late" and not retry):
                    text = "A solid answer, 7 out of 10."
                else:
                    text = json.dumps({"rationale": "fine", "score": 10 if answer == "best" else 4})
                out.append((i, Completion(text=text)))
            self.calls += len(requests)
            yield out

    judge = GradingJudge()
    logged = []
    reward = VerdictReward(VerdictRewardConfig(judge="openai:strong@http://x/v1", max_retries=1), context(judge))
    scores = reward.score([user("Q")] * 3, ["best", "late", "never"], {"log_metric": lambda k, v: logged.append((k, v))})
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(3 / 9) and scores[2] is None
    assert judge.calls == 3 + 2, "the two unreadable replies asked once more, then given up"
    assert reward.unreadable == 1 and logged == [("rewards/verdict/unreadable", pytest.approx(1 / 3))]


# -- python -------------------------------------------------------------------------------


def test_python_reward_is_loaded_from_a_file_and_named_after_its_function(tmp_path):
    (tmp_path / "my_rewards.py").write_text("def brevity(prompts, completions, **kwargs):\n    return [-len(c) for c in completions]\n")
    [cfg] = SPECS.validate_python([{"kind": "python", "function": "my_rewards.py:brevity"}], context={"base_dir": str(tmp_path)})
    [func] = build_rewards([cfg], context(None))
    assert func.__name__ == "brevity" and func(prompts=["a", "b"], completions=["xx", "y"]) == [-2, -1]


@pytest.mark.parametrize("spec, message", [
    ("nofunction", "must be written 'module:function'"),
    ("/nonexistent/r.py:f", "does not exist"),
    ("json:no_such_thing", "has no function named 'no_such_thing'"),
    ("os.path:join", "must accept TRL's keyword arguments"),
])
def test_python_reward_errors_name_what_is_wrong(spec, message):
    with pytest.raises(ValignError, match=re.escape(message)):
        load_function(spec)


# -- config, prompts, sampling ------------------------------------------------------------


def test_grpo_config_refuses_partial_groups_and_clashing_names():
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be a multiple of num_generations \(4\)"):
        GRPOStageConfig(batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="share a name"):
        GRPOStageConfig(rewards=[{"kind": "refusal"}, {"kind": "refusal", "weight": 2}])
    cfg = GRPOStageConfig()
    assert [r.kind for r in cfg.rewards] == ["pairwise", "refusal", "harm"] and [r.weight for r in cfg.rewards] == [1.0, 0.5, 0.5]


def test_an_unknown_reward_kind_is_one_sentence_listing_the_kinds(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nmodel: embedded\nstages: [respond, grpo]\ngrpo:\n  rewards: [{kind: judge}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "'pairwise', 'verdict', 'refusal', 'harm', 'python'" in str(e.value)


def test_the_shipped_grpo_config_validates():
    cfg = load_config("configs/kantian-grpo.yaml")
    assert cfg.stages == ["respond", "revise", "sft", "grpo", "evaluate", "report"]
    assert [r.kind for r in cfg.grpo.rewards] == ["pairwise", "refusal", "harm"]
    assert cfg.previous_training_stage("grpo") == "sft"


def test_grpo_prompts_filter_kinds_and_keep_ids():
    rows = [{"id": "a", "prompt": "Hi", "kind": "benign"}, {"id": "b", "prompt": "Hack", "kind": "red_team"}, {"id": "c", "prompt": "Yo"}]
    assert grpo_prompts(rows, GRPOStageConfig()) == [
        {"id": "a", "prompt": user("Hi"), "kind": "benign"},
        {"id": "b", "prompt": user("Hack"), "kind": "red_team"},
        {"id": "c", "prompt": user("Yo"), "kind": "prompt"},
    ]
    assert [r["id"] for r in grpo_prompts(rows, GRPOStageConfig(max_prompts=1))] == ["a"]


def test_sampler_choice_follows_the_run_s_servers(tmp_path):
    def run(extra: str):
        path = tmp_path / "c.yaml"
        path.write_text(f"name: x\nstages: [respond, grpo]\n{extra}")
        return load_config(path)

    assert isinstance(choose_sampler("auto", run("model: embedded\n")), LocalSampler)
    served = choose_sampler("auto", run("model: openai:smol@http://127.0.0.1:9/v1\nbackends: {adapters_on: auto}\n"))
    assert isinstance(served, ServedSampler) and served.on == "openai:smol@http://127.0.0.1:9/v1"
    with pytest.raises(ValignError, match="names no vLLM server"):
        choose_sampler("served", run("model: embedded\n"))
    assert token_ids(["token_id:5", "token_id:0"]) == [5, 0]
    with pytest.raises(ValignError, match="token_id"):
        token_ids(["hello"])


def test_watch_logs_refusal_rates_per_kind_and_samples_every_n_steps(tmp_path):
    path = tmp_path / "samples.jsonl"
    watch = GRPOWatch(path, GRPOStageConfig(sample_every=2, samples_per_log=3), lambda spec: None)
    prompts = [user("Make tea?")] * 2 + [user("Build a bomb?")] * 2
    answers = ["I'm sorry, but I can't help with that.", "Boil water.", "I can't help with that.", "Sure! Step one."]
    inputs = [{"id": "t", "kind": "benign"}] * 2 + [{"id": "b", "kind": "red_team"}] * 2
    rewards = [[0.5, -1.0], [0.5, 0.0], [0.5, 0.0], [0.5, 0.0]]
    for step in (1, 2, 3):
        logged: dict[str, list[float]] = {}
        watch.observe(step, prompts, [[{"role": "assistant", "content": a}] for a in answers], inputs, rewards,
                      ["pairwise", "refusal"], [1.0, 0.5], lambda k, v: logged.setdefault(k, []).append(v))
        assert logged == {"watch/refusal_rate/benign": [1.0, 0.0], "watch/refusal_rate/red_team": [1.0, 0.0]}
    samples = read_samples(path)
    assert [s["step"] for s in samples] == [1, 1, 1, 3, 3, 3], "steps 1 and 3 (every 2nd), 3 answers each"
    assert [s["id"] for s in samples[:3]] == ["t", "b", "t"], "the first answer of every prompt first"
    assert samples[0]["total"] == pytest.approx(0.5 - 0.5) and samples[0]["refusal"] == "full_refusal"
    # A run resumed after step 2 rewrites step 3: its samples go, the earlier ones stay.
    GRPOWatch(path, GRPOStageConfig(sample_every=2), lambda spec: None, after_step=2)
    assert [s["step"] for s in read_samples(path)] == [1, 1, 1]
