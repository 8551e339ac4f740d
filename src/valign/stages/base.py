"""What a stage is: a config, the earlier stages it reads, and a `run` that appends rows.

A stage is one module under `valign/stages/` holding its config class and a `Stage`
subclass that names both, plus one entry in `valign.stages.registry`; the run config's
sections, the pipeline's stages and which of them train all come from there.

The pipeline (`valign.pipeline`) computes each stage's fingerprint from
`Stage.describe` and its inputs' fingerprints, skips finished stages, and hands a
`StageContext` to `run`, which must only append rows whose ids are not yet written —
that is all it takes to resume a killed run without duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar

from pydantic import AfterValidator, BaseModel, ValidationInfo

from rich.console import Console

from valign.cache import CompletionCache
from valign.models.base import ChatModel

from valign.runs import RowLog, read_rows
from valign.types import Row

if TYPE_CHECKING:
    from valign.config import RunConfig
    from valign.constitution import Constitution


def model_identity(spec: str) -> Any:
    """A model spec as a fingerprint sees it: a ``run:<stage folder>`` model also brings
    that stage's own fingerprint, so retraining it re-runs whatever uses it.

    Example:
        >>> model_identity("embedded")
        'embedded'
    """
    import json

    if not spec.startswith("run:"):
        return spec
    manifest = Path(spec[4:]) / "manifest.json"
    fp = json.loads(manifest.read_text()).get("fingerprint") if manifest.exists() else None
    return {"spec": spec, "stage_fingerprint": fp}


def training_start(spec: str, previous: Path | None) -> tuple[str, Path | None]:
    """Where a training stage starts: (base model spec, adapter folder to continue or None).

    The previous training stage of the run wins; otherwise a ``run:<stage folder>`` model
    (e.g. last round's KTO stage, for a continual-learning round) is split into its base
    and its adapter.

    For example, ``training_start("run:runs/pv/07-kto", None)`` is
    ``("embedded", Path("runs/pv/07-kto/adapter"))`` when that KTO stage trained an
    adapter on the embedded model, and ``training_start("embedded", None)`` is
    ``("embedded", None)``.
    """
    import json

    if spec.startswith("run:") and previous is None:
        folder = Path(spec[4:])
        manifest = folder / "manifest.json"
        info = json.loads(manifest.read_text()).get("model") if manifest.exists() else None
        if not info or "base" not in info:
            from valign.errors import ValignError

            raise ValignError(f"{spec} is not a finished training stage (no model in its manifest); train it first or name a base model.")
        return info["base"], (folder / info["adapter"]) if info.get("adapter") else None
    base = spec
    if previous is not None:
        manifest = previous / "manifest.json"
        info = json.loads(manifest.read_text()).get("model", {}) if manifest.exists() else {}
        # The adapter belongs to the base it was trained on, whatever this stage names.
        return info.get("base", base), previous / info.get("adapter", "adapter")
    return base, None


def config_relative(value: str | None, context: Any) -> str | None:
    """A file a config names, resolved against the config file's folder when it is there
    (``base_dir`` in pydantic's validation context), as respond's prompts and evaluate's
    files are; anything else (a shipped name, a stage, a URL, a cwd-relative path) as given.

    Example:
        >>> config_relative("kantian-demo.yaml", {"base_dir": "configs"}).endswith("/configs/kantian-demo.yaml")
        True
        >>> config_relative("demo", {"base_dir": "configs"})  # not a file there: a shipped name
        'demo'
    """
    base = context.get("base_dir") if isinstance(context, dict) else None
    if not value or base is None or Path(value).is_absolute():
        return value
    candidate = Path(base) / value
    return str(candidate.resolve()) if candidate.is_file() else value


def _relative_to_config(value: str, info: ValidationInfo) -> str:
    return config_relative(value, info.context) or value


# A config field naming a file: relative to the config file's folder when the file is there.
ConfigFile = Annotated[str, AfterValidator(_relative_to_config)]


def file_digest(path: Path) -> str:
    """The SHA-256 of a rows file a stage trains on, for its fingerprint."""
    import hashlib

    from valign.errors import ValignError

    if not path.exists():
        raise ValignError(f"{path} does not exist; check the path in the config.")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_fingerprint(kind: str, where: str | None) -> dict[str, Any]:
    """What a training stage's row source adds to its fingerprint: the hash of a rows
    file (``kind == "file"``), or of every rating and correction in a feedback database
    (``"feedback"``: new feedback makes a new round); nothing for rows another stage
    writes, whose own fingerprint already counts."""
    if kind == "file" and where is not None:
        return {"rows_sha256": file_digest(Path(where))}
    if kind == "feedback" and where is not None:
        from valign.feedback import feedback_digest

        return {"feedback": feedback_digest(where)}
    return {}


def run_constitution(run_config: RunConfig) -> "Constitution":
    """The run's constitution: a shipped name, a file, or — when ``constitution`` names a
    stage of the run (``survey``) — the ``constitution.yaml`` that stage wrote."""
    from valign.constitution import load_constitution

    return load_constitution(constitution_file(run_config))


def constitution_file(run_config: RunConfig) -> str:
    """The run's constitution as a shipped name or a file (the ``constitution.yaml`` of
    the stage that writes it, when one does)."""
    name = run_config.constitution
    if name in run_config.stages:
        return str(run_config.stage_dir(name) / "constitution.yaml")
    return name


def constitution_inputs(run_config: RunConfig) -> list[str]:
    """The stage the constitution comes from, if it comes from one."""
    return [run_config.constitution] if run_config.constitution in run_config.stages else []


class ModelPool:
    """Loads each model spec once per run and attaches the run's completion cache."""

    def __init__(self, cache: CompletionCache | None, options: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.cache = cache
        self.options = options or (lambda spec: {})
        self._models: dict[str, ChatModel] = {}
        self._used: set[str] = set()  # specs asked for since the last `engines()`

    def request_adjustments(self) -> dict[str, list[str]]:
        """What `openai:` models had to change in their requests (see `RequestPolicy`)."""
        out = {}
        for spec, model in self._models.items():
            policy = getattr(model, "policy", None)
            if policy is not None and policy.adjustments:
                out[spec] = list(policy.adjustments)
        return out

    def engines(self) -> dict[str, dict[str, Any]]:
        """How each local model used since the last call computes (engine, dtype, prefix
        cache), for the stage's manifest; starts counting afresh."""
        out = {}
        for spec in sorted(self._used):
            info = getattr(self._models[spec], "engine_info", None)
            if info is not None:
                out[spec] = info()
        self._used.clear()
        return out

    def get(self, spec: str) -> ChatModel:
        self._used.add(spec)
        if spec not in self._models:
            from valign.models.registry import load_model

            model = load_model(spec, **self.options(spec))
            if self.cache is not None and hasattr(model, "with_cache"):
                model.with_cache(self.cache)  # type: ignore[attr-defined]
            self._models[spec] = model
        return self._models[spec]


@dataclass
class StageContext:
    """Everything a running stage may touch."""

    run_config: RunConfig
    config: Any  # this stage's own section of the run config (its `Stage.config_class`)
    dir: Path
    rows: RowLog
    models: ModelPool
    input_dirs: dict[str, Path]
    console: Console
    info: dict[str, Any] = field(default_factory=dict)  # extra manifest fields

    def input_rows(self, stage: str) -> list[Row]:
        """The finished rows of an earlier stage."""
        return read_rows(self.input_dirs[stage] / "rows.jsonl")


class Stage:
    """A pipeline stage; see `valign.stages.respond` for a small one.

    A subclass names itself and its config class once; `valign.stages.registry` lists
    it, and the run config grows a section of that class under the stage's name.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    trains: ClassVar[bool] = False  # trains an adapter, continuing the run's previous training stage's
    writes_constitution: ClassVar[bool] = False  # writes a constitution.yaml (`constitution: <stage>`)
    reads_constitution: ClassVar[bool] = False  # must come after the stage that writes the constitution

    def inputs(self, run_config: RunConfig) -> list[str]:
        """Names of the earlier stages whose rows this stage reads."""
        return []

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        """Everything besides inputs that determines the output (config, data hashes,
        templates); it is hashed into the fingerprint."""
        raise NotImplementedError

    def preflight(self, run_config: RunConfig) -> None:
        """Load the files this stage's settings name (prompt sets, key cases, …), so a
        mistake fails before any stage of the run loads a model. Validating a config
        reads no file; the pipeline calls this for every stage first."""

    def check(self, run_config: RunConfig, input_dirs: dict[str, Path]) -> None:
        """Refuse to run (a `ValignError`) before the stage's folder is reset."""

    def run(self, ctx: StageContext) -> None:
        raise NotImplementedError
