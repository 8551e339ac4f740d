"""The run config: a YAML file validated by pydantic, with ``--set key=value`` overrides.

Every stage has its own config class beside its code (``RespondConfig`` in
`valign.stages.respond`); `RunConfig` is the run-level settings (`RunSettings`) plus
one section per stage of `valign.stages.registry`. Unknown keys are errors, reported
with the closest valid key, because a typo that silently does nothing is the worst
kind of config bug. Validating a config reads no file: the files it names are loaded
by `valign.pipeline.preflight`, before any stage runs.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from valign.errors import ConfigError, ModelError
from valign.overrides import apply_override
from valign.stages.base import Stage
from valign.stages.registry import STAGES

__all__ = ["RunConfig", "RunSettings", "run_config_class", "BackendOptions", "LocalOptions", "OpenAIOptions", "load_config"]


class OpenAIOptions(BaseModel):
    """How `openai:` models are reached. The key itself never goes in a config."""

    model_config = ConfigDict(extra="forbid")

    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(16, ge=1, le=1024)
    max_retries: int = Field(5, ge=0, le=50)
    timeout: float = Field(120.0, gt=0)


class LocalOptions(BaseModel):
    """How `embedded`, `hf:` and `run:` models run on this machine.

    ``token_budget`` bounds the KV cache of the requests decoding together (their number
    × the longest one's prompt + new tokens), ``max_batch`` their number. ``dtype`` is
    the engine's compute dtype (the completion cache keeps bf16 and fp32 answers apart);
    ``prefix_cache_mb`` bounds the keys and values of shared prompt prefixes kept between
    calls.
    """

    model_config = ConfigDict(extra="forbid")

    token_budget: int = Field(16384, ge=256)
    max_batch: int = Field(128, ge=1)
    load_in_4bit: bool = False
    # auto: bf16 on CPUs with bf16 units (AVX-512 BF16, AMX), fp32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    prefix_cache_mb: int = Field(512, ge=0)  # 0 turns prefix caching off


class BackendOptions(BaseModel):
    """Per-backend options, applied to every model a run loads.

    ``adapters_on`` says where ``run:<stage folder>`` models — what a training stage
    produced: pairs samples ``run:<sft>``, evaluate's tuned model is ``run:<dpo>`` — are
    sampled:

    - ``null`` (default): here, by transformers (the stage's base + its LoRA adapter).
    - ``auto``: on the run's own ``model`` when that is an ``openai:`` server (a config
      error otherwise) — the usual choice when generation runs on vLLM.
    - ``openai:<served base>@<url>[,<url>…]``: on these vLLM servers. valign loads the
      stage's adapter into every one of them at runtime (``POST /v1/load_lora_adapter``)
      under a name made from the adapter's fingerprint, skips servers that have it
      already (a resumed run), and samples ``openai:<that name>@<urls>``. The servers
      need ``--enable-lora --max-lora-rank <r or more>`` and
      ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, must serve the base the adapter was
      trained on, and read the adapter from their own file system at the run folder's
      absolute path (same machine or shared storage).
    - ``vllm``: in this process's vLLM engine (``vllm:<stage base>+<adapter>``, with
      ``backends.vllm`` settings); only where vLLM is installed beside valign.

    It chooses where a model runs, not which model it is, so like the other backend
    options it is not part of stage fingerprints (completion-cache keys do differ).

    Example (YAML):
        backends:
          openai: {api_key_env: MY_SERVER_KEY, concurrency: 64}
          local: {token_budget: 8192}
          adapters_on: auto
    """

    model_config = ConfigDict(extra="forbid")

    openai: OpenAIOptions = Field(default_factory=OpenAIOptions)
    # A policy server and an API judge need different keys: base-URL prefix → variable.
    api_key_envs: dict[str, str] = Field(default_factory=dict)
    local: LocalOptions = Field(default_factory=LocalOptions)
    vllm: dict[str, Any] = Field(default_factory=dict)  # passed to vllm.LLM(...)
    adapters_on: str | None = None  # where run: models are sampled (see above)

    @field_validator("adapters_on")
    @classmethod
    def _engine_named(cls, value: str | None) -> str | None:
        from valign.models.openai_api import parse_openai_spec

        if value is None or value in ("auto", "vllm"):
            return value
        try:
            parse_openai_spec(value)
        except ModelError:
            raise ValueError("use null, auto, vllm, or an openai:<served model>@<base_url>[,<url>…] server spec") from None
        return value

    def for_spec(self, spec: str) -> dict[str, Any]:
        """Keyword arguments for `load_model(spec)`: the section its backend names
        (`valign.models.registry.Backend.options`)."""
        from valign.models.registry import backend_of

        try:
            section = backend_of(spec)[0].options
        except ModelError:
            section = "local"  # `load_model` says what is wrong with the spec
        if section == "run":  # a trained stage: the options of the engine it is sampled on
            if self.adapters_on in (None, "auto"):
                return self.local.model_dump()  # base + adapter, loaded here
            engine = dict(self.vllm) if self.adapters_on == "vllm" else self.for_spec(self.adapters_on)
            return {**engine, "adapters_on": self.adapters_on}
        if section == "openai":
            options = self.openai.model_dump()
            urls = spec.rpartition("@")[2]
            for prefix, env in self.api_key_envs.items():
                if urls.startswith(prefix):
                    options["api_key_env"] = env
            return options
        if section == "vllm":
            return dict(self.vllm)
        return self.local.model_dump()


class RunSettings(BaseModel):
    """A run's own settings: which model, which stages in which order, and where it goes.

    `RunConfig` adds each stage's section; stages read their own as ``ctx.config`` and
    the run's through these fields and methods.
    """

    model_config = ConfigDict(extra="forbid")
    stage_registry: ClassVar[Mapping[str, Stage]] = {}  # the stages it has sections for (`run_config_class`)

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str = "embedded"
    seed: int = 0
    runs_dir: Path = Path("runs")
    cache: bool = True
    backends: BackendOptions = Field(default_factory=BackendOptions)
    constitution: str = "kantian"  # a shipped name, a constitution file, or a stage that writes one
    stages: list[str] = Field(default_factory=lambda: ["respond"], min_length=1)

    @field_validator("constitution")
    @classmethod
    def _constitution_named(cls, value: str, info: ValidationInfo) -> str:
        if value in cls.stage_registry and cls.stage_registry[value].writes_constitution:
            return value  # written by that stage of the run (the survey's export)
        if value in cls.stage_registry:
            writers = [name for name, stage in cls.stage_registry.items() if stage.writes_constitution]
            raise ValueError(f"the '{value}' stage writes no constitution; name a constitution file, a shipped one, or a stage that writes one ({', '.join(writers)})")
        base = (info.context or {}).get("base_dir")
        if base is not None and (Path(base) / value).is_file():
            value = str((Path(base) / value).resolve())
        return value  # loaded by the pipeline's preflight, before any stage runs

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        for s in stages:
            if s not in cls.stage_registry:
                raise ValueError(f"unknown stage '{s}'; the stages are {', '.join(cls.stage_registry)}")
        if len(set(stages)) != len(stages):
            raise ValueError("a stage is listed twice")
        return stages

    @model_validator(mode="after")
    def _constitution_stage_runs_first(self) -> "RunSettings":
        if self.constitution in self.stage_registry and self.stage(self.constitution).writes_constitution:
            if self.constitution not in self.stages:
                raise ValueError(f"constitution '{self.constitution}' names a stage that is not in `stages`; add it or name a constitution file")
            users = [s for s in self.stages if self.stage(s).reads_constitution]
            if users and self.stages.index(self.constitution) > min(self.stages.index(s) for s in users):
                raise ValueError(f"the '{self.constitution}' stage writes the constitution, so it must come before {' and '.join(users)} in `stages`")
        return self

    @model_validator(mode="after")
    def _adapters_on_resolved(self) -> "RunSettings":
        if self.backends.adapters_on == "auto":
            if not self.model.startswith("openai:"):
                raise ValueError(f"backends.adapters_on: auto samples run: models on the run's model, which must be an openai: server for that; model is '{self.model}' — name a server or use null")
            self.backends.adapters_on = self.model
        return self

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    def stage(self, name: str) -> Stage:
        """The registered stage of that name."""
        return self.stage_registry[name]

    def section(self, stage: str) -> Any:
        """A stage's settings, an instance of its `Stage.config_class` (``run.section("respond")``
        is ``run.respond``); for code that names the stage in a variable."""
        return getattr(self, stage)

    def stage_dir(self, stage: str) -> Path:
        """A stage's folder in the run: ``runs/<run>/<NN>-<stage>``, NN its place in ``stages``."""
        return self.run_dir / f"{self.stages.index(stage) + 1:02d}-{stage}"

    def trains(self, stage: str) -> bool:
        """Whether a stage trains an adapter."""
        return self.stage(stage).trains

    def training_stages_before(self, stage: str) -> list[str]:
        """The run's training stages before ``stage`` (all of them when it is not in the run)."""
        earlier = self.stages[: self.stages.index(stage)] if stage in self.stages else self.stages
        return [s for s in earlier if self.trains(s)]

    def previous_training_stage(self, stage: str) -> str | None:
        """The last training stage before ``stage``, whose adapter ``stage`` continues."""
        return next(iter(reversed(self.training_stages_before(stage))), None)


def run_config_class(stages: Mapping[str, Stage] = STAGES) -> type[RunSettings]:
    """The run config of these stages: `RunSettings` plus a section per stage, named
    after it (``respond: RespondConfig``, …), and ``stages:`` accepting their names.
    `RunConfig` is the one of `valign.stages.registry.STAGES`.

    Example:
        >>> sorted(run_config_class().model_fields)[:4]
        ['backends', 'cache', 'constitution', 'dpo']
    """
    cls = create_model(
        "RunConfig",
        __base__=RunSettings,
        __module__=__name__,
        **{name: (stage.config_class, Field(default_factory=stage.config_class)) for name, stage in stages.items()},
    )
    cls.stage_registry = dict(stages)
    return cls


RunConfig = run_config_class()
RunConfig.__doc__ = """A whole run: `RunSettings` and each stage's settings, under the stage's name.

Example:
    >>> cfg = load_config("configs/kantian-demo.yaml", overrides=["respond.gen.temperature=1.0"])
    >>> cfg.stages[:3], cfg.respond.gen.temperature
    (['respond', 'revise', 'sft'], 1.0)
"""


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; errors name the key and the fix."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; pass a path such as configs/kantian-demo.yaml.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}; fix the syntax there.") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value), not a {type(data).__name__}.")
    for item in overrides or []:
        apply_override(data, item)
    data.setdefault("name", path.stem)
    base = path.parent.resolve()
    try:
        cfg = RunConfig.model_validate(data, context={"base_dir": base})
    except ValidationError as e:
        raise ConfigError(_explain(path, e)) from None
    return cfg


def _explain(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = len(err.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} after this one)" if more else ""
    if first["type"] == "extra_forbidden":
        parent_loc, bad = first["loc"][:-1], str(first["loc"][-1])
        hint = _closest_key(parent_loc, bad)
        fix = f"did you mean '{hint}'?" if hint else "remove it or check the spelling."
        return f"{path}: unknown setting '{loc}'; {fix}{tail}"
    if first["type"] == "missing":
        return f"{path}: '{loc}' is required; add it to the config.{tail}"
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across settings: the input is the whole config, not worth echoing
        return f"{path}: {msg}.{tail}"
    return f"{path}: {loc}: {msg} (got {first.get('input')!r}); fix that value.{tail}"


def _closest_key(parent_loc: tuple, bad: str) -> str | None:
    model: type[BaseModel] = RunConfig
    for part in parent_loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    match = difflib.get_close_matches(bad, list(model.model_fields), n=1, cutoff=0.6)
    return match[0] if match else None
