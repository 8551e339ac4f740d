"""Constitutions: both file forms, validation messages, weighted sampling, rendering,
fingerprints, and the shipped Kantian constitution."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from valign.constitution import (
    Constitution,
    Principle,
    default_critique_request,
    default_revision_request,
    load_constitution,
    shipped_constitutions,
    slugify,
)
from valign.errors import ValignError

DATA = Path(__file__).parent / "data"


# --------------------------------------------------------------------------- loading


def test_seed_jsonl_form_loads_as_is() -> None:
    c = load_constitution(DATA / "seed_constitution.jsonl")
    assert c.name == "seed_constitution"
    assert c.ids == ["truthfulness-and-support", "non-coercion-and-empowerment", "honest-warnings-with-helpful-alternatives"]
    p = c.principles[1]
    assert p.title == "Non-Coercion and Empowerment"
    assert p.text.startswith("Never encourage coercion")
    assert p.weight == 1.0
    # Requests are written from the text when the file gives none.
    assert p.critique_request == default_critique_request(p.text)
    assert p.revision_request == default_revision_request(p.text)
    assert p.text in p.critique_request and p.text in p.revision_request


def test_seed_listing_with_a_multiline_object_loads() -> None:
    # The seed prints its first principle over several lines and the others one per line.
    a = load_constitution(DATA / "seed_listing.json")
    b = load_constitution(DATA / "seed_constitution.jsonl")
    assert a.ids == b.ids
    assert [p.text for p in a.principles] == [p.text for p in b.principles]


def test_rich_yaml_form_loads() -> None:
    c = load_constitution(DATA / "rich_constitution.yaml")
    assert (c.name, c.version) == ("tiny", "2")
    candour, kindness = c.principles
    assert candour.weight == 3 and candour.support == {"agree": 0.8, "n": 120} and candour.tags == ["honesty"]
    assert candour.critique_request == "Where does the answer claim more certainty than it has?"
    assert kindness.support == 0.64 and kindness.title == "Kindness"
    assert kindness.critique_request == default_critique_request(kindness.text)
    assert c.few_shot[0].principle == "candour"


def test_json_document_and_plain_list_forms(tmp_path: Path) -> None:
    doc = tmp_path / "doc.json"
    doc.write_text('{"name": "j", "principles": [{"id": "a", "text": "Be fair."}]}')
    assert load_constitution(doc).ids == ["a"]
    lst = tmp_path / "list.yml"
    lst.write_text("- {principle: Fairness, text: Be fair., weight: 2}\n")
    c = load_constitution(lst)
    assert c.name == "list" and c.ids == ["fairness"] and c.principles[0].weight == 2


def test_slugify() -> None:
    assert slugify("Honest Warnings with Helpful Alternatives") == "honest-warnings-with-helpful-alternatives"
    assert slugify("  Ünïcode & Co.  ") == "unicode-co"


# --------------------------------------------------------------------------- validation


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (  # missing text: names the entry (number and id) and the field
            "missing_text.jsonl",
            '{"principle": "Honesty", "text": "Never lie."}\n{"principle": "Care"}\n',
            ["principle entry 2", "'care'", "field 'text'", "is missing", "non-empty string"],
        ),
        (  # bad weight
            "bad_weight.yaml",
            "principles:\n  - {id: ok, text: Fine.}\n  - {id: heavy, text: Too heavy., weight: -1}\n",
            ["principle entry 2", "id 'heavy'", "field 'weight'", "-1", "greater than 0", "positive"],
        ),
        (
            "zero_weight.yaml",
            "principles:\n  - {id: zero, text: Nothing., weight: 0}\n",
            ["principle entry 1", "'zero'", "field 'weight'", "greater than 0"],
        ),
        (
            "word_weight.yaml",
            "principles:\n  - {id: w, text: Words., weight: heavy}\n",
            ["principle entry 1", "'w'", "field 'weight'", "must be a number"],
        ),
        (  # duplicate id, also when one comes from a seed-style title
            "dupe.jsonl",
            '{"id": "honesty", "text": "A."}\n{"principle": "Honesty", "text": "B."}\n',
            ["principle entry 2", "'honesty'", "repeats the id of entry 1", "distinct 'id'"],
        ),
        (  # unknown field, with a suggestion
            "unknown.yaml",
            "principles:\n  - {id: x, text: X., wieght: 2}\n",
            ["principle entry 1", "'x'", "field 'wieght' is unknown", "did you mean 'weight'"],
        ),
        (  # bad JSON line: names the line
            "bad_line.jsonl",
            '{"principle": "A", "text": "a"}\n{"principle": "B", "text": }\n',
            ["line 2", "not valid JSON", "fix that line"],
        ),
        (
            "no_id.yaml",
            "principles:\n  - {text: Anonymous.}\n",
            ["principle entry 1", "missing field 'id'"],
        ),
        (
            "bad_id.yaml",
            "principles:\n  - {id: Bad Id, text: X.}\n",
            ["principle entry 1", "'Bad Id'", "field 'id'", "lowercase"],
        ),
        (
            "blank_text.yaml",
            "principles:\n  - {id: blank, text: '   '}\n",
            ["principle entry 1", "'blank'", "field 'text'", "is empty"],
        ),
        (
            "top.yaml",
            "name: t\nprinciple: []\n",
            ["unknown top-level field 'principle'", "did you mean 'principles'"],
        ),
        (
            "few.yaml",
            "principles:\n  - {id: a, text: A.}\nfew_shot:\n  - {principle: b, prompt: p, response: r, critique: c, revision: v}\n",
            ["few_shot example 1", "field 'principle'", "'b'", "use one of a"],
        ),
        (
            "few_missing.yaml",
            "principles:\n  - {id: a, text: A.}\nfew_shot:\n  - {principle: a, prompt: p, response: r, critique: c}\n",
            ["few_shot example 1", "field 'revision'", "is missing"],
        ),
        ("empty.jsonl", "\n\n", ["holds no principles"]),
        ("scalar.yaml", "just a string\n", ["must be a mapping"]),
    ],
)
def test_validation_errors_name_file_entry_and_field(tmp_path: Path, name: str, text: str, expected: list[str]) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ValignError) as err:
        load_constitution(path)
    msg = str(err.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert "\n" not in msg and msg.endswith((".", "?")), "one sentence, no traceback-like text"


def test_unknown_name_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValignError, match="neither a file nor a shipped constitution.*kantian"):
        load_constitution("no-such-constitution")
    with pytest.raises(ValignError, match=r"\.yaml, \.yml, \.json or \.jsonl"):
        load_constitution(_write(tmp_path, "c.txt", "principles: []"))


# --------------------------------------------------------------------------- sampling


def test_sampling_follows_weights() -> None:
    c = load_constitution("kantian")
    rng = random.Random(1234)
    n = 20_000
    counts = Counter(p.id for _ in range(n) for p in c.sample(rng))
    total = sum(p.weight for p in c.principles)
    for p in c.principles:
        expected = p.weight / total
        # Binomial sd is at most ~0.0022 here; 0.01 is over 4 sd for every principle.
        assert abs(counts[p.id] / n - expected) < 0.01, (p.id, counts[p.id] / n, expected)


def test_sampling_two_principles_three_to_one() -> None:
    c = load_constitution(DATA / "rich_constitution.yaml")
    rng = random.Random(0)
    share = sum(c.sample(rng)[0].id == "candour" for _ in range(20_000)) / 20_000
    assert abs(share - 0.75) < 0.015


def test_sampling_is_reproducible_and_distinct_within_a_call() -> None:
    c = load_constitution("kantian")
    a = [[p.id for p in c.sample(random.Random(s), k=3)] for s in range(50)]
    b = [[p.id for p in c.sample(random.Random(s), k=3)] for s in range(50)]
    assert a == b
    assert all(len(set(draw)) == 3 for draw in a)
    assert len({tuple(d) for d in a}) > 40  # different seeds, different draws
    rng = random.Random(0)
    first, second = c.sample(rng, k=2), c.sample(rng, k=2)
    assert isinstance(first[0], Principle) and len(second) == 2
    with pytest.raises(ValignError, match="cannot draw 16 distinct principles"):
        c.sample(random.Random(0), k=16)
    assert len(c.sample(random.Random(0), k=40, replace=True)) == 40


# --------------------------------------------------------------------------- render and fingerprint


def test_render_markdown_and_text() -> None:
    c = load_constitution(DATA / "rich_constitution.yaml")
    md = c.render()
    assert md.startswith("# tiny (version 2)")
    assert "1. **Candour** (`candour`, weight 3): Say what you believe" in md
    assert "critique:" not in md
    text = c.render("text")
    assert text.splitlines()[1] == "1. Candour: Say what you believe to be true, and say how sure you are."
    details = c.render(details=True)
    assert "Where does the answer claim more certainty" in details and "### Example 1 (principle candour)" in details


def test_fingerprint_is_canonical(tmp_path: Path) -> None:
    c = load_constitution(DATA / "rich_constitution.yaml")
    assert c.fingerprint() == load_constitution(DATA / "rich_constitution.yaml").fingerprint()
    # The same content with keys re-ordered and written as JSON fingerprints the same.
    data = yaml.safe_load((DATA / "rich_constitution.yaml").read_text())
    data["principles"] = [dict(reversed(list(p.items()))) for p in data["principles"]]
    import json

    same = _write(tmp_path, "tiny.json", json.dumps(dict(reversed(list(data.items())))))
    assert load_constitution(same).fingerprint() == c.fingerprint()
    data["principles"][1]["weight"] = 2
    changed = _write(tmp_path, "tiny2.json", json.dumps(data))
    assert load_constitution(changed).fingerprint() != c.fingerprint()
    # to_yaml round-trips.
    back = _write(tmp_path, "back.yaml", c.to_yaml())
    assert load_constitution(back).fingerprint() == c.fingerprint()


def test_get_names_known_ids() -> None:
    c = load_constitution(DATA / "rich_constitution.yaml")
    assert c.get("kindness").support == 0.64
    with pytest.raises(ValignError, match="no principle 'nope'; its ids are candour, kindness"):
        c.get("nope")


# --------------------------------------------------------------------------- the shipped constitution

REQUIRED_THEMES = {
    "humanity-as-end",  # persons as ends, never merely as means
    "universalisable-maxim",
    "no-lying",
    "no-deception",
    "non-coercion",
    "non-manipulation",
    "respect-autonomy",
    "beneficence",
    "self-development",
    "honest-warnings",
    "no-paternalism",
}


def test_kantian_is_shipped_and_complete(tmp_path: Path) -> None:
    assert "kantian" in shipped_constitutions()
    c = load_constitution("kantian")
    assert c.name == "kantian" and c.description
    assert 12 <= len(c.principles) <= 16
    assert REQUIRED_THEMES <= set(c.ids)
    for p in c.principles:
        assert p.title and p.text and p.tags
        assert p.weight > 0
        # Every principle has its own requests, not the generic defaults.
        assert p.critique_request != default_critique_request(p.text)
        assert p.revision_request != default_revision_request(p.text)
        assert "not a quotation" in (p.source or "")
    # The revision style of the seed: name the maxim, test it, then help — asked in
    # every revision, whichever principle the round drew, and shown in every example.
    assert "maxim" in c.get("universalisable-maxim").revision_request
    assert "maxim" in c.revision_style and "then give your full answer" in c.revision_style
    for p in c.principles:
        assert c.revision_prompt(p) == f"{p.revision_request}\n\n{c.revision_style}"
    for ex in c.few_shot:
        assert "maxim" in ex.revision.split(". ")[0].lower(), "each worked revision opens by naming the maxim"
    assert load_constitution(_write(tmp_path, "k.yaml", c.to_yaml())).revision_style == c.revision_style
    # Over-refusal is a failure too, and weighs as much as the formula of humanity.
    anti = c.get("no-paternalism")
    assert "refusal" in anti.text and "moralis" in anti.text
    assert anti.weight >= c.get("humanity-as-end").weight
    assert 2 <= len(c.few_shot) <= 3
    assert {ex.principle for ex in c.few_shot} <= set(c.ids)
    assert any(ex.principle == "no-paternalism" for ex in c.few_shot)


def test_constitution_model_rejects_empty_principles() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Constitution(name="empty", principles=[])
