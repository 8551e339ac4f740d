"""Instrument texts in several languages, as LimeSurvey has them: a base language
plus additional ones per survey.

An instrument lists its languages (``languages: [en, de]``, the first is the base;
without the list it has one, ``language``, default ``en``). Every respondent-facing
text — titles, consent, questions, option and scale labels, instructions, scenario
prompts and answers, the quota closing message — is then either a plain string,
allowed only when there is one language, or a mapping with one entry per language::

    text: {en: How old are you?, de: Wie alt sind Sie?}
    labels: {en: [No, Yes], de: [Nein, Ja]}   # a list of labels: per language, or per label

`localise` turns the file's data into the data of one language, which
`valign.survey.instrument` validates like any single-language instrument; so ids,
option codes, keys and scoring are shared by every language by construction. A
missing translation or a language the pages' catalogue (`valign.survey.messages`)
lacks stops loading with a `TranslationProblem` naming the place and the language.

Example:
    >>> data = {"languages": ["en", "de"], "title": {"en": "Hi", "de": "Hallo"}}
    >>> localise(data, "de")["title"], localise(data, "de")["language"]
    ('Hallo', 'de')
    >>> localise({"languages": ["en", "de"], "title": "Hi"}, "en")
    Traceback (most recent call last):
    valign.survey.translations.TranslationProblem: 'title' is given in one language only, but the instrument declares en, de; write it as a mapping {en: ..., de: ...}
"""

from __future__ import annotations

from typing import Any

from valign.survey.messages import catalogue_languages

__all__ = ["TranslationProblem", "declared_languages", "localise", "TEXT_FIELDS", "TEXT_LIST_FIELDS"]

# The fields whose values respondents read, wherever they sit in an instrument.
TEXT_FIELDS = frozenset({"title", "notice", "description", "text", "agree_label", "decline_label", "label", "instructions", "prompt", "answer", "message"})
TEXT_LIST_FIELDS = frozenset({"labels", "strength_labels"})
# Subtrees without respondent-facing text whose mapping keys are data (quota categories).
_OPAQUE = frozenset({"sets", "quality"})


class TranslationProblem(ValueError):
    """A text without the translation a declared language needs, or an unusable language
    list; ``loc`` is where in the instrument's data."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def declared_languages(data: dict[str, Any]) -> list[str]:
    """The instrument's languages, base first: ``languages``, else ``[language]``, else ``[en]``.

    Example:
        >>> declared_languages({"language": "mi"}), declared_languages({"languages": ["de", "en"]})
        (['mi'], ['de', 'en'])
    """
    langs = data.get("languages")
    if langs is None:
        return [data.get("language", "en")] if isinstance(data.get("language", "en"), str) else ["en"]
    if not isinstance(langs, list) or not langs or not all(isinstance(x, str) and x for x in langs):
        raise TranslationProblem(("languages",), "must be a list of language tags such as [en, de], the base language first")
    if len(set(langs)) != len(langs):
        raise TranslationProblem(("languages",), "names a language twice; list each once")
    if "language" in data and data["language"] != langs[0]:
        raise TranslationProblem(("language",), f"is '{data['language']}' but the first of 'languages' (the base language) is '{langs[0]}'; drop 'language' or make them agree")
    return list(langs)


def localise(data: dict[str, Any], lang: str) -> dict[str, Any]:
    """The instrument's data in language ``lang``: every text resolved to that language's
    string, ``language`` set to ``lang``. Raises `TranslationProblem` for the first text
    that lacks a declared language, or for a language the pages cannot be shown in."""
    langs = declared_languages(data)
    supported = catalogue_languages()
    for i, tag in enumerate(langs):
        if tag not in supported:
            raise TranslationProblem(("languages", i) if "languages" in data else ("language",), f"the survey pages have no '{tag}' translation (they exist in {', '.join(supported)}); add valign/data/templates/survey/messages/{tag}.yaml or use one of those")
    out = _walk(data, lang, langs, ())
    out.pop("languages", None)
    out["language"] = lang
    out["languages"] = langs
    return out


def _walk(node: Any, lang: str, langs: list[str], loc: tuple[str | int, ...]) -> Any:
    if isinstance(node, list):
        return [_walk(x, lang, langs, (*loc, i)) for i, x in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[Any, Any] = {}
    for key, value in node.items():
        here = (*loc, key)
        if key in TEXT_FIELDS:
            out[key] = _text(value, lang, langs, here)
        elif key in TEXT_LIST_FIELDS:
            if isinstance(value, dict):
                out[key] = _text(value, lang, langs, here)
            elif isinstance(value, list):
                out[key] = [_text(x, lang, langs, (*here, i)) for i, x in enumerate(value)]
            else:
                out[key] = value  # the model's validation names the wrong type
        elif key in _OPAQUE:
            out[key] = value
        else:
            out[key] = _walk(value, lang, langs, here)
    return out


def _text(value: Any, lang: str, langs: list[str], loc: tuple[str | int, ...]) -> Any:
    """One text (or list of texts) in ``lang``; anything neither string nor mapping is left
    to the model's validation, which names the wrong type."""
    name = str(loc[-1]) if not isinstance(loc[-1], int) else str(loc[-2])
    if isinstance(value, dict):
        unknown = [str(k) for k in value if k not in langs]
        if unknown:
            raise TranslationProblem(loc, f"'{name}' has a text in '{unknown[0]}', which is not one of the instrument's languages ({', '.join(langs)}); add it to 'languages' or remove that entry")
        for tag in langs:
            if value.get(tag) in (None, "", []):
                raise TranslationProblem(loc, f"'{name}' has no '{tag}' translation; add {tag}: ... to its mapping")
        return value[lang]
    if isinstance(value, str) and len(langs) > 1:
        raise TranslationProblem(loc, f"'{name}' is given in one language only, but the instrument declares {', '.join(langs)}; write it as a mapping {{{', '.join(f'{t}: ...' for t in langs)}}}")
    return value
