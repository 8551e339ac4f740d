"""The refusal classifier of a suite: its config field, its fingerprint, loaded when needed.

Every suite that reads refusals (safety, key cases, the safety benchmarks) has a
``classifier`` setting (`ClassifierConfig`; ``rules`` by default, or any spec of
`valign.evals.classifiers.registry`). Its model, when it has one, comes from the
suite's shared model pool, and only once an answer needs reading, so a resumed run
that has every row loads no classifier at all.

The default rules are already in every evaluation's fingerprint (``refusal_rules``),
so a suite adds its classifier to the fingerprint only when it is another one: runs
that keep the rules keep the fingerprints they had before classifiers were
configurable.

Example:
    >>> classifier_fingerprint("safety", ClassifierConfig())
    {}
    >>> classifier_fingerprint("safety", ClassifierConfig.model_validate("judge:embedded"))["safety_classifier"]["spec"]
    'judge:embedded'
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from valign.evals.classifiers import ClassifierConfig, RefusalClassifier, load_classifier
from valign.evals.suite import Models

__all__ = ["classifier_field", "classifier_fingerprint", "LazyClassifier", "DEFAULT_CLASSIFIER"]

DEFAULT_CLASSIFIER = "rules"


def classifier_field(description: str = "the refusal classifier that reads each answer") -> Any:
    """A suite setting holding a `ClassifierConfig`, ``rules`` unless the config says.

    Example:
        >>> from pydantic import BaseModel
        >>> class S(BaseModel):
        ...     classifier: ClassifierConfig = classifier_field()
        >>> S(classifier="guard:embedded").classifier.spec, S().classifier.spec
        ('guard:embedded', 'rules')
    """
    return Field(default_factory=ClassifierConfig, description=description)


def classifier_fingerprint(key: str, cfg: ClassifierConfig | None) -> dict[str, Any]:
    """``{"<key>_classifier": its settings}`` for a classifier other than the rules (whose
    rules every evaluation fingerprints already), else nothing; None is nothing too."""
    if cfg is None or cfg.spec == DEFAULT_CLASSIFIER:
        return {}
    return {f"{key}_classifier": cfg.model_dump(mode="json")}


class LazyClassifier:
    """A classifier loaded on first use, its model taken from ``models`` (the suite's pool).

    Example:
        >>> lazy = LazyClassifier(ClassifierConfig(), models=None)
        >>> lazy.spec, lazy.loaded
        ('rules', False)
        >>> lazy.get().spec, lazy.loaded
        ('rules', True)
    """

    def __init__(self, cfg: ClassifierConfig, models: Models | None) -> None:
        self.cfg = cfg
        self.models = models
        self._classifier: RefusalClassifier | None = None

    @property
    def spec(self) -> str:
        return self.cfg.spec

    @property
    def loaded(self) -> bool:
        return self._classifier is not None

    def get(self) -> RefusalClassifier:
        if self._classifier is None:
            self._classifier = load_classifier(self.cfg, self.models.get if self.models is not None else None)
        return self._classifier
