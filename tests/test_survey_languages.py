"""Several languages: instrument validation (missing translation, unknown language), the
catalogue of the pages' own words, and a two-language survey over real HTTP on SQLite and
PostgreSQL (chosen by the respondent or by the invitation; stored, exported, unaffected
analysis). The Chromium check is in tests/test_survey_browser.py."""

from __future__ import annotations

import io
import re
from importlib import resources

import httpx
import pandas as pd
import pytest
import yaml

from tests.survey_helpers import ADMIN_TOKEN, DB_BACKENDS, Server, admin_headers, hidden, postgres_database, radio_names
from valign.errors import ValignError
from valign.survey.instrument import load_instrument
from valign.survey.messages import catalogue_languages, messages


def demo_data() -> dict:
    return yaml.safe_load((resources.files("valign") / "data" / "instruments" / "demo.yaml").read_text(encoding="utf-8"))


def load_changed(tmp_path, change):
    data = demo_data()
    change(data)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_instrument(path)


BAD = {
    "missing translation": (lambda d: d["principles"]["items"][2]["text"].pop("de"), r"principles\.items\[3\] \(id 'pr-warn'\)\.text: 'text' has no 'de' translation; add de: \.\.\. to its mapping\.$"),
    "missing option label": (lambda d: d["demographics"][1]["options"][0]["label"].pop("de"), r"demographics\[2\] \(id 'sex'\)\.options\[1\]\.label: 'label' has no 'de' translation"),
    "plain string with two languages": (lambda d: d["consent"].update(agree_label="I agree"), r"consent\.agree_label: 'agree_label' is given in one language only, but the instrument declares en, de; write it as a mapping \{en: \.\.\., de: \.\.\.\}\.$"),
    "language the pages lack": (lambda d: d.update(languages=["en", "de", "xx"]), r"languages\[3\]: the survey pages have no 'xx' translation \(they exist in de, en\)"),
    "text in an undeclared language": (lambda d: d["title"].update(fr="Que devrait valoriser un assistant ?"), r"title: 'title' has a text in 'fr', which is not one of the instrument's languages \(en, de\)"),
    "fewer labels in one language": (lambda d: d["values"]["scale"]["labels"]["de"].pop(), r"values\.scale: the scale has 6 points but 5 labels"),
    "different strength labels": (lambda d: d["scenarios"]["strength_labels"]["de"].pop(), r"the 'de' texts give a different number of labels than the 'en' ones"),
    "language disagrees with languages": (lambda d: d.update(language="de"), r"language: is 'de' but the first of 'languages' \(the base language\) is 'en'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_translation_mistakes_stop_loading_with_one_sentence(tmp_path, case):
    change, pattern = BAD[case]
    with pytest.raises(ValignError, match=pattern) as err:
        load_changed(tmp_path, change)
    assert "two.yaml" in str(err.value) and "\n" not in str(err.value)


def test_a_one_language_instrument_in_a_language_without_a_catalogue_is_refused(tmp_path):
    from valign.survey.translations import localise

    data = localise(demo_data(), "en")
    data.pop("languages")
    data["language"] = "mi"
    path = tmp_path / "mi.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValignError, match=r"language: the survey pages have no 'mi' translation"):
        load_instrument(path)


def test_every_catalogue_has_the_english_keys():
    assert set(catalogue_languages()) >= {"en", "de"}
    for lang in catalogue_languages():
        messages(lang)  # raises on a missing or unknown key


def test_the_demo_in_german_shares_every_id_code_and_the_fingerprint():
    en = load_instrument("demo")
    de = en.in_language("de")
    assert en.languages == de.languages == ["en", "de"] and de.language == "de"
    assert [(i.id, i.kind, [o.code for o in i.options]) for i in en.items()] == [(i.id, i.kind, [o.code for o in i.options]) for i in de.items()]
    texts_en, texts_de = {i.id: i.text for i in en.items()}, {i.id: i.text for i in de.items()}
    assert all(texts_en[k] != texts_de[k] for k in texts_en), "every question is translated"
    assert de.item("pr-honesty").options[0].label == "Stimme zu" and en.item("pr-honesty").options[0].label == "Agree"
    assert de.fingerprint() == en.fingerprint()
    assert en.value_key() == de.value_key()
    with pytest.raises(ValignError, match=r"not available in 'fr'; its languages are en, de"):
        en.in_language("fr")


class Person:
    """A respondent driving the pages with httpx (its own cookie jar)."""

    def __init__(self, base: str) -> None:
        self.c = httpx.Client(base_url=base, follow_redirects=True, timeout=30)
        self.page: httpx.Response | None = None

    def consent(self, start: str = "/") -> httpx.Response:
        r = self.c.get(start)
        assert r.status_code == 200, r.text
        self.page = self.c.post("/consent", data={**hidden(r.text), "decision": "agree"})
        return r

    def submit(self, skip: str | None = None) -> httpx.Response:
        html = self.page.text
        data = hidden(html)
        for name in radio_names(html):
            if name != skip:
                data[name] = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html).group(1)
        action = re.search(r'<form method="post" action="([^"]+)"', html).group(1)
        self.page = self.c.post(action, data=data)
        return self.page

    def finish(self) -> None:
        while not self.page.url.path.endswith("/done"):
            assert self.submit().status_code == 200


def export(url: str) -> pd.DataFrame:
    r = httpx.get(url + "/admin/export.csv?include_excluded=true", headers=admin_headers(), timeout=30)  # first options fail the attention checks
    assert r.status_code == 200
    return pd.read_csv(io.StringIO(r.text), dtype=str).set_index("respondent_id")


def run_two_languages(server: Server) -> None:
    # A respondent who picks German on the consent page sees German pages.
    de = Person(server.url)
    landing = de.c.get("/")
    assert '<html lang="en">' in landing.text and 'href="/?lang=de"' in landing.text and ">Deutsch<" in landing.text
    consent = de.consent("/?lang=de")
    assert '<html lang="de">' in consent.text and "Ich bin mit der Teilnahme einverstanden" in consent.text and ">English<" in consent.text
    assert "<h1>Über Sie</h1>" in de.page.text and "Wie alt sind Sie?" in de.page.text and "Speichern und weiter" in de.page.text
    de.submit()
    missing = de.submit(skip=radio_names(de.page.text)[0])  # one question left out: the message is German
    assert "Bitte prüfen Sie Ihre Angaben" in missing.text and "Wählen Sie, wie ähnlich Ihnen diese Person ist" in missing.text
    de.finish()
    lost = de.c.get("/no-such-page")  # refusals are worded in the respondent's language too
    assert lost.status_code == 404 and '<html lang="de">' in lost.text and "Seite nicht gefunden" in lost.text
    forged = de.c.post("/consent", data={"csrf": "forged", "decision": "agree"})
    assert forged.status_code == 403 and "Formular abgelaufen" in forged.text
    assert "Vielen Dank – Ihre Antworten sind gespeichert" in de.page.text and '<html lang="de">' in de.page.text

    # One in English (the base language, chosen by nobody).
    en = Person(server.url)
    en.consent()
    assert "<h1>About you</h1>" in en.page.text
    en.finish()

    # An invitation that sets German opens the survey in German, and its response says so.
    r = httpx.post(server.url + "/admin/api/invitations", json={"n": 1, "language": "de"}, headers=admin_headers(), timeout=30)
    assert r.status_code == 200 and r.json()["language"] == "de"
    invited = Person(server.url)
    opened = invited.consent(r.json()["urls"][0].removeprefix(server.url))
    assert '<html lang="de">' in opened.text and "Bevor Sie beginnen" in opened.text
    # It switches to English on page 1: the response records the language it ends in.
    switched = invited.c.get(invited.page.url.path + "?lang=en")
    assert '<html lang="en">' in switched.text and "How old are you?" in switched.text
    invited.page = switched
    invited.submit()
    # Its resume link, in a fresh browser, opens in that language.
    link = re.search(r'class="resume-link"><a href="([^"]+)"', invited.page.text).group(1)
    again = httpx.Client(follow_redirects=True, timeout=30).get(link)
    assert '<html lang="en">' in again.text and "Save and continue" in again.text

    bad = httpx.post(server.url + "/admin/api/invitations", json={"n": 1, "language": "fr"}, headers=admin_headers(), timeout=30)
    assert bad.status_code == 422 and "language must be one of the instrument's languages: en, de" in bad.json()["error"]
    unknown = de.c.get("/?lang=fr")
    assert unknown.status_code == 400 and "not available in &#39;fr&#39;; choose one of: en, de" in unknown.text

    table = export(server.url)
    assert list(table["language"]) == ["de", "en", "en"]
    # Answers are option codes whatever the language: the two finished respondents agree item by item.
    done = table[table["completed"] == "True"]
    assert len(done) == 2 and done.iloc[0]["pr-honesty"] == done.iloc[1]["pr-honesty"] == "agree"
    assert done.iloc[0]["sex"] == done.iloc[1]["sex"] == "female"


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_two_languages_over_http(tmp_path, backend):
    if backend == "sqlite":
        with Server(f"sqlite:///{tmp_path / 'lang.db'}", "demo", "--rate-limit-ip", "0") as s:
            run_two_languages(s)
    else:
        with postgres_database() as url, Server(url, "demo", "--rate-limit-ip", "0") as s:
            run_two_languages(s)


def test_cli_invite_sets_the_language(tmp_path):
    import subprocess
    import sys

    from tests.survey_helpers import SRC

    db = f"sqlite:///{tmp_path / 'inv.db'}"
    env = {"PYTHONPATH": SRC, "VALIGN_ADMIN_TOKEN": ADMIN_TOKEN}
    bad = subprocess.run([sys.executable, "-m", "valign.cli", "survey", "invite", "--db", db, "--lang", "fr"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--lang 'fr' is not one of the instrument's languages (en, de)" in bad.stderr
    with Server(db, "demo") as s:
        out = subprocess.run([sys.executable, "-m", "valign.cli", "survey", "invite", "--db", db, "--lang", "de", "--base-url", s.url], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        page = httpx.Client(follow_redirects=True, timeout=30).get(out.stdout.strip())
        assert '<html lang="de">' in page.text and "Ich bin mit der Teilnahme einverstanden" in page.text


def test_withdrawal_pages_speak_the_respondents_language(tmp_path):
    """The withdrawal pages (valign.survey.withdraw) take their words from the catalogue:
    a German respondent is asked, warned and answered in German."""
    de = messages("de")["withdraw"]
    with Server(f"sqlite:///{tmp_path / 'w.db'}", "demo") as s:
        c = httpx.Client(base_url=s.url, follow_redirects=True, timeout=30)
        landing = c.get("/?lang=de")
        c.post("/consent", data={**hidden(landing.text), "decision": "agree"})
        ask = c.get("/withdraw")
        assert ask.status_code == 200 and '<html lang="de">' in ask.text
        assert de["title"] in ask.text and de["confirm"] in ask.text and de["keep"] in ask.text
        unconfirmed = c.post("/withdraw", data=hidden(ask.text))
        assert de["choose"] in unconfirmed.text
        gone = c.post("/withdraw", data={**hidden(ask.text), "confirm": "withdraw"})
        assert de["withdrawn_title"] in gone.text and "Withdraw" not in gone.text
