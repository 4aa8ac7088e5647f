"""Functions a reader can hold: none in src/ is longer than MAX_LINES (from `def` to its last line).

    python -m pytest -q tests/test_function_lengths.py      # fails naming each function over the limit
    python tests/test_function_lengths.py                   # lists the longest functions
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 80


def _functions(node: ast.AST, prefix: str = "") -> list[tuple[int, str]]:
    """(lines, qualified name) of every function below `node`, methods and nested functions included."""
    found: list[tuple[int, str]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            found.append((child.end_lineno - child.lineno + 1, name))  # type: ignore[operator]
            found += _functions(child, f"{name}.")
        elif isinstance(child, ast.ClassDef):
            found += _functions(child, f"{prefix}{child.name}.")
        else:
            found += _functions(child, prefix)
    return found


def function_lengths(root: Path = SRC) -> list[tuple[int, str]]:
    """(lines, "path:qualified.name") for every function and method under `root`, longest first.

    A function's length runs from its `def` line (decorators not counted) to its last line, nested
    functions included, as a reader scrolls through it."""
    found: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root).as_posix()
        found += [(n, f"{rel}:{name}") for n, name in _functions(tree)]
    return sorted(found, reverse=True)


def test_no_function_is_longer_than_the_limit() -> None:
    too_long = [f"{where} {n} lines" for n, where in function_lengths() if n > MAX_LINES]
    assert not too_long, f"{len(too_long)} function(s) over {MAX_LINES} lines: " + "; ".join(too_long)


def test_the_count_sees_long_functions(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"class C:\n    def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n")
    (tmp_path / "n.py").write_text("def short():\n    return 1\n")
    assert function_lengths(tmp_path) == [(MAX_LINES + 1, "m.py:C.long"), (2, "n.py:short")]


if __name__ == "__main__":
    for n, where in function_lengths()[: int(sys.argv[1]) if len(sys.argv) > 1 else 20]:
        print(f"{n:5d}  {where}")
