"""Published opinion data as evaluation items: each loader on small files we write in its
published layout, weighted aggregation against hand-computed shares, populations, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_helpers import valign_cli
from valign.errors import ValignError
from valign.opinions import convert, expand, population_counts, restrict, retarget
from valign.opinions.sources import resolve_source
from valign.survey.opinion import read_items

GOQA_ROWS = [
    # (question, selections repr, options repr, source) as in Anthropic/llm_global_opinions
    ("Is the economy good?", "defaultdict(<class 'list'>, {'Japan': [0.2, 0.8], 'Peru': [0.62, 0.38], 'Nigeria': [0.0, 0.0]})", "['Good', 'Bad']", "GAS"),
    ("How important is God in your life?", "defaultdict(<class 'list'>, {'Japan': [10, 20, 70], 'Peru': [60, 30, 10]})",
     "['Very important', 'Rather important', 'Not important']", "WVS"),
    ("Too many options?", "defaultdict(<class 'list'>, {'Japan': [" + ", ".join(["0.03"] * 30) + "]})", repr([f"o{i}" for i in range(30)]), "GAS"),
]


def _goqa_csv(path: Path) -> Path:
    pd.DataFrame(GOQA_ROWS, columns=["question", "selections", "options", "source"]).to_csv(path, index=False)
    return path


def test_globalopinionqa_rows_become_items_per_country(tmp_path):
    result = convert(_goqa_csv(tmp_path / "goqa.csv"), "globalopinionqa")
    first, second = result.items
    assert first.id == "gas-0000" and first.options == ["Good", "Bad"] and not first.ordinal and first.kind == "opinion"
    assert set(first.groups) == {"country=Japan", "country=Peru"}, "Nigeria's all-zero shares are no distribution"
    assert first.groups["country=Peru"].distribution == pytest.approx([0.62, 0.38]) and first.groups["country=Peru"].n is None
    assert first.distribution == pytest.approx([0.41, 0.59]), "the mean of the countries asked"
    assert second.id == "wvs-0001" and second.groups["country=Japan"].distribution == pytest.approx([0.1, 0.2, 0.7]), "percentages normalised"
    assert result.skipped == {"a country with no answers": 1, "more than 26 options": 1}


def test_globalopinionqa_parquet_and_a_cached_hub_snapshot(tmp_path):
    """The hub's layout (a Parquet file in a dataset snapshot) read through the local cache only."""
    df = pd.DataFrame(GOQA_ROWS[:2], columns=["question", "selections", "options", "source"])
    cache = tmp_path / "hub"
    repo = cache / "datasets--Anthropic--llm_global_opinions"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567" / "data"
    snapshot.mkdir(parents=True)
    df.to_parquet(snapshot / "train-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    items = convert("Anthropic/llm_global_opinions", "globalopinionqa", cache_dir=cache).items
    assert [i.id for i in items] == ["gas-0000", "wvs-0001"] and items[1].groups["country=Peru"].distribution == pytest.approx([0.6, 0.3, 0.1])
    with pytest.raises(ValignError, match=r"^Anthropic/other is neither a file nor a data set in the local Hugging Face cache.*download it \(https://huggingface.co/datasets/Anthropic/llm_global_opinions\)"):
        resolve_source("Anthropic/other", "globalopinionqa", "https://huggingface.co/datasets/Anthropic/llm_global_opinions", cache_dir=cache)


def test_globalopinionqa_bad_cells_name_the_row(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame([("Q?", "defaultdict(<class 'list'>, {'Japan': [0.5, 0.3, 0.2]})", "['Yes', 'No']", "GAS")],
                 columns=["question", "selections", "options", "source"]).to_csv(bad, index=False)
    with pytest.raises(ValignError, match=r"bad.csv row 2: Japan's shares .* do not match the 2 options"):
        convert(bad, "globalopinionqa")
    pd.DataFrame([("Q?", "{'Japan': [0.5", "['Yes', 'No']", "GAS")], columns=["question", "selections", "options", "source"]).to_csv(bad, index=False)
    with pytest.raises(ValignError, match=r"row 2: column 'selections' is not a Python or JSON literal"):
        convert(bad, "globalopinionqa")
    pd.DataFrame({"prompt": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValignError, match=r"lacks the column\(s\) question, selections, options"):
        convert(bad, "globalopinionqa")


def _opinionqa_wave(folder: Path, info: bool = True) -> Path:
    folder.mkdir(parents=True)
    mc = ["Increase", "Decrease", "Stay about the same", "Refused"]
    yes = ["Yes", "likely", "No", "not likely", "Refused"]  # OpinionQA's MC_options split "Yes, likely" at the comma
    sex = {
        "CARS8_W99": {"MC_options": mc, "question_text": "Will accidents increase, decrease or stay the same?",
                      "Female": {"Increase": 30.0, "Decrease": 50.0, "Stay about the same": 20.0, "Refused": 4.0},
                      "Male": {"Increase": 10.0, "Decrease": 70.0, "Stay about the same": 20.0},
                      "Refused": {"Increase": 1.0, "Decrease": 1.0}},
        "CARS10_W99": {"MC_options": yes, "question_text": "Would the elderly live more independently?",
                       "Female": {"No, not likely": 25.0, "Yes, likely": 75.0}, "Male": {"No, not likely": 40.0, "Yes, likely": 60.0, "Refused": 3.0}},
    }
    everyone = {key: {"MC_options": e["MC_options"], "question_text": e["question_text"],
                      "Democrat": {k: v / 2 for k, v in e["Female"].items()}, "Republican": {k: v / 2 for k, v in e["Male"].items()},
                      "Other": {k: v / 2 for k, v in e["Female"].items()}} for key, e in sex.items()}
    (folder / "SEX_data.json").write_text(json.dumps(sex))
    (folder / "NONE_data.json").write_text(json.dumps(everyone))
    if info:
        pd.DataFrame([
            {"key": "CARS8_W99", "option_mapping": "{}", "question": "…", "references": repr(mc), "option_ordinal": "[1.0, 2.0, 1.5]"},
            {"key": "CARS10_W99", "option_mapping": "{}", "question": "…", "references": "['Yes, likely', 'No, not likely', 'Refused']", "option_ordinal": "[1.0, 2.0]"},
        ]).to_csv(folder / "info.csv")
    return folder


def test_opinionqa_wave_folder_with_info(tmp_path):
    wave = _opinionqa_wave(tmp_path / "American_Trends_Panel_W99")
    items = {i.id: i for i in convert(wave, "opinionqa").items}
    cars8 = items["CARS8_W99"]
    # option_ordinal puts "Stay about the same" (1.5) between Increase (1) and Decrease (2); Refused is no option.
    assert cars8.options == ["Increase", "Stay about the same", "Decrease"] and cars8.ordinal
    assert cars8.groups["sex=Female"].distribution == pytest.approx([0.3, 0.2, 0.5]) and cars8.groups["sex=Female"].n == 100
    assert cars8.groups["sex=Male"].distribution == pytest.approx([0.1, 0.2, 0.7])
    assert "sex=Refused" not in cars8.groups, "those who refused the attribute are no group"
    # everyone = NONE_data.json's groups summed: (30+10+30)/2, (20+20+20)/2, (50+70+50)/2 over 150
    assert cars8.distribution == pytest.approx([35 / 150, 30 / 150, 85 / 150]) and cars8.n == 150
    assert items["CARS10_W99"].options == ["Yes, likely", "No, not likely"]
    assert items["CARS10_W99"].groups["sex=Male"].distribution == pytest.approx([0.6, 0.4])
    # a folder of waves reads every wave
    assert {i.id for i in convert(tmp_path, "opinionqa").items} == {"CARS8_W99", "CARS10_W99"}


def test_opinionqa_without_info_orders_by_mc_options(tmp_path):
    wave = _opinionqa_wave(tmp_path / "W99", info=False)
    items = {i.id: i for i in convert(wave / "SEX_data.json", "opinionqa").items}
    assert items["CARS8_W99"].options == ["Increase", "Decrease", "Stay about the same"] and not items["CARS8_W99"].ordinal
    assert items["CARS10_W99"].options == ["Yes, likely", "No, not likely"], "comma-split MC_options still place the answers"
    assert items["CARS10_W99"].distribution == pytest.approx([135 / 200, 65 / 200]), "no NONE file: the sex groups pooled by size"


def test_subpop_long_table(tmp_path):
    rows = [
        {"qkey": "q1", "question": "Is X good?", "options": "['Good', 'Neutral', 'Bad']", "attribute": "POLIDEOLOGY", "group": "Liberal",
         "responses": "[0.6, 0.3, 0.1]", "ordinal": "[1, 3, 2]", "n": 200},
        {"qkey": "q1", "question": "Is X good?", "options": "['Good', 'Neutral', 'Bad']", "attribute": "POLIDEOLOGY", "group": "Conservative",
         "responses": "[0.2, 0.2, 0.6]", "ordinal": "[1, 3, 2]", "n": 100},
        {"qkey": "q1", "question": "Is X good?", "options": "['Good', 'Neutral', 'Bad']", "attribute": "all", "group": "all",
         "responses": "[0.5, 0.3, 0.2]", "ordinal": "[1, 3, 2]", "n": 900},
        {"qkey": "q2", "question": "Y?", "options": "['Yes', 'No']", "attribute": "AGE", "group": "18-29", "responses": "[30, 70]", "ordinal": None, "n": None},
        {"qkey": "q2", "question": "Y?", "options": "['Yes', 'No']", "attribute": "AGE", "group": "65+", "responses": "[70, 30]", "ordinal": None, "n": None},
    ]
    path = tmp_path / "subpop.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    q1, q2 = convert(path, "subpop").items
    # positions [1, 3, 2]: the scale runs Good, Bad, Neutral
    assert q1.options == ["Good", "Bad", "Neutral"] and q1.ordinal and q1.distribution == pytest.approx([0.5, 0.2, 0.3]) and q1.n == 900
    assert q1.groups["polideology=Conservative"].distribution == pytest.approx([0.2, 0.6, 0.2]) and q1.groups["polideology=Conservative"].n == 100
    assert not q2.ordinal and q2.distribution == pytest.approx([0.5, 0.5]) and q2.groups["age=65+"].n is None
    rows[1]["options"] = "['Good', 'Bad']"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(ValignError, match=r"row 3: 'responses' has 3 values for 2 options"):
        convert(path, "subpop")


# ---------------------------------------------------------------- respondent-level files

RESPONDENTS = pd.DataFrame({
    "B_COUNTRY_ALPHA": ["NZL", "NZL", "NZL", "NZL", "JPN", "JPN", "JPN", "JPN"],
    "Q260": [1, 2, 2, 1, 1, 2, 2, 1],
    "Q262": [25, 40, 60, 35, 70, 22, 45, -1],
    "W_WEIGHT": [1.0, 2.0, 1.0, 1.0, 0.5, 1.5, 2.0, 1.0],
    "Q1": [1, 2, -2, 3, 1, 1, 3, 99],  # −2 (no answer) and 99 (listed under missing) are no answers
})

CODEBOOK = """
weight: W_WEIGHT
country: B_COUNTRY_ALPHA
kind: value
min_group_n: 3
missing: [99]
groups:
  sex: {variable: Q260, labels: {1: Male, 2: Female}}
  age: {variable: Q262, bins: {"18-39": [18, 39], "40+": [40, 120]}}
questions:
  Q1:
    text: "Competition is good."
    options: {1: Agree, 2: Neither, 3: Disagree}
    ordinal: true
"""

# By hand: answered rows 1, 2, 4, 5, 6, 7 with weights 1, 2, 1, .5, 1.5, 2 (total 8).
EXPECTED = {
    "all": ([3 / 8, 2 / 8, 3 / 8], 6),
    "country=NZL": ([1 / 4, 2 / 4, 1 / 4], 3),            # rows 1, 2, 4: weights 1, 2, 1
    "country=JPN": ([2 / 4, 0.0, 2 / 4], 3),              # rows 5, 6, 7: weights .5, 1.5, 2
    "sex=Male": ([1.5 / 2.5, 0.0, 1 / 2.5], 3),           # rows 1, 4, 5
    "sex=Female": ([1.5 / 5.5, 2 / 5.5, 2 / 5.5], 3),     # rows 2, 6, 7
    "age=18-39": ([2.5 / 3.5, 0.0, 1 / 3.5], 3),          # ages 25, 35, 22
    "age=40+": ([0.5 / 4.5, 2 / 4.5, 2 / 4.5], 3),        # ages 40, 70, 45 (the −1 age is in no bin)
}


def _check(item):
    assert item.id == "Q1" and item.kind == "value" and item.ordinal and item.codes == ["1", "2", "3"]
    assert item.distribution == pytest.approx(EXPECTED["all"][0]) and item.n == EXPECTED["all"][1]
    # countries by name, groups in code order, bins in the codebook's order
    assert list(item.groups) == ["country=JPN", "country=NZL", "sex=Male", "sex=Female", "age=18-39", "age=40+"]
    for key, (dist, n) in EXPECTED.items():
        if key != "all":
            assert item.groups[key].distribution == pytest.approx(dist), key
            assert item.groups[key].n == n, key


def test_respondents_csv_weighted_by_hand(tmp_path):
    RESPONDENTS.to_csv(tmp_path / "wvs.csv", index=False)
    (tmp_path / "cb.yaml").write_text(CODEBOOK)
    [item] = convert(tmp_path / "wvs.csv", "respondents", codebook=tmp_path / "cb.yaml").items
    assert item.options == ["Agree", "Neither", "Disagree"] and item.question == "Competition is good."
    _check(item)
    # a larger minimum leaves the groups of three out
    (tmp_path / "cb4.yaml").write_text(CODEBOOK.replace("min_group_n: 3", "min_group_n: 4"))
    assert convert(tmp_path / "wvs.csv", "respondents", codebook=tmp_path / "cb4.yaml").items[0].groups == {}


def test_respondents_sav_and_dta_take_labels_from_the_file(tmp_path):
    """SPSS and Stata files carry the question text and the option labels: the codebook need not repeat them."""
    import pyreadstat

    labels = {"Q1": {1: "Agree", 2: "Neither", 3: "Disagree", -2: "No answer", 99: "Missing"}, "Q260": {1: "Male", 2: "Female"},
              "B_COUNTRY_ALPHA": {}}
    codebook = CODEBOOK.split("groups:")[0] + """groups:
  sex: {variable: Q260}
  age: {variable: Q262, bins: {"18-39": [18, 39], "40+": [40, 120]}}
questions:
  Q1: {ordinal: true}
"""
    (tmp_path / "cb.yaml").write_text(codebook)
    pyreadstat.write_sav(RESPONDENTS, str(tmp_path / "wvs.sav"), column_labels={"Q1": "Competition is good.", "Q260": "Sex"},
                         variable_value_labels={k: v for k, v in labels.items() if v})
    [sav] = convert(tmp_path / "wvs.sav", "respondents", codebook=tmp_path / "cb.yaml").items
    assert sav.question == "Competition is good." and sav.options == ["Agree", "Neither", "Disagree"], "negative and listed-missing codes are no options"
    _check(sav)
    pyreadstat.write_dta(RESPONDENTS, str(tmp_path / "wvs.dta"), column_labels={"Q1": "Competition is good.", "Q260": "Sex"},
                         variable_value_labels={"Q1": {1: "Agree", 2: "Neither", 3: "Disagree"}, "Q260": {1: "Male", 2: "Female"}})
    [dta] = convert(tmp_path / "wvs.dta", "respondents", codebook=tmp_path / "cb.yaml").items
    _check(dta)


def test_respondents_mistakes_are_one_sentence(tmp_path):
    (tmp_path / "cb.yaml").write_text(CODEBOOK)
    bad = RESPONDENTS.copy()
    bad.loc[0, "Q1"] = 7
    bad.to_csv(tmp_path / "unknown.csv", index=False)
    with pytest.raises(ValignError, match=r"Q1 has code\(s\) 7 in 1 row\(s\) that its options do not list; add them to questions.Q1.options or to missing"):
        convert(tmp_path / "unknown.csv", "respondents", codebook=tmp_path / "cb.yaml")
    bad = RESPONDENTS.copy()
    bad.loc[2, "W_WEIGHT"] = -1
    bad.to_csv(tmp_path / "weights.csv", index=False)
    with pytest.raises(ValignError, match=r"1 row\(s\) have no usable weight in W_WEIGHT"):
        convert(tmp_path / "weights.csv", "respondents", codebook=tmp_path / "cb.yaml")
    RESPONDENTS.drop(columns=["W_WEIGHT"]).to_csv(tmp_path / "noweight.csv", index=False)
    with pytest.raises(ValignError, match=r"has no column\(s\) W_WEIGHT; fix the codebook's names"):
        convert(tmp_path / "noweight.csv", "respondents", codebook=tmp_path / "cb.yaml")
    with pytest.raises(ValignError, match=r"needs --codebook"):
        convert(tmp_path / "noweight.csv", "respondents")
    (tmp_path / "nolabel.yaml").write_text(CODEBOOK.replace('text: "Competition is good."', "ordinal: true").replace("    ordinal: true\n", "", 1))
    with pytest.raises(ValignError, match=r"question Q1 has no text: the file carries no label for it; add questions.Q1.text"):
        convert(tmp_path / "unknown.csv", "respondents", codebook=tmp_path / "nolabel.yaml")
    (tmp_path / "typo.yaml").write_text(CODEBOOK.replace("min_group_n: 3", "min_group: 3"))
    with pytest.raises(ValignError, match=r"codebook .*typo.yaml: min_group: Extra inputs are not permitted"):
        convert(tmp_path / "unknown.csv", "respondents", codebook=tmp_path / "typo.yaml")


def test_unweighted_when_the_codebook_names_no_weight(tmp_path):
    RESPONDENTS.to_csv(tmp_path / "wvs.csv", index=False)
    (tmp_path / "cb.yaml").write_text(CODEBOOK.replace("weight: W_WEIGHT\n", ""))
    [item] = convert(tmp_path / "wvs.csv", "respondents", codebook=tmp_path / "cb.yaml").items
    assert item.distribution == pytest.approx([3 / 6, 1 / 6, 2 / 6]), "each of the six who answered counts once"


# ---------------------------------------------------------------- populations and the CLI


def test_populations_choose_countries_and_groups(tmp_path):
    items = convert(_goqa_csv(tmp_path / "goqa.csv"), "globalopinionqa").items
    assert population_counts(items) == {"all": 2, "country=Japan": 2, "country=Peru": 2}
    assert expand(items, ["country"]) == ["country=Japan", "country=Peru"]
    only = restrict(items, ["country=Peru"])
    assert [list(i.groups) for i in only] == [["country=Peru"], ["country=Peru"]]
    assert [i.distribution for i in retarget(items, "country=Japan")] == [pytest.approx([0.2, 0.8]), pytest.approx([0.1, 0.2, 0.7])]
    with pytest.raises(ValignError, match=r"population 'country=Chile' is in none of the items; choose .*country=Japan"):
        restrict(items, ["country=Chile"])


def test_cli_convert_and_show(tmp_path, monkeypatch):
    goqa = _goqa_csv(tmp_path / "goqa.csv")
    code, out, err = valign_cli(["opinions", "convert", str(goqa), "--format", "globalopinionqa", "--out", str(tmp_path / "items.jsonl")], monkeypatch)
    assert code == 0, err
    assert "wrote 2 items with 2 populations besides everyone" in out and "left out: 1 × more than 26 options" in out
    assert [i.id for i in read_items(tmp_path / "items.jsonl")] == ["gas-0000", "wvs-0001"]
    code, out, err = valign_cli(["opinions", "show", str(tmp_path / "items.jsonl")], monkeypatch)
    assert code == 0, err
    assert "2 items (2 opinion); 0 ordered, 2 unordered; 2-3 options" in out
    assert "country=Peru: 2 items, size not published" in out and "gas-0000: Is the economy good?" in out
    code, out, err = valign_cli(["opinions", "convert", "Anthropic/llm_global_opinions_missing", "--format", "globalopinionqa", "--out", str(tmp_path / "x.jsonl")], monkeypatch)
    assert code == 2 and "download it (https://huggingface.co/datasets/Anthropic/llm_global_opinions)" in err and len(err.strip().splitlines()) == 1
