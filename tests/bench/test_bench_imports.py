"""Every name a bench script imports from gpt2 exists: the scripts run for minutes or need data, so most are not
run by the suite, and a rename in src/ must not break one silently (it happened: a private loader renamed)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _imports() -> list[tuple[str, str, str]]:
    found = []
    for script in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpt2":
                found += [(script.name, node.module, alias.name) for alias in node.names]
    return found


IMPORTS = _imports()


def test_the_scripts_import_from_gpt2() -> None:
    assert len(IMPORTS) > 20  # the walk found the scripts' imports, inside functions too


@pytest.mark.parametrize("script,module,name", IMPORTS, ids=[f"{s}:{m}.{n}" for s, m, n in IMPORTS])
def test_the_name_exists(script: str, module: str, name: str) -> None:
    mod = importlib.import_module(module)
    assert name == "*" or hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
        f"bench/{script} imports {name} from {module}, which has no such name")
