"""The expert review in a real headless Chromium (Playwright), keyboard only: invitation
link → grade → stop → resume from a new browser → finish, on a `valign review serve`
subprocess. Checks blinding in the rendered page, that the shown sides are the recorded
ones, accessibility basics and no console errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.survey_helpers import SRC, free_port
from tests.test_survey_browser import browser, check_accessibility  # noqa: F401  (browser: the shared Chromium fixture)
from valign.review.store import ReviewStore

pytestmark = pytest.mark.browser

MODELS = ("runs/demo/tuned-lora-q4", "SmolLM2-base-k7")
LEVEL_INDEX = {"A>>B": 1, "A>B": 2, "A=B": 3, "B>A": 4, "B>>A": 5}


@pytest.fixture()
def review_server(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"id": f"case-{i}", "prompt": f"Question {i}: should I tell my friend a hard truth?", "answer_a": f"Reply one-{i}.\nWith a second line.",
                        "answer_b": f"Reply two-{i}.", "model_a": MODELS[0], "model_b": MODELS[1]}) + "\n"
            for i in range(1, 4)
        )
    )
    db = f"sqlite:///{tmp_path / 'review.db'}"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "VALIGN_REVIEW_SECRET": "review-secret-" + "r" * 24}
    proc = subprocess.Popen([sys.executable, "-m", "valign.cli", "review", "serve", str(pairs), "--db", db, "--port", str(port), "--invite", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        link = proc.stdout.readline().strip()
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/i/[\w-]{{43}}", link), link
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the review server did not start"
            time.sleep(0.1)
        yield link, db
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def new_page(browser):
    context = browser.new_context()
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    return context, pg, problems


def focused(pg) -> dict:
    return pg.evaluate("() => { const e = document.activeElement; return {tag: e.tagName, type: e.type || '', id: e.id || '', checked: !!e.checked}; }")


def tab_to(pg, want) -> dict:
    for _ in range(30):
        pg.keyboard.press("Tab")
        f = focused(pg)
        if want(f):
            return f
    raise AssertionError("Tab never reached the wanted element")


def grade_with_keyboard(pg, level: str, refuse_b: bool, note: str) -> None:
    f = tab_to(pg, lambda f: f["type"] == "radio")
    assert f["id"] == "level-1" and not f["checked"]
    pg.keyboard.press("Space")
    for _ in range(LEVEL_INDEX[level] - 1):
        pg.keyboard.press("ArrowDown")  # arrows move the choice within the group
    assert pg.locator(f"#level-{LEVEL_INDEX[level]}").is_checked()
    assert tab_to(pg, lambda f: f["type"] == "checkbox")["id"] == "refused-a"
    assert tab_to(pg, lambda f: f["type"] == "checkbox")["id"] == "refused-b"
    if refuse_b:
        pg.keyboard.press("Space")
    assert tab_to(pg, lambda f: f["tag"] == "TEXTAREA")["id"] == "note"
    pg.keyboard.type(note)
    assert tab_to(pg, lambda f: f["tag"] == "BUTTON")
    url = pg.url
    pg.keyboard.press("Enter")
    pg.wait_for_url(lambda u: u != url)


def test_invitation_grade_resume_finish_with_the_keyboard(browser, review_server):
    link, db = review_server
    shown: dict[int, str] = {}  # case number -> the text shown as answer A
    context, pg, problems = new_page(browser)
    pg.goto(link)
    assert pg.url.endswith("/case/1")
    for n in (1, 2):
        assert pg.locator(".progress-block label").inner_text() == f"Case {n} of 3 ({n - 1} graded)"
        check_accessibility(pg)
        html = pg.content()
        assert not any(m.lower() in html.lower() for m in (*MODELS, "tuned", "base model"))
        assert pg.locator("script").count() == 0
        shown[n] = pg.locator(".answer-box .text").first.inner_text()
        grade_with_keyboard(pg, "A>B", refuse_b=(n == 1), note=f"typed note {n}")
    assert pg.url.endswith("/case/3")
    context.close()
    assert problems == []

    # another browser, the same invitation link: back at the first ungraded case
    context, pg, problems = new_page(browser)
    pg.goto(link)
    assert pg.url.endswith("/case/3") and pg.locator(".progress-block label").inner_text() == "Case 3 of 3 (2 graded)"
    shown[3] = pg.locator(".answer-box .text").first.inner_text()
    grade_with_keyboard(pg, "B>>A", refuse_b=False, note="")
    assert pg.url.endswith("/done") and pg.get_by_role("heading", level=1).inner_text() == "Thank you"
    check_accessibility(pg)
    context.close()
    assert problems == []

    # what was stored is what was shown: the side recorded per case matches the page
    store = ReviewStore.open(db)
    r = next(iter(store.all_grades()))[2]
    reviewer = store.reviewer(r)
    order = store.order(reviewer)
    for n, a_text in shown.items():
        pair = store.pair(order[n - 1])
        g = store.grade(reviewer.id, pair.id)
        assert a_text.strip() == (pair.answer_x if g.x_first else pair.answer_y).strip()
        level = "B>>A" if n == 3 else "A>B"
        assert g.level == level and g.score_x == (1 if level == "A>B" else -2) * (1 if g.x_first else -1)
        assert g.note == (f"typed note {n}" if n < 3 else None)
        assert (g.refused_y if g.x_first else g.refused_x) == (n == 1)  # B was marked on case 1
