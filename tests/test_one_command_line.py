"""One command line: `gpt2` (gpt2.cli.main). No other module in src/ has a module-level main() or a
`if __name__ == "__main__"` block, which would be a second, undocumented command line."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gpt2"
ALLOWED = {SRC / "cli.py", SRC / "__main__.py"}


def _entry_points(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [f"def {n.name}" for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    for n in tree.body:
        if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) and "__name__" in ast.unparse(n.test):
            found.append("if __name__ == '__main__'")
    return found


def test_no_second_command_line() -> None:
    offenders = {str(p.relative_to(SRC)): e for p in sorted(SRC.rglob("*.py"))
                 if p not in ALLOWED and (e := _entry_points(p))}
    assert offenders == {}, f"module-level command lines outside gpt2.cli: {offenders}"


def test_the_check_sees_one() -> None:
    assert _entry_points(SRC / "cli.py")  # the one allowed: the check is not blind
