"""Refuse the expensive resources a test session did not ask for: a browser, a PostgreSQL
server, a model.

A test that needs one carries its marker (``browser``, ``postgres``, ``model``): conftest
sets it from the fixtures the test uses, or the test file writes it. When a session
selects no test with a marker (``make test-fast`` deselects all three), conftest refuses
that resource here, in the pytest process, and through ``tests/guarded_site`` in every
Python process the tests start. A test that reaches for a refused resource fails, naming
the marker it lacks, so an unmarked test cannot slow the fast lane down unnoticed.

Refusals are also written to a log file that conftest reads after each test phase: code
under test that catches the exception and carries on still fails its test.
"""

from __future__ import annotations

import os
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path
from typing import Any, Callable

REFUSE_ENV = "VALIGN_TEST_REFUSE"  # comma-separated resources refused in this session
LOG_ENV = "VALIGN_TEST_REFUSALS"  # file each refusal is appended to

# Where each resource starts, as (module, attribute on it); the module is patched when it
# is imported, or at once when it already is.
ENTRY_POINTS: dict[str, list[tuple[str, str]]] = {
    "model": [
        ("transformers.modeling_utils", "PreTrainedModel.from_pretrained"),  # every AutoModel*.from_pretrained ends here
        ("vllm.entrypoints.llm", "LLM.__init__"),
    ],
    "browser": [
        ("playwright.sync_api._generated", "BrowserType.launch"),
        ("playwright.sync_api._generated", "BrowserType.launch_persistent_context"),
        ("playwright.async_api._generated", "BrowserType.launch"),
        ("playwright.async_api._generated", "BrowserType.launch_persistent_context"),
    ],
    "postgres": [("psycopg", "connect"), ("psycopg", "Connection.connect")],
}

# Programs whose start means the resource, whoever starts them (checked by an audit hook).
PROGRAMS: dict[str, tuple[str, ...]] = {
    "model": ("llama-server",),
    "browser": ("chromium", "chromium-browser", "chrome", "headless_shell"),
    "postgres": ("pg_ctlcluster", "pg_ctl", "postgres"),
}


class ResourceRefused(RuntimeError):
    """A test used a resource its session refused."""


def refusal_message(resource: str, what: str) -> str:
    return (
        f"{what} needs the '{resource}' resource, which this test session refuses: no selected test is marked "
        f"'{resource}'. Mark the test @pytest.mark.{resource} (or use a conftest fixture that marks it); "
        f"`make test-fast` then leaves it to `make test`."
    )


def _refuse(resource: str, what: str) -> None:
    message = refusal_message(resource, what)
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"[pid {os.getpid()}] {message}\n")
    raise ResourceRefused(message)


def _refusing(resource: str, what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        _refuse(resource, what)

    return refuse


def _patch(module: Any, attribute: str, resource: str) -> None:
    owner_name, _, name = attribute.rpartition(".")
    owner = getattr(module, owner_name) if owner_name else module
    # A plain function on a class stands in for a method or a classmethod alike: it raises
    # whatever it is called with.
    setattr(owner, name, _refusing(resource, f"{module.__name__}.{attribute}"))


class _PatchOnImport(MetaPathFinder):
    """Patches a module right after it is imported (the modules are heavy, and a lane that
    never imports them should not pay for them)."""

    def __init__(self, pending: dict[str, list[tuple[str, str]]]) -> None:
        self.pending = pending  # module -> [(attribute, resource)]

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module
        patches = self.pending[fullname]

        def exec_then_patch(module: Any) -> None:
            run(module)
            for attribute, resource in patches:
                _patch(module, attribute, resource)

        loader.exec_module = exec_then_patch  # this spec's own loader object: no other module sees it
        return spec


def _audit(refused: set[str]) -> Callable[[str, tuple], None]:
    programs = {p: r for r in refused for p in PROGRAMS.get(r, ())}

    def hook(event: str, args: tuple) -> None:
        if event == "subprocess.Popen":
            executable, argv = args[0], args[1]
        elif event in ("os.posix_spawn", "os.exec"):
            executable, argv = args[0], args[1]
        else:
            return
        names = [executable] + (list(argv[:1]) if isinstance(argv, (list, tuple)) else [argv])
        for n in names:
            if n is None:
                continue
            resource = programs.get(Path(os.fsdecode(n)).name)
            if resource:
                _refuse(resource, f"starting {os.fsdecode(n)}")

    return hook


def install(refused: set[str]) -> None:
    """Refuse these resources in this process from now on."""
    if not refused:
        return
    pending: dict[str, list[tuple[str, str]]] = {}
    for resource in sorted(refused):
        for module_name, attribute in ENTRY_POINTS.get(resource, []):
            module = sys.modules.get(module_name)
            if module is not None:
                _patch(module, attribute, resource)
            else:
                pending.setdefault(module_name, []).append((attribute, resource))
    if pending:
        sys.meta_path.insert(0, _PatchOnImport(pending))
    sys.addaudithook(_audit(refused))


def install_from_env() -> None:
    """What a subprocess does at start-up (``tests/guarded_site/sitecustomize.py``)."""
    refused = {r for r in os.environ.get(REFUSE_ENV, "").split(",") if r}
    install(refused)
