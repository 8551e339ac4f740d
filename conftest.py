"""The two test lanes: markers for what a test needs, and refusal of what it may not use.

Markers (pyproject.toml lists them) name what a test needs beyond the Python process:
``model`` (a real model loads), ``browser`` (headless Chromium), ``postgres`` (the
PostgreSQL server), and ``slow`` (long: trains or generates at length). A test gets
``model`` from the fixtures in `RESOURCE_FIXTURES`; other tests carry their markers in
their files. `make test` runs everything; `make test-fast` deselects the four markers.

Each test may then use only what it is marked for, where the session selected no test
marked for it (`make test-fast` selects none): a test that reaches for such a resource
unmarked fails, naming the marker (tests/resource_guard.py). A doctest may use none of
the three in either lane: the examples in valign's docstrings stay cheap.

This file sits at the repository root, above tests/ and src/valign, so that its hooks
run for the doctests too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests import resource_guard

RESOURCES = frozenset({"model", "browser", "postgres"})

# Fixtures (tests/conftest.py) that start a resource: a test using one, directly or
# through another fixture, is marked for it.
RESOURCE_FIXTURES = {"embedded": "model", "embedded_fp32": "model", "sft_stage": "model"}

_UNSELECTED = pytest.StashKey[frozenset]()
_REFUSALS = pytest.StashKey["RefusalLog"]()


class RefusalLog:
    """The file refused requests are written to (by this process and the ones it starts),
    read from where the last look stopped."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="valign-refusals-")) / "refusals.log"
        self.path.touch()
        self.seen = 0

    def new(self) -> str:
        # open(), not Path.read_text: a test may have patched Path's methods until teardown.
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        fresh, self.seen = text[self.seen :], len(text)
        return fresh

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.parent.rmdir()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs = {RESOURCE_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in RESOURCE_FIXTURES}
        for resource in sorted(needs):
            if item.get_closest_marker(resource) is None:
                item.add_marker(resource)


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_UNSELECTED] = frozenset(r for r in RESOURCES if not any(i.get_closest_marker(r) for i in session.items))
    log = RefusalLog()
    session.config.stash[_REFUSALS] = log
    os.environ[resource_guard.LOG_ENV] = str(log.path)  # for the processes the tests start too


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Refuse, while this test runs (its fixtures' setup and teardown included), what no
    selected test is marked for; for a doctest, all three."""
    unselected = item.config.stash.get(_UNSELECTED, frozenset())
    restore = resource_guard.refusing(RESOURCES if isinstance(item, pytest.DoctestItem) else unselected)
    try:
        return (yield)
    finally:
        restore()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Fail the test phase in which a refused resource was asked for, even where the code
    under test caught the refusal (or a subprocess hit it and the test did not look)."""
    report = yield
    log = item.config.stash.get(_REFUSALS, None)
    fresh = log.new() if log else ""
    if fresh:
        report.outcome = "failed"
        report.longrepr = f"{report.longrepr or ''}\n\nrefused resources:\n{fresh}".strip()
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    log = session.config.stash.get(_REFUSALS, None)
    if log:
        log.remove()
        os.environ.pop(resource_guard.LOG_ENV, None)
