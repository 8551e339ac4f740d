"""The survey in a real headless Chromium (Playwright): consent → finish on SQLite and
PostgreSQL, resume by link, validation messages, keyboard only, accessibility basics,
and no console errors. Set VALIGN_SHOTS=<folder> to keep a screenshot of every page."""

from __future__ import annotations

import os
import re
from pathlib import Path

import playwright.sync_api as playwright_api  # `make install` installs it: a missing one must fail, not skip
import pytest

from tests.survey_helpers import DB_BACKENDS, Server, postgres_database

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module", params=DB_BACKENDS)
def server(request, tmp_path_factory):
    if request.param == "sqlite":
        with Server(f"sqlite:///{tmp_path_factory.mktemp('browser') / 'survey.db'}") as s:
            yield s
    else:
        with postgres_database() as url, Server(url) as s:
            yield s


@pytest.fixture()
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    context.close()
    assert problems == []


def shot(pg, name: str) -> None:
    folder = os.environ.get("VALIGN_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def answer_page_with_mouse(pg) -> None:
    """Pick the first option of every radio group (and a strength for scenarios)."""
    names = pg.eval_on_selector_all("input[type=radio]", "els => [...new Set(els.map(e => e.name))]")
    for name in names:
        pg.locator(f'input[name="{name}"]').first.check()


def check_accessibility(pg) -> None:
    unlabeled = pg.eval_on_selector_all(
        "input:not([type=hidden]), textarea",
        "els => els.filter(e => !document.querySelector(`label[for='${e.id}']`)).map(e => e.name)",
    )
    assert unlabeled == []
    assert pg.eval_on_selector_all("fieldset", "fs => fs.every(f => f.querySelector(':scope > legend'))")
    assert pg.get_attribute("html", "lang") == "en"
    assert pg.locator("a.skip-link[href='#main']").count() == 1
    # text against its background, WCAG contrast ≥ 4.5:1, for the kinds of text we use
    ratios = pg.evaluate("""() => {
      const rgb = s => s.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number);
      const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
      const bg = e => { while (e) { const c = getComputedStyle(e).backgroundColor; if (!c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return rgb(c); e = e.parentElement; } return [255, 255, 255]; };
      const out = {};
      for (const sel of ['body', 'legend', 'label', '.hint', '.button', '.notice', '.error-message', 'a', '.site-footer']) {
        const e = document.querySelector(sel); if (!e) continue;
        const a = lum(rgb(getComputedStyle(e).color)), b = lum(bg(e));
        out[sel] = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      }
      return out;
    }""")
    assert ratios and all(r >= 4.5 for r in ratios.values()), ratios


def test_consent_to_finish(server, page):
    pg = page
    pg.goto(server.url + "/")
    check_accessibility(pg)
    shot(pg, "01-consent")
    pg.get_by_role("button", name="I agree to take part").click()
    n = 0
    while "/done" not in pg.url:
        n += 1
        assert pg.locator(".progress-block label").inner_text().startswith(f"Page {n} of ")
        total = int(pg.get_attribute("progress", "max"))
        assert pg.get_attribute("progress", "value") == str(n)
        check_accessibility(pg)
        if n in (1, 2, 7, 8, total):
            shot(pg, f"{n + 1:02d}-page-{n}")
        if pg.locator("textarea#proposal").count():
            pg.fill("textarea#proposal", "The assistant should say when it is unsure.")
        answer_page_with_mouse(pg)
        pg.get_by_role("button", name=re.compile("Save and continue|Finish")).click()
    assert n == total == 10
    assert pg.get_by_role("heading", level=1).inner_text().startswith("Thank you")
    shot(pg, "12-done")


def test_choosing_german_shows_german_pages(server, page):
    """The language link on the consent page (no JavaScript): German texts, ``<html lang="de">``,
    and German messages on a page with a mistake."""
    pg = page
    pg.goto(server.url + "/")
    assert pg.get_attribute("html", "lang") == "en"
    pg.get_by_role("link", name="Deutsch").click()
    assert pg.get_attribute("html", "lang") == "de"
    assert pg.get_by_role("heading", level=1).inner_text() == "Was sollte einem KI-Assistenten wichtig sein?"
    assert pg.get_by_role("heading", name="Bevor Sie beginnen").count() == 1
    shot(pg, "20-consent-de")
    pg.get_by_role("button", name="Ich bin mit der Teilnahme einverstanden").click()
    assert pg.get_attribute("html", "lang") == "de"
    assert pg.locator(".progress-block label").inner_text().startswith("Seite 1 von ")
    assert pg.get_by_role("group", name="Wie alt sind Sie?").count() == 1
    pg.get_by_role("button", name="Speichern und weiter").click()  # demographics are optional
    assert "Jeder Satz beschreibt eine Person" in pg.locator("p.lead").inner_text()
    assert pg.locator("label", has_text="Mir sehr ähnlich").count() > 0
    pg.get_by_role("button", name="Speichern und weiter").click()  # nothing answered: German messages
    assert pg.title().startswith("Fehler: ")
    assert pg.locator(".error-summary h2").inner_text() == "Bitte prüfen Sie Ihre Angaben"
    assert pg.locator(".error-summary a").first.inner_text().startswith("Wählen Sie, wie ähnlich Ihnen diese Person ist")
    shot(pg, "21-errors-de")


def test_resume_by_link_in_another_browser(server, browser, page):
    pg = page
    pg.goto(server.url + "/")
    pg.get_by_role("button", name="I agree to take part").click()
    answer_page_with_mouse(pg)
    pg.get_by_role("button", name="Save and continue").click()
    chosen = pg.eval_on_selector_all("input[type=radio]", "els => [...new Set(els.map(e => e.name))]")
    answer_page_with_mouse(pg)
    pg.get_by_role("button", name="Save and continue").click()
    link = pg.locator(".resume-link a").inner_text()
    assert re.fullmatch(rf"{re.escape(server.url)}/r/[A-Za-z0-9_-]{{40,}}", link)
    other = browser.new_context()
    try:
        p2 = other.new_page()
        p2.goto(link)
        assert p2.url.endswith("/survey/3")
        p2.get_by_role("link", name="Back to the previous page").click()
        assert p2.url.endswith("/survey/2")
        for name in chosen:
            assert p2.locator(f'input[name="{name}"]').first.is_checked()
        shot(p2, "13-resumed-back")
    finally:
        other.close()


def test_validation_messages_in_the_browser(server, page):
    pg = page
    pg.goto(server.url + "/")
    pg.get_by_role("button", name="I agree to take part").click()
    pg.get_by_role("button", name="Save and continue").click()  # demographics are optional
    first = pg.locator("input[type=radio]").first
    first.check()
    pg.get_by_role("button", name="Save and continue").click()
    summary = pg.locator(".error-summary")
    assert summary.get_attribute("role") == "alert"
    assert pg.evaluate("document.activeElement.classList.contains('error-summary')")
    links = summary.locator("a")
    assert links.count() == len(set(pg.eval_on_selector_all("input[type=radio]", "els => els.map(e => e.name)"))) - 1
    assert pg.title().startswith("Error: ")
    assert first.is_checked()  # the answer given is kept
    shot(pg, "14-errors")
    target = links.first.get_attribute("href")
    links.first.click()
    assert pg.evaluate("document.activeElement.id") == target[1:]


def test_keyboard_only(server, page):
    pg = page
    pg.goto(server.url + "/")

    def focused() -> dict:
        return pg.evaluate("""() => { const e = document.activeElement;
            return {tag: e.tagName, type: e.type || '', name: e.name || '', checked: !!e.checked, text: (e.textContent || '').trim(),
                    outline: getComputedStyle(e).outlineStyle, bg: getComputedStyle(e).backgroundColor}; }""")

    for _ in range(10):  # consent: Tab to the agree button, Enter
        pg.keyboard.press("Tab")
        if focused()["text"] == "I agree to take part":
            break
    pg.keyboard.press("Enter")
    pg.wait_for_url(re.compile(r"/survey/1$"))
    saw_focus_ring = False
    pages = 0
    while "/done" not in pg.url:
        pages += 1
        url = pg.url
        for _ in range(200):
            pg.keyboard.press("Tab")
            f = focused()
            if f["type"] == "radio":
                saw_focus_ring |= f["outline"] != "none"
                if not f["checked"]:
                    pg.keyboard.press("Space")  # choose the focused option
                    pg.keyboard.press("ArrowDown")  # arrow keys move the choice within the group
            elif f["tag"] == "TEXTAREA":
                pg.keyboard.type("The assistant should be honest about its limits.")
            elif f["tag"] == "BUTTON":
                pg.keyboard.press("Enter")
                break
        pg.wait_for_url(lambda u, old=url: u != old)  # (wait_for_function would need eval, which our CSP forbids)
    assert pages == 10 and saw_focus_ring
    assert "Thank you" in pg.inner_text("h1")


def test_a_full_quota_cell_ends_with_the_closing_page(tmp_path, page):
    """Quotas (tests/test_survey_quotas.py has the counts): the closing page a respondent in a
    full cell sees, in the browser — no script, readable, accessible, no console error."""
    import yaml
    from importlib import resources

    data = yaml.safe_load((resources.files("valign") / "data" / "instruments" / "demo.yaml").read_text(encoding="utf-8"))
    data["quotas"] = {"sets": [{"by": ["sex"], "targets": {"male": 0}}]}  # no men wanted: any man is screened out
    inst = tmp_path / "quota.yaml"
    inst.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with Server(f"sqlite:///{tmp_path / 'quota.db'}", str(inst)) as s:
        pg = page
        pg.goto(s.url + "/")
        pg.get_by_role("button", name="I agree to take part").click()
        pg.get_by_label("Male", exact=True).check()
        pg.get_by_role("button", name="Save and continue").click()
        assert pg.url.endswith("/screened")
        assert pg.get_by_role("heading", level=1).inner_text() == "Thank you for your time"
        assert "so the survey ends here for you" in pg.locator("[role=status]").inner_text()  # the default message
        assert pg.locator("form").count() == 0 and pg.locator("script").count() == 0
        check_accessibility(pg)
        shot(pg, "15-quota-full")
        pg.go_back()  # the browser's back button does not reopen the survey
        pg.reload()
        assert pg.url.endswith("/screened")


def test_withdraw_with_the_keyboard_only(server, page):
    import httpx

    from tests.survey_helpers import admin_headers

    def withdrawn() -> int:
        return httpx.get(server.url + "/admin/api/summary", headers=admin_headers()).json()["erased"]["withdrawn"]

    pg = page
    before = withdrawn()
    pg.goto(server.url + "/")
    pg.get_by_role("button", name="I agree to take part").click()
    pg.wait_for_url(re.compile(r"/survey/1$"))
    for _ in range(200):  # from the first page, Tab to the withdrawal link every page carries
        pg.keyboard.press("Tab")
        if pg.evaluate("document.activeElement.textContent.trim()") == "Withdraw from the survey and delete my answers":
            break
    pg.keyboard.press("Enter")
    pg.wait_for_url(re.compile(r"/withdraw$"))
    check_accessibility(pg)
    shot(pg, "15-withdraw")
    for _ in range(20):
        pg.keyboard.press("Tab")
        if pg.evaluate("document.activeElement.textContent.trim()") == "Delete my answers":
            break
    assert pg.evaluate("getComputedStyle(document.activeElement).outlineStyle + getComputedStyle(document.activeElement).boxShadow") != "nonenone"
    pg.keyboard.press("Enter")
    pg.wait_for_url(re.compile(r"/withdrawn$"))
    assert pg.get_by_role("heading", level=1).inner_text() == "Your answers are deleted"
    assert withdrawn() == before + 1
    check_accessibility(pg)
    pg.goto(server.url + "/continue")  # the browser no longer has a response: back to the consent page
    assert pg.url.rstrip("/") == server.url and pg.get_by_role("button", name="I agree to take part").count() == 1
