"""Refuse the expensive resources a test may not use: a model, a browser, a PostgreSQL
server.

The root conftest.py decides what each test may use (its markers; a doctest, none of
the three) and calls `set_refused` before it runs; Python processes the test starts do
the same at start-up through ``tests/guarded_site`` (``REFUSE_ENV`` carries the set).
Asking for a refused resource raises `ResourceRefused`, naming the marker the test
lacks, and appends the message to the file ``LOG_ENV`` names, so that code which catches
the exception and carries on still fails its test.
"""

from __future__ import annotations

import os
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path
from typing import Any, Callable

REFUSE_ENV = "VALIGN_TEST_REFUSE"  # comma-separated resources a test process refuses
LOG_ENV = "VALIGN_TEST_REFUSALS"  # file each refusal is appended to

# Where each resource starts, as (module, attribute on it). A module is patched while its
# resource is refused: at once if it is imported, else as soon as it is.
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

# Programs whose start means the resource, whoever starts them (an audit hook checks).
PROGRAMS: dict[str, tuple[str, ...]] = {
    "model": ("llama-server",),
    "browser": ("chromium", "chromium-browser", "chrome", "headless_shell"),
    "postgres": ("pg_ctlcluster", "pg_ctl", "postgres"),
}

_MISSING = object()  # the attribute was inherited, not the owner's own


class ResourceRefused(RuntimeError):
    """A test used a resource it may not use."""


def refusal_message(resource: str, what: str) -> str:
    return (
        f"{what} needs the '{resource}' resource, which this test may not use: mark the test "
        f"@pytest.mark.{resource} (or use a conftest fixture that marks it), so that `make test-fast` "
        f"leaves it to `make test`; a doctest may use none of model, browser, postgres."
    )


def _refuse(resource: str, what: str) -> None:
    message = refusal_message(resource, what)
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"[pid {os.getpid()}] {message}\n")
    raise ResourceRefused(message)


class _Guard:
    """This process's refusals: the patched attributes (to put back) and the modules
    still to patch when imported."""

    def __init__(self) -> None:
        self.refused: frozenset[str] = frozenset()
        self.undo: dict[str, list[tuple[Any, str, Any]]] = {}  # resource -> [(owner, name, original)]
        self.pending: dict[str, list[tuple[str, str]]] = {}  # module -> [(attribute, resource)]
        self.hooked = False

    def patch(self, module: Any, attribute: str, resource: str) -> None:
        owner_name, _, name = attribute.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        original = vars(owner).get(name, _MISSING)  # the raw descriptor (a classmethod stays one)
        what = f"{module.__name__}.{attribute}"

        def refuse(*args: Any, **kwargs: Any) -> Any:  # stands in for a function, method or classmethod
            _refuse(resource, what)

        setattr(owner, name, refuse)
        self.undo.setdefault(resource, []).append((owner, name, original))

    def start(self, resource: str) -> None:
        for module_name, attribute in ENTRY_POINTS.get(resource, []):
            module = sys.modules.get(module_name)
            if module is not None:
                self.patch(module, attribute, resource)
            else:
                self.pending.setdefault(module_name, []).append((attribute, resource))

    def stop(self, resource: str) -> None:
        for owner, name, original in reversed(self.undo.pop(resource, [])):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        for module_name in list(self.pending):
            self.pending[module_name] = [(a, r) for a, r in self.pending[module_name] if r != resource]
            if not self.pending[module_name]:
                del self.pending[module_name]

    def set(self, resources: frozenset[str]) -> None:
        for resource in sorted(self.refused - resources):
            self.stop(resource)
        for resource in sorted(resources - self.refused):
            self.start(resource)
        self.refused = resources
        if resources and not self.hooked:
            sys.meta_path.insert(0, _PatchOnImport(self))
            sys.addaudithook(_audit)  # for good: an audit hook cannot be removed; it reads `refused`
            self.hooked = True


_GUARD = _Guard()


class _PatchOnImport(MetaPathFinder):
    """Patches a pending module right after it is imported (the modules are heavy: a test
    process that never imports them should not pay for them)."""

    def __init__(self, guard: _Guard) -> None:
        self.guard = guard

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.guard.pending:
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
        run, guard = loader.exec_module, self.guard

        def exec_then_patch(module: Any) -> None:
            run(module)
            for attribute, resource in guard.pending.pop(fullname, []):
                guard.patch(module, attribute, resource)

        loader.exec_module = exec_then_patch  # this spec's own loader object: no other module sees it
        return spec


def _audit(event: str, args: tuple) -> None:
    if not _GUARD.refused or event not in ("subprocess.Popen", "os.posix_spawn", "os.exec"):
        return
    executable, argv = args[0], args[1]
    first = list(argv[:1]) if isinstance(argv, (list, tuple)) else [argv]
    for program in [executable, *first]:
        if program is None:
            continue
        name = Path(os.fsdecode(program)).name
        for resource in _GUARD.refused:
            if name in PROGRAMS.get(resource, ()):
                _refuse(resource, f"starting {os.fsdecode(program)}")


def set_refused(resources: set[str] | frozenset[str]) -> None:
    """Refuse exactly these resources in this process from now on (none: refuse nothing)."""
    _GUARD.set(frozenset(resources))


def set_refused_from_env() -> None:
    """What a test's subprocess does at start-up (``tests/guarded_site/sitecustomize.py``)."""
    set_refused({r for r in os.environ.get(REFUSE_ENV, "").split(",") if r})


def refusing(resources: set[str] | frozenset[str]) -> Callable[[], None]:
    """Refuse these resources, in this process and in the processes it starts, until the
    returned function is called."""
    saved = {k: os.environ.get(k) for k in (REFUSE_ENV, "PYTHONPATH")}
    before = _GUARD.refused
    set_refused(resources)
    if resources:
        os.environ[REFUSE_ENV] = ",".join(sorted(resources))
        site = str(Path(__file__).parent / "guarded_site")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, saved["PYTHONPATH"]]))

    def restore() -> None:
        set_refused(before)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    return restore
