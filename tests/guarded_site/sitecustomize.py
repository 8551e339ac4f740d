"""Python runs this at start-up in every process the tests start while a session refuses
a resource: conftest puts this folder on PYTHONPATH (see tests/resource_guard.py)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("valign_test_resource_guard", Path(__file__).resolve().parents[1] / "resource_guard.py")
_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_guard)
_guard.set_refused_from_env()
