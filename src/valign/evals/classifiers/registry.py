"""Refusal classifiers by spec: the one list the suites, the key cases and
``valign bench refusal`` read them from.

| spec                     | what reads the answer                                        |
|--------------------------|--------------------------------------------------------------|
| ``rules``                | the phrase rules of `valign.evals.refusal` (no model)        |
| ``judge:<model spec>``   | any model asked XSTest's three-class question (generative or logprob) |
| ``guard:<model spec>``   | a guard model: Llama Guard 3/4 or WildGuard prompt formats   |
| ``strongreject:<model spec>`` | StrongREJECT's rubric: refused, convincing, specific → harm score |

A backend is one module with a ``load(model_spec, settings, load_model)`` function and
one `Backend` entry below; modules are imported when a spec names them, so the rules
never pull in a model backend.

Example:
    >>> load_classifier("rules").spec
    'rules'
    >>> ClassifierConfig.model_validate("judge:embedded").spec
    'judge:embedded'
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from valign.errors import ValignError
from valign.evals.classifiers.base import RefusalClassifier
from valign.types import GenConfig, keep_gen_defaults

if TYPE_CHECKING:
    from valign.models.base import ChatModel

__all__ = ["Backend", "CLASSIFIERS", "ClassifierConfig", "load_classifier", "classifier_forms"]


@dataclass(frozen=True)
class Backend:
    """One kind of classifier spec: its prefix (or the whole spec when ``bare``), the
    form of its specs, one line on what it is, and ``"module:function"`` of its loader,
    ``load(model_spec, settings, load_model) -> RefusalClassifier``."""

    prefix: str
    form: str
    about: str
    loader: str
    bare: bool = False


CLASSIFIERS: dict[str, Backend] = {
    b.prefix: b
    for b in (
        Backend("rules", "rules", "refusal phrase rules, no model", "valign.evals.classifiers.rules:load", bare=True),
        Backend("judge", "judge:<model spec>", "XSTest's three classes read from any model", "valign.evals.classifiers.judge:load"),
        Backend("guard", "guard:<model spec>", "a guard model (Llama Guard 3/4, WildGuard)", "valign.evals.classifiers.guard:load"),
        Backend("strongreject", "strongreject:<model spec>", "StrongREJECT's rubric: refusal and harm score", "valign.evals.classifiers.strongreject:load"),
    )
}


def classifier_forms() -> str:
    """The spec forms, for messages.

    Example:
        >>> classifier_forms()
        'rules, judge:<model spec>, guard:<model spec>, strongreject:<model spec>'
    """
    return ", ".join(b.form for b in CLASSIFIERS.values())


class ClassifierConfig(BaseModel):
    """Which classifier reads refusals, and how it asks its model.

    A plain string is the spec alone (``classifier: judge:openai:gpt-5@https://…``).

    * ``mode`` — for ``judge:``: ``generative`` (the model names the class) or
      ``logprob`` (the class's number is read from the next-token distribution);
    * ``guard_format`` — for ``guard:``: the prompt format; ``auto`` picks it from the
      model's name (``wildguard`` → WildGuard, ``guard-4`` → Llama Guard 4, else 3);
    * ``gen`` — generation settings for model-backed classifiers.

    Example (YAML):
        classifier: {spec: "guard:hf:meta-llama/Llama-Guard-3-1B", guard_format: auto}
    """

    model_config = ConfigDict(extra="forbid")

    spec: str = "rules"
    mode: Literal["generative", "logprob"] = "generative"
    guard_format: Literal["auto", "llama-guard-3", "llama-guard-4", "wildguard"] = "auto"
    gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.0, max_new_tokens=256))
    _gen_defaults = field_validator("gen", mode="before")(keep_gen_defaults)

    @model_validator(mode="before")
    @classmethod
    def _from_spec(cls, data: Any) -> Any:
        return {"spec": data} if isinstance(data, str) else data

    @field_validator("spec")
    @classmethod
    def _known(cls, spec: str) -> str:
        backend, model_spec = _split(spec)
        if not backend.bare and not model_spec:
            raise ValueError(f"classifier {spec!r} names no model; write it as {backend.form}")
        return spec


def _split(spec: str) -> tuple[Backend, str]:
    prefix, sep, rest = spec.partition(":")
    backend = CLASSIFIERS.get(prefix)
    if backend is None or (backend.bare and sep):
        raise ValueError(f"unknown refusal classifier {spec!r}; the classifiers are {classifier_forms()}")
    return backend, rest


def load_classifier(cfg: ClassifierConfig | str, load_model: Callable[[str], "ChatModel"] | None = None) -> RefusalClassifier:
    """The classifier a config names; ``load_model`` (spec → model) loads its model,
    `valign.models.registry.load_model` unless the caller shares its own.

    Example:
        >>> load_classifier("rules").classify([])
        []
    """
    cfg = ClassifierConfig.model_validate(cfg) if isinstance(cfg, str) else cfg
    try:
        backend, model_spec = _split(cfg.spec)
    except ValueError as e:
        raise ValignError(f"{e}.") from None
    if load_model is None:
        from valign.models.registry import load_model as load_any

        load_model = load_any
    module, _, function = backend.loader.partition(":")
    load = getattr(import_module(module), function)
    return load(model_spec, cfg, load_model)
