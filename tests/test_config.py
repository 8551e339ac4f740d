import pytest
import yaml

from tests.conftest import load_seed_config
from valign.config import load_config
from valign.errors import ConfigError, ValignError
from valign.pipeline import preflight

GOOD = """
name: t
model: embedded
stages: [respond]
respond:
  prompts: demo
  gen: {temperature: 0.5, max_new_tokens: 16}
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_config_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["respond.gen.temperature=1.0", "seed=7", "respond.limit=3"])
    assert cfg.respond.gen.temperature == 1.0 and cfg.seed == 7 and cfg.respond.limit == 3
    assert len(cfg.respond.prompt_rows()) == 3 and cfg.respond.prompt_rows()[0]["id"] == "demo-red-01"


@pytest.mark.parametrize(
    "text, override, expected",
    [
        (GOOD, "respond.gen.temperatur=1", "unknown setting 'respond.gen.temperatur'; did you mean 'temperature'?"),
        (GOOD, "respond.gen.temperature=hot", "respond.gen.temperature: Input should be a valid number"),
        (GOOD, "respond.gen.max_new_tokens=0", "respond.gen.max_new_tokens"),
        (GOOD, "stages=[respond, polish]", "unknown stage 'polish'"),
        (GOOD, "modle=embedded", "unknown setting 'modle'; did you mean 'model'?"),
        (GOOD, "name=has space", "name"),
        (GOOD, "respond.prompts=no_such_file.jsonl", "respond.prompts: prompt source 'no_such_file.jsonl' is not a known set or an existing file"),
        (GOOD, "respond.prompts={red_team: 5000, benign: 1}", "hold 1658 distinct prompts, but the mix asks for 5000"),
        (GOOD, "constitution=no_such_constitution.yaml", "constitution: "),
        (GOOD, "justakey", "--set 'justakey' must look like key=value"),
        (GOOD, "respond.prompts.x=1", "'prompts' holds a value, not a section"),
    ],
)
def test_errors_name_the_key_and_the_fix(tmp_path, text, override, expected):
    # Files a config names are read by the preflight, not while validating; either way
    # the mistake is one sentence before any model loads.
    with pytest.raises(ValignError) as e:
        preflight(load_config(write(tmp_path, text), [override]))
    assert expected in str(e.value)
    assert "\n" not in str(e.value), "one sentence, no traceback-like dump"


def test_validating_a_config_reads_no_file(tmp_path, monkeypatch):
    """Configs are data: prompt sets, mixes (hub ones included) and constitutions are
    loaded by the pipeline's preflight, not by validation."""
    import valign.constitution
    import valign.stages.respond

    def no_reads(*args, **kwargs):
        raise AssertionError("validation read a file")

    monkeypatch.setattr(valign.stages.respond, "_load", no_reads)
    monkeypatch.setattr(valign.constitution, "load_constitution", no_reads)
    cfg = load_config(write(tmp_path, GOOD), ["respond.prompts={red_team: 6, benign: 4, benign_sources: ['hub:nobody/nothing']}",
                                              "constitution=missing.yaml"])
    assert cfg.constitution == "missing.yaml"
    with pytest.raises(AssertionError, match="validation read a file"):
        preflight(cfg)


def test_the_preflight_reads_the_evaluate_suites_files(tmp_path):
    text = "name: t\nstages: [respond, sft, evaluate]\nevaluate: {keycases: {file: nope.jsonl}, mtbench: {categories: [nosuch]}}\n"
    cfg = load_config(write(tmp_path, text))  # validation reads neither
    with pytest.raises(ValignError, match="key-case file nope.jsonl does not exist"):
        preflight(cfg)
    with pytest.raises(ValignError, match="MT-Bench has no category 'nosuch'"):
        preflight(load_config(write(tmp_path, text), ["evaluate.keycases.file=null"]))
    preflight(load_config(write(tmp_path, text), ["evaluate.keycases.file=null", "evaluate.suites=[keycases, safety]"]))


def test_the_stage_registry_makes_the_run_config():
    from valign.config import RunConfig
    from valign.stages.registry import STAGES, training_stages

    assert set(STAGES) <= set(RunConfig.model_fields), "every registered stage has a section"
    for name, stage in STAGES.items():
        assert isinstance(RunConfig(name="t").section(name), stage.config_class)
    assert training_stages() == ("sft", "survey_sft", "dpo", "kto", "grpo")
    cfg = RunConfig(name="t", stages=["respond", "revise", "sft", "pairs", "judge", "dpo", "evaluate"])
    assert cfg.previous_training_stage("dpo") == "sft" and cfg.training_stages_before("evaluate") == ["sft", "dpo"]
    assert cfg.stage_dir("dpo").name == "06-dpo"


def test_bad_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d"):
        load_config(write(tmp_path, "name: t\nrespond:\n  gen: [unclosed\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_rows_and_survey_files_relative_to_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("pairs.jsonl", "fb.jsonl", "items.jsonl", "margins.yaml"):
        (sub / name).write_text("")
    text = ("name: t\ndpo: {rows: pairs.jsonl}\nkto: {rows: survey}\nsft: {rows: fb.jsonl}\n"
            "survey_sft: {items: items.jsonl}\nsurvey: {margins: margins.yaml, instrument: demo}\n")
    monkeypatch.chdir(tmp_path)  # not the config's folder: the files must still be found
    cfg = load_config(write(sub, text))
    assert (cfg.dpo.rows, cfg.sft.rows, cfg.survey_sft.items, cfg.survey.margins) == tuple(
        str((sub / n).resolve()) for n in ("pairs.jsonl", "fb.jsonl", "items.jsonl", "margins.yaml"))
    assert cfg.kto.rows == "survey" and cfg.survey.instrument == "demo", "names that are not files next to the config stay as given"


def test_prompts_path_relative_to_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    cfg = load_config(write(tmp_path / "sub", "name: t\nrespond:\n  prompts: p.jsonl\n"))
    assert [r["id"] for r in cfg.respond.prompt_rows()] == ["a"]


def test_prompt_mix_in_the_config(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["respond.prompts={red_team: 6, benign: 4, red_team_sources: [advbench], seed: 3}"])
    kinds = [r["kind"] for r in cfg.respond.prompt_rows()]
    assert kinds.count("red_team") == 6 and kinds.count("benign") == 4
    again = load_config(write(tmp_path, GOOD), ["respond.prompts={red_team: 6, benign: 4, red_team_sources: [advbench], seed: 3}"])
    assert [r["id"] for r in again.respond.prompt_rows()] == [r["id"] for r in cfg.respond.prompt_rows()]


def test_backend_options_reach_the_right_backend(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["backends.openai.api_key_env=MY_KEY", "backends.local.token_budget=4096"])
    assert cfg.backends.for_spec("openai:m@http://x/v1")["api_key_env"] == "MY_KEY"
    assert cfg.backends.for_spec("embedded")["token_budget"] == 4096
    assert cfg.backends.for_spec("run:runs/x/03-sft")["token_budget"] == 4096
    with pytest.raises(ConfigError, match="did you mean 'api_key_env'"):
        load_config(write(tmp_path, GOOD), ["backends.openai.api_key=sk-123"])


@pytest.mark.parametrize("name", ["kantian-demo", "kantian-llama70b"])
def test_shipped_configs_validate(name):
    cfg = load_seed_config() if name == "kantian-llama70b" else load_config(f"configs/{name}.yaml")
    assert cfg.stages == ["respond", "revise", "sft", "pairs", "judge", "dpo", "evaluate", "report"] and cfg.constitution == "kantian"
    assert len(cfg.respond.prompt_rows()) > 0


def test_the_seed_setting_uses_qlora_and_a_server(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # No hub here: say so at once instead of five retries with backoff.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    mix = yaml.safe_load(open("configs/kantian-llama70b.yaml"))["respond"]["prompts"]
    assert mix["red_team"] + mix["benign"] == 10_000 and mix["red_team"] > 4 * mix["benign"], "the seed's 10k, mostly red-team"
    assert "hh-red-team" in mix["red_team_sources"] and any(s.startswith("hub:") for s in mix["benign_sources"])
    with pytest.raises(ValignError, match="Anthropic/hh-rlhf"):  # offline here: one clear sentence, not a traceback
        preflight(load_config("configs/kantian-llama70b.yaml"))
    cfg = load_seed_config()
    assert cfg.sft.qlora and cfg.model.startswith("openai:") and cfg.backends.openai.api_key_env == "VLLM_API_KEY"
    assert cfg.backends.for_spec(cfg.judge.model)["api_key_env"] == "OPENAI_API_KEY", "the API judge has its own key"
    assert cfg.backends.for_spec(cfg.model)["api_key_env"] == "VLLM_API_KEY"
    assert len(cfg.respond.prompt_rows()) == 1560  # the wheel-only stand-in


def test_public_values_configs_wire_the_survey_through_the_run():
    from valign.stages.registry import STAGES

    cfg = load_config("configs/public-values-demo.yaml")
    assert cfg.stages[0] == "survey" and cfg.constitution == "survey" and cfg.survey.include_synthetic
    inputs = {name: STAGES[name].inputs(cfg) for name in cfg.stages}
    assert "survey" in inputs["revise"], "the public constitution comes from the survey stage"
    assert inputs["survey_sft"] == ["survey", "sft"] and inputs["dpo"] == ["survey", "survey_sft"] and inputs["kto"] == ["survey", "dpo"]
    assert set(inputs["evaluate"]) == {"kto", "survey"} and "fidelity" in cfg.evaluate.suites
    rounds = load_config("configs/feedback-round.yaml")
    assert rounds.kto.rows.startswith("feedback:") and rounds.sft.rows.startswith("feedback:") and rounds.model.startswith("run:")
    assert STAGES["sft"].inputs(rounds) == [] and STAGES["kto"].inputs(rounds) == ["sft"], "sft continues the run: model, kto continues sft"
    assert STAGES["evaluate"].inputs(rounds) == ["kto"]


def test_a_constitution_from_a_stage_must_be_written_before_it_is_read(tmp_path):
    with pytest.raises(ConfigError, match="names a stage that is not in `stages`"):
        load_config(write(tmp_path, GOOD), ["constitution=survey"])
    with pytest.raises(ConfigError, match="must come before revise"):
        load_config(write(tmp_path, GOOD), ["constitution=survey", "stages=[respond, revise, survey]"])


def test_only_the_survey_stage_can_supply_the_constitution(tmp_path):
    with pytest.raises(ConfigError, match="writes no constitution"):
        load_config(write(tmp_path, GOOD), ["constitution=sft"])
