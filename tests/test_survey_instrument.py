"""Instruments: clear errors for bad files; the page plan (seeded order, stable, checks mixed in)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import pytest
import yaml

from tests.survey_helpers import SRC
from valign.errors import ValignError
from valign.survey.flow import plan_pages
from valign.survey.instrument import load_instrument


def demo_data() -> dict:
    return yaml.safe_load((resources.files("valign") / "data" / "instruments" / "demo.yaml").read_text(encoding="utf-8"))


def single_language_demo(lang: str = "en") -> dict:
    """The demo's data in one of its languages, as a one-language instrument (plain strings)."""
    from valign.survey.translations import localise

    data = localise(demo_data(), lang)
    data["languages"] = [lang]
    return data


def write(tmp_path, data) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return str(path)


def broken(change) -> dict:
    data = demo_data()
    change(data)
    return data


BAD = {
    "unknown field": (lambda d: d["values"]["items"][2].update(valu="care"), r"values\.items\[3\] \(id 'v-fair-1'\).*unknown field 'valu'"),
    "labels vs points": (lambda d: d["values"]["scale"].update(points=5), r"values\.scale: the scale has 5 points but 6 labels"),
    "duplicate id": (lambda d: d["principles"]["items"][1].update(id="pr-honesty"), r"the id 'pr-honesty' is used twice"),
    "attention code": (lambda d: d["attention_checks"][0].update(expected="9"), r"attention check 'att-values' expects '9', which is not one of"),
    "attention section": (lambda d: [d.pop("social_desirability"), d["attention_checks"][0].update(section="social_desirability")], r"sits in section 'social_desirability', which this instrument lacks"),
    "missing consent": (lambda d: d.pop("consent"), r"'consent' is required; add it"),
    "same margin twice": (lambda d: d["demographics"][1].update(margin="age_group"), r"two demographic questions feed the same margin variable"),
    "scenario answers share an id": (lambda d: d["scenarios"]["items"][0]["answers"][1].update(id="a"), r"scenarios\.items\[1\] \(id 'sc-homework'\).*share the id 'a'"),
    "bad action": (lambda d: d["quality"].update(speeding="ignore"), r"quality\.speeding"),
    "bad scoring key": (lambda d: d["values"].update(scoring_key="pvq40"), r"values\.scoring_key"),
    "bad language tag": (lambda d: d.update(language="english language"), r"language"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_instruments_name_the_place_and_the_fix(tmp_path, case):
    change, pattern = BAD[case]
    with pytest.raises(ValignError, match=pattern) as err:
        load_instrument(write(tmp_path, broken(change)))
    assert "bad.yaml" in str(err.value) and "\n" not in str(err.value)


def test_yaml_syntax_errors_give_the_line(tmp_path):
    with pytest.raises(ValignError, match=r"not valid YAML at line 4"):
        load_instrument(write(tmp_path, "id: x\ntitle: y\nconsent: [unclosed\n"))


def test_not_a_mapping_and_unknown_names(tmp_path):
    with pytest.raises(ValignError, match="must hold a mapping"):
        load_instrument(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ValignError, match="neither a file nor a shipped instrument"):
        load_instrument("no-such-instrument")


def test_the_demo_says_it_is_not_validated():
    inst = load_instrument("demo")
    assert inst.validated is False and "not a validated" in inst.notice
    assert inst.language == "en"


def test_cli_check_prints_one_line_without_traceback(tmp_path):
    path = write(tmp_path, broken(BAD["duplicate id"][0]))
    env = {"PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-m", "valign.cli", "survey", "check", path], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert "used twice" in out.stderr and "Traceback" not in out.stderr
    ok = subprocess.run([sys.executable, "-m", "valign.cli", "survey", "check", "demo"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "NOT a validated instrument" in ok.stdout


# -- a licensed instrument's scoring key ------------------------------------------------------


def pvq21_data(*changes: tuple[int, dict]) -> dict:
    """The demo with its value items replaced by the 21 PVQ items, each keyed as the pvq21
    key scores it (texts are placeholders); ``changes`` edit item ``index``."""
    from valign.survey.scoring_keys import scoring_key

    key = scoring_key("pvq21")
    items = [{"id": f"pvq-{n}", "text": f"(licensed item {n})", "value": key.value_of(n)} for n in range(1, 22)]
    items[6] = {"id": "benevolence-a", "number": 7, "text": "(licensed item 7)", "value": key.value_of(7)}  # numbered by `number:`
    for index, change in changes:
        items[index].update(change)
    data = single_language_demo()  # the placeholder texts are English only
    data["values"].update(scoring_key="pvq21", scale_direction="descending", items=items)
    return data


MISKEYED = {
    "wrong value": ((0, {"value": "power"}), r"values\.items\[1\] \(id 'pvq-1'\): value item 'pvq-1' \(number 1\) says value 'power', but the pvq21 key scores item 1 as 'self_direction'; fix its value or its number\.$"),
    "number twice": ((2, {"number": 2, "value": "power"}), r"values\.items\[3\] \(id 'pvq-3'\): value items 'pvq-2' and 'pvq-3' both have number 2; give each its own number\.$"),
    "no number": ((4, {"id": "fifth"}), r"values\.items\[5\] \(id 'fifth'\): value item 'fifth' has no item number of the pvq21 key \(1–21\); add `number:`"),
    "number beyond the key": ((6, {"number": 22}), r"values\.items\[7\] \(id 'benevolence-a'\): .*no item number of the pvq21 key"),
}


def test_items_keyed_as_the_scoring_key_scores_them_load(tmp_path):
    inst = load_instrument(write(tmp_path, pvq21_data()))
    assert inst.values.scoring_key == "pvq21" and len(inst.values.items) == 21


@pytest.mark.parametrize("case", list(MISKEYED))
def test_an_item_the_scoring_key_scores_differently_fails_loading(tmp_path, case):
    change, pattern = MISKEYED[case]
    with pytest.raises(ValignError, match=pattern) as err:
        load_instrument(write(tmp_path, pvq21_data(change)))
    assert "bad.yaml" in str(err.value) and "\n" not in str(err.value)


def test_check_and_serve_refuse_a_miskeyed_instrument(tmp_path):
    from tests.survey_helpers import free_port

    path = write(tmp_path, pvq21_data(MISKEYED["wrong value"][0]))
    env = {"PYTHONPATH": SRC, "VALIGN_ADMIN_TOKEN": "t" * 32}
    out = subprocess.run([sys.executable, "-m", "valign.cli", "survey", "check", path], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "scores item 1 as 'self_direction'" in out.stderr and "Traceback" not in out.stderr
    db = tmp_path / "never.db"
    cmd = [sys.executable, "-m", "valign.cli", "survey", "serve", "--instrument", path, "--db", f"sqlite:///{db}", "--port", str(free_port())]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)  # a server that started would hit the timeout
    assert out.returncode == 2 and "scores item 1 as 'self_direction'" in out.stderr
    assert not db.exists()  # refused before touching the database


# -- the page plan -------------------------------------------------------------------------


def test_plan_is_stable_for_a_seed_and_differs_between_seeds():
    inst = load_instrument("demo")
    a, b = plan_pages(inst, seed=11), plan_pages(inst, seed=11)
    assert [[i.id for i in p.items] for p in a] == [[i.id for i in p.items] for p in b]
    assert [[o.code for o in i.options] for p in a for i in p.items] == [[o.code for o in i.options] for p in b for i in p.items]
    others = [[i.id for p in plan_pages(inst, seed=s) for i in p.items] for s in range(5)]
    assert len({tuple(o) for o in others}) > 1


def test_plan_covers_every_item_once_with_checks_inside_their_section():
    inst = load_instrument("demo")
    plan = plan_pages(inst, seed=3)
    ids = [i.id for p in plan for i in p.items]
    assert sorted(ids) == sorted(i.id for i in inst.items())
    sections = {i.id: p.section for p in plan for i in p.items}
    assert sections["att-values"] == "values" and sections["att-principles"] == "principles"
    assert all(len(p.items) <= inst.page_size for p in plan)
    assert [len(p.items) for p in plan if p.section == "values"] == [5, 5, 5]  # 15 items: near-equal pages
    assert plan[0].section == "demographics" and not plan[0].required
    assert plan[-1].key == "proposal"


def test_approved_proposals_join_the_principles_and_randomize_off_keeps_order(tmp_path):
    data = demo_data()
    data["randomize"] = False
    inst = load_instrument(write(tmp_path, data))
    plan = plan_pages(inst, seed=1, proposals=[(4, "The assistant should cite sources.")])
    principles = [i for p in plan if p.section == "principles" for i in p.items]
    assert principles[-1].id == "prop-4" and principles[-1].kind == "principle"
    assert [i.id for i in principles[:3]] == ["pr-honesty", "pr-autonomy", "pr-warn"]
