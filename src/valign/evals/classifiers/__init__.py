"""Refusal and harm classifiers behind one interface (`RefusalClassifier`), named by spec.

* `valign.evals.classifiers.base` — `Exchange`, `Classification` (XSTest's three
  classes, plus harm, categories and a score), `RefusalClassifier`;
* `valign.evals.classifiers.registry` — `CLASSIFIERS`, `ClassifierConfig`, `load_classifier`;
* one module per backend: ``rules``, ``judge``, ``guard``, ``strongreject``.

Example:
    >>> from valign.evals.classifiers import Exchange, load_classifier
    >>> load_classifier("rules").classify([Exchange("Hi", "Hello! How can I help?")])[0].refused
    False
"""

from valign.evals.classifiers.base import LABELS, Classification, Exchange, Label, RefusalClassifier
from valign.evals.classifiers.registry import CLASSIFIERS, ClassifierConfig, classifier_forms, load_classifier

__all__ = ["LABELS", "Label", "Exchange", "Classification", "RefusalClassifier", "CLASSIFIERS", "ClassifierConfig", "classifier_forms", "load_classifier"]
